"""``tcplab states``: how many TCP sockets sit in each state.

The lab's ``netstat -an | grep 8080 | grep TIME_WAIT | wc -l``, for every
state at once, counted by the kernel's own socket table (NETLINK_SOCK_DIAG)
with the port filter applied in the kernel.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
Counts TCP sockets per state (the names netstat prints), all states listed,
zero included. With --port P, only sockets whose local or remote port is P:
the server's side and the clients' side of the same connections.

The counts come from the kernel over NETLINK_SOCK_DIAG, as ss gets them, and
agree with 'ss -tan' exactly; where netlink is unavailable, /proc/net/tcp.

--watch refreshes a live table: each state's count, the change since the
last sample, the rate per second and a sparkline of recent history.
"""

EXAMPLES = """\
examples:
  tcplab states --port 8080                 the lab's port
  tcplab states --port 8080 --json          {"states": {...}, "total": n}
  tcplab states --port 8080 --watch         live, until Ctrl-C
  tcplab states --watch --json --interval 1 one JSON object per sample
  sudo tcplab states --netns 4242           inside the namespace of pid 4242
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, parents=[common.parent()],
        help="count TCP sockets per state (netstat | grep | wc -l, done right)",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=common.port, default=0,
                   help="only sockets with this local or remote port")
    common.add_interval(p, 0.5)
    common.add_netns(p, all_netns=True)
    common.add_json(p, "the counts (one object per sample with --watch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.observe.sockets import SocketTable

    if getattr(args, "all_netns", False):
        if args.watch:
            from tcplab.errors import UsageError

            raise UsageError("--watch shows one namespace: give --netns, not --all-netns")
        return _all_netns(args)
    with SocketTable(netns=args.netns) as table:
        if table.fallback_reason:
            note(f"tcplab: {table.fallback_reason}; reading /proc/net/tcp instead")
        if args.watch:
            return _watch(table, args)
        counts = table.state_counts(args.port)
    if args.json:
        emit_json(counts, port=args.port or None, source=table.source)
        return 0
    scope = f"with local or remote port {args.port}" if args.port else "in this namespace"
    out(f"TCP sockets {scope}:")
    from tcplab.report.observe import state_lines

    for line in state_lines(counts.states, counts.total):
        out(line)
    return 0


def _watch(table: Any, args: argparse.Namespace) -> int:
    from tcplab.errors import ExitStatus
    from tcplab.kernel import tcp_states

    history: dict[str, list[int]] = {s: [] for s in tcp_states.STATE_NAMES}
    started = time.monotonic()
    previous: dict[str, int] | None = None
    prev_t = started
    samples = 0
    live = None
    if not args.json:
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(), auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            now = time.monotonic()
            counts = table.state_counts(args.port)
            samples += 1
            dt = now - prev_t
            for state, n in counts.states.items():
                history[state] = (history[state] + [n])[-30:]
            if args.json:
                emit_json(counts, t=round(now - started, 3), port=args.port or None)
            else:
                assert live is not None
                live.update(_table(counts.states, counts.total, previous, dt, history, args),
                            refresh=True)
            previous, prev_t = counts.states, now
            if args.samples and samples >= args.samples:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED  # the live table stays on the screen; no note
    finally:
        if live is not None:
            live.stop()


def _table(states: dict[str, int], total: int, previous: dict[str, int] | None, dt: float,
           history: dict[str, list[int]], args: argparse.Namespace) -> Any:
    from rich.table import Table

    from tcplab.report.observe import sparkline

    scope = f"port {args.port}" if args.port else "all ports"
    t = Table(title=f"TCP states, {scope}, every {args.interval:g} s", title_justify="left",
              caption="Ctrl-C stops", caption_justify="left")
    t.add_column("state")
    t.add_column("now", justify="right")
    t.add_column("change", justify="right")
    t.add_column("per s", justify="right")
    t.add_column("history")
    for state, n in states.items():
        delta = n - previous[state] if previous else 0
        rate = delta / dt if previous and dt > 0 else 0.0
        style = "bold" if n else "dim"
        t.add_row(state, f"{n:,}", f"{delta:+,}" if delta else "", f"{rate:+,.0f}" if delta else "",
                  sparkline(history[state]), style=style)
    t.add_row("total", f"{total:,}", "", "", "", style="bold")
    return t


def _all_netns(args: argparse.Namespace) -> int:
    """Every namespace's counts, each read by a sock_diag socket opened inside it
    (observe.sockets.node_counts); those that could not be read are said, with why."""
    from tcplab.observe.nodes import node_counts, where, where_text
    from tcplab.words import plural

    node = node_counts(args.port)
    if args.json:
        emit_json({"port": args.port or None,
                   **common.netns_json(len(node.counted), list(node.failed), node.unreadable),
                   "namespaces": [{**where(n), "name": n.name, "pid": n.pid,
                                   "processes": n.processes, "ours": n.ours,
                                   "states": c.states, "total": c.total}
                                  for n, c in node.counted],
                   "states": node.states, "total": node.total})
        return 0
    scope = f"with local or remote port {args.port}" if args.port else "of every state"
    out(f"TCP sockets {scope}, in {plural(len(node.counted), 'network namespace')}:")
    for n, c in node.counted:
        busy = {k: v for k, v in c.states.items() if v}
        out(f"  {where_text(n)}" + (f" pid {n.pid}" if n.pid and not n.ours else "")
            + f": {c.total:,}" + (": " + ", ".join(f"{k} {v:,}" for k, v in busy.items())
                                          if busy else ""))
    from tcplab.report.observe import state_lines

    out("all of them:")
    for line in state_lines(node.states, node.total):
        out(line)
    common.note_unexamined(list(node.failed), node.unreadable)
    return 0
