"""How ``experiment --live`` and ``--record`` follow experiments as they run.

Each experiment makes its namespaces with ``link.ends`` (a Sandbox on loopback,
a temporary net on veth) and takes them down at the end; a run of several
(``experiment all``, port-bomb's variants) makes many, one after another. So
the target moves: ``ends`` calls :func:`following` once its namespaces are up,
which, while a :class:`Follower` is installed (:func:`install`), starts the live
agent (tcplab.agents.live) inside them, relays its events to the follower on
one clock, and stops it before they go. The agent writes one last count on its
way out, so what an experiment reports at its end is in the recording. Without
a follower (no --live, no --record) it does nothing.

The events are observe.live's (``counts``, ``edges``, ``transition``, ``event``,
``meta``), ``t`` in seconds since the follower started; a ``meta`` event per
namespace, its words led by the experiment's label (``port-bomb: fresh``), and
``event`` markers from the experiment's progress lines. The agent is a child of
the namespace like any other (Sandbox.popen, control.popen): Ctrl-C, once or
twice, stops it with the rest.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcplab.experiments.link import Ends

Event = dict[str, Any]


class Follower:
    """Where the events go (``sink``, called with one batch at a time, from
    several threads but never two at once) and the clock they share."""

    def __init__(self, sink: Callable[[list[Event]], None], interval: float = 0.5,
                 tracepoint: bool = False) -> None:
        """``tracepoint``: the agents take transitions from the kernel's tracepoints
        (as root; ``experiment --live``), else from sock_diag snapshots."""
        self.sink = sink
        self.interval = interval
        self.tracepoint = tracepoint
        self.origin = time.monotonic()
        self.label = ""
        self._lock = threading.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.origin, 3)

    def send(self, events: list[Event]) -> None:
        with self._lock:
            self.sink(events)

    def event(self, text: str) -> None:
        """A marker on the page and in the recording: ``port-bomb: fresh``."""
        self.send([{"kind": "event", "t": self.now(), "text": text}])


_current: Follower | None = None


def install(follower: Follower | None) -> None:
    """Follow every namespace ``ends`` makes from now on (None: stop following)."""
    global _current
    _current = follower


@contextlib.contextmanager
def following(e: Ends) -> Iterator[None]:
    """The live agent in ``e``'s namespaces for the length of the body (see module)."""
    f = _current
    if f is None:
        yield
        return
    from tcplab.agents.io import command
    from tcplab.experiments.children import terminate

    args = ["--interval", repr(f.interval)] + (["--tracepoint"] if f.tracepoint else [])
    if e.kind == "veth" and "client" in e.netns:
        args += ["--also-netns", e.netns["client"]]  # the agent runs at the server's end
    from tcplab.interrupts import deferred

    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    try:
        # Held while the agent starts and its reader with it (a Ctrl-C between the
        # two left the agent running); one held is delivered after, inside the try.
        with deferred():
            proc = e.server(command("live", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
            reader = threading.Thread(target=_relay, args=(proc, f, f.label), daemon=True)
            reader.start()
        yield
    finally:
        if proc is not None:
            terminate(proc)  # its last count is written on the way out
            if reader is not None:
                reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


def _relay(proc: subprocess.Popen[bytes], f: Follower, label: str) -> None:
    """The agent's lines, put on the follower's clock (its meta says where its own
    started), batched as the agent wrote them."""
    assert proc.stdout is not None
    offset = 0.0
    for line in proc.stdout:
        try:
            events = [json.loads(line)]
        except ValueError:
            continue  # a line cut by the agent's end
        ev = events[0]
        if ev.get("kind") == "meta":
            offset = ev.pop("mono", f.origin) - f.origin
            ev["experiment"] = label
            if label:
                ev["words"] = f"{label}: {ev['words']}"
        ev["t"] = round(ev["t"] + offset, 3)
        f.send(events)
