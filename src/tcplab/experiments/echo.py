"""Experiment 1: an echo server and a client, every byte verified.

A server runs in a child process on a free loopback port; the client makes
small round trips (latency), large ones (throughput), and streams a payload
with a half-close; then the server is stopped and its own totals must equal
what the client sent.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcplab.experiments import result as base
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.result import Event
from tcplab.records import from_json
from tcplab.traffic import client
from tcplab.traffic.accept import ServerStats
from tcplab.traffic.client import RoundTrips
from tcplab.traffic.target import resolve
from tcplab.words import plural


@dataclass(frozen=True, slots=True)
class RunWith:
    model: str
    small_count: int  # round trips of 64 B
    large_count: int  # round trips of 1 MiB


@dataclass(frozen=True, slots=True)
class Facts:
    small: RoundTrips
    large: RoundTrips
    stream_bytes: int  # streamed, then half-closed
    stream_identical: bool
    #: The server's own totals (its ``tcplab server --json`` totals line); None when
    #: it stopped without reporting them.
    server_totals: ServerStats | None
    client_bytes: int  # every byte the client sent, round trips and stream
    stream_back: int = 0  # bytes of the stream that came back


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """Experiment 1's result: no variants, no timeline."""


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> Result:
    small = 200 if quick else 2000
    large = 5 if quick else 20
    started = time.monotonic()
    timeline: list[Event] = []

    def mark(what: str) -> None:
        timeline.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    with ServerProcess() as server:
        mark(f"server listening on 127.0.0.1:{server.port} (model {server.listening.model}, "
             f"pid {server.pid})")
        dest = resolve("127.0.0.1", server.port)
        rt_small = client.round_trips(dest, small, 64, timeout=10)
        mark(f"{plural(small, 'echo')} of 64 B: p50 {rt_small.rtt_p50_us:.0f} us, "
             f"p99 {rt_small.rtt_p99_us:.0f} us")
        rt_large = client.round_trips(dest, large, 1 << 20, timeout=30)
        mark(f"{plural(large, 'echo')} of 1 MiB: {rt_large.mib_per_s:.0f} MiB/s")
        blob = os.urandom(4 << 20)
        echoed = bytearray()
        sock = client.connect(dest, 10)
        with sock:
            sent, received = client.stream(sock, io.BytesIO(blob).read, echoed.extend)
        stream_ok = echoed == blob
        mark(f"streamed {sent:,} B then half-closed: {received:,} B came back, "
             f"{'identical' if stream_ok else 'DIFFERENT'}")
        line = server.stop()
    totals = None if line is None else from_json(ServerStats, line)
    client_bytes = small * 64 + large * (1 << 20) + len(blob)
    if totals is None:
        mark("server stopped without reporting its totals")
    else:
        mark(f"server stopped: echoed {totals.bytes_echoed:,} B over "
             f"{plural(totals.accepted, 'connection')}")
    return Result(
        experiment="echo",
        ok=judge(stream_ok, client_bytes, None if totals is None else totals.bytes_echoed),
        settings=RunWith(model=server.listening.model, small_count=small, large_count=large),
        facts=Facts(small=rt_small, large=rt_large, stream_bytes=sent,
                    stream_identical=stream_ok, server_totals=totals,
                    client_bytes=client_bytes, stream_back=len(echoed)),
        events=tuple(timeline),
    )


def judge(stream_identical: bool, client_bytes: int, server_bytes: int | None) -> bool:
    """Shown: the stream came back identical and the server's own total is the client's.

    ``round_trips`` raises VerifyFailed on the first echo that differs, so every round
    trip counted here came back byte for byte. The two claims that can still fail are
    the stream and the server's own total (None when it reported none);
    report/prose.py says which, as it was seen.
    """
    return stream_identical and server_bytes == client_bytes
