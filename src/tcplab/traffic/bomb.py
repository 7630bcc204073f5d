"""The port bomb: many short-lived connections, until the kernel runs out of ports.

One process, one ``select.epoll`` loop, ``workers`` connections in flight at
once: a connection is a small state machine (connect -> send -> read the echo
-> close), and a finished one is replaced at once until the count or the time
bound is reached. The modes:

* ``fresh``: connect, one echo, close. The client closes first, so the
  client's side lands in TIME_WAIT for 60 s, holding its ephemeral port for
  that destination; when every port of ``ip_local_port_range`` is held,
  connect() fails with EADDRNOTAVAIL, "Cannot assign requested address".
* ``pool``: ``pool_size`` persistent connections carry the same requests:
  no new ports, no TIME_WAIT: the fix.
* ``linger0``: SO_LINGER {on, 0} before close(): close sends RST instead of
  FIN, the socket skips TIME_WAIT, and the server sees ECONNRESET. A hack:
  TIME_WAIT exists to keep a delayed segment of this connection from being
  taken for part of the next one that reuses the 4-tuple, and a RST throws
  away any data still in flight.
* ``bind``: bind() to port 0 before connect(). The kernel must then pick a
  port free for *every* destination, so ports are no longer shared per
  4-tuple and the bomb fails earlier, with EADDRINUSE, "Address already in
  use" (IP_BIND_ADDRESS_NO_PORT would defer the choice to connect()).

Ephemeral ports are shared per destination (address, port): a second server
port or a second loopback address doubles the capacity.

What it counts, honestly (issue 11):

* ``time_wait_peak`` counts only TIME_WAIT sockets this run made. Sockets to
  the port already in TIME_WAIT when it starts (an earlier run's: they last
  60 s) are reported apart, as ``time_wait_baseline``, and left out of every
  count by their socket cookie (the kernel copies a socket's cookie to its
  TIME_WAIT twin: ``inet_twsk_alloc`` in net/ipv4/inet_timewait_sock.c) until
  the last of them has expired. Without that, pool mode run right after fresh
  mode reported a "peak" of 5,008.
* A connection still waiting when the run stops (the time bound, or Ctrl-C)
  is neither ok nor failed: it is counted as ``unanswered`` (its request went
  out, no echo came back) or ``unconnected`` (the handshake never completed),
  with the longest wait, and ``stalled``: those that had waited ``STALL_S``
  or more, hung rather than merely in flight. A leaking server leaves
  ``workers`` of them: attempted = ok + failed + unanswered + unconnected.
* When the first error comes, up to ``workers`` - 1 other connections are in
  flight (``FirstError.in_flight``); most already hold a port and finish
  after it, so ``ok`` ends above ``after_ok`` (987 ok before the first
  EADDRNOTAVAIL, 1,000 ok in all, with a 1,000-port range).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcplab.errors import errno_name
from tcplab.traffic.target import Target

MODES = ("fresh", "pool", "linger0", "bind")
PAYLOAD = b"tcplab port bomb"
LINGER0 = struct.pack("ii", 1, 0)
IN = select.EPOLLIN
OUT = select.EPOLLOUT
#: A connection that sees EOF before its whole echo came back.
EOF_ERRNO = 0
#: A connection still waiting after this long when the run stops is hung, not merely
#: in flight: a loopback round trip takes well under a millisecond, and even on this
#: loaded 2-core machine the bomb's rate never fell below a few hundred per second
#: with 32 in flight (under 0.1 s each).
STALL_S = 2.0


@dataclass(frozen=True, slots=True)
class FirstError:
    errno: int
    name: str
    message: str  # the kernel's text, as strerror gives it
    at_s: float  # seconds since the bomb started
    after_ok: int  # successful connections (requests) before it
    time_wait: int | None  # TIME_WAIT sockets to this port this run made, at that moment
    port_range: int | None  # size of ip_local_port_range
    in_flight: int = 0  # other connections under way at that moment (they may still succeed)


@dataclass(frozen=True, slots=True)
class Progress:
    t: float
    attempted: int
    ok: int
    failed: int
    conns_per_s: float  # over the last interval
    time_wait: int | None


@dataclass(frozen=True, slots=True)
class BombResult:
    mode: str
    host: str
    port: int
    attempted: int
    ok: int
    failed: int
    errors: dict[str, int]
    first_error: FirstError | None
    conns_per_s: float  # ok per second over the whole run (requests/s in pool mode)
    time_wait_peak: int | None  # TIME_WAIT sockets to the port this run made (baseline excluded)
    elapsed_s: float
    stopped_by: str  # "count", "duration" or "interrupt"
    workers: int
    pool_size: int | None = None
    established_before_close: int | None = None  # pool mode: ESTABLISHED to the port, both ends
    time_wait_baseline: int | None = None  # TIME_WAIT to the port found at the start (not ours)
    unanswered: int = 0  # sent the request, no echo when the run stopped
    unconnected: int = 0  # the handshake had not completed when the run stopped
    longest_wait_s: float | None = None  # the oldest of those, waiting since its connect()
    stalled: int = 0  # of those, the ones that had waited STALL_S or more: hung, not in flight
    timeline: list[Progress] = field(default_factory=list)


def port_range_size(procfs: str = "/proc") -> int | None:
    try:
        with open(f"{procfs}/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return high - low + 1


class _TimeWaitCounter:
    """TIME_WAIT sockets with the target's port that this run made, from sock_diag
    (None if unreadable).

    At the start it counts what is already there (``baseline``). With none (a
    fresh namespace, the usual case) every later TIME_WAIT socket is ours and a
    count per sample costs one dump that builds no record (10 ms for 20,000
    sockets, measured here). With some, it keeps their cookies and their
    expiry, and decodes records (70 ms for 20,000) to leave them out, until the
    last of them has expired (at most 60 s, TCP_TIMEWAIT_LEN).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.table = None
        self.baseline: int | None = None
        self._old: set[object] = set()
        self._old_until = 0.0  # monotonic time by which every baseline socket has expired
        try:
            from tcplab.kernel import tcp_states
            from tcplab.observe.sockets import SocketTable

            self.table = SocketTable()
            self.mask = tcp_states.mask([tcp_states.TIME_WAIT])
            self.baseline = self.table.count(self.port, self.mask)[6]
            if self.baseline:
                now = time.monotonic()
                old = self.table.sockets(self.port, self.mask)
                self._old = {_identity(s) for s in old}
                # expires_ms is the TIME_WAIT countdown; 1 s for its 0.1 s-granular timer.
                self._old_until = now + max((s.expires_ms for s in old), default=0) / 1000 + 1
        except OSError:
            self.table = None

    def __call__(self) -> int | None:
        if self.table is None:
            return None
        if self._old and time.monotonic() < self._old_until:
            return sum(1 for s in self.table.sockets(self.port, self.mask)
                       if _identity(s) not in self._old)
        return self.table.count(self.port, self.mask)[6]

    def established(self) -> int | None:
        if self.table is None:
            return None
        return self.table.count(self.port)[1]

    def close(self) -> None:
        if self.table is not None:
            self.table.close()


def _identity(s: Any) -> object:
    """A socket's cookie; its addresses where /proc/net/tcp gives no cookie (0)."""
    return s.cookie or (s.src, s.sport, s.dst, s.dport)


class _Tally:
    __slots__ = ("attempted", "failed", "ok", "tw_peak")

    def __init__(self) -> None:
        self.attempted = 0
        self.ok = 0
        self.failed = 0
        self.tw_peak: int | None = None


class _Conn:
    __slots__ = ("got", "since", "sock", "stage")

    def __init__(self, sock: socket.socket, since: float) -> None:
        self.sock = sock
        self.stage = 0  # 0 connecting, 1 waiting for the echo
        self.got = 0
        self.since = since  # when its connect() (or, pooled, its request) started


def run(
    target: Target,
    mode: str = "fresh",
    count: int = 30_000,
    duration: float = 30.0,
    workers: int = 32,
    pool_size: int = 8,
    progress: Callable[[Progress], None] | None = None,
    interval: float = 0.5,
    wait_close: bool = False,
    on_first_error: Callable[[FirstError], None] | None = None,
) -> BombResult:
    """Run the bomb until ``count`` attempts or ``duration`` seconds.

    ``wait_close``: after the echo, wait for the server to close first (read
    until EOF), as a client of a server that closes does; TIME_WAIT then lands
    on the server's side.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    errors: Counter[str] = Counter()
    tw = _TimeWaitCounter(target.port)
    ports = port_range_size()
    timeline: list[Progress] = []
    state = _Tally()
    first: list[FirstError] = []
    started = time.monotonic()
    deadline = started + duration
    pool_established: int | None = None
    bind_addr = ("::1" if target.family == socket.AF_INET6 else "127.0.0.1", 0)
    concurrency = pool_size if mode == "pool" else workers
    stopped_by = "count"

    def sample_tw() -> int | None:
        n = tw()
        if n is not None and (state.tw_peak is None or n > state.tw_peak):
            state.tw_peak = n
        return n

    def fail(code: int, sock: socket.socket | None) -> None:
        if sock is not None:
            fd = sock.fileno()
            if fd in conns:
                ep.unregister(fd)
                del conns[fd]
            sock.close()
        state.failed += 1
        name = "EOF" if code == EOF_ERRNO else errno_name(code)
        errors[name] += 1
        if not first:
            first.append(FirstError(
                errno=code, name=name,
                message="connection closed before the echo" if code == EOF_ERRNO
                else os.strerror(code),
                at_s=round(time.monotonic() - started, 3), after_ok=state.ok,
                time_wait=sample_tw(), port_range=ports, in_flight=len(conns),
            ))
            if on_first_error is not None:
                on_first_error(first[0])

    def start_one() -> None:
        """Open one connection and send the request at once if it connected."""
        state.attempted += 1
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE: too many workers for our fd limit
            fail(exc.errno or 0, None)
            return
        if mode == "bind":
            try:
                sock.bind(bind_addr)
            except OSError as exc:
                fail(exc.errno or 0, sock)
                return
        since = time.monotonic()
        code = sock.connect_ex(target.sockaddr)
        if code not in (0, errno.EINPROGRESS):
            fail(code, sock)
            return
        conn = _Conn(sock, since)
        # On loopback the handshake often completes inside connect(): try
        # the request now and skip one epoll round trip when it did.
        send_request(conn, register=True)

    def send_request(conn: _Conn, register: bool) -> bool:
        """Send the request; ``register``: the socket is new, not yet in epoll."""
        sock = conn.sock
        try:
            sock.send(PAYLOAD)
        except BlockingIOError:
            if register:
                ep.register(sock.fileno(), OUT)
                conns[sock.fileno()] = conn
            else:
                ep.modify(sock.fileno(), OUT)
            return False
        except OSError as exc:
            fail(exc.errno or 0, sock)
            return False
        conn.stage = 1
        conn.got = 0
        if register:
            ep.register(sock.fileno(), IN)
            conns[sock.fileno()] = conn
        else:
            ep.modify(sock.fileno(), IN)
        return True

    def finish(conn: _Conn) -> None:
        nonlocal pool_established
        sock = conn.sock
        state.ok += 1
        if mode == "pool":
            if budget_left():
                state.attempted += 1
                conn.since = time.monotonic()
                conn.stage = 0  # if the send would block, EPOLLOUT sends it as after a connect
                send_request(conn, register=False)
                return
            if pool_established is None:  # the pool, seen just before it closes
                pool_established = tw.established()
        ep.unregister(sock.fileno())
        del conns[sock.fileno()]
        if mode == "linger0":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        sock.close()

    def budget_left() -> bool:
        return state.attempted < count and time.monotonic() < deadline

    next_tick = started + interval
    last_ok, last_t = 0, started
    waiting: list[_Conn] = []  # the connections still under way when the run stopped
    try:
        while True:
            while len(conns) < concurrency and budget_left():
                start_one()
            if not conns:
                break
            now = time.monotonic()
            for fd, _mask in ep.poll(max(0.0, min(next_tick, deadline) - now)):
                conn = conns.get(fd)
                if conn is None:
                    continue
                sock = conn.sock
                if conn.stage == 0:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        fail(code, sock)
                    else:
                        send_request(conn, register=False)
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(exc.errno or 0, sock)
                    continue
                if not data:
                    if wait_close and conn.got >= len(PAYLOAD):
                        finish(conn)  # the server closed first, as asked
                    else:
                        fail(EOF_ERRNO, sock)
                    continue
                conn.got += len(data)
                if conn.got >= len(PAYLOAD) and not wait_close:
                    finish(conn)
            now = time.monotonic()
            if now >= deadline and conns:
                stopped_by = "duration"
                waiting.extend(conns.values())
                for conn in list(conns.values()):
                    ep.unregister(conn.sock.fileno())
                    conn.sock.close()
                conns.clear()
            if now >= next_tick:
                rate = (state.ok - last_ok) / (now - last_t) if now > last_t else 0.0
                p = Progress(round(now - started, 3), state.attempted, state.ok,
                             state.failed, round(rate, 1), sample_tw())
                timeline.append(p)
                if progress is not None:
                    progress(p)
                last_ok, last_t = state.ok, now
                next_tick = now + interval
        if time.monotonic() >= deadline and state.attempted < count:
            stopped_by = "duration"
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    finally:
        stopped_at = time.monotonic()
        waiting.extend(conns.values())
        for conn in conns.values():
            conn.sock.close()
        ep.close()
        sample_tw()
        tw.close()
    elapsed = time.monotonic() - started
    unanswered = sum(1 for c in waiting if c.stage == 1)
    return BombResult(
        mode=mode, host=target.host, port=target.port, attempted=state.attempted,
        ok=state.ok, failed=state.failed, errors=dict(errors.most_common()),
        first_error=first[0] if first else None,
        conns_per_s=round(state.ok / elapsed, 1) if elapsed > 0 else 0.0,
        time_wait_peak=state.tw_peak, elapsed_s=round(elapsed, 3), stopped_by=stopped_by,
        workers=workers, pool_size=pool_size if mode == "pool" else None,
        established_before_close=pool_established, time_wait_baseline=tw.baseline,
        unanswered=unanswered, unconnected=len(waiting) - unanswered,
        longest_wait_s=round(max(stopped_at - c.since for c in waiting), 3) if waiting else None,
        stalled=sum(1 for c in waiting if stopped_at - c.since >= STALL_S),
        timeline=timeline,
    )
