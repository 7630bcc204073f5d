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

* a round has ``shown`` (None when skipped), ``skipped`` (the reason),
  ``lesson`` (from its figures) or ``why_not`` (the figure that fell short);
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

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tcplab.agents.io import command
from tcplab.experiments.children import ForeignServer, ServerProcess
from tcplab.experiments.result import Event, Result
from tcplab.experiments.sampling import StateSampler
from tcplab.experiments.sandbox import Sandbox
from tcplab.records import from_json_line, to_json
from tcplab.traffic.flood import FloodResult

PORT = 8080
#: The window over which "persisting" is judged: CLOSE_WAIT present in every sample of
#: it has outlived the moment its peer closed by at least this long.
WINDOW_S = 1.0
#: How long the fix round gives a closing server to close after the flood.
SETTLE_S = 5.0


@dataclass
class Settings:
    fd_limit: int = 256
    backlog: int = 64
    clients: int = 450
    fin_timeout: int = 5
    connect_timeout: float = 2.0
    read_timeout: float = 2.0
    keepalive: bool = False
    keepalive_s: int = 2
    server_cmd: str | None = None


def run(settings: Settings | None = None, quick: bool = False,
        progress: Callable[[str], None] = lambda _: None) -> Result:
    s = settings or Settings()
    started = time.monotonic()
    events: list[Event] = []

    def mark(what: str) -> None:
        events.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    progress("fd-leak: the leaking server")
    leak = _round(s, leak=True, keepalive=None, mark=mark, origin=started)
    progress("fd-leak: the fix (a server that closes)")
    fixed = _round(s, leak=False, keepalive=None, mark=mark, origin=started)
    kept = None
    if s.keepalive and s.server_cmd:
        kept = {"name": "keepalive", "shown": None, "lesson": None, "why_not": None,
                "skipped": "needs tcplab server --keepalive (SO_KEEPALIVE on accepted "
                "sockets); --server-cmd runs yours"}
        mark(f"keepalive: skipped: {kept['skipped']}")
    elif s.keepalive:
        progress("fd-leak: leaking, with SO_KEEPALIVE")
        kept = _round(s, leak=True, keepalive=s.keepalive_s, mark=mark, origin=started)
    rounds = [r for r in (leak, fixed, kept) if r is not None]

    facts: dict[str, Any] = {
        "fd_limit": leak["fd_limit"],
        "fd_limit_hard": leak["fd_limit_hard"],
        "fd_limit_set": s.fd_limit,
        "server_fds_start": leak["fds_start"],
        "server_fds_peak": leak["fds_peak"],
        "server_close_wait_peak": leak["close_wait_peak"],
        "server_close_wait_after_timeout": leak["close_wait_after"],
        "server_close_wait_persisting": leak["close_wait_persisting"],
        "client_fin_wait2_peak": leak["fin_wait2_peak"],
        "client_fin_wait2_after_timeout": leak["fin_wait2_after"],
        "emfile_seen": leak["emfile_line"] is not None,
        "emfile_log_line": leak["emfile_line"],
        "accept_queue_peak": leak["queue_peak"],
        "backlog": leak["backlog"],
        "clients": leak["flood"],
        "server_alive": leak["alive"],
        "fixed_close_wait_peak": fixed["close_wait_peak"],
        "fixed_close_wait_persisting": fixed["close_wait_persisting"],
        "fixed_clients": fixed["flood"],
    }
    if kept is not None and not kept["skipped"]:
        facts["keepalive_close_wait_after"] = kept["close_wait_after"]
        facts["keepalive_fds_after"] = kept["fds_after"]
    ran = [r for r in rounds if r["skipped"] is None]
    skipped = None
    if leak["skipped"]:
        # Without a leak there is nothing for this experiment to show.
        skipped = f"the leak round could not run against this server: {leak['skipped']}"
    server = f"your server ({s.server_cmd})" if s.server_cmd else "tcplab server (uvloop)"
    limit_kind = ("soft and hard, as 'ulimit -n' sets them: Go's raise to the hard limit "
                  "stops there" if s.server_cmd else "soft, set by tcplab server --fd-limit")
    return Result(
        experiment="fd-leak", ok=skipped is None and all(r["shown"] for r in ran),
        fact=_fact(leak, fixed, kept), skipped=skipped,
        settings={"fd_limit": s.fd_limit, "fd_limit_kind": limit_kind, "backlog": s.backlog,
                  "clients": s.clients, "tcp_fin_timeout": s.fin_timeout,
                  "keepalive": s.keepalive, "server": server, "port": PORT},
        facts=facts, events=events, timeline=leak["timeline"],
        variants=rounds,
    )


def _fact(leak: dict[str, Any], fixed: dict[str, Any], kept: dict[str, Any] | None) -> str:
    """The summary sentence, clause by clause from what was measured."""
    parts = []
    if leak["skipped"]:
        parts.append(f"the leak round was skipped: {leak['skipped']}")
    else:
        limit, peak = leak["fd_limit"], leak["fds_peak"]
        if limit and peak >= limit - 2:
            clause = f"the leaking server's fds hit its limit of {limit} ({peak} in use)"
        else:
            clause = f"the leaking server's fds peaked at {peak} of its limit of {limit}"
        if leak["emfile_line"]:
            clause += ", accept() failed with EMFILE"
        elif limit and peak >= limit - 2:
            clause += " (its output shows no 'too many open files' line)"
        parts.append(clause)
        cw, cw_peak, fw_peak, fw_after = (leak["close_wait_persisting"],
                                          leak["close_wait_peak"], leak["fin_wait2_peak"],
                                          leak["fin_wait2_after"])
        if cw and cw >= 0.95 * cw_peak and fw_peak and not fw_after:
            parts.append(f"{cw} sockets sat in CLOSE_WAIT and stayed after the clients' "
                         f"FIN_WAIT2 ({fw_peak}) expired")
        elif cw_peak:
            parts.append(f"CLOSE_WAIT peaked at {cw_peak} and {cw} stayed"
                         + (f" (the server closed {cw_peak - cw} after all)"
                            if cw < 0.95 * cw_peak else "")
                         + f"; the clients' FIN_WAIT2: {fw_peak} at the peak, {fw_after} at "
                         "the end")
        else:
            parts.append("no socket was in CLOSE_WAIT")
    if fixed["skipped"]:
        parts.append(f"the fix round was skipped: {fixed['skipped']}")
    else:
        parts.append(f"a server that closes: CLOSE_WAIT {fixed['close_wait_persisting']} once "
                     f"it had closed (a peak of {fixed['close_wait_peak']} while clients "
                     "closed)")
    if kept is not None and not kept["skipped"]:
        parts.append(f"with SO_KEEPALIVE: CLOSE_WAIT {kept['close_wait_after']}, fds still "
                     f"{kept['fds_after']}")
    return "; ".join(parts)


def _round(s: Settings, leak: bool, keepalive: int | None,
           mark: Callable[[str], None], origin: float | None = None) -> dict[str, Any]:
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
            mark(f"{label}: waiting {wait:.0f} s for the clients' FIN_WAIT2 to expire "
                 f"(tcp_fin_timeout = {s.fin_timeout} s)")
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
        timeline = [[r.t, {"states": r.states, "listen_queue": r.listen_queue,
                           "server_fds": r.server_fds}] for r in rows]
        during = [r for r in rows if r.t <= after_flood + 1.0]
        first_fds = next((r.server_fds for r in rows if r.server_fds is not None), None)
        result: dict[str, Any] = {
            "name": label, "shown": None, "skipped": None, "lesson": None, "why_not": None,
            "fd_limit": sampler.peak_of("fd_limit") or None,
            "fd_limit_hard": sampler.peak_of("fd_limit_hard") or None,
            "fds_start": first_fds,
            "fds_peak": sampler.peak_of("server_fds"),
            "fds_after": last.server_fds if last else None,
            "close_wait_peak": sampler.peak("CLOSE_WAIT"),
            "close_wait_after": sampler.state(last, "CLOSE_WAIT") if last else 0,
            "close_wait_persisting": min((sampler.state(r, "CLOSE_WAIT") for r in window),
                                         default=0),
            "fin_wait2_peak": max((sampler.state(r, "FIN_WAIT2") for r in during), default=0),
            "fin_wait2_after": sampler.state(last, "FIN_WAIT2") if last else 0,
            "queue_peak": sampler.peak_of("listen_queue"),
            "backlog": sampler.peak_of("backlog"),
            "syn_sent_peak": sampler.peak("SYN_SENT"),
            "emfile_line": log[0] if log else None,
            "emfile_lines": len(log),
            "alive": alive,
            "flood": to_json(flood),
            "timeline": timeline,
        }
        sampler.stop()
        server.stop()
    _judge(result, s, leak=leak, keepalive=keepalive)
    r = result
    if leak:
        mark(f"{label}: fds peaked at {r['fds_peak']} of {r['fd_limit']}, "
             f"CLOSE_WAIT {r['close_wait_peak']} -> {r['close_wait_after']}, "
             f"FIN_WAIT2 {r['fin_wait2_peak']} -> {r['fin_wait2_after']}, "
             f"accept queue peak {r['queue_peak']}")
    else:
        mark(f"{label}: CLOSE_WAIT peak {r['close_wait_peak']}, "
             f"{r['close_wait_persisting']} once the server had had time to close")
    if r["skipped"]:
        mark(f"{label}: skipped: {r['skipped']}")
    elif not r["shown"]:
        mark(f"{label}: NOT shown: {r['why_not']}")
    return result


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


def _judge(r: dict[str, Any], s: Settings, leak: bool, keepalive: int | None) -> None:
    """Set shown/skipped/lesson/why_not from the round's own figures."""
    foreign = s.server_cmd is not None
    limit = r["fd_limit"] or 0
    cw, cw_peak = r["close_wait_persisting"], r["close_wait_peak"]
    fds = f"fds {r['fds_start']} -> {r['fds_after']}"
    if not leak:
        if cw == 0:
            r["shown"] = True
            r["lesson"] = (f"a server that closes: CLOSE_WAIT {cw} once it had closed (a peak "
                           f"of {cw_peak} while the clients closed), {fds}")
        elif foreign:
            r["skipped"] = (f"not applicable: the server leaked without LEAK=true "
                            f"({cw} sockets stayed in CLOSE_WAIT, {fds})")
        else:
            r["shown"] = False
            r["why_not"] = f"{cw} sockets stayed in CLOSE_WAIT after the server closed, {fds}"
        return
    grew = (r["fds_after"] or 0) > (r["fds_start"] or 0) + 2
    if foreign and cw == 0 and not grew:
        r["skipped"] = (f"the server closed its connections even with LEAK=true (CLOSE_WAIT "
                        f"peak {cw_peak}, {cw} at the end; {fds}): it has no leak switch")
        return
    checks: list[tuple[bool, str]] = [
        (r["alive"], "the server died"),
        (bool(limit) and r["fds_peak"] >= limit - 2,
         f"fds peaked at {r['fds_peak']} of its limit of {limit}"
         + (f" (set to {s.fd_limit}: the server changed it)" if limit != s.fd_limit else "")),
    ]
    if not foreign:
        # tcplab's server logs every EMFILE; a foreign one may not, and its silence is
        # reported, not judged.
        checks.append((r["emfile_line"] is not None, "no 'Too many open files' in its log"))
    if keepalive:
        # Keep-alive is set on accepted sockets (as Go does), so only those leave
        # CLOSE_WAIT; connections never accepted stay in the queue.
        checks += [
            (cw_peak > 0, "no socket in CLOSE_WAIT"),
            (r["close_wait_after"] <= r["queue_peak"],
             f"CLOSE_WAIT {r['close_wait_after']} at the end, more than the "
             f"{r['queue_peak']} never accepted"),
            (r["close_wait_after"] < cw_peak, f"CLOSE_WAIT stayed at {cw_peak}"),
            ((r["fds_after"] or 0) >= limit - 2, f"fds fell to {r['fds_after']}"),
        ]
        lesson = (f"with SO_KEEPALIVE, CLOSE_WAIT fell from {cw_peak} to "
                  f"{r['close_wait_after']} (the never-accepted ones) once the probes found "
                  f"the peers gone, but the fds stayed at {r['fds_after']} of {limit}: the "
                  "leak is in fds, not TCP states")
    else:
        checks += [
            (cw > 0, f"no socket stayed in CLOSE_WAIT (peak {cw_peak})"),
            (cw >= 0.95 * cw_peak,
             f"CLOSE_WAIT fell from {cw_peak} to {cw}: the server closed them after all"
             + (" (Go, for one, closes an unreachable net.Conn from a GC finalizer)"
                if foreign else "")),
            (r["fin_wait2_peak"] > 0, "no client socket in FIN_WAIT2"),
            (r["fin_wait2_after"] == 0,
             f"{r['fin_wait2_after']} client sockets still in FIN_WAIT2 at the end"),
        ]
        lesson = (f"fds climbed to {r['fds_peak']} of {limit}"
                  + (", accept() failed with EMFILE" if r["emfile_line"] else
                     " (no 'too many open files' in its output)")
                  + (f", the accept queue filled ({r['queue_peak']}: backlog {r['backlog']} + 1)"
                     if r["backlog"] and r["queue_peak"] > r["backlog"] else
                     f", the accept queue held up to {r['queue_peak']} (backlog {r['backlog']})")
                  + f"; {cw} sockets stayed in "
                  f"CLOSE_WAIT while the clients' FIN_WAIT2 ({r['fin_wait2_peak']}) expired")
    short = [why for holds, why in checks if not holds]
    r["shown"] = not short
    if short:
        r["why_not"] = "; ".join(short)
    else:
        r["lesson"] = lesson


def _flood(sb: Sandbox, s: Settings) -> FloodResult:
    r = sb.run(command("flood", "--port", str(PORT),
                       "--clients", str(s.clients), "--connect-timeout", str(s.connect_timeout),
                       "--read-timeout", str(s.read_timeout)),
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
               timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"the client flood failed: {r.stderr.decode(errors='replace')}")
    return from_json_line(FloodResult, r.stdout)
