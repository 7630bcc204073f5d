"""The client engine: its table on its own (pure), and its driver with real sockets.

Pure: every row of the table, written out here a second time as the oracle; every
pair off the table raises; the errno -> outcome map. Loopback: the driver against
a real echo server (round trips, pools, held connections, large requests,
bench's ping-pong and churn) and against servers that misbehave for real, each
in its own way (refuse, reset, close first, echo other bytes, never answer,
never accept). Privileged: EADDRNOTAVAIL and EADDRINUSE in a private namespace
with a narrowed ``ip_local_port_range``.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tcplab.traffic import engine
from tcplab.traffic.engine import (
    ACTIVE,
    TRANSITIONS,
    Config,
    Driver,
    Event,
    IllegalTransition,
    Outcome,
    Stage,
    Stop,
    Then,
    step,
)
from tcplab.traffic.target import Target

S, E = Stage, Event

# --- pure: the table ------------------------------------------------------------------------

#: The oracle: every move a client connection can make, written out independently.
ROWS = {
    (S.CONNECTING, E.CONNECTED): S.SENDING,
    (S.CONNECTING, E.CONNECTED_HELD): S.HOLDING,
    (S.CONNECTING, E.FAILED): S.DONE,
    (S.CONNECTING, E.TIMED_OUT): S.DONE,
    (S.CONNECTING, E.STOPPED): S.DONE,
    (S.SENDING, E.SENT_PARTIAL): S.SENDING,
    (S.SENDING, E.ECHO_PARTIAL): S.SENDING,
    (S.SENDING, E.SENT): S.AWAITING_ECHO,
    (S.SENDING, E.PEER_CLOSED): S.DONE,
    (S.SENDING, E.FAILED): S.DONE,
    (S.SENDING, E.TIMED_OUT): S.DONE,
    (S.SENDING, E.STOPPED): S.DONE,
    (S.AWAITING_ECHO, E.ECHO_PARTIAL): S.AWAITING_ECHO,
    (S.AWAITING_ECHO, E.ECHO_COMPLETE): S.SENDING,
    (S.AWAITING_ECHO, E.LAST_ECHO_HELD): S.HOLDING,
    (S.AWAITING_ECHO, E.LAST_ECHO_CLOSE): S.DONE,
    (S.AWAITING_ECHO, E.LAST_ECHO_AWAIT_CLOSE): S.CLOSING,
    (S.AWAITING_ECHO, E.PEER_CLOSED): S.DONE,
    (S.AWAITING_ECHO, E.FAILED): S.DONE,
    (S.AWAITING_ECHO, E.TIMED_OUT): S.DONE,
    (S.AWAITING_ECHO, E.STOPPED): S.DONE,
    (S.HOLDING, E.RELEASED): S.SENDING,
    (S.HOLDING, E.CLOSE): S.DONE,
    (S.HOLDING, E.PEER_CLOSED): S.DONE,
    (S.HOLDING, E.FAILED): S.DONE,
    (S.CLOSING, E.PEER_CLOSED): S.DONE,
    (S.CLOSING, E.FAILED): S.DONE,
    (S.CLOSING, E.STOPPED): S.DONE,
}


@pytest.mark.pure
def test_the_table_is_exactly_its_rows() -> None:
    table = {(stage, event): nxt for stage, row in TRANSITIONS.items()
             for event, nxt in row.items()}
    assert table == ROWS
    assert set(TRANSITIONS) == set(Stage)  # every stage has its row, DONE's empty
    assert TRANSITIONS[S.DONE] == {}


@pytest.mark.pure
@pytest.mark.parametrize(("stage", "event"), list(ROWS), ids=lambda x: str(x))
def test_every_row_steps(stage: Stage, event: Event) -> None:
    assert step(stage, event) is ROWS[stage, event]


ILLEGAL = [(s, e) for s in Stage for e in Event if (s, e) not in ROWS]


@pytest.mark.pure
@pytest.mark.parametrize(("stage", "event"), ILLEGAL, ids=lambda x: str(x))
def test_every_pair_off_the_table_raises(stage: Stage, event: Event) -> None:
    with pytest.raises(IllegalTransition) as info:
        step(stage, event)
    assert f"cannot take {event.value!r} while {stage.value!r}" in str(info.value)
    with pytest.raises(IllegalTransition):  # the driver's own lookup raises the same
        TRANSITIONS[stage][event]


@pytest.mark.pure
def test_every_stage_is_reachable_and_every_connection_can_end() -> None:
    seen, todo = {S.CONNECTING}, [S.CONNECTING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Stage)
    for stage in set(Stage) - {S.DONE}:
        assert S.DONE in TRANSITIONS[stage].values(), stage
    # Whatever a peer does has a row wherever it can happen: a failure ends any live
    # stage, and every stage under way can be stopped by the run's end.
    assert all((s, E.FAILED) in ROWS for s in set(Stage) - {S.DONE})
    assert all((s, E.STOPPED) in ROWS for s in ACTIVE)
    assert {S.CONNECTING, S.SENDING, S.AWAITING_ECHO, S.CLOSING} == ACTIVE


@pytest.mark.pure
def test_outcomes_and_their_errnos() -> None:
    assert engine.outcome_of(errno.ECONNREFUSED) is Outcome.REFUSED
    assert engine.outcome_of(errno.ECONNRESET) is Outcome.RESET
    assert engine.outcome_of(errno.EPIPE) is Outcome.RESET
    assert engine.outcome_of(errno.ETIMEDOUT) is Outcome.TIMED_OUT
    assert engine.outcome_of(errno.EADDRNOTAVAIL) is Outcome.ADDR_NOT_AVAIL
    assert engine.outcome_of(errno.EADDRINUSE) is Outcome.ADDR_IN_USE
    assert engine.outcome_of(errno.EMFILE) is Outcome.EMFILE
    assert engine.outcome_of(errno.ENFILE) is Outcome.ENFILE
    assert engine.outcome_of(errno.EHOSTUNREACH) is Outcome.UNREACHABLE
    assert engine.outcome_of(errno.ENETUNREACH) is Outcome.UNREACHABLE
    assert engine.outcome_of(errno.EACCES) is Outcome.OTHER
    for outcome, codes in engine.ERRNOS.items():
        assert all(engine.outcome_of(c) is outcome for c in codes)
    # The outcomes no errno says: ours.
    assert set(Outcome) - set(engine.ERRNOS) == {
        Outcome.OK, Outcome.WRONG_BYTES, Outcome.CLOSED_EARLY, Outcome.OTHER}


@pytest.mark.pure
def test_failure_names_are_the_ones_the_commands_print() -> None:
    name = engine.failure_name
    assert name(Outcome.ADDR_NOT_AVAIL, errno.EADDRNOTAVAIL, S.CONNECTING) == "EADDRNOTAVAIL"
    assert name(Outcome.RESET, errno.EPIPE, S.SENDING) == "EPIPE"
    assert name(Outcome.CLOSED_EARLY, 0, S.AWAITING_ECHO) == "EOF"
    assert name(Outcome.WRONG_BYTES, 0, S.AWAITING_ECHO) == "MISMATCH"
    assert name(Outcome.TIMED_OUT, errno.ETIMEDOUT, S.CONNECTING) == "ETIMEDOUT"
    assert name(Outcome.TIMED_OUT, errno.ETIMEDOUT, S.AWAITING_ECHO) == "timeout"
    text = engine.failure_text
    assert text(Outcome.ADDR_NOT_AVAIL, 99, S.CONNECTING) == "Cannot assign requested address"
    assert text(Outcome.CLOSED_EARLY, 0, S.AWAITING_ECHO) == "connection closed before the echo"


@pytest.mark.pure
def test_a_config_must_bound_what_it_opens() -> None:
    with pytest.raises(ValueError, match="connections or concurrency"):
        Config(duration=1.0)
    with pytest.raises(ValueError, match="round_trips"):
        Config(connections=1, round_trips=0)


@pytest.mark.pure
def test_the_idle_pool_keeps_up_to_its_cap_and_hands_out_the_latest() -> None:
    pool: engine.IdlePool[str] = engine.IdlePool(2)
    assert not pool and len(pool) == 0
    assert pool.keep("a") and pool.keep("b") and not pool.keep("c")  # c is closed
    assert len(pool) == 2 and pool.take() == "b"  # the latest first (queueForIdleConn)
    assert pool.keep("d") and pool.take() == "d" and pool.take() == "a" and not pool
    assert pool.keep("e") and pool.keep("f")
    pool.discard("e")  # reset while idle
    pool.discard("x")  # not idle: nothing to do
    assert len(pool) == 1 and pool.take() == "f"
    pool.keep("g")
    pool.keep("h")
    pool.keep_only(lambda c: c != "g")  # released: no longer idle
    assert len(pool) == 1 and pool.take() == "h"
    pool.keep("i")
    pool.clear()
    assert not pool
    nothing: engine.IdlePool[str] = engine.IdlePool(0)  # cap 0 keeps nothing
    assert not nothing.keep("a") and not nothing


@pytest.mark.pure
@pytest.mark.parametrize(("cap", "opened"), [(0, 200), (2, 152), (8, 8)])
def test_a_capped_pools_rounds_open_what_the_cap_cannot_keep(cap: int, opened: int) -> None:
    """The driver's bookkeeping, without sockets: each round of 8 requests takes the
    idle connections and opens the rest; each of its 8 returns is kept or closed.
    200 requests: 8 + 24 x 6 = 152 new connections with a cap of 2."""
    pool: engine.IdlePool[int] = engine.IdlePool(cap)
    new = closed = 0
    for _round in range(200 // 8):
        under_way = []
        for _ in range(8):
            if pool:
                under_way.append(pool.take())
            else:
                under_way.append(new)
                new += 1
        for c in under_way:
            if not pool.keep(c):
                closed += 1
    assert new == opened and closed == opened - min(cap, 8) and len(pool) == min(cap, 8)


@pytest.mark.pure
def test_a_pool_config_needs_a_concurrency_and_open_ended_round_trips() -> None:
    with pytest.raises(ValueError, match="a pool"):
        Config(connections=8, idle_cap=2)
    with pytest.raises(ValueError, match="a pool"):
        Config(concurrency=8, idle_cap=2)  # round_trips=1: a connection per request
    assert Config(concurrency=8, round_trips=None, idle_cap=2).idle_cap == 2


# --- loopback: servers that behave and servers that do not ----------------------------------

def target(port: int) -> Target:
    return Target("127.0.0.1", port, socket.AF_INET, ("127.0.0.1", port))


def counts_add_up(d: Driver) -> None:
    """attempted = ok + failed + waiting, for plans whose round trips each end."""
    assert d.attempted == d.ok + d.failed + len(d.waiting), (
        d.attempted, d.ok, d.failed, d.waiting)


@contextmanager
def misbehaving(handle: Callable[[socket.socket], None], backlog: int = 64,
                accept: bool = True) -> Iterator[int]:
    """A listener on 127.0.0.1 whose thread accepts (unless ``accept`` is False) and
    hands each connection to ``handle``; everything closed and joined at the end."""
    stop = threading.Event()
    kept: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        listener.settimeout(0.05)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                kept.append(conn)
                conn.settimeout(5)
                try:
                    handle(conn)
                except OSError:
                    pass

        thread = threading.Thread(target=serve, daemon=True) if accept else None
        if thread is not None:
            thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            if thread is not None:
                thread.join(10)
            for conn in kept:
                conn.close()


def reset_after_read(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST


def close_after_read(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.close()  # FIN, no echo


def echo_reversed(conn: socket.socket) -> None:
    conn.sendall(conn.recv(4096)[::-1])


def never_answer(conn: socket.socket) -> None:
    conn.recv(4096)  # read, keep the connection open, say nothing


@pytest.mark.loopback
def test_refused_at_connect() -> None:
    with socket.socket() as holder:  # a port bound, not listening: the SYN gets a RST
        holder.bind(("127.0.0.1", 0))
        with Driver(target(holder.getsockname()[1]),
                    Config(connections=5, concurrency=2, duration=10)) as d:
            assert d.run() is Stop.DONE
            r = d.report()
    assert r.opened == 5 and r.ok == 0 and r.failed == 5 and r.connected == 0
    assert r.outcomes == {Outcome.OK: 0, Outcome.REFUSED: 5}
    assert r.errors == {"ECONNREFUSED": 5}
    assert r.failed_in == {(S.CONNECTING, Outcome.REFUSED): 5}
    first = r.first_error
    assert first is not None and first.errno == errno.ECONNREFUSED
    assert first.stage is S.CONNECTING and first.message == "Connection refused"
    assert first.ok_before == 0


@pytest.mark.loopback
def test_reset_by_the_peer() -> None:
    with misbehaving(reset_after_read) as port, \
            Driver(target(port), Config(connections=3, concurrency=1, duration=20)) as d:
        d.run()
        r = d.report()
    assert r.failed == 3 and r.ok == 0 and r.connected == 3
    assert r.outcomes[Outcome.RESET] == 3
    assert r.errors == {"ECONNRESET": 3}
    assert r.failures(Outcome.RESET, S.AWAITING_ECHO) == 3
    assert r.first_error is not None and r.first_error.message == "Connection reset by peer"
    counts_add_up(d)


@pytest.mark.loopback
def test_closed_before_the_echo() -> None:
    with misbehaving(close_after_read) as port, \
            Driver(target(port), Config(connections=3, concurrency=3, duration=20)) as d:
        d.run()
        r = d.report()
    assert r.outcomes[Outcome.CLOSED_EARLY] == 3 and r.errors == {"EOF": 3}
    assert r.first_error is not None and r.first_error.errno == 0
    assert r.first_error.message == "connection closed before the echo"


@pytest.mark.loopback
def test_wrong_bytes_are_caught_only_when_verified() -> None:
    payload = b"tcplab engine: verify me"
    with misbehaving(echo_reversed) as port:
        with Driver(target(port), Config(connections=4, concurrency=2, payload=payload,
                                         duration=20)) as d:
            d.run()
            verified = d.report()
        with Driver(target(port), Config(connections=4, concurrency=2, payload=payload,
                                         verify=False, duration=20)) as d:
            d.run()
            counted = d.report()
    assert verified.ok == 0 and verified.outcomes[Outcome.WRONG_BYTES] == 4
    assert verified.errors == {"MISMATCH": 4}
    assert verified.first_error is not None
    assert verified.first_error.message == "the echo differed from what was sent"
    # Counting bytes only: the same reversed echo is a whole echo.
    assert counted.ok == 4 and counted.failed == 0 and counted.echoes == 4


@pytest.mark.loopback
def test_echo_timeout() -> None:
    with misbehaving(never_answer) as port, \
            Driver(target(port), Config(connections=3, echo_timeout=0.3, duration=20)) as d:
        t0 = time.monotonic()
        assert d.run() is Stop.DONE
        took = time.monotonic() - t0
        r = d.report()
    assert r.connected == 3 and r.failed == 3
    assert r.failures(Outcome.TIMED_OUT, S.AWAITING_ECHO) == 3
    assert r.errors == {"timeout": 3}
    assert r.first_error is not None and r.first_error.message == "no echo in time"
    assert took >= 0.3


@pytest.mark.loopback
def test_connect_timeout_at_a_full_accept_queue() -> None:
    """Backlog 0 and no accept(): one handshake completes into the queue (its echo
    then times out), the other SYNs are dropped and their connects time out."""
    with misbehaving(never_answer, backlog=0, accept=False) as port, \
            Driver(target(port), Config(connections=4, connect_timeout=0.5,
                                        echo_timeout=0.5, duration=20)) as d:
        d.run()
        r = d.report()
    assert r.failed == 4 and r.ok == 0
    assert r.failures(Outcome.TIMED_OUT) == 4
    assert r.failures(Outcome.TIMED_OUT, S.CONNECTING) >= 1
    assert r.failures(Outcome.TIMED_OUT, S.AWAITING_ECHO) >= 1
    assert set(r.errors) == {"ETIMEDOUT", "timeout"}


@pytest.mark.loopback
def test_stopped_while_waiting_is_neither_ok_nor_failed() -> None:
    with misbehaving(never_answer) as port, \
            Driver(target(port), Config(connections=2, duration=0.5)) as d:
        assert d.run() is Stop.DURATION
        waiting = d.stop()
        r = d.report()
    assert r.ok == 0 and r.failed == 0
    assert [w.stage for w in waiting] == [S.AWAITING_ECHO] * 2
    assert all(w.waited_s >= 0.4 for w in waiting)
    assert r.waiting == waiting
    counts_add_up(d)


@pytest.mark.loopback
def test_round_trips_then_close(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    with Driver(target(server.port), Config(connections=20, concurrency=5, round_trips=3,
                                            payload=b"x" * 100, record_rtts=True,
                                            duration=30)) as d:
        assert d.run() is Stop.DONE
        r = d.report()
    assert r.opened == 20 and r.connected == 20 and r.served == 20
    assert r.echoes == 60 and r.ok == 60 and r.failed == 0 and r.attempted == 60
    assert len(r.rtts_s) == 60 and all(0 < t < 30 for t in r.rtts_s)
    assert r.first_error is None and r.errors == {}
    counts_add_up(d)
    totals = server.stop()
    assert totals is not None and totals["accepted"] == 20


@pytest.mark.loopback
def test_a_pool_carries_the_count_then_is_held(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    cfg = Config(concurrency=4, round_trips=None, then=Then.HOLD, count=101, duration=30)
    with Driver(target(server.port), cfg) as d:
        assert d.run() is Stop.DONE
        held = len(d.conns)
        assert d.stop() == []  # held connections are closed, none was waiting
        r = d.report()
    assert held == 4 and r.opened == 4
    assert r.ok == r.attempted == 101 and r.failed == 0
    totals = server.stop()
    assert totals is not None and totals["accepted"] == 4


@pytest.mark.loopback
def test_held_connections_start_together_and_large_requests_cross(start_server) -> None:  # type: ignore[no-untyped-def]
    """hold_first: every connection opens and waits; release() starts them all. A
    1 MiB request cannot be written at once: the echo is read while it is sent."""
    server = start_server()
    big = bytes(range(256)) * 4096  # 1 MiB
    cfg = Config(connections=3, hold_first=True, round_trips=2, then=Then.HOLD,
                 payload=lambda i, trip: big[i + trip:] + big[:i + trip], duration=60)
    with Driver(target(server.port), cfg) as d:
        assert d.run() is Stop.DONE
        assert d.connected == 3 and d.echoes == 0 and d.unserved() == 3
        assert d.release() == 3
        assert d.run() is Stop.DONE
        assert d.release() == 0  # each had its two round trips
        r = d.report()
    assert r.echoes == 6 and r.failed == 0 and r.served == 3


@pytest.mark.loopback
def test_a_source_address_without_its_port_until_connect(start_server) -> None:  # type: ignore[no-untyped-def]
    """source + bind_no_port (issue 17's spread client): 300 connections from
    127.0.0.2, every byte echoed and checked, each socket bound with
    IP_BIND_ADDRESS_NO_PORT and connected from 127.0.0.2, as sock_diag sees them."""
    from tcplab.kernel.inet import IP_BIND_ADDRESS_NO_PORT
    from tcplab.observe.sockets import SocketTable

    server = start_server()
    cfg = Config(connections=300, round_trips=1, then=Then.HOLD, source=("127.0.0.2", 0),
                 bind_no_port=True, payload=lambda i, trip: b"%d." % i * 20, duration=60)
    with Driver(target(server.port), cfg) as d:
        assert d.run() is Stop.DONE
        held = [c.sock for c in d.conns.values()]
        assert len(held) == 300
        assert all(s.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
                   for s in held)
        with SocketTable() as table:
            ours = [x for x in table.sockets(server.port) if x.dport == server.port]
        assert len(ours) == 300 and {x.src for x in ours} == {"127.0.0.2"}
        r = d.report()
    assert r.ok == 300 and r.failed == 0 and r.first_error is None


@pytest.mark.loopback
def test_await_close_is_ok_when_the_peer_closes_first(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--close-first")
    with Driver(target(server.port), Config(connections=5, concurrency=5,
                                            then=Then.AWAIT_CLOSE, duration=30)) as d:
        d.run()
        r = d.report()
    assert r.ok == 5 and r.echoes == 5 and r.failed == 0


@pytest.mark.loopback
def test_bench_loads_are_configurations(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    marks: list[float] = []
    p = engine.pingpong(target(server.port), connections=10, warmup=0.1, seconds=0.3,
                        mark=lambda: marks.append(time.monotonic()) or len(marks))
    assert p.connected == 10 and p.failed == 0 and p.in_flight == 0
    assert p.a.extra == 1 and p.b.extra == 2 and p.b.t - p.a.t >= 0.3
    assert p.b.echoes > p.a.echoes > 0
    assert len(p.window_rtts_s) == p.b.rtts - p.a.rtts > 0
    assert p.window_rtts_s == sorted(p.window_rtts_s)
    assert 0 < p.percentile_us(50) <= p.percentile_us(99)
    assert p.echoes_total >= p.b.echoes
    c = engine.churn(target(server.port), count=200, workers=8)
    assert c.ok == 200 and c.opened == 200 and c.failed == 0


# --- privileged: out of ports, for real -----------------------------------------------------

LOW, PORTS = 41000, 20

#: Runs inside the namespace: the engine against the server there; one JSON line out.
CHURN = r"""
import json, sys
from dataclasses import replace
from tcplab.traffic import engine
from tcplab.traffic.target import resolve
cfg = engine.churn_config(count=int(sys.argv[1]), workers=4, duration=30)
if sys.argv[2] == "bind":
    cfg = replace(cfg, source=("127.0.0.1", 0))
with engine.Driver(resolve("127.0.0.1", 8080), cfg) as d:
    d.run()
    r = d.report()
print(json.dumps({"ok": r.ok, "failed": r.failed, "errors": r.errors,
                  "outcomes": {k.value: v for k, v in r.outcomes.items()},
                  "first": [r.first_error.errno, r.first_error.stage.value,
                            r.first_error.message] if r.first_error else None}))
"""


def churn_inside(sb: Sandbox, count: int, mode: str) -> dict[str, Any]:
    r = sb.run([sys.executable, "-c", CHURN, str(count), mode], stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    body: dict[str, Any] = json.loads(r.stdout)
    return body


@pytest.mark.privileged
def test_out_of_ephemeral_ports_in_a_namespace() -> None:
    """20 ephemeral ports, tcp_tw_reuse 0: the client closes first, each port sits
    in TIME_WAIT, and connect() fails with EADDRNOTAVAIL; bind() before connect()
    fails with EADDRINUSE (toward one destination, at about the same count)."""
    sysctls = {"net.ipv4.ip_local_port_range": f"{LOW} {LOW + PORTS - 1}",
               "net.ipv4.tcp_tw_reuse": "0"}
    with Sandbox(sysctls) as sb:
        server = ServerProcess(["--port", "8080"], popen=sb.popen)
        try:
            server.start()
            fresh = churn_inside(sb, 50, "fresh")
        finally:
            server.kill()
    with Sandbox(sysctls) as sb:
        server = ServerProcess(["--port", "8080"], popen=sb.popen)
        try:
            server.start()
            bound = churn_inside(sb, 50, "bind")
        finally:
            server.kill()
    assert fresh["ok"] == PORTS and fresh["failed"] == 50 - PORTS
    assert fresh["errors"] == {"EADDRNOTAVAIL": 50 - PORTS}
    assert fresh["outcomes"] == {"ok": PORTS, "addr_not_avail": 50 - PORTS}
    assert fresh["first"] == [errno.EADDRNOTAVAIL, "connecting",
                              "Cannot assign requested address"]
    assert 0 < bound["ok"] <= PORTS and bound["failed"] == 50 - bound["ok"]
    assert bound["errors"] == {"EADDRINUSE": bound["failed"]}
    assert bound["first"] == [errno.EADDRINUSE, "connecting", "Address already in use"]
