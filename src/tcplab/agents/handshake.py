"""The handshake choreography, run inside a sandbox:
``python -m tcplab.agents.handshake PORT PAUSE``.

It emits ``Ready`` (its pid, for the tracer's syscall filter), waits for one
line on stdin (the parent's "go", once tracing and capture run), then makes
one connection on HOST:PORT (``--host``, default 127.0.0.1) slowly, step by step (``PAUSE`` seconds
apart): the server's socket/bind/listen, the client's connect, accept, one
echo, the client's close, the server's close; then a second connection closed
with SO_LINGER 0 (RST). It emits ``Done`` at the end. The parent
(``experiments.handshake``) decodes both lines with ``from_json_line``.

Across a link (``--client-netns PATH --server-netns PATH``) it makes each
socket in its own end's namespace (agents/ends.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int  # the process whose socket calls the tracer filters on


@dataclass(frozen=True, slots=True)
class Done:
    connections: int  # made and closed (one with FIN, one with RST)


def choreography(port: int, pause: float, host: str = "127.0.0.1",
                 ends: Ends | None = None) -> None:
    """Waits for a line on stdin before starting."""
    ends = ends or Ends()
    emit(Ready(pid=os.getpid()))
    sys.stdin.readline()
    lst = ends.socket("server")
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, port))
    lst.listen(8)
    time.sleep(pause)
    client = ends.socket("client")
    client.connect((host, port))
    server, _ = lst.accept()
    time.sleep(pause)
    client.sendall(b"hello")
    server.sendall(server.recv(5))
    client.recv(5)
    time.sleep(pause)
    # The active close: FIN_WAIT1, then FIN_WAIT2 as a minisocket once the server's ACK
    # comes (tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) in tcp_rcv_state_process), TIME_WAIT
    # when the server's FIN does (tcp_timewait_state_process).
    client.close()
    time.sleep(pause)
    server.close()  # the passive close: CLOSE_WAIT until now, then LAST_ACK
    time.sleep(pause)
    client = ends.socket("client")
    client.connect((host, port))
    server, _ = lst.accept()
    time.sleep(pause)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST: no FIN, no TIME_WAIT
    time.sleep(pause)
    server.close()
    lst.close()
    emit(Done(connections=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.handshake",
                                description="Emit Ready, wait for a line on stdin, make and "
                                "close two connections slowly, emit Done.")
    p.add_argument("port", type=int)
    p.add_argument("pause", type=float, help="seconds between steps")
    p.add_argument("--host", default="127.0.0.1", help="the server's address")
    add_arguments(p)
    args = p.parse_args(argv)
    choreography(args.port, args.pause, args.host, Ends.from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
