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
from collections.abc import Callable
from typing import Any

from tcplab.agents.half_close import Side, Step
from tcplab.agents.io import command
from tcplab.experiments.result import Event, Result
from tcplab.experiments.sandbox import Sandbox
from tcplab.records import from_json_line, to_json

BUGS = {
    "CLOSE_WAIT": "stuck here = the local application's bug: it never calls close()",
    "FIN_WAIT2": "stuck here = the peer's bug: it never closes its side",
    "LAST_ACK": "waiting for the peer's ACK of our FIN",
    "TIME_WAIT": "normal: the side that closed first waits 2 x MSL (60 s on Linux)",
}

#: A side whose socket is gone, as the events say it.
GONE = Side(state="gone", timer="", timer_left_s=None, owner="")


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> Result:
    pause = 0.3 if quick else 1.0
    with Sandbox({}) as sb:
        r = sb.run(command("half_close", str(pause)),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"the half-close choreography failed: {r.stderr.decode()}")
    steps = [from_json_line(Step, line) for line in r.stdout.splitlines()]
    events = []
    for s in steps:
        c = s.client or GONE
        v = s.server or GONE
        line = (f"{s.step}: client {c.state} {c.timer}".rstrip()
                + f", server {v.state} {v.timer}".rstrip())
        events.append(Event(s.t, line))
        progress(f"  {line}")
    rows = [to_json(s) for s in steps]
    ok, fact = judge(rows)
    return Result(experiment="half-close", ok=ok, fact=fact, settings={"pause_s": pause},
                  facts={"steps": rows, "bugs": BUGS}, events=events)


#: Short names of the choreography's steps, for a fact that lists what was seen.
STEP_NAMES = ("connected", "after shutdown(SHUT_WR)", "while the server still sent",
              "after the server's close()", "a second later")


def judge(steps: list[dict[str, Any]]) -> tuple[bool, str]:
    """Shown or not, and the fact in one sentence, from the states the steps sampled.

    Shown: ESTABLISHED on both; FIN_WAIT2 / CLOSE_WAIT after the client's half-close
    and still while the server sends; then the client in TIME_WAIT (the server gone,
    or caught in LAST_ACK) with its timer counting down. The sentence says only what
    was sampled: the states of each step, and the TIME_WAIT time left as read.
    """
    def state(side: dict[str, Any] | None) -> str:
        return side["state"] if side else "gone"

    seen = [(state(s["client"]), state(s["server"])) for s in steps]
    waits = [(s["t"], s["client"].get("timer_left_s")) for s in steps
             if s["client"] and s["client"]["state"] == "TIME_WAIT"]
    left = [(t, x) for t, x in waits if x is not None]
    counts_down = len(left) >= 2 and left[-1][1] < left[0][1]
    ok = (len(seen) == len(STEP_NAMES)
          and seen[0] == ("ESTABLISHED", "ESTABLISHED")
          and seen[1] == seen[2] == ("FIN_WAIT2", "CLOSE_WAIT")
          and seen[3][0] == "TIME_WAIT" and seen[3][1] in ("gone", "LAST_ACK")
          and counts_down)
    if ok:
        (t1, x1), (t2, x2) = left[0], left[-1]
        return True, ("after shutdown(SHUT_WR) the client sat in FIN_WAIT2 and the server in "
                      "CLOSE_WAIT until the server closed; then the client's socket was in "
                      f"TIME_WAIT with {x1:.1f} s left, {x2:.1f} s left {t2 - t1:.1f} s later")
    saw = "; ".join(f"{name}: client {c}, server {v}"
                    for name, (c, v) in zip(STEP_NAMES, seen, strict=False))
    if waits and not counts_down:
        saw += "; the TIME_WAIT timer did not count down between samples"
    return False, ("expected FIN_WAIT2 and CLOSE_WAIT after the half-close, then TIME_WAIT "
                   f"counting down; saw {saw}")
