"""What ``tcplab trace`` needs from tracefs, tried for real in a child:
``python -m tcplab.agents.tracefs_probe [--remove-stale]``.

In a child because mounting tracefs in a private mount namespace needs
unshare(CLONE_NEWNS), which refuses a multithreaded caller, and the caller's
own mounts must not change.

Without options it does what ``tcplab trace`` does to start (find tracefs or
mount it privately, make an instance, remove it again) and emits one
``Availability``; ``observe.tracefs.availability`` (for ``tcplab check``)
decodes it. With ``--remove-stale`` it removes trace instances whose process
is gone (``experiments.handshake`` runs it after SIGKILLing a tracer that did
not stop) and emits ``StaleRemoved``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from tcplab.agents.io import emit
from tcplab.errors import TcplabError
from tcplab.observe.tracefs import (
    PREFIX,
    STATE_EVENTS,
    Availability,
    find_tracefs,
    remove_stale,
)


@dataclass(frozen=True, slots=True)
class StaleRemoved:
    removed: list[str] = field(default_factory=list)  # instances/tcplab-PID names


def probe() -> Availability:
    try:
        root = find_tracefs()
        path = f"{root}/instances/{PREFIX}{os.getpid()}"
        os.mkdir(path)
        os.rmdir(path)
        return Availability(ok=True, root=root,
                            event=os.path.isdir(f"{root}/events/{STATE_EVENTS[0]}"))
    except (TcplabError, OSError) as exc:
        return Availability(ok=False, message=str(exc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.tracefs_probe",
                                description="Try what tcplab trace needs; emit Availability.")
    p.add_argument("--remove-stale", action="store_true",
                   help="remove trace instances of processes that are gone; emit StaleRemoved")
    args = p.parse_args(argv)
    if args.remove_stale:
        emit(StaleRemoved(remove_stale(find_tracefs())))
    else:
        emit(probe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
