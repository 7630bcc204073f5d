"""A bounded flood of clients for the FD-leak experiment (run by ``tcplab.agents.flood``).

Each client connects (non-blocking, given up after ``connect_timeout``),
sends one message, waits up to ``read_timeout`` for its echo, and closes.
Against a server that has run out of fds the three outcomes are the lesson:

* echoed: the server accepted it while it still had fds;
* connected but no echo: the kernel completed the handshake into the accept
  queue, but the server cannot accept() it (EMFILE): the read hangs;
* connect timed out: the accept queue (backlog + 1) is full, the kernel drops
  the SYN, and the client sits in SYN_SENT. There is no "connection refused".

Clients are opened in batches over ``ramp`` seconds so the climb is visible.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from tcplab.errors import errno_name

PAYLOAD = b"tcplab fd leak\n"


@dataclass(frozen=True, slots=True)
class FloodResult:
    clients: int
    echoed: int
    no_echo: int  # connected, but the echo never came (stuck in the accept queue)
    connect_timeouts: int  # never connected: SYN dropped, accept queue full
    hung_up: int = 0  # the server closed before echoing
    errors: dict[str, int] = field(default_factory=dict)  # other failures by errno
    elapsed_s: float = 0.0


class _Client:
    __slots__ = ("deadline", "sock", "stage")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.stage = 0  # 0 connecting, 1 waiting for the echo
        self.deadline = deadline


def run(port: int, clients: int, ramp: float = 1.0, connect_timeout: float = 2.0,
        read_timeout: float = 2.0, host: str = "127.0.0.1") -> FloodResult:
    ep = select.epoll()
    live: dict[int, _Client] = {}
    outcome: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    started = time.monotonic()
    batches = max(1, int(ramp / 0.05))
    per_batch = -(-clients // batches)
    opened = 0
    next_batch = started

    def done(c: _Client, what: str) -> None:
        fd = c.sock.fileno()
        ep.unregister(fd)
        del live[fd]
        c.sock.close()  # FIN (or, for a SYN_SENT socket, just gone)
        outcome[what] += 1

    while opened < clients or live:
        now = time.monotonic()
        if opened < clients and now >= next_batch:
            for _ in range(min(per_batch, clients - opened)):
                opened += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                code = s.connect_ex((host, port))
                if code not in (0, errno.EINPROGRESS):
                    s.close()
                    errors[errno_name(code)] += 1
                    continue
                c = _Client(s, now + connect_timeout)
                live[s.fileno()] = c
                ep.register(s.fileno(), select.EPOLLOUT)
            next_batch = now + 0.05
        wait = 0.05 if opened < clients else 0.1
        for fd, _mask in ep.poll(wait):
            found = live.get(fd)
            if found is None:
                continue
            c = found
            if c.stage == 0:
                code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    errors[errno_name(code)] += 1
                    done(c, "error")
                    continue
                try:
                    c.sock.send(PAYLOAD)
                except OSError as exc:
                    errors[errno_name(exc.errno)] += 1
                    done(c, "error")
                    continue
                c.stage = 1
                c.deadline = time.monotonic() + read_timeout
                ep.modify(fd, select.EPOLLIN)
            else:
                try:
                    data = c.sock.recv(4096)
                except OSError as exc:
                    errors[errno_name(exc.errno)] += 1
                    done(c, "error")
                    continue
                done(c, "echoed" if data else "hung_up")
        now = time.monotonic()
        for c in [c for c in live.values() if now >= c.deadline]:
            done(c, "connect_timeout" if c.stage == 0 else "no_echo")
    ep.close()
    return FloodResult(
        clients=clients, echoed=outcome["echoed"], no_echo=outcome["no_echo"],
        connect_timeouts=outcome["connect_timeout"], hung_up=outcome["hung_up"],
        errors=dict(errors),
        elapsed_s=round(time.monotonic() - started, 3),
    )
