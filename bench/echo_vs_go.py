"""Every tcplab echo-server model against a Go reference echo server (bench/peers/echo.go):
1. server CPU per echo (also bench/cpu_per_echo.py, alone), 2. requests/s and p99 over
message sizes and connection counts, 3. concurrency (10,000 held, the most one process can
hold, RSS per idle connection). Root or unprivileged user namespaces, and go; about 7-8
minutes, 2 with ``--quick``. What is measured and how: bench/README.md, "echo_vs_go.py".
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file
from tcplab.experiments.sandbox import Sandbox
from tcplab.traffic.models import MODELS

BACKLOG = 8192
SYSCTLS = {"net.core.somaxconn": str(BACKLOG), "net.ipv4.ip_local_port_range": "1024 65535"}
SERVER_ARGS = ("--fd-limit", "max", "--backlog", str(BACKLOG))
GOAL_VS_GO, GOAL_VS_STIME = 1.0, 1.15
GOAL_RSS, GOAL_THREADS = 3 * 1024, 2
#: A grid cell whose rounds differ by more than this factor in requests/s is marked.
SPREAD_MARK = 2.0
C10K = 10_000
#: The "settings" of the JSON: cpu_per_echo.py's, echo_vs_go.py's.
PART1_SETTINGS = ("rounds", "seconds", "warmup", "connections", "size", "max_echoes",
                  "models", "pin")
SETTINGS = ("rounds", "seconds", "warmup", "connections", "size", "grid_rounds", "grid_seconds",
            "grid_warmup", "sizes", "conns", "conc_rounds", "most", "max_echoes", "models",
            "parts", "quick", "pin")


# --- part 1: CPU per echo -------------------------------------------------------------------


def windows(servers: list[str], rounds: int, cells: list[tuple[int, int]], warmup: float,
            seconds: float, args: argparse.Namespace, go_binary: str | None,
            problems: list[str], line: Callable[[str, str, list[h.Window]], str]
            ) -> list[h.Window]:
    """Interleaved rounds; per server and round a fresh namespace and server, and on it
    the ``cells`` (size, connections) one after the other, each with a fresh load."""
    out: list[h.Window] = []
    for i in range(rounds):
        for key in h.rotate(servers, i):
            with Sandbox(SYSCTLS) as sb, h.serving(sb, key, go_binary, SERVER_ARGS) as srv:
                cpus = h.pin(srv.pid, args.pin)
                mine = [h.pingpong_load(sb, key, i + 1, srv.pid, n, size, warmup, seconds,
                                        args.max_echoes, cpus) for size, n in cells]
                totals = srv.stop()
            out += mine
            if bad := h.check_totals(key, totals, sum(c.size * c.echoes_total for c in mine),
                                     sum(c.in_flight for c in mine)):
                problems.append(bad)
            h.progress(line(f"{i + 1}/{rounds}", key, mine))
    return out


def part1_line(round_of: str, key: str, mine: list[h.Window]) -> str:
    c = mine[0]
    return (f"CPU per echo, round {round_of} {key:<8} {c.cpu_us:6.2f} "
            f"us/echo (user {c.user_us:5.2f}, sys {c.sys_us:5.2f}), "
            f"{c.echoes_per_s:8,.0f} echoes/s, server {c.server_core_pct:4.0f} %, "
            f"{c.server_threads} threads, others {c.others_core_pct:3.0f} %")


def part2_line(round_of: str, key: str, mine: list[h.Window]) -> str:
    return (f"part 2 round {round_of} {key:<8} "
            + "  ".join(f"{h.size_text(c.size)}x{c.connections} {c.echoes_per_s:,.0f}/s"
                        for c in mine)
            + f"  (others {h.median(c.others_core_pct for c in mine):.0f} %)")


def summarize1(cells: list[h.Window], servers: list[str], problems: list[str]
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
            "tcp": h.sum_tcp(c.tcp for c in cs),
            "server_threads": max(c.server_threads for c in cs),
            "server_totals_match": not any(p.startswith(f"{s}:") for p in problems),
            "rounds": [asdict(c) for c in cs],
        })
    return base, rows


def goals1(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by = {r["server"]: r for r in rows}
    for model in (h.DEFAULT_MODEL, "epoll"):
        r = by.get(model) or {}
        tag = "" if model == h.DEFAULT_MODEL else " (shown for epoll)"
        for key, what, most in (("ratio_vs_go", "Go's", GOAL_VS_GO),
                                ("ratio_vs_stime", "its own stime", GOAL_VS_STIME)):
            if r.get(key) is not None:
                out.append(h.goal(f"{model} CPU per echo / {what} <= {most:.2f}{tag}", r[key],
                                  r[key] <= most, ".2f"))
    return out


# --- part 2: the grid ---------------------------------------------------------------------


def summarize2(cells: list[h.Window], servers: list[str], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        for n in args.conns:
            row: dict[str, Any] = {"size": size, "connections": n, "servers": {}}
            for key in servers:
                cs = [c for c in cells if (c.server, c.size, c.connections) == (key, size, n)]
                if cs:
                    rate = [c.echoes_per_s for c in cs]
                    row["servers"][key] = {
                        **h.medians(cs, echoes_per_s="echoes_per_s"),
                        "spread_echoes_per_s": [min(rate), max(rate)],
                        **h.medians(cs, p50_us="p50_us", p99_us="p99_us",
                                    cpu_us_per_echo="cpu_us",
                                    server_core_pct="server_core_pct",
                                    client_us_per_echo="client_us",
                                    others_core_pct="others_core_pct"),
                        "tcp": h.sum_tcp(c.tcp for c in cs), "rounds": len(cs),
                    }
            rows.append(row)
    return rows


# --- part 3: concurrency with tcplab multiplex ---------------------------------------------


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


def hold(sb: Sandbox, srv: h.Served, key: str, index: int, n: int, messages: int) -> Held:
    cmd = sb.tcplab("multiplex", "--port", str(h.PORT), "--connections", str(n),
                    "--messages", str(messages), "--size", "64", "--server-pid", str(srv.pid),
                    "--timeout", "60", "--json")
    r = h.last_json(h.measured(cmd, 180, sb.popen),
                    f"tcplab multiplex --connections {n} against {key}")
    f = r.get("server") or {}
    return Held(
        server=key, round=index, connections=n, connected=int(r["connected"]),
        echoes=int(r["echoes"]), failures=dict(r["failures"]), connect_s=float(r["connect_s"]),
        threads=int(f.get("threads", 0)), epoll_instances=int(f.get("epoll_instances", 0)),
        epoll_watches=int(f.get("epoll_watches", 0)), rss_bytes=int(f.get("rss_bytes", 0)),
        rss_per_conn=float(r.get("server_rss_per_conn") or 0.0), fds=int(f.get("fds", 0)),
        fd_limit=int(f.get("fd_limit", 0)), p99_us=float(r["rtt_p99_us"]),
    )


def part3(servers: list[str], args: argparse.Namespace, go_binary: str | None,
          problems: list[str]) -> list[Held]:
    held: list[Held] = []
    for i in range(args.conc_rounds):
        for key in h.rotate(servers, i):
            for n, messages in ((C10K, 5), (args.most, 2)):
                with Sandbox(SYSCTLS) as sb, h.serving(sb, key, go_binary, SERVER_ARGS) as srv:
                    x = hold(sb, srv, key, i + 1, n, messages)
                    totals = srv.stop()
                held.append(x)
                if x.failures or x.connected != n or x.echoes != n * messages:
                    problems.append(f"{key}: {x.connected:,} of {n:,} connections held, "
                                    f"{x.echoes:,} of {n * messages:,} echoes verified, "
                                    f"failures {x.failures}")
                elif bad := h.check_totals(key, totals, 64 * x.echoes, 0):
                    problems.append(bad)
                h.progress(f"part 3 round {i + 1}/{args.conc_rounds} {key:<8} "
                           f"{x.connected:,}/{n:,} held, {x.threads} threads, "
                           f"{x.epoll_watches:,} epoll watches, RSS {x.rss_bytes / 2**20:.1f} "
                           f"MiB ({x.rss_per_conn:,.0f} B/conn), fds {x.fds:,}/{x.fd_limit:,}")
    return held


def summarize3(held: list[Held], servers: list[str], most: int) -> list[dict[str, Any]]:
    rows = []
    for key in servers:
        for n in (C10K, most):
            hs = [x for x in held if x.server == key and x.connections == n]
            if hs:
                rows.append({
                    "server": key, "connections": n,
                    "connected_min": min(x.connected for x in hs),
                    "verified": all(not x.failures and x.connected == n for x in hs),
                    "threads_max": max(x.threads for x in hs),
                    "epoll_instances": max(x.epoll_instances for x in hs),
                    "epoll_watches_min": min(x.epoll_watches for x in hs),
                    "rss_bytes": h.median(float(x.rss_bytes) for x in hs),
                    "rss_per_conn": h.median(x.rss_per_conn for x in hs),
                    "fds_max": max(x.fds for x in hs), "fd_limit": min(x.fd_limit for x in hs),
                    **h.medians(hs, connect_s="connect_s", p99_us="p99_us"),
                    "rounds": [asdict(x) for x in hs],
                })
    return rows


def goals3(res: dict[str, Any]) -> list[dict[str, Any]]:
    by3, model = {(r["server"], r["connections"]): r for r in res["part3"]}, h.DEFAULT_MODEL
    c10k, most = by3.get((model, C10K)), by3.get((model, res["settings"]["most"]))
    out: list[dict[str, Any]] = []
    if c10k:
        out.append(h.goal(f"{model}: {C10K:,} connections held and echoing on "
                          f"<= {GOAL_THREADS} OS threads", c10k["threads_max"],
                          c10k["verified"] and c10k["threads_max"] <= GOAL_THREADS, "d"))
    if most:
        out.append(h.goal(f"{model}: {most['connections']:,} connections held in one "
                          f"process (fd limit {most['fd_limit']:,})", most["connected_min"],
                          most["verified"], ",d"))
    if c10k and c10k["rss_per_conn"] is not None:
        out.append(h.goal(f"{model} RSS per idle connection <= {GOAL_RSS:,} B",
                          c10k["rss_per_conn"], c10k["rss_per_conn"] <= GOAL_RSS, ",.0f"))
    return out


# --- printing -------------------------------------------------------------------------------


def print_part1(res: dict[str, Any], number: str) -> None:
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


def _mark(cell: dict[str, Any]) -> str:
    """"*" when the rounds' requests/s differ by more than 2x (see the note under the table)."""
    lo, hi = cell.get("spread_echoes_per_s") or (0, 0)
    return "*" if lo > 0 and hi / lo > SPREAD_MARK else ""


def _grid(res: dict[str, Any], names: list[str], key: str, ratio: bool) -> None:
    s, p1 = res["settings"], {r["server"]: r for r in res.get("cpu_per_echo", [])}
    show_ratio = ratio and "go" in names and h.DEFAULT_MODEL in names
    print(f"   {'size':>6} {'conns':>5} " + " ".join(f"{n:>9}" for n in names)
          + (f" {h.DEFAULT_MODEL + '/go':>10}" if show_ratio else ""))
    rows = list(res["part2"])
    if p1 and all(n in p1 for n in names):
        rows.insert(0, {"size": s["size"], "connections": s["connections"], "part1": True,
                        "servers": {n: {key: p1[n][key]} for n in names}})
    for row in rows:
        cells = [row["servers"].get(n, {}) for n in names]
        line = (f"   {h.size_text(row['size']):>6} {row['connections']:>5,} "
                + " ".join(f"{h.fmt(c.get(key), ',.0f') + _mark(c):>9}" for c in cells))
        if show_ratio:
            g = row["servers"].get("go", {}).get(key)
            d = row["servers"].get(h.DEFAULT_MODEL, {}).get(key)
            line += f" {h.fmt(d / g if d is not None and g else None, '.2f'):>10}"
        print(line + ("   (part 1)" if row.get("part1") else ""))


def print_part2(res: dict[str, Any]) -> None:
    s = res["settings"]
    names = [p for p in res["servers"] if any(p in row["servers"] for row in res["part2"])]
    print()
    print(f"2. requests/s (round trips per second, all connections), median of "
          f"{s['grid_rounds']} interleaved rounds, {s['grid_seconds']:g} s windows after "
          f"{s['grid_warmup']:g} s warm-up")
    _grid(res, names, "echoes_per_s", ratio=True)
    print()
    print("   p99 latency, microseconds (first byte sent to last byte back, at the "
          "load generator)")
    _grid(res, names, "p99_us", ratio=False)
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
    total = dict.fromkeys(("RetransSegs", "TCPLossProbes", "TCPDSACKRecv", "TCPTimeouts"), 0)
    total |= h.sum_tcp([c["tcp"] for row in res["part2"] for c in row["servers"].values()]
                       + [r["tcp"] for r in res.get("cpu_per_echo", [])])
    print(f"  TCP in the windows: {total['RetransSegs']:,} segments retransmitted, "
          f"{total['TCPLossProbes']:,} of them tail-loss probes, {total['TCPDSACKRecv']:,} "
          f"answered by a D-SACK (the data had arrived: spurious), "
          f"{total['TCPTimeouts']:,} RTOs; per cell in the JSON")


def print_part3(res: dict[str, Any]) -> None:
    print()
    print(f"3. concurrency (tcplab multiplex: connections ramped up, held, 64 B round "
          f"trips on every one at once, every byte verified; server facts read while all "
          f"are open), median of {res['settings']['conc_rounds']} rounds")
    print(f"{'server':<8} {'conns':>7} {'held':>7} {'threads':>7} {'epoll':>5} "
          f"{'watches':>8} {'RSS MiB':>7} {'B/conn':>7} {'fds':>7} {'fd limit':>8} "
          f"{'headroom':>8} {'p99_us':>8}")
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


def print_report(res: dict[str, Any]) -> None:
    alone = res["benchmark"] == "cpu_per_echo"
    print("tcplab echo servers vs a Go reference (bench/peers/echo.go); every server in a "
          f"fresh private network namespace ({h.pairs_text(SYSCTLS)}), 127.0.0.1:{h.PORT}, "
          "load generator in its own process")
    print(h.go_line(res["go"], res["cpus"], "echo.go"))
    print(f"  tcplab: {res['python']} -m tcplab server --model M {' '.join(SERVER_ARGS)}")
    if "cpu_per_echo" in res:
        print()
        print_part1(res, "" if alone else "1. ")
    if "part2" in res:
        print_part2(res)
    if "part3" in res:
        print_part3(res)
    h.print_goals(res["goals"], 72, 7, "(none measured)")
    if res["problems"]:
        print()
        print("problems:")
        for p in res["problems"]:
            print(f"  {p}")
    else:
        print("every server's totals equal the load generators' counts")


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None, alone: bool) -> argparse.Namespace:
    p = h.parser("Server CPU time per echo of every tcplab model and a Go reference echo "
                 "server (bench/peers/echo.go)" + ("." if alone else ", requests/s and p99 "
                 "over message sizes and connection counts, and concurrency (10,000 held, the "
                 "most one process can hold, RSS per idle connection).") + " Each server runs "
                 "in its own private network namespace.")
    part, add = "" if alone else "part 1 (CPU per echo): ", p.add_argument
    add("--rounds", type=int, default=5, help=f"{part}interleaved rounds per server")
    add("--seconds", type=float, default=3.0, help=f"{part}measurement window per run")
    add("--warmup", type=float, default=0.5, help=f"{part}load before the window opens")
    add("--connections", type=int, default=100, help=f"{part}concurrent connections")
    add("--size", type=int, default=64, help=f"{part}bytes per ping")
    add("--max-echoes", type=int, default=5_000_000, help="close a window after this many")
    add("--models", default=",".join(MODELS), help="tcplab models, comma-separated")
    add("--pin", choices=tuple(h.PINS), default="none",
        help="none (the scheduler places both), split (server on CPU 0, load generator on "
        "CPU 1), same (both on CPU 0)")
    if not alone:
        add("--grid-rounds", type=int, default=3, help="part 2: rounds")
        add("--grid-seconds", type=float, default=2.0, help="part 2: window per cell")
        add("--grid-warmup", type=float, default=0.3, help="part 2: warm-up per cell")
        add("--sizes", type=h.csv_ints, default=[1024, 65536],
            help="part 2: message sizes in bytes")
        add("--conns", type=h.csv_ints, default=[1, 10, 100, 1000],
            help="part 2: connection counts")
        add("--conc-rounds", type=int, default=3, help="part 3: rounds")
        add("--most", type=int, default=19_000,
            help="part 3: connections for 'the most one process can hold'")
        add("--parts", default="1,2,3", help="which parts to run")
        add("--quick", action="store_true", help="--rounds 2 --seconds 1.5 --grid-rounds 1 "
            "--grid-seconds 1 --conc-rounds 1")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if (not args.models or not set(args.models) <= set(MODELS)
            or len(set(args.models)) != len(args.models)):
        p.error(f"--models: give distinct models from {', '.join(MODELS)}")
    h.check(p, args, 1, "rounds", "connections", "size", "max_echoes")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")
    if alone:
        args.parts = [1]
        return args
    if args.quick:
        args.rounds, args.seconds = 2, 1.5
        args.grid_rounds, args.grid_seconds, args.conc_rounds = 1, 1.0, 1
    try:
        args.parts = sorted({int(x) for x in args.parts.split(",") if x.strip()})
    except ValueError:
        args.parts = []
    if not args.parts or not set(args.parts) <= {1, 2, 3}:
        p.error("--parts: comma-separated numbers from 1,2,3")
    h.check(p, args, 1, "grid_rounds", "conc_rounds")
    if args.grid_seconds <= 0 or args.grid_warmup < 0:
        p.error("windows must be > 0 s and warm-ups >= 0 s")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    biggest = max([args.connections, *args.conns, C10K, args.most])
    if biggest + 64 > hard:
        p.error(f"{biggest:,} connections need {biggest + 64:,} fds in the client, more than "
                f"this process's hard limit of {hard:,}: lower --most, or raise 'ulimit -Hn'")
    return args


def main(argv: list[str] | None = None, alone: bool = False) -> int:
    """``alone``: bench/cpu_per_echo.py, part 1 with its own options, name and settings."""
    args = parse_args(argv, alone)
    name = "cpu_per_echo" if alone else "echo_vs_go"

    def body(tmp: Path) -> dict[str, Any]:
        problems: list[str] = []
        go_binary, go_info = h.build_go(args.go, tmp, "echo", "echo.go")
        servers = (["go"] if go_binary else []) + args.models
        res: dict[str, Any] = {
            "benchmark": name,
            "settings": {k: getattr(args, k) for k in (PART1_SETTINGS if alone else SETTINGS)},
            "namespace": {"sysctls": SYSCTLS, "fresh_per_server": True},
            "cpus": os.cpu_count(), "python": sys.executable, "go": go_info,
            "servers": servers}
        if 1 in args.parts:
            cells = windows(servers, args.rounds, [(args.size, args.connections)], args.warmup,
                            args.seconds, args, go_binary, problems, part1_line)
            res["baseline"], res["cpu_per_echo"] = summarize1(cells, servers, problems)
        if 2 in args.parts:
            cells = windows(servers, args.grid_rounds, [(s, n) for s in args.sizes
                                                        for n in args.conns], args.grid_warmup,
                            args.grid_seconds, args, go_binary, problems, part2_line)
            res["part2"] = summarize2(cells, servers, args)
        conc = [s for s in servers if s in ("go", h.DEFAULT_MODEL)]
        if 3 in args.parts and conc:
            res["part3"] = summarize3(part3(conc, args, go_binary, problems), conc, args.most)
        res["goals"] = goals1(res.get("cpu_per_echo", [])) + (
            goals3(res) if "part3" in res else [])
        return {**res, "problems": problems}

    return h.run_main(body, f"tcplab-{name.replace('_', '-')}-", args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
