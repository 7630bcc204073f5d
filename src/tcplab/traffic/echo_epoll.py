"""The ``epoll`` model: one thread, one ``select.epoll``, written out by hand.

This is what Go's netpoll (and every event loop) does underneath, with
nothing hidden:

1. register: every socket is added to one epoll instance with the events we
   care about (EPOLLIN to read; EPOLLOUT only while we have bytes the kernel
   would not take yet);
2. wait: ``epoll_wait`` sleeps until some socket is ready (or a timer is due);
3. read: ``recv`` what arrived, up to 64 KiB;
4. write: ``send`` it back; what the kernel does not take waits in a buffer and
   we ask for EPOLLOUT; above the high-water mark we stop asking for EPOLLIN,
   so a peer that never reads cannot make us buffer without bound;
5. unregister: on EOF (after the last echoed byte) or an error, remove the
   socket from epoll and close it (or, in leak mode, never close it).

Level-triggered throughout: simpler to read, and we always drain what we can.
"""

from __future__ import annotations

import select
import socket
import time

from tcplab.traffic.accept import Acceptor, ServerStats, poll_timeout
from tcplab.traffic.server import (
    HIGH_WATER,
    READ_SIZE,
    Hooks,
    ServerConfig,
    Ticker,
    snapshot,
    stop_on_signals,
    tune_accepted,
)

IN = select.EPOLLIN
OUT = select.EPOLLOUT


class Conn:
    __slots__ = ("eof", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()  # bytes read but not yet sent back
        self.eof = False  # the peer shut down its write side


def serve(listener: socket.socket, config: ServerConfig, hooks: Hooks) -> ServerStats:
    stats = ServerStats()
    acceptor = Acceptor(listener, stats, hooks.log)
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    leaked: list[socket.socket] = []  # leak mode: referenced forever, never closed
    lfd = listener.fileno()
    ticker = Ticker(config.stats_interval)

    def finish(fd: int, conn: Conn) -> None:
        """The connection is done: unregister it, and close it unless leaking."""
        ep.unregister(fd)
        del conns[fd]
        if config.leak:
            leaked.append(conn.sock)
            stats.leaked += 1
            return
        conn.sock.close()
        stats.closed += 1
        acceptor.fd_freed()

    def on_readable(fd: int, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ECONNRESET and friends
            finish(fd, conn)
            return
        if not data:
            conn.eof = True
            if conn.pending:
                ep.modify(fd, OUT)  # flush the rest, then close
            else:
                finish(fd, conn)  # in leak mode the socket now stays in CLOSE_WAIT
            return
        stats.bytes_echoed += len(data)
        if conn.pending:
            conn.pending += data
        else:
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                finish(fd, conn)
                return
            if sent < len(data):
                conn.pending += data[sent:]
        if conn.pending:
            ep.modify(fd, OUT if len(conn.pending) >= HIGH_WATER else IN | OUT)
        elif config.close_first and not config.leak:
            finish(fd, conn)

    def on_writable(fd: int, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            return
        except OSError:
            finish(fd, conn)
            return
        del conn.pending[:sent]
        if conn.pending:
            if len(conn.pending) < HIGH_WATER and not conn.eof:
                ep.modify(fd, IN | OUT)
        elif conn.eof or (config.close_first and not config.leak):
            finish(fd, conn)
        else:
            ep.modify(fd, IN)

    with stop_on_signals() as stop:
        ep.register(lfd, IN)
        ep.register(stop.fd, IN)
        try:
            while not stop.requested:
                now = time.monotonic()
                timeout = poll_timeout(ticker.timeout(now), acceptor.timeout(now))
                events = ep.poll(-1 if timeout is None else timeout)
                for fd, mask in events:
                    if fd == lfd:
                        socks, delay = acceptor.accept_ready()
                        for sock in socks:
                            sock.setblocking(False)
                            tune_accepted(sock, config)
                            conns[sock.fileno()] = Conn(sock)
                            ep.register(sock, IN)
                        if delay is not None:
                            ep.unregister(lfd)  # else level-triggered epoll spins
                    elif fd == stop.fd:
                        stop.drain()
                    else:
                        conn = conns.get(fd)
                        if conn is None:
                            continue
                        if mask & OUT:
                            on_writable(fd, conn)
                        elif mask & (IN | select.EPOLLHUP | select.EPOLLERR):
                            on_readable(fd, conn)
                now = time.monotonic()
                if acceptor.resume_due(now):
                    ep.register(lfd, IN)
                if ticker.fire(now):
                    hooks.stats(snapshot(stats))
        finally:
            if not config.leak:
                for conn in conns.values():
                    conn.sock.close()
                    stats.closed += 1
            ep.close()
    return stats
