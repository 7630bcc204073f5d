"""``tcplab doctor``: diagnose the live machine's TCP sockets and fd limits."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out
from tcplab.errors import DoctorStatus
from tcplab.words import plural

DESCRIPTION = """\
Looks at the live machine (or --netns) and says what is wrong, with the
evidence and the fix:

  close_wait_leak  a process holding --close-wait-threshold (100) or more sockets
                   in CLOSE_WAIT: its peers closed, it never called close()
  fd_exhaustion    a process at 80% or more of its own fd limit
  port_exhaustion  sockets toward one destination near the ephemeral port range
  listen_overflow  a listener whose accept queue is full, or ListenOverflows /
                   ListenDrops rising in /proc/net/netstat
  orphans          many orphaned FIN_WAIT2 sockets: the peers never close

Works on any process, as lsof does. As root it looks into every network
namespace on the node (each container's, each 'ip netns'), and each finding
names its namespace; --netns looks into one. Without root, other users'
processes and namespaces cannot be read, and a note says so.

exit status (the monitoring-plugin convention): 0 healthy, 1 warning,
2 critical, 3 unknown (a usage or privilege error).
"""

UNKNOWN = DoctorStatus.UNKNOWN


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="diagnose CLOSE_WAIT leaks, fd and port exhaustion, full accept queues",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--close-wait-threshold", type=common.positive_int, default=100, metavar="N",
                   help="CLOSE_WAIT sockets in one process that count as a leak (default 100)")
    p.add_argument("--fd-percent", type=float, default=80.0, metavar="P",
                   help="fd use, in percent of the limit, that counts as exhaustion (default 80)")
    p.add_argument("--interval", type=float, default=0.1, metavar="S",
                   help="at least S seconds between two reads of ListenOverflows/ListenDrops; "
                   "the diagnosis runs in between (default 0.1; 0 skips that check)")
    common.add_netns(p, all_netns=True)
    common.add_json(p, "the findings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import TcplabError
    from tcplab.observe.doctor import Thresholds, diagnose

    t = Thresholds(close_wait=args.close_wait_threshold, fd_percent=args.fd_percent,
                   interval=max(0.0, args.interval))
    if args.all_netns or (args.netns is None and os.geteuid() == 0):
        return _node(t, args)
    try:
        d = diagnose(args.netns, t)
    except TcplabError as exc:
        note(f"tcplab: {exc.message}")
        if exc.hint:
            note(f"hint: {exc.hint}")
        return UNKNOWN
    if d.hidden_processes:
        why = ("other users': run as root to check them too" if os.geteuid()
               else "permission denied even to root: in a user namespace of their own")
        note(f"note: {plural(d.hidden_processes, 'process')} could not be read ({why}); "
             "these checks do not speak of them")
    status = ["healthy", "warning", "critical"][d.status]
    if args.json:
        emit_json({"status": status, "findings": d.findings, "sockets": d.sockets,
                   "processes": d.processes})
        return d.status
    if not d.findings:
        out(f"healthy: no problem found in {plural(d.sockets, 'TCP socket')} and "
            f"{plural(d.processes, 'process')}")
        return 0
    for f in d.findings:
        out(f"{f.severity.upper()} {f.kind}: {f.evidence}")
        out(f"  fix: {f.hint}")
    return d.status


def _where(f: Any) -> str:
    if f.netns is None:
        return ""
    return (f" [net:[{f.netns}]" + (f" {f.netns_name}" if f.netns_name else "")
            + (f", {f.owner}" if f.owner else "") + "]")


def _node(t: Any, args: argparse.Namespace) -> int:
    """Every namespace: "healthy" is said only of what was examined."""
    from tcplab.observe.doctor import diagnose_node

    d = diagnose_node(t)
    common.note_unexamined(d.failed, d.unreadable)
    status = ["healthy", "warning", "critical"][d.status]
    scope = (f"{plural(d.sockets, 'TCP socket')} and {plural(d.processes, 'process')} in "
             f"{plural(d.examined, 'network namespace')}")
    if args.json:
        emit_json({"status": status, "findings": d.findings, "sockets": d.sockets,
                   "processes": d.processes,
                   **common.netns_json(d.examined, d.failed, d.unreadable)})
        return d.status
    if not d.findings:
        out(f"healthy: no problem found in {scope}"
            + (f" ({len(d.failed)} not examined)" if d.failed else ""))
        return 0
    for f in d.findings:
        out(f"{f.severity.upper()} {f.kind}{_where(f)}: {f.evidence}")
        out(f"  fix: {f.hint}")
    out(f"(examined {scope}" + (f"; {len(d.failed)} not examined" if d.failed else "") + ")")
    return d.status
