"""``tcplab sockets``: one row per TCP socket, with its timer and its owner."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note

DESCRIPTION = """\
One row per TCP socket, like 'ss -tanpo': state, local and peer address,
Recv-Q and Send-Q (on a LISTEN socket: the accept queue and its backlog), the
pending timer with the time left (a TIME_WAIT socket counts down from 60 s),
and the owner: pid, command and fd.

Sockets in TIME_WAIT, and FIN_WAIT2 sockets whose process already closed them,
belong to no process: the owner says 'kernel'.

Owners are found by walking /proc/PID/fd, for the pids given with --pid, or for
every process with --all-procs. Without root, other users' processes cannot be
read: their sockets show no owner, and a note says so.
"""

EXAMPLES = """\
examples:
  tcplab sockets --port 8080 --all-procs
  tcplab sockets --port 8080 --state time-wait      the TIME_WAIT countdowns
  tcplab sockets --pid 4242 --state close-wait      what a leaking server holds
  tcplab sockets --port 8080 --json
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, parents=[common.parent()],
        help="list TCP sockets with timers and owning processes (ss -tanpo)",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=common.port, default=0,
                   help="only sockets with this local or remote port")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only this state (repeatable): TIME_WAIT, time-wait, close-wait, ...")
    p.add_argument("--pid", type=common.positive_int, action="append", default=[],
                   help="only sockets owned by this process (repeatable)")
    p.add_argument("--all-procs", action="store_true",
                   help="name the owner of every socket (walks all of /proc)")
    common.add_netns(p, all_netns=True)
    common.add_json(p, "the sockets (one object with a list)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import UsageError
    from tcplab.kernel import tcp_states
    from tcplab.observe.owners import OwnerMap
    from tcplab.observe.sockets import SocketTable

    try:
        wanted = [tcp_states.parse(s) for s in args.state]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mask = tcp_states.mask(wanted) if wanted else tcp_states.ALL_STATES_MASK

    def read(netns: str | None) -> list[Any]:
        with SocketTable(netns=netns) as table:
            return table.sockets(args.port, mask)

    owners = None
    walked = False
    if args.pid or args.all_procs:
        from tcplab.observe.netns import pids_in

        # --all-procs: one namespace's own processes first (observe.owners.OwnerMap);
        # every namespace: one walk of the node's fds, which also finds the
        # namespaces that only a descriptor holds.
        first = None if args.pid or args.all_netns else pids_in(args.netns)
        owners = OwnerMap(args.pid or None, first=first)
        walked = args.all_netns and not args.pid
        if walked:
            owners.scan()
    if args.all_netns:
        from tcplab.observe.nodes import each_namespace

        pinned = owners.pinned.values() if owners is not None else ()
        tables, failed, unreadable = each_namespace(read, pinned=pinned)
        groups: list[tuple[Any, list[Any]]] = list(tables)
    else:
        groups = [(None, read(args.netns))]
    # Owner records for JSON; for text only the words (no record per socket).
    found: dict[int, Any] = {}
    if owners is not None:
        inodes = (s.inode for _, socks in groups for s in socks)
        # One walk: after the explicit scan above, a socket with no owner (held in
        # flight, or by an unreadable process) does not make another.
        found = (owners.lookup(inodes, rescan=not walked) if args.json
                 else owners.texts(inodes, rescan=not walked))
        if args.pid:
            groups = [(ns, [s for s in socks if s.inode in found]) for ns, socks in groups]
    if args.json:
        _json(args, groups, found,
              common.netns_json(len(groups), failed, unreadable) if args.all_netns else None)
    else:
        _text(groups, found, owners is not None)
    if args.all_netns:
        common.note_unexamined(failed, unreadable, examined=len(groups))
    if owners is not None and owners.hidden:
        why = "" if os.geteuid() == 0 else ": their fd tables need root to read"
        note(f"note: {len(owners.hidden)} processes of other users were not readable{why}, "
             "so some sockets show no owner")
    return 0


def _json(args: argparse.Namespace, groups: list[tuple[Any, list[Any]]],
          found: dict[int, Any], node: dict[str, Any] | None = None) -> None:
    from dataclasses import asdict

    from tcplab.kernel import tcp_states
    from tcplab.observe.nodes import where

    rows = []
    for ns, socks in groups:
        extra = where(ns) if ns is not None else {}
        rows += [{**s._asdict(), "state": tcp_states.name(s.state),
                  "owner": (asdict(found[s.inode]) if s.inode in found
                            else "kernel" if s.inode == 0 else None), **extra}
                 for s in socks]
    body: dict[str, Any] = {"port": args.port or None, "sockets": rows, "count": len(rows)}
    emit_json({**body, **(node or {})})


def _text(groups: list[tuple[Any, list[Any]]], texts: dict[int, str], asked: bool) -> None:
    from tcplab.report.observe import socket_lines

    parts = []
    for ns, socks in groups:
        if ns is not None:
            from tcplab.observe.nodes import where_text
            from tcplab.words import plural

            parts.append(f"{where_text(ns)}: {plural(len(socks), 'socket')}")
            if not socks:
                continue
        parts += socket_lines(socks, texts, unknown="?" if asked else "")
    sys.stdout.write("\n".join(parts) + "\n")
    sys.stdout.flush()
    if not asked and any(s.inode for _, socks in groups for s in socks):
        note("owners: add --all-procs (or --pid PID) to name the processes")
