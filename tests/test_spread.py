"""The spread client (traffic/spread.py): the C100k logic at a small scale, on loopback."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from tcplab.traffic import spread
from tcplab.traffic.target import resolve


def fds(n: int) -> Any:
    """A preexec_fn: soft and hard RLIMIT_NOFILE n, as 'ulimit -n n' would."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def established_by_source(port: int) -> Counter[str]:
    """Client sockets toward ``port`` by their local address, from ss."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"dport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return Counter(line.split()[2].rsplit(":", 1)[0] for line in out.splitlines())


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.mark.loopback
def test_a_client_short_of_fds_spreads_over_processes_and_sources(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--fd-limit", "max")
    r = subprocess.run(
        [sys.executable, "-m", "tcplab", "multiplex", "--port", str(server.port),
         "--connections", "1000", "--messages", "3", "--json"],
        capture_output=True, timeout=180, stdin=subprocess.DEVNULL, preexec_fn=fds(300))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    # 300 fds less 64 spare hold 236 connections a process: 1,000 need 5.
    assert m["processes"] == 5
    assert m["sources"] == [f"127.0.0.{i}" for i in range(2, 7)]
    assert m["held"] == 1000 and m["failures"] == {}
    assert m["echoes"] == 3000 and m["verified_bytes"] == 3000 * 64
    (worker,) = m["spread"]["workers"]
    assert worker["pid"] == server.pid and worker["held"] == 1000
    assert m["spread"]["rss_growth_per_conn"] is not None


@pytest.mark.loopback
def test_every_process_holds_its_share_from_its_own_address(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--fd-limit", "max")
    target = resolve("127.0.0.1", server.port)
    seen: dict[str, Counter[str]] = {}

    def at_phase(phase: str) -> None:
        seen[phase] = established_by_source(server.port)

    r = spread.run(target, 900, 3, spread.default_sources(target, 3), messages=2,
                   server_pids=[server.pid], at_phase=at_phase)
    assert r.held == 900 and r.failures == {}
    expected = {"127.0.0.2": 300, "127.0.0.3": 300, "127.0.0.4": 300}
    assert seen["held"] == expected and seen["echoed"] == expected
    assert seen["idle"] == Counter()


@pytest.mark.loopback
def test_a_server_gone_while_held_fails_every_connection(start_server) -> None:  # type: ignore[no-untyped-def]
    """held + failed == asked: connections the server drops while they are held are
    failures, read when the run goes on (EOF or RST on a held socket)."""
    server = start_server("--fd-limit", "max")
    target = resolve("127.0.0.1", server.port)

    def at_phase(phase: str) -> None:
        if phase == "held":
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait()

    r = spread.run(target, 400, 2, spread.default_sources(target, 2), messages=2,
                   server_pids=[server.pid], at_phase=at_phase)
    assert r.held == 0
    assert sum(r.failures.values()) == 400, r.failures


@pytest.mark.loopback
def test_a_client_process_lost_counts_its_share_and_leaves_nothing(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--fd-limit", "max")
    target = resolve("127.0.0.1", server.port)
    children: list[int] = []

    def at_phase(phase: str) -> None:
        if phase == "held":  # the client processes: forks of this one, so our cmdline
            with open(f"/proc/self/task/{os.getpid()}/children") as f:
                children.extend(p for p in map(int, f.read().split())
                                if cmdline(p) == cmdline(os.getpid()))
            assert len(children) == 3
            os.kill(children[0], signal.SIGKILL)

    r = spread.run(target, 600, 3, spread.default_sources(target, 3), messages=2,
                   server_pids=[server.pid], at_phase=at_phase)
    assert r.held == 400 and r.failures == {"LOST": 200}, r
    assert any("ended without a result" in n for n in r.notes)
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}"), f"client process {pid} left behind"
    assert established_by_source(server.port) == Counter()


@pytest.mark.loopback
def test_nothing_listening_is_one_error_with_the_connect_failed_status() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [sys.executable, "-m", "tcplab", "multiplex", "--port", str(port),
         "--connections", "900", "--processes", "3"],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert f"nothing listens on 127.0.0.1:{port} (none of the 900 connections" in err
    assert "--workers 3" in err and "Traceback" not in err
