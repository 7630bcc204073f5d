"""``tcplab experiment syn-queue``, as a user runs it, and its choreography in both sandboxes.

The experiment runs for real in a private network namespace (as root, or as an
ordinary user in a user+net namespace) whose sysctls its agent writes; the
checks are what a user reads: the accept queue at backlog + 1, the clients in
SYN_SENT with no error, the clients ESTABLISHED with no server socket, the
counters, ECONNRESET with tcp_abort_on_overflow = 1, and "shown". The agent is
also run in each kind of sandbox (root's net namespace; a user namespace, which
root can make too), and the judge is held to the recorded run and to that run
with one fact taken away.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tcplab.agents.io import command, private_netns
from tcplab.agents.syn_queue import EXTRA, ClientError, Phase
from tcplab.experiments import syn_queue
from tcplab.experiments.sandbox import Sandbox
from tcplab.records import from_json_line
from tcplab.report import html
from tests.helpers import USERS, one_json, run_as, run_tcplab, userns_allowed

GUARD = 60.0  # seconds: a hang guard only
RECORDED = Path(__file__).parent / "data" / "lessons" / "syn-queue.json"




def by(phases: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["round"], p["phase"]): p for p in phases}


@pytest.mark.privileged
def test_full_accept_queue_drops_syns_and_final_acks() -> None:
    b = one_json(run_tcplab("experiment", "syn-queue", "--json", timeout=120))
    assert b["experiment"] == "syn-queue" and b["skipped"] is None
    assert b["ok"] is True, b["fact"]
    backlog = b["settings"]["backlog"]
    assert b["settings"] == {"backlog": 8, "burst": 11, "late": 3}
    p = by(b["facts"]["phases"])
    assert list(p) == [(r, ph) for r in ("cookies", "abort", "no-cookies")
                       for ph in ("filled", "burst", "acks", "syn")]
    for r, cookies, abort in (("cookies", 1, 0), ("abort", 1, 1), ("no-cookies", 0, 0)):
        # The namespace's own sysctls, as the agent set them for the round.
        assert {(x["syncookies"], x["abort_on_overflow"], x["max_syn_backlog"])
                for k, x in p.items() if k[0] == r} == {(cookies, abort, backlog)}, r
        # Filled to the backlog: every client connected and queued.
        assert p[r, "filled"]["accept_queue"] == backlog
        assert p[r, "filled"]["client_states"] == {"ESTABLISHED": backlog}
        # The accept queue holds backlog + 1 (sk_acceptq_is_full: more than the backlog).
        assert p[r, "acks"]["accept_queue"] == backlog + 1, r
        # Then a SYN is dropped: SYN_SENT, no error, counted.
        syn = p[r, "syn"]
        assert syn["client_states"] == {"SYN_SENT": EXTRA} and syn["errors"] == [], r
        assert syn["counters"]["ListenOverflows"] >= EXTRA, r
        assert syn["counters"]["ListenDrops"] >= EXTRA, r
        assert syn["accept_queue"] == backlog + 1, r
    # Final ACKs dropped: clients ESTABLISHED, the server holding no full socket for them.
    acks = p["cookies", "acks"]
    stranded = acks["established_request"] + acks["established_none"]
    assert stranded >= 1 and acks["errors"] == []
    assert acks["counters"]["ListenOverflows"] >= stranded
    assert acks["client_states"] == {"ESTABLISHED": backlog + 3}
    # tcp_abort_on_overflow = 1: a RST instead, the client's recv() ECONNRESET.
    reset = p["abort", "acks"]["errors"]
    assert [(e["errno"], e["error"]) for e in reset] == [(104, "Connection reset by peer")]
    assert reset[0]["clients"] >= 1
    assert p["abort", "acks"]["counters"]["EmbryonicRsts"] == reset[0]["clients"]
    assert "[Errno 104] ECONNRESET: Connection reset by peer" in b["fact"]
    assert f"the accept queue held {backlog + 1} and no more" in b["fact"]


DELAY_MS = 20


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_across_a_delayed_veth_link(user: str, nobody_venv: Path | None) -> None:
    """The listener in the net's server namespace on each round's sysctls (set there from
    outside), the clients in the client's; the held ACKs still come from the clients'
    delayed-ACK timer (the client namespace's DelayedACKs), a one-way delay later."""
    r = run_as(user, nobody_venv, "experiment", "syn-queue", "--quick", "--link", "veth",
               "--delay", str(DELAY_MS), "--json", timeout=GUARD)
    b = one_json(r, shown=True)
    assert b["link"]["kind"] == "veth" and "delay" in b["link"]["mechanisms"]
    backlog = b["settings"]["backlog"]
    p = by(b["facts"]["phases"])
    assert list(p) == [(r, ph) for r in ("cookies", "abort", "no-cookies")
                       for ph in ("filled", "burst", "acks", "syn")]
    for r_, cookies, abort in (("cookies", 1, 0), ("abort", 1, 1), ("no-cookies", 0, 0)):
        assert {(x["syncookies"], x["abort_on_overflow"], x["max_syn_backlog"])
                for k, x in p.items() if k[0] == r_} == {(cookies, abort, backlog)}, r_
        assert p[r_, "filled"]["client_states"] == {"ESTABLISHED": backlog}, r_
        burst, acks = p[r_, "burst"], p[r_, "acks"]
        # Sampled once every SYN-ACK had crossed, before any held ACK left.
        assert burst["counters"]["DelayedACKs"] == 0, r_
        # Every ESTABLISHED client's ACK was sent by its delayed-ACK timer.
        assert acks["counters"]["DelayedACKs"] == burst["client_states"]["ESTABLISHED"], r_
        assert acks["accept_queue"] == backlog + 1, r_
        assert p[r_, "syn"]["client_states"] == {"SYN_SENT": EXTRA}, r_
        # One timeline: the rounds' agents ran one after another.
        assert p[r_, "filled"]["t"] < burst["t"] < acks["t"] < p[r_, "syn"]["t"], r_
    assert p["abort", "filled"]["t"] > p["cookies", "syn"]["t"]
    assert p["cookies", "burst"]["request_sockets"] == backlog + 1
    assert p["no-cookies", "burst"]["request_sockets"] == backlog - backlog // 4 + 1
    assert "[Errno 104] ECONNRESET" in b["fact"]


@pytest.mark.privileged
def test_syn_queue_with_and_without_syncookies() -> None:
    """The SYN queue holds backlog + 1 with syncookies on, the rest answered with cookies;
    with them off (tcp_max_syn_backlog = backlog) fewer, the rest dropped. Counted in the
    burst, before any held ACK left; a try whose ACK left early was redone (tries)."""
    b = one_json(run_tcplab("experiment", "syn-queue", "--quick", "--json", timeout=120))
    assert b["ok"] is True, b["fact"]
    backlog = b["settings"]["backlog"]
    p = by(b["facts"]["phases"])
    on, off = p["cookies", "burst"], p["no-cookies", "burst"]
    assert on["counters"]["DelayedACKs"] == off["counters"]["DelayedACKs"] == 0
    assert on["request_sockets"] == backlog + 1
    assert on["counters"]["SyncookiesSent"] == EXTRA - 1
    assert on["client_states"] == {"ESTABLISHED": backlog + EXTRA}
    # Without cookies tcp_conn_request drops a SYN once fewer than a quarter of
    # tcp_max_syn_backlog (= backlog) is free: it keeps backlog - backlog // 4 + 1.
    kept = backlog - backlog // 4 + 1
    assert off["request_sockets"] == kept
    assert off["client_states"] == {"ESTABLISHED": kept, "SYN_SENT": backlog + EXTRA - kept}
    assert off["counters"]["ListenDrops"] == backlog + EXTRA - kept
    assert off["counters"]["SyncookiesSent"] == 0


@pytest.mark.privileged
def test_text_has_the_table() -> None:
    r = run_tcplab("experiment", "syn-queue", "--quick", timeout=120)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment syn-queue: shown\n"), text
    rows = [line.split() for line in text.splitlines()]
    assert ["round", "phase", "clients", "accept", "queue", "SYN", "queue", "ESTABLISHED,",
            "no", "server", "socket", "recv()", "errors", "ListenOverflows", "ListenDrops",
            "cookies", "sent"] in rows
    assert any(row[:5] == ["cookies", "syn", "3", "SYN_SENT", "5/4"] for row in rows), text
    assert any(row[:2] == ["abort", "acks"] and "ECONNRESET" in row for row in rows), text


@pytest.mark.privileged
@pytest.mark.parametrize("user", [False, True], ids=["root-netns", "user-netns"])
def test_agent_in_each_sandbox(user: bool) -> None:
    if not user and os.geteuid() != 0:
        pytest.skip("Sandbox(user=False) needs root; the user-namespace case runs instead")
    if user and not userns_allowed():
        pytest.skip("unprivileged user namespaces are disabled on this kernel")
    with Sandbox({}, user=user) as sb:
        r = sb.run(command("syn_queue", "4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    phases = [from_json_line(Phase, line) for line in r.stdout.splitlines()]
    assert len(phases) == 12
    # The agent wrote the namespace's sysctls (a user namespace's root may).
    assert [(p.syncookies, p.abort_on_overflow, p.max_syn_backlog) for p in phases[::4]] == [
        (1, 0, 4), (1, 1, 4), (0, 0, 4)]
    assert syn_queue.judge(phases, 4), [syn_queue.phase_words(p) for p in phases]


@pytest.mark.privileged
def test_agent_with_round_writes_no_sysctl() -> None:
    """--round (how the experiment runs it across a link, after setting the round's
    sysctls in the server's namespace) runs on the namespace's sysctls as they are."""
    if not userns_allowed() and os.geteuid() != 0:
        pytest.skip("unprivileged user namespaces are disabled on this kernel")
    with Sandbox({}, user=os.geteuid() != 0) as sb:
        r = sb.run(command("syn_queue", "4", "--round", "abort"), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    phases = [from_json_line(Phase, line) for line in r.stdout.splitlines()]
    assert [(p.round, p.phase) for p in phases] == [
        ("abort", ph) for ph in ("filled", "burst", "acks", "syn")]
    # A new namespace's defaults (tcp_abort_on_overflow 0; tcp_max_syn_backlog at least
    # 128: tcp_set_hashinfo from tcp_sk_init, net/ipv4/tcp_ipv4.c): the round's own were
    # not written.
    assert {(p.syncookies, p.abort_on_overflow) for p in phases} == {(1, 0)}
    assert all(p.max_syn_backlog >= 128 for p in phases)
    assert not syn_queue.judge(phases, 4)


@pytest.mark.pure
def test_agent_refuses_a_small_backlog() -> None:
    r = subprocess.run(command("syn_queue", "3"), capture_output=True, timeout=GUARD)
    assert r.returncode == 2 and b"must be 4 or more" in r.stderr


@pytest.mark.pure
def test_agent_knows_it_is_not_in_a_sandbox() -> None:
    # pytest runs where its shell runs: the agent would refuse to write sysctls here
    # (it checks before any write; it is not run here to see that).
    assert not private_netns()


def recorded() -> syn_queue.Result:
    [r] = html.read_results([json.loads(RECORDED.read_text())])
    assert isinstance(r, syn_queue.Result) and r.facts is not None
    return r


def replaced(phases: tuple[Phase, ...], round_: str, phase: str, **change: Any
             ) -> tuple[Phase, ...]:
    return tuple(dataclasses.replace(p, **change) if (p.round, p.phase) == (round_, phase)
                 else p for p in phases)


@pytest.mark.pure
def test_judge_wants_every_part_of_the_lesson() -> None:
    r = recorded()
    assert r.facts is not None and r.settings is not None
    phases, backlog = r.facts.phases, r.settings.backlog
    assert syn_queue.judge(phases, backlog)
    # No resets with tcp_abort_on_overflow = 1: not shown.
    assert not syn_queue.judge(replaced(phases, "abort", "acks", errors=()), backlog)
    # A late client refused instead of left in SYN_SENT: not shown.
    refused = (ClientError(errno.ECONNREFUSED, "Connection refused", 1),)
    assert not syn_queue.judge(replaced(phases, "cookies", "syn", errors=refused), backlog)
    # The accept queue at the backlog, not one more: not shown.
    assert not syn_queue.judge(replaced(phases, "abort", "acks", accept_queue=backlog),
                               backlog)
    # No client left ESTABLISHED without a server socket, and no counter: not shown.
    assert not syn_queue.judge(replaced(phases, "cookies", "acks", established_request=0,
                                        established_none=0), backlog)
    # A round on another round's sysctls (across a link they are set from outside): not shown.
    assert not syn_queue.judge(replaced(phases, "abort", "syn", abort_on_overflow=0), backlog)
    # A round missing: not shown.
    assert not syn_queue.judge(tuple(p for p in phases if p.round != "no-cookies"), backlog)
    # The fact says what was seen instead.
    from tcplab.report.prose import syn_queue_fact

    text = syn_queue_fact(replaced(phases, "abort", "acks", errors=()), backlog)
    assert text.startswith("expected the accept queue to hold 9 (backlog + 1)")
    assert "abort, acks: 11 clients" in text
