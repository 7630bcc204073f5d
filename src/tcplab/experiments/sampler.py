"""The parent's side of the 100 ms sampler that runs inside a sandbox.

The sampler itself (``tcplab.observe.sampler``) is a child in the namespace,
which also works unprivileged, where the parent could not setns into the
namespace; a thread here collects its JSON lines.

Rows are stamped by the child when it measured them (``mono``, CLOCK_MONOTONIC,
which every process on the machine shares); here they become seconds since
``origin`` (the experiment's start, or this sampler's). A row's time is never
the moment this thread happened to read it: under CPU load a late read and
the next one at once made the timeline run backwards (issue 11).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from tcplab.experiments.children import terminate
from tcplab.experiments.sandbox import Sandbox


class StateSampler:
    def __init__(self, sandbox: Sandbox, port: int, interval: float = 0.1,
                 pid: int | None = None, origin: float | None = None) -> None:
        args = [sys.executable, "-m", "tcplab.observe.sampler", "--port", str(port),
                "--interval", str(interval)]
        if pid is not None:
            args += ["--pid", str(pid)]
        self.proc = sandbox.popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL)
        self.started = time.monotonic() if origin is None else origin
        self.rows: list[dict[str, Any]] = []
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._first.wait(timeout=10)

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            row["t"] = round(row.pop("mono") - self.started, 6)
            self.rows.append(row)
            self._first.set()

    def now(self) -> float:
        """Seconds since ``origin`` on the rows' clock."""
        return time.monotonic() - self.started

    def since(self, t: float) -> list[dict[str, Any]]:
        """The rows measured at or after ``t`` (seconds since ``origin``)."""
        return [r for r in self.rows if r["t"] >= t]

    def wait_for_row_after(self, t: float, timeout: float = 5.0) -> bool:
        """Wait until a row measured after ``t`` has arrived (False on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rows and self.rows[-1]["t"] > t:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def latest(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    def state(self, row: dict[str, Any], state: str) -> int:
        return int(row["states"].get(state, 0))

    def peak(self, state: str) -> int:
        return max((self.state(r, state) for r in self.rows), default=0)

    def peak_of(self, key: str) -> int:
        return max((r[key] or 0 for r in self.rows), default=0)

    def timeline(self) -> list[list[Any]]:
        """``[[t, {state: count}], ...]`` as the experiments' JSON has it."""
        return [[r["t"], r["states"]] for r in self.rows]

    def stop(self) -> list[list[Any]]:
        terminate(self.proc)
        self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the pipe's fd, not left to the garbage collector
        return self.timeline()
