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
    common.add_netns(p)
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
    with SocketTable(netns=args.netns) as table:
        socks = table.sockets(args.port, mask)
    owners = None
    if args.pid or args.all_procs:
        from tcplab.observe.netns import pids_in

        # --all-procs: the namespace's own processes first (observe.owners.OwnerMap).
        owners = OwnerMap(args.pid or None, first=None if args.pid else pids_in(args.netns))
        found = owners.lookup(s.inode for s in socks)
        if args.pid:
            socks = [s for s in socks if s.inode in found]
    else:
        found = {}
    if owners is None:
        texts: dict[int, str] = {}
    else:
        texts = {i: f"{o.command} (pid {o.pid}, fd {o.fd})" for i, o in found.items()}
    if args.json:
        from dataclasses import asdict

        emit_json({
            "port": args.port or None,
            "sockets": [
                {**s._asdict(), "state": tcp_states.name(s.state),
                 "owner": (asdict(found[s.inode]) if s.inode in found
                           else "kernel" if s.inode == 0 else None)}
                for s in socks
            ],
            "count": len(socks),
        })
    else:
        from tcplab.report.observe import socket_lines

        lines = socket_lines(socks, texts, unknown="" if owners is None else "?")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        if owners is None and any(s.inode for s in socks):
            note("owners: add --all-procs (or --pid PID) to name the processes")
    if owners is not None and owners.hidden:
        why = "" if os.geteuid() == 0 else ": their fd tables need root to read"
        note(f"note: {len(owners.hidden)} processes of other users were not readable{why}, "
             "so some sockets show no owner")
    return 0
