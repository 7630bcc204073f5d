"""Experiment results as terminal text."""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from tcplab.agents.half_close import Side
from tcplab.errors import errno_name
from tcplab.experiments import (
    c100k,
    fd_leak,
    half_close,
    keepalive,
    multiplex,
    nagle,
    orphans,
    port_bomb,
    ports,
    reset,
    restart,
    syn_queue,
)
from tcplab.experiments.result import Result
from tcplab.observe.limits import Capacity
from tcplab.observe.slab import Ledger
from tcplab.report.prose import (
    c100k_cpu_us,
    c100k_shared,
    c100k_spread_words,
    c100k_stopped_words,
    worded,
)
from tcplab.words import duration_us, plural

AnyResult = Result[Any, Any, Any]

#: How the settings experiments record read to a person: key -> (words, unit).
#: A key not named here reads as itself with "_" as spaces ("_s" as seconds).
SETTING_WORDS: dict[str, tuple[str, str]] = {
    "model": ("server model", ""),
    "small_count": ("64 B round trips", ""),
    "large_count": ("1 MiB round trips", ""),
    "pause_s": ("pause between steps", "s"),
    "count": ("connections per variant", ""),
    "reuse_count": ("connections with the default range", ""),
    "pool_size": ("pool size", ""),
    "max_idle": ("idle cap (pool-too-small)", ""),
    "fd_limit": ("fd limit", ""),
    "tcp_fin_timeout": ("tcp_fin_timeout", "s"),
    "keepalive_s": ("keep-alive idle and interval", "s"),
    "ladder": ("connections", ""),
    "messages": ("round trips per connection", ""),
    "size": ("message size", "B"),
    "backlog": ("listen backlog and tcp_max_syn_backlog", ""),
    "burst": ("clients with their final ACK late", ""),
    "late": ("clients once the queue was full", ""),
    "quick": ("shorter timers (--quick)", ""),
    "tcp_orphan_retries": ("tcp_orphan_retries", ""),
    "requests": ("requests per connection", ""),  # nagle
    "header": ("header write", "B"),
    "body": ("body write", "B"),
    "reply": ("reply", "B"),
    "veth_delay_ms": ("veth round, delay each way", "ms"),
}


def setting_value(key: str, value: Any) -> str:
    """One setting's value in words: 1,000 (a port number without the comma), lists
    joined by commas, yes/no, and nothing in Python's own notation."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value) if key == "port" or key.endswith("_port") else f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(setting_value(key, v) for v in value) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {setting_value(str(k), v)}" for k, v in value.items()) or "none"
    return str(value)


def settings_text(settings: Mapping[str, Any] | Any) -> str:
    """``ports 1,000 · connections per variant 3,000 · server tcplab server (uvloop)``:
    a result's settings record (or a mapping of them) as a person reads them."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        from tcplab.records import to_json

        settings = to_json(settings)
    assert isinstance(settings, Mapping)
    parts = []
    for key, value in settings.items():
        if key == "link":
            continue  # the link has a line of its own (``link: ...``)
        words, unit = SETTING_WORDS.get(key, (key.replace("_", " "), ""))
        if not unit and key.endswith("_s") and key not in SETTING_WORDS:
            words, unit = key[:-2].replace("_", " "), "s"
        unit = unit if value is not None else ""  # "keep-alive ... none", not "none s"
        parts.append(f"{words} {setting_value(key, value)}{' ' + unit if unit else ''}")
    return " · ".join(parts)


def result_lines(result: AnyResult) -> list[str]:
    r = worded(result)
    status = "skipped" if r.skipped else ("shown" if r.ok else "NOT SHOWN")
    lines = [f"experiment {r.experiment}: {status}"]
    run_with = "" if r.settings is None else settings_text(r.settings)
    if run_with:
        lines.append(f"  run with: {run_with}")
    if r.link is not None:
        lines.append(f"  link: {r.link.words()}")
    for event in r.events:
        lines.append(f"  {event.t:7.3f} s  {event.what}")
    lines.extend(variant_lines(r))
    lines.append(f"  => {r.skipped or r.fact}")
    return lines


def summary_lines(results: Sequence[AnyResult]) -> list[str]:
    lines = ["", "summary"]
    for r in map(worded, results):
        mark = "skip" if r.skipped else ("ok" if r.ok else "FAIL")
        lines.append(f"  [{mark:4}] {r.experiment:12} {r.skipped or r.fact}")
    return lines


def variant_lines(result: AnyResult) -> list[str]:
    """The experiment's own table (port-bomb, fd-leak, half-close, multiplex), then what
    each variant showed; nothing for a result without facts (skipped, failed)."""
    if result.facts is None:
        return []
    if isinstance(result, fd_leak.Result):
        return fd_leak_lines(result)
    if isinstance(result, half_close.Result):
        return half_close_lines(result)
    if isinstance(result, restart.Result):
        return restart_lines(result)
    if isinstance(result, reset.Result):
        return reset_lines(result)
    if isinstance(result, syn_queue.Result):
        return syn_queue_lines(result)
    if isinstance(result, multiplex.Result):
        return multiplex_lines(result)
    if isinstance(result, c100k.Result):
        return c100k_lines(result)
    if isinstance(result, keepalive.Result):
        return keepalive_lines(result)
    if isinstance(result, ports.Result):
        return ports_lines(result)
    if isinstance(result, orphans.Result):
        return orphans_lines(result)
    if isinstance(result, nagle.Result):
        return nagle_lines(result)
    if isinstance(result, port_bomb.Result) and result.variants:
        return port_bomb_lines(result)
    return []


def table(rows: Sequence[Sequence[str]], right: bool = False) -> list[str]:
    """Columns padded to their widest cell, two spaces apart (right-aligned after the
    first with ``right``)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if right and i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def port_bomb_lines(result: port_bomb.Result) -> list[str]:
    """The port-bomb table: one row per variant, then what each showed."""
    lines = []
    if result.settings is not None:
        lines.append(f"  against {result.settings.server}")
    head = ("variant", "ok", "failed", "waiting", "first error", "TIME_WAIT peak", "ok/s",
            "shown")
    rows: list[Sequence[str]] = [head]
    for v in result.variants:
        if v.skip is not None:
            rows.append((v.name, "-", "-", "-", "-", "-", "-", "skipped"))
            continue
        e = v.first_error
        first = f"{e.name} at {e.at_s:.2f} s after {e.after_ok:,}" if e else "none"
        rows.append((v.name, f"{v.ok:,}", f"{v.failed:,}", f"{v.unanswered + v.unconnected:,}",
                     first, f"{v.time_wait_peak:,}", f"{v.conns_per_s:,.0f}",
                     "yes" if v.shown else "NO"))
    lines += table(rows)
    lines.append("")
    for v in result.variants:
        if v.skipped:
            lines.append(f"  {v.name}: skipped: {v.skipped}.")
        elif v.shown is False and v.why_not:
            lines.append(f"  {v.name}: NOT shown: {v.why_not}.")
        elif v.lesson:
            lines.append(f"  {v.name}: {v.lesson}.")
    if any(v.unanswered + v.unconnected for v in result.variants):
        lines.append("  waiting: connections neither ok nor failed when the time bound "
                     "stopped the bomb (no echo came, or the handshake never completed)")
    return lines


def fd_leak_lines(result: fd_leak.Result) -> list[str]:
    f, s = result.facts, result.settings
    if f is None or s is None:
        return []
    c = f.clients
    hard = f.fd_limit_hard
    limit = f"{f.fd_limit}" + (f" (hard {hard})" if hard and hard != f.fd_limit else "")
    peak, lim = f.server_fds_peak, f.fd_limit or 0
    reached = "reached" if lim and peak >= lim - 2 else "never reached"
    fixed = next((v for v in result.variants if v.name == "fixed"), None)
    fix_label = ("LEAK empty" if fixed is not None and fixed.skip is not None
                 else "the fix (server closes)")
    if s.fd_limit_kind:
        limit += f" ({s.fd_limit_kind})"
    clients = ("none ran" if c is None else
               f"{c.echoed} echoed, {c.no_echo} connected but no echo, "
               f"{c.connect_timeouts} stuck in SYN_SENT")
    lines = [
        f"  against {s.server}, fd limit {limit}, "
        f"backlog {f.backlog}, tcp_fin_timeout {s.tcp_fin_timeout} s",
        f"  server fds                {f.server_fds_start} at the start, peak {peak} "
        f"of {f.fd_limit} ({reached})",
        f"  accept() error            {f.emfile_log_line or 'none seen in its output'}",
        f"  accept queue peak         {f.accept_queue_peak} (LISTEN Recv-Q; backlog "
        f"{f.backlog})",
        f"  clients                   {clients}",
        f"  server CLOSE_WAIT         peak {f.server_close_wait_peak}, "
        f"{f.server_close_wait_after_timeout} after the clients' FIN_WAIT2 expired",
        f"  client FIN_WAIT2          peak {f.client_fin_wait2_peak}, "
        f"{f.client_fin_wait2_after_timeout} after tcp_fin_timeout",
        f"  {fix_label:26}CLOSE_WAIT peak {f.fixed_close_wait_peak}, "
        f"{f.fixed_close_wait_persisting} once it had had time to close",
    ]
    if f.keepalive_close_wait_after is not None:
        lines.append(f"  with SO_KEEPALIVE         CLOSE_WAIT {f.keepalive_close_wait_after} "
                     f"after the peers left (the never-accepted ones), fds still "
                     f"{f.keepalive_fds_after}")
    lines += go_lines(result.variants)
    lines.append("")
    for v in result.variants:
        if v.skipped:
            lines.append(f"  {v.name} round: skipped: {v.skipped}.")
        elif v.shown:
            lines.append(f"  {v.name} round: {v.lesson}.")
        elif v.shown is False:
            lines.append(f"  {v.name} round: NOT shown: {v.why_not}.")
    lines.append("  CLOSE_WAIT is the local bug (this process never called close()); FIN_WAIT2 "
                 "points at the peer (it never closed its side)")
    return lines


def go_lines(rounds: Sequence[fd_leak.Round]) -> list[str]:
    """The Go rounds' figures, one line each (the sentences follow with the rounds)."""
    lines = []
    for v in rounds:
        g = v.go
        if g is None:
            continue
        if v.name == "go-drop":
            later = (f"{v.fds_after} after a collection at {g.later_gc_s:.1f} s"
                     if g.later_gc_s is not None else "no later collection")
            lines.append(f"  Go, no Close() (drop)     fds {v.fds_start} -> peak {v.fds_peak} "
                         f"for {g.connected:,} connections ({g.gcs_in_flood} collections); "
                         f"{g.fds_quiet} after {g.quiet_s:.0f} quiet s; {later}")
        else:
            gone = (f"none at {g.close_wait_gone_s:.1f} s" if g.close_wait_gone_s is not None
                    else f"{v.close_wait_after} at the end")
            held = (f"until {g.close_wait_held_s:.1f} s" if g.close_wait_held_s is not None
                    else "at no sample")
            lines.append(f"  Go, kept in a slice       CLOSE_WAIT {v.close_wait_peak} {held}, "
                         f"{gone}; fds {v.fds_start} -> {v.fds_after}")
    if lines:
        g = next(v.go for v in rounds if v.go is not None)
        lines.append(f"  Go server                 {g.go_version}, GOMAXPROCS {g.gomaxprocs}; "
                     f"{g.env}; times from each flood's start")
    return lines


def half_close_lines(result: half_close.Result) -> list[str]:
    f = result.facts
    if f is None:
        return []
    closed = Side("(closed)", "", None, "")
    rows: list[Sequence[str]] = [("step", "client", "server")]
    for i, st in enumerate(f.steps, 1):
        c, v = st.client or closed, st.server or closed
        rows.append((str(i), f"{c.state} {c.timer}".strip(), f"{v.state} {v.timer}".strip()))
    lines = table(rows)
    lines.append("")
    for state, why in f.bugs.items():
        lines.append(f"  {state:<11} {why}")
    return lines


def restart_lines(result: restart.Result) -> list[str]:
    """One row per bind() try: the old server's flag, the new one's, TIME_WAIT, the result."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("old server", "new bind()", "TIME_WAIT on port", "bind()")]
    for b in f.binds:
        rows.append(("SO_REUSEADDR" if b.old_reuseaddr else "no SO_REUSEADDR",
                     "SO_REUSEADDR" if b.new_reuseaddr else "no SO_REUSEADDR",
                     f"{b.time_wait:,} on {b.port}",
                     "ok" if b.listening else f"{errno_name(b.errno)}: {b.error}"))
    return table(rows)


def reset_lines(result: reset.Result) -> list[str]:
    """One row per close: unread bytes, RSTs sent, both sides after, the client's read."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("server's close()", "unread", "RST sent", "server after",
                                  "client after", "client's next read")]
    for c in f.closes:
        rows.append((c.case, f"{c.unread_bytes} B", str(c.out_rsts), c.server_after,
                     c.client_after, reset.read_words(c)))
    return table(rows)


def syn_queue_lines(result: syn_queue.Result) -> list[str]:
    """One row per phase: the clients' states, both queues, the stranded clients, the
    errors their recv() got and the drop counters."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("round", "phase", "clients", "accept queue", "SYN queue",
                                  "ESTABLISHED, no server socket", "recv() errors",
                                  "ListenOverflows", "ListenDrops", "cookies sent")]
    for p in f.phases:
        rows.append((p.round, p.phase, syn_queue.states_words(p.client_states),
                     f"{p.accept_queue}/{p.backlog}", str(p.request_sockets),
                     f"{p.established_request} + {p.established_none}",
                     "not read" if p.phase == syn_queue.UNREAD else
                     ", ".join(f"{e.clients} {errno_name(e.errno)}" for e in p.errors) or "none",
                     str(p.counters.get("ListenOverflows", 0)),
                     str(p.counters.get("ListenDrops", 0)),
                     str(p.counters.get("SyncookiesSent", 0))))
    lines = table(rows)
    lines.append("  (ESTABLISHED, no server socket: with a request socket in SYN_RECV + with none)")
    return lines


def keepalive_lines(result: keepalive.Result) -> list[str]:
    """One row per case: the options, probes and retransmissions, how recv() ended."""
    f = result.facts
    if f is None:
        return []

    def opt(v: int | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:g}{unit}"

    # "max probes" is TCP_KEEPCNT, beside the probes the counter saw sent.
    rows: list[Sequence[str]] = [("case", "idle", "interval", "max probes", "user timeout",
                                  "probes sent", "retransmits", "recv()")]
    for s in f.silences:
        rows.append((s.case, opt(s.keepidle_s, " s"), opt(s.keepintvl_s, " s"),
                     opt(s.keepcnt), "-" if s.user_timeout_ms is None
                     else f"{s.user_timeout_ms / 1000:g} s", str(s.keepalive_probes),
                     str(s.retransmits), keepalive.error_words(s)))
    return table(rows)


def ports_lines(result: ports.Result) -> list[str]:
    """One row per case and destination: the ports taken, in order, and the failure."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("case", "toward", "ports", "then")]
    for p in f.cases:
        rows.append((p.case, p.destination or "-", " ".join(str(x) for x in p.ports) or "none",
                     str(p.error or "-")))
    return table(rows)


def orphans_lines(result: orphans.Result) -> list[str]:
    """One row per look: the states, sockstat's tw and (machine-wide) orphan."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("case", "states", "tw", "orphan", "after close()")]
    for x in f.looks:
        rows.append((x.case, orphans.states_words(x.states), str(x.sockstat_tw),
                     str(x.sockstat_orphan), "-" if x.lived_s is None
                     else f"{x.lived_s:.1f} s" + ("" if x.retransmits is None
                                                  else f", {x.retransmits} retransmits")))
    return table(rows)


def nagle_lines(result: nagle.Result) -> list[str]:
    """One row per link and way of writing: the first request, the median after it, the
    slowest, and the server's delayed ACKs over the connection."""
    f = result.facts
    if f is None:
        return []
    rows: list[Sequence[str]] = [("link", "writes", "first", "median after", "slowest",
                                  "delayed ACKs")]
    for r in f.rounds:
        link = r.link.kind + (f", {r.link.shaping}" if r.link.kind != "loopback" else "")
        if r.skip is not None or r.error is not None:
            rows.append((link, "-", "-", "-", "-", f"skipped: {r.skip}" if r.skip is not None
                         else f"failed: {r.error}"))
        for w in r.ways:
            rows.append((link, w.way, f"{w.first_us / 1000:.2f} ms",
                         f"{w.steady_us / 1000:.2f} ms", f"{w.max_us / 1000:.2f} ms",
                         str(w.delayed_acks)))
    return table(rows)


def multiplex_lines(result: multiplex.Result) -> list[str]:
    """The C10k table; a row whose connections mostly failed shows no plain figure."""
    head = ("model", "connections", "threads", "epoll watches", "RSS/conn", "CPU/echo",
            "p99", "echoes/s", "all accepted", "failed")
    rows: list[Sequence[str]] = [head]
    for v in result.variants:
        cells = multiplex_cells(v)
        rows.append((v.model, f"{v.connections:,}", f"{v.threads or 0:,}",
                     f"{v.epoll_watches or 0:,}", cells["rss"], cells["cpu"], cells["p99"],
                     cells["eps"], cells["accepted"], cells["failed"]))
    lines = table(rows, right=True)
    notes = [line for v in result.variants for line in multiplex_row_notes(v)]
    if notes:
        lines.append("")
        for line in notes:
            lines += textwrap.wrap(line, 98, initial_indent="  ", subsequent_indent="    ")
    lines.append("")
    rules = result.facts.rules if result.facts is not None else ""
    if rules:
        lines += textwrap.wrap(f"verdict: {rules}.", 98, initial_indent="  ",
                               subsequent_indent="    ")
    lines += [
        "  threads: one OS thread (and stack) per connection. epoll, asyncio, uvloop: one thread,",
        "  one epoll instance watching every socket: what Go's netpoll does, with goroutines",
        "  parked on epoll and run by GOMAXPROCS Ps on a few threads.",
    ]
    return lines


def multiplex_cells(v: multiplex.Row) -> dict[str, str]:
    """A row's figures as table cells. A collapsed row (most connections failed)
    gets no plain figure: its RSS, CPU, p99 and echoes/s describe the few
    connections that got through; multiplex_row_notes gives them, labelled."""
    n = v.connections
    failed = ", ".join(f"{k} x{c:,}" for k, c in v.failures.items()) or f"{v.failed:,}"
    if v.accepted_s is not None:
        accepted = f"{v.accepted_s:.1f} s"
    elif v.unaccepted is not None:
        accepted = f"{v.connected - v.unaccepted:,} of {n:,}"
    else:
        accepted = "-"
    if v.collapsed:
        return {"rss": "-", "cpu": "-", "p99": "-", "eps": "collapsed", "accepted": accepted,
                "failed": failed}
    cpu = v.cpu_us_per_echo
    return {"rss": f"{v.rss_per_conn / 1024:,.1f} KiB",
            "cpu": "-" if cpu is None else f"{cpu:,.1f} us",
            "p99": duration_us(v.p99_us),
            "eps": f"{v.echoes_per_s:,.0f}", "accepted": accepted, "failed": failed}


def multiplex_row_notes(v: multiplex.Row) -> list[str]:
    """What a row's failures mean, and a collapsed row's figures, labelled."""
    notes = []
    n = v.connections
    label = f"{v.model} x{n:,}"
    if v.collapsed:
        never = f", {v.no_echo:,} never got an echo" if v.no_echo else ""
        cpu = v.cpu_us_per_echo
        notes.append(
            f"{label} {v.flag}{never}. What got through: {v.echoes:,} echoes "
            f"({v.echoes_per_s:,.0f}/s), p99 {duration_us(v.p99_us)}; the server had "
            f"{v.threads or 0:,} threads, {v.rss_per_conn / 1024:,.1f} KiB RSS per "
            "connection" + ("" if cpu is None else f", {cpu:,.0f} us of CPU per echo") + ".")
    elif v.failed:
        notes.append(f"{label}: {v.failed:,} of {n:,} connections failed.")
    limit, took = v.timeout_s, v.exchange_s
    if limit and took and took > limit * 1.25:
        # The client checks its deadline between epoll batches; far past it
        # means the client itself waited for a CPU (seen once: 38 s for 20 s,
        # with the machine's load average near 2,900).
        notes.append(f"{label}: the exchange ran {took:.1f} s against --timeout {limit:g} s: "
                     "the client itself fell behind (on a loaded machine it waits for a CPU "
                     "too), so its latencies include that wait.")
    for kind, count in v.failures.items():
        why = v.explanations.get(kind, "not explained")
        notes.append(f"{label} {kind} x{count:,}: {why}.")
    return notes


# --- c100k ----------------------------------------------------------------------------------

C100K_HEAD = ("model", "listener", "workers", "clients", "asked", "held", "failed",
              "server B/conn", "client B/conn", "CPU us/conn", "held in", "p99", "threads")
#: The default row's figures its record does not keep (experiments/c100k.Result has
#: held, failed, rss_growth_per_conn and the workers' bars at the top, not the row).
NOT_RECORDED = "-"


def _b(x: float | None) -> str:
    return NOT_RECORDED if x is None else f"{x:,.0f}"


def c100k_model_cells(r: c100k.Result) -> list[tuple[str, ...]]:
    """Every row of the run, the default one first: the same columns for every model.
    The default row's client memory, p99 and threads are not in its record (``-``);
    its CPU per connection is summed from its workers' bars as the others' is."""
    f = r.facts
    assert f is not None
    rows: list[tuple[str, ...]] = []
    if r.default is None:  # a record from before the default row was kept whole
        held_s = "-" if f.held_s is None else f"{f.held_s:.1f} s"
        cpu = c100k_cpu_us(r.workers, r.held)
        rows.append((c100k.DEFAULT_MODEL, c100k.DEFAULT_LISTENER, f"{f.workers:,}",
                     f"{f.processes:,}", f"{f.connections:,}", f"{r.held:,}", f"{r.failed:,}",
                     _b(r.rss_growth_per_conn), NOT_RECORDED,
                     NOT_RECORDED if cpu is None else f"{cpu:,.1f}", held_s, NOT_RECORDED,
                     NOT_RECORDED))
    for m in ([r.default] if r.default is not None else []) + list(r.models):
        ran = bool(m.held or m.failed or m.bars)
        rows.append((m.model, m.listener, f"{m.workers:,}", f"{m.processes:,}", f"{m.asked:,}",
                     f"{m.held:,}" if ran else "not run", f"{m.failed:,}" if ran else "-",
                     _b(m.rss_growth_per_conn), _b(m.client_rss_per_conn),
                     NOT_RECORDED if m.cpu_us_per_conn is None else f"{m.cpu_us_per_conn:,.1f}",
                     f"{m.held_s:.1f} s" if ran else "-",
                     duration_us(m.p99_us) if ran else "-", f"{m.threads:,}" if ran else "-"))
    return rows


def c100k_bars(r: c100k.Result) -> list[tuple[str, list[c100k.Bar]]]:
    """The accept histograms: (label, bars) for SO_REUSEPORT and the shared listener."""
    out = [(f"{c100k.DEFAULT_MODEL}, SO_REUSEPORT (a listener per worker)", list(r.workers))]
    shared = c100k_shared(r)
    if shared is not None and shared.bars:
        out.append((f"{c100k.DEFAULT_MODEL}, one shared listener", list(shared.bars)))
    return [(label, bars) for label, bars in out if bars]


def histogram_lines(label: str, bars: Sequence[c100k.Bar], most: int, width: int = 40
                    ) -> list[str]:
    """One text bar a worker: its pid, connections held, a bar scaled to ``most``, and
    its own count of accept()s when it reported one."""
    lines = [f"  {label}:"]
    for b in bars:
        n = round(width * b.held / most) if most else 0
        accepted = "" if b.accepted is None else f"  (accepted {b.accepted:,})"
        lines.append(f"    pid {b.pid:<8} {b.held:>8,} {'#' * n:<{width}}{accepted}")
    return lines


def c100k_ledger_cells(ledger: Ledger) -> list[tuple[str, ...]]:
    """The ledger: one row a cache, its bytes a socket and how they were counted."""
    rows: list[tuple[str, ...]] = [("cache", "counted as", "object", "objects/socket",
                                    "moved/expected", "bytes/socket", "how")]
    for x in ledger.rows:
        rows.append((x.cache, x.reported_as, f"{x.objsize:,} B", f"{x.expected_per_socket:g}",
                     f"{x.ratio:.2f}", f"{x.bytes / ledger.sockets:,.0f}" if ledger.sockets
                     else "-", x.note))
    return rows


def c100k_ledger_total(ledger: Ledger) -> str:
    """The ledger's sum, and its cross-check against /proc/meminfo."""
    if ledger.bytes_per_socket is None or ledger.bytes_per_connection is None:
        return f"the kernel's slab caches were not read: {ledger.why_not}"
    text = (f"{ledger.bytes_per_socket:,.0f} B a socket, {ledger.bytes_per_connection:,.0f} B a "
            f"connection ({ledger.sockets:,} sockets for {ledger.connections:,} connections)")
    if ledger.measured_bytes_per_socket is not None:
        text += (f"; measured {ledger.measured_bytes_per_socket:,.0f} B, estimated "
                 f"{ledger.estimated_bytes_per_socket or 0:,.0f} B a socket")
    return (text + f"; /proc/meminfo's Slab moved {ledger.meminfo_slab_per_socket:,.0f} B a "
            "socket (machine-wide: a cross-check)")


def c100k_capacity_cells(capacity: Capacity) -> list[tuple[str, ...]]:
    """Every limit, fewest connections first; the one hit first and the next marked."""
    rows: list[tuple[str, ...]] = [("limit", "value", "allows", "per", "")]
    for c in sorted(capacity.rows, key=lambda c: c.allows):
        mark = ("hit first" if c == capacity.hit_first else
                "next" if c == capacity.next else "")
        if c.threads_only:
            mark = (mark + ", " if mark else "") + "threads only"
        rows.append((c.name, c.value, f"{c.allows:,}", c.per, mark))
    return rows


def c100k_capacity_summary(capacity: Capacity) -> str:
    first, nxt = capacity.hit_first, capacity.next
    text = (f"toward {capacity.connections:,} connections, {first.name} is hit first "
            f"({first.allows:,} a {first.per})")
    if nxt is not None:
        text += f", then {nxt.name} ({nxt.allows:,} a {nxt.per})"
    return (text + f": {plural(capacity.processes_needed, 'process', 'processes')} a side "
            f"and {plural(capacity.sources_needed, 'source address', 'source addresses')}; "
            f"the first machine-wide wall allows {capacity.machine_allows:,}")


def c100k_notes(r: c100k.Result) -> list[str]:
    """Every failure, note and stop of every row, and every limit not read: all of them,
    never summed away (why the ledger was not read is said with the ledger)."""
    f = r.facts
    assert f is not None
    out = [f"not shown: {p}" for p in f.problems]
    if r.failed and r.default is None:
        out.append(f"{f.default}: {r.failed:,} of {f.connections:,} failed")
    for m in ([r.default] if r.default is not None else []) + list(r.models):
        for kind, count in m.failures.items():
            out.append(f"{m.name} {kind} x{count:,}: "
                       f"{m.explanations.get(kind, 'not explained')}")
        out += [f"{m.name}: {note}" for note in m.notes]
        if m.listen_overflows:
            out.append(f"{m.name}: {m.listen_overflows:,} accept-queue overflows "
                       "(ListenOverflows)")
        stopped = c100k_stopped_words(m)
        if stopped is not None:
            out.append(stopped)
    if f.capacity is not None:
        out += [f"capacity: {x}" for x in f.capacity.missing]
    return out


def c100k_lines(result: c100k.Result) -> list[str]:
    """The rows, the accept histograms, the ledger, the limits and every note."""
    f = result.facts
    if f is None:
        return []
    lines = table([C100K_HEAD, *c100k_model_cells(result)], right=True)
    if result.default is None:
        lines.append(f"  (the default row's record keeps held, failed, server memory and its "
                     f"workers; '{NOT_RECORDED}': not recorded)")
    lines.append("")
    hist = c100k_bars(result)
    most = max((b.held for _, bars in hist for b in bars), default=0)
    for label, bars in hist:
        lines += histogram_lines(label, bars, most)
    spread = c100k_spread_words(result)
    if spread:
        lines += textwrap.wrap(spread, 98, initial_indent="  ", subsequent_indent="    ")
    if f.ledger is not None:
        lines += ["", "  the kernel's memory per socket (/proc/slabinfo, peak less before):"]
        if f.ledger.rows:
            lines += table(c100k_ledger_cells(f.ledger))
        lines += textwrap.wrap(c100k_ledger_total(f.ledger), 98, initial_indent="  ",
                               subsequent_indent="    ")
    if f.capacity is not None:
        lines += ["", "  the limits on this machine, fewest connections first:"]
        lines += table(c100k_capacity_cells(f.capacity), right=False)
        lines += textwrap.wrap(c100k_capacity_summary(f.capacity), 98, initial_indent="  ",
                               subsequent_indent="    ")
    notes = c100k_notes(result)
    if notes:
        lines.append("")
        for note in notes:
            lines += textwrap.wrap(note, 98, initial_indent="  ", subsequent_indent="    ")
    return lines
