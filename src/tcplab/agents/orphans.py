"""Sockets no process holds: ``python -m tcplab.agents.orphans``.

Run inside a sandbox (or ``unshare -Urn``): it writes two of its namespace's
own sysctls (tcp_fin_timeout, tcp_orphan_retries) and, for the last case,
builds the silent link of agents/keepalive.py (over rtnetlink). After each
step one ``Look``: the namespace's TCP sockets by state (sock_diag, the
listener left out) beside what /proc/net/sockstat says (``tw``, ``orphan``).

* ``fin-wait2``: 5 clients close() while the server holds its ends (CLOSE_WAIT).
  Each client socket, an orphan once closed, becomes a FIN_WAIT2 minisocket when
  the server's ACK arrives (tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) in
  tcp_rcv_state_process); sockstat's ``tw`` counts every timewait minisocket,
  whatever its substate, so it says 5 with no socket in TIME_WAIT. Then
  tcp_fin_timeout (3 s here, ``--fin-timeout``) later they are gone (the
  ``Look`` says how long after close()) and the server still holds its 5
  CLOSE_WAIT sockets.
* ``fin-wait1``: 5 servers write until their send buffers are full to clients
  that never read, then close(): the FIN waits behind the unsent data and the
  closed window, so the sockets stay in FIN_WAIT1, orphans (sockstat
  ``orphan``). The clients then close() with unread data, which sends a RST
  (tcp_close) and ends them.
* ``orphan-retries``: one connection over the silent link, tcp_orphan_retries
  = 2; the peer goes silent and the client close()s: its FIN is retransmitted
  until tcp_write_timeout gives up on the orphan (retransmits_timed_out: 2
  retries from a 200 ms RTO allow 0.2 + 0.4 + 0.8 = 1.4 s, and it gives up at
  the first retransmission timeout after that; about 3.3 s here), and the
  socket is gone.

Across a real link (``--client-netns PATH --server-netns PATH --host ADDR``:
``tcplab experiment orphans --link veth``, the agent at the server's end of a
tcplab net) the clients are made in the net's client namespace and the listener
in the server's (agents/ends.py); the first two cases' looks count both
namespaces' sockets, the third's the client's only (the orphan is there; its
peer, left in the server's accept queue, stays ESTABLISHED), and sockstat is
read in the client's namespace, where the FIN_WAIT2 minisockets are. The peer
goes silent as in agents/keepalive.py's ``NetPeer`` (nftables rules in the
server's namespace, this connection's segments dropped both ways). The agent
writes no sysctl there: the experiment sets tcp_fin_timeout at both ends and
tcp_orphan_retries at the client's (the orphan's) through the sysctl agent's
guarded ``--set --netns`` before the agent starts, so the fin-wait1 case's
orphans, at the server, keep the kernel's default as on loopback, where the
agent sets it only before the last case.

sockstat's ``orphan`` is the machine's count, not the namespace's (a new
namespace shows the host's value: tcp_orphan_count is one per-CPU counter for
all of them), so other processes' orphans may add to it; ``tw`` and the states
are this namespace's.
"""

from __future__ import annotations

import argparse
import errno
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit, require_net_end, require_private_netns, write_sysctl
from tcplab.agents.keepalive import NetPeer, Peer, PeerLink
from tcplab.kernel import tcp_states
from tcplab.net.build import link_up
from tcplab.observe import procfs
from tcplab.observe.netns import entered
from tcplab.observe.sockets import SocketTable

HOST, PORT = "127.0.0.1", 8080
N = 5
FIN_TIMEOUT_S = 3
ORPHAN_RETRIES = 2
GUARD_S = 30.0  # every wait is bounded by this


@dataclass(frozen=True, slots=True)
class Look:
    """The namespace's TCP sockets after one step, and what sockstat said."""

    t: float  # seconds since the agent started
    case: str  # fin-wait2, fin-wait1 or orphan-retries
    step: str  # what was just done, in words
    states: dict[str, int]  # TCP sockets by state (netstat's names), listeners left out
    sockstat_tw: int  # /proc/net/sockstat "TCP: ... tw N" (this namespace)
    sockstat_orphan: int  # "orphan N" (the whole machine's count)
    #: From close() until the sockets were gone: the FIN_WAIT2 minisockets (fin-wait2's
    #: second look), the orphan (orphan-retries' second look).
    lived_s: float | None = None
    retransmits: int | None = None  # orphan-retries: Tcp RetransSegs meanwhile


def states(ends: Ends | None = None, roles: tuple[str, ...] = ("client", "server")
           ) -> dict[str, int]:
    """The TCP sockets of ``roles``' namespaces by state, listeners left out (one
    namespace counted once: on loopback both roles are this one)."""
    ends = ends or Ends()
    found: Counter[str] = Counter()
    for path in dict.fromkeys(ends.paths[r] for r in roles):
        with SocketTable(netns=path) as table:
            found.update(tcp_states.name(s.state) for s in table.sockets()
                         if s.state != tcp_states.LISTEN)
    return dict(sorted(found.items()))


class Agent:
    def __init__(self, fin_timeout: int = FIN_TIMEOUT_S,
                 orphan_retries: int = ORPHAN_RETRIES, ends: Ends | None = None,
                 host: str = HOST) -> None:
        self.t0 = time.monotonic()
        self.fin_timeout = fin_timeout
        self.retries = orphan_retries
        self.ends = ends or Ends()
        self.host = host
        self.net = self.ends.paths["client"] is not None  # across a tcplab net's link
        self.roles: tuple[str, ...] = ("client", "server")  # whose sockets a look counts

    def look(self, case: str, step: str, **extra: float | int | None) -> Look:
        with entered(self.ends.paths["client"]):  # the minisockets' namespace
            stat = procfs.sockstat()
        return Look(round(time.monotonic() - self.t0, 3), case, step,
                    states(self.ends, self.roles), stat["tw"], stat["orphan"],
                    **extra)  # type: ignore[arg-type]

    def until(self, check: str, count: int) -> None:
        """Wait (bounded) until ``count`` sockets are in state ``check``."""
        deadline = time.monotonic() + GUARD_S
        while (states(self.ends, self.roles).get(check, 0) != count
               and time.monotonic() < deadline):
            time.sleep(0.02)

    def client(self, rcvbuf: int | None = None) -> socket.socket:
        """A connected client socket, made in the client's namespace."""
        c = self.ends.socket("client")
        if rcvbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.settimeout(5)
        c.connect((self.host, PORT))
        return c

    def fin_wait2(self, ls: socket.socket) -> None:
        clients = [self.client() for _ in range(N)]
        servers = [ls.accept()[0] for _ in clients]
        closed = time.monotonic()
        for c in clients:
            c.close()
        self.until("FIN_WAIT2", N)
        emit(self.look("fin-wait2", "the clients closed; the server holds its ends"))
        self.until("FIN_WAIT2", 0)  # the minisockets' timer: tcp_fin_timeout, a little late
        emit(self.look("fin-wait2", f"the FIN_WAIT2 minisockets were gone "
                       f"(tcp_fin_timeout = {self.fin_timeout})",
                       lived_s=round(time.monotonic() - closed, 3)))
        for s in servers:
            s.close()
        self.until("LAST_ACK", 0)  # their FINs meet a RST: no socket left on the client side

    def fin_wait1(self, ls: socket.socket) -> None:
        clients = [self.client(rcvbuf=4096) for _ in range(N)]  # a window that closes soon
        servers = [ls.accept()[0] for _ in clients]
        for s in servers:
            s.setblocking(False)
            deadline = time.monotonic() + GUARD_S
            while time.monotonic() < deadline:  # fill the peer's window and our send buffer
                try:
                    s.send(b"x" * 65536)
                except BlockingIOError:
                    time.sleep(0.05)  # once more, after the last ACKs arrived
                    try:
                        s.send(b"x" * 65536)
                    except BlockingIOError:
                        break
            s.close()
        self.until("FIN_WAIT1", N)
        emit(self.look("fin-wait1", "the servers closed with unsent data and the clients' "
                       "windows closed"))
        # Unread data in each client first: across a delayed link the first segments may
        # still be on their way, and a client that closes with nothing to read sends a
        # FIN, not a RST (tcp_close), which leaves its server CLOSING (seen at 200 ms each
        # way). On loopback the data is there already.
        for c in clients:
            select.select([c], [], [], GUARD_S)
        for c in clients:
            c.close()  # unread data: a RST (tcp_close), which ends the orphans too
        self.until("FIN_WAIT1", 0)
        emit(self.look("fin-wait1", "the clients closed with unread data"))

    def orphan_retries(self) -> None:
        link: Peer
        if self.net:  # tcp_orphan_retries set at the client's end by the experiment
            link = NetPeer(self.ends, self.host)
        else:
            write_sysctl("net.ipv4.tcp_orphan_retries", self.retries)
            link = PeerLink()
        self.roles = ("client",)  # the orphan's side; the silent peer's socket stays
        with link:
            c = link.connect()
            time.sleep(0.3)
            link.silence(c)
            before = link.counters()["retransmits"]
            t = time.monotonic()
            c.close()  # its FIN goes nowhere
            time.sleep(0.05)
            emit(self.look("orphan-retries", "the peer went silent and the client closed"))
            deadline = t + GUARD_S
            while (states(self.ends, self.roles).get("FIN_WAIT1", 0)
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            lived = time.monotonic() - t
            emit(self.look("orphan-retries", f"the orphan was gone "
                           f"(tcp_orphan_retries = {self.retries})",
                           lived_s=round(lived, 3),
                           retransmits=link.counters()["retransmits"] - before))


CASES = ("fin-wait2", "fin-wait1", "orphan-retries")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.orphans",
                                description="Orphaned sockets: FIN_WAIT2 minisockets counted "
                                "as sockstat's tw, FIN_WAIT1 orphans behind a closed window, "
                                "and an orphan's FIN given up after tcp_orphan_retries; emit "
                                "a Look after each step.")
    p.add_argument("cases", nargs="*", metavar="CASE",
                   help=f"the cases to run ({', '.join(CASES)}); all by default")
    p.add_argument("--fin-timeout", type=int, default=FIN_TIMEOUT_S, metavar="SECONDS",
                   help=f"this namespace's tcp_fin_timeout (default {FIN_TIMEOUT_S})")
    p.add_argument("--orphan-retries", type=int, default=ORPHAN_RETRIES, metavar="N",
                   help=f"this namespace's tcp_orphan_retries (default {ORPHAN_RETRIES}; 0 "
                   "is the kernel's 8)")
    p.add_argument("--host", default=HOST,
                   help="the server's address (default 127.0.0.1: one namespace)")
    add_arguments(p)
    args = p.parse_args(argv)
    for case in args.cases:
        if case not in CASES:
            p.error(f"unknown case {case!r} (choose from {', '.join(CASES)})")
    ends = Ends.from_args(args)
    if args.client_netns or args.server_netns:
        if not (args.client_netns and args.server_netns):
            p.error("--client-netns and --server-netns go together")
        # The experiment set the sysctls (the sysctl agent's --set --netns); this agent
        # only adds the silent peer's nftables rules, here, in the server's namespace.
        require_net_end(p, "orphans", "server")
    else:
        require_private_netns(p, "orphans")
        try:
            link_up("lo")  # up in a sandbox already; down under unshare -Urn
            write_sysctl("net.ipv4.tcp_fin_timeout", args.fin_timeout)
        except OSError as e:
            p.exit(1, f"cannot set this namespace's tcp_fin_timeout: {e} "
                   "(run in a sandbox or under unshare -Urn)\n")
    agent = Agent(args.fin_timeout, args.orphan_retries, ends, args.host)
    ls = ends.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        ls.bind((args.host, PORT))
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:
            raise
        p.exit(1, "127.0.0.1 is not up here: run in a sandbox\n")
    ls.listen()
    for case in args.cases or CASES:
        if case == "fin-wait2":
            agent.fin_wait2(ls)
        elif case == "fin-wait1":
            agent.fin_wait1(ls)
        else:
            agent.orphan_retries()
    ls.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
