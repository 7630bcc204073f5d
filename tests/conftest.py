"""Shared fixtures and options; the helpers they use are in tests/helpers.py, the
one module test files import from. Three kinds of test, each with its marker (see
pyproject): pure (no sockets), loopback (real sockets on 127.0.0.1, port 0),
privileged (inside a private network namespace).

``--server-cmd CMD`` points the conformance suite (tests/test_conformance.py)
at the user's own echo server, see README.md "Check your own server".

``experiment_all`` runs ``tcplab experiment all --quick --json --report DIR``
once per session (about a minute on this 2-core machine, longer under load) for
the checks of the CLI (tests/test_cli.py), the report (tests/test_report.py)
and the experiments (tests/test_fd_leak.py): four separate runs used to cost
about 180 s of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments.children import ServerProcess
from tests.helpers import ExperimentAll, Spawner, make_nobody_venv

KINDS = ("pure", "loopback", "privileged")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server-cmd", metavar="CMD", default=None,
        help="check your own echo server with tests/test_conformance.py: CMD starts it "
             "(split like a shell's words, no shell); {port} in CMD, and the PORT "
             "environment variable, give the free port it must listen on")


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


#: The files that take longest, longest first: worker-seconds in one root run of the
#: whole suite on the 2-core machine (2026-12-01): test_report 130 (its session's
#: ``experiment all``), test_interrupt 90, test_bomb 85, test_keepalive_ports_orphans
#: 77, test_go_leak 76, test_fd_leak 68, test_net 56, test_link 43, then 37 and less.
#: pytest-xdist hands out whole files (--dist loadfile) in this order
#: (--no-loadscope-reorder; its own order is by number of tests), so no long file
#: starts last and holds the suite up: with xdist's order test_go_leak started at
#: 185 s and the suite took 261 s while another worker was done at 207 s.
SLOW_FIRST = ("test_report", "test_interrupt", "test_bomb", "test_keepalive_ports_orphans",
              "test_go_leak", "test_fd_leak", "test_net", "test_link", "test_live_experiments",
              "test_agents", "test_exit_status", "test_cli", "test_live")


def _file_rank(item: pytest.Item) -> int:
    name = Path(str(item.fspath)).stem
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is of exactly one kind, so ``-m loopback`` and ``-m privileged``
    select what they say: a privileged test in a module marked loopback was both.
    The slow files go first (SLOW_FIRST; a stable sort: each file's tests keep
    their order)."""
    wrong = [f"{item.nodeid}: {sorted(kinds) or 'no kind'}" for item in items
             if len(kinds := {m.name for m in item.iter_markers()} & set(KINDS)) != 1]
    if wrong:
        raise pytest.UsageError(f"each test needs exactly one of the markers {', '.join(KINDS)}"
                                ":\n  " + "\n  ".join(wrong))
    items.sort(key=_file_rank)


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


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """Start children (:class:`tests.helpers.Child`); every one is stopped and reaped
    at the end, pass or fail."""
    spawner = Spawner()
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="session")
def experiment_all(tmp_path_factory: pytest.TempPathFactory,
                   worker_id: str) -> ExperimentAll:
    """One run for the whole session, also when pytest-xdist runs the files in
    several worker processes: the first worker to ask runs it under a file lock
    in the run's shared temporary directory and leaves it there for the others
    (the pattern pytest-xdist's documentation gives for session data)."""
    if worker_id == "master":  # no xdist (-p no:xdist or -n 0)
        return ExperimentAll.run(tmp_path_factory.mktemp("experiment-all"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "experiment-all"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        saved = shared / "run.json"
        if not saved.exists():
            run = ExperimentAll.run(shared)
            saved.write_text(json.dumps({
                "args": run.proc.args, "returncode": run.proc.returncode,
                "stdout": run.proc.stdout.decode("latin-1"),
                "stderr": run.proc.stderr.decode("latin-1")}))
        data = json.loads(saved.read_text())
    proc = subprocess.CompletedProcess(data["args"], data["returncode"],
                                       data["stdout"].encode("latin-1"),
                                       data["stderr"].encode("latin-1"))
    return ExperimentAll.decode(proc, shared / "report")


@pytest.fixture(scope="session")
def nobody_venv() -> Iterator[Path | None]:
    """nobody's venv (helpers.make_nobody_venv), made once per session and removed
    after it; None when we are not root (then we are the ordinary user)."""
    if os.geteuid() != 0:
        yield None
        return
    where = Path(tempfile.mkdtemp(prefix="nb-tcplab-", dir="/tmp"))
    try:
        why = make_nobody_venv(where)
        if why:
            pytest.skip(why)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)
