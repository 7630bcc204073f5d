"""The README's "Exit status" table, walked: every status is what a real command returns.

One source, ``tcplab.errors.ExitStatus``; the README's table and ``tcplab --help``
must say the same. Then, for each row of the README's table, the scenarios below
set up the example's situation for real (a server, a socket holding the port, a
server that alters bytes, a full disk in a mount namespace, Ctrl-C) and run the
command named in that row's example column. A row without a scenario, or a
scenario whose command the row does not name, fails.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcplab.errors import DoctorStatus, ExitStatus
from tests.helpers import run_tcplab

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| (\d+) \| `([A-Z_]+)` \| ([^|]+) \| (.+) \|$")


def readme_table() -> list[tuple[int, str, str, str]]:
    """(status, name, meaning, example) per row of the README's "Exit status" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Exit status\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2), m.group(3).strip(), m.group(4).strip()))
    return rows


def doctor_statuses() -> str:
    return ", ".join(f"{int(s)} {s.name.lower()}" for s in DoctorStatus)


@pytest.mark.pure
def test_readme_table_enum_and_help_agree() -> None:
    rows = readme_table()
    assert [(status, name, meaning) for status, name, meaning, _ in rows] == [
        (int(s), s.name, s.meaning) for s in ExitStatus]
    assert doctor_statuses() in " ".join((ROOT / "README.md").read_text().split())
    help_text = run_tcplab("--help").stdout.decode()
    section = help_text.split("\nexit status:\n", 1)[1].split("\n  tcplab doctor", 1)[0]
    assert section.splitlines() == [f"  {int(s):<4}{s.meaning}" for s in ExitStatus], help_text
    assert doctor_statuses() in help_text


# --- the situations ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scene:
    """What a scenario hands back: the run, and text its stderr (or stdout) must hold."""

    run: subprocess.CompletedProcess[bytes]
    stderr_has: tuple[str, ...] = ()
    stdout_has: tuple[str, ...] = ()


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` without the host's privileges. Root: in a new user namespace with no
    mapping (``unshare -U``), which keeps no capability over the host's files,
    ports or network; an ordinary user: as it is."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    return ["unshare", "-U", *cmd]


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120, **kw)
    if cmd[0] == "unshare" and b"unshare failed" in r.stderr:
        pytest.skip(f"user namespaces unavailable: {r.stderr.decode().strip()}")
    return r


TCPLAB = [sys.executable, "-m", "tcplab"]


def ok_client(start_server: Any, tmp_path: Path) -> Scene:
    server = start_server()
    r = run_tcplab("client", "--port", str(server.port), "hello")
    return Scene(r, stdout_has=("hello",))


def error_report_on_a_full_disk(start_server: Any, tmp_path: Path) -> Scene:
    # A 4 KiB tmpfs in a private mount namespace: --report's check passes (the
    # directory is writable), then index.html and results.json do not fit.
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=4k tcplab-test {disk} && exec "
              + shlex.join([*TCPLAB, "experiment", "echo", "--json", "--report", f"{disk}/out"]))
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    r = run(["unshare", "-Urm", "sh", "-c", script])
    if b"mount:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    return Scene(r, stderr_has=(f"could not write the report to {disk}/out",
                                "No space left on device"),
                 stdout_has=('"experiment": "echo"',))  # the results still reach stdout


def usage_states(start_server: Any, tmp_path: Path) -> Scene:
    r = run_tcplab("states", "--bogus")
    assert r.stderr.decode().startswith("usage: tcplab states "), r.stderr.decode()
    return Scene(r, stderr_has=("unrecognized arguments: --bogus",))


def refused(*command: str) -> Callable[[Any, Path], Scene]:
    def scenario(start_server: Any, tmp_path: Path) -> Scene:
        r = run_tcplab(*command, "--port", str(free_port()), *(["hi"] if command == (
            "client",) else []))
        return Scene(r)
    return scenario


def privilege_port_80(start_server: Any, tmp_path: Path) -> Scene:
    if os.geteuid() == 0:
        # Root in a user namespace is root in name only: EACCES for real.
        if shutil.which("unshare") is None:
            pytest.skip("unshare(1) is not installed")
        cmd = ["unshare", "-Ur", *TCPLAB, "server", "--port", "80"]
    else:
        cmd = [*TCPLAB, "server", "--port", "80"]
    r = run(cmd)
    return Scene(r, stderr_has=("needs privilege", "CAP_NET_BIND_SERVICE"))


def address_in_use(*command: str) -> Callable[[Any, Path], Scene]:
    def scenario(start_server: Any, tmp_path: Path) -> Scene:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            where = ["--port", str(port)] if command == ("server",) else [
                "--listen", f"127.0.0.1:{port}"]
            r = run_tcplab(*command, *where)
        # The holder is named; other users' processes are hidden from an ordinary user.
        named = (f"pid {os.getpid()}",) if os.geteuid() == 0 else ()
        return Scene(r, stderr_has=(f"127.0.0.1:{port} is already in use", *named))
    return scenario


class _Altering(socketserver.BaseRequestHandler):
    """Echoes every byte plus one: the length is right, the content is not."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(bytes((b + 1) & 0xFF for b in data))


@contextmanager
def altering_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Altering)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def verify_failed(start_server: Any, tmp_path: Path) -> Scene:
    with altering_server() as port:
        r = run_tcplab("client", "--port", str(port), "--count", "10", "--size", "16")
    return Scene(r, stderr_has=("echo 1 of 10 differs from what was sent at byte 0",))


def limit_fd(start_server: Any, tmp_path: Path) -> Scene:
    def hard_256() -> None:  # in the child: a hard limit of 256, as `ulimit -Hn 256` sets
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    r = subprocess.run([*TCPLAB, "server", "--port", "0", "--fd-limit", "4096"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                       preexec_fn=hard_256)
    return Scene(r, stderr_has=("the hard limit is 256",))


def not_supported(start_server: Any, tmp_path: Path) -> Scene:
    if os.geteuid() == 0:
        r = run_tcplab("capture", "--interface", "lo0", "--port", "1")
        return Scene(r, stderr_has=("cannot capture on 'lo0'",))
    r = run_tcplab("experiment", "handshake")
    return Scene(r, stderr_has=("the handshake experiment needs",))


def experiment_failed(start_server: Any, tmp_path: Path) -> Scene:
    # A server command that runs but never listens: the experiment cannot start its
    # bomb (the wait for the LISTEN socket is 20 s), and says which command failed.
    r = run_tcplab("experiment", "port-bomb", "--variant", "fresh", "--ports", "10",
                   "--server-cmd", "sleep 60", timeout=120)
    if r.returncode in (ExitStatus.PRIVILEGE, ExitStatus.NOT_SUPPORTED):
        pytest.skip(f"no namespace here: {r.stderr.decode().strip()}")
    return Scene(r, stderr_has=("the server command did not listen on port 8080",
                                "sleep 60", "hint: "))


def interrupted_server(start_server: Any, tmp_path: Path) -> Scene:
    proc = subprocess.Popen([*TCPLAB, "server", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        m = re.match(rb"listening on 127\.0\.0\.1:(\d+) ", first)
        assert m is not None, first
        # One echo: the server is in its loop, its SIGINT handler in place (the
        # listening line comes just before; a Ctrl-C then is 130 too, without totals).
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=30) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)
    return Scene(r, stdout_has=("stopped: accepted 1, closed 1",))


Scenario = Callable[[Any, Path], Scene]

#: status name -> (the command the README's example names, its kind, the scenario).
SCENARIOS: dict[str, list[tuple[str, str, Scenario]]] = {
    "OK": [("tcplab client", "loopback", ok_client)],
    "ERROR": [("tcplab experiment echo --report", "privileged", error_report_on_a_full_disk)],
    "USAGE": [("tcplab states --bogus", "pure", usage_states)],
    "CONNECT_FAILED": [("tcplab client", "loopback", refused("client")),
                       ("tcplab bomb", "loopback", refused("bomb")),
                       ("tcplab multiplex", "loopback", refused("multiplex"))],
    "PRIVILEGE": [("tcplab server --port 80", "privileged", privilege_port_80)],
    "ADDRESS_IN_USE": [("tcplab server --port", "loopback", address_in_use("server")),
                       ("tcplab exporter --listen", "loopback", address_in_use("exporter"))],
    "VERIFY_FAILED": [("tcplab client --count", "loopback", verify_failed)],
    "LIMIT": [("tcplab server --fd-limit 4096", "loopback", limit_fd)],
    "NOT_SUPPORTED": [("tcplab capture --interface lo0" if os.geteuid() == 0
                       else "tcplab experiment handshake", "loopback", not_supported)],
    "EXPERIMENT_FAILED": [("tcplab experiment port-bomb --server-cmd", "privileged",
                           experiment_failed)],
    "INTERRUPTED": [("tcplab server", "loopback", interrupted_server)],
}


def _cases() -> Iterator[Any]:
    for status, name, _meaning, example in readme_table():
        for command, kind, scenario in SCENARIOS.get(name, [("", "pure", None)]):  # type: ignore[list-item]
            yield pytest.param(status, name, example, command, scenario,
                               id=f"{status}-{name}-{command.split()[1] if command else 'none'}",
                               marks=getattr(pytest.mark, kind))


@pytest.mark.parametrize(("status", "name", "example", "command", "scenario"), list(_cases()))
def test_the_readme_table_is_what_commands_return(
    status: int, name: str, example: str, command: str, scenario: Scenario | None,
    start_server: Any, tmp_path: Path,
) -> None:
    assert scenario is not None, f"no scenario for the README's status {status} ({name})"
    assert f"`{command}" in example, f"the README's example for {status} does not name {command!r}"
    scene = scenario(start_server, tmp_path)
    err = scene.run.stderr.decode(errors="replace")
    out = scene.run.stdout.decode(errors="replace")
    assert scene.run.returncode == status == ExitStatus[name], (scene.run.returncode, err)
    assert "Traceback" not in err
    for text in scene.stderr_has:
        assert text in err, (text, err)
    for text in scene.stdout_has:
        assert text in out, (text, out)


@pytest.mark.pure
def test_doctor_usage_error_is_unknown() -> None:
    r = run_tcplab("doctor", "--bogus")
    assert r.returncode == DoctorStatus.UNKNOWN == 3
    assert r.stderr.decode().startswith("usage: tcplab doctor ")


@pytest.mark.pure
def test_unknown_word_before_the_command_is_the_top_level_usage() -> None:
    r = run_tcplab("--bogus", "states")
    assert r.returncode == ExitStatus.USAGE
    assert r.stderr.decode().startswith("usage: tcplab [-h]")


@pytest.mark.loopback
def test_sigint_during_a_watch_is_interrupted() -> None:
    # `states --watch` refreshes until Ctrl-C; Ctrl-C ends it with 130 like any command.
    proc = subprocess.Popen([*TCPLAB, "states", "--watch", "--json", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"{")  # sampling: the handler is in place
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert b"Traceback" not in err
