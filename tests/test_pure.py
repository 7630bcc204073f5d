"""Pure logic: backoff, log limiting, percentiles, payloads, argument parsing."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcplab.cli import common
from tcplab.errors import UsageError, errno_name
from tcplab.traffic.accept import BACKOFF_MIN, Backoff, LogLimiter
from tcplab.traffic.client import payload_for, percentile
from tcplab.traffic.server import Ticker
from tcplab.traffic.target import resolve

pytestmark = pytest.mark.pure


def test_backoff_doubles_from_5ms_to_1s_like_go() -> None:
    b = Backoff()
    delays = [b.next() for _ in range(10)]
    assert delays[:8] == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]
    assert delays[8:] == [1.0, 1.0]
    b.reset()
    assert b.next() == BACKOFF_MIN


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_limiter_allows_a_burst_per_second_and_counts_the_rest() -> None:
    clock = FakeClock()
    limiter = LogLimiter(burst=3, clock=clock)
    assert [limiter.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limiter.held == 2
    clock.now += 0.5
    assert limiter.allow() is False
    clock.now += 0.6  # the first three are now more than a second old
    assert limiter.allow() is True


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_is_a_member_and_monotonic(values: list[float], q: float) -> None:
    values.sort()
    p = percentile(values, q)
    assert p in values
    assert percentile(values, 100) == values[-1]
    assert percentile(values, 0) == values[0]
    assert p <= percentile(values, min(100.0, q + 10))


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


@given(st.binary(min_size=2, max_size=64), st.integers(min_value=1, max_value=10_000))
def test_payloads_differ_by_index_but_keep_bytes(base: bytes, i: int) -> None:
    p = payload_for(i, base)
    assert sorted(p) == sorted(base) and len(p) == len(base)
    if len(set(base)) > 1 and i % len(base):
        # A rotation of a non-constant string may still equal it (periodic
        # strings); compare against an explicit rotation instead.
        k = i % len(base)
        assert p == base[k:] + base[:k]


def test_ticker_fires_on_interval() -> None:
    clock = FakeClock()
    t = Ticker(2.0, clock=clock)
    assert t.timeout(clock.now) == 2.0
    assert not t.fire(clock.now + 1.9)
    assert t.fire(clock.now + 2.0)
    assert Ticker(None).timeout(0.0) is None


def test_target_refuses_remote_and_names_the_flag() -> None:
    with pytest.raises(UsageError) as err:
        resolve("192.0.2.1", 8080)
    assert "--allow-remote" in (err.value.hint or "")
    assert resolve("192.0.2.1", 8080, allow_remote=True).where == "192.0.2.1:8080"
    assert resolve("127.0.0.2", 80).where == "127.0.0.2:80"
    assert resolve("::1", 80).where == "[::1]:80"


@pytest.mark.parametrize("text, ok", [("0", True), ("65535", True), ("65536", False),
                                      ("-1", False), ("http", False)])
def test_port_argument(text: str, ok: bool) -> None:
    if ok:
        assert common.port(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            common.port(text)


@pytest.mark.parametrize("value, on", [("true", True), ("1", True), ("YES", True),
                                       ("false", False), ("", False), ("0", False)])
def test_leak_environment_switch(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("LEAK", value)
    assert common.env_flag("LEAK") is on


def test_errno_names() -> None:
    assert errno_name(99) == "EADDRNOTAVAIL"
    assert errno_name(24) == "EMFILE"
    assert errno_name(None) == "E?"
