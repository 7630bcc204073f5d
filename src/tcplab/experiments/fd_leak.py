"""Experiment 3, the FD leak: a server that never calls close(), until accept() fails.

In a private namespace with ``tcp_fin_timeout`` shortened (5 s), a leak-mode
``tcplab server --fd-limit 256 --backlog 64`` faces a bounded flood of
clients that connect, send, wait briefly for the echo and close. The sampler
(every 100 ms, inside the namespace) records the server's fds, the states on
the port and the listener's accept queue. What it shows, measured:

* fds climb to the limit; accept() fails with EMFILE and the server logs
  "Too many open files" once per backoff step;
* the kernel still completes handshakes into the accept queue (LISTEN Recv-Q
  climbs to backlog + 1): those clients connect but never get an echo; once
  the queue is full, SYNs are dropped and clients hang in SYN_SENT. There is
  no "connection refused";
* every closed client leaves the server's socket in CLOSE_WAIT (accepted or
  still queued) and its own in FIN_WAIT2; the orphaned FIN_WAIT2 dies after
  ``tcp_fin_timeout``; CLOSE_WAIT stays as long as the process holds the fd;
* the fix, the same flood against a server that closes: CLOSE_WAIT 0;
* ``keepalive``: with SO_KEEPALIVE, the leaked sockets leave CLOSE_WAIT once
  the peer is gone (probes get a RST), but the fds stay leaked.

Against your own server (``--server-cmd``) the same rounds run with LEAK=true
and then LEAK empty, and a fd limit set as ``ulimit -n`` would: soft *and*
hard, since Go (1.19 on) raises its soft limit to the hard one at start, which
left a Go server at 20,000 fds that 450 clients never filled (issue 11).

Each round is judged on what it exists to show, and every sentence is built
from what the run measured (issue 11: a summary said "fds hit its limit of
20000 (59 in use), accept() failed with EMFILE" for a run that saw neither):

* a round has ``shown`` (None when skipped), ``skip`` (why, when skipped)
  and ``short`` (the checks that fell short), reasons as data that
  report/prose.py words from the round's own figures into ``skipped``,
  ``lesson`` or ``why_not``;
* a round the server cannot support is skipped with its figures: the leak
  round when the server closed its connections even with LEAK=true, the fix
  round when it leaked without it;
* "the fix leaves no CLOSE_WAIT" is judged on sockets that persist: the
  fewest CLOSE_WAIT over the last second of samples, once the server has had
  time to close (up to 5 s), not the peak. 450 clients closing at once leave
  a transient of a few dozen for one 100 ms sample (26 in one run on this
  loaded machine), which says nothing about a leak.
"""

from __future__ import annotations

import enum
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tcplab.agents.io import command
from tcplab.errors import ExperimentFailed
from tcplab.experiments import result as base
from tcplab.experiments.children import ForeignServer, ServerProcess
from tcplab.experiments.result import Event, Progress, TimelineRow, say_nothing, timeline_of
from tcplab.experiments.sampling import StateSampler
from tcplab.experiments.sandbox import Sandbox
from tcplab.records import RecordError, from_json_line
from tcplab.traffic.flood import FloodResult

PORT = 8080
#: The window over which "persisting" is judged: CLOSE_WAIT present in every sample of
#: it has outlived the moment its peer closed by at least this long.
WINDOW_S = 1.0
#: How long the fix round gives a closing server to close after the flood.
SETTLE_S = 5.0
#: The keep-alive round's idle and interval when none is asked: short, so the suite and
#: a quick run stay short. Go sets 15 s on every accepted connection
#: ((*TCPListener).accept in net/tcpsock_posix.go; defaultTCPKeepAlive in net/dial.go,
#: defaultTCPKeepAliveIdle and defaultTCPKeepAliveInterval in newer Go):
#: ``--keepalive 15`` shows what a Go server does.
KEEPALIVE_S = 2


@dataclass(frozen=True, slots=True)
class Settings:
    fd_limit: int = 256
    backlog: int = 64
    clients: int = 450
    fin_timeout: int = 5
    connect_timeout: float = 2.0
    read_timeout: float = 2.0
    keepalive: bool = False
    keepalive_s: int = KEEPALIVE_S
    server_cmd: str | None = None


@dataclass(frozen=True, slots=True)
class RunWith:
    """The settings as the result records them (``run with:`` in the report)."""

    fd_limit: int
    fd_limit_kind: str  # soft, or soft and hard (--server-cmd), in words
    backlog: int
    clients: int
    tcp_fin_timeout: int
    keepalive: bool
    server: str  # "tcplab server (uvloop)" or "your server (CMD)"
    port: int
    #: The keep-alive round's idle and interval (``--keepalive SECONDS``); None: no such
    #: round (and in results recorded before the option took seconds).
    keepalive_s: int | None = None


class Skip(enum.StrEnum):
    """Why a round did not run, or does not apply (report/prose.py words it)."""

    NEEDS_KEEPALIVE = "needs-keepalive"  # keepalive round against --server-cmd
    LEAKED_WITHOUT_LEAK = "leaked-without-leak"  # fix round: the server leaks anyway
    NO_LEAK_SWITCH = "no-leak-switch"  # leak round: it closed even with LEAK=true


class Short(enum.StrEnum):
    """A check a round failed: each is worded from the round's own figures."""

    DIED = "died"  # the server died
    FDS_SHORT = "fds-short"  # fds peaked below the limit (or the server changed it)
    NO_EMFILE_LINE = "no-emfile-line"  # tcplab's server logged no EMFILE
    NO_CLOSE_WAIT = "no-close-wait"  # keepalive: no socket in CLOSE_WAIT
    CLOSE_WAIT_OVER_QUEUE = "close-wait-over-queue"  # keepalive: more left than queued
    CLOSE_WAIT_STAYED = "close-wait-stayed"  # keepalive: CLOSE_WAIT stayed at its peak
    FDS_FELL = "fds-fell"  # keepalive: the fds came back
    NONE_STAYED = "none-stayed"  # leak: no socket stayed in CLOSE_WAIT
    CLOSED_AFTER_ALL = "closed-after-all"  # leak: CLOSE_WAIT fell under 95% of its peak
    NO_FIN_WAIT2 = "no-fin-wait2"  # leak: no client socket in FIN_WAIT2
    FIN_WAIT2_STAYED = "fin-wait2-stayed"  # leak: FIN_WAIT2 had not expired at the end
    LEFT_CLOSE_WAIT = "left-close-wait"  # fix: CLOSE_WAIT persisted after it closed


@dataclass(frozen=True, slots=True)
class Round:
    """One round (leak, fixed, keepalive): figures, verdict and (from report/prose.py)
    its sentences. A round skipped before it ran keeps its zero defaults."""

    name: str  # "leak", "fixed" or "keepalive"
    shown: bool | None = None  # None: skipped
    skipped: str | None = None  # words: why it was skipped (skip)
    lesson: str | None = None  # words: what it showed, when shown
    why_not: str | None = None  # words: which figure fell short (short)
    fd_limit: int | None = None  # the server's soft limit, as the sampler read it
    fd_limit_hard: int | None = None
    fds_start: int | None = None
    fds_peak: int = 0
    fds_after: int | None = None
    close_wait_peak: int = 0
    close_wait_after: int = 0
    close_wait_persisting: int = 0  # the fewest over the last WINDOW_S of samples
    fin_wait2_peak: int = 0  # while the flood ran (and 1 s after)
    fin_wait2_after: int = 0
    queue_peak: int = 0  # LISTEN Recv-Q
    backlog: int = 0
    syn_sent_peak: int = 0
    emfile_line: str | None = None  # the server's first "Too many open files" line
    emfile_lines: int = 0
    alive: bool = False  # the server was alive at the end
    flood: FloodResult | None = None
    timeline: tuple[TimelineRow, ...] = ()
    skip: Skip | None = None
    short: tuple[Short, ...] = ()
    fd_limit_set: int = 0  # the limit the round asked for
    foreign: bool = False  # the user's --server-cmd, not tcplab server


@dataclass(frozen=True, slots=True)
class Facts:
    """The leak round's figures, and the fix's and keep-alive's that the lessons quote."""

    fd_limit: int | None
    fd_limit_hard: int | None
    fd_limit_set: int
    server_fds_start: int | None
    server_fds_peak: int
    server_close_wait_peak: int
    server_close_wait_after_timeout: int
    server_close_wait_persisting: int
    client_fin_wait2_peak: int
    client_fin_wait2_after_timeout: int
    emfile_seen: bool
    emfile_log_line: str | None
    accept_queue_peak: int
    backlog: int
    clients: FloodResult | None
    server_alive: bool
    fixed_close_wait_peak: int
    #: None in results recorded before it was measured.
    fixed_close_wait_persisting: int | None = None
    fixed_clients: FloodResult | None = None
    keepalive_close_wait_after: int | None = None  # None: no keep-alive round ran
    keepalive_fds_after: int | None = None


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, Round]):
    """The FD leak's result: its rounds, the leak round's timeline and facts."""


def run(settings: Settings | None = None, quick: bool = False,
        progress: Progress = say_nothing) -> Result:
    s = settings or Settings()
    started = time.monotonic()
    events: list[Event] = []

    def mark(what: str, verdict_of: str | None = None, verdict: Round | None = None) -> None:
        events.append(Event(round(time.monotonic() - started, 3), what, verdict_of))
        progress(f"  {what}", verdict)  # a verdict's reason is worded by cli/ (report/prose.py)

    progress("fd-leak: the leaking server")
    leak = _round(s, leak=True, keepalive=None, mark=mark, origin=started)
    progress("fd-leak: the fix (a server that closes)")
    fixed = _round(s, leak=False, keepalive=None, mark=mark, origin=started)
    kept = None
    if s.keepalive and s.server_cmd:
        kept = Round("keepalive", skip=Skip.NEEDS_KEEPALIVE, fd_limit_set=s.fd_limit,
                     foreign=True)
        mark(f"keepalive: skipped ({kept.skip})", verdict_of="keepalive", verdict=kept)
    elif s.keepalive:
        progress(f"fd-leak: leaking, with SO_KEEPALIVE ({s.keepalive_s} s idle and interval)")
        kept = _round(s, leak=True, keepalive=s.keepalive_s, mark=mark, origin=started)
    rounds = tuple(r for r in (leak, fixed, kept) if r is not None)
    ran = [r for r in rounds if r.skip is None]
    facts = Facts(
        fd_limit=leak.fd_limit,
        fd_limit_hard=leak.fd_limit_hard,
        fd_limit_set=s.fd_limit,
        server_fds_start=leak.fds_start,
        server_fds_peak=leak.fds_peak,
        server_close_wait_peak=leak.close_wait_peak,
        server_close_wait_after_timeout=leak.close_wait_after,
        server_close_wait_persisting=leak.close_wait_persisting,
        client_fin_wait2_peak=leak.fin_wait2_peak,
        client_fin_wait2_after_timeout=leak.fin_wait2_after,
        emfile_seen=leak.emfile_line is not None,
        emfile_log_line=leak.emfile_line,
        accept_queue_peak=leak.queue_peak,
        backlog=leak.backlog,
        clients=leak.flood,
        server_alive=leak.alive,
        fixed_close_wait_peak=fixed.close_wait_peak,
        fixed_close_wait_persisting=fixed.close_wait_persisting,
        fixed_clients=fixed.flood,
        keepalive_close_wait_after=(kept.close_wait_after
                                    if kept is not None and kept.skip is None else None),
        keepalive_fds_after=kept.fds_after if kept is not None and kept.skip is None else None,
    )
    server = f"your server ({s.server_cmd})" if s.server_cmd else "tcplab server (uvloop)"
    limit_kind = ("soft and hard, as 'ulimit -n' sets them: Go's raise to the hard limit "
                  "stops there" if s.server_cmd else "soft, set by tcplab server --fd-limit")
    # Without a leak there is nothing for this experiment to show: skipped (worded by
    # report/prose.py from the leak round's reason).
    return Result(
        experiment="fd-leak", ok=leak.skip is None and all(r.shown for r in ran),
        settings=RunWith(fd_limit=s.fd_limit, fd_limit_kind=limit_kind, backlog=s.backlog,
                         clients=s.clients, tcp_fin_timeout=s.fin_timeout,
                         keepalive=s.keepalive, server=server, port=PORT,
                         keepalive_s=s.keepalive_s if s.keepalive else None),
        facts=facts, events=tuple(events), timeline=leak.timeline, variants=rounds,
    )


def _round(s: Settings, leak: bool, keepalive: int | None,
           mark: Callable[..., None], origin: float | None = None) -> Round:
    """One round in its own sandbox. ``mark(what, verdict_of=None)`` records an event;
    the one that states the round's verdict names the round (report/prose.py words it;
    the live line has the reasons as data)."""
    label = "leak" if leak else "fixed"
    if keepalive:
        label = "keepalive"
    with Sandbox({"net.ipv4.tcp_fin_timeout": str(s.fin_timeout)}) as sb:
        server: Any
        if s.server_cmd:
            server = ForeignServer(sb, s.server_cmd, PORT, env={"LEAK": "true" if leak else ""},
                                   fd_limit=s.fd_limit)
            pid = None  # the sampler finds whoever holds the listener
        else:
            args = ["--port", str(PORT), "--fd-limit", str(s.fd_limit),
                    "--backlog", str(s.backlog)]
            if leak:
                args.append("--leak")
            if keepalive:
                args += ["--keepalive", str(keepalive)]
            server = ServerProcess(args, popen=sb.popen)
            server.start()
            pid = server.pid
        sampler = StateSampler(sb, PORT, pid=pid, origin=origin)
        mark(f"{label}: {s.clients} clients connect, send, wait for the echo, close")
        flood = _flood(sb, s)
        mark(f"{label}: {flood.echoed} echoed, {flood.no_echo} connected but got no echo "
             f"(accept queue), {flood.connect_timeouts} never connected (SYN_SENT)")
        after_flood = sampler.now()
        if leak:
            wait = s.fin_timeout + (keepalive * 4 if keepalive else 0) + 2.5
            probes = (f" and for the keep-alive probes ({keepalive} s idle) to find the "
                      "peers gone" if keepalive else "")
            mark(f"{label}: waiting {wait:.0f} s for the clients' FIN_WAIT2 to expire "
                 f"(tcp_fin_timeout = {s.fin_timeout} s){probes}")
            time.sleep(wait)
        else:
            _settle(sampler, after_flood)
        # The last row measured after this moment: "after" figures are never stale.
        sampler.wait_for_row_after(sampler.now())
        rows = list(sampler.rows)
        last = rows[-1] if rows else None
        window = [r for r in rows if r.t >= (last.t if last else 0) - WINDOW_S]
        alive = server.alive()
        log = [line for _, line in server.log if "too many open files" in line.lower()]
        during = [r for r in rows if r.t <= after_flood + 1.0]
        first_fds = next((r.server_fds for r in rows if r.server_fds is not None), None)
        figures = Round(
            name=label,
            fd_limit=sampler.peak_of("fd_limit") or None,
            fd_limit_hard=sampler.peak_of("fd_limit_hard") or None,
            fds_start=first_fds,
            fds_peak=sampler.peak_of("server_fds"),
            fds_after=last.server_fds if last else None,
            close_wait_peak=sampler.peak("CLOSE_WAIT"),
            close_wait_after=sampler.state(last, "CLOSE_WAIT") if last else 0,
            close_wait_persisting=min((sampler.state(r, "CLOSE_WAIT") for r in window),
                                      default=0),
            fin_wait2_peak=max((sampler.state(r, "FIN_WAIT2") for r in during), default=0),
            fin_wait2_after=sampler.state(last, "FIN_WAIT2") if last else 0,
            queue_peak=sampler.peak_of("listen_queue"),
            backlog=sampler.peak_of("backlog"),
            syn_sent_peak=sampler.peak("SYN_SENT"),
            emfile_line=log[0] if log else None,
            emfile_lines=len(log),
            alive=alive,
            flood=flood,
            timeline=timeline_of(sampler),
            fd_limit_set=s.fd_limit,
            foreign=s.server_cmd is not None,
        )
        sampler.stop()
        server.stop()
    r = judge(figures, leak=leak, keepalive=keepalive)
    if leak:
        mark(f"{label}: fds peaked at {r.fds_peak} of {r.fd_limit}, "
             f"CLOSE_WAIT {r.close_wait_peak} -> {r.close_wait_after}, "
             f"FIN_WAIT2 {r.fin_wait2_peak} -> {r.fin_wait2_after}, "
             f"accept queue peak {r.queue_peak}")
    else:
        mark(f"{label}: CLOSE_WAIT peak {r.close_wait_peak}, "
             f"{r.close_wait_persisting} once the server had had time to close")
    if r.skip is not None:
        mark(f"{label}: skipped ({r.skip})", verdict_of=label, verdict=r)
    elif not r.shown:
        mark(f"{label}: NOT shown ({', '.join(r.short)})", verdict_of=label, verdict=r)
    return r


def _settle(sampler: StateSampler, after_flood: float) -> None:
    """Give a closing server time to close: until a whole WINDOW_S of samples shows no
    CLOSE_WAIT, or SETTLE_S has passed."""
    deadline = time.monotonic() + SETTLE_S
    time.sleep(WINDOW_S)
    while time.monotonic() < deadline:
        now = sampler.now()
        window = [r for r in sampler.rows if r.t >= max(after_flood, now - WINDOW_S)]
        if len(window) >= 3 and not any(sampler.state(r, "CLOSE_WAIT") for r in window):
            return
        time.sleep(0.1)


def judge(r: Round, leak: bool, keepalive: int | None) -> Round:
    """The round with shown, skip and short set from its own figures."""
    limit = r.fd_limit or 0
    cw, cw_peak = r.close_wait_persisting, r.close_wait_peak
    if not leak:
        if cw == 0:
            return replace(r, shown=True)
        if r.foreign:
            return replace(r, skip=Skip.LEAKED_WITHOUT_LEAK)
        return replace(r, shown=False, short=(Short.LEFT_CLOSE_WAIT,))
    grew = (r.fds_after or 0) > (r.fds_start or 0) + 2
    if r.foreign and cw == 0 and not grew:
        return replace(r, skip=Skip.NO_LEAK_SWITCH)
    checks: list[tuple[bool, Short]] = [
        (r.alive, Short.DIED),
        (bool(limit) and r.fds_peak >= limit - 2, Short.FDS_SHORT),
    ]
    if not r.foreign:
        # tcplab's server logs every EMFILE; a foreign one may not, and its silence is
        # reported, not judged.
        checks.append((r.emfile_line is not None, Short.NO_EMFILE_LINE))
    if keepalive:
        # Keep-alive is set on accepted sockets (as Go does), so only those leave
        # CLOSE_WAIT; connections never accepted stay in the queue.
        checks += [
            (cw_peak > 0, Short.NO_CLOSE_WAIT),
            (r.close_wait_after <= r.queue_peak, Short.CLOSE_WAIT_OVER_QUEUE),
            (r.close_wait_after < cw_peak, Short.CLOSE_WAIT_STAYED),
            ((r.fds_after or 0) >= limit - 2, Short.FDS_FELL),
        ]
    else:
        checks += [
            (cw > 0, Short.NONE_STAYED),
            (cw >= 0.95 * cw_peak, Short.CLOSED_AFTER_ALL),
            (r.fin_wait2_peak > 0, Short.NO_FIN_WAIT2),
            (r.fin_wait2_after == 0, Short.FIN_WAIT2_STAYED),
        ]
    short = tuple(why for holds, why in checks if not holds)
    return replace(r, shown=not short, short=short)


def _flood(sb: Sandbox, s: Settings) -> FloodResult:
    r = sb.run(command("flood", "--port", str(PORT),
                       "--clients", str(s.clients), "--connect-timeout", str(s.connect_timeout),
                       "--read-timeout", str(s.read_timeout)),
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
               timeout=120)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"the client flood exited {r.returncode}: "
                               f"{err[-1] if err else 'no output'}",
                               hint="run again with --debug for the whole of its output")
    try:
        return from_json_line(FloodResult, r.stdout)
    except RecordError as e:
        raise ExperimentFailed(f"the client flood wrote something else than its result: {e}",
                               hint="this is a bug in tcplab: report it") from None
