"""``tcplab limits``: the kernel knobs behind the experiments, and what each does here."""

from __future__ import annotations

import argparse
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, out

DESCRIPTION = """\
The limits and sysctls that decide when the lab's failures happen, with their
values on this machine (or in --netns) and one line each on what they do.
The net.* values are per network namespace; tcplab's experiments change them
only inside their own private namespace, never on the host.
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name, parents=[common.parent()],
        help="show the fd limits and TCP sysctls behind the experiments",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_netns(p)
    common.add_json(p, "the knobs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.observe.limits import read_knobs

    knobs = read_knobs(args.netns)
    if args.json:
        emit_json({"limits": knobs})
        return 0
    width = max(len(k.name) for k in knobs)
    vwidth = max(len(k.value) for k in knobs)
    for k in knobs:
        out(f"{k.name:<{width}}  {k.value:<{vwidth}}  {k.meaning}")
    return 0
