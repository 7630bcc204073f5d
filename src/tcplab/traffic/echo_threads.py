"""The ``threads`` model: one OS thread per connection, blocking sockets.

The model C10k defeats: each connection costs a kernel thread with its own
stack, and the scheduler wakes threads instead of one loop draining ready
sockets. It is also the easiest to read: recv, sendall, repeat.

Backpressure comes for free: ``sendall`` blocks while the peer is not
reading, so the thread stops calling ``recv`` and the kernel's buffers, not
ours, fill up.

The accept loop runs in the main thread over ``poll`` (listener, a signal
pipe, and a pipe that connection threads poke when they free an fd during a
backoff), so EMFILE backoff and Ctrl-C work as in the other models.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from tcplab.traffic.accept import Acceptor, ServerStats, poll_timeout
from tcplab.traffic.server import (
    READ_SIZE,
    Hooks,
    ServerConfig,
    Ticker,
    drain,
    snapshot,
    stop_on_signals,
    tune_accepted,
)

#: Each connection thread's stack. glibc's default is 8 MiB of address space
#: (RLIMIT_STACK); an echo loop needs a few KiB, and 10,000 threads with 8 MiB
#: each would reserve 80 GB of address space.
THREAD_STACK = 256 * 1024


def serve(listener: socket.socket, config: ServerConfig, hooks: Hooks) -> ServerStats:
    stats = ServerStats()
    lock = threading.Lock()
    acceptor = Acceptor(listener, stats, hooks.log)
    conns: set[socket.socket] = set()
    leaked: list[socket.socket] = []
    freed_r, freed_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ticker = Ticker(config.stats_interval)

    def handle(sock: socket.socket) -> None:
        try:
            while True:
                data = sock.recv(READ_SIZE)
                if not data:
                    break  # the peer's FIN: everything it sent is echoed
                sock.sendall(data)
                with lock:
                    stats.bytes_echoed += len(data)
                if config.close_first and not config.leak:
                    break
        except OSError:
            pass  # reset by peer, or shut down by our own stop
        with lock:
            conns.discard(sock)
            if config.leak:
                leaked.append(sock)  # never closed: CLOSE_WAIT until we exit
                stats.leaked += 1
                return
            stats.closed += 1
        sock.close()
        if acceptor.paused:
            acceptor.fd_freed()
            try:
                os.write(freed_w, b"x")  # wake the acceptor: an fd is free
            except BlockingIOError:
                pass

    threading.stack_size(THREAD_STACK)
    poller = select.poll()
    lfd = listener.fileno()
    with stop_on_signals() as stop:
        poller.register(lfd, select.POLLIN)
        poller.register(stop.fd, select.POLLIN)
        poller.register(freed_r, select.POLLIN)
        try:
            while not stop.requested:
                now = time.monotonic()
                timeout = poll_timeout(ticker.timeout(now), acceptor.timeout(now))
                timeout_ms = None if timeout is None else int(timeout * 1000) + 1
                for fd, _mask in poller.poll(timeout_ms):
                    if fd == lfd:
                        socks, delay = acceptor.accept_ready()
                        for sock in socks:
                            sock.setblocking(True)
                            tune_accepted(sock, config)
                            with lock:
                                conns.add(sock)
                            threading.Thread(target=handle, args=(sock,), daemon=True).start()
                        if delay is not None:
                            poller.unregister(lfd)
                    elif fd == freed_r:
                        drain(freed_r)
                    else:
                        stop.drain()
                now = time.monotonic()
                if acceptor.resume_due(now):
                    poller.register(lfd, select.POLLIN)
                if ticker.fire(now):
                    with lock:
                        line = snapshot(stats)
                    hooks.stats(line)
        finally:
            if not config.leak:
                with lock:
                    live = list(conns)
                for sock in live:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recv/sendall
                    except OSError:
                        pass
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    with lock:
                        if not conns:
                            break
                    time.sleep(0.01)
            else:
                # Leak mode closes nothing, but a handler whose peer has already
                # closed is about to count its socket as leaked: let it, so the
                # totals match what ss shows (seen under load: CLOSE_WAIT on the
                # socket, totals "leaked 0", when the stop came first).
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    with lock:
                        ending = [s for s in conns if _peer_closed(s)]
                    if not ending:
                        break
                    time.sleep(0.01)
            os.close(freed_r)
            os.close(freed_w)
    return stats


def _peer_closed(sock: socket.socket) -> bool:
    """True when a read would return EOF (or fail) at once: the peer's FIN arrived."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset: the handler's own recv fails too, and counts it
