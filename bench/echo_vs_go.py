"""Every tcplab echo-server model against a Go reference echo server, side by side.

Run it as root (or as a user allowed to make user namespaces), with ``go`` on
PATH; about 7-8 minutes with the defaults, 2 with ``--quick``::

    .venv/bin/python bench/echo_vs_go.py
    .venv/bin/python bench/echo_vs_go.py --quick
    .venv/bin/python bench/echo_vs_go.py --parts 1 --rounds 7 --seconds 3 --json

The servers: ``bench/peers/echo.go`` (the original lab's style: ``net.Listen``,
one goroutine per connection, a Read/Write loop with its own 64 KiB buffer),
built here with ``go build`` into a temporary directory that is removed at the
end (GOPROXY=off, GOTOOLCHAIN=local: nothing is downloaded), and ``tcplab
server --model M --fd-limit max --backlog 8192`` for every model (uvloop, the
default; asyncio; epoll; threads). Every server runs in a fresh
:class:`~tcplab.experiments.sandbox.Sandbox` (a private network namespace with
``net.core.somaxconn`` = 8192 and ``ip_local_port_range`` = 1024 65535, set
inside only) on 127.0.0.1:8080 there, and so does its load generator: no
traffic leaves the namespace. On any exit, Ctrl-C included, every child is
killed and reaped and every namespace closed; the temporary directory goes.

The load generator is never the server being measured: it is this file run
again (``--loadgen SPEC``) as a separate process inside the namespace, one
epoll loop in the manner of bench/cpu_per_echo.py: C connections, each doing an
S-byte ping-pong (send the payload, non-blocking, finishing on EPOLLOUT when
the kernel takes only part; read until all S bytes are back; compare them
with what was sent; send again). It connects, puts one ping in flight on every
connection, runs a warm-up, then takes mark A, runs ``--seconds``, and takes
mark B; a mark is taken in the load generator itself between two epoll
batches: its count of completed round trips, the server's utime and stime
(/proc/PID/stat, every thread of the server) and a monotonic timestamp. So the
echoes counted and the server CPU measured cover the same interval; startup,
accept and shutdown fall outside it. Each round trip's latency is the time
from the first byte sent to the last byte back, as the load generator sees it
(perf_counter); p50 and p99 are over the round trips completed in the window.
After mark B the load generator stops sending and collects what is still in
flight; the server's totals (tcplab's ``totals`` event, echo.go's JSON line on
SIGTERM) must equal the bytes of every round trip of the run. Each mark also
reads the machine's busy CPU time (/proc/stat), so what everything else on
this shared machine used during the window is reported ("others", % of one
core), and the namespace's TCP counters (retransmitted segments, tail-loss
probes, D-SACKs received, RTOs), so a stall would show.

Part 1, server CPU per echo: ``--connections`` (100) connections, 64 B,
``--seconds`` (3 s) windows after ``--warmup`` (0.5 s), ``--rounds`` (5)
interleaved rounds (each round starts at the next server), a fresh namespace
and server per run. Per server: CPU (utime + stime), user and sys time per
echo (sys is the kernel's own share: the read() and write() of each echo and,
on loopback, the TCP delivery into the peer's socket that the sender's
syscall does), ``x go`` (the median over rounds of the per-round ratio to Go:
paired, so a noisy neighbour on this shared 2-core machine slows both alike),
``x stime`` (CPU / sys: 1.0 would be a server with no user-space cost; a model
that makes the kernel do more, futex waits between threads for instance,
raises its sys time and so hides part of its cost from this ratio). Goals for
the default model (and shown for epoll): x go <= 1.0 and x stime <= 1.15.

Part 2, the grid: ``--sizes`` (1 KiB, 64 KiB) x ``--conns`` (1, 10, 100,
1,000), every server; ``--grid-seconds`` (2 s) windows after
``--grid-warmup`` (0.3 s), ``--grid-rounds`` (3) interleaved rounds; one
namespace and server per server and round, the cells run one after the other
on it, each with a fresh load generator. Requests per second (round trips per
second, all connections together) and p99 latency, medians over rounds; the
64 B x 100 row comes from part 1. One Python load generator drives every
connection, so at 100 and 1,000 connections it, not the server, sets the pace
(its CPU per echo is in the JSON): the columns compare servers under the same
client, and p99 at 1,000 connections is mostly the time the client takes to
go round all of them.

Part 3, concurrency, with ``tcplab multiplex`` as the load generator (one
process; it ramps the connections up, holds them all open, runs ``--messages``
round trips on every one at once, verifies every byte, and reads the server's
threads, RSS, fds and epoll watches from /proc while every connection is still
open: :mod:`tcplab.observe.server_facts`):

* C10k: 10,000 concurrent connections held and echoing (5 round trips each)
  on the default model; goal: all held and verified on at most 2 OS threads,
  with the epoll watch count to show they sit in one epoll set;
* the most one process can hold under this machine's fd limit: 19,000
  connections (``--most``), with the server at ``--fd-limit max`` and the
  client raising its own soft limit to the hard one. Client and server are
  separate processes and need one fd per connection each, so each is limited
  separately (20,000 here): the server could hold its hard limit minus the few
  fds it keeps for itself (listener, epoll, pipes, stdio), shown as headroom;
* RSS per idle connection: (the server's RSS with every connection open and
  idle after its round trips - its RSS before the first connect) / connections,
  from the 10,000 run: user space only, since the kernel's socket memory is
  not in RSS. Goal for the default model: <= 3 KiB; Go's is shown beside it.

Placement: at 1 connection both processes sleep between echoes, and on this
machine (a KVM guest) a wake-up across CPUs costs tens of microseconds of CPU
on each side, so a run is fast (client and server on one CPU) or slow (on
two) as the scheduler places them; grid cells whose rounds differ by more
than 2x are marked. ``--pin same`` (server and load generator on CPU 0) or
``--pin split`` (server on CPU 0, load generator on CPU 1) fixes the
placement for parts 1 and 2; the server is pinned after it started, so Go
keeps GOMAXPROCS 2.

The Go server and the default model run part 3, ``--conc-rounds`` (3) rounds,
interleaved, medians. ``--quick`` is ``--rounds 2 --seconds 1.5 --grid-rounds
1 --grid-seconds 1 --conc-rounds 1``. Exit status: 0 when every run ran and
every count matched (a missed goal is reported, not failed), 1 when a run
failed or lost echoes, 130 on Ctrl-C.

Limits: utime and stime come in clock ticks (10 ms) and the user/sys split is
sampled at scheduler ticks (CONFIG_HZ 250 here), so a split is good to a few
ticks of the 100 or more a window holds; only user + sys is exact. The load
generator and the server share 2 cores with each other (and with whatever
else runs here): a server that is not saturated finds fewer ready sockets per
epoll_wait and batches less, so CPU per echo is a property of a model at this
load, not of the model alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gopeer  # bench/gopeer.py, next to this file

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PORT = 8080
BACKLOG = 8192
SYSCTLS = {
    "net.core.somaxconn": str(BACKLOG),
    "net.ipv4.ip_local_port_range": "1024 65535",
}
DEFAULT_MODEL = "uvloop"
GOAL_VS_GO = 1.0
GOAL_VS_STIME = 1.15
GOAL_RSS = 3 * 1024
GOAL_THREADS = 2
#: A grid cell whose rounds differ by more than this factor in requests/s is marked.
SPREAD_MARK = 2.0
C10K = 10_000


class BenchError(Exception):
    pass


#: Set by Ctrl-C: the servers get the SIGINT too and close their connections, so a
#: load generator may report that before our KeyboardInterrupt is raised.
INTERRUPTED = False


def _on_sigint(signum: int, frame: object) -> None:
    global INTERRUPTED
    INTERRUPTED = True
    raise KeyboardInterrupt


# --- the load generator: this file, run again inside the namespace -----------------------


def _proc_stat(pid: int) -> tuple[float, float]:
    """(utime, stime) of a whole process in seconds: /proc/PID/stat fields 14 and 15."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _busy() -> float:
    """Seconds every CPU of the machine has been busy (/proc/stat "cpu": all but idle, iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


#: TCP counters of the namespace read at each mark: retransmitted segments, and why.
TCP_COUNTERS = {"Tcp": ("RetransSegs",),
                "TcpExt": ("TCPLossProbes", "TCPDSACKRecv", "TCPTimeouts")}


def _tcp_counters() -> dict[str, int]:
    """RetransSegs (/proc/net/snmp), tail-loss probes, D-SACKs received (the peer already
    had the data: the retransmission was spurious) and RTOs (/proc/net/netstat)."""
    found: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            kind = head.split(":", 1)[0]
            names, values = head.split()[1:], vals.split()[1:]
            for name in TCP_COUNTERS.get(kind, ()):
                if name in names:
                    found[name] = int(values[names.index(name)])
    return found


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def pingpong(spec: dict[str, Any]) -> dict[str, Any]:
    """C connections, one S-byte message in flight on each; marks A and B around the window."""
    from tcplab.traffic.client import percentile

    pid, port, size = int(spec["pid"]), int(spec["port"]), int(spec["size"])
    connections, warmup, seconds = int(spec["connections"]), spec["warmup"], spec["seconds"]
    max_echoes = int(spec["max_echoes"])
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    payload = bytes((i * 7 + 13) & 0xFF for i in range(size))
    pview = memoryview(payload)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    DONE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
    socks: list[socket.socket] = []
    ep = select.epoll(connections + 1)
    t_connect = time.monotonic()
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        connect_s = time.monotonic() - t_connect
        top = max(s.fileno() for s in socks) + 1
        bufs: list[bytearray] = [bytearray() for _ in range(top)]
        views: list[memoryview] = [memoryview(b) for b in bufs]
        recv_into: list[Any] = [None] * top
        got = [0] * top
        sent = [0] * top
        t0 = [0.0] * top
        for s in socks:
            fd = s.fileno()
            bufs[fd] = bytearray(size)
            views[fd] = memoryview(bufs[fd])
            recv_into[fd] = s.recv_into
        rtts: list[float] = []
        echoes = 0
        in_flight = 0
        sending = True
        perf, write = time.perf_counter, os.write

        def send(fd: int) -> None:
            """Start a round trip on fd: as much of the payload as the kernel takes."""
            nonlocal in_flight
            t0[fd] = perf()
            got[fd] = 0
            try:
                n = write(fd, payload)
            except BlockingIOError:
                n = 0
            sent[fd] = n
            in_flight += 1
            if n < size:
                ep.modify(fd, IN | OUT)

        def run(until: float, cap: int) -> None:
            nonlocal echoes, in_flight
            poll, now = ep.poll, time.monotonic
            while echoes < cap and (sending or in_flight):
                for fd, ev in poll(0.05):
                    if ev & OUT:
                        k = sent[fd]
                        if k < size:
                            try:
                                k += write(fd, pview[k:])
                            except BlockingIOError:
                                pass
                            sent[fd] = k
                            if k == size:
                                ep.modify(fd, IN)
                    if not ev & DONE:
                        continue
                    g = got[fd]
                    try:
                        n = recv_into[fd](views[fd][g:], size - g)
                    except BlockingIOError:
                        continue
                    if not n:
                        raise ConnectionError("the server closed a connection")
                    g += n
                    if g < size:
                        got[fd] = g
                        continue
                    rtts.append(perf() - t0[fd])
                    if bufs[fd] != payload:
                        raise ValueError("an echo differed from what was sent")
                    got[fd] = 0
                    echoes += 1
                    in_flight -= 1
                    if sending:
                        send(fd)
                if now() >= until:
                    return

        def mark() -> dict[str, Any]:
            user, system = _proc_stat(pid)
            c = os.times()
            return {"t": time.monotonic(), "echoes": echoes, "rtts": len(rtts),
                    "server_user": user, "server_sys": system,
                    "client_cpu": c.user + c.system, "machine_busy": _busy(),
                    "tcp": _tcp_counters()}

        for s in socks:
            ep.register(s.fileno(), IN)
        start = time.monotonic()
        for s in socks:
            send(s.fileno())
        run(start + warmup, sys.maxsize)
        a = mark()
        run(a["t"] + seconds, a["echoes"] + max_echoes)
        b = mark()
        threads = _threads(pid)
        sending = False
        run(time.monotonic() + 10.0, sys.maxsize)  # collect the echoes still in flight
        window = sorted(rtts[a["rtts"]:b["rtts"]])
        return {"a": a, "b": b, "echoes_total": echoes, "in_flight": in_flight,
                "connect_s": connect_s, "server_threads": threads,
                "p50_us": percentile(window, 50) * 1e6, "p99_us": percentile(window, 99) * 1e6,
                "max_us": (window[-1] if window else 0.0) * 1e6}
    finally:
        ep.close()
        for s in socks:
            s.close()


def loadgen_main(spec_text: str) -> int:
    # Ctrl-C reaches the whole process group; the parent kills and reaps us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report: dict[str, Any] = {"ok": True, **pingpong(json.loads(spec_text))}
    except Exception as exc:
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


# --- building the Go server ----------------------------------------------------------------


# --- servers in sandboxes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    key: str  # "go" or a tcplab model
    kind: str  # "go" or "tcplab"


class Served:
    """One running server: its pid, and stop() -> its totals (None if it printed none)."""

    def __init__(self, pid: int, stopper: Any) -> None:
        self.pid = pid
        self._stop = stopper

    def stop(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._stop()
        return result


@contextlib.contextmanager
def serving(sb: Any, peer: Peer, go_binary: str | None) -> Iterator[Served]:
    from tcplab.errors import TcplabError
    from tcplab.experiments.children import ForeignServer, ServerProcess

    if peer.kind == "go":
        assert go_binary is not None
        try:
            fs = ForeignServer(sb, f"{shlex.quote(go_binary)} -addr 127.0.0.1:{{port}}", PORT)
        except TcplabError as exc:
            raise BenchError(f"go echo server: {exc}") from None

        def stop_go() -> dict[str, Any] | None:
            fs.stop()
            for _t, line in fs.log:
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        totals: dict[str, Any] = json.loads(line)
                        return totals
            return None

        try:
            yield Served(fs.pid, stop_go)
        finally:
            fs.stop()
        return
    server = ServerProcess(["--port", str(PORT), "--model", peer.key, "--fd-limit", "max",
                            "--backlog", str(BACKLOG)], popen=sb.popen)
    try:
        try:
            server.start()
        except TcplabError as exc:
            raise BenchError(f"tcplab server --model {peer.key}: {exc}") from None
        if server.port != PORT:
            raise BenchError(f"the {peer.key} server listens on {server.port}, not {PORT}")
        yield Served(server.pid, server.stop)
    finally:
        server.kill()


#: --pin: (the server's CPU, the load generator's CPU) for parts 1 and 2.
PINS: dict[str, tuple[int, int] | None] = {"none": None, "split": (0, 1), "same": (0, 0)}


def pin_server(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` onto one CPU; threads it starts later inherit it."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


def run_loadgen(sb: Any, pid: int, connections: int, size: int, warmup: float,
                seconds: float, max_echoes: int, cpus: list[int] | None = None
                ) -> dict[str, Any]:
    spec = {"pid": pid, "port": PORT, "connections": connections, "size": size,
            "warmup": warmup, "seconds": seconds, "max_echoes": max_echoes, "cpus": cpus}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = sb.popen([sys.executable, str(Path(__file__).resolve()), "--loadgen",
                     json.dumps(spec)], fd_limit=hard, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    limit = 60.0 + warmup + seconds + connections / 100
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"the load generator did not finish in {limit:.0f} s "
                         f"({connections} x {size} B)") from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        res: dict[str, Any] = json.loads(lines[-1])
    except (ValueError, IndexError):
        raise BenchError(f"load generator ({connections} x {size} B): exit {proc.returncode}, "
                         f"no report: {err.decode(errors='replace').strip()[-500:]}") from None
    if not res.get("ok"):
        raise BenchError(f"load generator ({connections} x {size} B): {res.get('error')}")
    return res


# --- parts 1 and 2: ping-pong cells -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    server: str
    round: int
    connections: int
    size: int
    echoes: int  # in the window
    window_s: float
    user_us: float  # server, per echo
    sys_us: float
    cpu_us: float
    echoes_per_s: float
    p50_us: float
    p99_us: float
    server_core_pct: float
    client_us: float  # the load generator's CPU per echo
    others_core_pct: float  # the rest of the machine's busy CPU over the window, % of one core
    tcp: dict[str, int]  # TCP_COUNTERS of the namespace: their growth over the window
    server_threads: int
    echoes_total: int  # the whole load generator run, warm-up and drain included


def make_cell(server: str, index: int, connections: int, size: int, res: dict[str, Any]
              ) -> Cell:
    a, b = res["a"], res["b"]
    echoes = b["echoes"] - a["echoes"]
    window = b["t"] - a["t"]
    if echoes <= 0 or window <= 0:
        raise BenchError(f"{server}: no echo completed in the window ({connections} x {size} B)")
    user = b["server_user"] - a["server_user"]
    system = b["server_sys"] - a["server_sys"]
    return Cell(
        server=server, round=index, connections=connections, size=size, echoes=echoes,
        window_s=window, user_us=user / echoes * 1e6, sys_us=system / echoes * 1e6,
        cpu_us=(user + system) / echoes * 1e6, echoes_per_s=echoes / window,
        p50_us=res["p50_us"], p99_us=res["p99_us"],
        server_core_pct=(user + system) / window * 100,
        client_us=(b["client_cpu"] - a["client_cpu"]) / echoes * 1e6,
        others_core_pct=max(0.0, (b["machine_busy"] - a["machine_busy"] - user - system
                                  - (b["client_cpu"] - a["client_cpu"])) / window * 100),
        tcp={k: v - a["tcp"].get(k, 0) for k, v in b["tcp"].items()},
        server_threads=int(res["server_threads"]), echoes_total=int(res["echoes_total"]),
    )


def check_totals(server: str, totals: dict[str, Any] | None, expected: int,
                 in_flight: int) -> str | None:
    """None when the server echoed exactly ``expected`` bytes; else what differed."""
    if totals is None:
        return f"{server}: the server printed no totals"
    echoed = int(totals.get("bytes_echoed", -1))
    # "open" only matters through the bytes: tcplab counts every read as it happens,
    # echo.go adds a connection's bytes when it ends.
    if echoed != expected or in_flight:
        return (f"{server}: the server echoed {echoed:,} bytes, the load generators counted "
                f"{expected:,} ({in_flight} round trips unanswered, "
                f"{totals.get('open', 0)} connections open at exit)")
    return None


def _pin(srv: Served, args: argparse.Namespace) -> list[int] | None:
    """Apply --pin to the server; the load generator's CPU list (None: unpinned)."""
    pins = PINS[args.pin]
    if pins is None:
        return None
    pin_server(srv.pid, pins[0])
    return [pins[1]]


def rotate(peers: list[Peer], i: int) -> list[Peer]:
    k = i % len(peers)
    return peers[k:] + peers[:k]


def part1(peers: list[Peer], args: argparse.Namespace, go_binary: str | None,
          problems: list[str]) -> list[Cell]:
    from tcplab.experiments.sandbox import Sandbox

    cells: list[Cell] = []
    for i in range(args.rounds):
        for peer in rotate(peers, i):
            with Sandbox(SYSCTLS) as sb, serving(sb, peer, go_binary) as srv:
                cpus = _pin(srv, args)
                res = run_loadgen(sb, srv.pid, args.connections, 64, args.warmup,
                                  args.seconds, args.max_echoes, cpus)
                totals = srv.stop()
            c = make_cell(peer.key, i + 1, args.connections, 64, res)
            cells.append(c)
            bad = check_totals(peer.key, totals, 64 * c.echoes_total, res["in_flight"])
            if bad:
                problems.append(bad)
            _progress(f"part 1 round {i + 1}/{args.rounds} {peer.key:<8} {c.cpu_us:6.2f} us/echo "
                      f"(user {c.user_us:5.2f}, sys {c.sys_us:5.2f}), {c.echoes_per_s:8,.0f} "
                      f"echoes/s, server {c.server_core_pct:4.0f} %, "
                      f"{c.server_threads} threads, others {c.others_core_pct:3.0f} %")
    return cells


def part2(peers: list[Peer], args: argparse.Namespace, go_binary: str | None,
          problems: list[str]) -> list[Cell]:
    from tcplab.experiments.sandbox import Sandbox

    cells: list[Cell] = []
    for i in range(args.grid_rounds):
        for peer in rotate(peers, i):
            expected = 0
            unanswered = 0
            with Sandbox(SYSCTLS) as sb, serving(sb, peer, go_binary) as srv:
                cpus = _pin(srv, args)
                for size in args.sizes:
                    for n in args.conns:
                        res = run_loadgen(sb, srv.pid, n, size, args.grid_warmup,
                                          args.grid_seconds, args.max_echoes, cpus)
                        c = make_cell(peer.key, i + 1, n, size, res)
                        cells.append(c)
                        expected += size * c.echoes_total
                        unanswered += res["in_flight"]
                totals = srv.stop()
            bad = check_totals(peer.key, totals, expected, unanswered)
            if bad:
                problems.append(bad)
            mine = [c for c in cells if c.server == peer.key and c.round == i + 1]
            _progress(f"part 2 round {i + 1}/{args.grid_rounds} {peer.key:<8} "
                      + "  ".join(f"{_size(c.size)}x{c.connections} {c.echoes_per_s:,.0f}/s"
                                  for c in mine)
                      + f"  (others {statistics.median(c.others_core_pct for c in mine):.0f} %)")
    return cells


# --- part 3: concurrency with tcplab multiplex -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Held:
    server: str
    round: int
    connections: int
    connected: int
    echoes: int
    failures: dict[str, int]
    connect_s: float
    threads: int
    epoll_instances: int
    epoll_watches: int
    rss_bytes: int
    rss_per_conn: float
    fds: int
    fd_limit: int
    p99_us: float


def hold(sb: Any, srv: Served, peer: Peer, index: int, n: int, messages: int) -> Held:
    cmd = sb.tcplab("multiplex", "--port", str(PORT), "--connections", str(n),
                    "--messages", str(messages), "--size", "64", "--server-pid", str(srv.pid),
                    "--timeout", "60", "--json")
    try:
        r = sb.run(cmd, timeout=180, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        raise BenchError(f"tcplab multiplex --connections {n} against {peer.key}: "
                         "no answer in 180 s") from None
    try:
        m = json.loads(r.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"tcplab multiplex --connections {n} against {peer.key}: exit "
                         f"{r.returncode}: {r.stderr.decode(errors='replace')[-500:]}") from None
    f = m.get("server") or {}
    return Held(
        server=peer.key, round=index, connections=n, connected=int(m["connected"]),
        echoes=int(m["echoes"]), failures=dict(m["failures"]), connect_s=float(m["connect_s"]),
        threads=int(f.get("threads", 0)), epoll_instances=int(f.get("epoll_instances", 0)),
        epoll_watches=int(f.get("epoll_watches", 0)), rss_bytes=int(f.get("rss_bytes", 0)),
        rss_per_conn=float(m.get("server_rss_per_conn") or 0.0), fds=int(f.get("fds", 0)),
        fd_limit=int(f.get("fd_limit", 0)), p99_us=float(m["rtt_p99_us"]),
    )


def part3(peers: list[Peer], args: argparse.Namespace, go_binary: str | None,
          problems: list[str]) -> list[Held]:
    from tcplab.experiments.sandbox import Sandbox

    held: list[Held] = []
    ladder = [(C10K, 5), (args.most, 2)]
    for i in range(args.conc_rounds):
        for peer in rotate(peers, i):
            for n, messages in ladder:
                with Sandbox(SYSCTLS) as sb, serving(sb, peer, go_binary) as srv:
                    h = hold(sb, srv, peer, i + 1, n, messages)
                    totals = srv.stop()
                held.append(h)
                bad = check_totals(peer.key, totals, 64 * h.echoes, 0)
                if h.failures or h.connected != n or h.echoes != n * messages:
                    problems.append(f"{peer.key}: {h.connected:,} of {n:,} connections held, "
                                    f"{h.echoes:,} of {n * messages:,} echoes verified, "
                                    f"failures {h.failures}")
                elif bad:
                    problems.append(bad)
                _progress(f"part 3 round {i + 1}/{args.conc_rounds} {peer.key:<8} "
                          f"{h.connected:,}/{n:,} held, {h.threads} threads, "
                          f"{h.epoll_watches:,} epoll watches, RSS {h.rss_bytes / 2**20:.1f} MiB "
                          f"({h.rss_per_conn:,.0f} B/conn), fds {h.fds:,}/{h.fd_limit:,}")
    return held


# --- summaries -----------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _sum_tcp(cells: list[Cell]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in cells:
        for k, v in c.tcp.items():
            total[k] = total.get(k, 0) + v
    return total


def _paired(cells: list[Cell], base: list[Cell]) -> float | None:
    by = {(c.round, c.connections, c.size): c for c in base}
    ratios = [c.cpu_us / by[k].cpu_us for c in cells
              if (k := (c.round, c.connections, c.size)) in by and by[k].cpu_us > 0]
    return _median(ratios)


def summarize1(cells: list[Cell], peers: list[Peer]) -> list[dict[str, Any]]:
    go = [c for c in cells if c.server == "go"]
    rows = []
    for p in peers:
        cs = sorted((c for c in cells if c.server == p.key), key=lambda c: c.round)
        if not cs:
            continue
        cpu = [c.cpu_us for c in cs]
        rows.append({
            "server": p.key,
            "cpu_us_per_echo": _median(cpu),
            "user_us_per_echo": _median([c.user_us for c in cs]),
            "sys_us_per_echo": _median([c.sys_us for c in cs]),
            "ratio_vs_go": _paired(cs, go) if go else None,
            "ratio_vs_stime": _median([c.cpu_us / c.sys_us for c in cs if c.sys_us > 0]),
            "echoes_per_s": _median([c.echoes_per_s for c in cs]),
            "p99_us": _median([c.p99_us for c in cs]),
            "spread_cpu_us": [min(cpu), max(cpu)],
            "server_core_pct": _median([c.server_core_pct for c in cs]),
            "client_us_per_echo": _median([c.client_us for c in cs]),
            "others_core_pct": _median([c.others_core_pct for c in cs]),
            "tcp": _sum_tcp(cs),
            "server_threads": max(c.server_threads for c in cs),
            "rounds": [asdict(c) for c in cs],
        })
    return rows


def summarize2(cells: list[Cell], peers: list[Peer], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        for n in args.conns:
            row: dict[str, Any] = {"size": size, "connections": n, "servers": {}}
            for p in peers:
                cs = [c for c in cells if c.server == p.key and c.size == size
                      and c.connections == n]
                if cs:
                    rate = [c.echoes_per_s for c in cs]
                    row["servers"][p.key] = {
                        "echoes_per_s": _median(rate),
                        "spread_echoes_per_s": [min(rate), max(rate)],
                        "p50_us": _median([c.p50_us for c in cs]),
                        "p99_us": _median([c.p99_us for c in cs]),
                        "cpu_us_per_echo": _median([c.cpu_us for c in cs]),
                        "server_core_pct": _median([c.server_core_pct for c in cs]),
                        "client_us_per_echo": _median([c.client_us for c in cs]),
                        "others_core_pct": _median([c.others_core_pct for c in cs]),
                        "tcp": _sum_tcp(cs),
                        "rounds": len(cs),
                    }
            rows.append(row)
    return rows


def summarize3(held: list[Held], peers: list[Peer], most: int) -> list[dict[str, Any]]:
    rows = []
    for p in peers:
        for n in (C10K, most):
            hs = [h for h in held if h.server == p.key and h.connections == n]
            if not hs:
                continue
            rows.append({
                "server": p.key, "connections": n,
                "connected_min": min(h.connected for h in hs),
                "verified": all(not h.failures and h.connected == n for h in hs),
                "threads_max": max(h.threads for h in hs),
                "epoll_instances": max(h.epoll_instances for h in hs),
                "epoll_watches_min": min(h.epoll_watches for h in hs),
                "rss_bytes": _median([float(h.rss_bytes) for h in hs]),
                "rss_per_conn": _median([h.rss_per_conn for h in hs]),
                "fds_max": max(h.fds for h in hs),
                "fd_limit": min(h.fd_limit for h in hs),
                "connect_s": _median([h.connect_s for h in hs]),
                "p99_us": _median([h.p99_us for h in hs]),
                "rounds": [asdict(h) for h in hs],
            })
    return rows


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by1 = {r["server"]: r for r in res.get("part1", [])}
    for model in (DEFAULT_MODEL, "epoll"):
        r = by1.get(model)
        if r is None:
            continue
        tag = "" if model == DEFAULT_MODEL else " (shown for epoll)"
        if r["ratio_vs_go"] is not None:
            out.append({"goal": f"{model} CPU per echo / Go's <= {GOAL_VS_GO:.2f}{tag}",
                        "value": r["ratio_vs_go"], "fmt": ".2f",
                        "pass": r["ratio_vs_go"] <= GOAL_VS_GO})
        if r["ratio_vs_stime"] is not None:
            out.append({"goal": f"{model} CPU per echo / its own stime <= "
                                f"{GOAL_VS_STIME:.2f}{tag}",
                        "value": r["ratio_vs_stime"], "fmt": ".2f",
                        "pass": r["ratio_vs_stime"] <= GOAL_VS_STIME})
    by3 = {(r["server"], r["connections"]): r for r in res.get("part3", [])}
    c10k = by3.get((DEFAULT_MODEL, C10K))
    if c10k:
        out.append({"goal": f"{DEFAULT_MODEL}: {C10K:,} connections held and echoing on "
                            f"<= {GOAL_THREADS} OS threads",
                    "value": c10k["threads_max"], "fmt": "d",
                    "pass": c10k["verified"] and c10k["threads_max"] <= GOAL_THREADS})
    most = by3.get((DEFAULT_MODEL, res["settings"]["most"]))
    if most:
        out.append({"goal": f"{DEFAULT_MODEL}: {most['connections']:,} connections held in one "
                            f"process (fd limit {most['fd_limit']:,})",
                    "value": most["connected_min"], "fmt": ",d", "pass": most["verified"]})
    if c10k and c10k["rss_per_conn"] is not None:
        out.append({"goal": f"{DEFAULT_MODEL} RSS per idle connection <= {GOAL_RSS:,} B",
                    "value": c10k["rss_per_conn"], "fmt": ",.0f",
                    "pass": c10k["rss_per_conn"] <= GOAL_RSS})
    return out


# --- printing ------------------------------------------------------------------------------


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(res: dict[str, Any]) -> None:
    s = res["settings"]
    go = res["go"]
    print("tcplab echo servers vs a Go reference (bench/peers/echo.go); every server in a fresh "
          "private network namespace (" + ", ".join(f"{k} = {v}" for k, v in SYSCTLS.items())
          + f"), 127.0.0.1:{PORT}, load generator in its own process")
    if go.get("skipped"):
        print(f"  Go: skipped: {go['skipped']}")
    else:
        print(f"  Go: {go['version']}, GOMAXPROCS {go['gomaxprocs']} ({res['cpus']} cpus); "
              f"echo.go built in {go['build_s']:.1f} s into a temporary directory")
    print(f"  tcplab: {res['python']} -m tcplab server --model M --fd-limit max "
          f"--backlog {BACKLOG}")
    if "part1" in res:
        print()
        print(f"1. server CPU per echo: {s['connections']} connections, 64 B ping-pong, "
              f"{s['seconds']:g} s windows after {s['warmup']:g} s warm-up, median of "
              f"{s['rounds']} interleaved rounds")
        head = ("server", "cpu_us", "user_us", "sys_us", "x go", "x stime", "echoes/s",
                "p99_us", "threads", "spread cpu_us")
        print(f"{head[0]:<8} {head[1]:>7} {head[2]:>7} {head[3]:>7} {head[4]:>6} {head[5]:>7} "
              f"{head[6]:>9} {head[7]:>7} {head[8]:>7}  {head[9]}")
        for r in res["part1"]:
            lo, hi = r["spread_cpu_us"]
            print(f"{r['server']:<8} {r['cpu_us_per_echo']:>7.2f} {r['user_us_per_echo']:>7.2f} "
                  f"{r['sys_us_per_echo']:>7.2f} {_fmt(r['ratio_vs_go'], '.2f'):>6} "
                  f"{_fmt(r['ratio_vs_stime'], '.2f'):>7} {r['echoes_per_s']:>9,.0f} "
                  f"{r['p99_us']:>7,.0f} {r['server_threads']:>7}  {lo:.2f}..{hi:.2f}")
        print("  sys_us is the kernel's own share (the server's stime per echo); x go = median "
              "of per-round ratios to Go; x stime = cpu / sys")
        print("  diagnostics (medians): server CPU in % of one core; the load generator's "
              "CPU per echo; everything else on this machine, in % of one core")
        for r in res["part1"]:
            print(f"    {r['server']:<8} server {r['server_core_pct']:5.1f} %   "
                  f"client {r['client_us_per_echo']:5.2f} us/echo   "
                  f"others {r['others_core_pct']:5.1f} %   "
                  f"retransmitted {r['tcp'].get('RetransSegs', 0)}")
    if "part2" in res:
        names = [p for p in res["servers"] if any(p in row["servers"] for row in res["part2"])]
        p1 = {r["server"]: r for r in res.get("part1", [])}
        print()
        print(f"2. requests/s (round trips per second, all connections), median of "
              f"{s['grid_rounds']} interleaved rounds, {s['grid_seconds']:g} s windows after "
              f"{s['grid_warmup']:g} s warm-up")
        _grid(res["part2"], names, "echoes_per_s", ",.0f", p1, s, ratio=True)
        print()
        print("   p99 latency, microseconds (first byte sent to last byte back, at the "
              "load generator)")
        _grid(res["part2"], names, "p99_us", ",.0f", p1, s, ratio=False)
        print("  one Python load generator drives every connection: at 100 and 1,000 "
              "connections it sets the pace (and most of p99); 64 B x 100 is part 1")
        if any(_mark(c) for row in res["part2"] for c in row["servers"].values()):
            print(f"  * the rounds differ by more than {SPREAD_MARK:g}x (min..max in the JSON; "
                  "every round is on stderr). "
                  "At 1 connection both processes sleep between echoes, and on this machine a "
                  "wake-up across CPUs costs tens of microseconds: a run is fast or slow as "
                  "the scheduler puts client and server on one CPU or two (--pin same / "
                  "--pin split fix it); with more connections, the other work on this "
                  "machine (the 'others' of part 1, per round on stderr)")
        tcp = [c["tcp"] for row in res["part2"] for c in row["servers"].values()]
        tcp += [r["tcp"] for r in res.get("part1", [])]
        total = {k: sum(t.get(k, 0) for t in tcp) for k in ("RetransSegs", "TCPLossProbes",
                                                             "TCPDSACKRecv", "TCPTimeouts")}
        print(f"  TCP in the windows: {total['RetransSegs']:,} segments retransmitted, "
              f"{total['TCPLossProbes']:,} of them tail-loss probes, {total['TCPDSACKRecv']:,} "
              f"answered by a D-SACK (the data had arrived: spurious), "
              f"{total['TCPTimeouts']:,} RTOs; per cell in the JSON")
    if "part3" in res:
        print()
        print(f"3. concurrency (tcplab multiplex: connections ramped up, held, 64 B round "
              f"trips on every one at once, every byte verified; server facts read while all "
              f"are open), median of {s['conc_rounds']} rounds")
        head = ("server", "conns", "held", "threads", "epoll", "watches", "RSS MiB",
                "B/conn", "fds", "fd limit", "headroom", "p99_us")
        print(f"{head[0]:<8} {head[1]:>7} {head[2]:>7} {head[3]:>7} {head[4]:>5} "
              f"{head[5]:>8} {head[6]:>7} {head[7]:>7} {head[8]:>7} {head[9]:>8} "
              f"{head[10]:>8} {head[11]:>8}")
        for r in res["part3"]:
            print(f"{r['server']:<8} {r['connections']:>7,} {r['connected_min']:>7,} "
                  f"{r['threads_max']:>7} {r['epoll_instances']:>5} "
                  f"{r['epoll_watches_min']:>8,} {r['rss_bytes'] / 2**20:>7.1f} "
                  f"{r['rss_per_conn']:>7,.0f} {r['fds_max']:>7,} {r['fd_limit']:>8,} "
                  f"{r['fd_limit'] - r['fds_max']:>8,} {r['p99_us']:>8,.0f}")
        print("  B/conn = (RSS with every connection open and idle - RSS before the first "
              "connect) / connections: user space only (kernel socket memory is not in RSS)")
        print("  headroom = fd limit - fds in use: the server could hold that many more; the "
              "client, a separate process, needs one fd per connection too, under its own "
              "limit of the same size")
    print()
    print("goals:")
    if not res["goals"]:
        print("  (none measured)")
    for g in res["goals"]:
        print(f"  {g['goal']:<72} {format(g['value'], g['fmt']):>7}  "
              f"{'pass' if g['pass'] else 'FAIL'}")
    if res["problems"]:
        print()
        print("problems:")
        for p in res["problems"]:
            print(f"  {p}")
    else:
        print("every server's totals equal the load generators' counts")


def _mark(cell: dict[str, Any]) -> str:
    """"*" when the rounds' requests/s differ by more than 2x (see the note under the table)."""
    lo, hi = cell.get("spread_echoes_per_s") or (0, 0)
    return "*" if lo > 0 and hi / lo > SPREAD_MARK else ""


def _grid(rows: list[dict[str, Any]], names: list[str], key: str, spec: str,
          p1: dict[str, Any], s: dict[str, Any], ratio: bool) -> None:
    ratio_name = f"{DEFAULT_MODEL}/go"
    show_ratio = ratio and "go" in names and DEFAULT_MODEL in names
    print(f"   {'size':>6} {'conns':>5} " + " ".join(f"{n:>9}" for n in names)
          + (f" {ratio_name:>10}" if show_ratio else ""))
    extra: list[dict[str, Any]] = []
    if p1 and all(n in p1 for n in names):
        extra.append({"size": 64, "connections": s["connections"],
                      "servers": {n: {key: p1[n][key]} for n in names}, "part1": True})
    for row in extra + rows:
        cells = [row["servers"].get(n, {}) for n in names]
        line = (f"   {_size(row['size']):>6} {row['connections']:>5,} "
                + " ".join(f"{_fmt(c.get(key), spec) + _mark(c):>9}" for c in cells))
        if show_ratio:
            g = row["servers"].get("go", {}).get(key)
            d = row["servers"].get(DEFAULT_MODEL, {}).get(key)
            line += f" {_fmt(d / g if d is not None and g else None, '.2f'):>10}"
        print(line + ("   (part 1)" if row.get("part1") else ""))


# --- main --------------------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    try:
        vals = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}"
                                         ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError("every value must be at least 1")
    return vals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tcplab.traffic.models import MODELS

    p = argparse.ArgumentParser(
        description="Every tcplab echo-server model against a Go reference echo server "
        "(bench/peers/echo.go): server CPU per echo, requests/s and p99 over message sizes "
        "and connection counts, and concurrency (10,000 held, the most one process can hold, "
        "RSS per idle connection). Each server runs in its own private network namespace.",
    )
    p.add_argument("--rounds", type=int, default=5,
                   help="part 1 (CPU per echo): interleaved rounds (default 5)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="part 1: measurement window per run (default 3)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="part 1: load before the window opens (default 0.5)")
    p.add_argument("--connections", type=int, default=100,
                   help="part 1: concurrent connections (default 100)")
    p.add_argument("--grid-rounds", type=int, default=3, help="part 2: rounds (default 3)")
    p.add_argument("--grid-seconds", type=float, default=2.0,
                   help="part 2: window per cell (default 2)")
    p.add_argument("--grid-warmup", type=float, default=0.3,
                   help="part 2: warm-up per cell (default 0.3)")
    p.add_argument("--sizes", type=_csv_ints, default=[1024, 65536],
                   help="part 2: message sizes in bytes (default 1024,65536)")
    p.add_argument("--conns", type=_csv_ints, default=[1, 10, 100, 1000],
                   help="part 2: connection counts (default 1,10,100,1000)")
    p.add_argument("--conc-rounds", type=int, default=3, help="part 3: rounds (default 3)")
    p.add_argument("--most", type=int, default=19_000,
                   help="part 3: connections for 'the most one process can hold' "
                   "(default 19,000)")
    p.add_argument("--max-echoes", type=int, default=5_000_000,
                   help="close a window early after this many echoes (default 5,000,000)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"tcplab models, comma-separated (default {','.join(MODELS)})")
    p.add_argument("--parts", default="1,2,3", help="which parts to run (default 1,2,3)")
    p.add_argument("--pin", choices=tuple(PINS), default="none",
                   help="parts 1 and 2: none (default: the scheduler places both), split "
                   "(server on CPU 0, load generator on CPU 1), same (both on CPU 0)")
    p.add_argument("--go", metavar="PATH", help="the go tool (default: go on PATH)")
    p.add_argument("--quick", action="store_true",
                   help="--rounds 2 --seconds 1.5 --grid-rounds 1 --grid-seconds 1 "
                   "--conc-rounds 1")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 1.5
        args.grid_rounds, args.grid_seconds, args.conc_rounds = 1, 1.0, 1
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models or len(set(args.models)) != len(args.models):
        p.error(f"--models: give distinct models from {', '.join(MODELS)}")
    try:
        args.parts = sorted({int(x) for x in args.parts.split(",") if x.strip()})
    except ValueError:
        p.error("--parts: comma-separated numbers from 1,2,3")
    if not args.parts or not set(args.parts) <= {1, 2, 3}:
        p.error("--parts: comma-separated numbers from 1,2,3")
    for name in ("rounds", "grid_rounds", "conc_rounds", "connections", "max_echoes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.seconds, args.grid_seconds) <= 0 or min(args.warmup, args.grid_warmup) < 0:
        p.error("windows must be > 0 s and warm-ups >= 0 s")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    biggest = max([args.connections, *args.conns, C10K, args.most])
    if biggest + 64 > hard:
        p.error(f"{biggest:,} connections need {biggest + 64:,} fds in the client, more than "
                f"this process's hard limit of {hard:,}: lower --most, or raise 'ulimit -Hn'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    tmp = Path(tempfile.mkdtemp(prefix="tcplab-echo-vs-go-"))
    problems: list[str] = []
    res: dict[str, Any] = {}
    try:
        try:
            go_binary, go_info = gopeer.prepare(args.go, tmp, "echo", "echo.go")
        except gopeer.GoBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if go_binary is not None:
            _progress(f"built echo.go with {go_info['version']} in {go_info['build_s']:.1f} s")
        peers = ([Peer("go", "go")] if go_binary else []) + [
            Peer(m, "tcplab") for m in args.models]
        res = {
            "benchmark": "echo_vs_go",
            "settings": {k: getattr(args, k) for k in (
                "rounds", "seconds", "warmup", "connections", "grid_rounds", "grid_seconds",
                "grid_warmup", "sizes", "conns", "conc_rounds", "most", "max_echoes", "models",
                "parts", "quick", "pin")},
            "namespace": {"sysctls": SYSCTLS, "fresh_per_server": True},
            "cpus": os.cpu_count(),
            "python": sys.executable,
            "go": {k: v for k, v in go_info.items() if k != "binary"},
            "servers": [p.key for p in peers],
        }
        if 1 in args.parts:
            res["part1"] = summarize1(part1(peers, args, go_binary, problems), peers)
        if 2 in args.parts:
            res["part2"] = summarize2(part2(peers, args, go_binary, problems), peers, args)
        if 3 in args.parts:
            conc = [p for p in peers if p.key in ("go", DEFAULT_MODEL)]
            if conc:
                res["part3"] = summarize3(part3(conc, args, go_binary, problems), conc,
                                          args.most)
    except KeyboardInterrupt:
        print("interrupted: every child has been reaped, the namespaces are gone",
              file=sys.stderr)
        return 130
    except BenchError as exc:
        if INTERRUPTED:
            print("interrupted: every child has been reaped, the namespaces are gone",
                  file=sys.stderr)
            return 130
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["goals"] = goals(res)
    res["problems"] = problems
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loadgen":
        sys.exit(loadgen_main(sys.argv[2]))
    sys.exit(main())
