"""A server restarted while its port holds TIME_WAIT sockets: ``tcplab experiment restart``.

A choreography (``python -m tcplab.agents.restart N``) runs in a sandbox: a
server closes N connections first (so its side of each ends in TIME_WAIT on
its port) and stops; a new listener then binds the same port without
SO_REUSEADDR, then with it. Twice: once with an old server that had set
SO_REUSEADDR, once with one that had not (a TIME_WAIT socket keeps its
owner's flag, and the bind check wants it on both; agents/restart.py cites
the kernel). Each try is a ``Bind`` record: the TIME_WAIT count on the port
at that moment, and the errno and text bind() gave.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from tcplab.agents.restart import Bind
from tcplab.experiments import result as base
from tcplab.experiments.choreography import records_on
from tcplab.experiments.link import LOOPBACK, LinkSpec
from tcplab.experiments.result import Event, Progress, say_nothing


@dataclass(frozen=True, slots=True)
class RunWith:
    connections: int  # connections each old server closed first


@dataclass(frozen=True, slots=True)
class Facts:
    binds: tuple[Bind, ...]  # in order: old with SO_REUSEADDR (new without, with), old without


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The restart experiment's result: the bind() tries, no variants."""


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    n = 3 if quick else 5
    binds, used = records_on(link, "restart", [str(n)], Bind, "the restart choreography")
    events = []
    for x in binds:
        line = (f"old server {'with' if x.old_reuseaddr else 'without'} SO_REUSEADDR, "
                f"{x.time_wait} TIME_WAIT on port {x.port}: bind() "
                f"{'with' if x.new_reuseaddr else 'without'} SO_REUSEADDR "
                + ("succeeded" if x.listening else f"failed: [Errno {x.errno}] {x.error}"))
        events.append(Event(x.t, line))
        progress(f"  {line}")
    return Result(experiment="restart", ok=judge(binds, n), settings=RunWith(connections=n),
                  facts=Facts(binds=binds), events=tuple(events), link=used)


def find(binds: Sequence[Bind], old: bool, new: bool) -> Bind | None:
    return next((b for b in binds if b.old_reuseaddr is old and b.new_reuseaddr is new), None)


def refused(b: Bind | None) -> bool:
    return b is not None and not b.listening and b.errno == errno.EADDRINUSE


def judge(binds: Sequence[Bind], connections: int) -> bool:
    """Shown: with every connection's TIME_WAIT on the port, bind() without SO_REUSEADDR
    failed with EADDRINUSE and with it succeeded (the old server had it too); and with
    an old server without it, even the new one's SO_REUSEADDR did not help."""
    plain, reuse = find(binds, True, False), find(binds, True, True)
    late = find(binds, False, True)
    return (len(binds) == 4 and all(b.time_wait >= connections for b in binds)
            and refused(plain) and reuse is not None and reuse.listening
            and refused(late))
