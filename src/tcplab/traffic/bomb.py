"""The port bomb: many short-lived connections, until the kernel runs out of ports.

A configuration of the client engine (``traffic/engine.py``: one epoll loop,
each connection living its table): ``workers`` connections in flight at once,
each connect -> send -> read the echo -> close, and a finished one replaced at
once until the count or the time bound is reached (``config()``; fresh mode is
``engine.churn_config``, bench's churn client). What is the bomb's own: the
TIME_WAIT count, the port-range size, and the records below. The modes:

* ``fresh``: connect, one echo, close. The client closes first, so the
  client's side lands in TIME_WAIT for 60 s, holding its ephemeral port for
  that destination; when every port of ``ip_local_port_range`` is held,
  connect() fails with EADDRNOTAVAIL, "Cannot assign requested address".
* ``pool``: ``pool_size`` persistent connections carry the same requests:
  no new ports, no TIME_WAIT: the fix.
* ``pool`` with ``max_idle`` below ``pool_size``: the fix undone. Requests go
  out ``pool_size`` at a time, the next ``pool_size`` when all are answered;
  after each, its connection goes back to the pool only if fewer than
  ``max_idle`` are idle, else it is closed, and a request takes an idle
  connection before it opens one. Go's http.Transport keeps 2 idle connections
  per host unless told otherwise (DefaultMaxIdleConnsPerHost = 2 and
  tryPutIdleConn's errTooManyIdleHost, net/http/transport.go, Go 1.19): 8
  requests at a time then open 6 new connections per round, and the client's
  closes fill TIME_WAIT as the fresh bomb does. In rounds, so that the count
  of new connections is (pool_size - max_idle) per round whatever the timing
  (3,000 requests, 8 at a time, cap 2: 2,252 new connections, in each of 3
  runs in a private namespace, 2026-11-30). Requests in a steady stream
  churn too, by as many as finish together beyond the cap, a count that depends
  on the timing: 1,900 to 1,973 of 3,000 in 3 runs of the engine's steady-stream
  pool, since removed as unused (audit3, 2026-11-30:
  docs/audit/issue13-go-and-experiments.md, B1).
* ``linger0``: SO_LINGER {on, 0} before close(): close sends RST instead of
  FIN, the socket skips TIME_WAIT, and the server sees ECONNRESET. A hack:
  TIME_WAIT exists to keep a delayed segment of this connection from being
  taken for part of the next one that reuses the 4-tuple, and a RST throws
  away any data still in flight.
* ``bind``: bind() to port 0 before connect(). The kernel must then pick a
  port free for *every* destination, so ports are no longer shared per
  4-tuple; bind() fails with EADDRINUSE, "Address already in use", when none
  is left (IP_BIND_ADDRESS_NO_PORT would defer the choice to connect()).
  Toward one destination that is at about the same count as without bind()
  (a 1,000-port range here: 1,000 connections either way, the first error
  after 978 to 999, 3 runs each, issue 13); it is earlier only where ports
  could have been shared across destinations.

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

import dataclasses
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcplab.kernel import tcp_states
from tcplab.traffic import engine
from tcplab.traffic.target import Target

MODES = ("fresh", "pool", "linger0", "bind")
PAYLOAD = b"tcplab port bomb"
#: A connection that sees EOF before its whole echo came back (named EOF).
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
    max_idle: int | None = None  # pool mode with an idle cap: idle connections kept at most
    opened: int | None = None  # connections opened (socket() tried): in pool mode, the new ones
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
            from tcplab.observe.sockets import SocketTable

            self.table = SocketTable()
            self.mask = tcp_states.mask([tcp_states.TIME_WAIT])
            self.baseline = self.table.count(self.port, self.mask)[tcp_states.TIME_WAIT]
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
        return self.table.count(self.port, self.mask)[tcp_states.TIME_WAIT]

    def established(self) -> int | None:
        if self.table is None:
            return None
        return self.table.count(self.port)[tcp_states.ESTABLISHED]

    def close(self) -> None:
        if self.table is not None:
            self.table.close()


def _identity(s: Any) -> object:
    """A socket's cookie; its addresses where /proc/net/tcp gives no cookie (0)."""
    return s.cookie or (s.src, s.sport, s.dst, s.dport)


def config(mode: str = "fresh", count: int = 30_000, duration: float = 30.0,
           workers: int = 32, pool_size: int = 8, wait_close: bool = False,
           family: int = socket.AF_INET, max_idle: int | None = None) -> engine.Config:
    """The bomb as an engine configuration; ``fresh`` is also bench's churn client
    (``engine.churn``): connect, one echo, close, ``workers`` at once.

    A pooled connection runs round trips while the budget lasts, then is held
    open, so that the pool can be seen whole (``established_before_close``)
    before it closes. With ``max_idle``, the engine's pool with an idle cap, in
    rounds of ``pool_size`` requests."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if max_idle is not None and mode != "pool":
        raise ValueError("max_idle is pool mode's")
    churn = engine.churn_config(count, workers, duration, PAYLOAD)
    if mode == "pool":
        return dataclasses.replace(churn, concurrency=pool_size, round_trips=None,
                                   then=engine.Then.HOLD, idle_cap=max_idle)
    return dataclasses.replace(
        churn, then=engine.Then.AWAIT_CLOSE if wait_close else engine.Then.CLOSE,
        linger0=mode == "linger0",
        source=(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0)
                if mode == "bind" else None))


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
    max_idle: int | None = None,
) -> BombResult:
    """Run the bomb until ``count`` attempts or ``duration`` seconds.

    ``wait_close``: after the echo, wait for the server to close first (read
    until EOF), as a client of a server that closes does; TIME_WAIT then lands
    on the server's side.
    """
    cfg = config(mode, count, duration, workers, pool_size, wait_close, target.family,
                 max_idle)
    tw = _TimeWaitCounter(target.port)
    ports = port_range_size()
    timeline: list[Progress] = []
    tw_peak: list[int] = []  # the highest TIME_WAIT count sampled, if any
    first: list[FirstError] = []
    pool_established: int | None = None
    stopped_by = "count"

    def sample_tw() -> int | None:
        n = tw()
        if n is not None and (not tw_peak or n > tw_peak[0]):
            tw_peak[:] = [n]
        return n

    def first_error(f: engine.Failure) -> None:
        first.append(FirstError(
            errno=f.errno, name=f.name, message=f.message, at_s=f.at_s, after_ok=f.ok_before,
            time_wait=sample_tw(), port_range=ports, in_flight=f.in_flight))
        if on_first_error is not None:
            on_first_error(first[0])

    try:
        driver = engine.Driver(target, cfg, on_first_error=first_error)
    except BaseException:  # no epoll instance (EMFILE): the socket table still closes
        tw.close()
        raise
    started = driver.started
    last = [driver.ok, started]  # ok and time at the last progress sample

    def tick(now: float) -> None:
        ok, t = last
        rate = (driver.ok - ok) / (now - t) if now > t else 0.0
        p = Progress(round(now - started, 3), driver.attempted, driver.ok, driver.failed,
                     round(rate, 1), sample_tw())
        timeline.append(p)
        if progress is not None:
            progress(p)
        last[:] = [driver.ok, now]

    waiting: list[engine.Waiting] = []
    try:
        stop = driver.run(on_tick=tick, tick_s=interval)
        if stop is engine.Stop.DURATION:
            stopped_by = "duration"
        elif mode == "pool":  # the pool, seen whole just before it closes
            pool_established = tw.established()
        if time.monotonic() >= driver.deadline and driver.attempted < count:
            stopped_by = "duration"
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    finally:
        waiting = driver.stop()  # those under way: neither ok nor failed
        driver.close()
        sample_tw()
        tw.close()
    elapsed = time.monotonic() - started
    unconnected = sum(1 for w in waiting if w.stage is engine.Stage.CONNECTING)
    return BombResult(
        mode=mode, host=target.host, port=target.port, attempted=driver.attempted,
        ok=driver.ok, failed=driver.failed, errors=dict(driver.errors.most_common()),
        first_error=first[0] if first else None,
        conns_per_s=round(driver.ok / elapsed, 1) if elapsed > 0 else 0.0,
        time_wait_peak=tw_peak[0] if tw_peak else None, elapsed_s=round(elapsed, 3),
        stopped_by=stopped_by, workers=workers, pool_size=pool_size if mode == "pool" else None,
        max_idle=max_idle,
        opened=driver.opened,
        established_before_close=pool_established, time_wait_baseline=tw.baseline,
        unanswered=len(waiting) - unconnected, unconnected=unconnected,
        longest_wait_s=round(max(w.waited_s for w in waiting), 3) if waiting else None,
        stalled=sum(1 for w in waiting if w.waited_s >= STALL_S),
        timeline=timeline,
    )
