"""Experiment results as terminal text."""

from __future__ import annotations

from collections.abc import Sequence

from tcplab.experiments.result import Result


def result_lines(result: Result) -> list[str]:
    status = "skipped" if result.skipped else ("shown" if result.ok else "NOT SHOWN")
    lines = [f"experiment {result.experiment}: {status}"]
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
    head = ("model", "connections", "threads", "epoll watches", "RSS/conn", "CPU/echo",
            "p99", "echoes/s", "failed")
    rows = [head]
    for v in result.variants:
        cpu = v["cpu_us_per_echo"]
        rows.append((v["model"], f"{v['connections']:,}", f"{v['threads'] or 0:,}",
                     f"{v['epoll_watches'] or 0:,}", f"{v['rss_per_conn'] / 1024:,.1f} KiB",
                     "-" if cpu is None else f"{cpu:,.1f} us", f"{v['p99_us'] / 1000:,.1f} ms",
                     f"{v['echoes_per_s']:,.0f}", f"{v['failed']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                              for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines += [
        "",
        "  threads: one OS thread (and stack) per connection; at 10,000, Python's threads also",
        "  queue for the GIL (a waiting thread asks for it every 5 ms), and throughput collapses.",
        "  epoll, asyncio, uvloop: one thread, one epoll instance watching every socket: what",
        "  Go's netpoll does with GOMAXPROCS threads and goroutines parked on epoll.",
    ]
    return lines
