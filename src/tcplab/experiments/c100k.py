"""C100k: the multiplexing lesson at the scale where it matters, on its own.

Experiment 4 (multiplex.py) stops at 10,000 connections, and one process cannot
go past 19,936: the hard RLIMIT_NOFILE (20,000 here) caps the fds of every
process, and only CAP_SYS_RESOURCE raises it. Neither is the machine's limit. In
a private namespace this experiment holds 100,000 connections open and echoing
at once:

* the server is ``tcplab server --workers K``: K processes, each with its own
  SO_REUSEPORT listener on one port (the kernel spreads connections over their
  accept queues by a hash of the 4-tuple), or, for comparison, one listener
  shared by the K processes (whoever wakes first accepts: uneven);
* the client is ``tcplab multiplex --processes C`` (traffic/spread.py): C
  forked processes, each from its own source address, so that no (source,
  destination) pair runs out of ephemeral ports, connecting, holding, echoing
  with every byte verified, and closing in step.

At the peak it reads what each server process holds (the accept histogram),
the server's user memory per connection (all workers' RSS growth over their
idle size), and, as root, the kernel's own bytes per socket from
/proc/slabinfo (the ledger, observe/slab.py); and it says which limit this
machine hits first and where the next ones stand (observe/limits.py).

Each model runs at the largest scale it can hold: the event loops at N, the
thread-per-connection model on a ladder that stops where it fails, or where its
threads would take too much of kernel.pid_max (machine-wide: every thread is a
task with a pid, in every pid namespace up to the root, kernel/pid.c
alloc_pid).

The verdict: shown when the default model (uvloop, SO_REUSEPORT) held all N,
none failed, and its server used at most 2 KiB of user memory per connection.
Time is recorded, not judged (it depends on the machine's load).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tcplab.errors import ExperimentFailed, UsageError
from tcplab.experiments import result as base
from tcplab.experiments.children import (
    ServerProcess,
    decode_result,
    relay_stderr,
    terminate,
)
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec, ends
from tcplab.observe import limits
from tcplab.observe.limits import Capacity
from tcplab.observe.process import own_fd_limit
from tcplab.observe.procfs import read_text
from tcplab.observe.slab import Ledger
from tcplab.traffic import spread
from tcplab.traffic.multiplex import MultiplexResult, WorkerRow
from tcplab.traffic.target import resolve

PORT = 8080
DEFAULT_MODEL = "uvloop"
DEFAULT_LISTENER = "reuseport"
#: The verdict's memory bound: server user memory per connection, bytes (the issue's).
MAX_RSS_PER_CONN = 2048
#: fds a server worker keeps beyond its connections (listener, epoll, pipes, stdio).
SERVER_SPARE = 64
#: A rung where at least this share failed ends the threads ladder ("collapsed").
MOSTLY_FAILED = 0.5
#: Threads may take at most this share of the pids left free (kernel.pid_max less
#: the tasks running now): the machine is shared, and a fork elsewhere that finds
#: no pid fails with EAGAIN.
PID_SHARE = 0.5
#: The process counts a run may use at most: beyond this the hard fd limit is too
#: low for this experiment to be worth running (an ordinary user's 1,024).
MAX_PROCESSES = 32

LISTENERS = ("reuseport", "shared")
#: --live, --record and --report's replay: one sock_diag snapshot of the
#: namespace every this many seconds (not the tracepoints; cli/experiment.py).
LIVE_INTERVAL = 5.0
#: The ephemeral ports of a new network namespace: the kernel's default range,
#: 32768-60999 (inet_init_net, net/ipv4/af_inet.c), whatever the host's is.
SANDBOX_PORTS = 60999 - 32768 + 1


@dataclass(frozen=True, slots=True)
class Settings:
    connections: int = 100_000
    models: tuple[str, ...] = ("uvloop", "epoll", "asyncio", "threads")
    listener: str = "both"  # the default model's listeners: reuseport, shared or both
    workers: int | None = None  # None: as few as the fd limit allows, at least the CPUs
    processes: int | None = None  # client processes; None: as few as the fd limit allows
    process_fds: int | None = None  # a hard fd limit for every server and client process
    messages: int = 3
    size: int = 64
    timeout: float = 60.0
    threads_ladder: tuple[int, ...] = (2_500, 5_000, 10_000, 20_000)


@dataclass(frozen=True, slots=True)
class RunWith:
    connections: int
    models: tuple[str, ...]
    listeners: tuple[str, ...]
    workers: int
    processes: int
    process_fds: int
    messages: int
    size: int


@dataclass(frozen=True, slots=True)
class Bar:
    """One server process in the accept histogram."""

    pid: int
    held: int  # its socket fds at the peak less at idle: connections it held
    accepted: int | None  # its own count, from its totals at the end (None: not read)
    rss_growth: int  # bytes, peak less idle
    cpu_s: float


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model with one kind of listener at one N: one shape for every model."""

    name: str  # "uvloop reuseport x100000"
    model: str
    listener: str
    workers: int
    processes: int  # client processes
    asked: int
    held: int  # open, every round trip verified, still open at the end
    failed: int
    failures: dict[str, int]
    explanations: dict[str, str]
    rss_growth_per_conn: float | None  # bytes of server user memory per connection
    client_rss_per_conn: float | None
    cpu_us_per_conn: float | None  # server CPU (all workers) per connection, echoes included
    held_s: float  # first connect to every connection held and echoed
    p50_us: float
    p99_us: float
    threads: int  # server threads at the peak, all workers
    epoll_watches: int
    accept_queue_peak: int | None
    listen_overflows: int | None
    bars: list[Bar]
    spread_cv: float | None  # the histogram's coefficient of variation (sd / mean)
    notes: list[str] = field(default_factory=list)
    stopped_because: str | None = None  # a ladder's last rung: why it went no further


@dataclass(frozen=True, slots=True)
class Spreads:
    """SO_REUSEPORT's histogram against the shared listener's, same model and N."""

    reuseport_cv: float | None
    shared_cv: float | None
    expected_cv: float | None  # a uniform hash over K listeners: sqrt((K-1)/N)
    reuseport_max_min: float | None
    shared_max_min: float | None


@dataclass(frozen=True, slots=True)
class Facts:
    connections: int
    default: str  # the default row's name
    held: int
    failed: int
    rss_growth_per_conn: float | None
    max_rss_per_conn: int
    held_s: float | None
    workers: int
    processes: int
    spreads: Spreads | None = None
    ledger: Ledger | None = None  # per-cache rows when root could read /proc/slabinfo
    capacity: Capacity | None = None
    problems: tuple[str, ...] = ()  # why not shown, in words


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, ModelRow]):
    """C100k's result. ``--json`` has the default row's figures at the top (``held``,
    ``failed``, ``rss_growth_per_conn``, ``workers``) and the other rows in ``models``."""

    held: int = 0
    failed: int = 0
    rss_growth_per_conn: float | None = None
    workers: list[Bar] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)
    default: ModelRow | None = None  # the default row whole (its failures, notes, p99)


def workers_for(n: int, hard: int, cpus: int) -> int:
    """Server processes: enough for the fd limit with room for the hash's unevenness
    (the largest of K shares of a uniform spread is about n/K + 3 sd), at least one
    per CPU."""
    k = spread.processes_for(n, hard, SERVER_SPARE)
    while k < MAX_PROCESSES:
        share = n / k
        if share + 4 * math.sqrt(share) <= hard - SERVER_SPARE:
            break
        k += 1
    return max(k, min(cpus, MAX_PROCESSES))


def expected_cv(n: int, k: int) -> float | None:
    """The coefficient of variation of K binomial shares of N (a uniform hash)."""
    if k < 2 or n < k:
        return None
    return math.sqrt((k - 1) / n)


def cv(values: Sequence[int]) -> float | None:
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return round(statistics.pstdev(values) / statistics.fmean(values), 4)


def pid_room() -> tuple[int, int]:
    """(kernel.pid_max, tasks running now): threads come out of the difference."""
    pid_max = int(read_text("sys/kernel/pid_max").strip())
    running = int(read_text("loadavg").split()[3].split("/")[1])  # "R/T": T tasks
    return pid_max, running


def threads_cap(pid_max: int, running: int) -> int:
    return int(PID_SHARE * max(0, pid_max - running))


def check(s: Settings, hard: int) -> tuple[int, int]:
    """(workers, client processes) for the settings, or a UsageError that says why not."""
    k = s.workers or workers_for(s.connections, hard, os.cpu_count() or 1)
    c = s.processes or spread.client_processes(
        s.connections, hard, resolve("127.0.0.1", PORT), SANDBOX_PORTS)
    if k > MAX_PROCESSES or c > MAX_PROCESSES:
        most = MAX_PROCESSES * (hard - SERVER_SPARE)
        raise UsageError(
            f"{s.connections:,} connections under a hard fd limit of {hard:,} per process "
            f"need {max(k, c)} processes a side; this experiment runs at most "
            f"{MAX_PROCESSES} (so at most about {most:,} connections here)",
            hint="use fewer --connections, or raise the hard limit (as root: "
            "'ulimit -Hn', or LimitNOFILE= for a service)")
    if (s.connections / k) > hard - SERVER_SPARE:
        raise UsageError(f"--workers {k}: {s.connections:,} connections would need "
                         f"{-(-s.connections // k):,} fds in each, over the hard limit of "
                         f"{hard:,}", hint=f"use at least --workers "
                         f"{spread.processes_for(s.connections, hard, SERVER_SPARE)}")
    return k, c


def run(settings: Settings | None = None, quick: bool = False,
        progress: base.Progress = base.say_nothing, link: LinkSpec = LOOPBACK) -> Result:
    s = settings or Settings()
    if quick:
        s = replace(s, connections=min(s.connections, 10_000),
                    process_fds=s.process_fds or 2_500,
                    threads_ladder=tuple(n for n in s.threads_ladder if n <= 2_500))
    if link.kind != "loopback":
        raise UsageError("experiment c100k runs on loopback only for now: on a veth link "
                         "each client process needs its own source address on the link",
                         hint="drop --link veth")
    own = own_fd_limit().hard
    hard = min(own, s.process_fds or own)
    k, c = check(s, hard)
    listeners = LISTENERS if s.listener == "both" else (s.listener,)
    rows: list[ModelRow] = []
    host = limits.host_facts()  # tcp_mem, fs.file-max, pid_max: the host's, not the netns'
    with ends(link, {"net.core.somaxconn": "8192", "net.ipv4.tcp_fin_timeout": "5"},
              prefix="c1k") as e:
        ledger = None
        for model in s.models:
            if model == "threads":
                rows.extend(_ladder(e, s, k, c, hard, progress))
                continue
            for kind in listeners if model == DEFAULT_MODEL else (DEFAULT_LISTENER,):
                progress(f"c100k: {model}, {kind} listener{'s' if kind == 'reuseport' else ''}"
                         f", {s.connections:,} connections, {k} server and {c} client "
                         "processes")
                row, m = _row(e, model, kind, s.connections, s, k, c, hard, progress)
                rows.append(row)
                if (model, kind) == (DEFAULT_MODEL, DEFAULT_LISTENER) and m.spread:
                    ledger = m.spread.ledger
    return judge(rows, s, k, c, hard, ledger, host, e)


def _ladder(e: Ends, s: Settings, k: int, c: int, hard: int,
            progress: base.Progress) -> list[ModelRow]:
    """Threads, rung by rung, until a rung fails or the next would take too many pids."""
    rows: list[ModelRow] = []
    for n in sorted(x for x in s.threads_ladder if x <= s.connections):
        pid_max, running = pid_room()
        cap = threads_cap(pid_max, running)
        if n > cap:
            why = (f"{n:,} connections would be {n:,} threads, and kernel.pid_max is "
                   f"{pid_max:,} for the whole machine with {running:,} tasks running: "
                   f"this experiment takes at most half of the {pid_max - running:,} left")
            if rows:
                rows[-1] = replace(rows[-1], stopped_because=why)
            else:
                rows.append(_not_run("threads", n, k, c, why))
            break
        progress(f"c100k: threads, {n:,} connections ({k} server processes, one thread per "
                 "connection)")
        row, _ = _row(e, "threads", DEFAULT_LISTENER, n, s, k, c, hard, progress)
        rows.append(row)
        if row.failed >= MOSTLY_FAILED * n:
            rows[-1] = replace(row, stopped_because=(
                f"collapsed at {n:,}: {row.failed:,} of {n:,} failed"))
            break
    return rows


def _not_run(model: str, n: int, k: int, c: int, why: str) -> ModelRow:
    return ModelRow(name=f"{model} x{n}", model=model, listener=DEFAULT_LISTENER, workers=k,
                    processes=c, asked=n, held=0, failed=0, failures={}, explanations={},
                    rss_growth_per_conn=None, client_rss_per_conn=None, cpu_us_per_conn=None,
                    held_s=0.0, p50_us=0.0, p99_us=0.0, threads=0, epoll_watches=0,
                    accept_queue_peak=None, listen_overflows=None, bars=[], spread_cv=None,
                    stopped_because=why)


def _row(e: Ends, model: str, kind: str, n: int, s: Settings, k: int, c: int, hard: int,
         progress: base.Progress) -> tuple[ModelRow, MultiplexResult]:
    """One server of K workers and one spread client of C processes, at N."""
    fds = {"fd_limit": hard, "fd_hard": True} if s.process_fds else {}
    server = ServerProcess(["--host", e.server_host, "--port", str(PORT), "--model", model,
                            "--workers", str(k), "--listener", kind, "--fd-limit", "max",
                            "--backlog", "8192"], popen=e.server, popen_kwargs=fds,
                           start_timeout=60.0)
    server.start()
    try:
        pids = [w.pid for w in server.listening.workers] or [server.pid]
        args = [sys.executable, "-m", "tcplab", "multiplex", "--host", e.server_host,
                "--port", str(PORT), "--connections", str(n), "--processes", str(c),
                "--messages", str(s.messages), "--size", str(s.size),
                "--timeout", str(s.timeout), "--json"]
        for pid in pids:
            args += ["--server-pid", str(pid)]
        m = _client(e, args, fds, s.timeout + 2 * n / 5_000 + 120, progress)
    finally:
        server.stop(timeout=30)
    accepted = {ev.get("pid"): ev.get("accepted") for ev in server.events
                if ev.get("event") == "worker-totals"}
    return row_from(model, kind, n, k, m, accepted), m


def _client(e: Ends, args: list[str], fds: dict[str, Any], timeout: float,
            progress: Callable[..., None]) -> MultiplexResult:
    """Run the spread client at the client's end, its progress lines passed on."""
    proc = e.client(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **fds)
    reader, err = relay_stderr(proc, lambda line: progress(f"  {line}"),
                               ("connecting:", "echoes:"))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExperimentFailed(f"tcplab multiplex did not finish in {timeout:.0f} s",
                               hint="run it by hand to see where it stops") from None
    except BaseException:  # Ctrl-C: the client first (its processes die with it, and
        terminate(proc)  # their sockets reset), so the server stops with nothing open
        raise
    finally:
        reader.join(timeout=5)
    if not out.strip():
        raise ExperimentFailed(f"tcplab multiplex exited {proc.returncode}: "
                               f"{err[-1] if err else 'no output'}",
                               hint="run 'tcplab multiplex' by hand against 'tcplab server "
                               "--workers K' to see it whole")
    return decode_result(MultiplexResult, out, "tcplab multiplex")


def row_from(model: str, kind: str, n: int, k: int, m: MultiplexResult,
             accepted: dict[Any, Any]) -> ModelRow:
    sp = m.spread
    rows: list[WorkerRow] = sp.workers if sp is not None else []
    bars = [Bar(pid=w.pid, held=w.held, accepted=accepted.get(w.pid), rss_growth=w.rss_peak
                - w.rss_idle, cpu_s=w.cpu_s) for w in rows]
    return ModelRow(
        name=f"{model} {kind} x{n}" if model != "threads" else f"threads x{n}",
        model=model, listener=kind, workers=k, processes=m.processes, asked=n, held=m.held,
        failed=sum(m.failures.values()), failures=dict(m.failures),
        explanations=dict(m.explanations),
        rss_growth_per_conn=sp.rss_growth_per_conn if sp else None,
        client_rss_per_conn=sp.client_rss_per_conn if sp else None,
        cpu_us_per_conn=sp.server_cpu_us_per_conn if sp else None,
        held_s=sp.held_s if sp else 0.0, p50_us=m.rtt_p50_us, p99_us=m.rtt_p99_us,
        threads=sum(w.threads for w in rows), epoll_watches=sum(w.epoll_watches for w in rows),
        accept_queue_peak=m.accept_queue_peak,
        listen_overflows=sp.listen_overflows if sp else None,
        bars=bars, spread_cv=cv([b.held for b in bars]), notes=list(m.notes))


def judge(rows: Sequence[ModelRow], s: Settings, k: int, c: int, hard: int, ledger: Any,
          host: Any, e: Ends) -> Result:
    name = f"{DEFAULT_MODEL} {DEFAULT_LISTENER} x{s.connections}"
    default = next((r for r in rows if r.name == name), None)
    problems = []
    if default is None:
        problems.append(f"the default model ({DEFAULT_MODEL}, SO_REUSEPORT) did not run")
    else:
        if default.held != s.connections:
            problems.append(f"it held {default.held:,} of {s.connections:,}")
        if default.failed:
            problems.append(f"{default.failed:,} failed")
        if default.rss_growth_per_conn is None:
            problems.append("its server's memory could not be read")
        elif default.rss_growth_per_conn > MAX_RSS_PER_CONN:
            problems.append(f"its server used {default.rss_growth_per_conn:,.0f} B of user "
                            f"memory per connection, over {MAX_RSS_PER_CONN:,}")
    shared = next((r for r in rows if r.model == DEFAULT_MODEL and r.listener == "shared"),
                  None)
    spreads = None
    if default is not None:
        def max_min(r: ModelRow | None) -> float | None:
            if r is None or not r.bars or min(b.held for b in r.bars) <= 0:
                return None
            return round(max(b.held for b in r.bars) / min(b.held for b in r.bars), 3)

        spreads = Spreads(reuseport_cv=default.spread_cv,
                          shared_cv=shared.spread_cv if shared else None,
                          expected_cv=expected_cv(s.connections, k),
                          reuseport_max_min=max_min(default), shared_max_min=max_min(shared))
    capacity = limits.capacity(
        host, fds_per_process=hard,
        kernel_per_conn=ledger.bytes_per_connection if ledger is not None else None,
        server_per_conn=default.rss_growth_per_conn if default else None,
        client_per_conn=default.client_rss_per_conn if default else None)
    facts = Facts(connections=s.connections, default=name,
                  held=default.held if default else 0,
                  failed=default.failed if default else 0,
                  rss_growth_per_conn=default.rss_growth_per_conn if default else None,
                  max_rss_per_conn=MAX_RSS_PER_CONN,
                  held_s=default.held_s if default else None, workers=k, processes=c,
                  spreads=spreads, ledger=ledger, capacity=capacity,
                  problems=tuple(problems))
    return Result(
        experiment="c100k", ok=not problems,
        settings=RunWith(connections=s.connections, models=s.models,
                         listeners=LISTENERS if s.listener == "both" else (s.listener,),
                         workers=k, processes=c, process_fds=hard, messages=s.messages,
                         size=s.size),
        facts=facts, link=e.used,
        held=default.held if default else 0, failed=default.failed if default else 0,
        rss_growth_per_conn=default.rss_growth_per_conn if default else None,
        workers=list(default.bars) if default else [],
        models=[r for r in rows if r is not default], default=default)
