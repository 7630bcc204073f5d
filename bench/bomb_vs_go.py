"""``tcplab bomb`` against a Go goroutine churn client, side by side: connections per second.

Run it as root (or as a user allowed to make user namespaces); about 15 s with
the defaults::

    .venv/bin/python bench/bomb_vs_go.py
    .venv/bin/python bench/bomb_vs_go.py --rounds 7 --count 20000 --workers 32
    .venv/bin/python bench/bomb_vs_go.py --json

The clients, each a whole process started inside the namespace:

* ``tcplab bomb --mode fresh --count N --workers W --json`` (``python -m
  tcplab`` with this interpreter): one epoll loop, W connections in flight,
  each connect -> send 16 B -> read the 16 B echo -> close;
* ``bench/peers/churn.go``, built here with ``go build`` into a temporary
  directory (removed afterwards): W goroutines, each looping ``net.Dial`` ->
  ``Write`` 16 B -> ``io.ReadFull`` 16 B -> ``Close``; the same count, the
  same concurrency, the same 16 bytes. A second Go row runs it at a Go
  client's natural concurrency (``--go-workers``, 256 goroutines).

If ``go`` is not on PATH (or ``--go``), the Go rows are skipped with a note
on how to get it (``apt-get install golang-go``) and the exit status is 0.
Nothing is installed or downloaded: the build runs with GOPROXY=off and
GOTOOLCHAIN=local, and churn.go has no dependencies.

Every run (one client, one round) gets its own private network namespace
(:class:`tcplab.experiments.sandbox.Sandbox`), so the TIME_WAIT sockets of one
run (one per connection, on the client's side: the client closes first) do
not slow the next one's port search, and its own ``tcplab server --port
8080`` (the default model, uvloop). In the namespace, and only there:
``net.ipv4.ip_local_port_range`` = 1024 65535 and ``net.ipv4.tcp_tw_reuse`` =
1. 20,001 connections per run fit in the 32,256 even ports that connect()
tries first, so no port has to be reused and both clients run without a
single EADDRNOTAVAIL; tcp_tw_reuse = 1 (reuse a TIME_WAIT port after 1 s,
any destination; 2, the kernel default, does the same for loopback only)
only matters for a larger ``--count``. Traffic never leaves the namespace's
loopback. On any exit, Ctrl-C included, every child is killed and reaped and
the namespace closed.

In each run: the client once with a count of 1 (the start-up run: interpreter
start-up and imports, or the Go runtime's; it also warms the server), then
the measured run of ``--count`` connections. Measured:

* connections per second: ok / elapsed, both as the client reports them
  (elapsed from the first connection started to the last one closed, inside
  the client: process start-up is not in it);
* the client's CPU time (user and sys), from ``wait4()`` on its pid (the
  same numbers ``RUSAGE_CHILDREN`` deltas give, for that one process), per
  connection, net of the start-up run's CPU time: (run - start-up) / ok. The
  whole-process figure is in the JSON too;
* the server's CPU time per connection: ``psutil.Process(pid).cpu_times()``
  (all its threads) just before the client starts and 0.1 s after it exits;
  it competes with the client for the same 2 cores, so a client that costs
  the server more also slows itself. The server's totals must say it
  accepted and echoed exactly what the clients counted;
* context switches per connection (voluntary + involuntary, from wait4).

CPU time: the total (user + sys) of a process is exact (the scheduler's
runtime), the split between user and sys is not: this kernel samples it at
each tick (CONFIG_HZ 250, tick-based accounting), so a split is good to a few
ticks, 4 ms each, out of some 100 ticks per run. Nor is sys time only the
process's own: on loopback the softirq that delivers a segment runs in the
sender's context, so a client's sys time includes part of the server's TCP
work (the SYN-ACK, the echo's delivery) and the other way round. The total
(client + server per connection) is the figure that decides, on 2 cores,
how fast the pair can go.

Rounds are interleaved: round 1 runs every client, then round 2, each round
starting at the next client in the list. Reported: medians over rounds, and
for the goal the median over rounds of the per-round ratio tcplab / Go
(conns/s), paired within a round so that a noisy neighbour on this shared
machine slows both alike. Goal: tcplab/Go >= 1.0, against Go at the same
concurrency and against Go at 256 goroutines. A missed goal is reported, not
failed: the exit status is 0 unless a run could not be made or lost
connections (1), or on Ctrl-C (130).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

import gopeer  # bench/gopeer.py, next to this file
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
PORT = 8080
ADDR = f"127.0.0.1:{PORT}"
PAYLOAD_SIZE = 16  # b"tcplab port bomb", and churn.go's payload
SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.ipv4.tcp_tw_reuse": "1",
}
#: connect() tries ports of one parity first: about half the range without reuse.
EVEN_PORTS = (65535 - 1024 + 1) // 2
GOAL = 1.0


class BenchError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Client:
    key: str  # "tcplab", "go", "go256"
    label: str
    kind: str  # "tcplab" or "go"
    workers: int


@dataclass(frozen=True, slots=True)
class Run:
    client: str
    round: int
    ok: int
    failed: int
    attempted: int
    elapsed_s: float  # the client's own, from its JSON
    conns_per_s: float  # ok / elapsed_s
    wall_s: float  # spawn to exit, start-up included
    user_s: float  # whole process, from wait4
    sys_s: float
    startup_user_s: float  # the start-up run (count 1), whole process
    startup_sys_s: float
    client_us: float  # (run - start-up) CPU per ok connection
    client_user_us: float
    client_sys_us: float
    client_gross_us: float  # whole-process CPU per ok connection
    server_us: float  # server CPU per ok connection
    server_user_us: float
    server_sys_us: float
    server_core_pct: float  # server CPU over the client's elapsed, % of one core
    csw_per_conn: float  # the client's context switches per connection
    server_accepted: int
    server_totals_match: bool
    first_error: str | None


# --- building the Go client ---------------------------------------------------------------


# --- one run: a fresh namespace, a fresh server, one client -------------------------------


def _command(client: Client, count: int, duration: float, churn: str | None,
             sb: Sandbox) -> list[str]:
    if client.kind == "tcplab":
        return sb.tcplab("bomb", "--port", str(PORT), "--mode", "fresh", "--count", str(count),
                         "--workers", str(client.workers), "--duration", f"{duration:g}",
                         "--json")
    assert churn is not None
    return [churn, "-addr", ADDR, "-count", str(count), "-workers", str(client.workers),
            "-duration", f"{duration:g}s"]


def _wait(proc: subprocess.Popen[Any], timeout: float, name: str) -> tuple[int, Any]:
    """Reap ``proc`` with wait4(): (exit code, its rusage). Kills it after ``timeout``."""
    fd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise BenchError(f"{name} did not finish in {timeout:.0f} s: killed")
    finally:
        os.close(fd)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def _client_once(sb: Sandbox, cmd: list[str], timeout: float, out_dir: Path
                 ) -> tuple[dict[str, Any], Any, float]:
    """Run one client process to the end: (its JSON, its rusage, wall seconds)."""
    with open(out_dir / "stdout", "w+b") as out, open(out_dir / "stderr", "w+b") as err:
        t0 = time.perf_counter()
        proc = sb.popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        code, usage = _wait(proc, timeout, " ".join(cmd[:4]))
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        text, errtext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if code != 0:
        raise BenchError(f"{' '.join(cmd[:4])} ...: exit {code}: {errtext.strip()[-500:]}")
    try:
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"{' '.join(cmd[:4])} ...: no JSON line in {text[-300:]!r}") from None
    return result, usage, wall


def _first_error(result: dict[str, Any]) -> str | None:
    first = result.get("first_error")
    if isinstance(first, dict):
        return f"{first.get('name')}: {first.get('message')}"
    return first if isinstance(first, str) else None


def run_one(client: Client, index: int, args: argparse.Namespace, churn: str | None,
            tmp: Path) -> Run:
    timeout = args.duration + 60.0
    with Sandbox(SYSCTLS) as sb, ServerProcess(["--port", str(PORT)], popen=sb.popen) as server:
        if int(server.port) != PORT:
            raise BenchError(f"the server listens on port {server.port}, not {PORT}")
        srv = psutil.Process(server.pid)
        start, start_usage, _ = _client_once(
            sb, _command(client, 1, args.duration, churn, sb), timeout, tmp)
        if start.get("ok") != 1:
            raise BenchError(f"{client.label}: the start-up run (1 connection) failed: "
                             f"{_first_error(start)}")
        s0 = srv.cpu_times()
        res, usage, wall = _client_once(
            sb, _command(client, args.count, args.duration, churn, sb), timeout, tmp)
        time.sleep(0.1)  # the server's last closes
        s1 = srv.cpu_times()
        totals = server.stop() or {}
    ok, failed = int(res["ok"]), int(res["failed"])
    elapsed = float(res["elapsed_s"])
    if ok <= 0 or elapsed <= 0:
        raise BenchError(f"{client.label}: no connection succeeded ({_first_error(res)})")
    user, system = usage.ru_utime, usage.ru_stime
    su, ss = start_usage.ru_utime, start_usage.ru_stime
    server_user, server_sys = s1.user - s0.user, s1.system - s0.system
    accepted = int(totals.get("accepted", -1))
    echoed = int(totals.get("bytes_echoed", -1))
    # Every ok connection was accepted and echoed; a failed one may or may not have been.
    match = (failed == 0 and accepted == ok + 1 and echoed == PAYLOAD_SIZE * (ok + 1)) or (
        failed > 0 and ok + 1 <= accepted <= ok + failed + 1)
    us = 1e6 / ok
    return Run(
        client=client.key, round=index, ok=ok, failed=failed, attempted=int(res["attempted"]),
        elapsed_s=elapsed, conns_per_s=ok / elapsed, wall_s=wall,
        user_s=user, sys_s=system, startup_user_s=su, startup_sys_s=ss,
        client_us=(user + system - su - ss) * us,
        client_user_us=(user - su) * us, client_sys_us=(system - ss) * us,
        client_gross_us=(user + system) * us,
        server_us=(server_user + server_sys) * us, server_user_us=server_user * us,
        server_sys_us=server_sys * us,
        server_core_pct=(server_user + server_sys) / elapsed * 100,
        csw_per_conn=(usage.ru_nvcsw + usage.ru_nivcsw) / ok,
        server_accepted=accepted, server_totals_match=match, first_error=_first_error(res),
    )


# --- summary --------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _paired(a: list[Run], b: list[Run]) -> float | None:
    by = {r.round: r for r in b}
    ratios = [r.conns_per_s / by[r.round].conns_per_s for r in a
              if r.round in by and by[r.round].conns_per_s > 0]
    return statistics.median(ratios) if ratios else None


def summarize(runs: list[Run], clients: list[Client]) -> tuple[list[dict[str, Any]],
                                                                list[dict[str, Any]]]:
    by = {c.key: [r for r in runs if r.client == c.key] for c in clients}
    base = "go" if by.get("go") else None
    rows = []
    for c in clients:
        rs = sorted(by[c.key], key=lambda r: r.round)
        rate = [r.conns_per_s for r in rs]
        rows.append({
            "client": c.key,
            "label": c.label,
            "workers": c.workers,
            "conns_per_s": _median(rate),
            "ratio_vs_go": _paired(rs, by[base]) if base else None,
            "client_us_per_conn": _median([r.client_us for r in rs]),
            "client_user_us_per_conn": _median([r.client_user_us for r in rs]),
            "client_sys_us_per_conn": _median([r.client_sys_us for r in rs]),
            "client_gross_us_per_conn": _median([r.client_gross_us for r in rs]),
            "startup_cpu_ms": _median([(r.startup_user_s + r.startup_sys_s) * 1e3 for r in rs]),
            "server_us_per_conn": _median([r.server_us for r in rs]),
            "server_user_us_per_conn": _median([r.server_user_us for r in rs]),
            "server_sys_us_per_conn": _median([r.server_sys_us for r in rs]),
            "total_us_per_conn": _median([r.client_us + r.server_us for r in rs]),
            "server_core_pct": _median([r.server_core_pct for r in rs]),
            "csw_per_conn": _median([r.csw_per_conn for r in rs]),
            "spread_conns_per_s": [min(rate), max(rate)],
            "failed": sum(r.failed for r in rs),
            "server_totals_match": all(r.server_totals_match for r in rs),
            "rounds": [asdict(r) for r in rs],
        })
    goals = []
    tl = by.get("tcplab", [])
    for c in clients:
        if c.kind == "go" and by[c.key]:
            ratio = _paired(tl, by[c.key])
            goals.append({
                "goal": f"tcplab/Go conns/s >= {GOAL:.1f} (Go at {c.workers} goroutines, "
                        f"tcplab at {clients[0].workers} connections)",
                "go_client": c.key, "value": ratio,
                "pass": ratio is not None and ratio >= GOAL,
            })
    return rows, goals


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"connection churn, tcplab bomb vs Go: {s['count']:,} connections per run "
          f"(connect, 16 B echo, close), median of {s['rounds']} interleaved rounds")
    print("  each run: a fresh private network namespace ("
          + ", ".join(f"{k} = {v}" for k, v in res["namespace"]["sysctls"].items())
          + f"), a fresh `tcplab server --port {PORT}` (uvloop), a start-up run of "
          "1 connection, then the measured run")
    print(f"  ports: {s['count'] + 1:,} connections per namespace, {EVEN_PORTS:,} even ports "
          "tried first by connect(): "
          + ("no TIME_WAIT port needs reuse" if s["count"] + 1 <= EVEN_PORTS else
             "beyond them, tcp_tw_reuse = 1 reuses TIME_WAIT ports older than 1 s"))
    go = res["go"]
    if go.get("skipped"):
        print(f"  Go: skipped: {go['skipped']}")
    else:
        print(f"  Go: {go['version']}, GOMAXPROCS {go['gomaxprocs']} ({res['cpus']} cpus); "
              f"churn built in {go['build_s']:.1f} s into a temporary directory")
    print(f"  tcplab: {res['python']} -m tcplab bomb")
    print()
    head = ("client", "workers", "conns/s", "x go", "client us", "user", "sys",
            "server us", "total us", "start ms", "spread conns/s")
    print(f"{head[0]:<12} {head[1]:>7} {head[2]:>8} {head[3]:>5} {head[4]:>9} {head[5]:>5} "
          f"{head[6]:>5} {head[7]:>9} {head[8]:>8} {head[9]:>8}  {head[10]}")
    for r in res["results"]:
        lo, hi = r["spread_conns_per_s"]
        print(f"{r['label']:<12} {r['workers']:>7} {r['conns_per_s']:>8,.0f} "
              f"{_fmt(r['ratio_vs_go'], '.2f'):>5} {r['client_us_per_conn']:>9.1f} "
              f"{r['client_user_us_per_conn']:>5.1f} {r['client_sys_us_per_conn']:>5.1f} "
              f"{r['server_us_per_conn']:>9.1f} {r['total_us_per_conn']:>8.1f} "
              f"{r['startup_cpu_ms']:>8.1f}  {lo:,.0f}..{hi:,.0f}")
    print()
    x_go = ("" if go.get("skipped") else "; x go = median of per-round ratios to Go at "
            f"{s['workers']} goroutines")
    print(f"columns: conns/s = ok / elapsed as the client measures it{x_go}; client us = the "
          "client's CPU (user + sys) per connection, net of its start-up run (start ms: that "
          "run's CPU); server us = the server's CPU per connection; total = client + server, "
          f"on {res['cpus']} cores; user/sys split sampled at ticks (approximate)")
    print("diagnostics (medians): server CPU in % of one core; the client's context switches "
          "per connection; whole-process client CPU per connection; failures; server totals")
    for r in res["results"]:
        print(f"  {r['label']:<12} {r['workers']:>4}  server {r['server_core_pct']:5.1f} %   "
              f"csw {r['csw_per_conn']:5.2f}/conn   "
              f"client gross {r['client_gross_us_per_conn']:5.1f} us/conn   "
              f"failed {r['failed']}   "
              f"totals {'match' if r['server_totals_match'] else 'DIFFER'}")
    print()
    print("goals:")
    if not res["goals"]:
        print("  (no Go client ran: nothing to compare with)")
    for g in res["goals"]:
        print(f"  {g['goal']:<68} {_fmt(g['value'], '.2f'):>5}  "
              f"{'pass' if g['pass'] else 'FAIL'}")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Connections per second and CPU per connection of 'tcplab bomb' and of a "
        "Go goroutine churn client (bench/peers/churn.go), side by side, each run in its own "
        "private network namespace.",
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds per client (default 5)")
    p.add_argument("--count", type=int, default=20_000,
                   help="connections per run, the same for every client (default 20,000)")
    p.add_argument("--workers", type=int, default=32,
                   help="connections in flight, tcplab and the first Go row (default 32)")
    p.add_argument("--go-workers", type=int, default=256,
                   help="goroutines of the second Go row; 0 leaves it out (default 256)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="stop a run after this many seconds, a safety bound (default 60)")
    p.add_argument("--go", metavar="PATH", help="the go tool (default: go on PATH)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for name in ("rounds", "count", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.go_workers < 0:
        p.error("--go-workers must not be negative")
    if args.duration <= 0:
        p.error("--duration must be positive")
    if args.count + 1 > 2 * EVEN_PORTS:
        print(f"note: {args.count:,} connections per run exceed the namespace's "
              f"{2 * EVEN_PORTS:,} ports: tcp_tw_reuse = 1 has to reuse TIME_WAIT ports "
              "older than 1 s, and connect() may fail while none is", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tcplab-bomb-vs-go-"))
    try:
        clients = [Client("tcplab", "tcplab bomb", "tcplab", args.workers)]
        try:
            churn, go_info = gopeer.prepare(args.go, tmp, "churn", ".")
        except gopeer.GoBuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if churn is not None:
            clients.append(Client("go", "go churn", "go", args.workers))
            if args.go_workers and args.go_workers != args.workers:
                clients.append(Client("go256" if args.go_workers == 256
                                      else f"go{args.go_workers}", "go churn", "go",
                                      args.go_workers))
            print(f"  built churn with {go_info['version']} in {go_info['build_s']:.1f} s",
                  file=sys.stderr, flush=True)
        runs: list[Run] = []
        for i in range(args.rounds):
            order = clients[i % len(clients):] + clients[: i % len(clients)]
            for c in order:
                r = run_one(c, i + 1, args, churn, tmp)
                runs.append(r)
                print(f"  round {i + 1}/{args.rounds} {c.label} x{c.workers:<4} "
                      f"{r.conns_per_s:8,.0f} conns/s  client {r.client_us:5.1f} us/conn "
                      f"(user {r.client_user_us:4.1f}, sys {r.client_sys_us:4.1f})  server "
                      f"{r.server_us:5.1f} us/conn  failed {r.failed}",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: every child has been reaped, the namespaces are gone",
              file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, goals = summarize(runs, clients)
    res = {
        "benchmark": "bomb_vs_go",
        "settings": {"rounds": args.rounds, "count": args.count, "workers": args.workers,
                     "go_workers": args.go_workers, "duration": args.duration,
                     "port": PORT, "payload_bytes": PAYLOAD_SIZE},
        "namespace": {"sysctls": SYSCTLS, "fresh_per_run": True},
        "cpus": os.cpu_count(),
        "python": sys.executable,
        "go": {k: v for k, v in go_info.items() if k != "binary"},
        "results": rows,
        "goals": goals,
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    lost = any(r["failed"] or not r["server_totals_match"] for r in rows)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
