"""Shared fixtures. Three kinds of test, each with its marker (see pyproject):
pure (no sockets), loopback (real sockets on 127.0.0.1, port 0), privileged
(inside a private network namespace).

``experiment_all`` runs ``tcplab experiment all --quick --json --report DIR``
once per session (about a minute on this 2-core machine, longer under load) for
the checks of the CLI (tests/test_cli.py), the report (tests/test_report.py)
and the experiments (tests/test_fd_leak.py): four separate runs used to cost
about 180 s of the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments.children import ServerProcess

MODELS = ("uvloop", "asyncio", "epoll", "threads")
KINDS = ("pure", "loopback", "privileged")


def pytest_configure(config: pytest.Config) -> None:
    """SIGINT as a terminal gives it, for every child the tests start.

    pytest run from a script's background job (``bash .ci/run &``: no job
    control) starts with SIGINT ignored, exec keeps an ignored signal ignored in
    every child, and tcplab, like a shell, leaves an ignored SIGINT ignored: the
    tests that press Ctrl-C on a command (exporter, ``states --watch``) then saw
    it run on until their guard (seen in 1 of 1 suite run started that way). A
    handled signal is reset to its default in an exec'd child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is of exactly one kind, so ``-m loopback`` and ``-m privileged``
    select what they say: a privileged test in a module marked loopback was both."""
    wrong = [f"{item.nodeid}: {sorted(kinds) or 'no kind'}" for item in items
             if len(kinds := {m.name for m in item.iter_markers()} & set(KINDS)) != 1]
    if wrong:
        raise pytest.UsageError(f"each test needs exactly one of the markers {', '.join(KINDS)}"
                                ":\n  " + "\n  ".join(wrong))


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


@dataclass(frozen=True)
class ExperimentAll:
    """One ``tcplab experiment all --quick --json --report DIR`` run."""

    proc: subprocess.CompletedProcess[bytes]
    bodies: list[dict[str, Any]]  # the JSON objects on stdout, in order
    stray: list[str]  # stdout lines that are not a JSON object (there should be none)
    report: Path  # DIR: index.html and results.json

    @property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return {b["experiment"]: b for b in self.bodies}

    @property
    def stderr(self) -> str:
        return self.proc.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def experiment_all(tmp_path_factory: pytest.TempPathFactory,
                   worker_id: str) -> ExperimentAll:
    """One run for the whole session, also when pytest-xdist runs the files in
    several worker processes: the first worker to ask runs it under a file lock
    in the run's shared temporary directory and leaves it there for the others
    (the pattern pytest-xdist's documentation gives for session data)."""
    if worker_id == "master":  # no xdist (-p no:xdist or -n 0)
        return _experiment_all(tmp_path_factory.mktemp("experiment-all"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "experiment-all"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        saved = shared / "run.json"
        if not saved.exists():
            run = _experiment_all(shared)
            saved.write_text(json.dumps({
                "args": run.proc.args, "returncode": run.proc.returncode,
                "stdout": run.proc.stdout.decode("latin-1"),
                "stderr": run.proc.stderr.decode("latin-1")}))
        data = json.loads(saved.read_text())
    proc = subprocess.CompletedProcess(data["args"], data["returncode"],
                                       data["stdout"].encode("latin-1"),
                                       data["stderr"].encode("latin-1"))
    return _decode(proc, shared / "report")


def _experiment_all(directory: Path) -> ExperimentAll:
    report = directory / "report"  # tcplab makes DIR
    # The subprocess bound is below pytest-timeout's 600 s (pyproject), so a hang
    # is reported here, with the run's stderr, rather than as a stack dump.
    r = run_tcplab("experiment", "all", "--quick", "--json", "--report", str(report),
                   timeout=540)
    return _decode(r, report)


def _decode(r: subprocess.CompletedProcess[bytes], report: Path) -> ExperimentAll:
    bodies: list[dict[str, Any]] = []
    stray: list[str] = []
    for line in r.stdout.decode(errors="replace").splitlines():
        try:
            body = json.loads(line)
        except ValueError:
            stray.append(line)
            continue
        if isinstance(body, dict):
            bodies.append(body)
        else:
            stray.append(line)
    return ExperimentAll(r, bodies, stray, report)
