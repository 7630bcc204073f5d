"""The half-close choreography, run inside a sandbox: ``python -m tcplab.agents.half_close PAUSE``.

One connection to HOST:8080 (``--host``; default 127.0.0.1, the sandbox's own
loopback; across a link each socket in its end's namespace, agents/ends.py), closed step
by step with ``PAUSE`` seconds before each look; after each step both
sockets' states and timers are read from sock_diag and one ``Step`` is
emitted (five in all). The parent (``experiments.half_close``) decodes each
line with ``from_json_line(Step, ...)``.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit
from tcplab.kernel import tcp_states

PORT = 8080

#: idiag_timer values (net/ipv4/inet_diag.c: inet_sk_diag_fill, inet_twsk_diag_fill).
TIMERS = {0: "", 1: "retransmit", 2: "keepalive", 3: "time-wait", 4: "probe"}


@dataclass(frozen=True, slots=True)
class Side:
    """One end of the connection as sock_diag showed it."""

    state: str  # netstat's name, e.g. FIN_WAIT2
    timer: str  # "time-wait 58.4s", or "" when no timer runs
    timer_left_s: float | None
    owner: str  # "process", or "kernel" (inode 0: no process holds it any more)


@dataclass(frozen=True, slots=True)
class Step:
    t: float  # seconds since the connection was made, when the look at the sockets began
    step: str  # what was just done, in words
    client: Side | None  # None: the socket is gone
    server: Side | None
    #: How long the look took (the sock_diag dump): on a loaded machine it can be seconds,
    #: and the kernel computed the timers somewhere within it.
    look_s: float = 0.0


def sides(client_port: int, port: int = PORT, ends: Ends | None = None
          ) -> tuple[Side | None, Side | None]:
    """(client, server) ends of the connection from ``client_port`` to ``port``,
    each read in its end's namespace."""
    ends = ends or Ends()
    found: dict[str, Side] = {}
    for role in ("client", "server") if ends.paths["client"] else ("client",):
        with ends.table(role) as table:
            socks = table.sockets(port)
        for s in socks:
            if s.state == tcp_states.LISTEN:
                continue
            timer = TIMERS[s.timer]
            found["client" if s.sport == client_port else "server"] = Side(
                state=tcp_states.name(s.state),
                timer=f"{timer} {s.expires_ms / 1000:.1f}s" if timer else "",
                timer_left_s=round(s.expires_ms / 1000, 3) if timer else None,
                owner="kernel" if s.inode == 0 else "process")
    return found.get("client"), found.get("server")


def choreography(pause: float, host: str = "127.0.0.1", ends: Ends | None = None) -> None:
    ends = ends or Ends()
    ls = ends.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, PORT))
    ls.listen()
    client = ends.socket("client")
    client.connect((host, PORT))
    server, _ = ls.accept()
    cport = client.getsockname()[1]

    def step(what: str) -> None:
        time.sleep(pause)
        began = time.monotonic()
        c, v = sides(cport, PORT, ends)
        emit(Step(t=round(began - t0, 3), step=what, client=c, server=v,
                  look_s=round(time.monotonic() - began, 3)))

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.half_close",
                                description="Close one connection step by step; emit a Step "
                                "after each.")
    p.add_argument("pause", type=float, help="seconds before each look")
    p.add_argument("--host", default="127.0.0.1", help="the server's address")
    add_arguments(p)
    args = p.parse_args(argv)
    choreography(args.pause, args.host, Ends.from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
