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
  the peer is gone (probes get a RST), but the fds stay leaked;
* the Go rounds (``--go``; go on PATH, not with --quick unless asked), against
  a Go server built from tcplab/peers/goleak.go (experiments/gopeer.py):
  ``go-drop``, a handler that returns without Close(): the finalizer net sets
  on each netFD closes an unreachable one after a collection, so the fds stay
  far below the connections, and what is left after the flood waits, with nothing
  allocating, until later traffic brings the next collection; ``go-keep``, the
  connections kept in a slice: Go's 15 s keep-alive clears CLOSE_WAIT once the
  peers are gone, and the fds stay.

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
import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from tcplab.agents.io import command
from tcplab.errors import ExperimentFailed, NotSupported
from tcplab.experiments import gopeer
from tcplab.experiments import result as base
from tcplab.experiments.children import ForeignServer, ServerProcess
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec, LinkUsed, ends
from tcplab.experiments.result import Event, Progress, TimelineRow, say_nothing, timeline_of
from tcplab.experiments.sampling import Sample, StateSampler
from tcplab.records import RecordError, from_json_line
from tcplab.traffic.flood import FloodResult
from tcplab.words import plural

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
    #: The Go rounds: "auto" (when go is on PATH, not with --quick), "yes", "no".
    go: str = "auto"


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
    #: The Go rounds as asked (--go): "auto", "yes" or "no"; None in results recorded
    #: before they existed.
    go_rounds: str | None = None


class Skip(enum.StrEnum):
    """Why a round did not run, or does not apply (report/prose.py words it)."""

    NEEDS_KEEPALIVE = "needs-keepalive"  # keepalive round against --server-cmd
    LEAKED_WITHOUT_LEAK = "leaked-without-leak"  # fix round: the server leaks anyway
    NO_LEAK_SWITCH = "no-leak-switch"  # leak round: it closed even with LEAK=true
    GO_UNAVAILABLE = "go-unavailable"  # Go rounds: go missing, or the build failed
    GO_QUICK = "go-quick"  # Go rounds: --quick leaves them out (--go auto)


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
    NO_GC = "no-gc"  # go-drop: the runtime printed no collection (gctrace)
    GO_FDS_CLIMBED = "go-fds-climbed"  # go-drop: fds rose to half the connections or more
    NONE_LEFT = "none-left"  # go-drop: no fd waited for a later collection
    NO_LATER_GC = "no-later-gc"  # go-drop: no collection after the later traffic
    NOT_HEALED = "not-healed"  # go-drop: fds not back at the start after that collection
    LEFT_EARLY = "left-early"  # go-keep: CLOSE_WAIT fell before Go's keep-alive could act
    KEEP_CLOSE_WAIT_LEFT = "keep-close-wait-left"  # go-keep: CLOSE_WAIT still there at the end


@dataclass(frozen=True, slots=True)
class GoFigures:
    """What a Go round measured beyond a round's figures. Times are seconds since its
    flood began, on the sampler's clock (CLOCK_MONOTONIC)."""

    go_version: str  # ``go version``: "go1.19.8 linux/amd64"
    build_s: float  # 0: the binary was in the cache
    cached: bool
    env: str  # what the round set in the server's environment, in words
    gomaxprocs: int | None  # as the server reported it
    gcs: tuple[float, ...] = ()  # when each collection began (the runtime's gctrace lines)
    connected: int = 0  # flood clients that connected
    flood_s: float = 0.0  # the flood's length
    accepted: int | None = None  # the server's own totals, on SIGTERM (None: none printed)
    returned_without_close: int | None = None
    kept: int | None = None
    # go-drop
    gcs_in_flood: int = 0
    quiet_s: float = 0.0  # no traffic for this long after the flood
    fds_quiet: int | None = None  # the fds at the end of that wait
    close_wait_quiet: int = 0
    later_clients: int = 0  # clients of the later traffic (the port whose handler closes)
    later_gc_s: float | None = None  # the first collection after the quiet wait began
    fell_s: float | None = None  # the first sample after it with fds back at the start (+1)
    # go-keep
    close_wait_held_s: float | None = None  # the last sample still at the CLOSE_WAIT peak
    close_wait_gone_s: float | None = None  # the first sample with none left


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
    go: GoFigures | None = None  # the Go rounds' own figures
    go_skip: str | None = None  # a skipped Go round: the reason, in words (GoUnavailable's)


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
        progress: Progress = say_nothing, link: LinkSpec = LOOPBACK) -> Result:
    """Each round in a link of its own (a private namespace, or a temporary tcplab
    net with the server at its server's end and the clients at its client's)."""
    s = settings or Settings()
    links: list[LinkUsed] = []
    started = time.monotonic()
    events: list[Event] = []

    def mark(what: str, verdict_of: str | None = None, verdict: Round | None = None) -> None:
        events.append(Event(round(time.monotonic() - started, 3), what, verdict_of))
        progress(f"  {what}", verdict)  # a verdict's reason is worded by cli/ (report/prose.py)

    progress("fd-leak: the leaking server")
    leak = _round(s, leak=True, keepalive=None, mark=mark, origin=started,
                  link=link, links=links)
    progress("fd-leak: the fix (a server that closes)")
    fixed = _round(s, leak=False, keepalive=None, mark=mark, origin=started,
                   link=link, links=links)
    kept = None
    if s.keepalive and s.server_cmd:
        kept = Round("keepalive", skip=Skip.NEEDS_KEEPALIVE, fd_limit_set=s.fd_limit,
                     foreign=True)
        mark(f"keepalive: skipped ({kept.skip})", verdict_of="keepalive", verdict=kept)
    elif s.keepalive:
        progress(f"fd-leak: leaking, with SO_KEEPALIVE ({s.keepalive_s} s idle and interval)")
        kept = _round(s, leak=True, keepalive=s.keepalive_s, mark=mark, origin=started,
                      link=link, links=links)
    go_rounds: list[Round] = []
    if s.go != "no" and not s.server_cmd:
        go_rounds = _go_rounds(s, quick, progress, mark, started, link, links)
    rounds = tuple(r for r in (leak, fixed, kept, *go_rounds) if r is not None)
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
                         keepalive_s=s.keepalive_s if s.keepalive else None,
                         go_rounds=None if s.server_cmd else s.go),
        facts=facts, events=tuple(events), timeline=leak.timeline, variants=rounds,
        link=links[0] if links else None,
    )


def _round(s: Settings, leak: bool, keepalive: int | None,
           mark: Callable[..., None], origin: float | None = None,
           link: LinkSpec = LOOPBACK, links: list[LinkUsed] | None = None) -> Round:
    """One round in its own sandbox. ``mark(what, verdict_of=None)`` records an event;
    the one that states the round's verdict names the round (report/prose.py words it;
    the live line has the reasons as data)."""
    label = "leak" if leak else "fixed"
    if keepalive:
        label = "keepalive"
    with ends(link, _sysctls(s), prefix="leak") as e:
        (links if links is not None else []).append(e.used)
        server: Any
        if s.server_cmd:
            server = ForeignServer(e.at("server"), s.server_cmd, PORT,
                                   env={"LEAK": "true" if leak else ""}, fd_limit=s.fd_limit)
            pid = None  # the sampler finds whoever holds the listener
        else:
            args = ["--host", e.server_host, "--port", str(PORT), "--fd-limit",
                    str(s.fd_limit), "--backlog", str(s.backlog)]
            if leak:
                args.append("--leak")
            if keepalive:
                args += ["--keepalive", str(keepalive)]
            server = ServerProcess(args, popen=e.server)
            server.start()
            pid = server.pid
        sampler = _sampler(e, pid, origin)
        mark(f"{label}: {s.clients} clients connect, send, wait for the echo, close")
        flood = _flood(e, s)
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


def _sysctls(s: Settings) -> dict[str, str]:
    return {"net.ipv4.tcp_fin_timeout": str(s.fin_timeout)}


def _sampler(e: Ends, pid: int | None, origin: float | None) -> StateSampler:
    """The 100 ms sampler at the server's end (its fds, its accept queue), counting
    the client's end's sockets too across a link (their FIN_WAIT2, SYN_SENT)."""
    return StateSampler(e.server, PORT, pid=pid, origin=origin,
                        also_netns=e.netns.get("client"))


def _flood(e: Ends, s: Settings, port: int = PORT, clients: int | None = None
           ) -> FloodResult:
    r = e.run("client", command("flood", "--host", e.server_host, "--port", str(port),
                                "--clients", str(clients or s.clients),
                                "--connect-timeout", str(s.connect_timeout),
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


# --- the Go rounds ----------------------------------------------------------------------------
#
# tcplab/peers/goleak.go, built by experiments/gopeer.py, in the lab's style: a goroutine per
# connection echoing with a 64 KiB buffer, and no Close(). Measured here (go1.19.8, 2 cores):
# 512 clients against -mode drop ran 10 collections during a 1 s flood, fds peaked near 36,
# 14 sockets waited in CLOSE_WAIT through 3 quiet seconds and went at the first collection
# the later traffic caused; -mode keep held 128 in CLOSE_WAIT for 15 s, then none, with the
# 137 fds kept.

#: The port whose handler closes: the drop round's later traffic goes there.
TIDY_PORT = 8081
#: The drop round waits this long with no traffic: nothing allocates, so no collection is
#: due (the runtime forces one only 2 minutes after the last: forcegcperiod in
#: runtime/proc.go), and the unreachable connections wait.
QUIET_S = 3.0
#: The later traffic, in batches until a collection has run: each connection allocates a
#: 64 KiB buffer, so a batch allocates 8 MiB. The heap's goal is what the last collection
#: left live plus GOGC (100) percent of that, its stacks and globals, and at least 4 MiB
#: (heapMinimum; gcControllerState.commit in runtime/mgcpacer.go): here one batch was
#: always enough, and the batches go on (at most LATER_BATCHES) until gctrace shows one.
LATER_CLIENTS = 128
LATER_BATCHES = 6
#: How long the drop round watches the fds fall after that collection: the finalizers run
#: in the runtime's finalizer goroutine once the collection has swept (milliseconds here).
FALL_S = 3.0
#: Go's keep-alive: 15 s idle, then probes 15 s apart (defaultTCPKeepAlive, net/dial.go in
#: Go 1.19; (*TCPListener).accept in net/tcpsock_posix.go sets it on every accepted socket).
GO_KEEPALIVE_S = 15
#: The keep round waits at most this long from its flood's start for CLOSE_WAIT to go, and
#: holds it shown only if CLOSE_WAIT stayed at its peak for KEEP_HELD_S at least (no probe
#: can come earlier than 15 s after a client's FIN).
KEEP_WAIT_S = 25.0
KEEP_HELD_S = 10.0
#: What the Go rounds set in the server's environment: gctrace makes the runtime print one
#: line per collection (it does not change when they run); GOGC and GOMEMLIMIT empty are
#: the runtime's defaults (GOGC 100, no memory limit), whatever the caller's environment says.
GO_ENV = {"GODEBUG": "gctrace=1", "GOGC": "", "GOMEMLIMIT": ""}
GO_ENV_WORDS = "GODEBUG=gctrace=1 (one line per collection); GOGC and GOMEMLIMIT unset (GOGC 100)"
GC_LINE = re.compile(r"^gc (\d+) @")
GO_ROUNDS = ("go-drop", "go-keep")


def _go_rounds(s: Settings, quick: bool, progress: Progress, mark: Callable[..., None],
               origin: float, link: LinkSpec = LOOPBACK,
               links: list[LinkUsed] | None = None) -> list[Round]:
    """The Go rounds, or the reason they are skipped (go missing, its build failed,
    --quick with --go auto). ``--go yes`` without a usable go is NotSupported."""
    skip, words = None, None
    if quick and s.go == "auto":
        skip = Skip.GO_QUICK
    else:
        try:
            built = gopeer.build()
        except gopeer.GoUnavailable as e:
            if s.go == "yes":
                raise NotSupported(f"--go yes: {e}", hint=gopeer.HOWTO) from None
            skip, words = Skip.GO_UNAVAILABLE, str(e)
    if skip is not None:
        skipped = [Round(name, skip=skip, go_skip=words, fd_limit_set=s.fd_limit)
                   for name in GO_ROUNDS]
        for r in skipped:
            mark(f"{r.name}: skipped ({r.skip})", verdict_of=r.name, verdict=r)
        return skipped
    mark("go: " + (f"{built.go_version}, the server from the cache ({built.binary})"
                   if built.cached else
                   f"built {gopeer.SOURCE.name} with {built.go_version} in {built.build_s:.1f} s "
                   f"into {built.binary}"))
    progress("fd-leak: Go, a handler that returns without Close() (go-drop)")
    links = [] if links is None else links
    drop = _go_drop(s, built, mark, origin, link, links)
    progress(f"fd-leak: Go, the connections kept in a slice (go-keep): up to "
             f"{KEEP_WAIT_S:.0f} s for Go's {GO_KEEPALIVE_S} s keep-alive")
    keep = _go_keep(s, built, mark, origin, link, links)
    return [drop, keep]


def _go_server(e: Ends, built: gopeer.Built, mode: str, s: Settings,
               tidy: bool = False) -> ForeignServer:
    cmd = f"{shlex.quote(built.binary)} -mode {mode} -addr {e.server_host}:{{port}}"
    if tidy:
        cmd += f" -tidy {e.server_host}:{TIDY_PORT}"
    return ForeignServer(e.at("server"), cmd, PORT, env=GO_ENV, fd_limit=s.fd_limit)


def _go_lines(server: ForeignServer, event: str) -> dict[str, Any]:
    """The server's last JSON line of this event ("listening", "totals"), or {}."""
    for _, line in reversed(server.log):
        if line.startswith("{"):
            try:
                body = json.loads(line)
            except ValueError:
                continue
            if isinstance(body, dict) and body.get("event") == event:
                return body
    return {}


def _gc_times(server: ForeignServer, origin: float) -> list[float]:
    """When each gctrace line arrived, in seconds since ``origin``."""
    return [mono - origin for mono, line in list(server.log) if GC_LINE.match(line)]


def _go_figures(built: gopeer.Built, server: ForeignServer, origin: float, t0: float,
                flood: FloodResult, flood_s: float) -> GoFigures:
    hello, totals = _go_lines(server, "listening"), _go_lines(server, "totals")
    return GoFigures(
        go_version=built.go_version, build_s=built.build_s, cached=built.cached,
        env=GO_ENV_WORDS, gomaxprocs=hello.get("gomaxprocs"),
        gcs=tuple(round(t - t0, 3) for t in _gc_times(server, origin)),
        connected=flood.echoed + flood.no_echo, flood_s=round(flood_s, 3),
        accepted=totals.get("accepted"),
        returned_without_close=totals.get("returned_without_close"),
        kept=totals.get("kept"))


def _go_drop(s: Settings, built: gopeer.Built, mark: Callable[..., None],
             origin: float, link: LinkSpec = LOOPBACK,
             links: list[LinkUsed] | None = None) -> Round:
    """A flood against -mode drop; QUIET_S with no traffic; later traffic to the port
    whose handler closes, in batches until a collection ran; the fds watched fall."""
    label = "go-drop"
    with ends(link, _sysctls(s), prefix="go") as e:
        (links if links is not None else []).append(e.used)
        server = _go_server(e, built, "drop", s, tidy=True)
        sampler = _sampler(e, server.pid, origin)
        t0 = sampler.now()
        mark(f"{label}: {GO_ENV_WORDS}; {s.clients} clients connect, send, wait for the "
             "echo, close; the handler returns without Close()")
        flood = _flood(e, s)
        t1 = sampler.now()
        in_flood = [t for t in _gc_times(server, origin) if t <= t1]
        mark(f"{label}: {flood.echoed} echoed, {flood.no_echo} connected but got no echo, "
             f"{flood.connect_timeouts} never connected; the runtime ran "
             f"{plural(len(in_flood), 'collection')} meanwhile")
        mark(f"{label}: no traffic for {QUIET_S:.0f} s: nothing allocates, so no collection "
             "is due (with none, the runtime forces one 2 minutes after the last)")
        time.sleep(QUIET_S)
        sampler.wait_for_row_after(sampler.now())
        quiet = sampler.latest()
        t_quiet = sampler.now()
        later = 0
        for _ in range(LATER_BATCHES):
            mark(f"{label}: later traffic: {LATER_CLIENTS} clients to port {TIDY_PORT}, "
                 "whose handler closes (a 64 KiB buffer each)")
            _flood(e, s, port=TIDY_PORT, clients=LATER_CLIENTS)
            later += LATER_CLIENTS
            if any(t > t_quiet for t in _gc_times(server, origin)):
                break
        later_gcs = [t for t in _gc_times(server, origin) if t > t_quiet]
        start = next((r.server_fds for r in sampler.rows if r.server_fds is not None), None)
        fell = (_wait_fds_at_most(sampler, (start or 0) + 1, later_gcs[0], FALL_S)
                if later_gcs else None)
        sampler.wait_for_row_after(sampler.now())
        rows = list(sampler.rows)
        alive = server.alive()
        sampler.stop()
        server.stop()
        go = replace(
            _go_figures(built, server, origin, t0, flood, t1 - t0),
            gcs_in_flood=len(in_flood), quiet_s=QUIET_S,
            fds_quiet=quiet.server_fds if quiet else None,
            close_wait_quiet=quiet.state("CLOSE_WAIT") if quiet else 0,
            later_clients=later,
            later_gc_s=round(later_gcs[0] - t0, 3) if later_gcs else None,
            fell_s=round(fell - t0, 3) if fell is not None else None)
        figures = _go_round(label, rows, server, flood, s, alive, go)
    r = judge_go(figures)
    g = r.go
    assert g is not None
    mark(f"{label}: fds {r.fds_start} at the start, peak {r.fds_peak} for "
         f"{plural(g.connected, 'connection')}; {g.fds_quiet} after {QUIET_S:.0f} quiet s "
         f"(CLOSE_WAIT {g.close_wait_quiet}); "
         + (f"a collection at {g.later_gc_s:.1f} s after {later} later clients, fds "
            f"{r.fds_after} at the end" if g.later_gc_s is not None else
            f"no collection after {later} later clients"))
    _mark_verdict(r, mark)
    return r


def _wait_fds_at_most(sampler: StateSampler, fds: int, after: float, timeout: float
                      ) -> float | None:
    """Wait until a sample measured after ``after`` shows the server's fds at ``fds`` or
    fewer: that sample's time, or None."""
    deadline = time.monotonic() + timeout
    while True:
        hit = next((r.t for r in list(sampler.rows) if r.t > after
                    and r.server_fds is not None and r.server_fds <= fds), None)
        if hit is not None or time.monotonic() >= deadline:
            return hit
        time.sleep(0.05)


def _go_keep(s: Settings, built: gopeer.Built, mark: Callable[..., None],
             origin: float, link: LinkSpec = LOOPBACK,
             links: list[LinkUsed] | None = None) -> Round:
    """A flood against -mode keep (fewer clients than the fd limit: every one accepted),
    then a wait until CLOSE_WAIT is gone (Go's keep-alive) or KEEP_WAIT_S."""
    label = "go-keep"
    clients = max(16, min(s.clients, s.fd_limit // 2))
    with ends(link, _sysctls(s), prefix="go") as e:
        (links if links is not None else []).append(e.used)
        server = _go_server(e, built, "keep", s)
        sampler = _sampler(e, server.pid, origin)
        t0 = sampler.now()
        mark(f"{label}: {clients} clients connect, send, wait for the echo, close; the "
             "server keeps every connection in a slice and never closes one")
        flood = _flood(e, s, clients=clients)
        t1 = sampler.now()
        mark(f"{label}: {flood.echoed} echoed; waiting up to {KEEP_WAIT_S:.0f} s from the "
             f"flood's start for Go's keep-alive ({GO_KEEPALIVE_S} s idle, then a probe; the "
             f"clients' FIN_WAIT2 expire after tcp_fin_timeout = {s.fin_timeout} s, so the "
             "probe gets a RST)")
        while sampler.now() < t0 + KEEP_WAIT_S:
            now = sampler.now()
            window = [r for r in sampler.rows if r.t >= max(t1, now - WINDOW_S)]
            if len(window) >= 3 and not any(r.state("CLOSE_WAIT") for r in window):
                break
            time.sleep(0.1)
        sampler.wait_for_row_after(sampler.now())
        rows = list(sampler.rows)
        peak = max((r.state("CLOSE_WAIT") for r in rows), default=0)
        at_peak = [r.t for r in rows if peak and r.state("CLOSE_WAIT") == peak]
        held = at_peak[-1] if at_peak else None
        gone = next((r.t for r in rows if held is not None and r.t > held
                     and not r.state("CLOSE_WAIT")), None)
        alive = server.alive()
        sampler.stop()
        server.stop()
        go = replace(_go_figures(built, server, origin, t0, flood, t1 - t0),
                     close_wait_held_s=round(held - t0, 3) if held is not None else None,
                     close_wait_gone_s=round(gone - t0, 3) if gone is not None else None)
        figures = _go_round(label, rows, server, flood, s, alive, go)
    r = judge_go(figures)
    g = r.go
    assert g is not None
    mark(f"{label}: CLOSE_WAIT {r.close_wait_peak} until {g.close_wait_held_s} s, "
         f"{r.close_wait_after} at the end (first none at {g.close_wait_gone_s} s); fds "
         f"{r.fds_start} -> {r.fds_after}")
    _mark_verdict(r, mark)
    return r


def _go_round(label: str, rows: list[Sample], server: ForeignServer, flood: FloodResult,
              s: Settings, alive: bool, go: GoFigures) -> Round:
    """A Go round's figures from the sampler's rows (the timeline too) and its server's
    output."""
    last = rows[-1] if rows else None

    def most(values: Iterable[int | None]) -> int:
        return max((v or 0 for v in values), default=0)

    return Round(
        name=label, fd_limit=most(r.fd_limit for r in rows) or None,
        fd_limit_hard=most(r.fd_limit_hard for r in rows) or None,
        fds_start=next((r.server_fds for r in rows if r.server_fds is not None), None),
        fds_peak=most(r.server_fds for r in rows), fds_after=last.server_fds if last else None,
        close_wait_peak=most(r.state("CLOSE_WAIT") for r in rows),
        close_wait_after=last.state("CLOSE_WAIT") if last else 0,
        queue_peak=most(r.listen_queue for r in rows), backlog=most(r.backlog for r in rows),
        emfile_line=_emfile(server), emfile_lines=len(_emfiles(server)),
        alive=alive, flood=flood, fd_limit_set=s.fd_limit, go=go,
        timeline=tuple(TimelineRow(r.t, dict(r.states), r.listen_queue, r.server_fds)
                       for r in rows))


def _emfiles(server: ForeignServer) -> list[str]:
    return [line for _, line in server.log if "too many open files" in line.lower()]


def _emfile(server: ForeignServer) -> str | None:
    lines = _emfiles(server)
    return lines[0] if lines else None


def _mark_verdict(r: Round, mark: Callable[..., None]) -> None:
    if r.skip is not None:
        mark(f"{r.name}: skipped ({r.skip})", verdict_of=r.name, verdict=r)
    elif not r.shown:
        mark(f"{r.name}: NOT shown ({', '.join(r.short)})", verdict_of=r.name, verdict=r)


def judge_go(r: Round) -> Round:
    """A Go round with shown and short set from its own figures.

    go-drop is shown when the fds fell without a Close(): the runtime ran collections,
    the fds stayed under half the connections during the flood (the finalizer closed
    the rest), at least one fd waited through the quiet seconds, and after the
    collection the later traffic caused the fds were back at the start (+1).
    go-keep is shown when every connected client's socket sat in CLOSE_WAIT for at
    least KEEP_HELD_S, none was left at the end, and the fds stayed (one per client)."""
    g = r.go
    assert g is not None
    start = r.fds_start or 0
    checks: list[tuple[bool, Short]] = [(r.alive, Short.DIED)]
    if r.name == "go-drop":
        checks += [
            (bool(g.gcs), Short.NO_GC),
            (r.fds_peak - start < g.connected / 2, Short.GO_FDS_CLIMBED),
            ((g.fds_quiet or 0) > start, Short.NONE_LEFT),
            (g.later_gc_s is not None, Short.NO_LATER_GC),
            (g.later_gc_s is None or (r.fds_after is not None and r.fds_after <= start + 1
                                      and g.fell_s is not None), Short.NOT_HEALED),
        ]
    else:
        checks += [
            (g.connected > 0 and r.close_wait_peak >= g.connected, Short.NO_CLOSE_WAIT),
            (g.close_wait_held_s is not None and g.close_wait_held_s >= KEEP_HELD_S,
             Short.LEFT_EARLY),
            (r.close_wait_after == 0, Short.KEEP_CLOSE_WAIT_LEFT),
            ((r.fds_after or 0) >= start + g.connected, Short.FDS_FELL),
        ]
    short = tuple(why for holds, why in checks if not holds)
    return replace(r, shown=not short, short=short)
