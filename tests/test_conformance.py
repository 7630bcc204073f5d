"""The conformance suite every echo server model must pass.

Each test starts a real server (``tcplab server --json --port 0 --model M``) in
a child process and talks to it over real sockets on 127.0.0.1, checking what
a user would check: the bytes that come back, EOF and RST handling, the
server's own totals, its memory under a client that never reads, and the TCP
states ``ss`` shows for leak mode and ``--close-first``.

Timeouts here are hang guards only, never assertions about speed.
"""

from __future__ import annotations

import io
import os
import selectors
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from tcplab.experiments.children import ServerProcess
from tcplab.traffic.client import CHUNK, connect, exchange, round_trips, stream
from tcplab.traffic.models import MODELS
from tcplab.traffic.target import Target, resolve

pytestmark = pytest.mark.loopback

#: Hang guard for every blocking step: generous, never a speed requirement.
HANG_GUARD = 15.0
MiB = 1024 * 1024
SS = shutil.which("ss") or "ss"

StartServer = Callable[..., ServerProcess]


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- helpers ------------------------------------------------------------------


def start(start_server: StartServer, model: str, *args: str, **kw: Any) -> ServerProcess:
    server = start_server("--model", model, *args, **kw)
    assert server.info["model"] == model
    return server


def target_of(server: ServerProcess) -> Target:
    return resolve("127.0.0.1", server.port)


def dial(server: ServerProcess) -> socket.socket:
    sock = connect(target_of(server), HANG_GUARD)
    sock.settimeout(HANG_GUARD)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(HANG_GUARD)
    got = bytearray()
    while len(got) < n:
        data = sock.recv(n - len(got))
        if not data:
            break
        got += data
    return bytes(got)


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(HANG_GUARD)
    got = bytearray()
    while data := sock.recv(CHUNK):
        got += data
    return bytes(got)


def check_echo(got: bytes, sent: bytes) -> None:
    """Byte-exact comparison with a short message (no multi-MiB diff)."""
    if got == sent:
        return
    at = next((i for i, (a, b) in enumerate(zip(got, sent, strict=False)) if a != b), None)
    where = f"first difference at byte {at}" if at is not None else "one is a prefix of the other"
    raise AssertionError(f"echo differs: sent {len(sent)} bytes, got {len(got)}; {where}")


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER {on, 0}: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def ss(state: str, port: int) -> set[tuple[int, int]]:
    """(local port, peer port) of the sockets ``ss -Htan state STATE`` lists with
    ``port`` at either end."""
    out = subprocess.run(
        [SS, "-Htan", "state", state, f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_GUARD,
    ).stdout
    pairs = set()
    for line in out.splitlines():
        local, peer = line.split()[-2:]
        pairs.add((int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])))
    return pairs


def ss_wait(state: str, port: int, wanted: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Poll ``ss`` until every (local, peer) in ``wanted`` is in ``state`` (hang
    guard); return those of ``wanted`` that are. Sockets of other tests are ignored."""
    deadline = time.monotonic() + HANG_GUARD
    while (found := ss(state, port) & wanted) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def wait_stats(server: ServerProcess, key: str, value: int) -> dict[str, Any]:
    """Wait for a ``--stats`` status line with ``key == value``; return the latest line."""
    deadline = time.monotonic() + HANG_GUARD
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        lines = [e for e in server.events if e.get("event") == "stats"]
        if lines:
            last = lines[-1]
            if last[key] == value:
                break
        time.sleep(0.05)
    return last


def stop_clean(server: ServerProcess) -> dict[str, Any]:
    """Stop the server: it prints totals, exits 0, and logged no traceback."""
    totals = server.stop()
    log = "\n".join(line for _t, line in server.log)
    assert totals is not None, f"no totals printed; stderr:\n{log}"
    assert server.proc is not None and server.proc.returncode == 0, log
    assert "Traceback" not in log, log
    return totals


# -- 1, 2, 3: byte-exact echo ------------------------------------------------------


def test_small_text_messages_round_trip(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    messages = [
        b"hello\n",
        b"x",
        b"The quick brown fox jumps over the lazy dog.\r\n",
        "héllo wörld ✓ ünïcode\n".encode(),
        b"line one\nline two\n" * 50,
        b"  spaces and\ttabs  ",
    ]
    with dial(server) as sock:
        for message in messages:
            check_echo(exchange(sock, message, HANG_GUARD), message)
    totals = stop_clean(server)
    assert totals["accepted"] == 1
    assert totals["closed"] == 1
    assert totals["bytes_echoed"] == sum(map(len, messages))


def test_binary_data(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    every_byte = bytes(range(256))
    payloads = [
        every_byte,
        every_byte[::-1] * 64,
        b"\x00",
        b"\x00" * 4096,
        b"\xff" * 4096,
        b"\x00\xff\r\n\x00\x04\x1a\x7f",
        os.urandom(100_000),
    ]
    with dial(server) as sock:
        for payload in payloads:
            check_echo(exchange(sock, payload, HANG_GUARD), payload)
    # round_trips verifies every echo of random bytes itself (VerifyFailed if not).
    result = round_trips(target_of(server), count=100, size=1500, timeout=HANG_GUARD)
    assert result.verified_bytes == 100 * 1500
    totals = stop_clean(server)
    assert totals["bytes_echoed"] == sum(map(len, payloads)) + 100 * 1500


@pytest.mark.parametrize("size", [1 * MiB, 8 * MiB], ids=["1MiB", "8MiB"])
def test_large_payload(start_server: StartServer, model: str, size: int) -> None:
    server = start(start_server, model)
    payload = os.urandom(size)
    with dial(server) as sock:
        check_echo(exchange(sock, payload, HANG_GUARD), payload)
    totals = stop_clean(server)
    assert totals["bytes_echoed"] == size


# -- 4: many clients at once -------------------------------------------------------


def test_500_concurrent_clients(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    target = target_of(server)
    payloads = [f"client {i:03d}|".encode() + os.urandom(1 + i * 7 % 1500) for i in range(500)]
    socks: list[socket.socket] = []
    try:
        for _ in payloads:  # all 500 open at once before anyone sends
            socks.append(connect(target, HANG_GUARD))
        for sock, payload in zip(socks, payloads, strict=True):
            sock.settimeout(HANG_GUARD)
            sock.sendall(payload)
        for i, (sock, payload) in enumerate(zip(socks, payloads, strict=True)):
            got = recv_exactly(sock, len(payload))
            assert got == payload, f"client {i} did not get its own payload back"
    finally:
        for sock in socks:
            sock.close()
    totals = stop_clean(server)
    assert totals["accepted"] == 500
    assert totals["closed"] == 500
    assert totals["bytes_echoed"] == sum(map(len, payloads))


# -- 5: half-close ---------------------------------------------------------------


def test_half_close_small(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    data = b"all of this, then EOF\n"
    with dial(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == data  # exactly the data, then EOF: the server closed
    totals = stop_clean(server)
    assert (totals["accepted"], totals["closed"], totals["bytes_echoed"]) == (1, 1, len(data))


def test_half_close_larger_than_socket_buffers(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    payload = os.urandom(4 * MiB)
    received = bytearray()
    with dial(server) as sock:
        # stream() sends in a thread, then shutdown(SHUT_WR), reading until EOF meanwhile.
        sent, got = stream(sock, io.BytesIO(payload).read, received.extend)
    assert sent == len(payload)
    assert got == len(received)
    check_echo(bytes(received), payload)
    totals = stop_clean(server)
    assert (totals["accepted"], totals["closed"], totals["bytes_echoed"]) == (1, 1, len(payload))


# -- 6: a client that never reads ------------------------------------------------


def send_without_reading(
    sock: socket.socket, limit: int = 64 * MiB, stall: float = 0.5, budget: float = 10.0
) -> int:
    """Send up to ``limit`` bytes and never read; stop once a send has been blocked
    for ``stall`` seconds (backpressure), or after ``budget`` seconds. Returns bytes sent."""
    chunk = memoryview(os.urandom(CHUNK))
    sent = 0
    sock.setblocking(False)
    deadline = time.monotonic() + budget
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < limit and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk[: limit - sent])
            except BlockingIOError:
                if not sel.select(stall):
                    break
    return sent


def test_client_that_never_reads(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    with dial(server) as warm:  # warm the server's code paths up before the baseline
        payload = os.urandom(256 * 1024)
        check_echo(exchange(warm, payload, HANG_GUARD), payload)
    proc = psutil.Process(server.pid)
    baseline = proc.memory_info().rss
    hog = dial(server)
    try:
        sent = send_without_reading(hog)
        peak = baseline
        for _ in range(5):  # let the server take what it will, then look
            time.sleep(0.1)
            peak = max(peak, proc.memory_info().rss)
        growth = peak - baseline
        assert growth <= 32 * MiB, (
            f"server RSS grew by {growth / MiB:.1f} MiB while a client sent "
            f"{sent / MiB:.1f} MiB and never read: no backpressure"
        )
        # The hog is still connected, still not reading; a new client is served normally.
        result = round_trips(target_of(server), count=20, size=4096, timeout=HANG_GUARD)
        assert result.verified_bytes == 20 * 4096
        with dial(server) as sock:
            big = os.urandom(1 * MiB)
            check_echo(exchange(sock, big, HANG_GUARD), big)
    finally:
        hog.close()
    totals = stop_clean(server)
    assert totals["accepted"] == 4


def test_stop_while_a_client_never_reads(start_server: StartServer, model: str) -> None:
    """SIGTERM with a non-reading client still connected: the server closes every
    connection (it is not leaking), and its totals say so."""
    server = start(start_server, model)
    hog = dial(server)
    try:
        send_without_reading(hog)
        with dial(server) as idle:
            check_echo(exchange(idle, b"ping", HANG_GUARD), b"ping")
            totals = stop_clean(server)
    finally:
        hog.close()
    assert totals["accepted"] == 2
    assert (totals["closed"], totals["open"]) == (2, 0), f"totals: {totals}"


# -- 7: abrupt RST ---------------------------------------------------------------


def test_abrupt_reset(start_server: StartServer, model: str) -> None:
    server = start(start_server, model, "--stats", "0.05")
    # RST with nothing sent; RST right after sending; RST after the echo came
    # back; RST while the server is still writing a large echo we never read.
    reset(dial(server))
    early = dial(server)
    early.sendall(b"about to vanish")
    reset(early)
    late = dial(server)
    check_echo(exchange(late, b"echo me, then RST", HANG_GUARD), b"echo me, then RST")
    reset(late)
    busy = dial(server)
    busy.sendall(os.urandom(1 * MiB))
    reset(busy)
    # The server counts the four resets as closed connections, while still running.
    line = wait_stats(server, "closed", 4)
    assert line.get("closed") == 4, f"last status line: {line}"
    assert line["open"] == 0
    assert server.alive()
    with dial(server) as sock:
        for message in (b"still here?", bytes(range(256)), os.urandom(300_000)):
            check_echo(exchange(sock, message, HANG_GUARD), message)
    totals = stop_clean(server)
    assert totals["accepted"] == 5
    assert totals["closed"] == 5


# -- 8: leak mode and CLOSE_WAIT -------------------------------------------------


def close_after_echo(server: ServerProcess, n: int) -> set[int]:
    """``n`` clients: send, get the echo, close. Returns their local ports."""
    socks = [dial(server) for _ in range(n)]
    for i, sock in enumerate(socks):
        message = f"client {i}\n".encode()
        check_echo(exchange(sock, message, HANG_GUARD), message)
    local = {sock.getsockname()[1] for sock in socks}
    for sock in socks:
        sock.close()
    return local


def test_leak_mode_leaves_close_wait(start_server: StartServer, model: str) -> None:
    server = start(start_server, model, "--leak")
    assert server.info["leak"] is True
    port = server.port
    clients = close_after_echo(server, 3)
    server_side = {(port, c) for c in clients}
    client_side = {(c, port) for c in clients}
    assert ss_wait("close-wait", port, server_side) == server_side  # one per closed client
    assert ss_wait("fin-wait-2", port, client_side) == client_side
    # Still leaking, never closing: the sockets stay in CLOSE_WAIT.
    time.sleep(0.3)
    assert ss("close-wait", port) & server_side == server_side
    totals = stop_clean(server)
    assert totals["accepted"] == 3
    assert totals["closed"] == 0
    assert totals["leaked"] == 3


def test_without_leak_no_close_wait(start_server: StartServer, model: str) -> None:
    server = start(start_server, model)
    assert server.info["leak"] is False
    port = server.port
    clients = close_after_echo(server, 3)
    # The server closed its side: the clients, who closed first, end in TIME_WAIT...
    client_side = {(c, port) for c in clients}
    assert ss_wait("time-wait", port, client_side) == client_side
    # ...and nothing of theirs is left in CLOSE_WAIT on the server's side.
    assert ss("close-wait", port) & {(port, c) for c in clients} == set()
    totals = stop_clean(server)
    assert (totals["accepted"], totals["closed"]) == (3, 3)


def test_leak_env_variable(start_server: StartServer, model: str) -> None:
    server = start(start_server, model, env={**os.environ, "LEAK": "true"})
    assert server.info["leak"] is True
    (client,) = close_after_echo(server, 1)
    wanted = {(server.port, client)}
    assert ss_wait("close-wait", server.port, wanted) == wanted
    totals = stop_clean(server)
    assert (totals["closed"], totals["leaked"]) == (0, 1)


# -- 9: --close-first ------------------------------------------------------------


def test_close_first_time_wait_on_server(start_server: StartServer, model: str) -> None:
    server = start(start_server, model, "--close-first")
    assert server.info["close_first"] is True
    port = server.port
    message = b"first and last"
    with dial(server) as sock:
        client = sock.getsockname()[1]
        check_echo(exchange(sock, message, HANG_GUARD), message)
        assert read_to_eof(sock) == b""  # the server closed after the first echo
    # The server closed first, so TIME_WAIT is on its side: local port == server port.
    assert ss_wait("time-wait", port, {(port, client)}) == {(port, client)}
    assert (client, port) not in ss("time-wait", port)  # not on the client's side
    totals = stop_clean(server)
    assert (totals["accepted"], totals["closed"], totals["bytes_echoed"]) == (1, 1, len(message))
