"""Sysctls as a namespace sees them, read inside it: ``python -m tcplab.agents.sysctl NAME...``.

The /proc/sys/net tree shows the network namespace of the process that reads
it (see ``observe.procfs``), and a parent that is not root cannot setns(2)
into a sandbox's user-owned namespace; so the read runs in a child inside
(``Sandbox.sysctl``). It emits one ``Sysctl`` per name, in order; ``value`` is
None when the namespace has no such sysctl.

``--set NAME=VALUE --netns DEV:INODE`` first writes sysctls of a namespace of
`tcplab net` (port-bomb's real-link: the client's port range). That namespace has
a veth, so ``io.require_private_netns`` (lo only) would refuse it; instead the
write happens only when this process is in the namespace named by DEV:INODE (its
nsfs identity, registry.ns_id) and that is not its parent's: a child that failed
to enter the net's namespace writes nothing (exit 2).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tcplab.agents.io import emit
from tcplab.observe.procfs import sysctl


@dataclass(frozen=True, slots=True)
class Sysctl:
    name: str  # net.ipv4.ip_local_port_range
    value: str | None  # whitespace made single spaces: "40000 40999"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.sysctl",
                                description="Emit a Sysctl (name, value) for each NAME.")
    p.add_argument("names", nargs="*", metavar="NAME", help="e.g. net.core.somaxconn")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="write it first (only with --netns, in that namespace)")
    p.add_argument("--netns", metavar="DEV:INODE",
                   help="the network namespace --set may write (registry.ns_id)")
    args = p.parse_args(argv)
    if args.set:
        _write(p, args.set, args.netns)
    for name in args.names:
        emit(Sysctl(name, sysctl(name)))
    return 0


def _write(p: argparse.ArgumentParser, pairs: list[str], netns: str | None) -> None:
    import os

    from tcplab.net.registry import ns_id

    here = ns_id("/proc/self/ns/net")
    try:
        parents = ns_id(f"/proc/{os.getppid()}/ns/net")
    except OSError:
        parents = None
    if netns is None or here != netns or parents == here:
        p.error(f"--set: this is not the namespace {netns} (here {here}): nothing written")
    for pair in pairs:
        name, _, value = pair.partition("=")
        with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
            f.write(f"{value}\n")


if __name__ == "__main__":
    raise SystemExit(main())
