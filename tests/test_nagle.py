"""``tcplab experiment nagle``, as a user runs it, on loopback and across a delayed veth link.

Each run is real: the agent's server and client in a private network namespace
(loopback) or at the two ends of a temporary tcplab net (veth, through the router's
delay line), as root and as an ordinary user (nobody, in a user+net namespace,
through a venv of /usr/bin/python3 that nobody owns). The checks are the kernel's
own figures with margins a loaded 2-core machine keeps: the delayed-ACK timer
cannot fire before 40 ms less a jiffy (TCP_ATO_MIN, HZ/25), and a delayed link
cannot be faster than its round trip. The pure tests feed the recorded run
(tests/data/lessons/nagle.json) with one figure changed, to see the verdict fall
and the failure said.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments import nagle
from tcplab.kernel.tcp_info import SIZE, parse_tcp_info
from tcplab.report import html
from tcplab.report.prose import worded
from tcplab.report.terminal import result_lines
from tests.helpers import USERS, as_nobody, one_json, run_as

ROOT = Path(__file__).resolve().parent.parent
LESSON_RUNS = ROOT / "tests" / "data" / "lessons"
GUARD = 300  # a hang guard, not a time limit
#: The delayed-ACK timer's least wait as measured from user space: 40 ms (10 jiffies at
#: HZ = 250) less the part of the current jiffy already gone, less a scheduling margin.
TIMER_US = 30_000
#: The delayed link's round trip: 10 ms each way.
RTT_US = 20_000


def ways(round_: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["way"]: w for w in round_["ways"]}


# --- TCP_INFO, decoded ------------------------------------------------------------------------

@pytest.mark.loopback
def test_tcp_info_has_the_delayed_ack_timeout_once_data_came() -> None:
    """A real connection on 127.0.0.1: the receiver's ato is TCP_ATO_MIN (40 ms) from
    its first data on (tcp_event_data_recv); the sender, which received nothing, has
    none yet; both are ESTABLISHED, with an RTO of at least TCP_RTO_MIN (200 ms)."""
    with socket.create_server(("127.0.0.1", 0)) as ls, \
            socket.create_connection(ls.getsockname(), timeout=10) as client:
        server, _ = ls.accept()
        with server:
            client.sendall(b"x")
            assert server.recv(1) == b"x"
            got = {name: parse_tcp_info(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO,
                                                     SIZE))
                   for name, s in (("client", client), ("server", server))}
    c, sv = got["client"], got["server"]
    assert c is not None and sv is not None
    assert c.state == sv.state == 1  # TCP_ESTABLISHED
    assert sv.ato_us == 40_000 and c.ato_us == 0
    assert c.rto_us >= 200_000 and c.snd_mss > 0 and c.rtt_us > 0
    assert parse_tcp_info(b"\x01" * 40) is None  # too short for the fields read


# --- on loopback, as a user runs it -----------------------------------------------------------

@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_write_write_read_waits_for_the_delayed_ack(user: str,
                                                    nobody_venv: Path | None) -> None:
    b = one_json(run_as(user, nobody_venv, "experiment", "nagle", "--quick", "--json",
                               timeout=GUARD), shown=True)
    assert b["settings"] == {"requests": 12, "header": 16, "body": 64, "reply": 32,
                             "veth_delay_ms": None}
    [r] = b["facts"]["rounds"]  # --quick: the link given only
    assert r["link"]["kind"] == "loopback" and b["facts"]["used"] == r["link"]
    assert r["shown"] is True and r["skip"] is None
    assert r["pingpong_thresh"] == 1  # a new namespace's default (tcp_sk_init)
    w = ways(r)
    assert list(w) == ["nagle", "nodelay", "one-write"]
    n = w["nagle"]
    assert len(n["requests_us"]) == 12
    # Every request after the first waited for the timer; the server's counter says the
    # timer sent those ACKs, and its ato is TCP_ATO_MIN.
    assert min(n["requests_us"][1:]) >= TIMER_US, n["requests_us"]
    assert n["delayed_acks"] >= 11 and n["server_ato_us"] == 40_000
    # The first did not: quick-ACK mode at the connection's start. Counted by the
    # kernel: the timer fired for the others only (a first request's time alone can be
    # slowed as much by a late wake-up on a loaded machine).
    assert n["delayed_acks"] <= len(n["requests_us"]) - 1
    for fix in ("nodelay", "one-write"):
        assert w[fix]["steady_us"] < n["steady_us"] - TIMER_US, w[fix]
        # A fix's requests do not wait for the timer: a loaded machine may hold one or
        # two of them back as long, never most.
        assert sum(t >= TIMER_US for t in w[fix]["requests_us"]) <= 2, w[fix]
    assert "for the server's delayed ACK" in b["fact"]
    assert "the server's delayed-ACK timer fired" in b["fact"]


@pytest.mark.privileged
def test_text_has_the_table() -> None:
    r = subprocess.run([sys.executable, "-m", "tcplab", "experiment", "nagle", "--quick"],
                       capture_output=True, timeout=GUARD, stdin=subprocess.DEVNULL)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment nagle: shown\n"), text
    rows = [line.split() for line in text.splitlines()]
    head = rows.index(["link", "writes", "first", "median", "after", "slowest", "delayed",
                       "ACKs"])
    assert [row[:2] for row in rows[head + 1:head + 4]] == [
        ["loopback", "nagle"], ["loopback", "nodelay"], ["loopback", "one-write"]]
    assert "requests per connection 12" in text and "header write 16 B" in text


# --- across a veth link with 10 ms each way ---------------------------------------------------

#: Runs the experiment on a delayed veth link in a fresh interpreter (as root, or as
#: nobody through its venv) and prints the worded result, or SKIP and why not.
VETH = """
import json, sys
from tcplab.errors import NotSupported
from tcplab.experiments import nagle
from tcplab.kernel.tcp_info import SIZE, parse_tcp_info
from tcplab.experiments.link import LinkSpec
from tcplab.net.plan import Shaping
from tcplab.records import to_json
from tcplab.report.prose import worded
try:
    r = nagle.run(quick=True, link=LinkSpec(kind="veth", shaping=Shaping(delay_ms=10)))
except NotSupported as exc:
    print("SKIP " + exc.message + (" (" + exc.hint + ")" if exc.hint else ""))
    sys.exit(0)
print(json.dumps(to_json(worded(r))))
"""


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_on_a_delayed_link_the_wait_adds_a_round_trip(user: str,
                                                      nobody_venv: Path | None) -> None:
    if user == "nobody":
        assert nobody_venv is not None
        argv, kw = [str(nobody_venv / "bin" / "python"), "-c", VETH], {
            "preexec_fn": as_nobody, "cwd": "/tmp", "env": {**os.environ, "HOME": "/tmp"}}
    else:
        argv, kw = [sys.executable, "-c", VETH], {}
    p = subprocess.run(argv, capture_output=True, timeout=GUARD, stdin=subprocess.DEVNULL,
                       **kw)  # type: ignore[call-overload]
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    if out.startswith("SKIP "):
        pytest.skip(out[5:].strip())
    b = json.loads(out)
    assert b["ok"] is True, b["fact"]
    [r] = b["facts"]["rounds"]
    assert r["link"]["kind"] == "veth" and r["link"]["shaping"] == "delay 10 ms each way"
    assert "delay" in r["link"]["mechanisms"]
    w = ways(r)
    # The delay line (a process in the router's namespace) is never faster than its
    # delay; on a loaded machine it is slower, so the bounds below use the link's own
    # round trip (RTT_US) as the least each crossing can take, not the measured one.
    for fix in ("nodelay", "one-write"):  # one round trip
        assert w[fix]["steady_us"] >= RTT_US - 2_000, w[fix]
    # Nagle: the timer and one more round trip (the body waits for the ACK to come back).
    n = w["nagle"]
    best = min(w["nodelay"]["steady_us"], w["one-write"]["steady_us"])
    assert n["steady_us"] - best >= TIMER_US + 0.75 * RTT_US, (n["steady_us"], best)
    # The first request: no timer, but the body still waits for the quick ACK's round trip.
    assert n["first_us"] >= 1.75 * RTT_US, n["first_us"]
    assert len(n["requests_us"]) - 2 <= n["delayed_acks"] <= len(n["requests_us"]) - 1
    assert "delay 10 ms each way" in b["fact"]


# --- the verdicts: the recorded run with one figure changed -----------------------------------

def recorded() -> nagle.Result:
    [r] = html.read_results([json.loads((LESSON_RUNS / "nagle.json").read_text())])
    assert isinstance(r, nagle.Result) and r.ok and r.facts is not None
    return r


@pytest.mark.pure
def test_the_recorded_run_has_both_links_and_is_shown() -> None:
    r = recorded()
    assert r.facts is not None
    assert [x.link.kind for x in r.facts.rounds] == ["loopback", "veth"]
    assert nagle.judge(r.facts.rounds) and worded(r).fact.startswith(
        "Nagle's algorithm made each write-write-read request wait 44.0 ms longer")


def with_way(r: nagle.Result, index: int, way: str, **changes: Any) -> nagle.Result:
    """The run with one way of one round changed, and judged again."""
    assert r.facts is not None
    rounds = list(r.facts.rounds)
    rd = rounds[index]
    ws = tuple(replace(w, **changes) if w.way == way else w for w in rd.ways)
    rd = replace(rd, ways=ws)
    rounds[index] = replace(rd, shown=not nagle.shortfalls(rd))
    facts = replace(r.facts, rounds=tuple(rounds))
    return worded(replace(r, ok=nagle.judge(rounds), facts=facts, fact=""))


@pytest.mark.pure
@pytest.mark.parametrize(("index", "way", "changes", "said"), [
    (0, "nodelay", {"steady_us": 40_000.0},
     "Nagle's requests were not 30 ms slower than TCP_NODELAY's"),
    (0, "nagle", {"delayed_acks": 40},
     "the server's delayed-ACK timer fired for the first request too"),
    (0, "nagle", {"delayed_acks": 2},
     "the server's delayed-ACK timer fired for fewer than half the requests after the first"),
    (1, "one-write", {"steady_us": 80_000.0},
     "Nagle's requests were not 30 ms slower than one sendmsg()'s"),
])
def test_each_failed_check_is_said(index: int, way: str, changes: dict[str, Any],
                                   said: str) -> None:
    bad = with_way(recorded(), index, way, **changes)
    assert not bad.ok
    assert bad.fact.startswith("expected each request of a write-write-read client to wait")
    assert f"NOT shown: {bad.facts.rounds[index].link.words()}: {said}" in bad.fact  # type: ignore[union-attr]
    assert "; saw: " in bad.fact  # and every figure, as measured


@pytest.mark.pure
def test_a_delayed_link_that_could_not_be_made_is_said_and_loopback_still_judged() -> None:
    r = recorded()
    assert r.facts is not None
    first, second = r.facts.rounds
    skipped = replace(second, ways=(), shown=False,
                      skip="this kernel has no veth (fix: load the veth module)")
    rounds = (first, skipped)
    assert nagle.judge(rounds)  # the link given was shown
    text = worded(replace(r, facts=replace(r.facts, rounds=rounds), fact="")).fact
    assert "not measured: this kernel has no veth" in text
    # A skipped first round (the link given) is never shown.
    assert not nagle.judge((replace(first, ways=(), skip="no"), second))
    # A round that ran and failed is not shown either, and says why.
    failed = replace(second, ways=(), shown=False, error="the nagle client exited 1: boom")
    assert nagle.shortfalls(failed) == ["failed"] and not nagle.judge((first, failed))
    text = worded(replace(r, ok=False, facts=replace(r.facts, rounds=(first, failed)),
                          fact="")).fact
    assert text.startswith("expected each request") and "failed: the nagle client exited 1" \
        in text


@pytest.mark.pure
def test_terminal_lines_show_each_link_and_way() -> None:
    lines = result_lines(worded(recorded()))
    rows = [line.split() for line in lines]
    kinds = [row[0] for row in rows if row and row[0] in ("loopback", "veth,")]
    assert kinds == ["loopback"] * 3 + ["veth,"] * 3
