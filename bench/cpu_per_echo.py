"""Server CPU time per echo for every tcplab model and the Go reference echo server
(bench/peers/echo.go), every server in a fresh private network namespace with a ping-pong
load generator in its own process. Root or unprivileged user namespaces; about 2 minutes::

    .venv/bin/python bench/cpu_per_echo.py
    .venv/bin/python bench/cpu_per_echo.py --rounds 3 --seconds 2 --models uvloop,epoll --json

It is also part 1 of bench/echo_vs_go.py. What is measured and how: bench/README.md,
"cpu_per_echo.py".
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file
from tcplab.traffic.models import MODELS

BACKLOG = 8192
SYSCTLS = {"net.core.somaxconn": str(BACKLOG), "net.ipv4.ip_local_port_range": "1024 65535"}
SERVER_ARGS = ("--fd-limit", "max", "--backlog", str(BACKLOG))
GOAL_VS_GO = 1.0
GOAL_VS_STIME = 1.15


def add_args(p: argparse.ArgumentParser, part: str = "") -> None:
    p.add_argument("--rounds", type=int, default=5,
                   help=f"{part}interleaved rounds per server (default 5)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help=f"{part}measurement window per run (default 3)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help=f"{part}load before the window opens (default 0.5)")
    p.add_argument("--connections", type=int, default=100,
                   help=f"{part}concurrent connections (default 100)")
    p.add_argument("--size", type=int, default=64, help=f"{part}bytes per ping (default 64)")
    p.add_argument("--max-echoes", type=int, default=5_000_000,
                   help="close a window early after this many echoes (default 5,000,000)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"tcplab models, comma-separated (default {','.join(MODELS)})")
    p.add_argument("--pin", choices=tuple(h.PINS), default="none",
                   help="none (default: the scheduler places both), split (server on CPU 0, "
                   "load generator on CPU 1), same (both on CPU 0)")
    p.add_argument("--go", metavar="PATH", help="the go tool (default: go on PATH)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if (not args.models or not set(args.models) <= set(MODELS)
            or len(set(args.models)) != len(args.models)):
        p.error(f"--models: give distinct models from {', '.join(MODELS)}")
    h.positive(p, args, "rounds", "connections", "size", "max_echoes")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")


def measure(servers: list[str], args: argparse.Namespace, go_binary: str | None,
            problems: list[str]) -> list[h.Window]:
    """Interleaved rounds; a fresh namespace and server per run."""
    from tcplab.experiments.sandbox import Sandbox

    cells: list[h.Window] = []
    for i in range(args.rounds):
        for key in h.rotate(servers, i):
            with Sandbox(SYSCTLS) as sb, h.serving(sb, key, go_binary, SERVER_ARGS) as srv:
                c = h.pingpong_load(sb, key, i + 1, srv.pid, args.connections, args.size,
                                    args.warmup, args.seconds, args.max_echoes,
                                    h.pin(srv.pid, args.pin))
                totals = srv.stop()
            cells.append(c)
            bad = h.check_totals(key, totals, args.size * c.echoes_total, c.in_flight)
            if bad:
                problems.append(bad)
            h.progress(f"CPU per echo, round {i + 1}/{args.rounds} {key:<8} {c.cpu_us:6.2f} "
                       f"us/echo (user {c.user_us:5.2f}, sys {c.sys_us:5.2f}), "
                       f"{c.echoes_per_s:8,.0f} echoes/s, server {c.server_core_pct:4.0f} %, "
                       f"{c.server_threads} threads, others {c.others_core_pct:3.0f} %")
    return cells


def sum_tcp(cells: list[h.Window]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in cells:
        for k, v in c.tcp.items():
            total[k] = total.get(k, 0) + v
    return total


def summarize(cells: list[h.Window], servers: list[str], problems: list[str]
              ) -> tuple[str, list[dict[str, Any]]]:
    """(the x-model baseline: uvloop, else the first model; a row per server)."""
    base = h.DEFAULT_MODEL if h.DEFAULT_MODEL in servers else next(
        (s for s in servers if s != "go"), servers[0])
    by = {s: sorted((c for c in cells if c.server == s), key=lambda c: c.round)
          for s in servers}
    rows = []
    for s, cs in by.items():
        if not cs:
            continue

        def x(other: str, cs: list[h.Window] = cs) -> float | None:
            return h.by_round(cs, by.get(other, []), lambda w: w.round, lambda w: w.cpu_us)

        cpu = [c.cpu_us for c in cs]
        rows.append({
            "server": s, **h.medians(cs, cpu_us_per_echo="cpu_us", user_us_per_echo="user_us",
                                     sys_us_per_echo="sys_us"),
            "ratio_vs_go": x("go"), f"ratio_vs_{base}": x(base),
            "ratio_vs_stime": h.paired((c.cpu_us, c.sys_us) for c in cs),
            **h.medians(cs, echoes_per_s="echoes_per_s", p99_us="p99_us"),
            "spread_cpu_us": [min(cpu), max(cpu)],
            **h.medians(cs, server_core_pct="server_core_pct", client_us_per_echo="client_us",
                        others_core_pct="others_core_pct"),
            "tcp": sum_tcp(cs), "server_threads": max(c.server_threads for c in cs),
            "server_totals_match": not any(p.startswith(f"{s}:") for p in problems),
            "rounds": [asdict(c) for c in cs],
        })
    return base, rows


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by = {r["server"]: r for r in rows}
    for model in (h.DEFAULT_MODEL, "epoll"):
        r = by.get(model)
        tag = "" if model == h.DEFAULT_MODEL else " (shown for epoll)"
        if r and r["ratio_vs_go"] is not None:
            out.append({"goal": f"{model} CPU per echo / Go's <= {GOAL_VS_GO:.2f}{tag}",
                        "value": r["ratio_vs_go"], "fmt": ".2f",
                        "pass": r["ratio_vs_go"] <= GOAL_VS_GO})
        if r and r["ratio_vs_stime"] is not None:
            out.append({"goal": f"{model} CPU per echo / its own stime <= "
                                f"{GOAL_VS_STIME:.2f}{tag}",
                        "value": r["ratio_vs_stime"], "fmt": ".2f",
                        "pass": r["ratio_vs_stime"] <= GOAL_VS_STIME})
    return out


def print_header(res: dict[str, Any]) -> None:
    print("tcplab echo servers vs a Go reference (bench/peers/echo.go); every server in a "
          "fresh private network namespace (" + ", ".join(f"{k} = {v}" for k, v in
                                                       SYSCTLS.items())
          + f"), 127.0.0.1:{h.PORT}, load generator in its own process")
    print(h.go_line(res["go"], res["cpus"], "echo.go"))
    print(f"  tcplab: {res['python']} -m tcplab server --model M {' '.join(SERVER_ARGS)}")


def print_table(res: dict[str, Any], number: str = "") -> None:
    s, rows, base = res["settings"], res["cpu_per_echo"], res["baseline"]
    print(f"{number}server CPU per echo: {s['connections']} connections, {s['size']} B "
          f"ping-pong, {s['seconds']:g} s windows after {s['warmup']:g} s warm-up, median of "
          f"{s['rounds']} interleaved rounds")
    print(f"{'server':<8} {'cpu_us':>7} {'user_us':>7} {'sys_us':>7} {'x go':>6} "
          f"{'x ' + base:>9} {'x stime':>7} {'echoes/s':>9} {'p99_us':>7} {'threads':>7}  "
          "spread cpu_us")
    for r in rows:
        lo, hi = r["spread_cpu_us"]
        print(f"{r['server']:<8} {r['cpu_us_per_echo']:>7.2f} {r['user_us_per_echo']:>7.2f} "
              f"{r['sys_us_per_echo']:>7.2f} {h.fmt(r['ratio_vs_go'], '.2f'):>6} "
              f"{h.fmt(r[f'ratio_vs_{base}'], '.2f'):>9} "
              f"{h.fmt(r['ratio_vs_stime'], '.2f'):>7} {r['echoes_per_s']:>9,.0f} "
              f"{r['p99_us']:>7,.0f} {r['server_threads']:>7}  {lo:.2f}..{hi:.2f}")
    print(f"  sys_us is the kernel's own share (the server's stime per echo); x go, x {base} "
          f"= median of per-round ratios to Go, to {base}; x stime = cpu / sys")
    print("  diagnostics (medians): server CPU in % of one core; the load generator's "
          "CPU per echo; everything else on this machine, in % of one core; server totals")
    for r in rows:
        print(f"    {r['server']:<8} server {r['server_core_pct']:5.1f} %   "
              f"client {r['client_us_per_echo']:5.2f} us/echo   "
              f"others {r['others_core_pct']:5.1f} %   "
              f"retransmitted {r['tcp'].get('RetransSegs', 0)}   "
              f"totals {'match' if r['server_totals_match'] else 'DIFFER'}")


def print_goals(res: dict[str, Any]) -> None:
    h.print_goals(res["goals"], 72, 7, "(none measured)")
    if res["problems"]:
        print()
        print("problems:")
        for p in res["problems"]:
            print(f"  {p}")
    else:
        print("every server's totals equal the load generators' counts")


def report(res: dict[str, Any]) -> None:
    print_header(res)
    print()
    print_table(res)
    print_goals(res)


def start(args: argparse.Namespace, tmp: Path, settings: tuple[str, ...]
          ) -> tuple[str | None, dict[str, Any]]:
    """Build echo.go; (its binary, the result's head: settings, namespace, Go, servers)."""
    go_binary, go_info = h.build_go(args.go, tmp, "echo", "echo.go")
    servers = (["go"] if go_binary else []) + args.models
    return go_binary, {
        "settings": {k: getattr(args, k) for k in settings},
        "namespace": {"sysctls": SYSCTLS, "fresh_per_server": True},
        "cpus": os.cpu_count(), "python": sys.executable, "go": go_info, "servers": servers,
    }


def run_part(res: dict[str, Any], args: argparse.Namespace, go_binary: str | None,
             problems: list[str]) -> None:
    cells = measure(res["servers"], args, go_binary, problems)
    res["baseline"], res["cpu_per_echo"] = summarize(cells, res["servers"], problems)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Server CPU time per echo for every tcplab model and a Go reference echo "
        "server (ping-pong over many loopback connections), each server in its own private "
        "network namespace.")
    add_args(p)
    args = p.parse_args(argv)
    check_args(p, args)

    def body(tmp: Path) -> dict[str, Any]:
        problems: list[str] = []
        go_binary, res = start(args, tmp, ("rounds", "seconds", "warmup", "connections",
                                           "size", "max_echoes", "models", "pin"))
        res = {"benchmark": "cpu_per_echo", **res}
        run_part(res, args, go_binary, problems)
        return {**res, "goals": goals(res["cpu_per_echo"]), "problems": problems}

    return h.run_main(body, "tcplab-cpu-per-echo-", args.json, report)


if __name__ == "__main__":
    sys.exit(main())
