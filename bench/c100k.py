"""C100k side by side: ``tcplab server --workers K`` (uvloop, one SO_REUSEPORT listener per
worker) against K Go echo servers (bench/peers/echo.go ``-reuseport``) under the same spread
client (``tcplab multiplex --connections N``, traffic/spread.py), in interleaved rounds; the
same uvloop server with one shared listener (the accept histogram); and one process at
19,000 with one client process (the per-process wall). Root or unprivileged user
namespaces, and go; about 3 minutes with the defaults (3 rounds). What is measured and how:
bench/README.md, "c100k.py".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file
from tcplab.experiments.c100k import cv, expected_cv
from tcplab.experiments.sandbox import Sandbox
from tcplab.observe import procfs
from tcplab.records import from_json
from tcplab.traffic.multiplex import MultiplexResult

BACKLOG = 8192
#: Inside each run's namespace only. The port range is left at its default: the spread
#: client sizes its source addresses to it (traffic/spread.py, SOURCE_FILL).
SYSCTLS = {"net.core.somaxconn": str(BACKLOG)}
#: The servers, in the order of round 1: "reuseport" and "shared" are tcplab server
#: --workers K --listener KIND; "go" is K processes of echo.go -reuseport.
SERVERS = ("reuseport", "go", "shared")
SETTINGS = ("rounds", "connections", "workers", "processes", "messages", "size", "timeout",
            "model", "servers", "reference")


@dataclass(frozen=True, slots=True)
class Run:
    """One server and one spread client in a fresh namespace."""

    server: str  # "reuseport", "go", "shared" or "single" (the reference row)
    round: int
    connections: int  # asked for
    held: int  # open and every round trip verified when the client closed them
    failed: int
    failures: dict[str, int]
    processes: int  # client processes
    server_processes: int
    connected_s: float  # first connect to every connection open (the first barrier)
    held_s: float  # first connect to every connection held and echoed
    rss_growth_per_conn: float | None  # all server processes' VmRSS growth / held, bytes
    cpu_us_per_conn: float  # server CPU (/proc/PID/stat) from the client's start to its exit
    spread_cpu_us_per_conn: float | None  # the spread's own: idle to every echo verified
    client_cpu_us_per_conn: float  # the client and its forked processes, from wait4()
    client_sys_us_per_conn: float  # of which system time (connect()'s port search is here)
    client_rss_per_conn: float | None
    kernel_bytes_per_socket: float | None  # the slab ledger (root): every socket of both ends
    meminfo_slab_per_socket: float | None  # /proc/meminfo Slab delta / sockets (anyone)
    mem_available_drop: int  # bytes: MemAvailable before the client minus its lowest during
    histogram: list[int]  # connections held by each server process
    hist_max_min: float | None
    hist_cv: float | None
    listen_overflows: int | None
    listen_drops: int | None
    threads: int  # all server processes, at the peak
    p99_us: float
    others_pct: float  # the rest of the machine's busy CPU over the client's life, % of a core
    ksoftirqd_pct: float  # of which the ksoftirqd threads (softirqs the kernel deferred)
    supervisor_cpu_us_per_conn: float | None  # tcplab's supervisor (not in the server CPU)
    load_before: float  # /proc/loadavg, 1 minute
    load_after: float
    wall_s: float  # the client's life
    totals_ok: bool  # the servers' echoed bytes = the client's verified bytes
    notes: list[str] = field(default_factory=list)


# --- the servers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Servers:
    pids: list[int]  # the processes that hold connections (workers, or the Go processes)
    supervisor: int | None  # tcplab server --workers K's supervisor, which holds none
    stop: Callable[[], int | None]  # -> bytes echoed by the servers' own count; None: unsaid


@contextlib.contextmanager
def tcplab_server(sb: Sandbox, model: str, workers: int, listener: str) -> Iterator[Servers]:
    from tcplab.errors import TcplabError
    from tcplab.experiments.children import ServerProcess

    extra = ["--workers", str(workers), "--listener", listener] if workers > 1 else []
    server = ServerProcess(["--port", str(h.PORT), "--model", model, "--fd-limit", "max",
                            "--backlog", str(BACKLOG), *extra], popen=sb.popen,
                           start_timeout=60.0)
    try:
        try:
            server.start()
        except TcplabError as exc:
            raise h.BenchError(f"tcplab server {' '.join(extra)}: {exc}") from None
        pids = [w.pid for w in server.listening.workers] or [server.pid]

        def stop() -> int | None:
            totals = server.stop(timeout=30)
            return None if totals is None else int(totals.get("bytes_echoed", -1))

        yield Servers(pids, server.pid if server.listening.workers else None, stop)
    finally:
        server.kill()


@contextlib.contextmanager
def go_servers(sb: Sandbox, binary: str, k: int, tmp: Path) -> Iterator[Servers]:
    """K echo.go -reuseport on 127.0.0.1:PORT; ready when each printed its listening line
    (after listen(), echo.go main); stdout to files (read at the end: the totals line)."""
    import json

    procs: list[subprocess.Popen[Any]] = []
    outs = [tmp / f"go-{i}.out" for i in range(k)]
    try:
        for out in outs:
            with open(out, "wb") as f:
                procs.append(sb.popen([binary, "-reuseport", "-addr", f"127.0.0.1:{h.PORT}"],
                                      stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        while not all(o.read_text().startswith("listening on") for o in outs):
            if dead := [p.pid for p in procs if p.poll() is not None]:
                raise h.BenchError(f"go echo server {dead} exited: "
                                   + " ".join(o.read_text().strip() for o in outs))
            if time.monotonic() > deadline:
                raise h.BenchError(f"{k} go echo servers did not all listen within 20 s")
            time.sleep(0.05)

        def stop() -> int | None:
            stop_all(procs)
            echoed = 0
            for o in outs:
                lines = [x for x in o.read_text().splitlines() if x.startswith("{")]
                if not lines:
                    return None
                echoed += int(json.loads(lines[-1]).get("bytes_echoed", -1))
            return echoed

        yield Servers([p.pid for p in procs], None, stop)
    finally:
        stop_all(procs)


def stop_all(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """SIGTERM to every one at once, then wait (each Go server waits up to 1 s for its
    connections to close, echo.go main: one after the other that was 6 s), SIGKILL after
    5 s (2 s after a Ctrl-C); not cut by a signal."""
    from tcplab.interrupts import deferred, interrupted

    with deferred():
        for p in procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + (2.0 if interrupted() else 5.0)
        for p in procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- the client ------------------------------------------------------------------------------


def _mem_available() -> int:
    for line in procfs.read_text("meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _load() -> float:
    return float(procfs.read_text("loadavg").split()[0])


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(procfs.ProcessError, OSError):
            total += procfs.cpu_seconds(pid)
    return total


def _ksoftirqd() -> list[int]:
    """The per-CPU softirq threads: softirq work the kernel could not finish where it was
    raised runs there (kernel/softirq.c: __do_softirq wakes ksoftirqd), charged to no
    process of ours."""
    found = []
    for pid in procfs.pids():
        with contextlib.suppress(procfs.ProcessError, OSError):
            if procfs.comm(pid).startswith("ksoftirqd/"):
                found.append(pid)
    return found


def client(sb: Sandbox, args: list[str], timeout: float, label: str
           ) -> tuple[MultiplexResult, h.Measured, int]:
    """``tcplab multiplex ARGS --json`` inside ``sb``, its progress lines passed on; the
    machine's MemAvailable sampled every 0.2 s while it runs: (its result, its wait4()
    figures, the largest MemAvailable drop seen)."""
    import json
    import tempfile

    with tempfile.TemporaryFile() as out:
        mem0 = low = _mem_available()
        t0 = time.perf_counter()
        proc = sb.popen(sb.tcplab("multiplex", *args, "--json"), stdout=out,
                        stderr=subprocess.PIPE)
        from tcplab.experiments.children import relay_stderr

        reader, err = relay_stderr(proc, lambda line: h.progress(f"  {label}: {line}"),
                                   ("connecting:", "echoes:"))
        fd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            end = time.monotonic() + timeout
            done = False
            while not done and time.monotonic() < end:
                done = bool(poller.poll(200))
                low = min(low, _mem_available())
        except BaseException:  # Ctrl-C: the client first, so the servers' stops are quick
            stop_all([proc])
            raise
        finally:
            os.close(fd)
        if not done:
            proc.kill()
        _pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        if not done:
            raise h.BenchError(f"{label}: tcplab multiplex did not finish in {timeout:.0f} s")
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
    m = h.Measured(text, "\n".join(err), proc.returncode, wall, ru.ru_utime, ru.ru_stime,
                   ru.ru_nvcsw + ru.ru_nivcsw)
    if not text:
        raise h.BenchError(f"{label}: tcplab multiplex exited {m.code}: "
                           f"{err[-1] if err else 'no output'}")
    return from_json(MultiplexResult, json.loads(text.splitlines()[-1])), m, mem0 - low


def one_run(key: str, index: int, args: argparse.Namespace, go_binary: str | None, tmp: Path,
            connections: int, processes: int) -> Run:
    """One server (``key``) in a fresh namespace against one spread client."""
    label = f"round {index} {key}"
    softirqd = _ksoftirqd()
    with Sandbox(SYSCTLS) as sb:
        servers: contextlib.AbstractContextManager[Servers]
        if key == "go":
            assert go_binary is not None
            servers = go_servers(sb, go_binary, args.workers, tmp)
        elif key == "single":
            servers = tcplab_server(sb, args.model, 1, "single")
        else:
            servers = tcplab_server(sb, args.model, args.workers, key)
        with servers as srv:
            cmd = ["--port", str(h.PORT), "--connections", str(connections),
                   "--messages", str(args.messages), "--size", str(args.size),
                   "--timeout", str(args.timeout)]
            cmd += ["--processes", str(processes)]
            for pid in srv.pids:
                cmd += ["--server-pid", str(pid)]
            sup = [srv.supervisor] if srv.supervisor else []
            load0, cpu0, busy0 = _load(), _cpu(srv.pids), h.machine_busy()
            sup0, soft0 = _cpu(sup), _cpu(softirqd)
            r, m, drop = client(sb, cmd, args.timeout + 2 * connections / 5_000 + 120, label)
            cpu1, busy1, load1 = _cpu(srv.pids), h.machine_busy(), _load()
            sup1, soft1 = _cpu(sup), _cpu(softirqd)
            echoed = srv.stop()
    cpu = Cpu(server=cpu1 - cpu0, others=busy1 - busy0 - (cpu1 - cpu0) - (m.user_s + m.sys_s),
              ksoftirqd=soft1 - soft0, supervisor=sup1 - sup0 if sup else None)
    return to_run(key, index, r, m, drop, srv.pids, cpu, load0, load1, echoed)


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds over the client's life."""

    server: float  # every process holding connections
    others: float  # the machine's busy time minus the server's and the client's
    ksoftirqd: float  # part of others
    supervisor: float | None  # part of others


def to_run(key: str, index: int, r: MultiplexResult, m: h.Measured, drop: int,
           pids: Sequence[int], cpu: Cpu, load0: float, load1: float, echoed: int | None
           ) -> Run:
    sp = r.spread
    held = r.held

    def per(x: float) -> float:
        return x / held * 1e6 if held else 0.0

    hist = [w.held for w in sp.workers] if sp else []
    led = sp.ledger if sp else None
    notes = list(r.notes)
    if echoed != r.verified_bytes:
        notes.append(f"the servers echoed {echoed if echoed is not None else '?'} bytes, the "
                     f"client verified {r.verified_bytes:,}")
    return Run(
        server=key, round=index, connections=r.connections, held=held,
        failed=sum(r.failures.values()), failures=dict(r.failures), processes=r.processes,
        server_processes=len(pids),
        connected_s=sp.phases.get("connected", 0.0) if sp else r.connect_s,
        held_s=sp.held_s if sp else round(r.connect_s + r.exchange_s, 3),
        rss_growth_per_conn=sp.rss_growth_per_conn if sp else r.server_rss_per_conn,
        cpu_us_per_conn=round(per(cpu.server), 2),
        spread_cpu_us_per_conn=sp.server_cpu_us_per_conn if sp else None,
        client_cpu_us_per_conn=round(per(m.user_s + m.sys_s), 2),
        client_sys_us_per_conn=round(per(m.sys_s), 2),
        client_rss_per_conn=sp.client_rss_per_conn if sp else None,
        kernel_bytes_per_socket=led.bytes_per_socket if led else None,
        meminfo_slab_per_socket=led.meminfo_slab_per_socket if led else None,
        mem_available_drop=drop, histogram=hist,
        hist_max_min=round(max(hist) / min(hist), 3) if hist and min(hist) > 0 else None,
        hist_cv=cv(hist), listen_overflows=sp.listen_overflows if sp else None,
        listen_drops=sp.listen_drops if sp else None,
        threads=(sum(w.threads for w in sp.workers) if sp
                 else (r.server.threads if r.server else 0)),
        p99_us=r.rtt_p99_us, others_pct=round(max(0.0, cpu.others) / m.wall_s * 100, 1),
        ksoftirqd_pct=round(cpu.ksoftirqd / m.wall_s * 100, 1),
        supervisor_cpu_us_per_conn=(None if cpu.supervisor is None
                                    else round(per(cpu.supervisor), 2)),
        load_before=load0, load_after=load1, wall_s=round(m.wall_s, 2),
        totals_ok=echoed == r.verified_bytes, notes=notes)


def run_line(x: Run) -> str:
    hist = (f", histogram max/min {h.fmt(x.hist_max_min, '.3f')} cv {h.fmt(x.hist_cv, '.4f')}"
            if x.histogram else "")
    return (f"round {x.round} {x.server:<9} {x.held:,}/{x.connections:,} held "
            f"({x.failed:,} failed) in {x.held_s:.1f} s, server "
            f"{h.fmt(x.rss_growth_per_conn, ',.0f')} B/conn RSS, {x.cpu_us_per_conn:,.0f} us "
            f"CPU/conn{hist}, overflows {h.fmt(x.listen_overflows, 'd')}, MemAvailable "
            f"-{x.mem_available_drop / 2**20:,.0f} MiB, others {x.others_pct:.0f} % (ksoftirqd "
            f"{x.ksoftirqd_pct:.0f} %), load "
            f"{x.load_before:.2f}->{x.load_after:.2f}")


# --- summaries -------------------------------------------------------------------------------

#: The side-by-side columns: (JSON key, Run attribute).
COLUMNS = (("held", "held"), ("failed", "failed"), ("connected_s", "connected_s"),
           ("held_s", "held_s"), ("rss_growth_per_conn", "rss_growth_per_conn"),
           ("cpu_us_per_conn", "cpu_us_per_conn"),
           ("spread_cpu_us_per_conn", "spread_cpu_us_per_conn"),
           ("client_cpu_us_per_conn", "client_cpu_us_per_conn"),
           ("client_sys_us_per_conn", "client_sys_us_per_conn"),
           ("client_rss_per_conn", "client_rss_per_conn"),
           ("kernel_bytes_per_socket", "kernel_bytes_per_socket"),
           ("meminfo_slab_per_socket", "meminfo_slab_per_socket"),
           ("mem_available_drop", "mem_available_drop"), ("hist_max_min", "hist_max_min"),
           ("hist_cv", "hist_cv"), ("listen_overflows", "listen_overflows"),
           ("threads", "threads"), ("p99_us", "p99_us"), ("others_pct", "others_pct"),
           ("ksoftirqd_pct", "ksoftirqd_pct"),
           ("supervisor_cpu_us_per_conn", "supervisor_cpu_us_per_conn"))
#: Ratios to the other server of a table, paired by round.
RATIOS = ("held_s", "rss_growth_per_conn", "cpu_us_per_conn", "spread_cpu_us_per_conn",
          "mem_available_drop", "kernel_bytes_per_socket")


def _median_of(runs: Sequence[Run], attr: str) -> float | None:
    return h.median(float(v) for x in runs if (v := getattr(x, attr)) is not None)


def summarize(runs: Sequence[Run], key: str, base: str | None) -> dict[str, Any] | None:
    mine = sorted((x for x in runs if x.server == key), key=lambda x: x.round)
    if not mine:
        return None
    row: dict[str, Any] = {"server": key, "rounds": len(mine)}
    row |= {k: _median_of(mine, a) for k, a in COLUMNS}
    row["held_min"] = min(x.held for x in mine)
    row["failed_max"] = max(x.failed for x in mine)
    row["expected_cv"] = (expected_cv(mine[0].connections, mine[0].server_processes)
                          if mine[0].server_processes > 1 else None)
    if base is not None:
        theirs = [x for x in runs if x.server == base]
        row["vs"] = base
        row["ratio"] = {a: _ratio(mine, theirs, a) for a in RATIOS}
    return row


def _ratio(mine: Sequence[Run], theirs: Sequence[Run], attr: str) -> float | None:
    """The median over rounds of mine / theirs in the same round (harness.by_round)."""
    def value(x: Run) -> float:
        return float(getattr(x, attr))

    def key(x: Run) -> int:
        return x.round

    return h.by_round([x for x in mine if getattr(x, attr) is not None],
                      [x for x in theirs if getattr(x, attr) is not None], key, value)


# --- printing --------------------------------------------------------------------------------


def _f(v: float | None, spec: str) -> str:
    return h.fmt(v, spec)


#: (label, JSON key, format) of the printed tables.
TABLE = (("held (min of rounds)", "held_min", ",d"), ("failed (max)", "failed_max", ",d"),
         ("all connected, s", "connected_s", ".1f"), ("held and echoed, s", "held_s", ".1f"),
         ("server RSS growth / conn, B", "rss_growth_per_conn", ",.0f"),
         ("server CPU / conn, us", "cpu_us_per_conn", ",.1f"),
         ("  idle to echoed, us", "spread_cpu_us_per_conn", ",.1f"),
         ("  supervisor (not above), us", "supervisor_cpu_us_per_conn", ",.1f"),
         ("server threads (all processes)", "threads", ".0f"),
         ("kernel bytes / socket (ledger)", "kernel_bytes_per_socket", ",.0f"),
         ("  meminfo Slab / socket", "meminfo_slab_per_socket", ",.0f"),
         ("MemAvailable drop, MiB", "mem_available_drop", "mib"),
         ("accept histogram max/min", "hist_max_min", ".3f"),
         ("accept histogram CV", "hist_cv", ".4f"),
         ("ListenOverflows", "listen_overflows", ",.0f"),
         ("client CPU / conn, us", "client_cpu_us_per_conn", ",.1f"),
         ("  of which system, us", "client_sys_us_per_conn", ",.1f"),
         ("client RSS / conn, B", "client_rss_per_conn", ",.0f"),
         ("echo p99, us", "p99_us", ",.0f"), ("others, % of a core", "others_pct", ".0f"),
         ("  of which ksoftirqd, %", "ksoftirqd_pct", ".0f"))


def _cell(row: dict[str, Any] | None, key: str, spec: str) -> str:
    if row is None:
        return "-"
    v = row.get(key)
    if spec == "mib":
        return _f(None if v is None else v / 2**20, ",.0f")
    if spec.endswith("d") and v is not None:
        v = int(v)
    return _f(v, spec)


def print_table(title: str, a: dict[str, Any] | None, b: dict[str, Any] | None,
                names: tuple[str, str]) -> None:
    print()
    print(title)
    print(f"  {'':<31} {names[0]:>12} {names[1]:>12} {'ratio':>7}")
    for label, key, spec in TABLE:
        ratio = (a or {}).get("ratio", {}).get(key) if b is not None else None
        print(f"  {label:<31} {_cell(a, key, spec):>12} {_cell(b, key, spec):>12} "
              f"{_f(ratio, '.2f'):>7}")


def print_report(res: dict[str, Any]) -> None:
    s = res["settings"]
    rows = {r["server"]: r for r in res["summary"]}
    print(f"C100k: {s['connections']:,} connections held and echoed ({s['messages']} x "
          f"{s['size']} B each, every byte verified) by one spread client (tcplab multiplex, "
          f"forked processes from 127.0.0.2 up), against {s['workers']} server processes; "
          f"each run in a fresh private network namespace ({h.pairs_text(SYSCTLS)}); "
          f"medians of {s['rounds']} interleaved rounds")
    print(h.go_line(res["go"], res["cpus"], "echo.go"))
    print(f"  tcplab: {res['python']} -m tcplab server --model {s['model']} --workers "
          f"{s['workers']} --listener reuseport|shared --fd-limit max --backlog {BACKLOG}")
    print(f"  load (1 min) before {res['load_before']}, after {res['load_after']}")
    if "go" in rows or "reuseport" in rows:
        print_table(f"1. tcplab ({s['model']}, {s['workers']} workers, reuseport) vs "
                    f"{s['workers']} Go echo -reuseport (ratio = tcplab / Go, median of "
                    "per-round ratios)", rows.get("reuseport"),
                    rows.get("go"), ("tcplab", "go"))
    if "shared" in rows:
        shared = dict(rows["shared"])
        print_table(f"2. {s['model']}: one SO_REUSEPORT listener per worker vs one shared "
                    "listener (ratio = shared / reuseport)", shared,
                    rows.get("reuseport"), ("shared", "reuseport"))
        exp = (rows.get("reuseport") or {}).get("expected_cv")
        if exp is not None:
            print(f"  a uniform hash over {s['workers']} listeners gives a CV of about "
                  f"{exp:.4f} (binomial: sqrt((K-1)/N))")
    if res.get("reference"):
        x = res["reference"]
        print()
        print(f"3. reference: one tcplab server process ({s['model']}, no --workers) and "
              f"one client process (--processes 1), {x['connections']:,} connections")
        print(f"  held {x['held']:,} ({x['failed']:,} failed) in {x['held_s']:.1f} s; server "
              f"RSS growth {_f(x['rss_growth_per_conn'], ',.0f')} B/conn, CPU "
              f"{x['cpu_us_per_conn']:,.1f} us/conn, {x['threads']} thread(s); client CPU "
              f"{x['client_cpu_us_per_conn']:,.1f} us/conn (system "
              f"{h.fmt(x.get('client_sys_us_per_conn'), ',.1f')}); one process's fds: its "
              f"hard limit is {res['fd_hard']:,}")
    print()
    print("  server CPU / conn: utime + stime of every server process (/proc/PID/stat) from "
          "the client's start to its exit (accept, 5 echoes, the RSTs), / held; 'idle to "
          "echoed' is the spread's own (no close). RSS growth: every server process's peak "
          "VmRSS over its idle VmRSS, / held (user memory; socket memory is the kernel's). "
          "Kernel bytes / socket: slab deltas, both ends of every connection are sockets of "
          "this kernel (the same kernel for both servers: a sanity column). MemAvailable "
          "drop: the whole machine (server, client, kernel, and anything else running).")
    if res["problems"]:
        print()
        print("problems:")
        for p in res["problems"]:
            print(f"  {p}")
    else:
        print("every run held every connection, and the servers' echoed bytes equal the "
              "client's verified bytes")


# --- main ------------------------------------------------------------------------------------

def client_processes(n: int) -> int:
    """tcplab multiplex's own choice for ``n`` (traffic/spread.py: the hard fd limit and
    40 % of the port range per source address), at least 2: with one client process
    multiplex reads only the first server process, and the spread's per-process figures
    (the histogram, ListenOverflows, the ledger) are the point here."""
    from tcplab.observe.process import own_fd_limit
    from tcplab.traffic import spread
    from tcplab.traffic.target import resolve

    c: int = spread.client_processes(n, own_fd_limit().hard, resolve("127.0.0.1", h.PORT),
                                     procfs.port_range_size())
    return max(2, c)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = h.parser("C100k side by side: tcplab server --workers K (SO_REUSEPORT, and one "
                 "shared listener) against K Go echo servers (bench/peers/echo.go "
                 "-reuseport) under the same spread client, interleaved rounds, each run in "
                 "a private network namespace; and one process at 19,000 for reference.")
    add = p.add_argument
    add("--rounds", type=int, default=3, help="interleaved rounds of each server")
    add("--connections", type=int, default=100_000, help="connections held at once")
    add("--workers", type=int, default=6, help="server processes (tcplab workers, Go servers)")
    add("--processes", type=int, default=None,
        help="client processes (default: tcplab multiplex's choice, at least 2)")
    add("--messages", type=int, default=5, help="verified round trips per connection")
    add("--size", type=int, default=64, help="bytes per message")
    add("--timeout", type=float, default=60.0, help="the client's --timeout")
    add("--model", default=h.DEFAULT_MODEL, help="the tcplab server's model")
    add("--servers", default=",".join(SERVERS),
        help=f"which servers, comma-separated, from {','.join(SERVERS)}")
    add("--reference", type=int, default=19_000,
        help="connections of the one-process reference row (0: none)")
    args = p.parse_args(argv)
    args.servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    if not args.servers or not set(args.servers) <= set(SERVERS) or len(
            set(args.servers)) != len(args.servers):
        p.error(f"--servers: give distinct names from {','.join(SERVERS)}")
    h.check(p, args, 1, "rounds", "connections", "workers", "messages", "size")
    if args.processes is not None and args.processes < 2:
        p.error("--processes must be at least 2 (the reference row is the one-process run)")
    if args.workers < 2:
        p.error("--workers must be at least 2 (the reference row is the one-process run)")
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    if args.reference < 0:
        p.error("--reference must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path) -> dict[str, Any]:
        import resource

        problems: list[str] = []
        go_binary, go_info = (h.build_go(args.go, tmp, "echo", "echo.go") if "go" in
                              args.servers else (None, {"skipped": "not asked (--servers)"}))
        servers = [x for x in args.servers if x != "go" or go_binary]
        res: dict[str, Any] = {
            "benchmark": "c100k", "settings": {k: getattr(args, k) for k in SETTINGS},
            "namespace": {"sysctls": SYSCTLS, "fresh_per_run": True},
            "cpus": os.cpu_count(), "python": sys.executable, "go": go_info,
            "fd_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "load_before": procfs.read_text("loadavg").strip(), "servers": servers}
        runs: list[Run] = []

        def record(x: Run) -> None:
            h.progress(run_line(x))
            if x.failed or x.held != x.connections:
                problems.append(f"round {x.round} {x.server}: {x.held:,} of "
                                f"{x.connections:,} held, failures {x.failures}")
            if not x.totals_ok:
                problems.append(f"round {x.round} {x.server}: " + "; ".join(x.notes))

        processes = args.processes or client_processes(args.connections)
        res["processes"] = processes
        for i in range(args.rounds):
            for key in h.rotate(servers, i):
                h.progress(f"round {i + 1}/{args.rounds}: {key}, {args.connections:,} "
                           "connections")
                x = one_run(key, i + 1, args, go_binary, tmp, args.connections, processes)
                runs.append(x)
                record(x)
        if args.reference:
            h.progress(f"reference: one server process, one client process, "
                       f"{args.reference:,} connections")
            ref = one_run("single", 1, args, None, tmp, args.reference, 1)
            record(ref)
            res["reference"] = asdict(ref)
        res["summary"] = [row for row in (
            summarize(runs, "reuseport", "go"), summarize(runs, "go", None),
            summarize(runs, "shared", "reuseport")) if row is not None]
        res["runs"] = [asdict(x) for x in runs]
        res["load_after"] = procfs.read_text("loadavg").strip()
        return {**res, "problems": problems}

    return h.run_main(body, "tcplab-c100k-", args.json, print_report)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
