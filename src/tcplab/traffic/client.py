"""The echo client: one connection, messages or a byte stream, verified round trips.

Nothing here prints: the CLI passes in files and formats the reports.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcplab.errors import ConnectFailed, VerifyFailed, describe_oserror
from tcplab.traffic.target import Target

CHUNK = 64 * 1024


def connect(target: Target, timeout: float) -> socket.socket:
    """connect() with the failure said in words: refused, timed out, unreachable."""
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target.sockaddr)
    except ConnectionRefusedError:
        sock.close()
        raise ConnectFailed(
            f"connection refused: nothing listens on {target.where}",
            hint="start one with 'tcplab server --port "
            f"{target.port}', or check --host/--port",
        ) from None
    except TimeoutError:
        sock.close()
        raise ConnectFailed(
            f"timed out after {timeout:g} s connecting to {target.where}",
            hint="the server's accept queue may be full (a stalled or leaking server), "
            "or a firewall drops SYNs; raise --timeout to wait longer",
        ) from None
    except OSError as exc:
        sock.close()
        hint = None
        if exc.errno == errno.EADDRNOTAVAIL:
            hint = "no local port is free for this destination (see 'tcplab limits')"
        raise ConnectFailed(f"cannot connect to {target.where}: {describe_oserror(exc)}",
                            hint=hint) from None
    sock.settimeout(None)
    return sock


def exchange(sock: socket.socket, payload: bytes, timeout: float) -> bytes:
    """Send ``payload`` and read back as many bytes, sending and receiving at once.

    Sending all and then reading would deadlock on large payloads: the server
    stops reading when we do not read its echo (backpressure), so our send
    would block forever once the buffers on both sides are full.
    """
    view = memoryview(payload)
    sent = 0
    received = bytearray()
    want = len(payload)
    sock.setblocking(False)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            deadline = time.monotonic() + timeout
            while len(received) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectFailed(
                        f"timed out after {timeout:g} s waiting for the echo "
                        f"({len(received)} of {want} bytes back)",
                        hint="is the server stalled? raise --timeout to wait longer",
                    )
                for _key, mask in sel.select(left):
                    if mask & selectors.EVENT_WRITE and sent < want:
                        sent += sock.send(view[sent : sent + CHUNK])
                        if sent == want:
                            sel.modify(sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(max(CHUNK, want - len(received)))
                        if not data:
                            raise ConnectFailed(
                                f"the server closed the connection after echoing "
                                f"{len(received)} of {want} bytes"
                            )
                        received += data
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ConnectFailed(f"the server reset the connection: {describe_oserror(exc)}") from None
    finally:
        sock.setblocking(True)
    return bytes(received)


def stream(
    sock: socket.socket, read: Callable[[int], bytes], write: Callable[[bytes], object]
) -> tuple[int, int]:
    """Like ``nc``: what ``read`` gives goes to the server, the echo to ``write``.

    A thread copies the input to the socket and then half-closes (shutdown
    SHUT_WR), so the server sees EOF, echoes the rest and closes; the calling
    thread copies the echo out until that close. Sending and receiving at once
    is what keeps a large stream from deadlocking against the server's
    backpressure. Returns (bytes sent, bytes received).
    """
    sent = 0
    failure: list[OSError] = []

    def pump() -> None:
        nonlocal sent
        try:
            while chunk := read(CHUNK):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            failure.append(exc)

    writer = threading.Thread(target=pump, daemon=True)
    writer.start()
    received = 0
    try:
        while data := sock.recv(CHUNK):
            write(data)
            received += len(data)
    except ConnectionResetError as exc:
        raise ConnectFailed(f"the server reset the connection: {describe_oserror(exc)}") from None
    writer.join()
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise ConnectFailed(f"sending failed: {describe_oserror(failure[0])}")
    return sent, received


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """A ``write`` for :func:`stream` that writes every byte to ``fd``."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


@dataclass(frozen=True, slots=True)
class RoundTrips:
    """``tcplab client --count N --size B``: every echo verified, times in microseconds."""

    host: str
    port: int
    count: int
    size: int
    verified_bytes: int
    rtt_min_us: float
    rtt_p50_us: float
    rtt_p99_us: float
    rtt_max_us: float
    elapsed_s: float
    messages_per_s: float
    mib_per_s: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


def payload_for(index: int, base: bytes) -> bytes:
    """Message ``index``: the random base rotated by ``index``, so a reordered
    or stale echo never verifies by accident."""
    if not base:
        return base
    k = index % len(base)
    return base[k:] + base[:k]


def round_trips(target: Target, count: int, size: int, timeout: float) -> RoundTrips:
    base = os.urandom(size)
    rtts: list[float] = []
    sock = connect(target, timeout)
    started = time.perf_counter()
    try:
        for i in range(count):
            message = payload_for(i, base)
            t0 = time.perf_counter()
            echo = exchange(sock, message, timeout)
            rtts.append((time.perf_counter() - t0) * 1e6)
            if echo != message:
                at = next(j for j, (a, b) in enumerate(zip(echo, message, strict=True)) if a != b)
                raise VerifyFailed(
                    f"echo {i + 1} of {count} differs from what was sent at byte {at}",
                    hint="the server is not echoing byte for byte",
                )
    finally:
        sock.close()
    elapsed = time.perf_counter() - started
    rtts.sort()
    return RoundTrips(
        host=target.host,
        port=target.port,
        count=count,
        size=size,
        verified_bytes=count * size,
        rtt_min_us=round(rtts[0], 1) if rtts else 0.0,
        rtt_p50_us=round(percentile(rtts, 50), 1),
        rtt_p99_us=round(percentile(rtts, 99), 1),
        rtt_max_us=round(rtts[-1], 1) if rtts else 0.0,
        elapsed_s=round(elapsed, 4),
        messages_per_s=round(count / elapsed, 1) if elapsed > 0 else 0.0,
        mib_per_s=round(count * size / elapsed / 2**20, 2) if elapsed > 0 else 0.0,
    )
