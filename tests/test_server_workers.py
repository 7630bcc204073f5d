"""``tcplab server --workers K``: a supervisor and K worker processes, on loopback.

Each test starts a real server with real worker processes and checks, from
outside, what a user would: the listening line, the listeners in the socket
table (sock_diag), the processes in /proc, the echo of every connection, the
per-worker and summed totals, the exit status, and that no worker is left
behind after SIGTERM, SIGINT (once and twice) or a worker's SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tcplab.experiments.children import ServerProcess
from tcplab.observe.owners import listening_processes
from tcplab.observe.sockets import SocketTable

from .helpers import tcplab

pytestmark = pytest.mark.loopback

CONNECTIONS = 600


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), None if no such process:
    with the pid it names one process, also after the pid is used again."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def left_behind(born: dict[int, int | None]) -> list[int]:
    """The pids of ``born`` (pid -> start time) that still run (zombies included)."""
    return [pid for pid, t in born.items() if t is not None and start_time(pid) == t]


def echo_connections(port: int, n: int = CONNECTIONS) -> None:
    """``n`` connections one after another, each with one echo checked byte for byte."""
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            payload = f"conn {i:04d} ".encode() * 4
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(4096)
                assert chunk, f"connection {i}: EOF after {len(got)} bytes"
                got += chunk
            assert got == payload, i


@pytest.fixture
def workers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()  # the supervisor; its workers die with it (PR_SET_PDEATHSIG)


def start(started: list[ServerProcess], *args: str, **kwargs: object) -> ServerProcess:
    server = ServerProcess(args, **kwargs)  # type: ignore[arg-type]
    started.append(server)
    server.start()
    return server


def worker_pids(server: ServerProcess) -> dict[int, int | None]:
    return {w.pid: start_time(w.pid) for w in server.listening.workers}


def test_reuseport_spreads_connections_over_three_workers(workers) -> None:
    server = start(workers, "--workers", "3", "--listener", "reuseport")
    info = server.listening
    assert info.listener == "reuseport" and info.pid == server.pid
    assert [w.index for w in info.workers] == [0, 1, 2]
    pids = [w.pid for w in info.workers]
    assert len(set(pids)) == 3 and server.pid not in pids
    for w in info.workers:
        assert start_time(w.pid) is not None and parent_of(w.pid) == server.pid
        assert w.rss_idle > 0 and w.fds_idle > 0
    born = worker_pids(server)
    with SocketTable() as table:
        assert len(table.listeners(server.port)) == 3  # the reservation is closed
    assert sorted(o.pid for o in listening_processes(server.port)) == sorted(pids)

    echo_connections(server.port)
    totals = server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert totals is not None and totals["accepted"] == CONNECTIONS
    per = server.worker_totals
    assert [t.pid for t in per] == pids
    # Each worker gets some: none of 600 for one of 3 has chance 3 * (2/3)**600.
    assert all(t.accepted > 0 for t in per), per
    assert sum(t.accepted for t in per) == CONNECTIONS
    assert sum(t.bytes_echoed for t in per) == totals["bytes_echoed"]
    assert [w["pid"] for w in totals["workers"]] == pids
    assert left_behind(born) == []


def test_shared_listener_sums_to_all_connections(workers) -> None:
    server = start(workers, "--workers", "3", "--listener", "shared", "--model", "epoll")
    assert server.listening.listener == "shared"
    born = worker_pids(server)
    with SocketTable() as table:
        assert len(table.listeners(server.port)) == 1  # one socket, held by all three
    # ... and every holder is named, not the first found (tcplab multiplex reads them all)
    assert sorted(o.pid for o in listening_processes(server.port)) == sorted(born)
    echo_connections(server.port)
    totals = server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    assert totals is not None and totals["accepted"] == CONNECTIONS
    assert sum(t.accepted for t in server.worker_totals) == CONNECTIONS
    assert left_behind(born) == []


@pytest.mark.parametrize(("times", "group"), [(1, False), (2, False), (1, True), (2, True)])
def test_sigint_exits_130_and_leaves_no_worker(workers, times: int, group: bool) -> None:
    """SIGINT to the supervisor, or to its process group as a terminal's Ctrl-C
    sends it (the workers have groups of their own), once and twice."""
    server = start(workers, "--workers", "3")
    born = worker_pids(server)
    assert server.proc is not None
    for _ in range(times):  # the second one comes during the stop
        if group:
            os.killpg(server.pid, signal.SIGINT)  # spawn made it a group leader
        else:
            server.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    assert server.proc.wait(timeout=30) == 130
    assert left_behind(born) == []
    server.stop()
    assert len(server.worker_totals) == 3, server.log


def test_a_killed_worker_stops_the_server(workers) -> None:
    server = start(workers, "--workers", "3")
    born = worker_pids(server)
    victim = server.listening.workers[1]
    os.kill(victim.pid, signal.SIGKILL)
    assert server.proc is not None
    assert server.proc.wait(timeout=30) == 1
    server.stop()
    errors = [line for _, line in server.log if line.startswith("tcplab: ")]
    assert errors == [f"tcplab: worker 1 (pid {victim.pid}) killed by signal 9 (SIGKILL) "
                      "while serving; stopped the other 2 workers"], server.log
    assert left_behind(born) == []
    assert [t.index for t in server.worker_totals] == [0, 2]


def test_text_output_names_workers_and_draws_their_accepts() -> None:
    proc = subprocess.Popen(tcplab("server", "--port", "0", "--workers", "2",
                                   "--listener", "shared"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, process_group=0)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        second = proc.stdout.readline().decode()
        port = int(first.split(" (")[0].rsplit(":", 1)[1])
        assert "supervisor pid" in first and second.startswith("2 workers, shared listener: 0 pid ")
        echo_connections(port, 20)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, err
    bars = [line for line in lines if line.startswith("worker ")]
    assert len(bars) == 2 and "#" in "".join(bars), lines
    assert lines[-1].startswith("stopped: accepted 20,"), lines


def test_one_worker_is_the_single_process_server(workers) -> None:
    server = start(workers, "--workers", "1")
    assert server.listening.listener == "single" and server.listening.workers == ()
    totals = server.stop()
    assert totals is not None and "workers" not in totals
    assert server.worker_totals == []


def test_popen_kwargs_reach_the_child(workers, tmp_path) -> None:
    server = start(workers, "--workers", "2", popen_kwargs={"cwd": str(tmp_path)})
    assert os.readlink(f"/proc/{server.pid}/cwd") == str(tmp_path)
    assert json.loads(json.dumps(server.info))["workers"][1]["index"] == 1
