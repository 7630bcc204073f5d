"""``tcplab check``: a preflight of what works on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, out

DESCRIPTION = """\
Tries, for real, what tcplab needs and says what works and what does not,
with the fix for each: private network namespaces (as root, or unprivileged
user namespaces) and their sysctls, the NETLINK_SOCK_DIAG socket table,
tracefs, AF_PACKET (CAP_NET_RAW), and fd limits. Experiments run the same
probes and skip, with the reason, what cannot run here.

tracefs not mounted on the host is no failure as root: trace mounts it in a
private mount namespace of its own, and check tries exactly that (in a child,
so no mount of the host changes).

Exit status 0 when everything the experiments need works, 1 otherwise.
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="say what works on this machine and how to fix what does not",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_json(p, "the checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.experiments import probe

    checks = [*probe.all_checks(), shaping_check(probe.Check)]
    essential = {"Linux kernel", "NETLINK_SOCK_DIAG", "private network namespace"}
    healthy = all(c.ok for c in checks if c.name in essential)
    if args.json:
        emit_json({"checks": checks, "ok": healthy})
        return 0 if healthy else 1
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        out(f"[{mark}] {c.name:<{width}}  {c.detail}  (for {c.needed_by})")
        if c.fix and not c.ok:
            out(f"       {'':<{width}}  fix: {c.fix}")
    return 0 if healthy else 1


def shaping_check(check: Any) -> Any:
    """Which mechanism each `tcplab net` knob uses here, tried in a namespace."""
    from tcplab.errors import TcplabError
    from tcplab.net.control import probe_words

    try:
        ok, detail, fix = probe_words()
    except TcplabError as exc:
        ok, detail, fix = False, exc.message, exc.hint
    return check("link shaping", ok, detail, fix, "tcplab net, --link veth")
