"""An agent run once inside a fresh sandbox, its JSON lines decoded into records.

The small experiments (restart, reset, syn-queue) are one choreography each: a child in
a private network namespace that does the whole thing and writes one record
per step. A child that exits non-zero, or writes something else than its
records, is an ExperimentFailed naming it (exit 9), never a RuntimeError.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import TypeVar

from tcplab.agents.io import command
from tcplab.errors import ExperimentFailed
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec, LinkUsed, ends
from tcplab.records import RecordError, from_json_line

T = TypeVar("T")


def records(agent: str, args: list[str], cls: type[T], what: str,
            timeout: float = 60) -> tuple[T, ...]:
    """Run ``python -m tcplab.agents.AGENT ARGS`` in a new sandbox; its lines as ``cls``.

    ``what`` names the child in an error ("the restart choreography").
    """
    return records_on(LOOPBACK, agent, args, cls, what, timeout)[0]


def records_on(link: LinkSpec, agent: str, args: list[str], cls: type[T], what: str,
               timeout: float = 60, setup: Callable[[Ends], None] | None = None
               ) -> tuple[tuple[T, ...], LinkUsed]:
    """As records(), at the server's end of ``link``, told where each end is
    (``--host``, ``--client-netns``, ``--server-netns``: agents/ends.py): an agent
    that makes both sockets makes each in its end's namespace. ``setup`` is given
    the ends before the agent starts (e.g. to set a sysctl at one end only)."""
    with ends(link, prefix=agent.replace("_", "")) as e:
        if setup is not None:
            setup(e)
        return agent_records(e, agent, args, cls, what, timeout), e.used


def agent_records(e: Ends, agent: str, args: list[str], cls: type[T], what: str,
                  timeout: float = 60) -> tuple[T, ...]:
    """As records_on(), in the ends ``e`` an experiment holds (to run the agent more than
    once in one net, with its sysctls set in between)."""
    hint = "run again with --debug; 'tcplab check' says what works here"
    where = [] if e.kind == "loopback" else ["--host", e.server_host, *e.netns_args()]
    try:
        r = e.run("server", command(agent, *args, *where), stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExperimentFailed(f"{what} did not finish in {timeout:g} s", hint=hint) from None
    if r.returncode != 0:
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"{what} exited {r.returncode}: "
                               f"{lines[-1] if lines else 'no output'}", hint=hint)
    try:
        return tuple(from_json_line(cls, line) for line in r.stdout.splitlines())
    except RecordError as err:
        raise ExperimentFailed(f"{what} wrote something else than its records: {err}",
                               hint="this is a bug in tcplab: report it") from None
