"""experiment c100k at a small scale: the same harness, with fewer fds per process."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tcplab.cli.experiment import EXPERIMENTS, ON_ITS_OWN
from tcplab.experiments import c100k
from tcplab.experiments.result import decode
from tcplab.traffic import spread
from tests.helpers import one_json, run_tcplab

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    """3,000 connections under a hard limit of 1,024 fds a process: 4 workers, 4 clients."""
    r = run_tcplab("experiment", "c100k", "--connections", "3000", "--process-fds", "1024",
                   "--models", "uvloop,epoll", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    return one_json(r)


@pytest.mark.privileged  # a private namespace: root, or a user namespace
def test_it_holds_every_connection_spread_over_processes(small: dict[str, Any]) -> None:
    assert small["experiment"] == "c100k" and small["ok"] is True
    assert small["held"] == 3000 and small["failed"] == 0
    bars = small["workers"]
    assert len(bars) == 4 and small["settings"]["processes"] == 4
    assert sum(b["held"] for b in bars) == 3000
    # What each worker counted itself agrees with its socket fds at the peak.
    assert [b["accepted"] for b in bars] == [b["held"] for b in bars]
    assert all(b["held"] > 0 for b in bars)
    assert small["rss_growth_per_conn"] is not None
    assert 0 < small["rss_growth_per_conn"] <= c100k.MAX_RSS_PER_CONN
    # ... and the default row whole, as every other row is (its failures, p99, threads)
    d = small["default"]
    assert d["name"] == "uvloop reuseport x3000" and d["held"] == 3000
    assert d["bars"] == bars and d["p99_us"] > 0 and d["threads"] == 4


@pytest.mark.privileged  # a private namespace: root, or a user namespace
def test_the_other_rows_compare_like_with_like(small: dict[str, Any]) -> None:
    rows = {m["name"]: m for m in small["models"]}
    assert set(rows) == {"uvloop shared x3000", "epoll reuseport x3000"}
    for row in rows.values():
        assert row["held"] == 3000 and row["failed"] == 0, row
        assert sum(b["held"] for b in row["bars"]) == 3000
        assert row["workers"] == 4 and row["threads"] == 4  # one thread a worker
        assert row["epoll_watches"] >= 3000
    spreads = small["facts"]["spreads"]
    assert spreads["reuseport_cv"] is not None and spreads["shared_cv"] is not None


@pytest.mark.privileged  # a private namespace: root, or a user namespace
def test_the_ledger_and_the_limits(small: dict[str, Any]) -> None:
    facts = small["facts"]
    cap = facts["capacity"]
    assert cap["hit_first"]["name"] == "fds per process"
    assert cap["hit_first"]["value"] == "1,024"
    ledger = facts["ledger"]
    if not ROOT:
        assert ledger["rows"] == [] and ledger["why_not"]
        return
    tcp = next(r for r in ledger["rows"] if r["cache"] == "TCP")
    assert tcp["expected"] == 6000  # both ends of 3,000 connections are in this kernel
    assert ledger["bytes_per_connection"] > 2 * tcp["objsize"]


@pytest.mark.privileged  # a private namespace: root, or a user namespace
def test_nothing_is_left_behind(small: dict[str, Any]) -> None:
    pids = [b["pid"] for b in small["workers"]]
    pids += [b["pid"] for m in small["models"] for b in m["bars"]]
    assert pids and not [p for p in pids if os.path.exists(f"/proc/{p}")]


@pytest.mark.privileged  # a private namespace: root, or a user namespace
def test_the_record_decodes(small: dict[str, Any]) -> None:
    r = decode(small)
    assert isinstance(r, c100k.Result) and r.held == 3000
    assert r.facts is not None and r.facts.capacity is not None


@pytest.mark.loopback
def test_it_runs_only_when_named() -> None:
    assert "c100k" in ON_ITS_OWN and "c100k" not in EXPERIMENTS
    r = run_tcplab("experiment", "multiplex", "--connections", "20000")
    assert r.returncode == 2
    assert b"run 'tcplab experiment c100k --connections N'" in r.stderr


@pytest.mark.loopback
def test_more_processes_than_it_runs_is_refused() -> None:
    r = run_tcplab("experiment", "c100k", "--connections", "100000", "--process-fds", "1024")
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "need 105 processes a side" in err and "at most 32" in err


@pytest.mark.pure
def test_workers_and_processes_follow_the_fd_limit() -> None:
    assert c100k.workers_for(100_000, 20_000, 2) == 6
    assert c100k.workers_for(1_000, 20_000, 2) == 2  # at least one per CPU
    assert spread.processes_for(100_000, 20_000, 64) == 6
    assert c100k.expected_cv(100_000, 6) == pytest.approx(0.00707, abs=1e-5)
    assert c100k.cv([10, 10, 10]) == 0.0


@pytest.mark.loopback  # reads this machine's limits (files), no sockets
def test_the_verdict_on_recorded_rows() -> None:
    """judge() on the rows of a recorded default run (100,000 as root): shown; and
    not shown, with the reason in words, when the default row held less, failed or
    used more than 2 KiB a connection."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from tcplab.experiments.link import LinkUsed
    from tcplab.observe.limits import host_facts

    body = json.loads((Path(__file__).parent / "data" / "c100k-100000.json").read_text())
    r = decode(body)
    assert isinstance(r, c100k.Result) and r.facts is not None
    shared = next(m for m in r.models if m.name == "uvloop shared x100000")
    # The default row, rebuilt from the top-level figures on the shared row's shape.
    head = replace(shared, name="uvloop reuseport x100000", listener="reuseport",
                   held=r.held, failed=r.failed, rss_growth_per_conn=r.rss_growth_per_conn)
    s = c100k.Settings()

    class E:  # the Ends' one field judge() reads
        used = LinkUsed()

    def verdict(row: c100k.ModelRow) -> c100k.Result:
        return c100k.judge([row, *r.models], s, 6, 9, 20_000, r.facts.ledger,
                           host_facts(), E())

    assert verdict(head).ok
    worse = verdict(replace(head, rss_growth_per_conn=2100.0, held=99_990, failed=10))
    assert not worse.ok
    assert worse.facts is not None
    assert list(worse.facts.problems) == [
        "it held 99,990 of 100,000", "10 failed",
        "its server used 2,100 B of user memory per connection, over 2,048"]
    threads = [m for m in r.models if m.model == "threads"]
    assert [m.asked for m in threads] == [2_500, 5_000, 10_000]
    assert threads[-1].stopped_because is not None
    assert "kernel.pid_max is 32,768" in threads[-1].stopped_because


@pytest.mark.pure
def test_threads_take_at_most_half_the_pids_left() -> None:
    assert c100k.threads_cap(32_768, 768) == 16_000
    assert c100k.threads_cap(100, 200) == 0
