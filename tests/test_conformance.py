"""The conformance suite every echo server must pass: tcplab's models, and yours.

Each test starts a real server in a child process and talks to it over real
sockets on loopback, checking what a user would check: the bytes that come
back, EOF and RST handling, memory under a client that never reads, and the
TCP states ``ss`` shows.

The servers: every model in ``tcplab.traffic.models`` (``tcplab server --json
--port 0 --model M``; its own counters, the totals and ``--stats`` lines, are
checked too), and with ``--server-cmd CMD`` your own server instead::

    pytest tests/test_conformance.py --server-cmd 'go run ./server.go -port {port}'

CMD is split into words as a shell would (no shell runs it: write
``sh -c '...'`` for one); ``{port}`` in it, and the ``PORT`` environment
variable, give the free port it must listen on, on 127.0.0.1 or every address
(or ::1). It is ready when its LISTEN socket shows in the socket table (no
probe connection), however long it takes to build (hang guard 120 s); it runs
in a process group of its own and is stopped with SIGTERM to that group
(SIGKILL after 10 s) and reaped after each test. Its counters are not known,
so those checks are left out, and the tests of tcplab server's own options
(``--leak``, ``LEAK=true``, ``--close-first``, its totals at a stop) are
skipped with the reason. Without ``--server-cmd`` the ``server_cmd`` tests are
skipped; tests/test_suite.py runs this machinery on tests/echo_server_stdlib.py.

Timeouts here are hang guards only, never assertions about speed.
"""

from __future__ import annotations

import io
import os
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import psutil
import pytest

from tcplab.experiments.children import ServerProcess
from tcplab.observe.owners import listening_processes
from tcplab.observe.sockets import SocketTable
from tcplab.traffic.client import CHUNK, connect, exchange, round_trips, stream
from tcplab.traffic.models import MODELS
from tcplab.traffic.target import Target, resolve
from tests.helpers import free_port

pytestmark = pytest.mark.loopback

#: Hang guard for every blocking step: generous, never a speed requirement.
HANG_GUARD = 15.0
#: How long the user's command may take to listen: `go run` builds first (hang guard).
LISTEN_GUARD = 120.0
MiB = 1024 * 1024
SS = shutil.which("ss") or "ss"
#: The parameter (and test id) of the user's own server.
SERVER_CMD = "server_cmd"

#: A server's own counters (totals, a --stats line); None: it reports none we can read.
Counters = dict[str, Any] | None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``serve`` runs once per model in tcplab.traffic.models
    (tests/test_suite.py checks that none escapes) and once for ``--server-cmd``
    (skipped without it); with ``--server-cmd``, for the user's server alone."""
    if "server_kind" in metafunc.fixturenames:
        mine = metafunc.config.getoption("server_cmd")
        metafunc.parametrize("server_kind", [SERVER_CMD] if mine else [*MODELS, SERVER_CMD])


# -- the servers under test -----------------------------------------------------------


class Server(Protocol):
    """What every test may ask of the server under test."""

    host: str  # the loopback address to dial
    port: int
    pid: int  # the process holding the listening socket
    info: Counters  # what it said when it listened

    def alive(self) -> bool: ...

    def finish(self) -> Counters:
        """Stop it (checked where we can), and return its totals."""

    def stats_when(self, key: str, value: int) -> Counters:
        """Its status line once ``key == value`` (or the latest one)."""


class Tcplab:
    """``tcplab server --json --model M``: its totals and status lines are read too."""

    host = "127.0.0.1"

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.port = proc.port
        self.pid = proc.pid
        self.info = proc.info

    def alive(self) -> bool:
        return self.proc.alive()

    def finish(self) -> dict[str, Any]:
        """Stop the server: it prints totals, exits 0, and logged no traceback."""
        totals = self.proc.stop()
        log = "\n".join(line for _t, line in self.proc.log)
        assert totals is not None, f"no totals printed; stderr:\n{log}"
        assert self.proc.proc is not None and self.proc.proc.returncode == 0, log
        assert "Traceback" not in log, log
        return totals

    def stats_when(self, key: str, value: int) -> dict[str, Any]:
        """Wait for a ``--stats`` status line with ``key == value``; return the latest line."""
        deadline = time.monotonic() + HANG_GUARD
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            lines = [e for e in self.proc.events if e.get("event") == "stats"]
            if lines:
                last = lines[-1]
                if last[key] == value:
                    break
            time.sleep(0.05)
        return last


class UserServer:
    """The user's ``--server-cmd``, started on a free port in a process group of its own."""

    info = None

    def __init__(self, command: str) -> None:
        self.command = command
        self.port = free_port()
        self.log: list[str] = []
        argv = shlex.split(command.replace("{port}", str(self.port)))
        self.proc = subprocess.Popen(
            argv, env={**os.environ, "PORT": str(self.port)}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        try:
            self.host, self.pid = self._wait_listening()
        except BaseException:  # never listened, or not where we can reach it: not left running
            self.stop()
            raise

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.log.append(raw.decode(errors="replace").rstrip("\n"))

    def _said(self) -> str:
        return "\n".join(self.log[-20:]) or "(no output)"

    def _wait_listening(self) -> tuple[str, int]:
        """(address to dial, pid of the listener) once a LISTEN socket of its shows."""
        deadline = time.monotonic() + LISTEN_GUARD
        with SocketTable() as table:
            while not (listeners := table.listeners(self.port)):
                if self.proc.poll() is not None:
                    self._reader.join(timeout=5)
                    pytest.fail(f"--server-cmd ended (status {self.proc.returncode}) before "
                                f"it listened on port {self.port}: {self.command}\n{self._said()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"--server-cmd did not listen on port {self.port} within "
                                f"{LISTEN_GUARD:g} s: {self.command}\n{self._said()}")
                time.sleep(0.05)
            owners = [o.pid for o in listening_processes(self.port, table)
                      if self._in_group(o.pid)]
        if not owners:
            pytest.fail(f"port {self.port} is held by a process that is not --server-cmd's")
        addresses = {s.src for s in listeners}
        if addresses & {"0.0.0.0", "::", "127.0.0.1", "::ffff:127.0.0.1"}:
            return "127.0.0.1", owners[0]
        if "::1" in addresses:
            return "::1", owners[0]
        pytest.fail(f"--server-cmd listens on {sorted(addresses)}: not on 127.0.0.1, ::1 "
                    "or every address")

    def _in_group(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def _group(self) -> list[int]:
        """Its process group's live members (zombies excluded: they are reaped by others)."""
        return [p.pid for p in psutil.process_iter(["status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE and self._in_group(p.pid)]

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)  # the group we made: only its processes
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None and psutil.pid_exists(self.pid)

    def finish(self) -> None:
        """SIGTERM to its group, SIGKILL after 10 s; reaped. Its totals are not known."""
        self.stop()
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        # the rest of its group (`go run`'s compiled server, a shell's children) too
        deadline = time.monotonic() + 10
        while self._group() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group():
            self._signal_group(signal.SIGKILL)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stats_when(self, key: str, value: int) -> None:
        return None


class Serve:
    """Starts the server under test: a model of tcplab server, or the user's command."""

    def __init__(self, kind: str, command: str | None, start_server: Any) -> None:
        self.kind = kind
        self.command = command
        self.start_server = start_server
        self.started: list[UserServer] = []

    def __call__(self, stats: float | None = None) -> Server:
        """Any server; ``stats``: tcplab server prints a status line that often."""
        if self.kind == SERVER_CMD:
            assert self.command is not None
            server = UserServer(self.command)
            self.started.append(server)
            return server
        return self.tcplab(*(("--stats", str(stats)) if stats else ()), checks="echo")

    def tcplab(self, *args: str, checks: str, env: dict[str, str] | None = None) -> Tcplab:
        """tcplab server with ``args``, for a test of what ``checks`` names: tcplab
        server's own options and counters; skipped for yours."""
        if self.kind == SERVER_CMD:
            pytest.skip(f"checks tcplab server's {checks}; not asked of --server-cmd")
        server = Tcplab(self.start_server("--model", self.kind, *args, env=env))
        assert server.info["model"] == self.kind
        return server

    def close(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def serve(server_kind: str, start_server: Any, request: pytest.FixtureRequest
          ) -> Iterator[Serve]:
    command = request.config.getoption("server_cmd")
    if server_kind == SERVER_CMD and not command:
        pytest.skip("no --server-cmd: check your own server with "
                    "pytest tests/test_conformance.py --server-cmd 'CMD {port}'")
    serving = Serve(server_kind, command, start_server)
    yield serving
    serving.close()


# -- helpers ------------------------------------------------------------------


def expect(counters: Counters, **want: Any) -> None:
    """The server's own counters say ``want``; a server whose counters we cannot
    read (yours) is not checked here, only by what its clients saw."""
    if counters is None:
        return
    got = {key: counters.get(key) for key in want}
    assert got == want, f"counters: {counters}"


def target_of(server: Server) -> Target:
    return resolve(server.host, server.port)


def dial(server: Server) -> socket.socket:
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


# -- 1, 2, 3: byte-exact echo ------------------------------------------------------


def test_small_text_messages_round_trip(serve: Serve) -> None:
    server = serve()
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
    totals = server.finish()
    expect(totals, accepted=1, closed=1, bytes_echoed=sum(map(len, messages)))


def test_binary_data(serve: Serve) -> None:
    server = serve()
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
    totals = server.finish()
    expect(totals, bytes_echoed=sum(map(len, payloads)) + 100 * 1500)


@pytest.mark.parametrize("size", [1 * MiB, 8 * MiB], ids=["1MiB", "8MiB"])
def test_large_payload(serve: Serve, size: int) -> None:
    server = serve()
    payload = os.urandom(size)
    with dial(server) as sock:
        check_echo(exchange(sock, payload, HANG_GUARD), payload)
    totals = server.finish()
    expect(totals, bytes_echoed=size)


# -- 4: many clients at once -------------------------------------------------------


def test_500_concurrent_clients(serve: Serve) -> None:
    server = serve()
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
    totals = server.finish()
    expect(totals, accepted=500, closed=500, bytes_echoed=sum(map(len, payloads)))


# -- 5: half-close ---------------------------------------------------------------


def test_half_close_small(serve: Serve) -> None:
    server = serve()
    data = b"all of this, then EOF\n"
    with dial(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == data  # exactly the data, then EOF: the server closed
    totals = server.finish()
    expect(totals, accepted=1, closed=1, bytes_echoed=len(data))


def test_half_close_larger_than_socket_buffers(serve: Serve) -> None:
    server = serve()
    payload = os.urandom(4 * MiB)
    received = bytearray()
    with dial(server) as sock:
        # stream() sends in a thread, then shutdown(SHUT_WR), reading until EOF meanwhile.
        sent, got = stream(sock, io.BytesIO(payload).read, received.extend)
    assert sent == len(payload)
    assert got == len(received)
    check_echo(bytes(received), payload)
    totals = server.finish()
    expect(totals, accepted=1, closed=1, bytes_echoed=len(payload))


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


def test_client_that_never_reads(serve: Serve) -> None:
    server = serve()
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
    totals = server.finish()
    expect(totals, accepted=4)


def test_stop_while_a_client_never_reads(serve: Serve) -> None:
    """SIGTERM with a non-reading client still connected: the server closes every
    connection (it is not leaking), and its totals say so."""
    server = serve.tcplab(checks="totals at a stop with a client that never reads")
    hog = dial(server)
    try:
        send_without_reading(hog)
        with dial(server) as idle:
            check_echo(exchange(idle, b"ping", HANG_GUARD), b"ping")
            totals = server.finish()
    finally:
        hog.close()
    assert totals["accepted"] == 2
    assert (totals["closed"], totals["open"]) == (2, 0), f"totals: {totals}"


# -- 7: abrupt RST ---------------------------------------------------------------


def test_abrupt_reset(serve: Serve) -> None:
    server = serve(stats=0.05)
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
    expect(server.stats_when("closed", 4), closed=4, open=0)
    assert server.alive()
    with dial(server) as sock:
        for message in (b"still here?", bytes(range(256)), os.urandom(300_000)):
            check_echo(exchange(sock, message, HANG_GUARD), message)
    totals = server.finish()
    expect(totals, accepted=5, closed=5)


# -- 8: leak mode and CLOSE_WAIT -------------------------------------------------


def close_after_echo(server: Server, n: int) -> set[int]:
    """``n`` clients: send, get the echo, close. Returns their local ports."""
    socks = [dial(server) for _ in range(n)]
    for i, sock in enumerate(socks):
        message = f"client {i}\n".encode()
        check_echo(exchange(sock, message, HANG_GUARD), message)
    local = {sock.getsockname()[1] for sock in socks}
    for sock in socks:
        sock.close()
    return local


def test_leak_mode_leaves_close_wait(serve: Serve) -> None:
    server = serve.tcplab("--leak", checks="--leak")
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
    totals = server.finish()
    assert totals["accepted"] == 3
    assert totals["closed"] == 0
    assert totals["leaked"] == 3


def test_without_leak_no_close_wait(serve: Serve) -> None:
    server = serve()
    expect(server.info, leak=False)
    port = server.port
    clients = close_after_echo(server, 3)
    # The server closed its side: the clients, who closed first, end in TIME_WAIT...
    client_side = {(c, port) for c in clients}
    assert ss_wait("time-wait", port, client_side) == client_side
    # ...and nothing of theirs is left in CLOSE_WAIT on the server's side.
    assert ss("close-wait", port) & {(port, c) for c in clients} == set()
    totals = server.finish()
    expect(totals, accepted=3, closed=3)


def test_leak_env_variable(serve: Serve) -> None:
    server = serve.tcplab(env={**os.environ, "LEAK": "true"}, checks="LEAK=true")
    assert server.info["leak"] is True
    (client,) = close_after_echo(server, 1)
    wanted = {(server.port, client)}
    assert ss_wait("close-wait", server.port, wanted) == wanted
    totals = server.finish()
    assert (totals["closed"], totals["leaked"]) == (0, 1)


# -- 9: --close-first ------------------------------------------------------------


def test_close_first_time_wait_on_server(serve: Serve) -> None:
    server = serve.tcplab("--close-first", checks="--close-first")
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
    totals = server.finish()
    assert (totals["accepted"], totals["closed"], totals["bytes_echoed"]) == (1, 1, len(message))
