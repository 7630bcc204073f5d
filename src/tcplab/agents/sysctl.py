"""Sysctls as a namespace sees them, read inside it: ``python -m tcplab.agents.sysctl NAME...``.

The /proc/sys/net tree shows the network namespace of the process that reads
it (see ``observe.procfs``), and a parent that is not root cannot setns(2)
into a sandbox's user-owned namespace; so the read runs in a child inside
(``Sandbox.sysctl``). It emits one ``Sysctl`` per name, in order; ``value`` is
None when the namespace has no such sysctl.
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
    p.add_argument("names", nargs="+", metavar="NAME", help="e.g. net.core.somaxconn")
    for name in p.parse_args(argv).names:
        emit(Sysctl(name, sysctl(name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
