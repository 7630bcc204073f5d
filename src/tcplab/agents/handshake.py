"""The handshake choreography, run inside a sandbox:
``python -m tcplab.agents.handshake PORT PAUSE``.

It emits ``Ready`` (its pid, for the tracer's syscall filter), waits for one
line on stdin (the parent's "go", once tracing and capture run), then makes
one connection on 127.0.0.1:PORT slowly, step by step (``PAUSE`` seconds
apart): the server's socket/bind/listen, the client's connect, accept, one
echo, the client's close, the server's close; then a second connection closed
with SO_LINGER 0 (RST). It emits ``Done`` at the end. The parent
(``experiments.handshake``) decodes both lines with ``from_json_line``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

from tcplab.agents.io import emit


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int  # the process whose socket calls the tracer filters on


@dataclass(frozen=True, slots=True)
class Done:
    connections: int  # made and closed (one with FIN, one with RST)


def choreography(port: int, pause: float) -> None:
    """Waits for a line on stdin before starting."""
    emit(Ready(pid=os.getpid()))
    sys.stdin.readline()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(8)
    time.sleep(pause)
    client = socket.socket()
    client.connect(("127.0.0.1", port))
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
    client = socket.socket()
    client.connect(("127.0.0.1", port))
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
    args = p.parse_args(argv)
    choreography(args.port, args.pause)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
