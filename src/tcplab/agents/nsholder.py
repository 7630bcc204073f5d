"""The process that owns a sandbox's namespaces:
``python -m tcplab.agents.nsholder [--user] [--sysctl NAME=VALUE ...]``.

Started by :class:`tcplab.experiments.sandbox.Sandbox` as a fresh, single-
threaded interpreter, because ``unshare(CLONE_NEWUSER)`` fails with EINVAL in a
process that already runs threads. It:

1. unshares a network namespace (as root), or with ``--user`` a user and a
   network namespace (as anyone else: we become root inside, mapped to our
   own uid outside);
2. brings ``lo`` up and writes the ``--sysctl`` values, inside only, in order;
3. emits one ``Answer`` (ready, or the stage that failed with its errno) and
   waits until its stdin closes (the parent went away or is done), then
   exits. The namespace disappears with its last process.

It also asks the kernel to kill it if its parent dies (PR_SET_PDEATHSIG), so a
SIGKILLed experiment leaves nothing behind. It runs in a process group of its
own (see tcplab/interrupts.py): Ctrl-C is its parent's to handle.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass

from tcplab.agents.io import emit
from tcplab.net.build import link_up
from tcplab.observe.nsutil import CLONE_NEWNET, die_with_parent, unshare
from tcplab.observe.procfs import sysctl_path


@dataclass(frozen=True, slots=True)
class Answer:
    """The holder's one line: ready (with its pid), or where it failed."""

    ready: bool = False
    pid: int | None = None
    error: str | None = None  # the stage that failed: "unshare", "lo up", "sysctl NAME"
    errno: int | None = None
    message: str | None = None


def write_sysctl(name: str, value: str) -> None:
    """Inside the new namespace only: the holder is its first process."""
    with open(sysctl_path(name), "w") as f:
        f.write(value)


def sysctl_setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (argparse type)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def enter_new_namespaces(user: bool) -> None:
    if user:
        from tcplab.net.build import enter_user_namespace

        enter_user_namespace()
    else:
        unshare(CLONE_NEWNET)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.nsholder",
                                description="Hold a new network namespace until stdin closes; "
                                "emit an Answer once it is ready (or failed).")
    p.add_argument("--user", action="store_true",
                   help="a user namespace too (unprivileged: root inside, our uid outside)")
    p.add_argument("--sysctl", type=sysctl_setting, action="append", default=[],
                   metavar="NAME=VALUE", help="set inside the namespace (repeatable)")
    args = p.parse_args(argv)
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:
        return 1  # the parent is already gone
    stage = "unshare"
    try:
        enter_new_namespaces(args.user)
        stage = "lo up"
        link_up("lo")
        for name, value in args.sysctl:
            stage = f"sysctl {name}"
            write_sysctl(name, value)
    except OSError as exc:
        emit(Answer(error=stage, errno=exc.errno, message=str(exc)))
        return 1
    emit(Answer(ready=True, pid=os.getpid()))
    # The parent handles Ctrl-C and closes our stdin. We run in a process group
    # of our own, so a terminal's SIGINT does not reach us anyway; this covers
    # one sent to our pid.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
