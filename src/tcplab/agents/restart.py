"""A server restarted over its own TIME_WAIT sockets: ``python -m tcplab.agents.restart N``.

Run inside a sandbox. Two rounds, on ports 8080 and 8081: a listener (with
SO_REUSEADDR in the first round, without it in the second) accepts N
connections and closes each one first, so the server's side of every one
ends in TIME_WAIT on the server's port; the listener is then closed (the
server is stopped). A new listener then binds the same address and port,
first without SO_REUSEADDR, then with it; one ``Bind`` is emitted per try,
with the TIME_WAIT count on the port (sock_diag) at that moment and the
errno and text bind() gave.

Why two rounds: a TIME_WAIT socket keeps the SO_REUSEADDR flag of the
socket it replaced (``tw->tw_reuse = sk->sk_reuse`` in inet_twsk_alloc,
net/ipv4/inet_timewait_sock.c), and an accepted socket has its listener's
(sk_clone_lock copies it). The bind check (inet_bind_conflict, called by
inet_csk_bind_conflict in net/ipv4/inet_connection_sock.c) lets a new socket
share the port with a non-listening one only when BOTH have sk_reuse set; so
the new server's SO_REUSEADDR helps only if the old server had set it too.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import time
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit
from tcplab.kernel import tcp_states

HOST = "127.0.0.1"
#: The first round's port (the old server had SO_REUSEADDR); the second's is the next one.
PORT = 8080


@dataclass(frozen=True, slots=True)
class Bind:
    """One bind() of the new server's listener, after the old one stopped."""

    t: float  # seconds since the agent started
    port: int
    old_reuseaddr: bool  # the stopped server's listener (and so its connections) had it
    new_reuseaddr: bool  # the new listener set SO_REUSEADDR before bind()
    time_wait: int  # TIME_WAIT sockets whose local port is ``port``, just before bind()
    listening: bool  # bind() and listen() succeeded
    errno: int | None = None  # bind()'s errno when it failed
    error: str | None = None  # its text, as the kernel's strerror gives it


def server_time_wait(port: int, ends: Ends | None = None) -> int:
    """TIME_WAIT sockets on the server's side of ``port`` (local port = port)."""
    with (ends or Ends()).table("server") as table:
        return sum(1 for s in table.sockets(port)
                   if s.state == tcp_states.TIME_WAIT and s.sport == port)


def serve_and_stop(port: int, reuse: bool, connections: int, host: str = HOST,
                   ends: Ends | None = None) -> None:
    """A server that closes each of ``connections`` first, then stops listening."""
    ends = ends or Ends()
    ls = ends.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
    ls.bind((host, port))
    ls.listen()
    for _ in range(connections):
        client = ends.socket("client")
        client.settimeout(5)
        client.connect((host, port))
        with client:
            server, _ = ls.accept()
            server.close()  # the server closes first: its side will hold TIME_WAIT
            client.settimeout(5)
            client.recv(1)  # the server's FIN: EOF
    ls.close()  # the server is stopped
    # The clients' FINs turn the server's FIN_WAIT2 sockets into TIME_WAIT; on loopback
    # within microseconds, but wait (bounded) rather than race them.
    deadline = time.monotonic() + 2.0
    while server_time_wait(port, ends) < connections and time.monotonic() < deadline:
        time.sleep(0.01)


def try_bind(port: int, old: bool, new: bool, t0: float, host: str = HOST,
             ends: Ends | None = None) -> Bind:
    ends = ends or Ends()
    tw = server_time_wait(port, ends)
    t = round(time.monotonic() - t0, 3)
    s = ends.socket("server")
    try:
        if new:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen()
    except OSError as e:
        code = e.errno if e.errno is not None else errno.EIO
        return Bind(t, port, old, new, tw, False, code, os.strerror(code))
    finally:
        s.close()
    return Bind(t, port, old, new, tw, True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.restart",
                                description="Stop a server whose port holds TIME_WAIT "
                                "sockets and bind a new one; emit a Bind per try.")
    p.add_argument("connections", type=int, help="connections the old server closes first")
    p.add_argument("--host", default=HOST, help="the server's address")
    add_arguments(p)
    args = p.parse_args(argv)
    ends = Ends.from_args(args)
    t0 = time.monotonic()
    for port, old in ((PORT, True), (PORT + 1, False)):
        serve_and_stop(port, old, args.connections, args.host, ends)
        for new in (False, True):
            emit(try_bind(port, old, new, t0, args.host, ends))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
