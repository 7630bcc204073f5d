"""The half-closed trap, one connection at a time: ``tcplab experiment half-close``.

A choreography (``python -m tcplab.agents.half_close``) runs inside a
sandbox: it makes one connection, then steps through the close slowly,
reading both sockets' states and timers from sock_diag after each step:

1. connected: ESTABLISHED on both sides;
2. the client shuts down its write side: FIN. The client sits in FIN_WAIT2
   (waiting for the peer's FIN), the server in CLOSE_WAIT (waiting for its
   own application to close). A half-closed socket the client still holds has
   no timer: tcp_fin_timeout applies only once the client close()s it;
3. the server can still send: half-close is one direction;
4. the server closes: its FIN makes the client's socket TIME_WAIT, with the
   60 s countdown; the server passes LAST_ACK until the client's ACK, which on
   loopback arrives within microseconds, too fast to sample here (``tcplab
   trace`` shows the transition).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tcplab.agents.half_close import Side, Step
from tcplab.agents.io import command
from tcplab.errors import ExperimentFailed
from tcplab.experiments import result as base
from tcplab.experiments.link import LOOPBACK, LinkSpec, ends
from tcplab.experiments.result import Event
from tcplab.records import RecordError, from_json_line

BUGS = {
    "CLOSE_WAIT": "stuck here = the local application's bug: it never calls close()",
    "FIN_WAIT2": "stuck here = the peer's bug: it never closes its side",
    "LAST_ACK": "waiting for the peer's ACK of our FIN",
    "TIME_WAIT": "normal: the side that closed first waits 60 s (TCP_TIMEWAIT_LEN, "
                 "include/net/tcp.h; a constant, not 2 x MSL)",
}


@dataclass(frozen=True, slots=True)
class RunWith:
    pause_s: float


@dataclass(frozen=True, slots=True)
class Facts:
    steps: tuple[Step, ...]
    bugs: dict[str, str]  # state -> whose bug it is when a socket is stuck there


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The half-close experiment's result: the steps, no variants."""


#: A side whose socket is gone, as the events say it.
GONE = Side(state="gone", timer="", timer_left_s=None, owner="")


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None,
        link: LinkSpec = LOOPBACK) -> Result:
    pause = (0.3 if quick else 1.0) + 2 * link.rtt_s
    with ends(link, prefix="hc") as e:
        r = e.run("server", command("half_close", str(pause), "--host", e.server_host,
                                    *e.netns_args()),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60 + 10 * pause)
        used = e.used
    if r.returncode != 0:
        raise ExperimentFailed(
            f"the half-close choreography exited {r.returncode}: "
            f"{_last_line(r.stderr) or 'no output'}",
            hint="run again with --debug; 'tcplab check' says what works here")
    try:
        steps = tuple(from_json_line(Step, line) for line in r.stdout.splitlines())
    except RecordError as exc:
        raise ExperimentFailed(f"the half-close choreography wrote something else than its "
                               f"steps: {exc}", hint="this is a bug in tcplab: report it") from None
    events = []
    for s in steps:
        c = s.client or GONE
        v = s.server or GONE
        line = (f"{s.step}: client {c.state} {c.timer}".rstrip()
                + f", server {v.state} {v.timer}".rstrip())
        events.append(Event(s.t, line))
        progress(f"  {line}")
    return Result(experiment="half-close", ok=judge(steps), settings=RunWith(pause_s=pause),
                  facts=Facts(steps=steps, bugs=dict(BUGS)), events=tuple(events),
                  link=used)


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


#: The choreography's steps: connected, after shutdown(SHUT_WR), while the server still
#: sent, after the server's close(), a second later (report/prose.py names them).
STEPS = 5


def state(side: Side | None) -> str:
    return side.state if side else "gone"


def states(steps: Sequence[Step]) -> list[tuple[str, str]]:
    """(client, server) state after each step; "gone" for a socket no longer there."""
    return [(state(s.client), state(s.server)) for s in steps]


def time_wait_left(steps: Sequence[Step]) -> list[tuple[float, float | None]]:
    """(t, seconds left) of each step that sampled the client's socket in TIME_WAIT."""
    return [(s.t, s.client.timer_left_s) for s in steps
            if s.client and s.client.state == "TIME_WAIT"]


def counts_down(steps: Sequence[Step]) -> bool:
    """The TIME_WAIT timer read less at the last sample than at the first."""
    left = [(t, x) for t, x in time_wait_left(steps) if x is not None]
    return len(left) >= 2 and left[-1][1] < left[0][1]


def judge(steps: Sequence[Step]) -> bool:
    """Shown or not, from the states the steps sampled.

    Shown: ESTABLISHED on both; FIN_WAIT2 / CLOSE_WAIT after the client's half-close
    and still while the server sends; then the client in TIME_WAIT (the server gone,
    or caught in LAST_ACK) with its timer counting down. report/prose.py says what
    was sampled.
    """
    seen = states(steps)
    return (len(seen) == STEPS
            and seen[0] == ("ESTABLISHED", "ESTABLISHED")
            and seen[1] == seen[2] == ("FIN_WAIT2", "CLOSE_WAIT")
            and seen[3][0] == "TIME_WAIT" and seen[3][1] in ("gone", "LAST_ACK")
            and counts_down(steps))
