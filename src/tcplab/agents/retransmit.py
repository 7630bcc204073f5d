"""The retransmit experiment's three children:
``python -m tcplab.agents.retransmit server|client|trace ...``.

``server`` runs in the server's namespace of a temporary tcplab net. It adds
one nftables table there (gone with the namespace) that drops, on the way in:
every SYN from the client's port ``--syn-from`` (a black-holed server, for the
SYN phase), and the first copies of the data segments that begin with a tag
(``--drop CASE``: each of the case's segments starts with 8 bytes of its own, and
nftables' ``@ih`` is the payload, after the TCP options). It then listens on ``--port``
and, per connection, reads one burst (ten full segments) and answers one byte.
It emits ``Ready`` when the rules and the listener are in place.

``client`` runs in the client's namespace. It captures its own veth (both
directions, AF_PACKET, in a thread) while it: connects from the black-holed
port and waits for connect() to fail (``SynTry``), then makes one connection
per data case, writes a burst of ten full segments whose chosen one
starts with the case's tag, and waits for the server's byte (``Case``, with
the namespace's TCP counters before and after, and TCP_INFO's RTT and RTO).
Last it emits every packet it saw (``Seen``), on CLOCK_MONOTONIC.

``trace`` runs outside the net, as root: a tracefs instance with
tcp:tcp_retransmit_skb filtered by ``--port`` (tracing is global); it emits
``Ready``, then one ``Retransmitted`` per event until SIGTERM or SIGINT, and
removes its instance on the way out.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from tcplab.agents.io import emit, not_the_hosts

#: nftables table the server adds in its own namespace.
TABLE = "tcplab_retransmit"
TAG_SIZE = 8
#: The data cases: name -> the segments dropped, each as (its index in a burst of
#: SEGMENTS, the 8-byte tag it starts with, how many of its copies are dropped).
#: middle: the 5th of 10, once: the later segments arrive and their ACKs (with SACK
#: blocks) make the sender retransmit it (tcp_recovery.c, tcp_output.c).
#: probe: the last two, once each: the tail loss probe (tcp_send_loss_probe in
#: tcp_output.c) resends the last one about 2 x srtt after the last ACK, its SACK
#: shows the other lost, and both are back without a timeout.
#: tail: the last one, twice: the first copy and the loss probe, so the third copy can
#: only come from the retransmission timer (tcp_retransmit_timer, tcp_timer.c).
DROPS: dict[str, tuple[tuple[int, bytes, int], ...]] = {
    "middle": ((4, b"DROP-MID", 1),),
    "probe": ((8, b"DROP-P-1", 1), (9, b"DROP-P-2", 1)),
    "tail": ((9, b"DROP-END", 2),),
}
#: The segment whose copies a case's record follows: the last one dropped.
WATCHED = {name: drops[-1][0] for name, drops in DROPS.items()}
SEGMENTS = 10  # the initial congestion window (TCP_INIT_CWND): one flight
CASES = tuple(DROPS)


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True)
class SynTry:
    """connect() to a server whose SYNs are dropped."""

    sport: int  # the client's port (the rule drops SYNs from it)
    start: float  # CLOCK_MONOTONIC when connect() was called
    elapsed: float  # seconds until it failed
    errno: int | None  # its errno (None: it connected, which it should not)
    error: str | None  # its text
    syn_retries: int  # net.ipv4.tcp_syn_retries in this namespace
    linear_timeouts: int | None  # net.ipv4.tcp_syn_linear_timeouts (None: no such sysctl)


@dataclass(frozen=True, slots=True)
class Case:
    """One burst with a dropped segment."""

    name: str  # "middle", "probe" or "tail"
    sport: int
    segments: int
    dropped: int  # index of the watched dropped segment (the last one of DROPS[name])
    copies_dropped: int  # of its copies
    mss: int
    isn: int | None  # the client's first sequence number (from the capture), None if unseen
    start: float  # CLOCK_MONOTONIC when the burst was written
    elapsed: float  # seconds until the server's byte came back
    rtt_ms: float  # TCP_INFO's smoothed RTT at the end
    rto_ms: float  # TCP_INFO's RTO at the end
    #: TCP and TcpExt counters of the client's namespace that changed during the case
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Seen:
    """One packet on the client's veth."""

    t: float  # CLOCK_MONOTONIC (the kernel's timestamp, moved from the wall clock)
    out: bool  # sent by the client
    sport: int
    dport: int
    flags: str  # tcpdump's
    seq: int
    ack: int
    length: int  # payload bytes
    sack: bool  # carries SACK blocks


@dataclass(frozen=True, slots=True)
class Retransmitted:
    """One tcp:tcp_retransmit_skb event."""

    t: float  # CLOCK_MONOTONIC (trace_clock mono)
    sport: int
    dport: int
    state: str  # the socket's state, as netstat names it
    err: int  # what the transmit returned (0: sent)


# -- server -------------------------------------------------------------------


def ruleset(port: int, syn_from: int, drops: list[tuple[bytes, int]], size: int) -> str:
    """The server namespace's rules. ``size``: the bytes of one full segment's IP
    packet (the MTU): nftables' quota counts skb->len, and a rule with ``quota until
    N bytes`` stops matching once N is used up (net/netfilter/nft_quota.c,
    nft_overquota), so ``copies`` full segments fit in copies * size + size / 2."""
    lines = [f"table inet {TABLE} {{",
             "  chain input {",
             "    type filter hook input priority 0; policy accept;",
             f"    tcp dport {port} tcp sport {syn_from} tcp flags & (syn | ack) == syn drop"]
    for tag, copies in drops:
        lines.append(f"    tcp dport {port} @ih,0,{TAG_SIZE * 8} 0x{tag.hex()} "
                     f"quota until {copies * size + size // 2} bytes drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def serve(port: int, syn_from: int, drops: list[tuple[bytes, int]], size: int) -> None:
    from tcplab.net.build import nft_apply

    if not not_the_hosts():
        sys.exit("refusing: this is the host's network namespace (run by "
                 "'tcplab experiment retransmit', inside its net)")
    nft_apply(ruleset(port, syn_from, drops, size))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(8)
    emit(Ready(os.getpid()))
    while True:
        conn, _ = ls.accept()
        with conn:
            # A burst is SEGMENTS full segments; the MSS is the same both ways here
            # (one MTU, timestamps on both sides).
            burst = SEGMENTS * conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            got = 0
            while got < burst:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
            if got >= burst:
                conn.sendall(b"k")
                conn.recv(1)  # until the client closes


# -- client -------------------------------------------------------------------


def sysctl_int(name: str) -> int | None:
    from tcplab.observe.procfs import sysctl

    value = sysctl(name)
    return int(value) if value is not None and value.isdigit() else None


def counters() -> dict[str, int]:
    from tcplab.observe.procfs import tcp_counters

    tcp, ext = tcp_counters()
    return {**{f"Tcp.{k}": v for k, v in tcp.items()}, **{f"TcpExt.{k}": v for k, v in ext.items()}}


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after
            if after[k] != before.get(k, 0) and not k.startswith("Tcp.CurrEstab")}


def tcp_info(s: socket.socket) -> tuple[float, float]:
    """(smoothed RTT, RTO) in ms from TCP_INFO (include/uapi/linux/tcp.h, struct
    tcp_info: tcpi_rto at byte 8, tcpi_rtt at byte 68, both in microseconds)."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    rto, = struct.unpack_from("I", raw, 8)
    rtt, = struct.unpack_from("I", raw, 68)
    return rtt / 1000, rto / 1000


class Capturer:
    """AF_PACKET on the client's veth, both directions, in a thread."""

    def __init__(self, interface: str, port: int) -> None:
        from tcplab.observe.capture import Capture

        self.cap = Capture(port, interface)
        self.port = port
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.offset = time.time() - time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from tcplab.kernel.packets import PacketError, decode_frame

        while not self.stop.is_set():
            for t, frame in self.cap.frames(0.1):
                try:
                    pk = decode_frame(frame, t)
                except PacketError:
                    continue
                if pk is None:
                    continue
                out = pk.dport == self.port
                self.seen.append(Seen(
                    round(t - self.offset, 6), out, pk.sport, pk.dport, pk.flag_text, pk.seq,
                    pk.ack, pk.length, any(o.startswith("sack ") for o in pk.options)))

    def close(self) -> list[Seen]:
        time.sleep(0.2)  # the last ACKs
        self.stop.set()
        self.thread.join()
        self.cap.close()
        return sorted(self.seen, key=lambda s: s.t)


def syn_try(host: str, port: int, sport: int) -> SynTry:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    start = time.monotonic()
    code: int | None = None
    try:
        s.connect((host, port))
    except OSError as e:
        code = e.errno if e.errno is not None else errno.EIO
    finally:
        s.close()
    elapsed = time.monotonic() - start
    return SynTry(sport, round(start, 6), round(elapsed, 6), code,
                  os.strerror(code) if code is not None else None,
                  sysctl_int("net.ipv4.tcp_syn_retries") or 0,
                  sysctl_int("net.ipv4.tcp_syn_linear_timeouts"))


def payload(mss: int, tags: dict[int, bytes]) -> bytes:
    """SEGMENTS full segments; segment ``i`` starts with ``tags[i]`` when it has one."""
    filler = b"." * mss
    return b"".join(tags[i] + filler[TAG_SIZE:] if i in tags else filler
                    for i in range(SEGMENTS))


def data_case(host: str, port: int, name: str, cap: Capturer) -> Case:
    before = counters()
    s = socket.create_connection((host, port), timeout=60)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        sport = s.getsockname()[1]
        start = time.monotonic()
        s.sendall(payload(mss, {i: tag for i, tag, _ in DROPS[name]}))
        answer = s.recv(1)
        elapsed = time.monotonic() - start
        rtt, rto = tcp_info(s)
    finally:
        s.close()
    if answer != b"k":
        sys.exit(f"{name}: the server did not answer the burst")
    time.sleep(0.1)  # the FIN exchange, so its counters are this case's
    isn = next((p.seq for p in list(cap.seen) if p.out and p.sport == sport and "S" in p.flags),
               None)
    return Case(name, sport, SEGMENTS, WATCHED[name], DROPS[name][-1][2], mss, isn,
                round(start, 6), round(elapsed, 6), rtt, rto, changed(before, counters()))


def client(host: str, port: int, sport: int, interface: str, cases: list[str],
           syn: bool = True) -> None:
    cap = Capturer(interface, port)
    results: list[object] = [syn_try(host, port, sport)] if syn else []
    for name in CASES:
        if name in cases:
            results.append(data_case(host, port, name, cap))
    seen = cap.close()
    for r in results:
        emit(r)
    for p in seen:
        emit(p)


# -- trace --------------------------------------------------------------------


def trace(port: int) -> None:
    from tcplab.interrupts import StopFlag
    from tcplab.kernel.tracefs import TraceParseError, parse_line, state_name
    from tcplab.observe.tracefs import TraceInstance

    stop = StopFlag()
    inst = TraceInstance(port, resets=False, events=("tcp/tcp_retransmit_skb",))
    try:
        emit(Ready(os.getpid()))
        while not stop:
            for line in inst.lines(0.25):
                try:
                    e = parse_line(line)
                except TraceParseError:
                    continue
                if e is None or e.event != "tcp_retransmit_skb":
                    continue
                f = e.fields
                emit(Retransmitted(e.ts, int(f.get("sport", 0)), int(f.get("dport", 0)),
                                   state_name(f.get("state", "?")), int(f.get("err", 0))))
    finally:
        inst.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.retransmit",
                                description="The retransmit experiment's children.")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server", help="drop rules and a listener (server's namespace)")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--syn-from", type=int, required=True, help="drop SYNs from this port")
    s.add_argument("--size", type=int, required=True, help="a full segment's IP bytes (MTU)")
    s.add_argument("--drop", action="append", default=[], choices=CASES, metavar="CASE",
                   help="drop that case's segments (DROPS)")
    c = sub.add_parser("client", help="the SYN try and the data cases (client's namespace)")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--syn-from", type=int, required=True)
    c.add_argument("--interface", required=True)
    c.add_argument("--cases", default=",".join(CASES))
    c.add_argument("--no-syn", action="store_true",
                   help="leave out the SYN try (a data case run again)")
    t = sub.add_parser("trace", help="tcp:tcp_retransmit_skb on a port (root, host)")
    t.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    if a.role == "server":
        drops = [(tag, copies) for case in a.drop for _, tag, copies in DROPS[case]]
        serve(a.port, a.syn_from, drops, a.size)
    elif a.role == "client":
        client(a.host, a.port, a.syn_from, a.interface, a.cases.split(","), not a.no_syn)
    else:
        trace(a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
