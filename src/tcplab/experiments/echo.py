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

from tcplab.experiments.children import ServerProcess
from tcplab.experiments.result import Event, Result
from tcplab.traffic import client
from tcplab.traffic.target import resolve
from tcplab.words import plural


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> Result:
    small = 200 if quick else 2000
    large = 5 if quick else 20
    started = time.monotonic()
    timeline: list[Event] = []

    def mark(what: str) -> None:
        timeline.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    with ServerProcess() as server:
        mark(f"server listening on 127.0.0.1:{server.port} (model {server.info['model']}, "
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
        totals = server.stop()
    client_bytes = small * 64 + large * (1 << 20) + len(blob)
    server_bytes = None if totals is None else totals.get("bytes_echoed")
    accepted = None if totals is None else totals.get("accepted")
    if server_bytes is None:
        mark("server stopped without reporting its totals")
    else:
        mark(f"server stopped: echoed {server_bytes:,} B over "
             f"{plural(accepted or 0, 'connection')}")
    ok, fact = judge(small, large, rt_small.rtt_p50_us, rt_large.mib_per_s,
                     stream=(len(blob), len(echoed), stream_ok),
                     client_bytes=client_bytes, server_bytes=server_bytes)
    return Result(
        experiment="echo",
        ok=ok,
        fact=fact,
        settings={"model": server.info["model"], "small_count": small, "large_count": large},
        facts={
            "small": rt_small,
            "large": rt_large,
            "stream_bytes": sent,
            "stream_identical": stream_ok,
            "server_totals": totals or {},
            "client_bytes": client_bytes,
        },
        events=timeline,
    )


def judge(small: int, large: int, p50_us: float, mib_per_s: float, stream: tuple[int, int, bool],
          client_bytes: int, server_bytes: int | None) -> tuple[bool, str]:
    """Shown or not, and the fact, from what was measured.

    ``round_trips`` raises VerifyFailed on the first echo that differs, so every round
    trip counted here came back byte for byte. The two claims that can still fail are
    the stream (``stream``: bytes sent, bytes back, identical) and the server's own
    total (None when it reported none); a failed one is stated as it was seen, and the
    "exactly the bytes sent" sentence is made only when both hold.
    """
    sent, back, identical = stream
    ok = identical and server_bytes == client_bytes
    if ok:
        return True, (f"{plural(small, 'small echo')} at p50 {p50_us:.0f} us, "
                      f"{plural(large, 'echo')} of 1 MiB at {mib_per_s:.0f} MiB/s; the server "
                      f"echoed exactly the {client_bytes:,} bytes sent")
    seen = []
    if not identical:
        seen.append(f"the {sent:,} B stream came back different ({back:,} B, not identical)")
    if server_bytes is None:
        seen.append("the server reported no totals, so its count could not be checked")
    elif server_bytes != client_bytes:
        seen.append(f"the server counted {server_bytes:,} B echoed, the client sent "
                    f"{client_bytes:,} B")
    return False, "; ".join(seen)
