"""Experiment results as terminal text."""

from __future__ import annotations

from collections.abc import Sequence

from tcplab.experiments.result import Result


def result_lines(result: Result) -> list[str]:
    status = "skipped" if result.skipped else ("shown" if result.ok else "NOT SHOWN")
    lines = [f"experiment {result.experiment}: {status}"]
    for event in result.timeline:
        lines.append(f"  {event.t:7.3f} s  {event.what}")
    lines.append(f"  => {result.skipped or result.fact}")
    return lines


def summary_lines(results: Sequence[Result]) -> list[str]:
    lines = ["", "summary"]
    for r in results:
        mark = "skip" if r.skipped else ("ok" if r.ok else "FAIL")
        lines.append(f"  [{mark:4}] {r.experiment:12} {r.skipped or r.fact}")
    return lines
