"""A listener that never calls accept(): ``python -m tcplab.agents.syn_queue BACKLOG``.

Run inside a sandbox: it writes the namespace's own sysctls, and refuses to
start (exit 2) in a namespace that has an interface besides lo or is its
parent's (agents/io.py: private_netns), where they could be the host's. Three rounds, each
on a fresh listener (listen(BACKLOG), never accept()) with its own sysctls:
``cookies`` (tcp_syncookies = 1, the default), ``abort`` (the same with
tcp_abort_on_overflow = 1) and ``no-cookies`` (tcp_syncookies = 0);
tcp_max_syn_backlog is set to BACKLOG in all three, to show where it counts.
Each round has four phases, and one ``Phase`` record is emitted per phase:

* ``filled``: BACKLOG clients connect; the accept queue (LISTEN Recv-Q) holds them.
* ``burst``: BACKLOG + 3 more clients connect at once, each with its final ACK
  held back: a client socket in delayed-ACK ("pingpong") mode does not answer
  the SYN-ACK at once but from its delayed-ACK timer, up to TCP_DELACK_MAX
  (200 ms) later (tcp_rcv_synsent_state_process, net/ipv4/tcp_input.c; the
  client is ESTABLISHED already, tcp_finish_connect). TCP_QUICKACK = 0 puts a
  socket in that mode (__tcp_sock_set_quickack, net/ipv4/tcp.c). It stands in
  for a network's delay: on loopback the whole handshake otherwise runs inside
  connect(). Their SYNs find the accept queue not full (BACKLOG sockets, and
  sk_acceptq_is_full in include/net/sock.h is "more than the backlog"), so
  each gets a request socket (SYN_RECV) in the SYN queue, until that queue is
  full (more than BACKLOG): then tcp_conn_request (tcp_input.c) answers with a
  SYN cookie and keeps nothing (syncookies on), or drops the SYN (off: the
  client stays SYN_SENT; with syncookies off it drops already once fewer than a
  quarter of tcp_max_syn_backlog is left free).
  The sample is taken before the held ACKs leave.
* ``acks``: the held ACKs arrived. One more socket fits in the accept queue
  (BACKLOG + 1); for every other one tcp_v4_syn_recv_sock (tcp_ipv4.c) finds
  the queue full and creates nothing (ListenOverflows, ListenDrops): the client
  is ESTABLISHED, the server keeps only its request socket, or nothing for a
  cookie's; tcp_check_req (tcp_minisocks.c) then leaves the request socket
  (tcp_abort_on_overflow = 0) or sends the client a RST (= 1). A cookie's ACK
  goes through cookie_v4_check (syncookies.c) instead, which drops it whatever
  tcp_abort_on_overflow says: that client is not reset. Each client's next
  recv() says which.
* ``syn``: 3 more clients connect with the queue full: tcp_conn_request drops
  each SYN (ListenOverflows, ListenDrops); no SYN-ACK, no RST: the client sits
  in SYN_SENT, its connect() neither done nor refused, and retries later.

The counters are the namespace's own /proc/net/netstat TcpExt (a new network
namespace has its own), as deltas over each phase. When a held ACK left before
the burst was sampled (DelayedACKs moved: the agent was descheduled for 200 ms
on a loaded machine), the round is run again on a fresh port, up to 3 tries.

Across a link (``--host`` the server's address, ``--client-netns`` and
``--server-netns``: agents/ends.py) the listener is made in the server's
namespace and the clients in the client's, so every SYN, SYN-ACK and ACK
crosses the veth pair. The listener's sysctls are then the server namespace's,
set by the experiment before each round (``--round NAME``: that round only;
control.set_sysctls) and only read here: this agent writes sysctls only in a
namespace require_private_netns passed. The counters are the server's, but
DelayedACKs, the clients' timer, is the client namespace's. The held ACKs are
held the same way (TCP_QUICKACK 0), on a delayed link too: the link alone would
hold an ACK for one one-way delay after the server has seen its SYN, on an
unshaped veth microseconds. Packets take time to cross, so the burst is sampled
once the server has answered or dropped every SYN of it and every answered
client is ESTABLISHED, and ``acks`` once the server has taken or refused every
held ACK (ListenOverflows, and the one the accept queue took).
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit, require_private_netns, write_sysctl
from tcplab.kernel import tcp_states
from tcplab.observe import procfs
from tcplab.observe.netns import entered

HOST = "127.0.0.1"
#: The first try's port; every further try (and round) takes the next one.
PORT = 8080
#: (round, tcp_syncookies, tcp_abort_on_overflow), in the order they run.
ROUNDS = (("cookies", 1, 0), ("abort", 1, 1), ("no-cookies", 0, 0))
PHASES = ("filled", "burst", "acks", "syn")
#: The burst is this many more clients than the backlog; "syn" starts this many.
EXTRA = 3
TRIES = 3
#: TcpExt counters read per phase (/proc/net/netstat).
COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv",
            "TCPReqQFullDoCookies", "TCPReqQFullDrop", "EmbryonicRsts", "DelayedACKs")


@dataclass(frozen=True, slots=True)
class ClientError:
    """An error some clients' recv() got (EAGAIN, nothing to read yet, is not one)."""

    errno: int
    error: str  # the kernel's text (strerror)
    clients: int


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of one round, sampled at its end."""

    t: float  # seconds since the agent started
    round: str  # cookies, abort or no-cookies
    phase: str  # filled, burst, acks or syn
    port: int
    tries: int  # the round's tries (a burst cut short by a held ACK leaving early is redone)
    backlog: int  # listen()'s backlog (LISTEN Send-Q)
    syncookies: int  # net.ipv4.tcp_syncookies in the namespace
    abort_on_overflow: int  # net.ipv4.tcp_abort_on_overflow
    max_syn_backlog: int  # net.ipv4.tcp_max_syn_backlog
    clients: int  # the clients this phase is about (acks: the burst's, once their ACKs went)
    accept_queue: int  # LISTEN Recv-Q: connections waiting for accept()
    request_sockets: int  # the listener's SYN_RECV request sockets (its SYN queue)
    client_states: dict[str, int]  # this phase's clients by state ("gone": not in the table)
    established_request: int  # of them ESTABLISHED, the server holding only a request socket
    established_none: int  # of them ESTABLISHED, the server holding no socket at all
    errors: tuple[ClientError, ...]  # their next recv(), EAGAIN left out (burst: not read)
    counters: dict[str, int]  # TcpExt deltas over the phase (COUNTERS)


#: Where the sockets are: the server's address, and each end's namespace.
ENDS = Ends()
host = HOST


def ext_counters(role: str) -> dict[str, int]:
    """``role``'s namespace's TcpExt (/proc/thread-self/net follows the entered thread)."""
    with entered(ENDS.paths[role]):
        return procfs.tcp_counters("/proc/thread-self")[1]


def counters() -> dict[str, int]:
    """The listener's counters (the server's namespace), DelayedACKs the clients' (the
    delayed-ACK timer that sends their held ACKs runs at the client's end)."""
    if ENDS.paths["client"] == ENDS.paths["server"]:  # loopback: one namespace
        _, ext = procfs.tcp_counters()
        return {k: ext.get(k, 0) for k in COUNTERS}
    server, client = ext_counters("server"), ext_counters("client")
    return {k: (client if k == "DelayedACKs" else server).get(k, 0) for k in COUNTERS}


def delta(before: dict[str, int]) -> dict[str, int]:
    now = counters()
    return {k: now[k] - before[k] for k in COUNTERS}


def connect(port: int, quickack: bool) -> socket.socket:
    """A non-blocking connect() to the listener; the SYN is out when it returns."""
    c = ENDS.socket("client")
    if not quickack:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
    c.setblocking(False)
    err = c.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        c.close()
        raise OSError(err, os.strerror(err))
    return c


class Round:
    """One try of a round: its listener's port and settings, and how to sample a phase."""

    def __init__(self, name: str, port: int, backlog: int, tries: int, t0: float) -> None:
        self.name, self.port, self.backlog, self.tries, self.t0 = name, port, backlog, tries, t0

    def sample(self, phase: str, clients: list[socket.socket], before: dict[str, int],
               read: bool = True) -> Phase:
        """The phase as sock_diag, the counters and (with ``read``) the clients' recv() see it."""
        ports = {c.getsockname()[1] for c in clients}
        client_of: dict[int, str] = {}
        server_of: dict[int, str] = {}
        queue = requests = 0
        # On loopback both tables are the one namespace's: the server's side of a
        # connection has sport == the listener's port, a client's an ephemeral port.
        with ENDS.table("server") as table:
            for s in table.sockets(self.port):
                state = tcp_states.name(s.state)
                if s.state == tcp_states.LISTEN:
                    queue = s.rqueue
                elif s.sport == self.port:  # the server's side of a connection
                    requests += state == "SYN_RECV"
                    if s.dport in ports:
                        server_of[s.dport] = state
        with ENDS.table("client") as table:
            for s in table.sockets(self.port):
                if s.sport in ports and s.dport == self.port:
                    client_of[s.sport] = tcp_states.name(s.state)
        states: dict[str, int] = {}
        est_request = est_none = 0
        for p in sorted(ports):
            c = client_of.get(p, "gone")
            states[c] = states.get(c, 0) + 1
            if c == "ESTABLISHED":
                server = server_of.get(p)
                est_request += server == "SYN_RECV"
                est_none += server is None
        moved = delta(before)  # read after the table: the phase is what it saw
        return Phase(round(time.monotonic() - self.t0, 3), self.name, phase, self.port,
                     self.tries, self.backlog, sysctl("net.ipv4.tcp_syncookies"),
                     sysctl("net.ipv4.tcp_abort_on_overflow"),
                     sysctl("net.ipv4.tcp_max_syn_backlog"), len(clients), queue, requests,
                     states, est_request, est_none, reads(clients) if read else (), moved)


def sysctl(name: str) -> int:
    """The listener's namespace's (the server's): /proc/sys/net follows the opener."""
    with entered(ENDS.paths["server"]):
        return procfs.sysctl_int(name, -1)


def reads(clients: list[socket.socket]) -> tuple[ClientError, ...]:
    """Each client's next recv(), without waiting: errors other than EAGAIN, counted."""
    seen: dict[int, int] = {}
    for c in clients:
        try:
            c.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue  # nothing to read, no error: still connecting, or connected and idle
        except OSError as e:
            code = e.errno if e.errno is not None else errno.EIO
            seen[code] = seen.get(code, 0) + 1
    return tuple(ClientError(code, os.strerror(code), n) for code, n in sorted(seen.items()))


def accept_queue(port: int) -> int:
    with ENDS.table("server") as table:
        return sum(s.rqueue for s in table.listeners(port))


def queued(port: int, n: int) -> bool:
    return accept_queue(port) >= n


def requests_and_established(port: int, clients: list[socket.socket]) -> tuple[int, int]:
    """The listener's request sockets, and how many of ``clients`` are ESTABLISHED."""
    ports = {c.getsockname()[1] for c in clients}
    with ENDS.table("server") as table:
        requests = sum(1 for s in table.sockets(port)
                       if s.sport == port and tcp_states.name(s.state) == "SYN_RECV")
    with ENDS.table("client") as table:
        established = sum(1 for s in table.sockets(port)
                          if s.sport in ports and s.state == tcp_states.ESTABLISHED)
    return requests, established


def wait_for(done: Callable[[], bool], deadline_s: float) -> None:
    """Poll ``done()`` every 10 ms until it holds or ``deadline_s`` passed (bounded)."""
    end = time.monotonic() + deadline_s
    while not done() and time.monotonic() < end:
        time.sleep(0.01)


def burst_settled(port: int, burst: list[socket.socket], before: dict[str, int]) -> bool:
    """Across a link: the server answered (request socket or cookie) or dropped every SYN
    of the burst, and every answered client got its SYN-ACK (ESTABLISHED)."""
    requests, established = requests_and_established(port, burst)
    moved = delta(before)
    answered = requests + moved["SyncookiesSent"]
    return answered + moved["ListenDrops"] >= len(burst) and established >= answered


def one_try(name: str, port: int, backlog: int, tries: int, t0: float
            ) -> tuple[list[Phase], bool]:
    """The round's four phases on ``port``; False when the burst was cut short."""
    r = Round(name, port, backlog, tries, t0)
    across = ENDS.paths["server"] is not None
    ls = ENDS.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(backlog)
    socks = [ls]
    try:
        phases = []
        before = counters()
        if across:
            # One at a time: their SYNs, arriving together a one-way delay later, would
            # fill the SYN queue past tcp_max_syn_backlog's last quarter (syncookies
            # off: tcp_conn_request drops the SYN, retried a second later).
            filled = []
            for i in range(backlog):
                filled.append(connect(port, quickack=True))
                socks.append(filled[-1])
                wait_for(functools.partial(queued, port, i + 1), 2.0)
        else:
            filled = [connect(port, quickack=True) for _ in range(backlog)]
            socks += filled
        wait_for(lambda: accept_queue(port) >= backlog, 2.0)  # at once, on loopback
        phases.append(r.sample("filled", filled, before))

        before = counters()
        burst = [connect(port, quickack=False) for _ in range(backlog + EXTRA)]
        socks += burst
        if across:  # on loopback the handshakes ran inside connect()
            wait_for(lambda: burst_settled(port, burst, before), 2.0)
        # Not read: a recv() on a client whose ACK is still held is not needed to show
        # anything, and the ACK must leave from its timer alone.
        held = r.sample("burst", burst, before, read=False)
        phases.append(held)
        if held.counters["DelayedACKs"] or delta(before)["DelayedACKs"]:
            return phases, False  # an ACK left before the sample: not the burst we meant

        # Every held ACK goes from its client's delayed-ACK timer (DelayedACKs counts
        # them); the clients that are not ESTABLISHED (SYN dropped) have none to send.
        before = counters()
        waiting = held.client_states.get("ESTABLISHED", 0)
        wait_for(lambda: delta(before)["DelayedACKs"] >= waiting, 3.0)
        if across:  # each ACK crosses the link: wait until the server took or refused it
            wait_for(lambda: delta(before)["ListenOverflows"] + accept_queue(port) - backlog
                     >= waiting, 2.0)
            # and each RST the server then sent (tcp_abort_on_overflow = 1: EmbryonicRsts)
            # crosses back: until that many clients have left ESTABLISHED (the delay line
            # can hold a packet well past 50 ms on a loaded machine; seen once as nobody)
            wait_for(lambda: waiting - requests_and_established(port, burst)[1]
                     >= delta(before)["EmbryonicRsts"], 2.0)
        time.sleep(0.05)  # the ACKs' processing: microseconds on loopback
        phases.append(r.sample("acks", burst, before))

        before = counters()
        late = [connect(port, quickack=True) for _ in range(EXTRA)]
        socks += late
        wait_for(lambda: delta(before)["ListenDrops"] >= EXTRA, 1.0)
        phases.append(r.sample("syn", late, before))
        return phases, True
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.syn_queue",
                                description="Fill a listener that never accept()s: its "
                                "accept queue, its SYN queue, with syncookies on, with "
                                "tcp_abort_on_overflow = 1, and with syncookies off; emit "
                                "a Phase per phase of each round.")
    p.add_argument("backlog", type=int, help="listen()'s backlog (4 or more)")
    p.add_argument("--round", choices=[r[0] for r in ROUNDS],
                   help="run this round only, on the sysctls its namespace has (across a "
                   "link: the experiment sets them in the server's namespace)")
    p.add_argument("--host", default=HOST, help="the server's address")
    add_arguments(p)
    args = p.parse_args(argv)
    backlog = args.backlog
    if backlog < 4:
        p.error("the backlog must be 4 or more (tcp_max_syn_backlog = BACKLOG keeps a "
                "quarter of it, rounded down, for proven peers)")
    global ENDS, host
    ENDS, host = Ends.from_args(args), args.host
    # Sysctls are written only here, in a namespace the guard found private; with
    # --round (one round) they are the namespace's as they are, only read.
    if args.round is None:
        require_private_netns(p, "syn-queue")
        write_sysctl("net.ipv4.tcp_max_syn_backlog", backlog)
    t0 = time.monotonic()
    names = [r[0] for r in ROUNDS]
    # Each round's first port: a fresh one, as when the rounds run one after another.
    port = PORT + (names.index(args.round) * TRIES if args.round else 0)
    for name, cookies, abort in ROUNDS:
        if args.round is not None and name != args.round:
            continue
        if args.round is None:
            write_sysctl("net.ipv4.tcp_syncookies", cookies)
            write_sysctl("net.ipv4.tcp_abort_on_overflow", abort)
        for tries in range(1, TRIES + 1):
            phases, whole = one_try(name, port, backlog, tries, t0)
            port += 1
            if whole or tries == TRIES:
                break
        for ph in phases:
            emit(ph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
