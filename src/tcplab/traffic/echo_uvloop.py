"""The ``uvloop`` model: the same protocol as ``asyncio``, on libuv's loop.

uvloop runs the event loop in C (libuv over epoll): 3.65 us of server CPU
per echo here against 4.44 us for the stdlib loop and 4.99 us for a Go
reference (bench/echo_vs_go.py), of which about 3.1 us is the kernel's own
read and write. Its own accept
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
