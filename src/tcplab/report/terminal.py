"""Experiment results as terminal text."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from tcplab.experiments.result import Result
from tcplab.words import duration_us

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
    "fd_limit": ("fd limit", ""),
    "tcp_fin_timeout": ("tcp_fin_timeout", "s"),
    "ladder": ("connections", ""),
    "messages": ("round trips per connection", ""),
    "size": ("message size", "B"),
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


def settings_text(settings: Mapping[str, Any]) -> str:
    """``ports 1,000 · connections per variant 3,000 · server tcplab server (uvloop)``."""
    parts = []
    for key, value in settings.items():
        words, unit = SETTING_WORDS.get(key, (key.replace("_", " "), ""))
        if not unit and key.endswith("_s") and key not in SETTING_WORDS:
            words, unit = key[:-2].replace("_", " "), "s"
        parts.append(f"{words} {setting_value(key, value)}{' ' + unit if unit else ''}")
    return " · ".join(parts)


def result_lines(result: Result) -> list[str]:
    status = "skipped" if result.skipped else ("shown" if result.ok else "NOT SHOWN")
    lines = [f"experiment {result.experiment}: {status}"]
    if result.settings:
        lines.append(f"  run with: {settings_text(result.settings)}")
    for event in result.events:
        lines.append(f"  {event.t:7.3f} s  {event.what}")
    lines.extend(variant_lines(result))
    lines.append(f"  => {result.skipped or result.fact}")
    return lines


def summary_lines(results: Sequence[Result]) -> list[str]:
    lines = ["", "summary"]
    for r in results:
        mark = "skip" if r.skipped else ("ok" if r.ok else "FAIL")
        lines.append(f"  [{mark:4}] {r.experiment:12} {r.skipped or r.fact}")
    return lines


def variant_lines(result: Result) -> list[str]:
    """The port-bomb table: one row per variant, then what each showed."""
    if result.experiment == "fd-leak":
        return fd_leak_lines(result)
    if result.experiment == "half-close":
        return half_close_lines(result)
    if result.experiment == "multiplex":
        return multiplex_lines(result)
    if not result.variants or result.experiment != "port-bomb":
        return []
    lines = []
    if "server" in result.settings:
        lines.append(f"  against {result.settings['server']}")
    head = ("variant", "ok", "failed", "waiting", "first error", "TIME_WAIT peak", "ok/s",
            "shown")
    rows = [head]
    for v in result.variants:
        if v.get("skipped"):
            rows.append((v["name"], "-", "-", "-", "-", "-", "-", "skipped"))
            continue
        e = v.get("first_error")
        first = f"{e['name']} at {e['at_s']:.2f} s after {e['after_ok']:,}" if e else "none"
        waiting = v.get("unanswered", 0) + v.get("unconnected", 0)
        rows.append((v["name"], f"{v['ok']:,}", f"{v['failed']:,}", f"{waiting:,}", first,
                     f"{v['time_wait_peak']:,}", f"{v['conns_per_s']:,.0f}",
                     "yes" if v["shown"] else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    lines.append("")
    for v in result.variants:
        if v.get("skipped"):
            lines.append(f"  {v['name']}: skipped: {v['skipped']}.")
        elif v.get("shown") is False and v.get("why_not"):
            lines.append(f"  {v['name']}: NOT shown: {v['why_not']}.")
        elif v.get("lesson"):
            lines.append(f"  {v['name']}: {v['lesson']}.")
    if any(v.get("unanswered", 0) + v.get("unconnected", 0) for v in result.variants):
        lines.append("  waiting: connections neither ok nor failed when the time bound "
                     "stopped the bomb (no echo came, or the handshake never completed)")
    return lines


def fd_leak_lines(result: Result) -> list[str]:
    f = result.facts
    if not f:
        return []
    c = f["clients"]
    hard = f.get("fd_limit_hard")
    limit = f"{f['fd_limit']}" + (f" (hard {hard})" if hard and hard != f["fd_limit"] else "")
    peak, lim = f["server_fds_peak"], f["fd_limit"] or 0
    reached = "reached" if lim and peak >= lim - 2 else "never reached"
    fixed = next((v for v in result.variants if v.get("name") == "fixed"), {})
    fix_label = "LEAK empty" if fixed.get("skipped") else "the fix (server closes)"
    kind = result.settings.get("fd_limit_kind")
    if kind:
        limit += f" ({kind})"
    lines = [
        f"  against {result.settings.get('server')}, fd limit {limit}, "
        f"backlog {f['backlog']}, tcp_fin_timeout {result.settings.get('tcp_fin_timeout')} s",
        f"  server fds                {f.get('server_fds_start')} at the start, peak {peak} "
        f"of {f['fd_limit']} ({reached})",
        f"  accept() error            {f['emfile_log_line'] or 'none seen in its output'}",
        f"  accept queue peak         {f['accept_queue_peak']} (LISTEN Recv-Q; backlog "
        f"{f['backlog']})",
        f"  clients                   {c['echoed']} echoed, {c['no_echo']} connected but no echo, "
        f"{c['connect_timeouts']} stuck in SYN_SENT",
        f"  server CLOSE_WAIT         peak {f['server_close_wait_peak']}, "
        f"{f['server_close_wait_after_timeout']} after the clients' FIN_WAIT2 expired",
        f"  client FIN_WAIT2          peak {f['client_fin_wait2_peak']}, "
        f"{f['client_fin_wait2_after_timeout']} after tcp_fin_timeout",
        f"  {fix_label:26}CLOSE_WAIT peak {f['fixed_close_wait_peak']}, "
        f"{f.get('fixed_close_wait_persisting')} once it had had time to close",
    ]
    if "keepalive_close_wait_after" in f:
        lines.append(f"  with SO_KEEPALIVE         CLOSE_WAIT {f['keepalive_close_wait_after']} "
                     f"after the peers left (the never-accepted ones), fds still "
                     f"{f['keepalive_fds_after']}")
    lines.append("")
    for v in result.variants:
        if v.get("skipped"):
            lines.append(f"  {v['name']} round: skipped: {v['skipped']}.")
        elif v.get("shown"):
            lines.append(f"  {v['name']} round: {v['lesson']}.")
        elif v.get("shown") is False:
            lines.append(f"  {v['name']} round: NOT shown: {v.get('why_not')}.")
    lines.append("  CLOSE_WAIT is the local bug (this process never called close()); FIN_WAIT2 "
                 "points at the peer (it never closed its side)")
    return lines


def half_close_lines(result: Result) -> list[str]:
    steps = result.facts.get("steps", [])
    bugs = result.facts.get("bugs", {})
    rows = [("step", "client", "server")]
    for i, st in enumerate(steps, 1):
        c = st["client"] or {"state": "(closed)", "timer": ""}
        v = st["server"] or {"state": "(closed)", "timer": ""}
        rows.append((str(i), f"{c['state']} {c['timer']}".strip(),
                     f"{v['state']} {v['timer']}".strip()))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.append("")
    for state, why in bugs.items():
        lines.append(f"  {state:<11} {why}")
    return lines


def multiplex_lines(result: Result) -> list[str]:
    """The C10k table; a row whose connections mostly failed shows no plain figure."""
    head = ("model", "connections", "threads", "epoll watches", "RSS/conn", "CPU/echo",
            "p99", "echoes/s", "all accepted", "failed")
    rows = [head]
    for v in result.variants:
        cells = multiplex_cells(v)
        rows.append((v["model"], f"{v['connections']:,}", f"{v['threads'] or 0:,}",
                     f"{v['epoll_watches'] or 0:,}", cells["rss"], cells["cpu"], cells["p99"],
                     cells["eps"], cells["accepted"], cells["failed"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    notes = [line for v in result.variants for line in multiplex_row_notes(v)]
    if notes:
        lines.append("")
        for line in notes:
            lines += textwrap.wrap(line, 98, initial_indent="  ", subsequent_indent="    ")
    lines.append("")
    rules = result.facts.get("rules")
    if rules:
        lines += textwrap.wrap(f"verdict: {rules}.", 98, initial_indent="  ",
                               subsequent_indent="    ")
    lines += [
        "  threads: one OS thread (and stack) per connection. epoll, asyncio, uvloop: one thread,",
        "  one epoll instance watching every socket: what Go's netpoll does with GOMAXPROCS",
        "  threads and goroutines parked on epoll.",
    ]
    return lines


def multiplex_cells(v: dict[str, Any]) -> dict[str, str]:
    """A row's figures as table cells. A collapsed row (most connections failed)
    gets no plain figure: its RSS, CPU, p99 and echoes/s describe the few
    connections that got through; multiplex_row_notes gives them, labelled."""
    n = v["connections"]
    failures = v.get("failures") or {}
    failed = ", ".join(f"{k} x{c:,}" for k, c in failures.items()) or f"{v['failed']:,}"
    if v.get("accepted_s") is not None:
        accepted = f"{v['accepted_s']:.1f} s"
    elif v.get("unaccepted") is not None:
        accepted = f"{v['connected'] - v['unaccepted']:,} of {n:,}"
    else:
        accepted = "-"
    if v.get("collapsed"):
        return {"rss": "-", "cpu": "-", "p99": "-", "eps": "collapsed", "accepted": accepted,
                "failed": failed}
    cpu = v["cpu_us_per_echo"]
    p99 = v["p99_us"]
    return {"rss": f"{v['rss_per_conn'] / 1024:,.1f} KiB",
            "cpu": "-" if cpu is None else f"{cpu:,.1f} us",
            "p99": duration_us(p99),
            "eps": f"{v['echoes_per_s']:,.0f}", "accepted": accepted, "failed": failed}


def multiplex_row_notes(v: dict[str, Any]) -> list[str]:
    """What a row's failures mean, and a collapsed row's figures, labelled."""
    notes = []
    n = v["connections"]
    label = f"{v['model']} x{n:,}"
    if v.get("collapsed"):
        never = (f", {v['no_echo']:,} never got an echo" if v.get("no_echo") else "")
        cpu = v["cpu_us_per_echo"]
        p99 = v["p99_us"]
        notes.append(
            f"{label} {v['flag']}{never}. What got through: {v['echoes']:,} echoes "
            f"({v['echoes_per_s']:,.0f}/s), p99 {duration_us(p99)}; the server had "
            f"{v['threads'] or 0:,} threads, {v['rss_per_conn'] / 1024:,.1f} KiB RSS per "
            "connection" + ("" if cpu is None else f", {cpu:,.0f} us of CPU per echo") + ".")
    elif v["failed"]:
        notes.append(f"{label}: {v['failed']:,} of {n:,} connections failed.")
    limit, took = v.get("timeout_s"), v.get("exchange_s")
    if limit and took and took > limit * 1.25:
        # The client checks its deadline between epoll batches; far past it
        # means the client itself waited for a CPU (seen once: 38 s for 20 s,
        # with the machine's load average near 2,900).
        notes.append(f"{label}: the exchange ran {took:.1f} s against --timeout {limit:g} s: "
                     "the client itself fell behind (on a loaded machine it waits for a CPU "
                     "too), so its latencies include that wait.")
    for kind, count in (v.get("failures") or {}).items():
        why = (v.get("explanations") or {}).get(kind, "not explained")
        notes.append(f"{label} {kind} x{count:,}: {why}.")
    return notes
