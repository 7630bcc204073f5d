"""``tcplab experiment``: run the lab's experiments and say what each showed."""

from __future__ import annotations

import argparse
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
Runs the lab's experiments for real and reports, for each, the fact it
demonstrated with the figure measured on this machine.

  echo   Experiment 1: an echo server and a client; round trips measured,
         every byte verified, and the server's own totals checked against them
  all    every experiment above, in turn, with a summary
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        parents=[common.parent()],
        help="run the lab's experiments (echo; 'all' runs every one)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=["all", "echo"], help="which experiment")
    p.add_argument("--quick", action="store_true", help="smaller counts and shorter waits")
    common.add_json(p, "each experiment's result (one object per line)")
    p.set_defaults(func=run)


def _quiet(_line: str) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from tcplab.experiments import echo
    from tcplab.report.terminal import result_lines, summary_lines

    runners = {"echo": echo.run}
    names = list(runners) if args.name == "all" else [args.name]
    results = []
    for name in names:
        note(f"running experiment {name} ...")
        # The text report repeats every step, so live steps go to stderr only
        # when stdout carries JSON.
        result = runners[name](quick=args.quick, progress=note if args.json else _quiet)
        results.append(result)
        if args.json:
            emit_json(result)
        else:
            for line in result_lines(result):
                out(line)
    if not args.json and len(results) > 1:
        for line in summary_lines(results):
            out(line)
    failed = [r.experiment for r in results if not r.ok and r.skipped is None]
    if failed:
        note(f"tcplab: experiment {', '.join(failed)} did not show its fact")
        return 1
    return 0
