"""The parent's side of the 100 ms sampler that runs inside a sandbox or at an end of a net.

The sampler itself (``python -m tcplab.agents.sampler``) is a child in the
namespace, which also works unprivileged, where the parent could not setns
into the namespace; a thread here decodes its JSON lines back into
``Sample`` records.

Rows are stamped by the child when it measured them: ``t`` is seconds since
``origin`` (the experiment's start, or this sampler's) on CLOCK_MONOTONIC,
which every process on the machine shares, so the child computes it from the
origin it is given. A row's time is never the moment this thread happened to
read it: under CPU load a late read and the next one at once made the
timeline run backwards (issue 11).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from tcplab.agents.io import command
from tcplab.agents.sampler import Sample
from tcplab.experiments.children import terminate
from tcplab.records import RecordError, from_json_line

__all__ = ["Sample", "StateSampler"]


class StateSampler:
    def __init__(self, popen: Callable[..., subprocess.Popen[Any]], port: int,
                 interval: float = 0.1,
                 pid: int | None = None, origin: float | None = None,
                 also_netns: str | None = None) -> None:
        self.started = time.monotonic() if origin is None else origin
        args = ["--port", str(port), "--interval", str(interval),
                "--origin", repr(self.started)]
        if pid is not None:
            args += ["--pid", str(pid)]
        if also_netns is not None:
            args += ["--also-netns", also_netns]
        self.proc = popen(command("sampler", *args), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.rows: list[Sample] = []
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._first.wait(timeout=10)

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        from tcplab.experiments.children import pipe_lines

        for line in pipe_lines(self.proc.stdout):
            try:
                self.rows.append(from_json_line(Sample, line))
            except RecordError:
                continue  # a line cut by the child's end
            self._first.set()

    def now(self) -> float:
        """Seconds since ``origin`` on the rows' clock."""
        return time.monotonic() - self.started

    def since(self, t: float) -> list[Sample]:
        """The rows measured at or after ``t`` (seconds since ``origin``)."""
        return [r for r in self.rows if r.t >= t]

    def wait_for_row_after(self, t: float, timeout: float = 5.0) -> bool:
        """Wait until a row measured after ``t`` has arrived (False on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rows and self.rows[-1].t > t:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def latest(self) -> Sample | None:
        return self.rows[-1] if self.rows else None

    def state(self, row: Sample | None, state: str) -> int:
        return row.state(state) if row is not None else 0

    def peak(self, state: str) -> int:
        return max((r.state(state) for r in self.rows), default=0)

    def peak_of(self, key: str) -> int:
        """The largest value of a numeric field (``server_fds``, ``listen_queue``) over the rows."""
        return max((getattr(r, key) or 0 for r in self.rows), default=0)

    def stop(self) -> None:
        terminate(self.proc)
        self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the pipe's fd, not left to the garbage collector
