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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tcplab.errors import ConnectFailed
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tcplab.kernel.tcp_states import STATE_NAMES
from tcplab.traffic.bomb import STALL_S
from tests.helpers import USERS, run_as, run_tcplab

PORT = 8080
LOW, PORTS = 40000, 200
NARROW = {"net.ipv4.ip_local_port_range": f"{LOW} {LOW + PORTS - 1}",
          "net.ipv4.tcp_tw_reuse": "0"}
VARIANTS = ["fresh", "pool", "pool-too-small", "default-reuse", "linger0", "server-closes",
            "two-destinations", "real-link"]


def bomb_json(r: subprocess.CompletedProcess[bytes], status: int = 0) -> dict[str, Any]:
    assert r.returncode == status, r.stderr.decode(errors="replace")
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
    """100 refusals are not a port bomb: the result still comes out (it is what
    happened), and the status is the connection-failed one, with the hint."""
    port = closed_port()
    r = run_tcplab("bomb", "--port", str(port), "--count", "50", "--json")
    body = bomb_json(r, status=ConnectFailed.exit_code)
    assert body["port"] == port
    assert body["attempted"] == 50
    assert body["ok"] == 0 and body["failed"] == 50
    assert body["errors"] == {"ECONNREFUSED": 50}
    first = body["first_error"]
    assert first["name"] == "ECONNREFUSED" and first["errno"] == 111
    assert first["message"] == "Connection refused"
    assert first["after_ok"] == 0
    assert body["stopped_by"] == "count"
    err = r.stderr.decode()
    assert f"tcplab: connection refused: nothing listens on 127.0.0.1:{port}" in err
    assert f"hint: start one with 'tcplab server --port {port}'" in err
    assert "Traceback" not in err


@pytest.mark.loopback
def test_nothing_listening_text_exits_connect_failed() -> None:
    port = closed_port()
    r = run_tcplab("bomb", "--port", str(port), "--count", "20")
    assert r.returncode == ConnectFailed.exit_code, r.stderr.decode()
    assert "20 connections attempted, 0 ok, 20 failed" in r.stdout.decode()
    assert "tcplab server --port" in r.stderr.decode()


@pytest.mark.loopback
def test_connections_that_hang_are_counted_not_hidden() -> None:
    """A listener that never accepts (backlog 0: one handshake completes into its
    queue, the other SYNs are dropped): no connection is ok or failed. Each is
    counted as waiting when the time bound stops the run, and as hung, since it
    waited longer than STALL_S: attempted = ok + failed + unanswered + unconnected."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        r = run_tcplab("bomb", "--port", str(port), "--count", "4", "--workers", "4",
                       "--duration", str(STALL_S + 2), "--json")
        text = run_tcplab("bomb", "--port", str(port), "--count", "2", "--workers", "2",
                          "--duration", str(STALL_S + 1))
    body = bomb_json(r)
    assert body["stopped_by"] == "duration"
    assert body["attempted"] == 4 and body["ok"] == 0 and body["failed"] == 0
    assert body["unanswered"] + body["unconnected"] == 4
    assert body["unanswered"] >= 1  # the one in the accept queue: connected, no echo
    assert body["stalled"] == 4 and body["longest_wait_s"] >= STALL_S
    out = text.stdout.decode()
    assert text.returncode == 0, text.stderr.decode()
    assert "2 connections attempted, 0 ok, 0 failed, 2 still waiting" in out, out
    assert re.search(r"^2 still waiting when the time bound stopped the run .*: \d sent the "
                     r"request and got no echo, \d never finished connecting; .*hung", out,
                     re.M), out
    assert "no errors" not in out


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


def rounds_opened(requests: int, pool: int, cap: int) -> int:
    """New connections a capped pool opens in rounds of ``pool`` requests: the first
    round opens one per request, each later one takes the ``min(cap, pool)`` kept idle
    and opens the rest (the last round may be short)."""
    opened, idle = 0, 0
    for start in range(0, requests, pool):
        size = min(pool, requests - start)
        opened += max(0, size - idle)
        idle = min(cap, pool)
    return opened


@pytest.mark.loopback
@pytest.mark.parametrize("cap", [0, 2, 8])
def test_a_capped_pool_opens_what_its_idle_cap_cannot_keep(start_server, cap: int) -> None:  # type: ignore[no-untyped-def]
    """8 requests at a time: a cap of 2 (Go's default) keeps 2 of each round's 8
    connections, so 6 per round are new (152 for 200 requests); 0 keeps none, 8 keeps
    all. Counted by the bomb and by the server that accepted them."""
    server = start_server()
    body = bomb_json(run_tcplab("bomb", "--port", str(server.port), "--mode", "pool",
                                "--count", "200", "--pool-size", "8", "--max-idle", str(cap),
                                "--json"))
    assert body["max_idle"] == cap and body["pool_size"] == 8
    assert body["attempted"] == body["ok"] == 200 and body["failed"] == 0
    assert body["opened"] == rounds_opened(200, 8, cap) == {0: 200, 2: 152, 8: 8}[cap]
    # What the pool kept at the end, from both ends, just before it closed.
    assert body["established_before_close"] == 2 * min(cap, 8)
    totals = server.stop()
    assert totals is not None and totals["accepted"] == body["opened"]


@pytest.mark.loopback
def test_a_capped_pool_says_what_it_opened(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    r = run_tcplab("bomb", "--port", str(server.port), "--mode", "pool", "--count", "40",
                   "--max-idle", "2")
    text, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert "in pool mode (8 at a time, at most 2 kept idle): up to 40 requests" in err
    assert "pool: 40 requests attempted, 40 ok, 0 failed" in text, text
    assert ("pool of 8 with at most 2 idle: 32 new connections for 40 requests (8 took an "
            "idle one)") in text, text
    wrong = run_tcplab("bomb", "--port", str(server.port), "--max-idle", "2", "--count", "5")
    assert wrong.returncode == 2 and wrong.stdout == b""
    assert "tcplab: --max-idle is pool mode's\nhint: add --mode pool" in wrong.stderr.decode()


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


def time_wait_settled(sb: Sandbox, expected: int) -> int:
    """The clients' TIME_WAIT count once ``expected`` are there (the last connections
    may still be in FIN_WAIT2 for a moment), or what is there after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        n = len(time_wait_local_ports(sb))
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


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
    # The connections under way at the first error already held their ports: those
    # that finished after it are why ok ends above after_ok.
    assert 0 <= first["in_flight"] < body["workers"]
    assert 0 <= body["ok"] - first["after_ok"] <= first["in_flight"]
    assert body["unanswered"] == body["unconnected"] == body["stalled"] == 0
    assert body["time_wait_baseline"] == 0
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
    assert re.search(r"^TIME_WAIT peak: (199|200) sockets to port 8080 made by this run$", text,
                     re.M), text
    assert sorted(ports) == list(range(LOW, LOW + PORTS))


@pytest.mark.privileged
def test_first_error_says_how_many_were_in_flight() -> None:
    """With 32 workers the first EADDRNOTAVAIL comes while others are under way; the
    text says so, and how many of them finished ok after it."""
    with narrow_sandbox() as sb:
        r = bomb_in(sb, "--count", "300")
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    m = re.search(r"^first error at [\d.]+ s after (\d+) ok(?: \((\d+) more under way\))?: "
                  r"\[Errno 99\]", text, re.M)
    assert m, text
    before, flight = int(m[1]), int(m[2] or 0)
    if before < PORTS:
        assert flight >= PORTS - before
        assert (f"{PORTS} ok in all: {before} before the first error and {PORTS - before} "
                "after it (connections already under way, holding a port)") in text, text
    else:
        assert "ok in all" not in text


@pytest.mark.privileged
def test_time_wait_left_by_an_earlier_run_is_not_counted() -> None:
    """Pool mode right after fresh mode: the fresh run's TIME_WAIT sockets (60 s) are
    still there. They are reported as the baseline, and the pool's peak counts only
    the pool's own (issue 11: a "peak" of 5,008 for an 8-connection pool)."""
    with narrow_sandbox() as sb:
        fresh = bomb_json(bomb_in(sb, "--count", "150", "--json"))
        before = time_wait_settled(sb, 150)
        pool = bomb_json(bomb_in(sb, "--mode", "pool", "--count", "600", "--json"))
        between = time_wait_settled(sb, before + pool["pool_size"])
        text = bomb_in(sb, "--mode", "pool", "--count", "100", "--pool-size", "2")
        after = time_wait_settled(sb, between + 2)
    assert fresh["ok"] == 150 and before == 150
    assert pool["time_wait_baseline"] == before
    assert pool["ok"] == 600 and pool["failed"] == 0
    # Only the pool's own close, at the end (the last may still be closing then).
    assert 0 <= pool["time_wait_peak"] <= pool["pool_size"]
    assert between == before + pool["pool_size"]
    out = text.stdout.decode()
    assert text.returncode == 0, text.stderr.decode()
    m = re.search(r"^TIME_WAIT peak: (\d+) sockets to port 8080 made by this run "
                  r"\(([\d,]+) more were already there when it started", out, re.M)
    assert m, out
    assert int(m[1]) <= 2 and int(m[2].replace(",", "")) == between
    assert after == between + 2  # ss agrees: 150 + 8 + 2


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
def test_a_pool_too_small_runs_out_of_ports(kind: bool | None) -> None:
    """The fix undone: 600 requests, 8 at a time, 2 idle kept. The 200 ports last 33
    rounds (8 + 32 x 6 new connections); from then on each round's 2 reused
    connections succeed and its 6 new ones fail with EADDRNOTAVAIL. Every port ends
    in TIME_WAIT on the client's side (ss agrees), the 2 idle ones at the close."""
    with narrow_sandbox(kind) as sb:
        body = bomb_json(bomb_in(sb, "--mode", "pool", "--count", "600", "--max-idle", "2",
                                 "--json"))
        ports = time_wait_local_ports(sb)
    first = body["first_error"]
    assert first["errno"] == 99 and first["name"] == "EADDRNOTAVAIL"
    assert first["after_ok"] == 33 * 8  # the ports' last round done; its next 2 under way
    assert body["ok"] == 33 * 8 + (75 - 33) * 2 and body["failed"] == (75 - 33) * 6
    assert body["errors"] == {"EADDRNOTAVAIL": body["failed"]}
    assert body["opened"] == PORTS + body["failed"]
    assert body["unanswered"] == body["unconnected"] == body["stalled"] == 0
    assert sorted(ports) == list(range(LOW, LOW + PORTS))


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
    small = v["pool-too-small"]
    # The same 3,000 requests, 8 at a time, 2 idle kept: 6 new connections per round
    # until the 1,000 ports are all in TIME_WAIT, then EADDRNOTAVAIL for the new ones.
    assert small["runs"][0]["max_idle"] == body["settings"]["max_idle"] == 2
    assert small["first_error"]["errno"] == 99
    assert small["time_wait_peak"] == small["port_range"] == 1000
    assert small["ok"] + small["failed"] == 3000
    assert small["opened"] == 1000 + small["failed"]
    assert small["opened"] == rounds_opened(3000, 8, 2)  # 2,252: 8, then 6 a round
    assert "requests opened a new connection" in small["lesson"]
    reuse = v["default-reuse"]
    assert reuse["failed"] == 0 and reuse["ok"] > reuse["port_range"]
    assert v["linger0"]["failed"] == 0 and v["linger0"]["time_wait_peak"] == 0
    closes = v["server-closes"]
    assert closes["failed"] == 0
    assert closes["time_wait_end"]["client_side"] == 0
    assert closes["time_wait_end"]["server_side"] > 0
    real = v["real-link"]
    assert real["link"] == "veth" and real["tw_reuse"] == "2"
    assert real["first_error"]["errno"] == 99 and real["ok"] == 1000
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
        # real-link's sampler runs at the client's end of the net, where its TIME_WAIT is.
        timeline = v["timeline"]
        assert isinstance(timeline, list) and len(timeline) >= 2, v["name"]
        times = [row["t"] for row in timeline]
        assert all(isinstance(t, int | float) for t in times)
        assert times == sorted(times) and len(set(times)) == len(times), v["name"]
        for states in (row["states"] for row in timeline):
            assert set(states) <= set(STATE_NAMES), states
            assert all(isinstance(n, int) and n > 0 for n in states.values()), states
        assert max(row["states"].get("TIME_WAIT", 0) for row in timeline) == v["time_wait_peak"]
    for name in ("fresh", "real-link"):
        variant = by_name(body)[name]
        assert variant["timeline"][-1]["states"].get("TIME_WAIT") == 1000, name  # the plateau
        assert variant["time_wait_end"]["client_side"] == 1000, name


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
    assert fresh["timeline"][-1]["states"].get("TIME_WAIT") == 100  # the plateau
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


# --- against servers written without tcplab (--server-cmd) ----------------------------------

HERE = Path(__file__).resolve().parent
#: A stdlib socketserver echo server; its second argument is the address it binds.
ECHO = HERE / "echo_server_stdlib.py"
#: A selectors echo server on 127.0.0.1 that leaks when LEAK=true (port-bomb does not set it).
LEAKY = HERE / "leaky_server.py"
FOREIGN = {
    "loopback-only": (ECHO, []),
    "every-address": (ECHO, ["0.0.0.0"]),
    "leaky": (LEAKY, []),
}


def server_cmd(script: Path, *extra: str) -> str:
    return " ".join(shlex.quote(x) for x in (sys.executable, str(script), "{port}", *extra))


def own_copy(script: Path, tmp_path: Path) -> Path:
    """The script under this test's own path, so that "is it still running?" sees
    this test's server and not another run's of the same script."""
    copy = tmp_path / script.name
    copy.write_bytes(script.read_bytes())
    return copy


def still_running(script: Path) -> list[str]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(script).encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.privileged
@pytest.mark.parametrize("server", list(FOREIGN))
def test_experiment_against_your_own_server(server: str, tmp_path: Path) -> None:
    """Every variant ends shown or skipped with its reason; none hangs on a stray
    socket (no probe connection is made: the LISTEN socket is read from the socket
    table), and two-destinations runs only where the server accepts on 127.0.0.2.

    default-reuse (32,000 connections with --quick: 15 to 60 s against a Python
    server on this loaded machine) runs against the first server only: what it
    shows is the client's kernel reusing ports, the same whoever echoes."""
    script, extra = FOREIGN[server]
    script = own_copy(script, tmp_path)
    cmd = server_cmd(script, *extra)
    names = VARIANTS if server == "loopback-only" else [
        n for n in VARIANTS if n != "default-reuse"]
    r, body = experiment("--server-cmd", cmd, "--ports", "100", "--quick", "--json",
                         *(x for n in names for x in ("--variant", n)))
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert body is not None, r.stdout.decode()
    assert body["ok"] is True, (body["fact"], err)
    assert body["settings"]["server"] == f"your server ({cmd})"
    v = by_name(body)
    assert list(v) == names
    for variant in v.values():
        assert (variant["shown"] is True) != bool(variant["skipped"]), variant["name"]
        assert variant["lesson"] if variant["shown"] else variant["skipped"]
        assert variant["why_not"] is None
    fresh = v["fresh"]
    assert fresh["first_error"]["name"] == "EADDRNOTAVAIL"
    # Every one of the 100 ports is the bomb's own: nothing else connected.
    assert fresh["time_wait_peak"] == 100 and fresh["ok"] == 100
    assert fresh["time_wait_before"] == 0
    # The verdicts that a single stray socket used to break (TIME_WAIT 9 > 8, 1 > 0).
    assert v["pool"]["time_wait_peak"] <= v["pool"]["runs"][0]["pool_size"]
    assert v["pool"]["failed"] == 0 and v["pool"]["ok"] == 300
    assert v["linger0"]["time_wait_peak"] == 0 and v["linger0"]["ok"] == 300
    small = v["pool-too-small"]  # 300 requests: 8 + 36 x 6 + 2 = 226 new, for 100 ports
    assert small["opened"] == rounds_opened(300, 8, 2) == 100 + small["failed"]
    assert small["time_wait_peak"] == 100 and small["first_error"]["errno"] == 99
    if "default-reuse" in v:
        assert v["default-reuse"]["failed"] == 0 and v["default-reuse"]["stalled"] == 0
        assert v["default-reuse"]["ok"] > v["default-reuse"]["port_range"]
    assert "tcplab server --close-first" in v["server-closes"]["skipped"]
    two = v["two-destinations"]
    if server == "every-address":
        assert two["server_addresses"] == ["0.0.0.0"]
        first_run, second = two["runs"]
        assert first_run["first_error"]["errno"] == 99
        assert first_run["ok"] == second["ok"] == 100
        assert "ports are per destination" in two["lesson"]
    else:
        assert two["server_addresses"] == ["127.0.0.1"]
        assert two["skipped"].startswith("your server listens on 127.0.0.1 port 8080 only")
        assert "127.0.0.2" in two["skipped"] and two["runs"] == []  # no bomb ran
        assert "ports are per destination" not in body["fact"]
    assert "NOT shown" not in body["fact"]
    # The foreign server went with its namespace.
    assert still_running(script) == []


@pytest.mark.privileged
def test_experiment_text_names_skips_and_their_reasons() -> None:
    """The table and the lines under it, as a user reads them, for a server on
    127.0.0.1 only (two variants only, to keep it short)."""
    r, _ = experiment("--server-cmd", server_cmd(ECHO), "--ports", "100",
                      "--variant", "pool", "--variant", "two-destinations")
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode() + text
    assert text.startswith("experiment port-bomb: shown\n"), text
    assert re.search(r"^  two-destinations +- +- +- +- +- +- +skipped$", text, re.M), text
    assert re.search(r"^  pool +300 +0 +0 +none +[0-8] +[\d,]+ +yes$", text, re.M), text
    assert ("  two-destinations: skipped: your server listens on 127.0.0.1 port 8080 only, "
            "so nothing accepts on 127.0.0.2") in text
    assert "took 0 more" not in text


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_real_link_runs_out_of_ports_under_the_default_reuse(
        user: str, nobody_venv: Path | None) -> None:
    """Issue 14: the kernel's default tcp_tw_reuse = 2 reuses TIME_WAIT ports for
    loopback only (tcp_twsk_unique, net/ipv4/tcp_ipv4.c), so across a veth pair the
    fresh bomb fails with EADDRNOTAVAIL where default-reuse on loopback does not.
    As an ordinary user the net lives in a user namespace; where the kernel refuses
    one, the variant is skipped and says why."""
    r = run_as(user, nobody_venv, "experiment", "port-bomb", "--variant", "real-link",
                      "--ports", "100", "--json")
    err = r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, (lines, err)
    body = json.loads(lines[0])
    (real,) = body["variants"]
    if real["skip"] == "no-net":
        assert user != "root", real["skipped"]
        pytest.skip(f"as {user}: {real['skipped']}")
    assert r.returncode == 0, err
    assert real["shown"] is True and body["ok"] is True, (real["why_not"], err)
    assert real["link"] == "veth" and real["tw_reuse"] == "2"
    assert real["port_range"] == 100
    # 3 x 100 connections for 100 ports: the first 100 made, every other one refused
    # a port by connect() (no TIME_WAIT reused), all 100 ports in TIME_WAIT at the end.
    assert real["ok"] == 100 and real["failed"] == 200
    assert real["runs"][0]["errors"] == {"EADDRNOTAVAIL": 200}
    assert real["first_error"]["errno"] == 99
    assert real["runs"][0]["host"].startswith("198.1")  # the net's server, not loopback
    assert real["time_wait_end"] == {"server_side": 0, "client_side": 100}
    assert "tcp_twsk_unique" in real["lesson"]
    assert "across a veth link: 100 connections, 200 failures, 200 EADDRNOTAVAIL" in body["fact"]


@pytest.mark.privileged
def test_real_link_is_skipped_against_your_own_server() -> None:
    r, body = experiment("--server-cmd", server_cmd(ECHO), "--variant", "real-link", "--json")
    assert body is not None, r.stderr.decode(errors="replace")
    (real,) = body["variants"]
    assert real["shown"] is None and "tcplab net exec NAME server" in real["skipped"]


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
