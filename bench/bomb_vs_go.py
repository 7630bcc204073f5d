"""``tcplab bomb`` against a Go goroutine churn client (bench/peers/churn.go), side by side:
connections per second and CPU per connection, every run in its own private network
namespace with its own ``tcplab server``. Root or unprivileged user namespaces; about 15 s.
What is measured and how: bench/README.md, "bomb_vs_go.py".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tcplab.observe.procfs import cpu_times

PAYLOAD_SIZE = 16  # b"tcplab port bomb", and churn.go's payload
SYSCTLS = {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "1"}
#: connect() tries ports of one parity first: about half the range without reuse.
EVEN_PORTS = (65535 - 1024 + 1) // 2
GOAL = 1.0


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


def _first_error(result: dict[str, Any]) -> str | None:
    first = result.get("first_error")
    if isinstance(first, dict):
        return f"{first.get('name')}: {first.get('message')}"
    return first if isinstance(first, str) else None


def run_one(client: Client, index: int, args: argparse.Namespace, churn: str | None) -> Run:
    timeout = args.duration + 60.0

    def client_run(sb: Sandbox, count: int) -> tuple[dict[str, Any], h.Measured]:
        cmd = (sb.tcplab("bomb", "--port", str(h.PORT), "--mode", "fresh", "--count",
                         str(count), "--workers", str(client.workers), "--duration",
                         f"{args.duration:g}", "--json") if client.kind == "tcplab" else
               [str(churn), "-addr", f"127.0.0.1:{h.PORT}", "-count", str(count), "-workers",
                str(client.workers), "-duration", f"{args.duration:g}s"])
        m = h.measured(cmd, timeout, sb.popen)
        return h.last_json(m, " ".join(cmd[:4]) + " ..."), m

    with Sandbox(SYSCTLS) as sb, ServerProcess(["--port", str(h.PORT)], popen=sb.popen) as server:
        if int(server.port) != h.PORT:
            raise h.BenchError(f"the server listens on port {server.port}, not {h.PORT}")
        start, st = client_run(sb, 1)
        if start.get("ok") != 1:
            raise h.BenchError(f"{client.label}: the start-up run (1 connection) failed: "
                               f"{_first_error(start)}")
        su0, ss0 = cpu_times(server.pid)
        res, m = client_run(sb, args.count)
        time.sleep(0.1)  # the server's last closes
        su1, ss1 = cpu_times(server.pid)
        totals = server.stop() or {}
    ok, failed, elapsed = int(res["ok"]), int(res["failed"]), float(res["elapsed_s"])
    if ok <= 0 or elapsed <= 0:
        raise h.BenchError(f"{client.label}: no connection succeeded ({_first_error(res)})")
    server_user, server_sys = su1 - su0, ss1 - ss0
    accepted = int(totals.get("accepted", -1))
    echoed = int(totals.get("bytes_echoed", -1))
    # Every ok connection was accepted and echoed; a failed one may or may not have been.
    match = (failed == 0 and accepted == ok + 1 and echoed == PAYLOAD_SIZE * (ok + 1)) or (
        failed > 0 and ok + 1 <= accepted <= ok + failed + 1)
    us = 1e6 / ok
    return Run(
        client=client.key, round=index, ok=ok, failed=failed, attempted=int(res["attempted"]),
        elapsed_s=elapsed, conns_per_s=ok / elapsed, wall_s=m.wall_s,
        user_s=m.user_s, sys_s=m.sys_s, startup_user_s=st.user_s, startup_sys_s=st.sys_s,
        client_us=(m.user_s + m.sys_s - st.user_s - st.sys_s) * us,
        client_user_us=(m.user_s - st.user_s) * us, client_sys_us=(m.sys_s - st.sys_s) * us,
        client_gross_us=(m.user_s + m.sys_s) * us,
        server_us=(server_user + server_sys) * us, server_user_us=server_user * us,
        server_sys_us=server_sys * us,
        server_core_pct=(server_user + server_sys) / elapsed * 100, csw_per_conn=m.csw / ok,
        server_accepted=accepted, server_totals_match=match, first_error=_first_error(res),
    )


def summarize(runs: list[Run], clients: list[Client]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by = {c.key: sorted((r for r in runs if r.client == c.key), key=lambda r: r.round)
          for c in clients}

    def x_go(rs: list[Run], go: list[Run]) -> float | None:
        return h.by_round(rs, go, lambda r: r.round, lambda r: r.conns_per_s)

    rows = []
    for c in clients:
        rs = by[c.key]
        rate = [r.conns_per_s for r in rs]
        rows.append({
            "client": c.key, "label": c.label, "workers": c.workers,
            **h.medians(rs, conns_per_s="conns_per_s"),
            "ratio_vs_go": x_go(rs, by["go"]) if by.get("go") else None,
            **h.medians(rs, client_us_per_conn="client_us",
                        client_user_us_per_conn="client_user_us",
                        client_sys_us_per_conn="client_sys_us",
                        client_gross_us_per_conn="client_gross_us"),
            "startup_cpu_ms": h.median((r.startup_user_s + r.startup_sys_s) * 1e3 for r in rs),
            **h.medians(rs, server_us_per_conn="server_us", server_user_us_per_conn=
                        "server_user_us", server_sys_us_per_conn="server_sys_us"),
            "total_us_per_conn": h.median(r.client_us + r.server_us for r in rs),
            **h.medians(rs, server_core_pct="server_core_pct", csw_per_conn="csw_per_conn"),
            "spread_conns_per_s": [min(rate), max(rate)],
            "failed": sum(r.failed for r in rs),
            "server_totals_match": all(r.server_totals_match for r in rs),
            "rounds": [asdict(r) for r in rs],
        })
    goals = []
    for c in clients:
        if c.kind == "go" and by[c.key]:
            ratio = x_go(by.get("tcplab", []), by[c.key])
            goals.append(h.goal(f"tcplab/Go conns/s >= {GOAL:.1f} (Go at {c.workers} "
                                f"goroutines, tcplab at {clients[0].workers} connections)",
                                ratio, ratio is not None and ratio >= GOAL, go_client=c.key))
    return rows, goals


def print_table(res: dict[str, Any]) -> None:
    s, go = res["settings"], res["go"]
    print(f"connection churn, tcplab bomb vs Go: {s['count']:,} connections per run "
          f"(connect, 16 B echo, close), median of {s['rounds']} interleaved rounds")
    print(f"  each run: a fresh private network namespace ({h.pairs_text(SYSCTLS)}), a fresh "
          f"`tcplab server --port {h.PORT}` (uvloop), a start-up run of "
          "1 connection, then the measured run")
    print(f"  ports: {s['count'] + 1:,} connections per namespace, {EVEN_PORTS:,} even ports "
          "tried first by connect(): "
          + ("no TIME_WAIT port needs reuse" if s["count"] + 1 <= EVEN_PORTS else
             "beyond them, tcp_tw_reuse = 1 reuses TIME_WAIT ports older than 1 s"))
    print(h.go_line(go, res["cpus"], "churn"))
    print(f"  tcplab: {res['python']} -m tcplab bomb")
    print()
    print(f"{'client':<12} {'workers':>7} {'conns/s':>8} {'x go':>5} {'client us':>9} "
          f"{'user':>5} {'sys':>5} {'server us':>9} {'total us':>8} {'start ms':>8}  "
          "spread conns/s")
    for r in res["results"]:
        lo, hi = r["spread_conns_per_s"]
        print(f"{r['label']:<12} {r['workers']:>7} {r['conns_per_s']:>8,.0f} "
              f"{h.fmt(r['ratio_vs_go'], '.2f'):>5} {r['client_us_per_conn']:>9.1f} "
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
    h.print_goals(res["goals"], 68, 5, "(no Go client ran: nothing to compare with)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = h.parser("Connections per second and CPU per connection of 'tcplab bomb' and of a Go "
                 "goroutine churn client (bench/peers/churn.go), side by side, each run in its "
                 "own private network namespace.")
    add = p.add_argument
    add("--rounds", type=int, default=5, help="rounds per client")
    add("--count", type=int, default=20_000, help="connections per run, for every client")
    add("--workers", type=int, default=32, help="connections in flight, tcplab and Go")
    add("--go-workers", type=int, default=256, help="goroutines of a second Go row (0: none)")
    add("--duration", type=float, default=60.0, help="a safety bound: stop a run after it")
    args = p.parse_args(argv)
    h.check(p, args, 1, "rounds", "count", "workers")
    h.check(p, args, 0, "go_workers")
    if args.duration <= 0:
        p.error("--duration must be positive")
    if args.count + 1 > 2 * EVEN_PORTS:
        print(f"note: {args.count:,} connections per run exceed the namespace's "
              f"{2 * EVEN_PORTS:,} ports: tcp_tw_reuse = 1 has to reuse TIME_WAIT ports "
              "older than 1 s, and connect() may fail while none is", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path) -> dict[str, Any]:
        clients = [Client("tcplab", "tcplab bomb", "tcplab", args.workers)]
        churn, go_info = h.build_go(args.go, tmp, "churn", ".")
        if churn is not None:
            clients.append(Client("go", "go churn", "go", args.workers))
            if args.go_workers and args.go_workers != args.workers:
                clients.append(Client("go256" if args.go_workers == 256
                                      else f"go{args.go_workers}", "go churn", "go",
                                      args.go_workers))
        runs: list[Run] = []
        for i in range(args.rounds):
            for c in h.rotate(clients, i):
                r = run_one(c, i + 1, args, churn)
                runs.append(r)
                h.progress(f"round {i + 1}/{args.rounds} {c.label} x{c.workers:<4} "
                           f"{r.conns_per_s:8,.0f} conns/s  client {r.client_us:5.1f} us/conn "
                           f"(user {r.client_user_us:4.1f}, sys {r.client_sys_us:4.1f})  "
                           f"server {r.server_us:5.1f} us/conn  failed {r.failed}")
        rows, goals = summarize(runs, clients)
        return {
            "benchmark": "bomb_vs_go",
            "settings": {"rounds": args.rounds, "count": args.count, "workers": args.workers,
                         "go_workers": args.go_workers, "duration": args.duration,
                         "port": h.PORT, "payload_bytes": PAYLOAD_SIZE},
            "namespace": {"sysctls": SYSCTLS, "fresh_per_run": True},
            "cpus": os.cpu_count(), "python": sys.executable, "go": go_info,
            "results": rows, "goals": goals,
            "problems": [f"{r['label']} x{r['workers']}: {r['failed']} failed, server totals "
                         f"{'match' if r['server_totals_match'] else 'DIFFER'}"
                         for r in rows if r["failed"] or not r["server_totals_match"]],
        }

    return h.run_main(body, "tcplab-bomb-vs-go-", args.json, print_table)


if __name__ == "__main__":
    sys.exit(main())
