"""``tcplab experiment NAME --link veth``: the two ends in a temporary tcplab net.

As a user runs them (``tcplab experiment ... --json``), as root and as nobody
(a user+net namespace through nobody's venv). The figures checked are the ones
the issue names: a delayed link's round trip in the echo's p50 and in the
handshake's SYN to SYN-ACK, within 10 %; and that a SIGKILLed experiment leaves
no net behind (Ctrl-C is tests/test_interrupt.py's cases echo-veth and
handshake-veth).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tcplab.errors import ExitStatus
from tcplab.net import registry
from tests.helpers import (
    USERS,
    assert_nothing_left,
    one_json,
    run_as,
    run_tcplab,
    tcplab,
    wait_for,
)

GUARD = 300  # a hang guard for one experiment, not a time limit
DELAY_MS = 25  # one way: a 50 ms round trip


def within(got: float, want: float, share: float = 0.10) -> bool:
    return abs(got - want) <= share * want


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_echo_across_a_delayed_veth_link_measures_its_round_trip(
        user: str, nobody_venv: Path | None) -> None:
    r = run_as(user, nobody_venv, "experiment", "echo", "--quick", "--link", "veth",
               "--delay", str(DELAY_MS), "--json", timeout=GUARD)
    if r.returncode in (ExitStatus.PRIVILEGE, ExitStatus.NOT_SUPPORTED) and user != "root":
        pytest.skip(r.stderr.decode().strip())
    body = one_json(r, shown=True)
    link = body["link"]
    assert link["kind"] == "veth" and link["mtu"] == 1500
    assert link["server"].startswith("198.") and link["client"].startswith("198.")
    assert "delay" in link["mechanisms"]  # which mechanism shaped it, said
    p50_ms = body["facts"]["small"]["rtt_p50_us"] / 1000
    assert within(p50_ms, 2 * DELAY_MS), f"p50 {p50_ms} ms on a {2 * DELAY_MS} ms link"
    assert body["facts"]["stream_identical"]


@pytest.mark.privileged
def test_echo_on_loopback_says_so_and_refuses_shaping_without_veth() -> None:
    body = one_json(run_tcplab("experiment", "echo", "--quick", "--json", timeout=GUARD),
                    shown=True)
    assert body["link"]["kind"] == "loopback"
    r = run_tcplab("experiment", "echo", "--delay", "10")
    assert r.returncode == 2 and b"--link veth" in r.stderr and b"Traceback" not in r.stderr
    r = run_tcplab("experiment", "echo", "--link", "veth", "--loss", "150")
    assert r.returncode == 2 and b"Traceback" not in r.stderr


@pytest.mark.privileged
def test_every_experiment_takes_link_veth_and_records_its_link() -> None:
    """Each experiment's run() takes the link, and its Result names it (a loopback
    run says loopback: scripts can tell it from one that did not say)."""
    import inspect

    from tcplab.cli.experiment import EXPERIMENTS, ON_ITS_OWN
    from tcplab.experiments.result import MODULES

    assert set(MODULES) == {*EXPERIMENTS, *ON_ITS_OWN}
    for name, module in MODULES.items():
        run = __import__(f"tcplab.experiments.{module}", fromlist=["run"]).run
        assert "link" in inspect.signature(run).parameters, name


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="handshake needs root (tracefs, AF_PACKET)")
def test_handshake_across_a_delayed_link_shows_the_round_trip_in_its_timeline() -> None:
    body = one_json(run_tcplab("experiment", "handshake", "--quick", "--link", "veth",
                               "--delay", str(DELAY_MS), "--json", timeout=GUARD), shown=True)
    assert body["link"]["kind"] == "veth"
    rtt = body["facts"]["syn_rtt_ms"]
    assert within(rtt, 2 * DELAY_MS), f"SYN to SYN-ACK {rtt} ms on a {2 * DELAY_MS} ms link"
    assert any("SYN to SYN-ACK" in e["what"] for e in body["events"])
    # each packet was seen once, at the client's veth: 2 SYN, 2 SYN-ACK
    assert body["facts"]["syn"] == 2 and body["facts"]["syn_ack"] == 2
    # Only the choreography's own socket calls: entering each end's namespace (agents/
    # ends.py) opens nothing once it has begun (it once showed 18 close() before the
    # first socket(): libc being found, namespace files opened and closed).
    calls = [e["what"].split()[1] for e in body["events"] if e["what"].startswith("syscall")]
    assert calls[0].startswith("socket(") and calls.count("close(fd=3)") <= 1, calls
    loop = one_json(run_tcplab("experiment", "handshake", "--quick", "--json", timeout=GUARD),
                    shown=True)
    assert body["facts"]["syscalls"] == loop["facts"]["syscalls"]


@pytest.mark.privileged
def test_a_sigkilled_experiment_leaves_no_net() -> None:
    """kill -9 of ``experiment echo --link veth``: the kernel kills its net's holder
    and children (PR_SET_PDEATHSIG), the pins sweep their namespaces."""
    proc = subprocess.Popen(tcplab("experiment", "echo", "--link", "veth", "--delay", "50",
                                   "--json"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    name = f"echo-{proc.pid}"[:24]
    try:
        net = wait_for(lambda: registry.find(name), f"net {name} made", timeout=GUARD)
        # the server runs in the server's namespace: a process besides the pin
        wait_for(lambda: len(registry.pids_in({net.server.netns})) > 1, "the server started",
                 timeout=GUARD)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                    .read_text().split()]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=GUARD) == -signal.SIGKILL
        assert_nothing_left(net)
        # the holder removed its state file itself (`net show` would sweep a stale one)
        assert not registry.state_path(name).exists()
        wait_for(lambda: not [c for c in children if registry.start_time(c) is not None],
                 "the experiment's children gone")
        show = json.loads(run_tcplab("net", "show", "--json").stdout or b"{}")
        assert name not in json.dumps(show)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.privileged
def test_port_bomb_across_the_link_runs_out_of_ports_and_skips_loopback_lessons() -> None:
    r = run_tcplab("experiment", "port-bomb", "--quick", "--ports", "100", "--link", "veth",
                   "--variant", "fresh", "--variant", "default-reuse",
                   "--variant", "two-destinations", "--json", timeout=GUARD)
    body = one_json(r, shown=True)
    assert body["link"]["kind"] == "veth"
    v = {x["name"]: x for x in body["variants"]}
    fresh = v["fresh"]
    assert fresh["link"] == "veth" and fresh["first_error"]["errno"] == 99
    assert fresh["time_wait_end"]["client_side"] == fresh["port_range"] == 100
    assert max(row["states"].get("TIME_WAIT", 0) for row in fresh["timeline"]) == 100
    assert "loopback only" in v["default-reuse"]["skipped"]
    assert "one IPv4 address" in v["two-destinations"]["skipped"]


@pytest.mark.privileged
@pytest.mark.parametrize("name", ["half-close", "restart", "reset", "multiplex"])
def test_two_ended_experiments_show_their_lesson_across_a_link(name: str) -> None:
    """Each socket in its end's namespace (agents/ends.py), the verdict unchanged.
    multiplex runs on an unshaped link: its 100 connections' 50,000 echoes through the
    delay line (one Python process) took the whole 20 s timeout once under load."""
    shaping = ["--connections", "100"] if name == "multiplex" else ["--delay", "5"]
    body = one_json(run_tcplab("experiment", name, "--quick", "--link", "veth", *shaping,
                               "--json", timeout=GUARD), shown=True)
    assert body["link"]["kind"] == "veth" and body["link"]["server"].startswith("198.")
