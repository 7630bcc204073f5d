"""The ladder of ``tcplab live``: the packets of a few connections, and their timers.

The page draws one connection as a ladder (client and server as two vertical
lines, each segment an arrow, time going down). This module makes its events,
bounded like the transitions (a port bomb makes tens of thousands of segments a
second: the stream and a recording must not carry them all):

- ``{"kind": "packet", "t", "conn", "src", "sport", "dst", "dport", "flags",
  "word", "seq", "ack", "len"}`` and, for a segment sent again (the same
  sequence number and length, or the same SYN or FIN), ``"retrans_ms"``: the
  time since its previous copy. Only for the connections followed: the first
  FOLLOW connections seen in each interval (a 4-tuple not followed yet), at most
  PACKETS segments an interval in all; the rest are counted in ``"skipped"`` of
  the next ``ladder`` event.
- ``{"kind": "timer", "t", "conn", "addr", "port", "state": "TIME_WAIT",
  "expires_ms"}``: the TIME_WAIT countdown of a followed connection's socket,
  read once from sock_diag (``idiag_expires``, the time left on the socket's
  timer: net/ipv4/inet_diag.c, inet_twsk_diag_fill) once a FIN has been seen;
  the page counts down from there on its own clock.

Packets need an AF_PACKET socket (CAP_NET_RAW: root); without it there are no
packet events, the page draws the connection's transitions only, and the meta
event's ``ladder`` words say why. The capture is opened inside the namespace of
--netns (a packet socket sees the devices of the namespace it was made in), on
its ``lo``.

``conn`` names a connection by its two ends, sorted, so both of its sockets
(and the page, from a transition's saddr:sport and daddr:dport) name it alike.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from tcplab.kernel import tcp_states
from tcplab.kernel.packets import ACK, FIN, RST, SYN, Packet, PacketError, decode_frame

Event = dict[str, Any]

#: New connections followed per interval (the rest of a bomb is not drawn).
FOLLOW = 3
#: Segments sent to the page per interval, all followed connections together.
PACKETS = 300
#: Connections remembered (followed ones, and their sequence numbers).
REMEMBER = 64
#: Sequence numbers remembered per connection and direction, to see a copy.
SEQS = 256
#: Intervals a followed connection's TIME_WAIT socket is looked for after its FIN.
TIMER_TRIES = 20


def conn_key(a: str, ap: int, b: str, bp: int) -> str:
    """One name for a connection from either end: its two ends, sorted."""
    x, y = f"{a}:{ap}", f"{b}:{bp}"
    return f"{x} {y}" if x <= y else f"{y} {x}"


class _Conn:
    __slots__ = ("ends", "fin", "sent", "timer_done", "timer_tries")

    def __init__(self, ends: tuple[str, int, str, int]) -> None:
        # (src, sport, seq, len or SYN/FIN) -> time of the last copy
        self.sent: OrderedDict[tuple[str, int, int, int], float] = OrderedDict()
        self.fin = False
        self.timer_tries = 0
        self.timer_done = False
        self.ends = ends


class Follower:
    """Pure: packets (and transitions) in, the ladder's events out (see module)."""

    def __init__(self, follow: int = FOLLOW, packets: int = PACKETS) -> None:
        self.follow = follow
        self.packets = packets
        self.conns: OrderedDict[str, _Conn] = OrderedDict()
        self._new = 0
        self._sent = 0
        self.skipped = 0

    @property
    def open_for_new(self) -> bool:
        """Whether this interval may still follow a new connection."""
        return self._new < self.follow

    def other_ports(self, port: int) -> list[int]:
        """The followed connections' ports that are not ``port`` (one each)."""
        return [bp if ap == port else ap for ap, bp in
                ((c.ends[1], c.ends[3]) for c in self.conns.values())]

    def next_interval(self) -> int:
        """Starts a new interval's quotas; returns the segments skipped in the last."""
        skipped, self.skipped, self._new, self._sent = self.skipped, 0, 0, 0
        return skipped

    def _take(self, key: str, ends: tuple[str, int, str, int]) -> _Conn | None:
        c = self.conns.get(key)
        if c is not None:
            self.conns.move_to_end(key)
            return c
        if self._new >= self.follow:
            return None
        self._new += 1
        c = self.conns[key] = _Conn(ends)
        while len(self.conns) > REMEMBER:
            self.conns.popitem(last=False)
        return c

    def packet(self, p: Packet, t: float) -> Event | None:
        """The event for one segment, or None when its connection is not followed
        or this interval's PACKETS are spent."""
        key = conn_key(p.src, p.sport, p.dst, p.dport)
        c = self._take(key, (p.src, p.sport, p.dst, p.dport))
        if c is None:
            return None
        if self._sent >= self.packets:
            self.skipped += 1
            return None
        self._sent += 1
        if p.flags & (SYN | ACK) == SYN and c.fin:
            # The same 4-tuple again (on loopback tcp_tw_reuse = 2 lets connect() take
            # a port still in TIME_WAIT): a new connection; the page starts its
            # ladder at this SYN.
            c.sent.clear()
            c.fin = c.timer_done = False
            c.timer_tries = 0
        ev: Event = {"kind": "packet", "t": round(t, 6), "conn": key, "src": p.src,
                     "sport": p.sport, "dst": p.dst, "dport": p.dport, "flags": p.flag_text,
                     "word": p.lab_word, "seq": p.seq, "ack": p.ack, "len": p.length}
        # A segment that occupies sequence space (data, SYN, FIN: RFC 9293 3.4) and
        # is sent again with the same seq is a retransmission; a bare ACK is not.
        span = p.length + (1 if p.flags & SYN else 0) + (1 if p.flags & FIN else 0)
        if span and not p.flags & RST:
            k = (p.src, p.sport, p.seq, span)
            before = c.sent.pop(k, None)
            if before is not None:
                ev["retrans_ms"] = round((t - before) * 1000, 1)
            c.sent[k] = t
            while len(c.sent) > 2 * SEQS:
                c.sent.popitem(last=False)
        if p.flags & (FIN | RST):
            c.fin = True
        return ev

    def transition(self, ev: Event) -> None:
        """A transition (observe.live's event): follows its connection (without
        packets, the ladder draws transitions), and marks a close begun."""
        if not ev.get("sport") or not ev.get("dport"):
            return  # connect() before its port is chosen, a listener
        key = conn_key(ev["saddr"], ev["sport"], ev["daddr"], ev["dport"])
        c = self._take(key, (ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]))
        if c is not None and (ev["new"] in ("FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSING")
                              or ev["old"] in ("FIN_WAIT2", "CLOSING")):
            c.fin = True

    def want_timer(self) -> list[tuple[str, _Conn]]:
        """Followed connections whose TIME_WAIT socket is to be looked for now."""
        out = []
        for key, c in self.conns.items():
            if c.fin and not c.timer_done and c.timer_tries < TIMER_TRIES:
                c.timer_tries += 1
                out.append((key, c))
        return out


class Ladder:
    """A Follower fed by a capture thread (as root) and by LiveSource's transitions."""

    def __init__(self, port: int, netns: str | None, start: float, table: Any,
                 capture: bool) -> None:
        self.port = port
        self.table = table
        #: The source's start (time.monotonic()) as a packet's timestamp gives it
        #: (SO_TIMESTAMPNS: CLOCK_REALTIME), so that packets and the tracepoint's
        #: transitions (trace_clock mono) interleave on the ladder: the pair of
        #: clock readings closest together of a few (microseconds apart).
        pairs = []
        for _ in range(5):
            m0 = time.monotonic()
            w = time.time()
            m1 = time.monotonic()
            pairs.append((m1 - m0, w - (m0 + m1) / 2))
        self.start_wall = start + min(pairs)[1]
        self.start = start
        self.follower = Follower()
        self.why_not: str | None = None
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: Any = None
        if not capture:
            self.why_not = "not asked for"
            return
        try:
            from tcplab.observe.capture import Capture
            from tcplab.observe.netns import entered

            with entered(netns):
                self._cap = Capture(port, "lo")
        except Exception as exc:  # no privilege, no lo: transitions only, and say why
            self.why_not = str(getattr(exc, "message", None) or exc)
            return
        self._attached: tuple[bool, tuple[int, ...]] | None = None
        self.frames_read = 0
        self._refilter()
        self._thread = threading.Thread(target=self._read, name="ladder-capture", daemon=True)
        self._thread.start()

    @property
    def words(self) -> str:
        if self.why_not:
            return (f"The ladder shows a connection's state transitions only, no packets: "
                    f"{self.why_not}.")
        return (f"The ladder shows the segments of the first {FOLLOW} connections seen in "
                f"each interval (at most {PACKETS} segments an interval), captured on lo.")

    def _refilter(self) -> None:
        """The kernel's filter for what the follower wants now (kernel/ladder_filter.py);
        attached again only when that changed. Called with the lock held (or alone)."""
        if not self.port:
            return  # every port: no filter (then the kernel may drop what we cannot read)
        from tcplab.kernel.ladder_filter import ladder_filter

        want = (self.follower.open_for_new, tuple(self.follower.other_ports(self.port)))
        if want != self._attached:
            self._cap.set_filter(ladder_filter(self.port, list(want[1]), want[0]))
            self._attached = want

    def _read(self) -> None:
        cap = self._cap
        while not self._stop.is_set():
            try:
                for ts, frame in cap.frames(0.2):
                    self.frames_read += 1
                    try:
                        p = decode_frame(frame, ts)
                    except PacketError:
                        continue
                    if p is None:
                        continue
                    with self._lock:
                        ev = self.follower.packet(p, ts - self.start_wall)
                        if ev is not None:
                            self._events.append(ev)
                        self._refilter()
            except OSError:
                return  # closed under us: stopping

    def step(self, seen: list[Event]) -> list[Event]:
        """At the end of an interval: its packets, then the timers found."""
        with self._lock:
            for ev in seen:
                if ev["kind"] == "transition":
                    self.follower.transition(ev)
            out, self._events = self._events, []
            skipped = self.follower.next_interval()
            want = self.follower.want_timer()
            if self._cap is not None:
                self._refilter()
        # PACKET_STATISTICS are zeroed as they are read (net/packet/af_packet.c,
        # packet_getsockopt), so this is the interval's count.
        dropped = self._cap.drops() if self._cap is not None else 0
        out.sort(key=lambda e: e["t"])
        if skipped or dropped:
            out.append({"kind": "ladder", "t": round(time.monotonic() - self.start, 3),
                        "skipped": skipped, "dropped": dropped})
        out += self._timers(want)
        return out

    def _timers(self, want: list[tuple[str, _Conn]]) -> list[Event]:
        """One sock_diag dump per connection, filtered on its other port (not the
        chosen one: that one is the whole bomb's)."""
        out: list[Event] = []
        tw = tcp_states.mask([tcp_states.TIME_WAIT])
        for key, c in want:
            _, ap, _, bp = c.ends
            other = bp if ap == self.port else ap
            for s in self.table.sockets(other, tw):
                if conn_key(s.src, s.sport, s.dst, s.dport) == key:
                    c.timer_done = True
                    out.append({"kind": "timer",
                                "t": round(time.monotonic() - self.start, 3),
                                "conn": key, "addr": s.src, "port": s.sport,
                                "state": "TIME_WAIT", "expires_ms": s.expires_ms})
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._cap is not None:
            self._cap.close()
