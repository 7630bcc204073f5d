"""The agents' side of the contract: one JSON line per record, flushed at once;
the command line that starts an agent, for the parent's side; and the one sysctl
writer of the agents that change their namespace, with its guard.

The syn_queue, orphans, ports and keepalive agents write sysctls (and keepalive
adds a veth pair). They run in a sandbox's network namespace, or by hand under
``unshare -Urn``; run by hand in the host's namespace they would change the
host. So each calls :func:`require_private_netns` first, before any write or
link, and :func:`write_sysctl` refuses until that check has passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from tcplab.observe import procfs
from tcplab.records import to_json


def emit(record: Any, stream: TextIO | None = None) -> None:
    """Write ``record`` as one JSON line and flush it (the parent reads as it comes)."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(to_json(record), separators=(",", ":")) + "\n")
    out.flush()


def command(agent: str, *args: str) -> list[str]:
    """``python -m tcplab.agents.AGENT ARGS`` with this interpreter: how a parent
    starts an agent (in a sandbox with ``Sandbox.popen``, or with ``interrupts.spawn``)."""
    return [sys.executable, "-m", f"tcplab.agents.{agent}", *args]


_checked = False


def private_netns() -> bool:
    """True only in a namespace that is plainly a sandbox's, where writing sysctls cannot
    touch the host's: it has no interface but lo (/proc/self/net/dev), and it is not the
    parent's (the experiment, or a shell, runs outside). Comparing with pid 1 is not
    enough: in a container pid 1 may be unreadable, or in another namespace."""
    try:
        names = [line.split(":", 1)[0].strip()
                 for line in procfs.read_text("self/net/dev").splitlines()[2:]]
        ours = os.readlink("/proc/self/ns/net")
    except OSError:
        return False
    try:
        parents = os.readlink(f"/proc/{os.getppid()}/ns/net")
    except OSError:
        parents = None  # not ours to read (a user namespace): the interfaces decide
    return names == ["lo"] and parents != ours


def require_private_netns(parser: argparse.ArgumentParser, experiment: str) -> None:
    """Exit with a usage error (status 2) unless this is a private network namespace."""
    global _checked
    if not private_netns():
        parser.error(f"run inside a private network namespace ('tcplab experiment "
                     f"{experiment}' makes one, or run it under unshare -Urn): this agent "
                     "writes the namespace's sysctls")
    _checked = True


def write_sysctl(name: str, value: int | str) -> None:
    """A sysctl of this network namespace, once :func:`require_private_netns` found it private."""
    if not _checked:
        raise RuntimeError(f"refusing to write {name}: the namespace was not checked first")
    with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
        f.write(f"{value}\n")
