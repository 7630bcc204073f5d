"""The test suite's own rules.

- Test files share helpers through tests/helpers.py only: none imports from
  ``conftest`` or from another test file (conftest itself may import helpers).
- Every server model in ``tcplab.traffic.models`` is in the conformance suite:
  a fifth model cannot escape it.
- ``--server-cmd`` (a user's own server against the conformance suite) works:
  its machinery runs here on tests/echo_server_stdlib.py, so it cannot rot while
  the default suite skips the ``server_cmd`` tests.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

import tcplab.traffic
from tcplab.traffic.models import MODELS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONFORMANCE = TESTS / "test_conformance.py"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module ``path`` imports, also inside functions;
    ``from tests import x`` counts as ``tests.x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}".replace("..", "."))
                    for alias in node.names]
    return out


def is_test_module(name: str) -> bool:
    """conftest, or a test file, however it is named (tests.test_x, test_x, .test_x)."""
    last = name.rsplit(".", 1)[-1]
    return last == "conftest" or last.startswith("test_")


@pytest.mark.pure
def test_no_test_file_imports_conftest_or_another_test_file() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "helpers.py" in files and TESTS / "conftest.py" in files
    wrong = [f"{path.relative_to(ROOT)}:{line}: imports {name}"
             for path in files for line, name in imported_modules(path)
             if is_test_module(name)]
    assert wrong == [], "shared helpers belong in tests/helpers.py:\n" + "\n".join(wrong)


@pytest.mark.pure
def test_the_import_rule_sees_every_spelling(tmp_path: Path) -> None:
    """The check above on files that break the rule in each way it can be broken."""
    for source in ("from tests.conftest import run_tcplab", "import tests.test_trace",
                   "from tests import conftest", "from conftest import MODELS",
                   "from .test_trace import Child", "def f():\n    import test_trace\n"):
        bad = tmp_path / "test_bad.py"
        bad.write_text(source + "\n")
        assert any(is_test_module(name) for _line, name in imported_modules(bad)), source
    fine = tmp_path / "test_fine.py"
    fine.write_text("from tests.helpers import run_tcplab\nimport tcplab.traffic.models\n")
    assert not any(is_test_module(name) for _line, name in imported_modules(fine))


@pytest.mark.pure
def test_every_model_module_is_a_model() -> None:
    """A model is a module ``tcplab.traffic.echo_NAME`` (traffic/server.py imports it by
    that name): each one is in MODELS, which the CLI and the conformance suite take."""
    modules = {m.name[len("echo_"):] for m in pkgutil.iter_modules(tcplab.traffic.__path__)
               if m.name.startswith("echo_")}
    assert modules == set(MODELS)


@pytest.mark.loopback
def test_every_model_is_in_the_conformance_suite() -> None:
    """Collected as pytest collects it: every conformance test runs on every model."""
    r = subprocess.run(
        [sys.executable, "-m", "pytest", str(CONFORMANCE), "--collect-only", "-q",
         "-n", "0", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    params: dict[str, set[str]] = {}
    for m in re.finditer(r"::(test_\w+)\[([^\]]+)\]", r.stdout):
        params.setdefault(m[1], set()).update(m[2].split("-"))
    tree = ast.parse(CONFORMANCE.read_text())
    functions = {node.name for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    assert functions and set(params) == functions
    missing = {name: sorted({*MODELS, "server_cmd"} - ids) for name, ids in params.items()
               if not {*MODELS, "server_cmd"} <= ids}
    assert missing == {}, "tests that skip a model (or --server-cmd)"


#: What tests/echo_server_stdlib.py (socketserver, a thread per connection) gets.
STDLIB_PASSES = {
    "test_small_text_messages_round_trip", "test_binary_data", "test_large_payload[1MiB]",
    "test_large_payload[8MiB]", "test_500_concurrent_clients", "test_half_close_small",
    "test_half_close_larger_than_socket_buffers", "test_client_that_never_reads",
    "test_abrupt_reset", "test_without_leak_no_close_wait",
}
#: The tests of tcplab server's own options and counters: not asked of a user's server.
STDLIB_SKIPS = {
    "test_stop_while_a_client_never_reads": "totals at a stop",
    "test_leak_mode_leaves_close_wait": "--leak",
    "test_leak_env_variable": "LEAK=true",
    "test_close_first_time_wait_on_server": "--close-first",
}


@pytest.mark.loopback
def test_server_cmd_on_the_stdlib_echo_server(tmp_path: Path) -> None:
    """``pytest tests/test_conformance.py --server-cmd CMD`` as a user runs it, with a
    server written without tcplab: it passes what it should, the tests of tcplab
    server's own options are skipped with their reason, and no process of it is left."""
    mark = f"tcplab-conformance-{os.getpid()}-{tmp_path.name}"
    xml = tmp_path / "results.xml"
    command = shlex.join([sys.executable, str(TESTS / "echo_server_stdlib.py")]) + " {port}"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", str(CONFORMANCE), "--server-cmd", command,
         "-n", "0", "-p", "no:cacheprovider", "-q", f"--junitxml={xml}"],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
        env={**os.environ, "TCPLAB_TEST_MARK": mark})
    outcomes: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.attrib["name"].replace("server_cmd-", "").replace("[server_cmd]", "")
        found = [child for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[name] = (found[0].tag + ": " + found[0].attrib.get("message", "")
                          if found else "passed")
    assert {n: o for n, o in outcomes.items() if o == "passed"}.keys() == STDLIB_PASSES, (
        r.stdout[-4000:])
    skipped = {n: o for n, o in outcomes.items() if o != "passed"}
    assert skipped.keys() == STDLIB_SKIPS.keys(), r.stdout[-4000:]
    for name, what in STDLIB_SKIPS.items():
        assert skipped[name].startswith("skipped:") and what in skipped[name], skipped[name]
    assert r.returncode == 0, r.stdout[-4000:]
    assert left_running(mark) == [], "--server-cmd's server was left running"


def left_running(mark: str) -> list[str]:
    """Processes that carry ``mark`` in their environment, but for the test run's own."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("TCPLAB_TEST_MARK") == mark:
                found.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
