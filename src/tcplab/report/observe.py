"""Text for the observation commands: state tables, socket rows, fd reports.

Plain aligned text, not rich tables, for the row-per-socket output: it must
stay fast at 20,000 rows. The live views (``--watch``) use rich.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tcplab.kernel import tcp_states
from tcplab.kernel.sock_diag import TIMERS

if TYPE_CHECKING:  # annotations only: `tcplab states` would import dataclasses for it
    from tcplab.kernel.records import TcpSocket

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int | float]) -> str:
    """Recent history as block characters, scaled to the largest value."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))]
                   for v in values)


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def timer_text(sock: TcpSocket) -> str:
    """``time-wait 42.1s``: the pending timer and the time left on it."""
    name = TIMERS.get(sock.timer, f"timer{sock.timer}")
    if not name:
        return ""
    return f"{name} {sock.expires_ms / 1000:.1f}s"


def state_lines(states: dict[str, int], total: int) -> list[str]:
    width = max(len(s) for s in tcp_states.STATE_NAMES)
    lines = [f"  {name:<{width}}  {count:>7,}" for name, count in states.items()]
    lines.append(f"  {'total':<{width}}  {total:>7,}")
    return lines


class _Timers(dict):  # type: ignore[type-arg]
    """(timer, tenths of a second left) -> ``time-wait 42.1s``, made once each."""

    def __missing__(self, key: tuple[int, int]) -> str:
        timer, tenths = key
        name = TIMERS.get(timer, f"timer{timer}")
        text = self[key] = f"{name} {tenths / 10:.1f}s" if name else ""
        return text


class _Owners(dict):  # type: ignore[type-arg]
    """inode -> owner text; an inode it was not given is "?" (or "" when no owner
    was looked for)."""

    def __init__(self, texts: Mapping[int, str], unknown: str) -> None:
        super().__init__(texts)
        self.unknown = unknown

    def __missing__(self, inode: int) -> str:
        return "kernel" if inode == 0 else self.unknown


def socket_lines(socks: Sequence[TcpSocket], owners: Mapping[int, str],
                 unknown: str = "?") -> list[str]:
    """One line per socket, like ``ss -tanpo``: state, queues, local and peer
    address, the timer and time left, the owner (``owners``: inode -> text; inode 0
    is "kernel", any other not in it is ``unknown``).

    Column by column with map() and itemgetter: the loops run in C, which keeps
    the text at about 0.3 us a socket (issue 15: `sockets --all-procs` at 56,800
    sockets against ``ss -tanpo``)."""
    from operator import itemgetter

    from tcplab.kernel.records import TcpSocket

    at = {name: itemgetter(i) for i, name in enumerate(TcpSocket._fields)}
    names = [tcp_states.name(i) for i in range(tcp_states.NEW_SYN_RECV + 1)]
    state = list(map(names.__getitem__, map(at["state"], socks)))
    rq = list(map(at["rqueue"], socks))
    wq = list(map(at["wqueue"], socks))
    srcs, dsts = list(map(at["src"], socks)), list(map(at["dst"], socks))
    shown = {a: f"[{a}]" if ":" in a else a for a in {*srcs, *dsts}}
    local = list(map("%s:%d".__mod__, zip(map(shown.__getitem__, srcs),  # noqa: B905
                                          map(at["sport"], socks))))
    peer = list(map("%s:%d".__mod__, zip(map(shown.__getitem__, dsts),  # noqa: B905
                                         map(at["dport"], socks))))
    timers = _Timers()
    tenths = [(e + 50) // 100 for e in map(at["expires_ms"], socks)]
    timer = list(map(timers.__getitem__, zip(map(at["timer"], socks), tenths)))  # noqa: B905
    owner = list(map(_Owners(owners, unknown).__getitem__, map(at["inode"], socks)))
    header = ("State", "Recv-Q", "Send-Q", "Local", "Peer", "Timer", "Owner")
    cols = (state, rq, wq, local, peer, timer)
    widths = [max(len(h), max(map(len, map(str, c)), default=0)) if i in (1, 2)
              else max(len(h), max(map(len, c), default=0))
              for i, (h, c) in enumerate(zip(header, cols, strict=False))]
    fmt = "  ".join(f"%{w}s" if i in (1, 2) else f"%-{w}s" for i, w in enumerate(widths))
    fmt += "  %s"
    lines = [fmt % header]
    lines += map(fmt.__mod__, zip(state, rq, wq, local, peer, timer, owner))  # noqa: B905
    return list(map(str.rstrip, lines))
