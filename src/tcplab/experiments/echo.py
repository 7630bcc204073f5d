"""Experiment 1: an echo server and a client, every byte verified.

A server runs in a child process on a free port at the link's server end
(``--link loopback``: one private namespace; ``veth``: a temporary tcplab net);
clients at its client end make small round trips (latency), large ones
(throughput), and stream a payload with a half-close; then the server is
stopped and its own totals must equal what the client sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcplab.errors import ExperimentFailed
from tcplab.experiments import result as base
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec, ends
from tcplab.experiments.result import Event
from tcplab.records import RecordError, from_json, from_json_line
from tcplab.traffic.accept import ServerStats
from tcplab.traffic.client import RoundTrips
from tcplab.words import duration_us, plural


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


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None,
        link: LinkSpec = LOOPBACK) -> Result:
    """The server at the link's server end, every client a child at its client end
    (``tcplab client``): on loopback both in one private namespace, on ``--link
    veth`` across the veth pair, shaped as asked. On a delayed link the counts are
    cut so that the run stays near half a minute (the round trips are the link's)."""
    rtt = link.rtt_s
    small = 200 if quick else 2000
    large = 5 if quick else 20
    blob_size = 4 << 20
    if rtt or link.shaping.rate_mbit:
        small = max(20, min(small, int(10 / max(rtt, 0.001))))
        large, blob_size = 2, 1 << 20
    started = time.monotonic()
    timeline: list[Event] = []

    def mark(what: str) -> None:
        timeline.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    with ends(link, prefix="echo") as e, \
            ServerProcess(["--host", e.server_host], popen=e.server) as server:
        mark(f"server listening on {e.server_host}:{server.port} "
             f"(model {server.listening.model}, pid {server.pid})")
        rt_small = _round_trips(e, server.port, small, 64, timeout=10 + 4 * rtt)
        mark(f"{plural(small, 'echo')} of 64 B: p50 {_us(rt_small.rtt_p50_us)}, "
             f"p99 {_us(rt_small.rtt_p99_us)}"
             + (f" (the link's RTT: {2 * link.shaping.delay_ms:g} ms"
                + (f" +- {2 * link.shaping.jitter_ms:g}" if link.shaping.jitter_ms else "")
                + ")" if rtt else ""))
        rt_large = _round_trips(e, server.port, large, 1 << 20, timeout=30 + 40 * rtt)
        mark(f"{plural(large, 'echo')} of 1 MiB: {rt_large.mib_per_s:.0f} MiB/s")
        blob = os.urandom(blob_size)
        sent, echoed = _stream(e, server.port, blob, timeout=60 + 100 * rtt)
        stream_ok = echoed == blob
        mark(f"streamed {sent:,} B then half-closed: {len(echoed):,} B came back, "
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
        link=e.used,
    )


def _us(us: float) -> str:
    return f"{us:.0f} us" if us < 10_000 else duration_us(us)


def _client(e: Ends, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "tcplab", "client", "--host", e.server_host,
            "--port", str(port), *args]


def _round_trips(e: Ends, port: int, count: int, size: int, timeout: float) -> RoundTrips:
    """``tcplab client --count N --size B --json`` at the client's end: every echo
    verified there (a differing one is its error, and ours)."""
    proc = e.client(_client(e, port, "--count", str(count), "--size", str(size),
                            "--timeout", f"{timeout:g}", "--json"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _finish(proc, timeout * max(count, 1) + 30)
    if proc.returncode != 0:
        raise ExperimentFailed(f"the client's {plural(count, 'echo')} of {size:,} B failed: "
                               f"{_last(err) or proc.returncode}")
    try:
        return from_json_line(RoundTrips, out.splitlines()[-1])
    except (RecordError, IndexError) as exc:
        raise ExperimentFailed(f"the client wrote no round-trip report: {exc}") from None


def _stream(e: Ends, port: int, blob: bytes, timeout: float) -> tuple[int, bytes]:
    """``blob`` through ``tcplab client`` (stdin piped: it streams, then half-closes);
    what came back on its stdout."""
    proc = e.client(_client(e, port, "--timeout", f"{timeout:g}"),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _finish(proc, timeout + 30, blob)
    if proc.returncode != 0:
        raise ExperimentFailed(f"the client's stream failed: {_last(err) or proc.returncode}")
    return len(blob), out


def _finish(proc: subprocess.Popen[bytes], guard: float, data: bytes | None = None
            ) -> tuple[bytes, bytes]:
    try:
        return proc.communicate(data, timeout=guard)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExperimentFailed(f"a client did not finish in {guard:.0f} s") from None


def _last(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def judge(stream_identical: bool, client_bytes: int, server_bytes: int | None) -> bool:
    """Shown: the stream came back identical and the server's own total is the client's.

    ``round_trips`` raises VerifyFailed on the first echo that differs, so every round
    trip counted here came back byte for byte. The two claims that can still fail are
    the stream and the server's own total (None when it reported none);
    report/prose.py says which, as it was seen.
    """
    return stream_identical and server_bytes == client_bytes
