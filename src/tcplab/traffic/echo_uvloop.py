"""The ``uvloop`` model: the same protocol as ``asyncio``, on libuv's loop.

uvloop runs the event loop in C (libuv over epoll): less server CPU per echo
than the stdlib loop and a Go reference server, most of it the kernel's own
read and write (see bench/results.md, "CPU per echo"). Its own accept
path closes connections silently on EMFILE, so, as in every model, the
accept loop is ours.
"""

from __future__ import annotations

import socket

import uvloop

from tcplab.traffic.accept import ServerStats
from tcplab.traffic.echo_asyncio import DataEchoProtocol, serve_with
from tcplab.traffic.server import Hooks, ServerConfig


def serve(listener: socket.socket, config: ServerConfig, hooks: Hooks) -> ServerStats:
    return serve_with(uvloop.new_event_loop, listener, config, hooks, DataEchoProtocol)
