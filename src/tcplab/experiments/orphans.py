"""Sockets no process holds: ``tcplab experiment orphans``.

A choreography (``python -m tcplab.agents.orphans``) runs in a sandbox: five
clients close() while the server holds its ends (FIN_WAIT2 minisockets, which
/proc/net/sockstat counts as "tw"), until tcp_fin_timeout drops them; five
servers close() behind unsent data (orphans in FIN_WAIT1); and one orphan
whose peer went silent, given up after tcp_orphan_retries (the agent's
docstring cites the kernel). After each step a ``Look``: the namespace's
sockets by state beside sockstat's tw and orphan.

The verdict rests on counts: exactly five FIN_WAIT2 and "tw 5" with no
TIME_WAIT, then none; five FIN_WAIT1 orphans counted in the machine's orphan
figure (others may add to it, never take ours away); the silent peer's orphan
retransmitted at least tcp_orphan_retries times and was gone. Times are
checked only where a late timer cannot break them: the minisockets lived at
least tcp_fin_timeout (less keepalive.EARLY_S, 0.3 s).

Across a real link (``--link veth``) the clients are at the net's client end, the
servers at its server end, and records_on's setup (``sysctls_at_ends``) sets the
sysctls there through the sysctl agent. The checks are the same; only the times
say the link: the minisockets are made when the server's ACK of the FIN arrives,
and the orphan's retransmission timeouts grow with the round trip (measured
--quick: the minisockets lived 3.1, 3.2 and 4.8 s and the orphan 1.7, 1.3 and
4.8 s unshaped, at 50 ms and at 200 ms each way; shown with 5% loss and 10
Mbit/s too, one run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tcplab.agents.orphans import CASES, FIN_TIMEOUT_S, ORPHAN_RETRIES, Look, N
from tcplab.errors import ExperimentFailed
from tcplab.experiments import result as base
from tcplab.experiments.choreography import records_on
from tcplab.experiments.keepalive import EARLY_S
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec
from tcplab.experiments.result import Event, Progress, say_nothing

#: --quick: the minisockets' wait, in seconds: the full run's 3 s, not less, because the
#: first look must come before it ends (a loaded machine can stall that look by a
#: second); and one retry for the orphan (measured: gone after 1.7 s and 3
#: retransmissions, against 3.4 s and 4 with 2).
QUICK_FIN_TIMEOUT_S = 3
QUICK_ORPHAN_RETRIES = 1


@dataclass(frozen=True, slots=True)
class RunWith:
    connections: int  # clients (fin-wait2) and servers (fin-wait1) that closed
    tcp_fin_timeout: int  # the namespace's, seconds
    tcp_orphan_retries: int  # the namespace's


@dataclass(frozen=True, slots=True)
class Facts:
    looks: tuple[Look, ...]  # two per case, in the agent's order


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The orphans experiment's result: the Looks, no variants."""


def states_words(states: dict[str, int]) -> str:
    """``FIN_WAIT2 5, CLOSE_WAIT 5`` or ``no socket``."""
    return ", ".join(f"{k} {v:,}" for k, v in states.items()) or "no socket"


def look_words(x: Look) -> str:
    text = (f"{x.case}: {x.step}: {states_words(x.states)}; sockstat tw {x.sockstat_tw}, "
            f"orphan {x.sockstat_orphan} (the machine's)")
    if x.lived_s is not None:
        text += f"; {x.lived_s:.1f} s after close()"
    if x.retransmits is not None:
        text += f", {x.retransmits} retransmissions"
    return text


def sysctls_at_ends(fin: int, retries: int) -> Callable[[Ends], None]:
    """On a net's link, what the agent sets itself on loopback: tcp_fin_timeout at both
    ends, tcp_orphan_retries at the client's, where the orphan is (the fin-wait1 case's
    orphans, at the server, keep the kernel's default, as on loopback: the agent there
    sets it only before the last case). Through the sysctl agent's guarded --set --netns,
    read back."""
    def setup(e: Ends) -> None:
        if e.kind == "loopback":
            return  # the agent sets them in its sandbox
        fin_s = {"net.ipv4.tcp_fin_timeout": str(fin)}
        for role, values in (("client", {**fin_s, "net.ipv4.tcp_orphan_retries": str(retries)}),
                             ("server", fin_s)):
            got = e.set_sysctls(role, values)
            if got != values:
                raise ExperimentFailed(f"the {role}'s end has {got} after setting {values}")
    return setup


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    fin = QUICK_FIN_TIMEOUT_S if quick else FIN_TIMEOUT_S
    retries = QUICK_ORPHAN_RETRIES if quick else ORPHAN_RETRIES
    looks, used = records_on(link, "orphans",
                             ["--fin-timeout", str(fin), "--orphan-retries", str(retries)],
                             Look, "the orphans choreography", timeout=150,
                             setup=sysctls_at_ends(fin, retries))
    events = []
    for x in looks:
        line = look_words(x)
        events.append(Event(x.t, line))
        progress(f"  {line}")
    return Result(experiment="orphans", ok=judge(looks, fin, retries),
                  settings=RunWith(N, fin, retries), facts=Facts(looks=looks),
                  events=tuple(events), link=used)


def pair(looks: Sequence[Look], case: str) -> tuple[Look, Look] | None:
    """A case's two looks (after its first step, at its end); None if it has not two."""
    found = [x for x in looks if x.case == case]
    return (found[0], found[1]) if len(found) == 2 else None


def fin_wait2_shown(looks: Sequence[Look], fin_timeout: int) -> bool:
    """N FIN_WAIT2 minisockets counted as sockstat tw with no TIME_WAIT, the server's N
    CLOSE_WAIT beside them; then, at least tcp_fin_timeout later, none and tw 0."""
    found = pair(looks, "fin-wait2")
    if found is None:
        return False
    first, last = found
    return (first.states == {"CLOSE_WAIT": N, "FIN_WAIT2": N} and first.sockstat_tw == N
            and last.states == {"CLOSE_WAIT": N} and last.sockstat_tw == 0
            and last.lived_s is not None and last.lived_s >= fin_timeout - EARLY_S)


def fin_wait1_shown(looks: Sequence[Look]) -> bool:
    """N orphans in FIN_WAIT1, counted in the machine's orphan figure; then gone."""
    found = pair(looks, "fin-wait1")
    if found is None:
        return False
    first, last = found
    return (first.states.get("FIN_WAIT1") == N and first.sockstat_orphan >= N
            and "FIN_WAIT1" not in last.states)


def orphan_retries_shown(looks: Sequence[Look], retries: int) -> bool:
    """The orphan in FIN_WAIT1 retransmitted its FIN (at least ``retries`` times), then
    was gone."""
    found = pair(looks, "orphan-retries")
    if found is None:
        return False
    first, last = found
    return (first.states == {"FIN_WAIT1": 1} and last.states == {}
            and last.lived_s is not None and last.retransmits is not None
            and last.retransmits >= retries)


def judge(looks: Sequence[Look], fin_timeout: int, retries: int) -> bool:
    """Shown: every case, in the agent's order, showed what it set out to."""
    return (list(dict.fromkeys(x.case for x in looks)) == list(CASES)
            and fin_wait2_shown(looks, fin_timeout) and fin_wait1_shown(looks)
            and orphan_retries_shown(looks, retries))
