"""A 100 ms socket-state sampler running inside a sandbox.

It is ``tcplab states --port P --watch --json --interval 0.1`` started as a
child in the namespace (which also works unprivileged, where the parent could
not setns into the namespace itself); a thread collects its JSON lines into
a timeline of ``[t, {state: count}]``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

from tcplab.experiments.sandbox import Sandbox


class StateSampler:
    def __init__(self, sandbox: Sandbox, port: int, interval: float = 0.1) -> None:
        self.proc = sandbox.popen(
            sandbox.tcplab("states", "--port", str(port), "--watch", "--json",
                           "--interval", str(interval)),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        self.started = time.monotonic()
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._first.wait(timeout=10)

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            t = round(time.monotonic() - self.started, 3)
            self.samples.append((t, {k: v for k, v in obj["states"].items() if v}))
            self._first.set()

    def latest(self) -> dict[str, int]:
        return self.samples[-1][1] if self.samples else {}

    def peak(self, state: str) -> int:
        return max((s.get(state, 0) for _, s in self.samples), default=0)

    def stop(self) -> list[list[Any]]:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(timeout=5)
        return [[t, s] for t, s in self.samples]
