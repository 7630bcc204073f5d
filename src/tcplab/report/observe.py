"""Text for the observation commands: state tables, socket rows, fd reports.

Plain aligned text, not rich tables, for the row-per-socket output: it must
stay fast at 20,000 rows. The live views (``--watch``) use rich.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def socket_lines(rows: Sequence[tuple[TcpSocket, str]]) -> list[str]:
    """One line per socket, like ``ss -tanpo``: rows are (socket, owner text)."""
    header = ("State", "Recv-Q", "Send-Q", "Local", "Peer", "Timer", "Owner")
    table = [header]
    for s, owner in rows:
        table.append((
            tcp_states.name(s.state), str(s.rqueue), str(s.wqueue),
            endpoint(s.src, s.sport), endpoint(s.dst, s.dport), timer_text(s), owner,
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    out = []
    for r in table:
        cells = [c.rjust(w) if i in (1, 2) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r[:-1], widths, strict=True))]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return out
