"""``tcplab explain TOPIC``: a lesson in the terminal."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import out


def add_parser(sub: Any, name: str) -> None:
    from tcplab.report.lessons import LESSONS

    p = sub.add_parser(name, parents=[common.parent()],
                       help="a lesson: time-wait, close-wait, fd-limit, handshake, netpoll, "
                       "port-range",
                       description="Prints one of the lab's lessons, with the experiment that "
                       "shows it and the figure measured here.")
    p.add_argument("topic", nargs="?", choices=list(LESSONS), help="the lesson")
    p.add_argument("--markdown", action="store_true", help="every lesson, as docs/lessons.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.report.lessons import LESSONS, markdown

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
        out(textwrap.fill(" ".join(para.split()), width=78))
    if lesson.correction:
        out("")
        out(textwrap.fill("Correction: " + lesson.correction, width=78))
    out("")
    out(f"Shown by: {lesson.shown_by}")
    return 0
