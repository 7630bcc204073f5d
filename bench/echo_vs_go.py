"""Every tcplab echo-server model against a Go reference echo server (bench/peers/echo.go):
1. server CPU per echo (bench/cpu_per_echo.py), 2. requests/s and p99 over message sizes
and connection counts, 3. concurrency (10,000 held, the most one process can hold, RSS per
idle connection). Root or unprivileged user namespaces, and go; about 7-8 minutes, 2 with
``--quick``::

    .venv/bin/python bench/echo_vs_go.py
    .venv/bin/python bench/echo_vs_go.py --quick
    .venv/bin/python bench/echo_vs_go.py --parts 2 --conns 1 --pin same --json

What is measured and how: bench/README.md, "echo_vs_go.py".
"""

from __future__ import annotations

import argparse
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cpu_per_echo as part1  # bench/cpu_per_echo.py: part 1
import harness as h  # bench/harness.py, next to this file
from tcplab.experiments.sandbox import Sandbox

GOAL_RSS = 3 * 1024
GOAL_THREADS = 2
#: A grid cell whose rounds differ by more than this factor in requests/s is marked.
SPREAD_MARK = 2.0
C10K = 10_000


# --- part 2: the grid ---------------------------------------------------------------------


def part2(servers: list[str], args: argparse.Namespace, go_binary: str | None,
          problems: list[str]) -> list[h.Window]:
    """One namespace and server per server and round; the cells one after the other."""
    cells: list[h.Window] = []
    for i in range(args.grid_rounds):
        for key in h.rotate(servers, i):
            mine: list[h.Window] = []
            with Sandbox(part1.SYSCTLS) as sb, \
                    h.serving(sb, key, go_binary, part1.SERVER_ARGS) as srv:
                cpus = h.pin(srv.pid, args.pin)
                for size in args.sizes:
                    for n in args.conns:
                        mine.append(h.pingpong_load(sb, key, i + 1, srv.pid, n, size,
                                                    args.grid_warmup, args.grid_seconds,
                                                    args.max_echoes, cpus))
                totals = srv.stop()
            cells += mine
            bad = h.check_totals(key, totals, sum(c.size * c.echoes_total for c in mine),
                                 sum(c.in_flight for c in mine))
            if bad:
                problems.append(bad)
            h.progress(f"part 2 round {i + 1}/{args.grid_rounds} {key:<8} "
                       + "  ".join(f"{h.size_text(c.size)}x{c.connections} "
                                   f"{c.echoes_per_s:,.0f}/s" for c in mine)
                       + f"  (others {h.median(c.others_core_pct for c in mine):.0f} %)")
    return cells


def summarize2(cells: list[h.Window], servers: list[str], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        for n in args.conns:
            row: dict[str, Any] = {"size": size, "connections": n, "servers": {}}
            for key in servers:
                cs = [c for c in cells if (c.server, c.size, c.connections) == (key, size, n)]
                if not cs:
                    continue

                rate = [c.echoes_per_s for c in cs]
                row["servers"][key] = {
                    **h.medians(cs, echoes_per_s="echoes_per_s"),
                    "spread_echoes_per_s": [min(rate), max(rate)],
                    **h.medians(cs, p50_us="p50_us", p99_us="p99_us", cpu_us_per_echo="cpu_us",
                                server_core_pct="server_core_pct",
                                client_us_per_echo="client_us",
                                others_core_pct="others_core_pct"),
                    "tcp": part1.sum_tcp(cs),
                    "rounds": len(cs),
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
    m = h.measured(cmd, 180, sb.popen)
    r = h.last_json(m, f"tcplab multiplex --connections {n} against {key}")
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
                with Sandbox(part1.SYSCTLS) as sb, \
                        h.serving(sb, key, go_binary, part1.SERVER_ARGS) as srv:
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
                    "connect_s": h.median(x.connect_s for x in hs),
                    "p99_us": h.median(x.p99_us for x in hs),
                    "rounds": [asdict(x) for x in hs],
                })
    return rows


def goals3(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by3 = {(r["server"], r["connections"]): r for r in res.get("part3", [])}
    model = h.DEFAULT_MODEL
    c10k, most = by3.get((model, C10K)), by3.get((model, res["settings"]["most"]))
    if c10k:
        out.append({"goal": f"{model}: {C10K:,} connections held and echoing on "
                            f"<= {GOAL_THREADS} OS threads",
                    "value": c10k["threads_max"], "fmt": "d",
                    "pass": c10k["verified"] and c10k["threads_max"] <= GOAL_THREADS})
    if most:
        out.append({"goal": f"{model}: {most['connections']:,} connections held in one "
                            f"process (fd limit {most['fd_limit']:,})",
                    "value": most["connected_min"], "fmt": ",d", "pass": most["verified"]})
    if c10k and c10k["rss_per_conn"] is not None:
        out.append({"goal": f"{model} RSS per idle connection <= {GOAL_RSS:,} B",
                    "value": c10k["rss_per_conn"], "fmt": ",.0f",
                    "pass": c10k["rss_per_conn"] <= GOAL_RSS})
    return out


# --- printing -------------------------------------------------------------------------------


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


def print_report(res: dict[str, Any]) -> None:
    s = res["settings"]
    part1.print_header(res)
    if "cpu_per_echo" in res:
        print()
        part1.print_table(res, "1. ")
    if "part2" in res:
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
        tcp = [c["tcp"] for row in res["part2"] for c in row["servers"].values()]
        tcp += [r["tcp"] for r in res.get("cpu_per_echo", [])]
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
    part1.print_goals(res)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Every tcplab echo-server model against a Go reference echo server "
        "(bench/peers/echo.go): server CPU per echo, requests/s and p99 over message sizes "
        "and connection counts, and concurrency (10,000 held, the most one process can hold, "
        "RSS per idle connection). Each server runs in its own private network namespace.",
    )
    part1.add_args(p, "part 1 (CPU per echo): ")
    p.add_argument("--grid-rounds", type=int, default=3, help="part 2: rounds (default 3)")
    p.add_argument("--grid-seconds", type=float, default=2.0,
                   help="part 2: window per cell (default 2)")
    p.add_argument("--grid-warmup", type=float, default=0.3,
                   help="part 2: warm-up per cell (default 0.3)")
    p.add_argument("--sizes", type=h.csv_ints, default=[1024, 65536],
                   help="part 2: message sizes in bytes (default 1024,65536)")
    p.add_argument("--conns", type=h.csv_ints, default=[1, 10, 100, 1000],
                   help="part 2: connection counts (default 1,10,100,1000)")
    p.add_argument("--conc-rounds", type=int, default=3, help="part 3: rounds (default 3)")
    p.add_argument("--most", type=int, default=19_000,
                   help="part 3: connections for 'the most one process can hold' "
                   "(default 19,000)")
    p.add_argument("--parts", default="1,2,3", help="which parts to run (default 1,2,3)")
    p.add_argument("--quick", action="store_true",
                   help="--rounds 2 --seconds 1.5 --grid-rounds 1 --grid-seconds 1 "
                   "--conc-rounds 1")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 1.5
        args.grid_rounds, args.grid_seconds, args.conc_rounds = 1, 1.0, 1
    part1.check_args(p, args)
    try:
        args.parts = sorted({int(x) for x in args.parts.split(",") if x.strip()})
    except ValueError:
        args.parts = []
    if not args.parts or not set(args.parts) <= {1, 2, 3}:
        p.error("--parts: comma-separated numbers from 1,2,3")
    h.positive(p, args, "grid_rounds", "conc_rounds")
    if args.grid_seconds <= 0 or args.grid_warmup < 0:
        p.error("windows must be > 0 s and warm-ups >= 0 s")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    biggest = max([args.connections, *args.conns, C10K, args.most])
    if biggest + 64 > hard:
        p.error(f"{biggest:,} connections need {biggest + 64:,} fds in the client, more than "
                f"this process's hard limit of {hard:,}: lower --most, or raise 'ulimit -Hn'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path) -> dict[str, Any]:
        problems: list[str] = []
        go_binary, res = part1.start(args, tmp, (
            "rounds", "seconds", "warmup", "connections", "size", "grid_rounds",
            "grid_seconds", "grid_warmup", "sizes", "conns", "conc_rounds", "most",
            "max_echoes", "models", "parts", "quick", "pin"))
        res = {"benchmark": "echo_vs_go", **res}
        servers = res["servers"]
        if 1 in args.parts:
            part1.run_part(res, args, go_binary, problems)
        if 2 in args.parts:
            res["part2"] = summarize2(part2(servers, args, go_binary, problems), servers, args)
        conc = [s for s in servers if s in ("go", h.DEFAULT_MODEL)]
        if 3 in args.parts and conc:
            res["part3"] = summarize3(part3(conc, args, go_binary, problems), conc, args.most)
        res["goals"] = part1.goals(res.get("cpu_per_echo", [])) + goals3(res)
        return {**res, "problems": problems}

    return h.run_main(body, "tcplab-echo-vs-go-", args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
