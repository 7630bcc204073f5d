"""Child processes an experiment (or a test) starts, always reaped.

``ServerProcess`` runs ``python -m tcplab server --json`` in a child, waits for
its listening line, collects its stdout (JSON events) and stderr (log lines,
each with the time it arrived) in background threads, and on exit stops it
with SIGTERM, then SIGKILL if it does not go. Only the pid we started is ever
signalled.

Every child runs in a process group of its own, so a terminal's Ctrl-C
reaches only the experiment, which stops its children itself; starting one
(and recording it) and stopping one are never cut by a signal (see
tcplab/interrupts.py).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar

from tcplab.agents.io import command as agent_command
from tcplab.agents.listening import Listening
from tcplab.errors import ExperimentFailed
from tcplab.interrupts import deferred, interrupted, spawn
from tcplab.records import RecordError, from_json, from_json_line
from tcplab.traffic.server import Listening as ServerListening
from tcplab.traffic.server import WorkerTotals

T = TypeVar("T")

#: How long a child may take to stop on SIGTERM once the user pressed Ctrl-C:
#: the command must end within seconds (the issue asks for 10 s at most).
INTERRUPTED_GRACE = 2.0


class ServerProcess:
    def __init__(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 20.0,
        preexec_fn: Any = None,
        popen: Any = None,
        popen_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.args = ["--port", "0", *args]
        self.popen = popen or spawn  # Sandbox.popen starts it inside a namespace
        # More keyword arguments for popen, e.g. Sandbox.popen's fd_limit/fd_hard.
        self.popen_kwargs = dict(popen_kwargs or {})
        self.env = env
        self.start_timeout = start_timeout
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.log: list[tuple[float, str]] = []  # (monotonic time, stderr line)
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.listening.port

    @property
    def listening(self) -> ServerListening:
        """The first line, decoded (``info`` keeps it as sent, for tests of the CLI's
        JSON); the totals ``stop()`` returns decode into ``traffic.accept.ServerStats``."""
        return from_json(ServerListening, self.info)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        extra = {"preexec_fn": self.preexec_fn} if self.preexec_fn is not None else {}
        extra.update(self.popen_kwargs)
        with deferred():  # self.proc is set before any signal can leave this method
            self.proc = self.popen(
                [sys.executable, "-m", "tcplab", "server", "--json", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                **extra,
            )
        try:
            self._wait_listening()
        except BaseException:  # Ctrl-C included: __exit__ does not run when __enter__ fails
            self.kill()
            raise

    def _wait_listening(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        first = _read_line(self.proc.stdout, self.start_timeout)
        if not first:
            self.proc.wait(timeout=5)
            err = self.proc.stderr.read().decode(errors="replace").strip()
            raise ExperimentFailed(f"the server did not start: {err or 'no output'}",
                                   hint="run the same 'tcplab server' by hand to see it whole")
        self.info = json.loads(first)
        self._threads = [
            threading.Thread(target=self._collect_stdout, daemon=True),
            threading.Thread(target=self._collect_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _collect_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in pipe_lines(self.proc.stdout):
            try:
                self.events.append(json.loads(raw))
            except ValueError:
                continue

    def _collect_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in pipe_lines(self.proc.stderr):
            self.log.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """SIGTERM, wait, and return the server's totals (None if it had none).
        After a Ctrl-C the wait is at most ``INTERRUPTED_GRACE`` s, then SIGKILL."""
        if self.proc is None:
            return None
        if interrupted():
            timeout = min(timeout, INTERRUPTED_GRACE)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        # With --workers K the "totals" line is already the workers' sum.
        totals = [e for e in self.events if e.get("event") == "totals"]
        return totals[-1] if totals else None

    @property
    def worker_totals(self) -> list[WorkerTotals]:
        """Each worker's totals (``--workers K``, after ``stop()``), in index order;
        empty for a single-process server."""
        return sorted((from_json(WorkerTotals, e) for e in self.events
                       if e.get("event") == "worker-totals"), key=lambda t: t.index)

    def kill(self) -> None:
        if self.proc is None:
            return
        with deferred():
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        """Join the readers and close the pipes (their fds, not left to the collector)."""
        assert self.proc is not None
        for t in self._threads:
            if t.ident is not None:  # a Ctrl-C may have come before it was started
                t.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def pipe_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of a child's pipe until its end, or until the pipe is closed under
    the reading thread by the one that stops the child: that one joins the reader
    with a timeout, then closes the pipe, and on a loaded machine (multiplex's
    10,000 threads) a reader can still be between two lines then. It ends quietly
    instead of printing "ValueError: I/O operation on closed file" from its thread
    (tests/test_interrupt.py saw it once)."""
    try:
        yield from stream
    except ValueError:
        return


def relay_stderr(proc: subprocess.Popen[bytes], say: Callable[[str], None],
                 prefixes: tuple[str, ...] = ()) -> tuple[threading.Thread, list[str]]:
    """A started thread that keeps every line of ``proc``'s stderr (the list it
    returns: the last one names a failure) and passes on to ``say`` those that
    start with one of ``prefixes`` (every line when none are given)."""
    said: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        for raw in pipe_lines(proc.stderr):
            line = raw.decode(errors="replace").rstrip()
            said.append(line)
            if not prefixes or line.startswith(prefixes):
                say(line)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    return thread, said


def decode_result(cls: type[T], out: bytes, what: str) -> T:
    """A child's one JSON object (``--json``) as the record ``cls``; anything else
    is a bug in tcplab, said as such."""
    try:
        return from_json(cls, json.loads(out))
    except (ValueError, RecordError) as e:
        raise ExperimentFailed(f"{what} wrote something else than its result: {e}",
                               hint="this is a bug in tcplab: report it") from None


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, or b"" if none comes within ``timeout``."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return stream.readline()


class ForeignServer:
    """The user's own server (``--server-cmd``), started inside a sandbox.

    ``{port}`` in the command is replaced; ``env`` adds variables (LEAK=true);
    ``fd_limit`` sets its soft *and* hard fd limit, as ``ulimit -n`` does: Go
    (since 1.19) raises its soft limit to the hard one at start, so a soft
    limit alone left a Go server at 20,000 fds and the leak never reached it
    (issue 11); the hard limit it keeps. Ready means a LISTEN socket on the port
    (``addresses``: what it is bound to), seen in the socket table: no probe
    connection, which would leave a TIME_WAIT socket of ours on the port. Its
    stderr and stdout lines are collected like ServerProcess's log.
    """

    def __init__(self, sandbox: Any, command: str, port: int,
                 env: dict[str, str] | None = None, fd_limit: int | None = None) -> None:
        import shlex

        self.sandbox = sandbox
        self.command = command
        self.port = port
        self.log: list[tuple[float, str]] = []
        self.proc = sandbox.popen(
            shlex.split(command.replace("{port}", str(port))),
            fd_limit=fd_limit, fd_hard=fd_limit is not None, env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        ready = sandbox.run(agent_command("listening", str(port), "20"), stdout=subprocess.PIPE)
        if ready.returncode != 0:
            raise ExperimentFailed(
                f"the server command did not listen on port {port} within 20 s: {command}",
                hint="write {port} where the command takes its port (tcplab replaces it), and "
                "check that the command starts a server when run by hand")
        self.addresses: list[str] = from_json_line(Listening, ready.stdout).listening

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in pipe_lines(self.proc.stdout):
            self.log.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)

    def stop(self) -> None:
        terminate(self.proc)
        self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the pipe's fd, not left to the garbage collector


def terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM a child we started, SIGKILL it if it lingers, and reap it; not cut by
    SIGINT or SIGTERM (held until it is done)."""
    if interrupted():
        grace = min(grace, INTERRUPTED_GRACE)
    with deferred():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
