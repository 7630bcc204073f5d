"""``tcplab states --port P --json`` against ss, netstat and psutil, on 20,000+ sockets in
a private network namespace. Root or unprivileged user namespaces; about 10 s, 20 s more
with ``--fresh-venv``. What is measured and how: bench/README.md, "states_vs_ss.py".
``--_role holder`` builds and holds the sockets; ``--_role inproc`` (the venv's python)
times the in-process sample and psutil.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: TIME_WAIT lasts 60 s; measure only within this many seconds of the first one.
BUDGET_S = 55.0
SYSCTLS = {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "0"}
SHOWN_SYSCTLS = (*SYSCTLS, "net.ipv4.tcp_max_tw_buckets")  # read back for the record
#: ss's state names to netstat's (the names tcplab and psutil use).
SS_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
STABLE_STATES = {"ESTABLISHED", "TIME_WAIT", "LISTEN"}
#: psutil's count, the same code timed as a whole process (the "psutil" row) and in one.
PSUTIL_CODE = """\
import psutil
def psutil_counts(port):
    counts = {}
    for c in psutil.net_connections(kind="tcp"):
        if (c.laddr and c.laddr.port == port) or (c.raddr and c.raddr.port == port):
            counts[c.status] = counts.get(c.status, 0) + 1
    return counts
"""


def tools(venv: Path, port: int) -> dict[str, tuple[str, list[str]]]:
    """tool: (its row's label, its command). The (ref) rows split tcplab's time into
    start-up + imports + work."""
    python, p = str(venv / "bin" / "python"), str(port)
    return {
        "tcplab": (f"tcplab states --port {p} --json",
                   [str(venv / "bin" / "tcplab"), "states", "--port", p, "--json"]),
        "ss": (f"ss -Htan '(sport|dport {p})' | wc -l",
               ["sh", "-c", f"ss -Htan '( sport = :{p} or dport = :{p} )' | wc -l"]),
        "netstat": (f"netstat -an | grep ':{p} ' | wc -l",
                    ["sh", "-c", f"netstat -an | grep ':{p} ' | wc -l"]),
        "psutil": ("python: psutil.net_connections", [python, "-c", PSUTIL_CODE
                   + "import json, sys\nprint(json.dumps(psutil_counts(int(sys.argv[1]))))", p]),
        "python": ("(ref) python -c pass", [python, "-c", "pass"]),
        "imports": ("(ref) python -c 'import tcplab.cli...'", [
            python, "-c", "import tcplab.cli.main, tcplab.cli.states, tcplab.observe.sockets"]),
    }


REFERENCES = ("python", "imports")
HOLDER_ARGS = ("port", "other_port", "time_wait", "established", "other_time_wait")


def holder_main(args: argparse.Namespace) -> int:
    """Build the sockets, say so on stdout (one JSON line), hold them until stdin closes."""
    socks: list[socket.socket] = []

    def connect(lsock: socket.socket, port: int) -> tuple[socket.socket, socket.socket]:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            client.connect((HOST, port))
            return client, lsock.accept()[0]
        except BaseException:
            client.close()
            raise

    try:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        report: dict[str, Any]
        try:
            t0 = time.monotonic()
            listeners = []
            for port in (args.port, args.other_port):
                socks.append(s := socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))
                s.listen(1024)
                listeners.append(s)
            for _ in range(args.established):
                socks.extend(connect(listeners[0], args.port))
            t_tw = time.monotonic()
            for lsock, port, n in ((listeners[0], args.port, args.time_wait),
                                   (listeners[1], args.other_port, args.other_time_wait)):
                for _ in range(n):
                    client, server = connect(lsock, port)
                    client.close()  # the active closer: its socket ends in TIME_WAIT
                    server.close()
            t1 = time.monotonic()
            report = {"ok": True, "time_wait_from": t_tw, "build_s": t1 - t0,
                      "established_s": t_tw - t0, "time_wait_s": t1 - t_tw,
                      "fds": len(socks), "fd_limit": hard}
        except OSError as exc:
            report = {"ok": False, "error": f"building the sockets: {exc} "
                      f"(after {len(socks)} held sockets)"}
        print(json.dumps(report), flush=True)
        sys.stdin.buffer.read()  # until the measuring process closes our stdin
    except KeyboardInterrupt:
        return 130
    finally:
        for s in socks:
            s.close()
    return 0


def inproc_main(args: argparse.Namespace) -> int:
    """Run with the venv's python: in-process timings (medians) as one JSON line."""
    pc, cpu, port = time.perf_counter, time.process_time, args.port
    t = pc()
    from tcplab.observe.sockets import SocketTable

    ip: dict[str, Any] = {"import_ms": (pc() - t) * 1e3}

    import tcplab

    install: dict[str, Any] = {"editable": None, "tcplab_file": tcplab.__file__,
                               "version": tcplab.__version__, "python": sys.executable}
    with contextlib.suppress(Exception):  # not installed as a distribution: a source tree
        from importlib.metadata import distribution

        direct = json.loads(distribution("tcplab").read_text("direct_url.json") or "{}")
        install["editable"] = bool(direct.get("dir_info", {}).get("editable", False))

    def timed(name: str, fn: Callable[[], Any], n: int, with_cpu: bool = True) -> Any:
        """ip[name_ms] (and name_cpu_ms): median wall (CPU) ms of ``n`` calls; the last
        call's result."""
        walls, cpus, result = [], [], None
        for _ in range(n):
            t0, c0 = pc(), cpu()
            result = fn()
            c1, t1 = cpu(), pc()
            walls.append((t1 - t0) * 1e3)
            cpus.append((c1 - c0) * 1e3)
        ip[f"{name}_ms"] = statistics.median(walls)
        if with_cpu:
            ip[f"{name}_cpu_ms"] = statistics.median(cpus)
        if name == "sample":
            ip["sample_range_ms"] = [min(walls), max(walls)]
        return result

    t = pc()
    table = SocketTable()
    first = table.count(port)
    ip["first_sample_ms"] = (pc() - t) * 1e3  # SocketTable() and one count
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        counts = timed("sample", lambda: table.count(port), args.samples)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        # user and sys per sample, as means (getrusage splits CPU time by ticks)
        ip["sample_user_ms_mean"] = (r1.ru_utime - r0.ru_utime) * 1e3 / args.samples
        ip["sample_sys_ms_mean"] = (r1.ru_stime - r0.ru_stime) * 1e3 / args.samples
        named = timed("state_counts", lambda: table.state_counts(port), args.samples, False)
        timed("count_all_ports", lambda: table.count(0), args.samples, False)
    finally:
        table.close()
    import psutil

    install["psutil"], code = psutil.__version__, dict[str, Any]()
    exec(PSUTIL_CODE, code)  # the "psutil" row's own code
    ip["psutil_counts"] = timed("psutil", lambda: code["psutil_counts"](port), args.runs)
    ip.update(samples=args.samples, source=table.source,
              warning=None if counts == first else "count(P) changed between samples")
    print(json.dumps({"install": install, "in_process": ip,
                      "counts": {k: v for k, v in named.states.items() if v}}))
    return 0


# --- the measuring process, inside the namespace ----------------------------------------


def join(sb: Any) -> None:
    """Move this process into the sandbox's namespaces (Sandbox._enter's setns), so that
    everything it runs (ss, tcplab, the holder) is there, started as any command is."""
    from tcplab.observe.nsutil import setns

    for fd, nstype in sb._ns_fds:
        setns(fd, nstype)


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise h.BenchError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def ss_states(port: int | None) -> dict[str, int]:
    """Per-state counts from ``ss -Htan`` (with the tools' port filter when given)."""
    c: dict[str, int] = {}
    for line in run(["ss", "-Htan"] + ([] if port is None else
                                       [f"( sport = :{port} or dport = :{port} )"])
                    ).splitlines():
        if line.strip():
            raw = line.split(None, 1)[0]
            c[SS_STATES.get(raw, raw)] = c.get(SS_STATES.get(raw, raw), 0) + 1
    return c


def compare_counts(tcplab: str, port: int | None) -> dict[str, Any]:
    """tcplab against ss, with ss taken before and after: retried until ss agrees with itself."""
    cmd = [tcplab, "states", "--json"] + ([] if port is None else ["--port", str(port)])
    for _ in range(5):
        before = ss_states(port)
        mine = {k: v for k, v in json.loads(run(cmd))["states"].items() if v}
        after = ss_states(port)
        if before == after:
            diff = {k: [mine.get(k, 0), after.get(k, 0)] for k in sorted(set(mine) | set(after))
                    if mine.get(k, 0) != after.get(k, 0)}
            return {"match": not diff, "tcplab": mine, "ss": after, "diff": diff,
                    "total": sum(after.values())}
        time.sleep(0.2)
    raise h.BenchError(f"the socket table keeps changing (port {port}): ss {before} then "
                       f"{after}")


def start_holder(sb: Any, args: argparse.Namespace, timeout: float = 300.0) -> dict[str, Any]:
    """The holder process, in the sandbox (which stops and reaps it): its report."""
    proc = sb.popen([sys.executable, str(Path(__file__).resolve()), "--_role", "holder",
                     *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in HOLDER_ARGS)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return h.holder_report(proc, timeout)


def run_tool(tool: str, cmd: list[str]) -> tuple[float, float, int | None]:
    """Wall ms, CPU ms (the child and what it waited for) and the count it printed."""
    m = h.measured(cmd, 120)
    if m.code:
        raise h.BenchError(f"{tool}: exit {m.code}: {m.err.strip()[-500:]}")
    n = (None if tool in REFERENCES else int(json.loads(m.out)["total"]) if tool == "tcplab"
         else sum(json.loads(m.out).values()) if tool == "psutil" else int(m.out.strip()))
    return m.wall_s * 1e3, (m.user_s + m.sys_s) * 1e3, n


def _budget(t_tw: float, what: str) -> float:
    used = time.monotonic() - t_tw
    if used > BUDGET_S:
        raise h.BenchError(f"{used:.0f} s have passed since the first TIME_WAIT socket was "
                           f"made (they last 60 s) and {what} is still to do: use fewer "
                           "--runs, --samples or sockets")
    return used


def inner_main(args: argparse.Namespace, sb: Any) -> dict[str, Any]:
    """In the private namespace: build, check, measure, report."""
    from tcplab.observe.procfs import sysctl

    sysctls = {name: sysctl(name) or "?" for name in SHOWN_SYSCTLS}
    h.progress(f"namespace net:[{os.stat('/proc/self/ns/net').st_ino}]: lo up, "
               + h.pairs_text(sysctls))
    venv = Path(args.venv)
    built = start_holder(sb, args)
    t_tw = built["time_wait_from"]
    h.progress(f"built in {built['build_s']:.1f} s ({args.established:,} held connections "
               f"in {built['established_s']:.1f} s, "
               f"{args.time_wait + args.other_time_wait:,} TIME_WAIT in "
               f"{built['time_wait_s']:.1f} s); the holder has {built['fds']:,} fds "
               f"(limit {built['fd_limit']:,})")
    deadline = time.monotonic() + 10  # until every socket is in a state that lasts
    while set(states := ss_states(args.port)) - STABLE_STATES and time.monotonic() <= deadline:
        time.sleep(0.1)
    unstable = {k: v for k, v in states.items() if k not in STABLE_STATES}
    if unstable:
        raise h.BenchError(f"sockets still in passing states after 10 s: {unstable}")
    tcplab = str(venv / "bin" / "tcplab")
    counts = {"port": compare_counts(tcplab, args.port),
              "other_port": compare_counts(tcplab, args.other_port),
              "all": compare_counts(tcplab, None)}
    if counts["port"]["total"] < args.min_sockets:
        raise h.BenchError(f"only {counts['port']['total']:,} sockets have port "
                           f"{args.port} (ss: {counts['port']['ss']}); at least "
                           f"{args.min_sockets:,} are needed: raise --time-wait or "
                           "--established")
    for key, c in counts.items():
        h.progress(f"counts ({key}): {'MATCH' if c['match'] else 'MISMATCH'} "
                   f"{c['total']:,} sockets {c['ss']}")
    cmds = {tool: cmd for tool, (_label, cmd) in tools(venv, args.port).items()}
    h.progress(f"warm-up ({_budget(t_tw, 'the warm-up'):.0f} s since the first TIME_WAIT)")
    for tool, cmd in cmds.items():
        run_tool(tool, cmd)
    runs: dict[str, dict[str, list[Any]]] = {
        t: {"wall_ms": [], "cpu_ms": [], "count": []} for t in cmds}
    for i in range(args.runs):
        _budget(t_tw, f"run {i + 1} of {args.runs}")
        line = []
        for tool in h.rotate(list(cmds), i):
            wall, cpu, n = run_tool(tool, cmds[tool])
            for k, v in (("wall_ms", wall), ("cpu_ms", cpu), ("count", n)):
                runs[tool][k].append(v)
            line.append(f"{tool} {wall:5.1f}/{cpu:5.1f}")
        h.progress(f"run {i + 1}/{args.runs} wall/cpu ms: " + "  ".join(line))
    _budget(t_tw, "the in-process timings")
    h.progress("in-process timings")
    inproc = h.last_json(h.measured(
        [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--_role", "inproc",
         "--port", str(args.port), "--samples", str(args.samples), "--runs", str(args.runs)], 300),
        "in-process timings")
    used = time.monotonic() - t_tw
    stable = ss_states(args.port) == counts["port"]["ss"]
    h.progress(f"done {used:.0f} s after the first TIME_WAIT; table unchanged: {stable}")
    return summarize(args, sysctls, built, counts, runs, inproc, stable, used)


def summarize(args: argparse.Namespace, sysctls: dict[str, str], built: dict[str, Any],
              counts: dict[str, Any], runs: dict[str, dict[str, list[Any]]],
              inproc: dict[str, Any], stable: bool, used: float) -> dict[str, Any]:
    expected = counts["port"]["total"]

    def x(tool: str, base: str, key: str) -> float | None:
        return h.paired(zip(runs[tool][key], runs[base][key], strict=True))

    rows = []
    for tool, (label, _cmd) in tools(Path(args.venv), args.port).items():
        r, ref = runs[tool], tool in REFERENCES
        rows.append({
            "tool": tool, "label": label,
            "wall_ms": h.median(r["wall_ms"]), "cpu_ms": h.median(r["cpu_ms"]),
            "ratio_vs_ss_wall": x(tool, "ss", "wall_ms"),
            "ratio_vs_ss_cpu": x(tool, "ss", "cpu_ms"),
            "counts": None if ref else sorted(set(r["count"])),
            "count_exact": None if ref else all(n == expected for n in r["count"]),
            "runs_wall_ms": r["wall_ms"], "runs_cpu_ms": r["cpu_ms"],
        })
    by = {t["tool"]: t for t in rows}
    ip = {**inproc["in_process"],
          "psutil_counts_match_ss": inproc["in_process"]["psutil_counts"] == counts["port"]["ss"],
          "sample_counts_match_ss": inproc["counts"] == counts["port"]["ss"]}
    sample = ip["sample_ms"]
    ps_sample = ip["psutil_ms"] / sample if sample > 0 else None
    wall, cpu = x("tcplab", "ss", "wall_ms"), x("tcplab", "ss", "cpu_ms")
    ps_wall, ps_cpu = x("psutil", "tcplab", "wall_ms"), x("psutil", "tcplab", "cpu_ms")
    goals = [
        h.goal("tcplab/ss wall <= 1.5", wall, wall is not None and wall <= 1.5),
        h.goal("tcplab/ss cpu <= 1.5", cpu, cpu is not None and cpu <= 1.5),
        h.goal("psutil/tcplab wall >= 8", ps_wall, ps_wall is not None and ps_wall >= 8),
        h.goal("psutil/tcplab cpu >= 8", ps_cpu, ps_cpu is not None and ps_cpu >= 8),
        h.goal("sample < 25 ms", sample, sample < 25),
        h.goal("(in-process) psutil/sample >= 8", ps_sample,
               ps_sample is not None and ps_sample >= 8),
        h.goal("tcplab counts == ss counts", None, all(c["match"] for c in counts.values())
               and bool(by["tcplab"]["count_exact"]) and bool(by["ss"]["count_exact"])),
    ]
    return {
        "benchmark": "states_vs_ss",
        "settings": {k: getattr(args, k) for k in (
            *HOLDER_ARGS, "runs", "samples", "min_sockets")},
        "cpus": os.cpu_count(),
        "namespace": {"sysctls": sysctls, "build_s": built["build_s"],
                      "holder_fds": built["fds"], "holder_fd_limit": built["fd_limit"],
                      "seconds_since_first_time_wait": used, "table_unchanged": stable},
        "install": {"venv": args.venv, "fresh_venv": args.fresh_venv, **inproc["install"],
                    "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")},
        "counts": counts, "tools": rows, "in_process": ip, "goals": goals,
        "problems": [f"counts, {k}: tcplab and ss differ: {c['diff']}"
                     for k, c in counts.items() if not c["match"]],
    }


def _states(d: dict[str, int]) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def print_table(res: dict[str, Any]) -> None:
    s, counts, inst = res["settings"], res["counts"], res["install"]
    print(f"tcplab states vs ss, in a private network namespace; medians of {s['runs']} "
          f"interleaved runs after a warm-up")
    print(f"  port {s['port']}: {counts['port']['total']:,} sockets "
          f"({_states(counts['port']['ss'])}); port {s['other_port']}: "
          f"{counts['other_port']['total']:,} ({_states(counts['other_port']['ss'])}); "
          f"{counts['all']['total']:,} TCP sockets in all")
    kind = {True: "EDITABLE install (imported from the source tree; --fresh-venv measures "
                  "a regular install)",
            False: "regular (non-editable) install", None: "not installed as a distribution"}
    print(f"  tcplab {inst['version']} from {inst['venv']}"
          f"{' (fresh, temporary)' if inst['fresh_venv'] else ''}: {kind[inst['editable']]}")
    if inst["PYTHONDONTWRITEBYTECODE"] and inst["editable"] is not False:
        print("  PYTHONDONTWRITEBYTECODE is set: modules imported from the source tree are "
              "compiled on every run (pip compiled the regular install's at install time)")
    print()
    print(f"{'tool':<36} {'wall ms':>8} {'cpu ms':>7} {'x ss wall':>9} {'x ss cpu':>8}  count")
    for t in res["tools"]:
        note = "" if t["count_exact"] is not False else "  (differs from ss)"
        if t["tool"] == "netstat":
            note += "  (grep: not exact in general)"
        n = "-" if t["counts"] is None else "/".join(f"{c:,}" for c in t["counts"])
        print(f"{t['label']:<36} {t['wall_ms']:>8.1f} {t['cpu_ms']:>7.1f} "
              f"{h.fmt(t['ratio_vs_ss_wall'], '.2f'):>9} "
              f"{h.fmt(t['ratio_vs_ss_cpu'], '.2f'):>8}  {n}{note}")
    ip = res["in_process"]
    print()
    print(f"in one process (median; {ip['samples']} samples, one SocketTable, "
          f"source {ip['source']}):")
    lo, hi = ip["sample_range_ms"]
    print(f"  SocketTable.count(P)          {ip['sample_ms']:7.2f} ms  (cpu "
          f"{ip['sample_cpu_ms']:.2f} ms: user {ip['sample_user_ms_mean']:.1f}, sys "
          f"{ip['sample_sys_ms_mean']:.1f}; range {lo:.2f}..{hi:.2f}; the first, with "
          f"SocketTable(): {ip['first_sample_ms']:.2f} ms)")
    print(f"  SocketTable.state_counts(P)   {ip['state_counts_ms']:7.2f} ms")
    print(f"  SocketTable.count() all ports {ip['count_all_ports_ms']:7.2f} ms")
    print(f"  import tcplab.observe.sockets {ip['import_ms']:7.2f} ms  (socket, json, argparse "
          "already imported: see the (ref) rows for the whole cost)")
    print(f"  psutil.net_connections('tcp') {ip['psutil_ms']:7.1f} ms  (cpu "
          f"{ip['psutil_cpu_ms']:.1f} ms; counts "
          f"{'equal' if ip['psutil_counts_match_ss'] else 'DIFFER from'} ss's)")
    if ip["warning"]:
        print(f"  warning: {ip['warning']}")
    print()
    for key, c in counts.items():
        where = {"port": f"port {s['port']}", "other_port": f"port {s['other_port']}",
                 "all": "all ports"}[key]
        diffs = ", ".join(f"{k} tcplab {a:,} ss {b:,}" for k, (a, b) in c["diff"].items())
        print(f"counts, {where}: " + ("MATCH (tcplab per state == ss per state)"
                                      if c["match"] else f"MISMATCH: {diffs}"))
    ns = res["namespace"]
    print(f"table unchanged during the measurements: {ns['table_unchanged']} "
          f"(done {ns['seconds_since_first_time_wait']:.0f} s after the first TIME_WAIT)")
    h.print_goals(res["goals"], 32, 7, "")


def make_venv(where: Path) -> Path:
    """A regular (non-editable) install of this checkout, built from a copy of it."""
    t0 = time.perf_counter()
    src, venv = where / "src-copy", where / "venv"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", "tests", "bench", "report"))
    for cmd in ([sys.executable, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", str(src)]):
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=600)
        if r.returncode:
            raise h.BenchError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.strip()}")
    shutil.rmtree(src)
    h.progress(f"fresh venv {venv}: pip install {ROOT} (regular) in "
               f"{time.perf_counter() - t0:.0f} s")
    return venv


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from tcplab.experiments.sandbox import Sandbox

    for tool in ("ss", "netstat"):
        if shutil.which(tool) is None:
            raise h.BenchError(f"{tool} is not installed (apt-get install iproute2 net-tools)")
    if args.fresh_venv:
        args.venv = str(make_venv(tmp))
    for name in ("tcplab", "python"):
        if not (Path(args.venv) / "bin" / name).exists():
            raise h.BenchError(f"{Path(args.venv) / 'bin' / name} does not exist: give --venv "
                               "a venv where tcplab is installed, or pass --fresh-venv")
    with Sandbox(SYSCTLS) as sb:
        join(sb)
        return inner_main(args, sb)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = h.parser("Whole-process and in-process time of 'tcplab states --port P --json' against "
                 "ss, netstat and psutil, on 20,000+ sockets in a private network namespace.",
                 go=False)
    add = p.add_argument
    add("--port", type=int, default=8080, help="the port P")
    add("--other-port", type=int, default=9090, help="a second port, so the filter matters")
    add("--time-wait", type=int, default=15_000, help="TIME_WAIT sockets with port P")
    add("--established", type=int, default=2_800,
        help="connections to P held open, 2 sockets and 2 fds each")
    add("--other-time-wait", type=int, default=3_000,
        help="TIME_WAIT sockets with the other port")
    add("--min-sockets", type=int, default=20_000, help="abort when fewer have port P")
    add("--runs", type=int, default=7, help="timed runs per tool")
    add("--samples", type=int, default=20, help="in-process samples of SocketTable.count")
    add("--venv", default=str(ROOT / ".venv"),
        help="the venv whose tcplab (console script) and python are measured")
    add("--fresh-venv", action="store_true",
        help="pip install this checkout (not editable) into a temporary venv, measure that")
    add("--_role", dest="role", default="measure", choices=("measure", "holder", "inproc"),
        help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (1 <= args.port <= 65535 and 1 <= args.other_port <= 65535):
        p.error("--port and --other-port must be ports (1-65535)")
    if args.port == args.other_port:
        p.error("--port and --other-port must differ")
    h.check(p, args, 0, "time_wait", "established", "other_time_wait", "min_sockets")
    h.check(p, args, 1, "runs", "samples")
    if args.role != "measure":
        return args
    planned = args.time_wait + 2 * args.established + 1
    if planned < args.min_sockets:
        p.error(f"{args.time_wait:,} TIME_WAIT + 2 x {args.established:,} ESTABLISHED + 1 "
                f"LISTEN = {planned:,} sockets with port {args.port}: fewer than "
                f"--min-sockets {args.min_sockets:,}")
    ports = args.time_wait + args.established + args.other_time_wait
    if ports > 60_000:
        p.error(f"{ports:,} client ports needed; the namespace has 64,512 (1024-65535): keep "
                "the sum of --time-wait, --established and --other-time-wait under 60,000")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and 2 * args.established + 100 > 0.9 * hard:
        p.error(f"--established {args.established:,} needs {2 * args.established:,} fds "
                f"in one process; the hard limit is {hard:,} (keep a 10 % margin)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role != "measure":
        return (holder_main if args.role == "holder" else inproc_main)(args)
    return h.run_main(lambda tmp: measure(args, tmp), "tcplab-bench-", args.json, print_table)


if __name__ == "__main__":
    sys.exit(main())
