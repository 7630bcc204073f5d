"""Ctrl-C that leaves nothing behind: who receives SIGINT, and cleanup it cannot cut.

A terminal's Ctrl-C (and ``timeout -s INT``) signals the whole foreground
process group, so without care every child tcplab started gets its own
SIGINT at the moment the parent starts cleaning up; a second Ctrl-C then
lands in the parent's ``finally`` blocks. Measured on `experiment handshake`
before this module: 8 of 11 group SIGINTs left a trace instance tracing,
because the tracer child was interrupted in its own cleanup, or was signalled
again by its parent while cleaning up. The rules:

1. One process handles a Ctrl-C: the command the user started. Every child
   tcplab starts gets a process group of its own (``spawn``, and
   ``Sandbox.popen``), so the group's SIGINT never reaches it; its parent
   stops it (SIGTERM, then SIGKILL) and reaps it.
2. In that process the first SIGINT raises KeyboardInterrupt and makes SIGINT
   ignored from then on (``install``, called by cli/main.py): the ``finally``
   blocks and ``__exit__`` methods it starts run to their end, whatever the
   user presses next. Every wait in them is bounded, and shortened once
   ``interrupted()``, so the command still ends within seconds.
3. A step that must not be cut in half, even by the first signal (start a
   child and record its pid; create a trace instance; close a sandbox), runs
   in ``deferred()``: SIGINT or SIGTERM arriving inside is held and delivered
   when the step is over.
4. A command whose loop can look at a flag (trace, capture) uses ``StopFlag``:
   the signal only sets the flag, nothing is raised in the middle of a write,
   the loop ends, the command cleans up and then raises KeyboardInterrupt.

Python handlers run in the main thread only, so outside it (reader threads)
these are no-ops: a signal never raises there anyway.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `tcplab states` starts without it (2.4 ms)
    import subprocess

#: Both stop a command: SIGINT from a terminal, SIGTERM from a parent or kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_interrupted = False


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    # From now on SIGINT is ignored: the cleanup this exception starts must
    # not be cut by the next Ctrl-C (rule 2).
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupted() -> bool:
    """True once a Ctrl-C has been handled (install): cleanup then waits briefly
    for a child to stop gracefully before it kills it, so the command still ends
    within seconds (a threads server with 10,000 connections took over 30 s to
    stop on SIGTERM in experiment multiplex)."""
    return _interrupted


def install() -> Callable[[], None]:
    """The first SIGINT raises KeyboardInterrupt and makes later ones ignored.

    Returns a function that puts the previous handler back, unless we were
    interrupted (then SIGINT stays ignored until the process ends). A process
    started with SIGINT ignored (a shell's background job) keeps it ignored."""
    if not _in_main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return lambda: None
    old = signal.signal(signal.SIGINT, _interrupt_once)

    def restore() -> None:
        if signal.getsignal(signal.SIGINT) is _interrupt_once:
            signal.signal(signal.SIGINT, old)

    return restore


def ignore() -> None:
    """SIGINT ignored from now on (a command that is over and only exits)."""
    if _in_main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_now(status: int) -> None:
    """End the process now with ``status``, after flushing stdout and stderr.

    For a command that was interrupted and has cleaned up. CPython 3.11 sets a
    global flag when a KeyboardInterrupt leaves code run by exec() of a string
    (a dataclass's generated __init__ during an import, for one) even if we
    catch it later, and at exit then kills the process with SIGINT instead of
    returning our status (Py_RunMain and _Py_UnhandledKeyboardInterrupt,
    Modules/main.c and Python/pythonrun.c): seen here as status -2 in about 1
    run of 40 interrupted early. os._exit skips that, and the rest of the
    interpreter's teardown, which an interrupted command does not need."""
    import os
    import sys

    ignore()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone
            pass
    os._exit(status)


class deferred:
    """Hold SIGINT and SIGTERM while the block runs; deliver them after it.

    A held signal is delivered to the handler that was in place before (which
    raises KeyboardInterrupt, or, for a default SIGTERM, ends the process), so
    the block itself is never cut. When a KeyboardInterrupt is already on its
    way out of the block, a held SIGINT adds nothing and is dropped."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.held: list[int] = []
        self._old: dict[int, _Handler] = {}

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.held.append(signum)

    def __enter__(self) -> deferred:
        if _in_main_thread():
            for s in self.signals:
                old = signal.getsignal(s)
                if old is None:  # installed from C (an event loop): not ours to touch
                    continue
                self._old[s] = old
                signal.signal(s, self._hold)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # SIGINT last: once its raising handler is back, the next SIGINT may raise
        # here, and every other handler must be back by then.
        for s, old in reversed(self._old.items()):
            signal.signal(s, old)
        held = list(dict.fromkeys(self.held))
        self.held.clear()
        for s in held:
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                continue
            _deliver(s, self._old[s])


def _deliver(signum: int, handler: _Handler) -> None:
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(signum, None)
    else:  # SIG_DFL: what the signal would have done, now that the block is over
        signal.raise_signal(signum)


class StopFlag:
    """SIGINT and SIGTERM set this flag instead of raising (rule 4).

    ``while not stop: ...``; after the cleanup, ``stop.raise_if_set()`` turns a
    stop into KeyboardInterrupt, which cli/main.py reports as interrupted. A
    blocking call the signal arrives in is resumed (PEP 475), so loops must
    wait in short steps (trace and capture poll every 0.25-0.5 s)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, _Handler] = {}
        if _in_main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    def raise_if_set(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt


def spawn(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` for a child that its parent stops: in a process group
    of its own, so a terminal's Ctrl-C does not reach it (rule 1). Call it in
    ``with deferred():`` together with whatever records the child, so that a
    signal cannot fall between the fork and the record (rule 3)."""
    import subprocess

    kwargs.setdefault("process_group", 0)
    return subprocess.Popen(list(args), **kwargs)
