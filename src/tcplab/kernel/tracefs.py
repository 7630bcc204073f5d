"""Pure parsing of tracefs ``trace_pipe`` lines and TCP state-transition bookkeeping.

A line (default trace options, ``irq-info`` on)::

    python3-4242 [001] b..1. 3367.427274: inet_sock_set_state: family=AF_INET
    protocol=IPPROTO_TCP sport=8080 dport=54321 saddr=127.0.0.1 daddr=127.0.0.1
    saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_SYN_RECV
    newstate=TCP_ESTABLISHED

(one line in reality). The event bodies follow each event's ``print fmt`` in
``events/*/*/format``; the syscall events print ``name: 0x..., ...`` and
``0x...`` for the return value.

The print format of ``sock:inet_sock_set_state`` has no socket address, so a
socket is known by its 4-tuple. Two kernel habits need words (the notes):
a connecting socket leaves CLOSE for SYN_SENT before its port is chosen
(``sport=0``), and the active closer's FIN_WAIT2 -> CLOSE is the full socket
dying as a minisocket takes its place (``tcp_time_wait`` in
net/ipv4/tcp_minisocks.c). After close(), that happens as soon as the peer ACKs
our FIN, and the minisocket is in FIN_WAIT2 (``tcp_time_wait(sk, TCP_FIN_WAIT2,
tmo)`` in ``tcp_rcv_state_process``, net/ipv4/tcp_input.c) until the peer's FIN
turns it TIME_WAIT (``tcp_timewait_state_process``); after shutdown(), the full
socket waits for that FIN and the minisocket starts in TIME_WAIT. No tracepoint
fires for a minisocket's states.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass

LINE = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s:]{4,5})\s+)?(?P<ts>\d+\.\d+):\s+(?P<rest>.*)$"
)
_EVENT = re.compile(r"^(?P<event>\w+):\s?(?P<body>.*)$")
#: Syscall events print as calls: ``sys_connect(fd: 3, uservaddr: 7ffd..., addrlen: 10)``
#: and ``sys_connect -> 0xffffffffffffff8d``.
_SYS_ENTER = re.compile(r"^sys_(?P<call>\w+)\((?P<args>.*)\)$")
_SYS_EXIT = re.compile(r"^sys_(?P<call>\w+) -> (?P<ret>\S+)$")
_KV = re.compile(r"(\w+)=(\S*)")
_SYS = re.compile(r"(\w+): (\w+)")


class TraceParseError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TraceEvent:
    ts: float  # the trace clock (CLOCK_MONOTONIC with trace_clock=mono)
    pid: int  # the thread that was running
    task: str
    event: str
    fields: dict[str, str]
    #: the irq-info column (``b..1.``, ``.Ns2.``): its third letter says the context
    #: (``s`` softirq, ``h``/``H`` hardirq, ``z``/``Z`` NMI, ``.`` a task); "" when absent
    flags: str = ""

    @property
    def in_interrupt(self) -> bool | None:
        """Run in softirq, hardirq or NMI context (then ``pid`` is whatever task the
        CPU was running, not the one the work is for); None: the line does not say."""
        if len(self.flags) < 3:
            return None
        return self.flags[2] in "sShHzZ"


#: trace_pipe's note when a CPU's ring buffer overflowed before the reader came
#: (kernel/trace/trace.c, print_trace_line: "CPU:%d [LOST %lu EVENTS]").
_LOST = re.compile(r"CPU:\d+ \[LOST (\d+) EVENTS\]")


def lost_events(line: str) -> int:
    """How many events a trace_pipe line says the kernel dropped (0: not such a note)."""
    m = _LOST.match(line)
    return int(m.group(1)) if m else 0


def parse_line(line: str) -> TraceEvent | None:
    """One trace_pipe line; None for comments, blank lines and lost-event notes."""
    if not line.strip() or line.lstrip().startswith("#") or line.startswith("CPU:"):
        return None
    m = LINE.match(line.rstrip("\n"))
    if m is None:
        raise TraceParseError(f"not a trace line: {line.strip()[:120]!r}")
    rest = m["rest"]
    if (x := _SYS_EXIT.match(rest)) is not None:
        event, fields = f"sys_exit_{x['call']}", {"ret": x["ret"]}
    elif (x := _SYS_ENTER.match(rest)) is not None:
        event, fields = f"sys_enter_{x['call']}", dict(_SYS.findall(x["args"]))
    elif (x := _EVENT.match(rest)) is not None:
        event, fields = x["event"], dict(_KV.findall(x["body"]))
    else:
        raise TraceParseError(f"not a trace event: {rest[:120]!r}")
    return TraceEvent(float(m["ts"]), int(m["pid"]), m["task"].strip(), event, fields,
                      m["flags"] or "")


def state_name(kernel_name: str) -> str:
    """``TCP_FIN_WAIT1`` -> ``FIN_WAIT1``; ``TCP_NEW_SYN_RECV`` -> ``SYN_RECV`` (as ss)."""
    name = kernel_name.removeprefix("TCP_")
    return "SYN_RECV" if name == "NEW_SYN_RECV" else name


@dataclass(frozen=True, slots=True)
class Transition:
    t: float  # seconds since the trace started
    saddr: str
    sport: int
    daddr: str
    dport: int
    old: str
    new: str
    ms_in_old: float | None  # None when the socket's previous change was not seen
    note: str = ""
    pid: int = 0


def field_address(fields: dict[str, str], v4: str, v6: str) -> str:
    """An event's address field: the IPv6 one (``saddrv6``) for AF_INET6, else the IPv4 one."""
    if fields.get("family") == "AF_INET6":
        return fields.get(v6, "?")
    return fields.get(v4, "?")


class Tracker:
    """Turns inet_sock_set_state events into Transitions with time in the old state."""

    def __init__(self, start_ts: float) -> None:
        self.start = start_ts
        self._last: dict[tuple[str, str, int, str, int], float] = {}
        self._connecting: dict[tuple[str, str, int], float] = {}

    def feed(self, e: TraceEvent) -> Transition | None:
        if e.event != "inet_sock_set_state":
            return None
        f = e.fields
        fam = f.get("family", "")
        saddr, daddr = field_address(f, "saddr", "saddrv6"), field_address(f, "daddr", "daddrv6")
        sport, dport = int(f.get("sport", 0)), int(f.get("dport", 0))
        old, new = state_name(f.get("oldstate", "?")), state_name(f.get("newstate", "?"))
        key = (fam, saddr, sport, daddr, dport)
        since = self._last.pop(key, None)
        note = ""
        if old == "SYN_SENT" and since is None:
            since = self._connecting.pop((fam, daddr, dport), None)
        if new == "SYN_SENT" and sport == 0:
            note = "connect(): the local port is not chosen yet (sport=0)"
            self._connecting[(fam, daddr, dport)] = e.ts
        elif old == "FIN_WAIT2" and new == "CLOSE":
            note = ("the active closer: a minisocket took the socket's place, in "
                    "FIN_WAIT2 until the peer's FIN (after close()) or in TIME_WAIT "
                    "(it came); its states are never traced; TIME_WAIT lasts 60 s")
        elif old == "CLOSE_WAIT" and new == "LAST_ACK":
            note = "the passive closer called close(): its FIN goes out"
        elif old == new == "FIN_WAIT1":
            note = "close() after shutdown(SHUT_WR): the FIN is already out, no change"
        elif old == "SYN_RECV" and new == "ESTABLISHED":
            note = "the server's side of the handshake is complete"
        if new != "CLOSE" and sport:
            # close() after shutdown() "moves" FIN_WAIT1 to FIN_WAIT1: the socket
            # has been in that state since it first entered it.
            self._last[key] = since if old == new and since is not None else e.ts
        return Transition(
            t=round(e.ts - self.start, 6), saddr=saddr, sport=sport, daddr=daddr, dport=dport,
            old=old, new=new,
            ms_in_old=None if since is None else round((e.ts - since) * 1000, 3),
            note=note, pid=e.pid,
        )


def reset_text(event: str, f: dict[str, str], port: int = 0) -> str | None:
    """``RST sent A > B`` / ``RST received on A from B`` for tcp_send_reset and
    tcp_receive_reset; None for a reset on another port than ``port`` (0: any).

    tcp_send_reset's text carries the kernel's own words for the socket's state
    and the reason (``state=TCP_LISTEN reason=TCP_FLAGS``: include/net/rstreason.h;
    the recorded lines are Linux 6.18's; where a kernel prints either not, the
    line goes without it). Its addresses are the socket's when it is a full socket
    (include/trace/events/tcp.h), so a listener's reset shows its own address and
    ``0.0.0.0:0``: that is said as "by the listener", not as a peer at 0.0.0.0."""
    if event == "tcp_send_reset":
        src, dst = f.get("src", "?"), f.get("dest", "?")
        if port and not (src.endswith(f":{port}") or dst.endswith(f":{port}")):
            return None
        why = " ".join(f"{k}={f[k]}" for k in ("state", "reason") if f.get(k))
        why = f" ({why})" if why else ""
        if dst in ("0.0.0.0:0", "[::]:0"):
            return f"RST sent by the listener {src} to a segment's sender{why}"
        return f"RST sent {src} > {dst}{why}"
    return (f"RST received on {f.get('saddr')}:{f.get('sport')} from "
            f"{f.get('daddr')}:{f.get('dport')}")


def ret_value(ret: str) -> int:
    """A syscall's return value as trace_pipe printed it (``0xffffffffffffff9d``), signed."""
    value = int(ret, 16) if ret.startswith("0x") else int(ret)
    return value - (1 << 64) if value >= 1 << 63 else value


def errno_text(ret: str) -> str:
    """A syscall's return value as tcplab prints it: ``3`` or ``-EMFILE``."""
    value = ret_value(ret)
    if -4096 < value < 0:
        return "-" + errno.errorcode.get(-value, str(-value))
    return str(value)
