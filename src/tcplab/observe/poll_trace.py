"""``tcplab trace --poll``: state changes from sock_diag snapshots, no privilege needed.

Sockets are keyed by their cookie (a minisocket keeps the cookie of the
socket it replaces, inet_twsk_alloc in net/ipv4/inet_timewait_sock.c, and
sock_diag reports its own state, FIN_WAIT2 or TIME_WAIT, so FIN_WAIT2 ->
TIME_WAIT shows here, unlike in tracefs). A state that lasts less than the
poll interval is missed: the handshake's SYN_SENT and SYN_RECV, on loopback,
usually are.
"""

from __future__ import annotations

from tcplab.kernel import tcp_states
from tcplab.kernel.records import TcpSocket
from tcplab.kernel.tracefs import Transition
from tcplab.observe.sockets import SocketTable


class PollTracer:
    def __init__(self, port: int, start: float, netns: str | None = None) -> None:
        self.port = port
        self.start = start
        self.table = SocketTable(netns=netns)
        self.prev: dict[int, tuple[int, float, TcpSocket]] = {}
        self.first = True

    def close(self) -> None:
        self.table.close()

    def sample(self, now: float) -> list[Transition]:
        cur = {s.cookie: s for s in self.table.sockets(self.port)}
        out: list[Transition] = []
        if self.first:  # what exists already is not a change
            self.prev = {c: (s.state, now, s) for c, s in cur.items()}
            self.first = False
            return out
        for cookie, s in cur.items():
            seen = self.prev.get(cookie)
            if seen is None:
                out.append(self._t(now, s, "(new)", tcp_states.name(s.state), None))
                self.prev[cookie] = (s.state, now, s)
            elif seen[0] != s.state:
                out.append(self._t(now, s, tcp_states.name(seen[0]), tcp_states.name(s.state),
                                   seen[1]))
                self.prev[cookie] = (s.state, now, s)
        for cookie in [c for c in self.prev if c not in cur]:
            state, since, s = self.prev.pop(cookie)
            out.append(self._t(now, s, tcp_states.name(state), "(gone)", since))
        return out

    def _t(self, now: float, s: TcpSocket, old: str, new: str, since: float | None
           ) -> Transition:
        return Transition(
            t=round(now - self.start, 6), saddr=s.src, sport=s.sport, daddr=s.dst,
            dport=s.dport, old=old, new=new,
            ms_in_old=None if since is None else round((now - since) * 1000, 1),
            note="seen by polling" if old != "(new)" else "",
        )
