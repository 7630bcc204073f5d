"""A listener that never accept()s: its SYN and accept queues, ``tcplab experiment syn-queue``.

A choreography (``python -m tcplab.agents.syn_queue BACKLOG``) runs in a
sandbox, whose own sysctls it sets: three rounds (syncookies on; the same with
tcp_abort_on_overflow = 1; syncookies off), each on a listener that never calls
accept(): BACKLOG clients fill its accept queue, BACKLOG + 3 more arrive at once
with their final ACKs held back (so they overflow it when the ACKs come), and 3
more arrive when it is full. One ``Phase`` record per phase: the accept queue
(LISTEN Recv-Q), the request sockets (the SYN queue), the clients' states, the
clients ESTABLISHED while the server has no full socket for them, the errors
their next recv() got, and the namespace's TcpExt counters over the phase
(agents/syn_queue.py cites the kernel for each step).

Across a link (``--link veth``) the listener is in the net's server namespace
and the clients in its client's; one net serves the three rounds, each round's
sysctls set in the server's namespace before it starts (control.set_sysctls,
the sysctl agent's guarded ``--set --netns``), and the agent runs each round
on a fresh port.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tcplab.agents.syn_queue import EXTRA, ROUNDS, ClientError, Phase
from tcplab.errors import errno_name
from tcplab.experiments import result as base
from tcplab.experiments.choreography import agent_records, records
from tcplab.experiments.link import LOOPBACK, LinkSpec, LinkUsed, ends
from tcplab.experiments.result import Event, Progress, say_nothing
from tcplab.words import plural


@dataclass(frozen=True, slots=True)
class RunWith:
    backlog: int  # listen()'s backlog, and tcp_max_syn_backlog
    burst: int  # clients whose final ACK was held back, after the backlog's worth
    late: int  # clients that connected once the accept queue was full


@dataclass(frozen=True, slots=True)
class Facts:
    phases: tuple[Phase, ...]  # per round (cookies, abort, no-cookies): filled, burst, acks, syn


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The syn-queue experiment's result: a Phase per phase of each round, no variants."""


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    backlog = 4 if quick else 8
    what = "the syn-queue choreography"
    used = None
    if link.kind == "loopback":
        phases = records("syn_queue", [str(backlog)], Phase, what)
    else:
        phases, used = across(link, backlog, what)
    events = []
    for ph in phases:
        line = f"{ph.round}, {ph.phase}: {phase_words(ph)}"
        events.append(Event(ph.t, line))
        progress(f"  {line}")
    return Result(experiment="syn-queue", ok=judge(phases, backlog),
                  settings=RunWith(backlog=backlog, burst=backlog + EXTRA, late=EXTRA),
                  facts=Facts(phases=phases), events=tuple(events), link=used)


def across(link: LinkSpec, backlog: int, what: str) -> tuple[tuple[Phase, ...], LinkUsed]:
    """The three rounds in one net: each round's sysctls set in the server's namespace
    (where the listener is: they are read through sock_net of the listener), then the
    agent for that round."""
    phases: list[Phase] = []
    with ends(link, {"net.ipv4.tcp_max_syn_backlog": backlog}, prefix="synqueue") as e:
        started = time.monotonic()
        for name, cookies, abort in ROUNDS:
            e.set_sysctls("server", {"net.ipv4.tcp_syncookies": str(cookies),
                                     "net.ipv4.tcp_abort_on_overflow": str(abort)})
            # Each round's agent counts from its own start: one timeline from the first's.
            offset = time.monotonic() - started
            phases += [replace(p, t=round(p.t + offset, 3)) for p in agent_records(
                e, "syn_queue", [str(backlog), "--round", name], Phase, what)]
        return tuple(phases), e.used


def states_words(states: dict[str, int]) -> str:
    """``8 ESTABLISHED, 3 SYN_SENT``."""
    return ", ".join(f"{n:,} {s}" for s, n in states.items() if n) or "none"


def errors_words(errors: Sequence[ClientError]) -> str:
    """``8 x [Errno 104] ECONNRESET: Connection reset by peer``, or ``none``."""
    return "; ".join(f"{e.clients:,} x [Errno {e.errno}] {errno_name(e.errno)}: {e.error}"
                     for e in errors) or "none"


#: The phase whose clients' recv() the agent leaves alone (their ACK is still held).
UNREAD = "burst"


def phase_words(ph: Phase) -> str:
    """One phase as the event line says it (the figures, no verdict)."""
    moved = ", ".join(f"{k} {v:,}" for k, v in ph.counters.items()
                      if v and k != "DelayedACKs")
    read = "" if ph.phase == UNREAD else f"; errors: {errors_words(ph.errors)}"
    return (f"{plural(ph.clients, 'client')} ({states_words(ph.client_states)}); accept queue "
            f"{ph.accept_queue}/{ph.backlog}, {plural(ph.request_sockets, 'request socket')}; "
            f"ESTABLISHED without a server socket: {ph.established_request} (request socket "
            f"only) + {ph.established_none} (none){read}" + (f"; {moved}" if moved else ""))


def find(phases: Sequence[Phase], round_: str, phase: str) -> Phase | None:
    return next((p for p in phases if p.round == round_ and p.phase == phase), None)


def resets(ph: Phase | None) -> int:
    """Clients whose next recv() got ECONNRESET."""
    return 0 if ph is None else sum(e.clients for e in ph.errors if e.errno == errno.ECONNRESET)


def stranded(ph: Phase | None) -> int:
    """Clients ESTABLISHED while the server has no full socket for them."""
    return 0 if ph is None else ph.established_request + ph.established_none


def judge(phases: Sequence[Phase], backlog: int) -> bool:
    """Shown: in every round, on its own sysctls, the accept queue held backlog + 1 and
    no more; the 3 clients that came then sat in SYN_SENT with no error while
    ListenOverflows and ListenDrops counted their SYNs; with tcp_abort_on_overflow = 0
    clients were left ESTABLISHED with no full socket on the server and no error,
    ListenOverflows counting them; with it 1, clients got ECONNRESET."""
    for name, cookies_on, abort_on in ROUNDS:
        acks, syn = find(phases, name, "acks"), find(phases, name, "syn")
        if acks is None or syn is None or acks.accept_queue != backlog + 1:
            return False
        # The round ran on its own sysctls (across a link set from outside, before it).
        if any((p.syncookies, p.abort_on_overflow, p.max_syn_backlog)
               != (cookies_on, abort_on, backlog) for p in phases if p.round == name):
            return False
        if (syn.client_states != {"SYN_SENT": EXTRA} or syn.errors
                or syn.counters["ListenOverflows"] < EXTRA
                or syn.counters["ListenDrops"] < EXTRA):
            return False
    cookies, abort = find(phases, "cookies", "acks"), find(phases, "abort", "acks")
    assert cookies is not None and abort is not None
    return (stranded(cookies) >= 1 and not cookies.errors
            and cookies.counters["ListenOverflows"] >= stranded(cookies)
            and resets(abort) >= 1)
