"""C10k: tcplab multiplex against every model, and the experiment's table."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from tests.conftest import MODELS, run_tcplab


def multiplex(port: int, *args: str, preexec_fn=None) -> subprocess.CompletedProcess[bytes]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "tcplab", "multiplex", "--port", str(port), *args],
        capture_output=True, timeout=180, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn,
    )


@pytest.mark.loopback
def test_event_loop_models_hold_thousands_on_one_thread(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--fd-limit", "max")
    r = multiplex(server.port, "--connections", "3000", "--messages", "3", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["connected"] == 3000 and m["echoes"] == 9000 and m["failures"] == {}
    assert m["verified_bytes"] == 9000 * 64
    s = m["server"]
    assert s["pid"] == server.pid
    assert s["threads"] <= 2
    assert s["epoll_instances"] >= 1 and s["epoll_watches"] >= 3000
    assert s["fds"] >= 3000
    text = multiplex(server.port, "--connections", "500").stdout.decode()
    assert "1 thread, 1 epoll instance watching" in text


@pytest.mark.loopback
@pytest.mark.parametrize("model", [m for m in MODELS if m != "uvloop"])
def test_every_model_echoes_every_byte(start_server, model: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--model", model, "--fd-limit", "max")
    r = multiplex(server.port, "--connections", "300", "--messages", "4", "--size", "3000",
                  "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["echoes"] == 1200 and m["failures"] == {}
    if model == "threads":
        assert m["server"]["threads"] >= 300 and m["server"]["epoll_watches"] == 0
    else:
        assert m["server"]["threads"] <= 2 and m["server"]["epoll_watches"] >= 300


@pytest.mark.loopback
def test_client_says_how_many_fit_under_its_hard_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--fd-limit", "max")

    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    r = multiplex(server.port, "--connections", "1000", "--json", preexec_fn=low_limits)
    m = json.loads(r.stdout)
    assert "only 448 connections fit" in r.stderr.decode()
    assert "hard fd limit is 512" in r.stderr.decode()
    assert m["connected"] == 448 and m["failures"] == {}

    r = multiplex(server.port, "--connections", "400", "--json", preexec_fn=low_limits)
    assert "raised this client's soft fd limit from 256 to 464" in r.stderr.decode()
    assert json.loads(r.stdout)["connected"] == 400


@pytest.mark.loopback
def test_nothing_listening_is_explained() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = multiplex(port, "--connections", "20")
    assert r.returncode == 1
    assert b"failed: ECONNREFUSED x20: nothing listens there" in r.stdout


@pytest.mark.loopback
def test_remote_targets_are_refused() -> None:
    r = run_tcplab("multiplex", "--host", "192.0.2.9", "--connections", "1")
    assert r.returncode == 2 and b"--allow-remote" in r.stderr


@pytest.mark.privileged
def test_experiment_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = run_tcplab("experiment", "multiplex", "--connections", "100", "--connections", "300",
                   "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["experiment"] == "multiplex" and res["ok"] is True
    rows = {(v["model"], v["connections"]): v for v in res["variants"]}
    assert set(rows) == {(m, n) for m in MODELS for n in (100, 300)}
    for (model, n), v in rows.items():
        assert v["failed"] == 0 and v["echoes"] >= 50_000 // n * n * 0.99
        if model == "threads":
            assert v["threads"] >= n
        else:
            assert v["threads"] == 1 and v["epoll_watches"] >= n
