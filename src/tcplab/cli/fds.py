"""``tcplab fds``: file descriptors in use against the limit, per process."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, human_bytes, note, out
from tcplab.words import plural

DESCRIPTION = """\
Per process: fds in use, its soft and hard limit (the process's own, from
/proc/PID/limits, not your shell's 'ulimit -n'), the percentage used, its
TCP sockets by state, its other fds by kind (files, pipes, epoll, eventfd...),
threads and RSS. A process at 80% or more of its limit gets a warning, with
CLOSE_WAIT named as the cause when that is where its fds went.

Choose processes by pid, by --name (command name), or by --port (whoever
holds a socket on that port). Without any, the processes using the largest
share of their limit are shown.
"""

EXAMPLES = """\
examples:
  tcplab fds 4242                    one process
  tcplab fds --port 8080 --watch     the lab's server, live: fds climbing to the limit
  tcplab fds --name python3 --json
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, parents=[common.parent()],
        help="fds in use against the limit per process, and what they are (lsof, ulimit -n)",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pid", nargs="*", type=common.positive_int, metavar="PID")
    p.add_argument("--name", help="processes whose command name is NAME")
    p.add_argument("--port", type=common.port, default=0,
                   help="processes holding a TCP socket with this local or remote port")
    p.add_argument("--top", type=common.positive_int, default=10, metavar="N",
                   help="without a selection, show the N fullest processes (default 10)")
    common.add_interval(p, 1.0)
    common.add_netns(p, all_netns=True)
    common.add_json(p, "the reports (one object per sample with --watch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import ExitStatus
    from tcplab.observe.sockets import SocketTable

    with SocketTable(netns=None if args.all_netns else args.netns) as table:
        samples = 0
        try:
            while True:
                node = _node() if args.all_netns else None
                reports = _sample(table, args, node)
                samples += 1
                if args.json:
                    body: dict[str, Any] = {"processes": _rows(reports, node),
                                            "t": round(time.time(), 3)}
                    if node is not None:
                        body.update(common.netns_json(node[4], node[2], node[3]))
                    emit_json(body)
                else:
                    if args.watch and samples > 1:
                        out("")
                    _print(reports, node)
                if node is not None:
                    common.note_unexamined(node[2], node[3], examined=node[4])
                if not args.watch or (args.samples and samples >= args.samples):
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return ExitStatus.INTERRUPTED


def _node() -> tuple[list[Any], dict[int, Any], list[Any], int, int]:
    """--all-netns: every namespace's sockets, each process's namespace, and what
    could not be read."""
    from tcplab.observe.nodes import each_namespace
    from tcplab.observe.sockets import SocketTable

    def read(netns: str | None) -> list[Any]:
        with SocketTable(netns=netns) as table:
            return table.sockets()

    tables, failed, unreadable = each_namespace(read)
    socks: list[Any] = []
    ns_of: dict[int, Any] = {}
    for ns, found in tables:
        socks += found
        ns_of.update(dict.fromkeys(ns.pids, ns))
    return socks, ns_of, failed, unreadable, len(tables)


def _rows(reports: list[Any], node: Any) -> list[Any]:
    if node is None:
        return reports
    from dataclasses import asdict

    from tcplab.observe.nodes import where

    # The same keys on every row (None where the process's namespace could not be
    # looked at); the container is the process's own.
    return [{**asdict(r), **where(node[1].get(r.pid), r.pid)} for r in reports]


def _sample(table: Any, args: argparse.Namespace, node: Any = None) -> list[Any]:
    from tcplab.errors import UsageError
    from tcplab.observe.fds import fd_report
    from tcplab.observe.netns import pids_in
    from tcplab.observe.owners import OwnerMap, all_pids, read_comm
    from tcplab.observe.procfs import AccessDenied, NoSuchProcess

    # --all-netns: every namespace's sockets (socket inodes are unique on the node).
    socks = table.sockets() if node is None else node[0]
    state_of = {s.inode: s.state for s in socks if s.inode}
    # With --netns, the namespace's processes only: the others' sockets are not
    # in this table, and their fds say nothing about the namespace.
    candidates = all_pids() if args.netns is None else pids_in(args.netns)
    inside = "" if args.netns is None else f" in the network namespace {args.netns!r}"
    if args.pid:
        pids = list(args.pid)
        if args.netns is not None:
            outside = [p for p in pids if p not in candidates and os.path.exists(f"/proc/{p}")]
            if outside:
                raise UsageError(f"pid {outside[0]} is not{inside}",
                                 hint="leave out --netns, or give a pid of that namespace")
    elif args.port:
        on_port = [s.inode for s in socks if args.port in (s.sport, s.dport) and s.inode]
        pids = sorted({o.pid for o in OwnerMap(candidates).lookup(on_port).values()})
        if not pids:
            note(f"no process holds a TCP socket on port {args.port}{inside}"
                 + ("" if os.geteuid() == 0 else " that you may see (run as root for all)"))
    elif args.name:
        pids = [p for p in candidates if read_comm(p) == args.name]
        if not pids:
            raise UsageError(f"no process named {args.name!r}" + inside)
    else:
        pids = candidates
    reports = []
    for pid in pids:
        try:
            reports.append(fd_report(pid, state_of))
        except NoSuchProcess:
            if args.pid:
                raise UsageError(f"no process {pid}") from None
        except AccessDenied:
            continue
    if not (args.pid or args.port or args.name):
        reports = [r for r in reports if r.fds]  # kernel threads have none
        reports.sort(key=lambda r: (r.percent, r.fds), reverse=True)
        reports = reports[: args.top]
    if node is None and args.netns is None:
        reports = [_in_its_namespace(r, state_of) for r in reports]
    return reports


def _in_its_namespace(report: Any, state_of: dict[int, int]) -> Any:
    """A process in another network namespace than ours (a container's): its
    sockets are in that namespace's table, not ours, so without it they would show
    as plain 'socket' and a CLOSE_WAIT leak would go unseen. Read it (root) and
    report again; as it was when that namespace cannot be entered."""
    from tcplab.errors import TcplabError
    from tcplab.observe.fds import fd_report
    from tcplab.observe.procfs import ProcessError
    from tcplab.observe.sockets import SocketTable

    path = f"/proc/{report.pid}/ns/net"
    try:
        if os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino or not report.other:
            return report
        with SocketTable(netns=path) as table:
            theirs = {s.inode: s.state for s in table.sockets() if s.inode}
        return fd_report(report.pid, {**state_of, **theirs})
    except (TcplabError, ProcessError, OSError):
        return report


def _print(reports: list[Any], node: Any = None) -> None:
    from tcplab.observe.nodes import where_text

    for r in reports:
        soft = "unlimited" if r.soft < 0 else f"{r.soft:,}"
        hard = "unlimited" if r.hard < 0 else f"{r.hard:,}"
        if node is not None:
            ns = node[1].get(r.pid)
            out(f"{where_text(ns)}:" if ns is not None
                else "a network namespace that could not be looked at:")
        out(f"pid {r.pid} ({r.command}): {r.fds:,} fds of {soft} ({r.percent:.1f}%), "
            f"hard limit {hard}, {plural(r.threads, 'thread')}, RSS {human_bytes(r.rss_bytes)}")
        if r.tcp:
            out("  tcp:   " + ", ".join(f"{state} {n:,}" for state, n in r.tcp.items()))
        if r.other:
            out("  other: " + ", ".join(f"{kind} {n:,}" for kind, n in r.other.items()))
        if r.warning:
            note(f"  warning: pid {r.pid} ({r.command}): {r.warning}")
