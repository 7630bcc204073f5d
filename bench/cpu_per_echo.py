"""Server CPU time per echo, for every echo-server model.

Run it (about 1-2 minutes with the defaults)::

    .venv/bin/python bench/cpu_per_echo.py
    .venv/bin/python bench/cpu_per_echo.py --rounds 3 --models uvloop,epoll --json

The load: ``--connections`` (100) connections to a server on 127.0.0.1, each
doing a ``--size`` (64 B) ping-pong: send the payload, wait until all of it
has come back, send again. The client is one epoll loop in its own process
(a ``multiprocessing`` child, spawned), never the process being measured.

The measurement window. The load generator connects, puts one ping in flight
on every connection, and runs a warm-up (``--warmup``, 0.5 s: accepts done,
threads started, allocators and caches warm). Then it takes mark A, runs for
``--seconds`` (3 s, or until ``--max-echoes`` round trips, whichever comes
first), and takes mark B. A mark is taken by the load generator itself, in one
step between two epoll batches: its count of completed round trips, the
server's utime and stime (``psutil.Process(pid).cpu_times()``: /proc/PID/stat,
all of the server's threads) and a monotonic timestamp. So the echoes counted
and the CPU time measured cover the same interval, with no message between
two processes to skew it; the only mismatch is the at most one echo per
connection in flight at each mark, which is at most ``connections`` out of
hundreds of thousands, and the two ends roughly cancel. Startup, accept and
shutdown fall outside the window.

After mark B the client stops sending, collects the echoes still in flight,
and closes; the server is stopped with SIGTERM and its totals must say it
echoed exactly ``size`` times the client's round trips of the whole run. A
mismatch is reported (it would mean the client's count cannot be trusted).

Per round and model: CPU per echo = (utime + stime over the window) / echoes
in the window, and the kernel's share stime / echoes. The columns:

* ``cpu_us`` ``user_us`` ``sys_us``: medians over the rounds, each its own
  median (so user + sys need not add up to cpu exactly);
* ``x uvloop``: the median over rounds of this model's CPU per echo divided by
  the uvloop model's *in the same round* (paired: a noisy neighbour slows
  both alike); the baseline is the first model given when uvloop is not run;
* ``x stime``: the median over rounds of CPU per echo / stime per echo. stime
  is the floor any model pays: one read() and one write() per echo, and on
  loopback also the TCP delivery into the peer's socket, which the sender's
  syscall does (softirq time is charged to the running task unless the kernel
  has IRQ time accounting). 1.0 would be a server with no user-space cost.
  The ratio is only a floor ratio when read and write are all a model's
  syscalls: where a model makes the kernel do more (mmap churn, futex waits
  between threads), its stime grows too and the ratio understates its cost;
  compare ``sys_us`` across models to see it;
* ``echoes/s``: median round trips per second, all connections together;
* ``spread``: the lowest and highest CPU per echo over the rounds.

Rounds are interleaved: round 1 runs every model, then round 2 every model,
and so on, each round starting at the next model in the list so no model is
always first. Every model gets a fresh server. This machine is shared and has
2 cores: client and server each need about one, so the server may be starved
by neighbours; medians and the paired ratio are there for that.

Limits: utime and stime come in clock ticks (10 ms); over a 3 s window in
which the server uses 1-2 s of CPU that is well under 1 %. Echoes per second
depend on the client as much as on the server (one Python loop drives all
connections), and a server that is not saturated may find fewer ready sockets
per epoll_wait, so it batches less: CPU per echo is a property of a model at
this load, not of the model alone. The diagnostics below the table (server
CPU as a share of one core, the client's own CPU per echo) show which side
was the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from tcplab.experiments.children import ServerProcess
from tcplab.traffic.server import MODELS

BASELINE = "uvloop"


# --- the load generator (runs in its own process) -------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    t: float  # time.monotonic()
    echoes: int  # round trips completed so far (whole run)
    server_user: float  # seconds
    server_sys: float
    client_cpu: float  # the load generator's own utime + stime


def _load(
    pid: int,
    port: int,
    connections: int,
    size: int,
    warmup: float,
    seconds: float,
    max_echoes: int,
    out: multiprocessing.connection.Connection,
) -> None:
    """Child entry point: ping-pong, then send ("ok", dict) or ("error", text) to ``out``."""
    # Ctrl-C reaches the whole process group; the parent reaps us, so we ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report: tuple[str, Any] = (
            "ok", _pingpong(pid, port, connections, size, warmup, seconds, max_echoes)
        )
    except Exception as exc:
        report = ("error", f"{type(exc).__name__}: {exc}")
    try:
        out.send(report)
    except OSError:
        pass  # the parent is gone or gave up on us (Ctrl-C): nobody to tell
    finally:
        out.close()


def _pingpong(
    pid: int,
    port: int,
    connections: int,
    size: int,
    warmup: float,
    seconds: float,
    max_echoes: int,
) -> dict[str, Any]:
    server = psutil.Process(pid)
    payload = bytes(i & 0xFF for i in range(size))
    socks: list[socket.socket] = []
    ep = select.epoll()
    try:
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Blocking is fine: we read only what epoll says has arrived, and
            # write one payload into an empty send buffer (one ping in flight).
            sock.settimeout(None)
        got = {s.fileno(): 0 for s in socks}  # bytes of the current echo received
        for fd in got:
            ep.register(fd, select.EPOLLIN)
        echoes = 0
        in_flight = 0
        sending = True

        def run(until: float, cap: int) -> None:
            nonlocal echoes, in_flight
            poll, read, write, now = ep.poll, os.read, os.write, time.monotonic
            while echoes < cap and (sending or in_flight):
                for fd, _ in poll(0.05):
                    data = read(fd, size - got[fd])
                    if not data:
                        raise ConnectionError("the server closed a connection")
                    n = got[fd] + len(data)
                    if n < size:
                        got[fd] = n
                        continue
                    got[fd] = 0
                    echoes += 1
                    in_flight -= 1
                    if sending:
                        write(fd, payload)
                        in_flight += 1
                if now() >= until:
                    return

        def mark() -> Mark:
            s = server.cpu_times()
            c = os.times()
            return Mark(time.monotonic(), echoes, s.user, s.system, c.user + c.system)

        start = time.monotonic()
        for fd in got:
            os.write(fd, payload)
            in_flight += 1
        run(start + warmup, sys.maxsize)
        a = mark()
        run(a.t + seconds, a.echoes + max_echoes)
        b = mark()
        sending = False
        run(time.monotonic() + 5.0, sys.maxsize)  # collect the echoes still in flight
        return {"a": asdict(a), "b": asdict(b), "echoes_total": echoes, "in_flight": in_flight}
    finally:
        ep.close()
        for sock in socks:
            sock.close()


# --- one round: a fresh server, one load generator ------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    model: str
    round: int
    echoes: int  # in the window
    window_s: float
    user_us: float  # per echo
    sys_us: float
    cpu_us: float
    echoes_per_s: float
    server_core_pct: float  # server CPU over the window, % of one core
    client_us: float  # the load generator's CPU per echo
    server_echoes_match: bool


class BenchError(Exception):
    pass


def run_round(model: str, index: int, args: argparse.Namespace) -> Round:
    ctx = multiprocessing.get_context("spawn")  # the parent has threads: no fork
    with ServerProcess(["--model", model]) as server:
        if int(server.info.get("pid", server.pid)) != server.pid:
            raise BenchError(f"{model}: the server says pid {server.info['pid']}, "
                             f"we started {server.pid}")
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_load,
            args=(server.pid, server.port, args.connections, args.size, args.warmup,
                  args.seconds, args.max_echoes, writer),
            name=f"load-{model}-{index}",
            daemon=True,
        )
        clean = False
        try:
            proc.start()
            writer.close()
            limit = 20.0 + args.warmup + args.seconds + 5.0
            if not reader.poll(limit):
                raise BenchError(f"{model}: the load generator did not report in {limit:.0f} s")
            try:
                status, payload = reader.recv()
            except EOFError:
                proc.join(timeout=5)
                raise BenchError(f"{model}: the load generator died "
                                 f"(exit code {proc.exitcode})") from None
            if status != "ok":
                raise BenchError(f"{model}: load generator: {payload}")
            clean = True
        finally:
            reader.close()
            proc.join(timeout=5 if clean else 0.5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        totals = server.stop() or {}
    a, b = Mark(**payload["a"]), Mark(**payload["b"])
    echoes = b.echoes - a.echoes
    window = b.t - a.t
    if echoes <= 0:
        raise BenchError(f"{model}: no echo completed in the {window:.2f} s window")
    user = b.server_user - a.server_user
    system = b.server_sys - a.server_sys
    server_echoes = int(totals.get("bytes_echoed", -1)) / args.size
    match = server_echoes == payload["echoes_total"] and payload["in_flight"] == 0
    if not match:
        print(f"  warning: {model}: the client counted {payload['echoes_total']} round trips "
              f"({payload['in_flight']} unanswered), the server echoed {server_echoes:g}",
              file=sys.stderr)
    return Round(
        model=model,
        round=index,
        echoes=echoes,
        window_s=window,
        user_us=user / echoes * 1e6,
        sys_us=system / echoes * 1e6,
        cpu_us=(user + system) / echoes * 1e6,
        echoes_per_s=echoes / window,
        server_core_pct=(user + system) / window * 100,
        client_us=(b.client_cpu - a.client_cpu) / echoes * 1e6,
        server_echoes_match=match,
    )


# --- summary ----------------------------------------------------------------------------


def summarize(rounds: list[Round], models: list[str], baseline: str) -> list[dict[str, Any]]:
    by = {m: {r.round: r for r in rounds if r.model == m} for m in models}
    rows = []
    for m in models:
        rs = list(by[m].values())
        paired = [
            r.cpu_us / by[baseline][r.round].cpu_us
            for r in rs
            if r.round in by[baseline] and by[baseline][r.round].cpu_us > 0
        ]
        floor = [r.cpu_us / r.sys_us for r in rs if r.sys_us > 0]
        cpu = [r.cpu_us for r in rs]
        rows.append({
            "model": m,
            "cpu_us_per_echo": statistics.median(cpu),
            "user_us_per_echo": statistics.median(r.user_us for r in rs),
            "sys_us_per_echo": statistics.median(r.sys_us for r in rs),
            f"ratio_vs_{baseline}": statistics.median(paired) if paired else None,
            "ratio_vs_stime": statistics.median(floor) if floor else None,
            "echoes_per_s": statistics.median(r.echoes_per_s for r in rs),
            "spread_cpu_us": [min(cpu), max(cpu)],
            "server_core_pct": statistics.median(r.server_core_pct for r in rs),
            "client_us_per_echo": statistics.median(r.client_us for r in rs),
            "server_totals_match": all(r.server_echoes_match for r in rs),
            "rounds": [asdict(r) for r in sorted(rs, key=lambda r: r.round)],
        })
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict[str, Any]], baseline: str, args: argparse.Namespace) -> None:
    print(f"server CPU per echo: {args.connections} connections, {args.size} B ping-pong, "
          f"{args.seconds:g} s window after {args.warmup:g} s warm-up, median of "
          f"{args.rounds} interleaved rounds")
    head = ("model", "cpu_us", "user_us", "sys_us", f"x {baseline}", "x stime",
            "echoes/s", "spread cpu_us")
    print(f"{head[0]:<8} {head[1]:>7} {head[2]:>7} {head[3]:>7} {head[4]:>9} {head[5]:>7} "
          f"{head[6]:>9}  {head[7]}")
    for r in rows:
        lo, hi = r["spread_cpu_us"]
        print(f"{r['model']:<8} {r['cpu_us_per_echo']:>7.2f} {r['user_us_per_echo']:>7.2f} "
              f"{r['sys_us_per_echo']:>7.2f} {_fmt(r[f'ratio_vs_{baseline}'], '.2f'):>9} "
              f"{_fmt(r['ratio_vs_stime'], '.2f'):>7} {r['echoes_per_s']:>9,.0f}  "
              f"{lo:.2f}..{hi:.2f}")
    print()
    print("diagnostics (medians): server CPU in % of one core; the load generator's own "
          "CPU per echo; server totals = client count")
    for r in rows:
        print(f"  {r['model']:<8} server {r['server_core_pct']:5.1f} %   "
              f"client {r['client_us_per_echo']:5.2f} us/echo   "
              f"totals {'match' if r['server_totals_match'] else 'DIFFER'}")


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Server CPU time per echo for each echo-server model "
        "(ping-pong over many loopback connections).",
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds per model (default 5)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="measurement window per round (default 3)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="load before the window opens (default 0.5)")
    p.add_argument("--connections", type=int, default=100,
                   help="concurrent connections (default 100)")
    p.add_argument("--size", type=int, default=64, help="bytes per ping (default 64)")
    p.add_argument("--max-echoes", type=int, default=5_000_000,
                   help="close the window early after this many echoes (default 5,000,000)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, from {','.join(MODELS)} (default all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(MODELS)}")
    if len(set(args.models)) != len(args.models):
        p.error("--models lists a model twice")
    for name in ("rounds", "connections", "size", "max_echoes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models: list[str] = args.models
    baseline = BASELINE if BASELINE in models else models[0]
    rounds: list[Round] = []
    try:
        for i in range(args.rounds):
            order = models[i % len(models):] + models[: i % len(models)]
            for model in order:
                r = run_round(model, i + 1, args)
                rounds.append(r)
                print(f"  round {i + 1}/{args.rounds} {model:<8} {r.cpu_us:6.2f} us/echo "
                      f"(user {r.user_us:5.2f}, sys {r.sys_us:5.2f}), "
                      f"{r.echoes_per_s:8,.0f} echoes/s, server {r.server_core_pct:4.0f} %",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: every child has been reaped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = summarize(rounds, models, baseline)
    if args.json:
        settings = {k: getattr(args, k) for k in
                    ("rounds", "seconds", "warmup", "connections", "size", "max_echoes",
                     "models")}
        print(json.dumps({
            "benchmark": "cpu_per_echo",
            "settings": settings,
            "baseline": baseline,
            "cpus": os.cpu_count(),
            "results": rows,
        }, indent=2))
    else:
        print_table(rows, baseline, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
