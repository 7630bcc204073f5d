"""The half-closed trap, one connection at a time: ``tcplab experiment half-close``.

A choreography (``python -m tcplab.experiments.half_close``) runs inside a
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

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tcplab.errors import ExperimentFailed
from tcplab.experiments import result as base
from tcplab.experiments.result import Event
from tcplab.experiments.sandbox import Sandbox
from tcplab.records import RecordError, from_json

BUGS = {
    "CLOSE_WAIT": "stuck here = the local application's bug: it never calls close()",
    "FIN_WAIT2": "stuck here = the peer's bug: it never closes its side",
    "LAST_ACK": "waiting for the peer's ACK of our FIN",
    "TIME_WAIT": "normal: the side that closed first waits 2 x MSL (60 s on Linux)",
}


@dataclass(frozen=True, slots=True)
class Side:
    """One socket of the connection, as sock_diag showed it after a step."""

    state: str
    timer: str  # "time-wait 58.4s"; "" without a timer
    timer_left_s: float | None
    owner: str  # "process", or "kernel" (inode 0: a TIME_WAIT minisocket)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the choreography and both sockets after it (None: gone)."""

    t: float
    step: str
    client: Side | None
    server: Side | None


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


def _states(client: socket.socket, server: socket.socket | None, client_port: int,
            port: int) -> dict[str, Any]:
    from tcplab.kernel import tcp_states
    from tcplab.observe.sockets import SocketTable

    with SocketTable() as table:
        socks = table.sockets(port)
    out: dict[str, Any] = {"client": None, "server": None}
    for s in socks:
        if s.state == tcp_states.LISTEN:
            continue
        side = "client" if s.sport == client_port else "server"
        timer = {0: "", 1: "retransmit", 2: "keepalive", 3: "time-wait", 4: "probe"}[s.timer]
        out[side] = {"state": tcp_states.name(s.state),
                     "timer": f"{timer} {s.expires_ms / 1000:.1f}s" if timer else "",
                     "timer_left_s": round(s.expires_ms / 1000, 3) if timer else None,
                     "owner": "kernel" if s.inode == 0 else "process"}
    return out


def choreography(pause: float) -> list[dict[str, Any]]:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 8080))
    ls.listen()
    client = socket.create_connection(("127.0.0.1", 8080))
    server, _ = ls.accept()
    cport = client.getsockname()[1]
    steps: list[dict[str, Any]] = []

    def step(what: str) -> None:
        time.sleep(pause)
        steps.append({"t": round(time.monotonic() - t0, 3), "step": what,
                      **_states(client, server, cport, 8080)})

    t0 = time.monotonic()
    step("connected")
    client.shutdown(socket.SHUT_WR)
    step("the client calls shutdown(SHUT_WR): its FIN goes out, the server ACKs it")
    server.sendall(b"still here")
    got = client.recv(100)
    step(f"the server still sends, the client reads \"{got.decode(errors='replace')}\" "
         f"({len(got)} B): half-close is one direction")
    server.close()
    step("the server calls close(): its FIN goes out, the client ACKs it")
    time.sleep(1.0)
    step("a second later: the TIME_WAIT countdown runs")
    client.close()
    ls.close()
    return steps


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> Result:
    pause = 0.3 if quick else 1.0
    with Sandbox({}) as sb:
        r = sb.run([sys.executable, "-m", "tcplab.experiments.half_close", str(pause)],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0:
        raise ExperimentFailed(
            f"the half-close choreography exited {r.returncode}: "
            f"{_last_line(r.stderr) or 'no output'}",
            hint="run again with --debug; 'tcplab check' says what works here")
    try:
        steps = tuple(from_json(Step, s) for s in json.loads(r.stdout))
    except (ValueError, RecordError) as e:
        raise ExperimentFailed(f"the half-close choreography wrote something else than its "
                               f"steps: {e}", hint="this is a bug in tcplab: report it") from None
    events = []
    for s in steps:
        c = s.client or Side("gone", "", None, "")
        v = s.server or Side("gone", "", None, "")
        line = (f"{s.step}: client {c.state} {c.timer}".rstrip()
                + f", server {v.state} {v.timer}".rstrip())
        events.append(Event(s.t, line))
        progress(f"  {line}")
    return Result(experiment="half-close", ok=judge(steps), settings=RunWith(pause_s=pause),
                  facts=Facts(steps=steps, bugs=dict(BUGS)), events=tuple(events))


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


if __name__ == "__main__":
    sys.stdout.write(json.dumps(choreography(float(sys.argv[1]))) + "\n")
