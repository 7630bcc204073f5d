"""The agents' side of the contract: one JSON line per record, flushed at once;
the command line that starts an agent, for the parent's side; and the one sysctl
writer of the agents that change their namespace, with its guard.

The syn_queue, orphans, ports and keepalive agents write sysctls (and keepalive
adds a veth pair). They run in a sandbox's network namespace, or by hand under
``unshare -Urn``; run by hand in the host's namespace they would change the
host. So each calls :func:`require_private_netns` first, before any write or
link, and :func:`write_sysctl` refuses until that check has passed.

Across a real link (``--link veth``) the keepalive and orphans agents run in the
server's namespace of a tcplab net, which has a veth, so the check above refuses
it; there they write no sysctl (the experiment sets them through the sysctl
agent's guarded ``--set --netns``) and add only an nftables table, after
:func:`require_net_end` found this namespace to be exactly that end of a live
net (never the host's).
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


def tcplab(*args: str) -> list[str]:
    """``python -m tcplab ARGS`` with this interpreter: a tcplab command as a child."""
    return [sys.executable, "-m", "tcplab", *args]


def not_the_hosts() -> bool:
    """This network namespace is neither pid 1's nor our parent's: the host's stays
    untouched by what runs here. (An unreadable pid 1 does not count against it: an
    ordinary user, who has no right to change the host's anyway.)"""
    ours = os.readlink("/proc/self/ns/net")
    for pid in (1, os.getppid()):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == ours:
                return False
        except OSError:
            pass
    return True


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


_net_end: str | None = None


def net_end_here(role: str) -> bool:
    """True only in ``role``'s namespace of a live tcplab net: the net named by
    TCPLAB_NET_STATE (set by ``control.popen``), its holder alive, this namespace's
    nsfs identity that of the net's ``role`` end, and of the pin process sitting in it;
    and never pid 1's nor the parent's namespace (a forged state file naming the host's
    namespace still fails there; pid 1 unreadable: an ordinary user, who cannot change
    the host's firewall anyway)."""
    from pathlib import Path

    from tcplab.net import registry

    path = os.environ.get(registry.ENV_STATE)
    net = registry.read(Path(path)) if path else None
    if net is None or not registry.alive(net):
        return False
    try:
        end = net.endpoint(role)
        here = registry.ns_id("/proc/self/ns/net")
        if here != end.netns or registry.ns_id(f"/proc/{end.pid}/ns/net") != here:
            return False
    except (KeyError, OSError):
        return False
    return not_the_hosts()


def require_net_end(parser: argparse.ArgumentParser, experiment: str, role: str) -> None:
    """Exit with a usage error (status 2) unless this is ``role``'s namespace of a live
    tcplab net (:func:`net_end_here`)."""
    global _net_end
    if not net_end_here(role):
        parser.error(f"this is not the {role}'s namespace of a tcplab net ('tcplab experiment "
                     f"{experiment} --link veth' runs it there): this agent adds nftables "
                     "rules to it")
    _net_end = role


def checked_net_end() -> str:
    """The net's end :func:`require_net_end` found here; RuntimeError if none was."""
    if _net_end is None:
        raise RuntimeError("refusing to change this namespace: it was not checked first")
    return _net_end


def write_sysctl(name: str, value: int | str) -> None:
    """A sysctl of this network namespace, once :func:`require_private_netns` found it private."""
    if not _checked:
        raise RuntimeError(f"refusing to write {name}: the namespace was not checked first")
    with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
        f.write(f"{value}\n")
