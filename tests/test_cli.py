"""The command line as a user meets it: exit codes, messages, --json, signals."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcplab.errors import ExitStatus
from tests.helpers import ExperimentAll, free_port, run_tcplab


@pytest.mark.loopback
def test_version_and_help_teach() -> None:
    r = run_tcplab("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("tcplab ")
    r = run_tcplab("--help")
    assert r.returncode == 0
    for command in ("server", "client", "experiment"):
        assert command in r.stdout.decode()
    help_text = run_tcplab("server", "--help").stdout.decode()
    assert "Go, since 1.19" in help_text and "examples:" in help_text
    assert "LEAK=true" in help_text
    assert "examples:" in run_tcplab("client", "--help").stdout.decode()


@pytest.mark.loopback
def test_python_m_and_console_script_agree() -> None:
    script = shutil.which("tcplab", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the tcplab console script is not installed next to this python")
    out = subprocess.run([script, "--version"], capture_output=True, check=True).stdout
    assert out == run_tcplab("--version").stdout


#: Run ``tcplab ARGS`` in-process in a fresh interpreter, then list which of the
#: modules named after it are loaded.
LOADED = """
import sys
from tcplab.cli.main import main
rc = main(sys.argv[1:])
watched = ("dataclasses", "tcplab.kernel.records")
print("LOADED", rc, *sorted(m for m in watched if m in sys.modules))
"""


@pytest.mark.loopback
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_counting_states_never_imports_dataclasses(json_flag: list[str]) -> None:
    """``tcplab states`` counts in the decode loop and builds no record, so it never
    imports dataclasses or the records module: measured with ``python -X importtime``
    on this machine, they are about 10 ms and 16 ms (cumulative) of a ~90 ms run, and
    the table took 105 ms against 86 ms (medians of 40 runs, loaded) while
    report/observe.py imported TcpSocket at module level."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # sockets for the loop to count
            r = subprocess.run(
                [sys.executable, "-c", LOADED, "states", "--port", str(port), *json_flag],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    last = r.stdout.splitlines()[-1].split()
    assert last[:2] == ["LOADED", "0"], r.stdout + r.stderr
    assert last[2:] == [], f"tcplab states imported {last[2:]}"
    assert ("ESTABLISHED" in r.stdout) and ("LISTEN" in r.stdout)


@pytest.mark.loopback
def test_port_in_use_names_the_holder() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_tcplab("server", "--port", str(port))
    err = r.stderr.decode()
    assert r.returncode == 5
    assert f"127.0.0.1:{port} is already in use" in err
    if os.geteuid() == 0:
        assert f"pid {os.getpid()}" in err
    assert "Traceback" not in err


@pytest.mark.loopback
def test_debug_shows_the_traceback() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_tcplab("server", "--port", str(port), "--debug")
    assert r.returncode == 5 and "Traceback" in r.stderr.decode()


@pytest.mark.loopback
def test_privileged_port_says_which_privilege() -> None:
    if os.geteuid() == 0:
        # Root on the host may bind port 80; inside an unprivileged user
        # namespace it is root in name only and gets EACCES for real.
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("unshare(1) is not installed")
        cmd = [unshare, "-Ur", sys.executable, "-m", "tcplab", "server", "--port", "80"]
    else:
        cmd = [sys.executable, "-m", "tcplab", "server", "--port", "80"]
    r = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    if b"unshare failed" in r.stderr:
        pytest.skip(f"user namespaces unavailable: {r.stderr.decode().strip()}")
    err = r.stderr.decode()
    assert r.returncode == 4, err
    assert "needs privilege" in err and "CAP_NET_BIND_SERVICE" in err


@pytest.mark.loopback
def test_invalid_host_and_bad_limits_are_clear() -> None:
    r = run_tcplab("server", "--host", "no-such-host.invalid", "--port", "0")
    assert r.returncode == 2 and b"invalid host 'no-such-host.invalid'" in r.stderr
    r = run_tcplab("server", "--host", "192.0.2.77", "--port", "0")
    assert r.returncode == 2 and b"no interface has that address" in r.stderr
    r = run_tcplab("server", "--port", "0", "--fd-limit", "99999999")
    assert r.returncode == 7 and b"hard limit" in r.stderr
    r = run_tcplab("server", "--port", "0", "--fd-limit", "lots")
    assert r.returncode == 2 and b"'max'" in r.stderr
    r = run_tcplab("server", "--port", "70000")
    assert r.returncode == 2 and b"not a port" in r.stderr


@pytest.mark.loopback
def test_client_refused_says_nothing_listens() -> None:
    port = free_port()
    r = run_tcplab("client", "--port", str(port), "hi")
    assert r.returncode == 3
    assert f"connection refused: nothing listens on 127.0.0.1:{port}".encode() in r.stderr
    assert b"Traceback" not in r.stderr


@pytest.mark.loopback
def test_client_refuses_remote_targets() -> None:
    r = run_tcplab("client", "--host", "192.0.2.1", "hi")
    assert r.returncode == 2 and b"--allow-remote" in r.stderr


@pytest.mark.loopback
def test_client_messages_and_json(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    port = str(server.port)
    r = run_tcplab("client", "--port", port, "hello", "wörld")
    assert r.returncode == 0
    assert r.stdout.decode().splitlines() == ["hello", "wörld"]
    r = run_tcplab("client", "--port", port, "--json", "one", "two")
    objs = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [o["echo"] for o in objs] == ["one", "two"]
    assert all(o["schema"] == 1 for o in objs)


@pytest.mark.loopback
def test_client_streams_stdin_byte_exact(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    blob = os.urandom(3 << 20) + bytes(range(256))
    r = run_tcplab("client", "--port", str(server.port), input=blob)
    assert r.returncode == 0, r.stderr
    assert r.stdout == blob


@pytest.mark.loopback
def test_client_without_stdin(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    r = subprocess.run(
        [sys.executable, "-m", "tcplab", "client", "--port", str(server.port)],
        capture_output=True, timeout=60, preexec_fn=lambda: os.close(0),
    )
    assert r.returncode == 0, r.stderr
    assert b"nothing to send" in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.loopback
def test_client_count_json_is_one_object(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    r = run_tcplab("client", "--port", str(server.port), "--count", "200", "--size", "512",
                   "--json")
    assert r.returncode == 0
    report = json.loads(r.stdout)  # the whole of stdout is one object
    assert report["schema"] == 1
    assert report["count"] == 200 and report["verified_bytes"] == 200 * 512
    assert 0 < report["rtt_min_us"] <= report["rtt_p50_us"] <= report["rtt_p99_us"] \
        <= report["rtt_max_us"]


@pytest.mark.loopback
def test_server_first_line_json_stats_and_sigint_totals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tcplab", "server", "--port", "0", "--stats", "0.2"],
            stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        try:
            # The first line reaches the file while the server still runs:
            # lines are flushed even when stdout is not a terminal.
            deadline = time.monotonic() + 20
            while b"\n" not in log.read_bytes():
                assert time.monotonic() < deadline, "no listening line"
                time.sleep(0.05)
            first = log.read_text().splitlines()[0]
            assert first.startswith("listening on 127.0.0.1:")
            assert f"pid {proc.pid}" in first and "leak off" in first and "fd limit" in first
            port = int(first.split(":")[1].split()[0])
            assert run_tcplab("client", "--port", str(port), "abc").returncode == 0
            while "accepted 1" not in log.read_text():
                assert time.monotonic() < deadline, "no stats line"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 130  # Ctrl-C: the totals, then 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "stopped: accepted 1, closed 1" in text
    assert proc.stderr is not None
    with proc.stderr:
        assert b"Traceback" not in proc.stderr.read()


@pytest.mark.loopback
def test_server_json_lines(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--stats", "0.2")
    assert server.info["schema"] == 1 and server.info["event"] == "listening"
    assert server.info["model"] == "uvloop" and server.info["pid"] == server.pid
    time.sleep(0.5)
    totals = server.stop()
    assert totals is not None and totals["schema"] == 1
    assert any(e.get("event") == "stats" for e in server.events)


@pytest.mark.privileged  # `experiment all` runs namespaces (about 40 s of them)
def test_experiment_all_runs_the_echo_demo(experiment_all: ExperimentAll) -> None:
    r = experiment_all.proc
    assert r.returncode == 0, experiment_all.stderr[-4000:]
    assert experiment_all.stray == [], "stdout of --json carries JSON objects only"
    echo = experiment_all.by_name["echo"]
    assert echo["ok"] is True and echo["facts"]["stream_identical"] is True
    assert echo["facts"]["server_totals"]["bytes_echoed"] == echo["facts"]["client_bytes"]


@pytest.mark.loopback
def test_client_timeout_when_nothing_echoes() -> None:
    # A listener that never accepts: the kernel completes the handshake, but
    # no echo ever comes.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        r = run_tcplab("client", "--port", str(mute.getsockname()[1]), "--timeout", "0.5", "hi")
    assert r.returncode == 3
    assert b"timed out after 0.5 s waiting for the echo (0 of 2 bytes back)" in r.stderr


@pytest.mark.loopback
def test_ipv6_loopback(start_server) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        server = start_server("--host", "::1")
    except Exception as exc:  # e.g. IPv6 disabled in this namespace
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert server.info["host"] == "::1"
    r = run_tcplab("client", "--host", "::1", "--port", str(server.port), "six")
    assert r.returncode == 0 and r.stdout == b"six\n"


@pytest.mark.loopback
def test_keepalive_timer_on_accepted_sockets(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--keepalive", "7")
    with socket.create_connection(("127.0.0.1", server.port)) as c:
        c.sendall(b"k")
        assert c.recv(1) == b"k"
        out = subprocess.run(
            ["ss", "-Htano", "state", "established", f"( sport = :{server.port} )"],
            capture_output=True, text=True, check=True,
        ).stdout
    assert "timer:(keepalive," in out, out


@pytest.mark.loopback
def test_interactive_prompt_on_a_terminal(start_server) -> None:  # type: ignore[no-untyped-def]
    import pty

    server = start_server()
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin is a terminal
        os.execv(sys.executable, [sys.executable, "-m", "tcplab", "client",
                                  "--port", str(server.port)])
    seen = b""
    try:
        os.write(fd, b"over the pty\n")
        deadline = time.monotonic() + 20
        while b"over the pty    (" not in seen.replace(b"\r", b""):
            assert time.monotonic() < deadline, seen
            seen += os.read(fd, 4096)
        os.write(fd, b"\x04")  # Ctrl-D ends the session
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"> " in seen and os.waitstatus_to_exitcode(status) == 0


@pytest.mark.loopback
def test_not_linux_says_so(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from tcplab.cli import main

    monkeypatch.setattr(sys, "platform", "darwin")
    assert main.main(["--version"]) == 8
    assert "tcplab needs Linux" in capsys.readouterr().err


# --- experiment --report DIR: bad input at once -----------------------------------------------

def all_with_report(directory: Path) -> list[str]:
    return [sys.executable, "-m", "tcplab", "experiment", "all", "--report", str(directory)]


def report_dir_refused(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``experiment all --report DIR``: refused before any experiment runs (the
    timeout is far below the minutes `all` takes, so a late refusal fails here)."""
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    if b"unshare failed" in r.stderr:
        pytest.skip(f"user namespaces unavailable: {r.stderr.decode().strip()}")
    err = r.stderr.decode()
    assert "running experiment" not in err and not r.stdout, err
    assert "Traceback" not in err and "internal error" not in err, err
    return r


@pytest.mark.loopback
def test_report_dir_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "report.html"
    a_file.write_text("mine")
    r = report_dir_refused(all_with_report(a_file))
    assert r.returncode == ExitStatus.USAGE
    assert f"{a_file} is a file, not a directory" in r.stderr.decode()
    assert a_file.read_text() == "mine"


@pytest.mark.loopback
def test_report_dir_whose_parent_is_missing(tmp_path: Path) -> None:
    r = report_dir_refused(all_with_report(tmp_path / "no" / "such" / "out"))
    assert r.returncode == ExitStatus.USAGE
    assert f"the parent directory {tmp_path / 'no' / 'such'} does not exist" in r.stderr.decode()
    assert not (tmp_path / "no").exists()


@pytest.mark.loopback
def test_report_dir_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # Root writes anywhere; in a user namespace with no mapping (unshare -U) it keeps
    # no capability over the host's files, and mode 555 holds for it too.
    prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
    if prefix and shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    try:
        r = report_dir_refused([*prefix, *all_with_report(locked / "out")])
    finally:
        locked.chmod(0o755)
    assert r.returncode == ExitStatus.PRIVILEGE
    assert f"{locked} is not writable by this user" in r.stderr.decode()


@pytest.mark.privileged
def test_report_dir_on_a_read_only_file_system(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"mount -t tmpfs -o ro tcplab-test {ro} && exec {shlex.join(all_with_report(ro))}"
    r = report_dir_refused(["unshare", "-Urm", "sh", "-c", script])
    if b"mount:" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    assert r.returncode == ExitStatus.USAGE
    assert f"{ro} is on a read-only file system" in r.stderr.decode()
