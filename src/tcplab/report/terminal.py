"""Experiment results as terminal text."""

from __future__ import annotations

from collections.abc import Sequence

from tcplab.experiments.result import Result


def result_lines(result: Result) -> list[str]:
    status = "skipped" if result.skipped else ("shown" if result.ok else "NOT SHOWN")
    lines = [f"experiment {result.experiment}: {status}"]
    for event in result.timeline:
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
    if not result.variants:
        return []
    lines = []
    if "server" in result.settings:
        lines.append(f"  against {result.settings['server']}")
    head = ("variant", "ok", "failed", "first error", "TIME_WAIT peak", "ok/s", "shown")
    rows = [head]
    for v in result.variants:
        if v.get("skipped"):
            rows.append((v["name"], "-", "-", f"skipped: {v['skipped']}", "-", "-", "-"))
            continue
        e = v.get("first_error")
        first = f"{e['name']} at {e['at_s']:.2f} s after {e['after_ok']:,}" if e else "none"
        rows.append((v["name"], f"{v['ok']:,}", f"{v['failed']:,}", first,
                     f"{v['time_wait_peak']:,}", f"{v['conns_per_s']:,.0f}",
                     "yes" if v["shown"] else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    lines.append("")
    for v in result.variants:
        if v.get("lesson"):
            lines.append(f"  {v['name']}: {v['lesson']}.")
    return lines
