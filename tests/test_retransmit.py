"""``tcplab experiment retransmit``: the kernel's SYN rule as tcplab models it, the
judges on figures around their margins, and real runs across a temporary net (as
root with the tracepoint; as nobody with packets and counters only, or skipped with
the reason)."""

from __future__ import annotations

import errno
import os
import subprocess
from typing import Any

import pytest

from tcplab.agents.retransmit import not_the_hosts, ruleset
from tcplab.experiments import retransmit as R
from tcplab.experiments.link import LinkUsed
from tcplab.experiments.retransmit import CaseFacts, SynFacts, syn_schedule
from tcplab.report.prose import case_words
from tests.helpers import one_json, tcplab

ROOT = os.geteuid() == 0


# --- the SYN rule (net/ipv4/tcp_timer.c), computed ---------------------------------------------

@pytest.mark.pure
@pytest.mark.parametrize(("retries", "linear", "sent", "fails"), [
    # quick: five linear gaps, then the time limit (2^3 - 1 = 7 s) before a sixth resend
    (2, 4, (0, 1, 2, 3, 4, 5), 7),
    # the 1,1,1,1,1,2,4 (and 8 until the error): the count limit, 3 + 4 resends
    (3, 4, (0, 1, 2, 3, 4, 5, 7, 11), 19),
    # the kernel's defaults: 6 + 4 resends, the error after 131 s
    (6, 4, (0, 1, 2, 3, 4, 5, 7, 11, 19, 35, 67), 131),
    # before Linux 6.5 (no linear timeouts): doubling from the first, 127 s
    (6, None, (0, 1, 3, 7, 15, 31, 63), 127),
    (1, 4, (0, 1, 2), 3),
])
def test_syn_schedule(retries: int, linear: int | None, sent: tuple[int, ...],
                      fails: int) -> None:
    assert syn_schedule(retries, linear) == (tuple(float(t) for t in sent), float(fails))


# --- the judges, around their margins ------------------------------------------------------------

def syn(sent: tuple[float, ...], failed: float, code: int | None = errno.ETIMEDOUT) -> SynFacts:
    model, fail = syn_schedule(2, 4)
    return SynFacts(sent, model, failed, fail, code, "x", 2, 4)


@pytest.mark.pure
def test_syn_judge() -> None:
    good = (0, 1.02, 2.04, 3.06, 4.08, 5.10)
    assert R.syn_shown(syn(good, 7.12))
    assert not R.syn_shown(syn(good, 7.12, code=errno.ECONNREFUSED))
    assert not R.syn_shown(syn(good[:-1], 7.12))  # a SYN missing
    assert not R.syn_shown(syn((0, 0.9, 1.9, 2.9, 3.9, 4.9), 7.0))  # a timer early
    assert not R.syn_shown(syn((0, 1.02, 2.04, 3.06, 4.08, 6.2), 8.2))  # 2 s, not 1
    assert not R.syn_shown(syn(good, 9.5))  # the error 4 s after the last SYN, not 2


def case(name: str, copies: tuple[float, ...], fast: int = 0, timeouts: int = 0,
         rtt: float = 40.0) -> CaseFacts:
    return CaseFacts(name, copies, rtt, 240.0, fast, timeouts, 0, len(copies) - 1, 3)


@pytest.mark.pure
def test_fast_probe_and_rto_judges() -> None:
    assert R.fast_shown(case("middle", (0, 0.041), fast=1))
    assert not R.fast_shown(case("middle", (0, 0.041), fast=1, timeouts=1))
    assert not R.fast_shown(case("middle", (0, 0.25), fast=1))  # as late as an RTO
    assert not R.fast_shown(case("middle", (0, 0.041)))  # not counted as fast
    probe = CaseFacts("probe", (0, 0.127), 40.0, 240.0, 1, 0, 1, 2, 0)
    assert R.probe_shown(probe)
    assert not R.probe_shown(CaseFacts("probe", (0, 0.127), 40.0, 240.0, 1, 1, 1, 2, 0))
    assert not R.probe_shown(CaseFacts("probe", (0, 0.29), 40.0, 240.0, 1, 0, 1, 2, 0))
    assert not R.probe_shown(CaseFacts("probe", (0, 0.127), 40.0, 240.0, 1, 0, 0, 2, 0))
    # A timeout after the probe is the kernel's rule when the probe's SACK came back
    # sooner than the handshake's round trip: RACK ignores an ambiguous SACK (seen in
    # one nobody run: 40.3 against 40.4 ms); not when it came back later.
    ambiguous = CaseFacts("probe", (0, 0.127), 40.6, 244.0, 0, 1, 1, 2, 0, 40.4, 40.3)
    assert R.probe_ambiguous(ambiguous) and R.probe_shown(ambiguous)
    said = case_words(ambiguous)
    assert "sooner than the handshake's 40.4 ms" in said and "tcp_rack_advance" in said
    late = CaseFacts("probe", (0, 0.127), 40.6, 244.0, 0, 1, 1, 2, 0, 40.4, 40.5)
    assert not R.probe_ambiguous(late) and not R.probe_shown(late)
    assert "tcp_rack_advance" not in case_words(late)
    middle = case("middle", (0, 0.041), fast=1)
    assert R.rto_shown(case("tail", (0, 0.29, 0.54), timeouts=1), middle)
    assert not R.rto_shown(case("tail", (0, 0.29, 0.54)), middle)  # no timeout counted
    assert not R.rto_shown(case("tail", (0, 0.29, 0.35), timeouts=1), middle)  # < 200 ms
    assert not R.rto_shown(case("tail", (0, 0.29), timeouts=1), middle)  # no third copy


@pytest.mark.pure
def test_link_for_adds_a_delay_and_says_so() -> None:
    from tcplab.experiments.link import LinkSpec
    from tcplab.net.plan import Shaping

    spec, note = R.link_for(LinkSpec())
    assert spec.kind == "veth" and spec.shaping.delay_ms == R.DEFAULT_DELAY_MS
    assert "loopback" in note
    spec, note = R.link_for(LinkSpec("veth", Shaping(delay_ms=50)))
    assert spec.shaping.delay_ms == 50 and note == ""


@pytest.mark.pure
def test_ruleset_and_the_hosts_namespace() -> None:
    rules = ruleset(20000, 30000, [(b"DROP-MID", 1), (b"DROP-END", 2)], 1500)
    assert "tcp dport 20000 tcp sport 30000 tcp flags & (syn | ack) == syn drop" in rules
    assert f"@ih,0,64 0x{b'DROP-MID'.hex()} quota until 2250 bytes drop" in rules
    assert f"@ih,0,64 0x{b'DROP-END'.hex()} quota until 3750 bytes drop" in rules
    # This test runs in its parent's namespace: the server agent would refuse it.
    assert not not_the_hosts()


# --- real runs ----------------------------------------------------------------------------------

def run_experiment(**kw: Any) -> dict[str, Any]:
    r = subprocess.run(tcplab("experiment", "retransmit", "--quick", "--json"),
                       capture_output=True, stdin=subprocess.DEVNULL, **kw)
    if r.returncode == 4:  # NotSupported: no veth link here (no user namespaces)
        pytest.skip(r.stderr.decode(errors="replace").strip().splitlines()[-1])
    return one_json(r)


def check_shown(body: dict[str, Any], traced: bool) -> None:
    assert body["ok"] is True, body["fact"]
    f = body["facts"]
    assert f["syn"]["errno"] == errno.ETIMEDOUT and len(f["syn"]["sent"]) == 6
    assert [c["name"] for c in f["cases"]] == ["middle", "probe", "tail"]
    assert body["settings"]["link"]["kind"] == "veth"
    assert "loopback has no round trip" in body["settings"]["link_note"]
    if traced:
        assert f["traced"] == f["retransmitted_packets"] == 5 + 1 + 2 + 2
        assert any("tcp:tcp_retransmit_skb" in e["what"] for e in body["events"])
    else:
        assert f["traced"] is None and "root" in f["trace_skipped"]
        assert "tracepoint not traced" in body["fact"]


@pytest.mark.privileged
def test_retransmit_as_this_user() -> None:
    """As root: with the tracepoint. As an ordinary user (the suite run as nobody):
    packets and counters, the tracepoint skipped with the reason."""
    body = run_experiment(timeout=600)
    check_shown(body, traced=ROOT)


@pytest.mark.pure
def test_a_case_run_again_counts_its_last_try_and_says_every_earlier_one() -> None:
    """_result with a redo: the probe case's first try (a timeout) is kept in
    ``earlier`` and worded; the second try's figures decide the verdict."""
    from tcplab.agents.retransmit import Case, Seen
    from tcplab.report.prose import retransmit_fact

    def run(sport: int, timeouts: int) -> list[object]:
        case = Case("probe", sport, 10, 9, 1, 1448, 1000, 0.0, 0.5, 40.0, 244.0,
                    {"TcpExt.TCPLossProbes": 1, "TcpExt.TCPTimeouts": timeouts})
        seq = R.seq_of(case)
        assert seq is not None
        out = [Seen(0.0, True, sport, 8080, "P.", seq - 1448, 0, 2896, False),
                Seen(0.127, True, sport, 8080, "P.", seq, 0, 1448, False)]
        return [case, *out]

    first, again = run(40001, 1), run(40002, 0)
    r = R._result(first, None, "not traced here", R.RunWith(3, 1, LinkUsed(), ""),
                  lambda *a: None, [(again, ["probe"])])
    assert [c.timeouts for c in r.facts.cases] == [0]
    assert [c.timeouts for c in r.facts.earlier] == [1]
    text = retransmit_fact(r.facts, r.settings)
    assert "an earlier try, NOT shown, so run again: the burst's last two segments lost" in text
