"""A peer gone silent: keep-alive and TCP_USER_TIMEOUT: ``tcplab experiment keepalive``.

A choreography (``python -m tcplab.agents.keepalive``) runs in a sandbox: a
veth link to a peer namespace (made over rtnetlink: no tool needed), one
connection per case, the peer's end set down, and the client's recv() blocked
until the kernel gives up (the agent's docstring cites tcp_keepalive_timer and
tcp_write_timeout). Each case is a ``Silent`` record: the options set, when the
read failed with which errno, and the namespace's counters (keep-alive probes,
retransmissions, aborts on timeout) over the case.

The verdict rests on counts, which a loaded machine does not change: the
keep-alive case sent exactly KEEPCNT probes, the user timeout ended its case
with fewer probes than KEEPCNT, the retransmitting case sent no probe and
retransmitted; every case ended in ETIMEDOUT with one TCPAbortOnTimeout
(tcp_write_err counts it). The times are checked only where a late timer cannot
break them: never before what the options allow (timers fire late, not early),
less EARLY_S (0.3 s), since the agent's clock starts late on a loaded machine.

Across a real link (``--link veth``: choreography.records_on runs the agent at the
server's end of a temporary net, its client socket at the client's end) the peer
goes silent by nftables rules in the server's namespace instead of a veth end set
down (the agent's docstring says why). The keep-alive figures do not depend on
the link: the timer counts from the last segment received (the SYN-ACK, which
connect() returned on), and the probes go 1 s apart whatever the round trip
(measured --quick: the keepalive case failed at 3.1 s and the user timeout's at
2.0 s unshaped, at 50 ms and at 200 ms each way). The retransmitting case does:
its user timeout is judged only at a retransmission timeout (tcp_timer.c,
retransmits_timed_out: false before the first one), and the RTO grows with the
round trip, so it failed at 1.7 s unshaped, 2.0 s at 50 ms and 3.6 s at 200 ms
each way. Its checks still hold (a lower bound on the time; at least one
retransmission, which that same rule requires before the verdict); only its
time says the link.
With 5% loss each way it was shown too (one run: a lost segment of the setup is
retransmitted, and the counts judged are the silent phase's).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from tcplab.agents.keepalive import CASES, Silent
from tcplab.errors import errno_name
from tcplab.experiments import result as base
from tcplab.experiments.choreography import records_on
from tcplab.experiments.link import LOOPBACK, LinkSpec
from tcplab.experiments.result import Event, Progress, say_nothing
from tcplab.words import plural

#: Timers fire late, never early; but the agent's clock starts when connect() returns,
#: after the connection's last received segment (the SYN-ACK) by however long a loaded
#: machine took to run the agent again. The counts carry the verdict; the times only
#: have to be no earlier than the options allow, give or take this.
EARLY_S = 0.3


@dataclass(frozen=True, slots=True)
class RunWith:
    quick: bool  # the agent's shorter timers (its QUICK table)


@dataclass(frozen=True, slots=True)
class Facts:
    silences: tuple[Silent, ...]  # keepalive, keepalive+user-timeout, retransmit+user-timeout


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The keepalive experiment's result: one Silent per case, no variants."""


def error_words(s: Silent) -> str:
    """``ETIMEDOUT ("Connection timed out") at 4.1 s`` or ``no error within the guard``."""
    if s.errno is None or s.error_at_s is None:
        return "no error within the agent's 30 s guard"
    return f"{errno_name(s.errno)} (\"{s.error}\") at {s.error_at_s:.1f} s"


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    silences, used = records_on(link, "keepalive", ["--quick"] if quick else [], Silent,
                                "the keepalive choreography", timeout=150)
    events = []
    for s in silences:
        line = (f"{s.case}: the peer silent from {s.down_at_s:.1f} s; "
                f"{plural(s.keepalive_probes, 'keep-alive probe')}, "
                f"{plural(s.retransmits, 'retransmission')}; recv(): {error_words(s)}")
        events.append(Event(s.t, line))
        progress(f"  {line}")
    return Result(experiment="keepalive", ok=judge(silences), settings=RunWith(quick=quick),
                  facts=Facts(silences=silences), events=tuple(events), link=used)


def by_case(silences: Sequence[Silent]) -> dict[str, Silent]:
    return {s.case: s for s in silences}


def timed_out(s: Silent) -> bool:
    """The kernel gave up: recv() failed with ETIMEDOUT, one abort on timeout."""
    return (s.errno == errno.ETIMEDOUT and s.error_at_s is not None
            and s.aborted_on_timeout == 1)


def case_shown(s: Silent | None) -> bool:
    """What this case set out to show (by its name), from its counts and times."""
    if s is None or not timed_out(s) or s.error_at_s is None:
        return False
    if s.case == "keepalive":
        # KEEPCNT probes, none answered, and not before KEEPIDLE + KEEPCNT x KEEPINTVL.
        assert s.keepidle_s is not None and s.keepintvl_s is not None and s.keepcnt
        return (s.keepalive_probes == s.keepcnt
                and s.error_at_s >= s.keepidle_s + s.keepcnt * s.keepintvl_s - EARLY_S)
    if s.case == "keepalive+user-timeout":
        # The user timeout ended it: at least one probe, fewer than KEEPCNT, not before it.
        assert s.keepcnt and s.user_timeout_ms
        return (1 <= s.keepalive_probes < s.keepcnt
                and s.error_at_s >= s.user_timeout_ms / 1000 - EARLY_S)
    # retransmit+user-timeout: no probe (data in flight), retransmissions, and not before
    # the user timeout counted from the first unacknowledged send (after the link went down).
    assert s.user_timeout_ms
    return (s.keepalive_probes == 0 and s.retransmits >= 1
            and s.error_at_s >= s.down_at_s + s.user_timeout_ms / 1000 - EARLY_S)


def judge(silences: Sequence[Silent]) -> bool:
    """Shown: every case, in the agent's order, showed what it set out to."""
    by = by_case(silences)
    return list(by) == list(CASES) and all(case_shown(by[c]) for c in CASES)
