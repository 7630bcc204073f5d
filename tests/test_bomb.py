"""The port bomb and Experiment 2, as a user runs them.

On loopback (no namespace): the bomb refuses remote targets, counts refusals,
and a pool carries its requests without failures. In a private namespace with
a narrow port range and ``tcp_tw_reuse = 0``: every port ends in TIME_WAIT
(as ``ss`` confirms) and connect() fails with EADDRNOTAVAIL; pool and linger0
do not fail; bind() fails with EADDRINUSE. Then ``tcplab experiment
port-bomb`` end to end, with its own server and with a foreign one, and
``tcplab check``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tcplab.kernel.tcp_states import STATE_NAMES
from tests.conftest import run_tcplab

PORT = 8080
LOW, PORTS = 40000, 200
NARROW = {"net.ipv4.ip_local_port_range": f"{LOW} {LOW + PORTS - 1}",
          "net.ipv4.tcp_tw_reuse": "0"}
VARIANTS = ["fresh", "pool", "default-reuse", "linger0", "server-closes", "two-destinations"]


def bomb_json(r: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # --json: one object, nothing else on stdout
    body: dict[str, Any] = json.loads(lines[0])
    return body


# --- loopback, no namespace ---------------------------------------------------------------

def closed_port() -> int:
    """A port nothing listens on, outside ip_local_port_range: the bomb's own
    ephemeral ports can then never equal it (no TCP self-connect)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    candidates = [*range(max(1024, low - 1), 1023, -1), *range(65535, high, -1)]
    for port in candidates[:5000]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port outside the ephemeral range")


@pytest.mark.loopback
@pytest.mark.parametrize("host", ["192.0.2.1", "10.1.2.3"])
def test_remote_target_is_refused(host: str) -> None:
    r = run_tcplab("bomb", "--host", host, "--count", "10", "--duration", "2")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert f"refusing to send traffic to {host}" in err
    assert "--allow-remote" in err
    assert r.stdout == b""


@pytest.mark.loopback
def test_nothing_listening_every_attempt_refused() -> None:
    port = closed_port()
    body = bomb_json(run_tcplab("bomb", "--port", str(port), "--count", "50", "--json"))
    assert body["port"] == port
    assert body["attempted"] == 50
    assert body["ok"] == 0 and body["failed"] == 50
    assert body["errors"] == {"ECONNREFUSED": 50}
    first = body["first_error"]
    assert first["name"] == "ECONNREFUSED" and first["errno"] == 111
    assert first["message"] == "Connection refused"
    assert first["after_ok"] == 0
    assert body["stopped_by"] == "count"


@pytest.mark.loopback
def test_pool_carries_every_request(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    body = bomb_json(run_tcplab("bomb", "--port", str(server.port), "--mode", "pool",
                                "--count", "500", "--pool-size", "4", "--json"))
    assert body["mode"] == "pool" and body["pool_size"] == 4
    assert body["ok"] == 500 and body["failed"] == 0 and body["errors"] == {}
    assert body["first_error"] is None
    # The 4 pooled connections, seen from both ends just before they close.
    assert body["established_before_close"] == 8
    totals = server.stop()
    assert totals is not None and totals["accepted"] == 4


# --- inside a namespace: the bomb for real ------------------------------------------------

@contextmanager
def narrow_sandbox(user: bool | None = None) -> Iterator[Sandbox]:
    """A namespace with 200 ephemeral ports and tcp_tw_reuse 0, a tcplab server on 8080."""
    with Sandbox(NARROW, user=user) as sb:
        server = ServerProcess(["--port", str(PORT)], popen=sb.popen)
        try:
            server.start()
            assert server.port == PORT
            yield sb
        finally:
            server.kill()


def bomb_in(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[bytes]:
    return sb.run(sb.tcplab("bomb", *args), stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def time_wait_local_ports(sb: Sandbox) -> list[int]:
    """``ss -Htan state time-wait '( dport = :8080 )'`` inside: the clients' TIME_WAIT."""
    r = sb.run(["ss", "-Htan", "state", "time-wait", f"( dport = :{PORT} )"],
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # Columns without the state: Recv-Q Send-Q Local:Port Peer:Port
    return [int(line.split()[2].rsplit(":", 1)[1]) for line in r.stdout.splitlines()]


@pytest.fixture(params=[None, True], ids=["default-netns", "user-netns"])
def kind(request: pytest.FixtureRequest) -> bool | None:
    """The sandbox Sandbox picks for us (root: a plain netns), and the user-namespace one."""
    if request.param is None and os.geteuid() != 0:
        pytest.skip("as an ordinary user the default is the user-namespace path, run below")
    return request.param  # type: ignore[no-any-return]


@pytest.mark.privileged
def test_fresh_runs_out_of_ports(kind: bool | None) -> None:
    with narrow_sandbox(kind) as sb:
        body = bomb_json(bomb_in(sb, "--count", "600", "--json"))
        ports = time_wait_local_ports(sb)
    first = body["first_error"]
    assert first["errno"] == 99 and first["name"] == "EADDRNOTAVAIL"
    assert first["message"] == "Cannot assign requested address"
    assert first["port_range"] == PORTS
    # When the range is exhausted, in-flight connections (up to --workers 32)
    # hold ports too; the rest are finished connections, in TIME_WAIT.
    assert PORTS - body["workers"] <= first["after_ok"] <= PORTS
    assert body["attempted"] == 600
    assert body["ok"] == PORTS  # every port used once, then held for 60 s
    assert body["errors"] == {"EADDRNOTAVAIL": body["failed"]}
    assert body["failed"] == 600 - PORTS
    # The bomb's own last sample may miss sockets still closing (FIN_WAIT2).
    assert PORTS - body["workers"] <= body["time_wait_peak"] <= PORTS
    # ss agrees: 200 TIME_WAIT sockets, one on each port of the range.
    assert len(ports) == PORTS
    assert sorted(ports) == list(range(LOW, LOW + PORTS))


@pytest.mark.privileged
def test_one_worker_fails_exactly_when_the_range_is_full() -> None:
    with narrow_sandbox() as sb:
        r = bomb_in(sb, "--count", "250", "--workers", "1")
        ports = time_wait_local_ports(sb)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "fresh: 250 connections attempted, 200 ok, 50 failed" in text
    assert re.search(r"first error at [\d.]+ s after 200 ok: \[Errno 99\] EADDRNOTAVAIL: "
                     r"Cannot assign requested address; TIME_WAIT then \d+, port range 200 "
                     r"ports", text), text
    assert "errors: EADDRNOTAVAIL 50" in text
    # The last connection may still be closing when the bomb takes its last sample.
    assert re.search(r"^TIME_WAIT peak: (199|200) sockets to port 8080$", text, re.M), text
    assert sorted(ports) == list(range(LOW, LOW + PORTS))


@pytest.mark.privileged
def test_pool_mode_does_not_fail() -> None:
    with narrow_sandbox() as sb:
        body = bomb_json(bomb_in(sb, "--mode", "pool", "--count", "600", "--json"))
        ports = time_wait_local_ports(sb)
    assert body["ok"] == 600 and body["failed"] == 0 and body["errors"] == {}
    assert body["first_error"] is None
    assert body["established_before_close"] == 2 * body["pool_size"]
    assert len(ports) == body["pool_size"]  # only the pool's own close, at the end


@pytest.mark.privileged
def test_linger0_does_not_fail_and_leaves_no_time_wait() -> None:
    with narrow_sandbox() as sb:
        body = bomb_json(bomb_in(sb, "--mode", "linger0", "--count", "600", "--json"))
        ports = time_wait_local_ports(sb)
    assert body["ok"] == 600 and body["failed"] == 0 and body["errors"] == {}
    assert body["time_wait_peak"] == 0
    assert ports == []


@pytest.mark.privileged
def test_bind_mode_fails_with_eaddrinuse() -> None:
    with narrow_sandbox() as sb:
        body = bomb_json(bomb_in(sb, "--mode", "bind", "--count", "600", "--json"))
    first = body["first_error"]
    assert first["errno"] == 98 and first["name"] == "EADDRINUSE"
    assert first["message"] == "Address already in use"
    assert body["failed"] > 0 and body["errors"] == {"EADDRINUSE": body["failed"]}


# --- tcplab experiment port-bomb ------------------------------------------------------------

def experiment(*args: str) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any] | None]:
    r = run_tcplab("experiment", "port-bomb", *args, timeout=180)
    lines = r.stdout.decode().splitlines()
    body = json.loads(lines[0]) if "--json" in args and len(lines) == 1 else None
    return r, body


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in body["variants"]}


@pytest.fixture(scope="module")
def full_run() -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any] | None]:
    return experiment("--json")


@pytest.mark.privileged
def test_experiment_shows_every_variant(full_run) -> None:  # type: ignore[no-untyped-def]
    r, body = full_run
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert body is not None, r.stdout.decode()  # exactly one JSON object
    assert body["experiment"] == "port-bomb" and body["ok"] is True
    assert [v["name"] for v in body["variants"]] == VARIANTS
    assert {v["name"]: v["shown"] for v in body["variants"]} == dict.fromkeys(VARIANTS, True)
    assert body["settings"]["server"] == "tcplab server (uvloop)"
    assert "EADDRNOTAVAIL" in body["fact"]


@pytest.mark.privileged
def test_experiment_variant_figures(full_run) -> None:  # type: ignore[no-untyped-def]
    r, body = full_run
    assert body is not None, r.stderr.decode(errors="replace")
    v = by_name(body)
    fresh = v["fresh"]
    assert fresh["port_range"] == 1000
    assert fresh["first_error"]["errno"] == 99
    assert fresh["time_wait_peak"] == fresh["port_range"]
    assert fresh["ok"] == 1000
    assert v["pool"]["failed"] == 0
    reuse = v["default-reuse"]
    assert reuse["failed"] == 0 and reuse["ok"] > reuse["port_range"]
    assert v["linger0"]["failed"] == 0 and v["linger0"]["time_wait_peak"] == 0
    closes = v["server-closes"]
    assert closes["failed"] == 0
    assert closes["time_wait_end"]["client_side"] == 0
    assert closes["time_wait_end"]["server_side"] > 0
    two = v["two-destinations"]
    first_run, second = two["runs"]
    assert first_run["host"] == "127.0.0.1" and second["host"] == "127.0.0.2"
    assert first_run["first_error"]["errno"] == 99
    # Ports are per destination: the same 1,000 ports, once more, to 127.0.0.2.
    assert first_run["ok"] == 1000 and second["ok"] == 1000


@pytest.mark.privileged
def test_experiment_timelines(full_run) -> None:  # type: ignore[no-untyped-def]
    r, body = full_run
    assert body is not None, r.stderr.decode(errors="replace")
    for v in body["variants"]:
        timeline = v["timeline"]
        assert isinstance(timeline, list) and len(timeline) >= 2, v["name"]
        times = [t for t, _ in timeline]
        assert all(isinstance(t, int | float) for t in times)
        assert times == sorted(times) and len(set(times)) == len(times), v["name"]
        for _, states in timeline:
            assert set(states) <= set(STATE_NAMES), states
            assert all(isinstance(n, int) and n > 0 for n in states.values()), states
        assert max(s.get("TIME_WAIT", 0) for _, s in timeline) == v["time_wait_peak"]
    fresh = by_name(body)["fresh"]["timeline"]
    assert fresh[-1][1].get("TIME_WAIT") == 1000  # the plateau


@pytest.mark.privileged
def test_experiment_with_a_narrower_range() -> None:
    r, body = experiment("--ports", "100", "--variant", "fresh", "--json")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert body is not None
    assert body["settings"]["ports"] == 100
    [fresh] = body["variants"]
    assert fresh["name"] == "fresh" and fresh["shown"] is True
    assert fresh["port_range"] == 100
    assert fresh["first_error"]["name"] == "EADDRNOTAVAIL"
    assert fresh["ok"] == 100
    assert fresh["time_wait_peak"] == 100
    assert fresh["timeline"][-1][1].get("TIME_WAIT") == 100  # the plateau
    assert fresh["time_wait_end"] == {"server_side": 0, "client_side": 100}


@pytest.mark.loopback
def test_unknown_variant_is_a_usage_error() -> None:
    r, _ = experiment("--variant", "nope")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "unknown variant 'nope'" in err
    assert "fresh" in err and "two-destinations" in err


@pytest.mark.privileged
def test_the_widest_range_the_cli_accepts_runs() -> None:
    """--ports is documented as 10 to 28,232 (the size of the default range). The
    narrowed range starts at 40000, so from 25,537 ports on it would end above
    65535: either it runs (the range placed where it fits) or the command line
    refuses it as a usage error; never a failure blamed on namespaces."""
    r, body = experiment("--ports", "28232", "--variant", "pool", "--json")
    err = r.stderr.decode(errors="replace")
    if r.returncode == 2:
        assert "--ports" in err, err
        return
    assert r.returncode == 0, f"exit {r.returncode}: {err}"
    assert body is not None
    assert body["variants"][0]["port_range"] == 28232
    assert body["variants"][0]["failed"] == 0


ECHO_SERVER = textwrap.dedent("""\
    import socketserver
    import sys


    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            while data := self.request.recv(65536):
                self.request.sendall(data)


    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128


    Server(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
""")


@pytest.mark.privileged
def test_experiment_against_your_own_server(tmp_path: Path) -> None:
    script = tmp_path / "echo_server.py"
    script.write_text(ECHO_SERVER)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{port}}"
    r, body = experiment("--server-cmd", cmd, "--ports", "100",
                         "--variant", "fresh", "--variant", "server-closes", "--json")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert body is not None
    assert body["settings"]["server"].startswith("your server (")
    assert str(script) in body["settings"]["server"]
    v = by_name(body)
    assert v["fresh"]["first_error"]["name"] == "EADDRNOTAVAIL"
    assert v["fresh"]["shown"] is True
    # Every port ended in TIME_WAIT: the bomb's, plus the one of the experiment's
    # own readiness probe (a connection to {port} that closed first).
    assert v["fresh"]["time_wait_peak"] == 100
    assert v["fresh"]["ok"] == 100 - 1
    assert v["server-closes"]["skipped"]
    assert v["server-closes"]["shown"] is None
    # The foreign server went with its namespace.
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert str(script).encode() not in f.read()
        except OSError:
            continue


# --- tcplab check ----------------------------------------------------------------------------

@pytest.mark.privileged
def test_check_reports_namespaces_and_sock_diag() -> None:
    r = run_tcplab("check", "--json")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    body = json.loads(r.stdout)
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["private network namespace"]["ok"] is True
    assert checks["NETLINK_SOCK_DIAG"]["ok"] is True
    assert body["ok"] is True
