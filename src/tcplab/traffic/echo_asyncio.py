"""The ``asyncio`` model: the stdlib event loop (EpollSelector on Linux), protocol-based.

Protocols, not streams: the protocol writes the bytes straight back through
the transport, with no coroutine switch per read.

A ``BufferedProtocol``, not a plain ``Protocol``: with a plain protocol,
CPython 3.11's selector transport calls ``sock.recv(256 * 1024)`` for every
read; 256 KiB is above glibc's mmap threshold (128 KiB), so each read maps,
faults, shrinks and unmaps a fresh region (strace: recvfrom, mmap, mremap,
munmap, sendto per echo), several times uvloop's server CPU per echo
(bench/results.md, "Where uvloop's time goes", has the figure). With ``get_buffer`` the
transport ``recv_into``s one 64 KiB buffer that every connection shares (the
loop is single-threaded and each read is written back before the next).

The accept loop is our own (see ``accept.py``): the listener is watched with
``loop.add_reader`` and every accepted socket is handed to
``loop.connect_accepted_socket``.

Leak mode: ``eof_received`` returns True, which keeps the transport (and its
fd) open after the peer's FIN; we keep a reference so the garbage collector
does not close it for us. One limit of this model: when a peer *resets* a
leaked connection, the transport closes its own socket (as Go's finalizer
would, later). The lab's leak, a polite close that leaves CLOSE_WAIT, is
never closed. The ``epoll`` and ``threads`` models never close even on RST.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import cast

from tcplab.traffic.accept import Acceptor, ServerStats
from tcplab.traffic.server import (
    HIGH_WATER,
    READ_SIZE,
    Hooks,
    ServerConfig,
    note_stop,
    snapshot,
    stop_pending,
    tune_accepted,
)


class _EchoBase(asyncio.BaseProtocol):
    """What the two protocols share: everything but how bytes arrive."""

    __slots__ = ("server", "transport")

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.server.conns.add(self)

    def eof_received(self) -> bool | None:
        if self.server.leak:
            self.server.stats.leaked += 1
            return True  # keep the socket open: it now sits in CLOSE_WAIT
        return None  # the transport flushes what is left, then closes

    def pause_writing(self) -> None:
        # The peer is not reading: stop reading from it too (backpressure).
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self)


class EchoProtocol(_EchoBase, asyncio.BufferedProtocol):
    """For the stdlib loop: reads into one shared buffer (see the module docstring)."""

    __slots__ = ("buffer",)

    def __init__(self, server: _Server) -> None:
        super().__init__(server)
        self.buffer = server.buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        transport = self.transport
        assert transport is not None
        # bytes(): the transport may keep what it cannot send yet, and the
        # shared buffer is overwritten by the next read.
        transport.write(bytes(self.buffer[:nbytes]))
        server = self.server
        server.stats.bytes_echoed += nbytes
        if server.close_first and not server.leak:
            transport.close()


class DataEchoProtocol(_EchoBase, asyncio.Protocol):
    """For uvloop: it reads into its own preallocated buffer, so a plain protocol
    costs one Python call per read instead of two (get_buffer, buffer_updated): less
    user CPU per echo (bench/results.md, "Where uvloop's time goes")."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(data)
        server = self.server
        server.stats.bytes_echoed += len(data)
        if server.close_first and not server.leak:
            transport.close()


class _Server:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        config: ServerConfig,
        hooks: Hooks,
        protocol: type[_EchoBase] = EchoProtocol,
    ) -> None:
        self.loop = loop
        self.protocol = protocol
        self.listener = listener
        self.config = config
        self.hooks = hooks
        self.leak = config.leak
        self.close_first = config.close_first
        self.stats = ServerStats()
        self.buffer = memoryview(bytearray(READ_SIZE))
        self.conns: set[_EchoBase] = set()
        self.acceptor = Acceptor(listener, self.stats, hooks.log)
        self.retry: asyncio.TimerHandle | None = None
        self.stopping = False

    def start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self.on_readable)

    def on_readable(self) -> None:
        socks, delay = self.acceptor.accept_ready()
        for sock in socks:
            tune_accepted(sock, self.config)
            self.loop.create_task(self.adopt(sock))
        if delay is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.retry = self.loop.call_later(delay, self.resume)

    def resume(self) -> None:
        self.retry = None
        self.acceptor.paused = False
        if self.stopping:
            return
        self.loop.add_reader(self.listener.fileno(), self.on_readable)
        self.on_readable()

    async def adopt(self, sock: socket.socket) -> None:
        try:
            factory = self.protocol
            await self.loop.connect_accepted_socket(lambda: factory(self), sock)
        except OSError:
            sock.close()
            self.stats.closed += 1

    def lost(self, proto: _EchoBase) -> None:
        self.conns.discard(proto)
        self.stats.closed += 1
        if self.retry is not None:
            # A closed connection gave an fd back: retry accept() now rather
            # than waiting out the backoff.
            self.retry.cancel()
            self.resume()

    def tick(self, interval: float) -> None:
        self.hooks.stats(snapshot(self.stats))
        self.loop.call_later(interval, self.tick, interval)

    async def shutdown(self, grace: float = 1.0) -> None:
        """Stop accepting; close every connection unless leaking.

        ``transport.close()`` waits for the write buffer to drain, which never
        happens for a peer that does not read: after ``grace`` seconds the
        stragglers are aborted (RST) so the totals add up and we exit.
        """
        self.stopping = True
        if self.retry is not None:
            self.retry.cancel()
        else:
            self.loop.remove_reader(self.listener.fileno())
        if self.leak:
            return
        for proto in list(self.conns):
            if proto.transport is not None:
                proto.transport.close()
        deadline = self.loop.time() + grace
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for proto in list(self.conns):
            if proto.transport is not None:
                proto.transport.abort()
        for _ in range(3):  # let connection_lost run
            await asyncio.sleep(0)


async def _main(listener: socket.socket, config: ServerConfig, hooks: Hooks,
                protocol: type[_EchoBase]) -> ServerStats:
    loop = asyncio.get_running_loop()
    server = _Server(loop, listener, config, hooks, protocol)
    stop = loop.create_future()

    def request_stop(signum: int) -> None:
        note_stop(signum)
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig)
    pending = stop_pending()  # a worker's stop signal that came before (--workers)
    if pending is not None:
        request_stop(pending)
    server.start()
    if config.stats_interval:
        loop.call_later(config.stats_interval, server.tick, config.stats_interval)
    try:
        await stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.shutdown()
    return server.stats


def serve_with(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    listener: socket.socket,
    config: ServerConfig,
    hooks: Hooks,
    protocol: type[_EchoBase] = EchoProtocol,
) -> ServerStats:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(listener, config, hooks, protocol))


def serve(listener: socket.socket, config: ServerConfig, hooks: Hooks) -> ServerStats:
    return serve_with(None, listener, config, hooks)
