"""``tcplab explain TOPIC``: a lesson in the terminal.

There is no run to quote here, so each figure says where, when and with which
command it was measured; ``experiment --report`` quotes the user's own run."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import out


def add_parser(sub: Any, name: str) -> None:
    from tcplab.report.lessons import LESSONS

    p = sub.add_parser(name, parents=[common.parent()],
                       help="a lesson, with recorded figures ('tcplab explain' lists the "
                       "topics)",
                       description="Prints one of the lab's lessons: the explanation, the "
                       "figures one run measured (where, when, and the command that reproduces "
                       "them) and, where the original lab's notes are wrong on Linux, the "
                       "correction. 'tcplab experiment all --report DIR' quotes your own run.")
    p.add_argument("topic", nargs="?", choices=list(LESSONS), help="the lesson")
    p.add_argument("--markdown", action="store_true", help="every lesson, as docs/lessons.md")
    p.set_defaults(func=run)


def _fill(text: str) -> str:
    # Commands and figures ("half-close", "10,002-10,004") stay whole on their line.
    return textwrap.fill(text, width=78, break_on_hyphens=False, break_long_words=False)


def run(args: argparse.Namespace) -> int:
    from tcplab.report.lessons import LESSONS, markdown, recorded_text

    if args.markdown:
        out(markdown())
        return 0
    if args.topic is None:
        for topic, lesson in LESSONS.items():
            out(f"  {topic:<11} {lesson.title}")
        return 0
    lesson = LESSONS[args.topic]
    out(lesson.title)
    out("=" * len(lesson.title))
    for para in lesson.text.strip().split("\n\n"):
        out("")
        out(_fill(" ".join(para.split())))
    for fig in lesson.figures:
        out("")
        out(_fill(recorded_text(fig)))
    if lesson.correction:
        out("")
        out(_fill("Correction: " + lesson.correction))
    out("")
    out(f"Shown by: {lesson.shown_by}")
    return 0
