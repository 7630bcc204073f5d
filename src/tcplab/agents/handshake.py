"""The handshake choreography, run inside a sandbox:
``python -m tcplab.agents.handshake PORT PAUSE``.

It emits ``Ready`` (its pid, for the tracer's syscall filter), waits for one
line on stdin (the parent's "go", once tracing and capture run), then makes
one connection on HOST:PORT (``--host``, default 127.0.0.1) slowly, step by step (``PAUSE`` seconds
apart): the server's socket/bind/listen, the client's connect, accept, one
echo, the client's close, the server's close; then a second connection closed
with SO_LINGER 0 (RST). It emits ``Done`` at the end. The parent
(``experiments.handshake``) decodes both lines with ``from_json_line``.

Across a link (``--client-netns PATH --server-netns PATH``, the two ends of a
tcplab net) it makes each socket in its own end's namespace: a socket belongs
for life to the namespace it was made in (sock_net(sk), set by sk_alloc), so
this one process enters the server's namespace to make the listener and the
client's to make each client socket, and every packet crosses the veth pair.
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


class Ends:
    """Where each socket is made: here (loopback), or in a net's end namespace."""

    def __init__(self, client: str | None, server: str | None) -> None:
        self.fds = {role: os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    for role, path in (("client", client), ("server", server)) if path}

    def socket(self, role: str) -> socket.socket:
        fd = self.fds.get(role)
        if fd is None:
            return socket.socket()
        from tcplab.observe.nsutil import CLONE_NEWNET, setns

        setns(fd, CLONE_NEWNET)  # a single-threaded process: setns(2) moves it whole
        return socket.socket()


def choreography(port: int, pause: float, host: str = "127.0.0.1",
                 ends: Ends | None = None) -> None:
    """Waits for a line on stdin before starting."""
    ends = ends or Ends(None, None)
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
    p.add_argument("--client-netns", metavar="PATH",
                   help="make the client's sockets in this network namespace")
    p.add_argument("--server-netns", metavar="PATH",
                   help="make the listener in this network namespace")
    args = p.parse_args(argv)
    choreography(args.port, args.pause, args.host, Ends(args.client_netns, args.server_netns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
