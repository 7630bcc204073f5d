"""Shared fixtures. Three kinds of test, each with its marker (see pyproject):
pure (no sockets), loopback (real sockets on 127.0.0.1, port 0), privileged
(inside a private network namespace)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tcplab.experiments.children import ServerProcess

MODELS = ("uvloop", "asyncio", "epoll", "threads")


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``tcplab server --json --port 0 ARGS`` in a child; always reaped."""
    started: list[ServerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, preexec_fn: Any = None
    ) -> ServerProcess:
        server = ServerProcess(args, env=env, preexec_fn=preexec_fn)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


def run_tcplab(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would: a fresh ``python -m tcplab`` process."""
    return subprocess.run(
        [sys.executable, "-m", "tcplab", *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
