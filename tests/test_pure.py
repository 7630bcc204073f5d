"""Pure logic: backoff, log limiting, percentiles, payloads, argument parsing, counts in
words, settings in words, and the echo and half-close experiments' verdicts."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcplab.agents.half_close import Step
from tcplab.cli import common
from tcplab.errors import UsageError, errno_name
from tcplab.experiments import echo, half_close, multiplex, port_bomb
from tcplab.records import from_json
from tcplab.report.prose import echo_fact, half_close_fact
from tcplab.report.terminal import settings_text
from tcplab.traffic.accept import BACKOFF_MIN, Backoff, LogLimiter
from tcplab.traffic.client import payload_for, percentile
from tcplab.traffic.server import Ticker
from tcplab.traffic.target import resolve
from tcplab.words import plural, plural_of

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


# --- counts and settings in words -------------------------------------------------------------

@pytest.mark.parametrize("n, noun, text", [
    (1, "thread", "1 thread"), (0, "thread", "0 threads"), (10_001, "thread", "10,001 threads"),
    (1, "echo", "1 echo"), (2, "echo", "2 echoes"), (1, "connection", "1 connection"),
    (3, "small echo", "3 small echoes"), (2, "process", "2 processes"),
    (2, "entry", "2 entries"), (2, "day", "2 days"), (1.0, "core", "1 core"),
    (2.0, "core", "2 cores"), (2, "mouse", "2 mice"),
])
def test_plural(n: int | float, noun: str, text: str) -> None:
    assert plural(n, noun, "mice" if noun == "mouse" else None) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_plural_is_singular_for_one_only(n: int) -> None:
    text = plural(n, "echo")
    assert text == ("1 echo" if n == 1 else f"{n:,} echoes")
    assert plural_of("echo") == "echoes"


def test_settings_read_as_settings_not_python() -> None:
    # The settings the experiments record (multiplex's, port-bomb's, echo's), as they are.
    text = settings_text({"ladder": [100, 1000, 10_000], "models": ["threads", "epoll"],
                          "variants": ("fresh", "pool"), "ports": 1000, "port": 8080,
                          "keepalive": False, "server_cmd": None, "pause_s": 0.3,
                          "tcp_fin_timeout": 5, "extra": {"a": 1, "b": [2, 3]},
                          "timeout_s": 20.0})
    assert text == ("connections 100, 1,000, 10,000 · models threads, epoll · "
                    "variants fresh, pool · ports 1,000 · port 8080 · keepalive no · "
                    "server cmd none · pause between steps 0.3 s · tcp_fin_timeout 5 s · "
                    "extra a 1, b 2, 3 · timeout 20 s")
    for python in ("[", "]", "(", ")", "{", "}", "'", "None", "True", "False"):
        assert python not in text, python


# --- the echo and half-close verdicts say what was seen ---------------------------------------

def echo_judged(small: int, large: int, p50_us: float, mib_per_s: float,
                stream: tuple[int, int, bool], client_bytes: int,
                server_bytes: int | None) -> tuple[bool, str]:
    """The verdict (experiments/echo.py) and its sentence (report/prose.py)."""
    return (echo.judge(stream[2], client_bytes, server_bytes),
            echo_fact(small, large, p50_us, mib_per_s, stream, client_bytes, server_bytes))


def test_echo_fact_claims_exact_bytes_only_when_they_matched() -> None:
    ok, fact = echo_judged(1, 1, 50.0, 600.0, stream=(4 << 20, 4 << 20, True),
                           client_bytes=1000, server_bytes=1000)
    assert ok and fact == ("1 small echo at p50 50 us, 1 echo of 1 MiB at 600 MiB/s; the "
                           "server echoed exactly the 1,000 bytes sent")
    ok, fact = echo_judged(200, 5, 50.0, 600.0, stream=(4 << 20, 4 << 20, True),
                           client_bytes=1000, server_bytes=None)
    assert not ok and fact == "the server reported no totals, so its count could not be checked"
    ok, fact = echo_judged(200, 5, 50.0, 600.0, stream=(100, 90, False),
                           client_bytes=1000, server_bytes=990)
    assert not ok and "exactly" not in fact
    assert fact == ("the 100 B stream came back different (90 B, not identical); the server "
                    "counted 990 B echoed, the client sent 1,000 B")


def _step(t: float, client: str | None, server: str | None,
          left: float | None = None) -> Step:
    def side(state: str | None, timer: float | None) -> dict[str, object] | None:
        if state is None:
            return None
        return {"state": state, "timer": f"time-wait {timer:.1f}s" if timer else "",
                "timer_left_s": timer, "owner": "kernel" if timer else "process"}
    return from_json(Step, {"t": t, "step": "", "client": side(client, left),
                                       "server": side(server, None)})


def half_close_judged(steps: list[Step]) -> tuple[bool, str]:
    """The verdict (experiments/half_close.py) and its sentence (report/prose.py)."""
    return half_close.judge(steps), half_close_fact(steps)


def test_half_close_fact_is_what_the_steps_sampled() -> None:
    steps = [_step(0.3, "ESTABLISHED", "ESTABLISHED"), _step(0.6, "FIN_WAIT2", "CLOSE_WAIT"),
             _step(0.9, "FIN_WAIT2", "CLOSE_WAIT"), _step(1.2, "TIME_WAIT", None, 59.7),
             _step(2.5, "TIME_WAIT", None, 58.4)]
    ok, fact = half_close_judged(steps)
    assert ok
    assert fact.endswith("TIME_WAIT with 59.7 s left, 58.4 s left 1.3 s later")
    # A server that never reached CLOSE_WAIT (the choreography cannot be made to do
    # that for real): the fact lists what was seen, and claims no CLOSE_WAIT.
    steps[1] = _step(0.6, "FIN_WAIT2", "ESTABLISHED")
    ok, fact = half_close_judged(steps)
    assert not ok
    assert "after shutdown(SHUT_WR): client FIN_WAIT2, server ESTABLISHED" in fact
    assert "sat in" not in fact
    # A timer that did not move between two samples is named.
    steps[1] = _step(0.6, "FIN_WAIT2", "CLOSE_WAIT")
    steps[4] = _step(2.5, "TIME_WAIT", None, 59.7)
    ok, fact = half_close_judged(steps)
    assert not ok and fact.endswith("the TIME_WAIT timer did not count down between samples")


# --- --quick works on a copy: the caller's settings are never changed ---------------------------

def test_quick_runs_on_a_copy_of_the_callers_settings() -> None:
    bomb = port_bomb.Settings(reuse_count=40_000)
    assert port_bomb.effective(bomb, quick=True).reuse_count == 32_000
    assert bomb.reuse_count == 40_000
    mux = multiplex.Settings()
    assert multiplex.effective(mux, quick=True).ladder == (100, 1000)
    assert mux.ladder == (100, 1000, 10_000)
    with pytest.raises(AttributeError):  # frozen: dataclasses.FrozenInstanceError
        bomb.reuse_count = 1  # type: ignore[misc]


@pytest.mark.pure
def test_sockstat_is_decoded_from_the_kernels_own_text() -> None:
    # /proc/net/sockstat as this machine's Linux 6.18 printed it (2026-11-30).
    from tcplab.kernel.procfs import parse_sockstat

    text = ("sockets: used 8\nTCP: inuse 1 orphan 2 tw 0 alloc 3 mem 0\nUDP: inuse 0 mem 0\n"
            "UDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n")
    assert parse_sockstat(text) == {"inuse": 1, "orphan": 2, "tw": 0, "alloc": 3, "mem": 0}
    with pytest.raises(ValueError):
        parse_sockstat("sockets: used 8\n")
