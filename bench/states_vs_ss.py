"""``tcplab states --port P --json`` against ss, netstat and psutil, on 20,000+ sockets.

Run it as root (or as a user allowed to make user namespaces); about 10 s,
20 s more with ``--fresh-venv``::

    .venv/bin/python bench/states_vs_ss.py
    .venv/bin/python bench/states_vs_ss.py --fresh-venv          # a regular install
    .venv/bin/python bench/states_vs_ss.py --runs 9 --json

The host's network is never touched. The script re-executes itself under
``unshare -n`` (``unshare -Urn`` when not root) and everything below happens
in that private network namespace, which disappears with its last process:

* the namespace: ``lo`` up, ``net.ipv4.ip_local_port_range`` 1024 65535 and
  ``tcp_tw_reuse`` 0, written to /proc/sys/net from inside (per-namespace
  sysctls; the script checks that it is not in the host's namespace first);
* the sockets, built by one holder process (its fd soft limit raised to the
  hard limit): listeners on ``--port`` P (8080) and ``--other-port`` (9090);
  ``--established`` (2,800) connections to P held open, 2 sockets and 2 fds
  each; ``--time-wait`` (15,000) connections to P that the client closes
  first and the server second, leaving the client's socket in TIME_WAIT; and
  ``--other-time-wait`` (3,000) such connections to the other port, so that
  the port filter has something to filter out. With the defaults, 20,601
  sockets have port P and about 23,600 exist in all; fewer than
  ``--min-sockets`` (20,000) with port P aborts the run. All on 127.0.0.1.

TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN), so every measurement must start
within 55 s of the first TIME_WAIT socket (the defaults need about 6 s), or
the run stops with an error; the counts are checked before and after the
measurements to show that the table did not change in between.

What is measured, in the namespace (children inherit it):

* whole processes, wall time (``time.perf_counter`` around
  ``subprocess.run``) and CPU time (``getrusage(RUSAGE_CHILDREN)`` deltas:
  the tool and everything it waited for, e.g. sh, ss and wc), ``--runs`` (7)
  rounds after one warm-up round, interleaved: each round runs every tool,
  starting at the next tool in the list:

  - ``tcplab states --port P --json``, the console script of the install in
    ``--venv`` (default: this checkout's .venv, an editable install: its
    modules come from the source tree, through an import hook or a path
    entry, and with PYTHONDONTWRITEBYTECODE set they are compiled on every
    run; ``--fresh-venv`` makes a regular install of a copy of this checkout
    in a temporary venv, before entering the namespace, and removes it
    afterwards; the output says which kind was measured);
  - ``sh -c "ss -Htan '( sport = :P or dport = :P )' | wc -l"``;
  - ``sh -c "netstat -an | grep ':P ' | wc -l"`` (a text match, not exact in
    general: it is here for its time);
  - ``python -c "...psutil.net_connections(kind='tcp')..."`` filtered to
    port P, with the venv's python (psutil also walks every /proc/PID/fd of
    the host: the namespace has its own sockets, not its own processes);
  - two reference rows that read tcplab's time as start-up + imports +
    work: the venv's ``python -c pass``, and ``python -c "import
    tcplab.cli.main, tcplab.cli.states, tcplab.observe.sockets"``;

* in one process of the venv's python: ``SocketTable().count(P)``, one table
  reused for ``--samples`` (20) samples as ``--watch`` reuses it (the sample
  time, which decides whether --watch can refresh at 10 Hz),
  ``state_counts(P)`` (count plus folding to names), and
  ``psutil.net_connections(kind='tcp')`` (``--runs`` calls).

Ratios (``x ss``) are medians of per-round ratios, tool / ss of the same
round (a noisy neighbour slows both alike). Goals: tcplab/ss wall time at
most 1.5, psutil/tcplab at least 8 (both also shown for CPU time), the
in-process sample under 25 ms; and, for information, psutil in-process
against the sample.
Counts: tcplab's per-state counts must equal ss's exactly (``ss -Htan`` with
the same filter, state column, taken before and after tcplab's so that the
table is known to be still); for P, for the other port and for all sockets.
Every timed tcplab and ss run must also report the same total. Exit status:
0, also when a speed goal fails (this is a measurement, not a test); 1 when
the counts differ or the run could not be made; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: TIME_WAIT lasts 60 s; measure only within this many seconds of the first one.
BUDGET_S = 55.0
#: The namespace's sysctls (path under /proc/sys, value).
SYSCTLS = (
    ("net/ipv4/ip_local_port_range", "1024 65535"),
    ("net/ipv4/tcp_tw_reuse", "0"),
)
#: Read back for the record.
SHOWN_SYSCTLS = (*(name for name, _ in SYSCTLS), "net/ipv4/tcp_max_tw_buckets")
#: ss's state names to netstat's (the names tcplab and psutil use).
SS_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
STABLE_STATES = {"ESTABLISHED", "TIME_WAIT", "LISTEN"}
TOOLS = ("tcplab", "ss", "netstat", "psutil")
#: Reference rows, to read tcplab's time as start-up + imports + work: the venv's
#: python doing nothing, and importing what ``tcplab states`` imports.
REFERENCES = ("python", "imports")
STATES_IMPORTS = "import tcplab.cli.main, tcplab.cli.states, tcplab.observe.sockets"
LABELS = {
    "tcplab": "tcplab states --port {P} --json",
    "ss": "ss -Htan '(sport|dport {P})' | wc -l",
    "netstat": "netstat -an | grep ':{P} ' | wc -l",
    "psutil": "python: psutil.net_connections",
    "python": "(ref) python -c pass",
    "imports": "(ref) python -c 'import tcplab.cli...'",
}
PSUTIL_CODE = """\
import json, sys
import psutil
port = int(sys.argv[1])
counts = {}
for c in psutil.net_connections(kind="tcp"):
    if (c.laddr and c.laddr.port == port) or (c.raddr and c.raddr.port == port):
        counts[c.status] = counts.get(c.status, 0) + 1
print(json.dumps(counts))
"""


class BenchError(Exception):
    pass


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _hint_sockets(args: argparse.Namespace) -> str:
    return (f"{args.time_wait:,} TIME_WAIT + 2 x {args.established:,} ESTABLISHED + 1 LISTEN "
            f"= {planned_sockets(args):,}")


def planned_sockets(args: argparse.Namespace) -> int:
    return int(args.time_wait + 2 * args.established + 1)


# --- the holder: builds the sockets and holds the ESTABLISHED ones ---------------------


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen(1024)
    return s


def _pair(listener: socket.socket, port: int) -> tuple[socket.socket, socket.socket]:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.connect((HOST, port))
        server, _ = listener.accept()
    except BaseException:
        client.close()
        raise
    return client, server


def _time_waits(listener: socket.socket, port: int, n: int) -> None:
    for _ in range(n):
        client, server = _pair(listener, port)
        client.close()  # the active closer: its socket ends in TIME_WAIT
        server.close()


def holder_main(args: argparse.Namespace) -> int:
    """Build the sockets, say so on stdout (one JSON line), hold them until stdin closes."""
    socks: list[socket.socket] = []
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        report: dict[str, Any]
        try:
            t0 = time.monotonic()
            main_l, other_l = _listener(args.port), _listener(args.other_port)
            socks += [main_l, other_l]
            for _ in range(args.established):
                socks.extend(_pair(main_l, args.port))
            t_tw = time.monotonic()
            _time_waits(main_l, args.port, args.time_wait)
            _time_waits(other_l, args.other_port, args.other_time_wait)
            t1 = time.monotonic()
            report = {"ok": True, "time_wait_from": t_tw, "build_s": t1 - t0,
                      "established_s": t_tw - t0, "time_wait_s": t1 - t_tw,
                      "fds": len(socks), "fd_limit": hard}
        except OSError as exc:
            report = {"ok": False, "error": f"building the sockets: {exc} "
                      f"(after {len(socks)} held sockets)"}
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        sys.stdin.buffer.read()  # until the measuring process closes our stdin
    except KeyboardInterrupt:
        return 130
    finally:
        for s in socks:
            s.close()
    return 0


# --- in one process: the sample and psutil ---------------------------------------------


def inproc_main(args: argparse.Namespace) -> int:
    """Run with the venv's python: in-process timings as one JSON line."""
    pc, cpu = time.perf_counter, time.process_time
    t = pc()
    from tcplab.observe.sockets import SocketTable

    import_s = pc() - t

    import tcplab

    out: dict[str, Any] = {"import_ms": _ms(import_s), "tcplab_file": tcplab.__file__,
                           "version": tcplab.__version__, "python": sys.executable}
    try:
        from importlib.metadata import distribution

        direct = json.loads(distribution("tcplab").read_text("direct_url.json") or "{}")
        out["editable"] = bool(direct.get("dir_info", {}).get("editable", False))
    except Exception as exc:  # not installed as a distribution: run from a source tree
        out["editable"] = None
        out["editable_note"] = f"{type(exc).__name__}: {exc}"
    port = args.port

    def timed(fn: Any, n: int) -> tuple[list[float], list[float], Any]:
        walls, cpus, result = [], [], None
        for _ in range(n):
            t0, c0 = pc(), cpu()
            result = fn()
            c1, t1 = cpu(), pc()
            walls.append(_ms(t1 - t0))
            cpus.append(_ms(c1 - c0))
        return walls, cpus, result

    t = pc()
    table = SocketTable()
    first = table.count(port)
    out["first_sample_ms"] = _ms(pc() - t)  # SocketTable() and one count
    out["source"] = table.source
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        out["sample_ms"], out["sample_cpu_ms"], counts = timed(
            lambda: table.count(port), args.samples)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        # user and sys per sample, as means (getrusage splits CPU time by ticks)
        out["sample_user_ms"] = _ms(r1.ru_utime - r0.ru_utime) / args.samples
        out["sample_sys_ms"] = _ms(r1.ru_stime - r0.ru_stime) / args.samples
        out["state_counts_ms"], out["state_counts_cpu_ms"], named = timed(
            lambda: table.state_counts(port), args.samples)
        out["count_all_ms"], out["count_all_cpu_ms"], _ = timed(
            lambda: table.count(0), args.samples)
    finally:
        table.close()
    if counts != first:
        out["warning"] = "count(P) changed between samples"
    out["counts"] = {k: v for k, v in named.states.items() if v}

    import psutil

    def net_connections() -> dict[str, int]:
        c: Counter[str] = Counter()
        for conn in psutil.net_connections(kind="tcp"):
            if (conn.laddr and conn.laddr.port == port) or (conn.raddr and
                                                            conn.raddr.port == port):
                c[conn.status] += 1
        return dict(c)

    out["psutil_ms"], out["psutil_cpu_ms"], out["psutil_counts"] = timed(
        net_connections, args.runs)
    out["psutil_version"] = psutil.__version__
    print(json.dumps(out))
    return 0


# --- the measuring process, inside the namespace ----------------------------------------


def _netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def setup_namespace(host_netns: int) -> dict[str, str]:
    if _netns_inode() == host_netns:
        raise BenchError("refusing to change sysctls: this is the host's network namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30,
                   stdin=subprocess.DEVNULL)
    for name, value in SYSCTLS:
        with open(f"/proc/sys/{name}", "w") as f:
            f.write(value + "\n")
    shown = {}
    for name in SHOWN_SYSCTLS:
        with open(f"/proc/sys/{name}") as f:
            shown[name.replace("/", ".")] = " ".join(f.read().split())
    return shown


def ss_states(port: int | None) -> dict[str, int]:
    """Per-state counts from ``ss -Htan`` (with the tools' port filter when given)."""
    cmd = ["ss", "-Htan"]
    if port is not None:
        cmd.append(f"( sport = :{port} or dport = :{port} )")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise BenchError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    c: Counter[str] = Counter()
    for line in r.stdout.splitlines():
        if line.strip():
            raw = line.split(None, 1)[0]
            c[SS_STATES.get(raw, raw)] += 1
    return dict(c)


def tcplab_states(tcplab: str, port: int | None) -> dict[str, int]:
    cmd = [tcplab, "states", "--json"] + ([] if port is None else ["--port", str(port)])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise BenchError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return {k: v for k, v in json.loads(r.stdout)["states"].items() if v}


def _diff(a: dict[str, int], b: dict[str, int]) -> dict[str, list[int]]:
    return {k: [a.get(k, 0), b.get(k, 0)] for k in sorted(set(a) | set(b))
            if a.get(k, 0) != b.get(k, 0)}


def compare_counts(tcplab: str, port: int | None) -> dict[str, Any]:
    """tcplab against ss, with ss taken before and after: retried until ss agrees with itself."""
    for _ in range(5):
        before = ss_states(port)
        mine = tcplab_states(tcplab, port)
        after = ss_states(port)
        if before == after:
            diff = _diff(mine, after)
            return {"match": not diff, "tcplab": mine, "ss": after, "diff": diff,
                    "total": sum(after.values())}
        time.sleep(0.2)
    raise BenchError(f"the socket table keeps changing (port {port}): ss {before} then {after}")


def settle(port: int, timeout: float = 10.0) -> dict[str, int]:
    """Wait until every socket with ``port`` is in a state that lasts (no FIN_WAIT etc.)."""
    deadline = time.monotonic() + timeout
    while True:
        states = ss_states(port)
        if set(states) <= STABLE_STATES or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


class Holder:
    """The holder process; ``close()`` reaps it, always."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_role", "holder",
               "--port", str(args.port), "--other-port", str(args.other_port),
               "--time-wait", str(args.time_wait), "--established", str(args.established),
               "--other-time-wait", str(args.other_time_wait)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ready(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            code = self.proc.poll()
            raise BenchError("the holder process " + (
                f"did not report in {timeout:.0f} s" if code is None else f"died (exit {code})"))
        report: dict[str, Any] = json.loads(line)
        if not report.get("ok"):
            raise BenchError(str(report.get("error")))
        return report

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on a second Ctrl-C while waiting
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _commands(args: argparse.Namespace) -> dict[str, list[str]]:
    venv = Path(args.venv)
    p = args.port
    return {
        "tcplab": [str(venv / "bin" / "tcplab"), "states", "--port", str(p), "--json"],
        "ss": ["sh", "-c", f"ss -Htan '( sport = :{p} or dport = :{p} )' | wc -l"],
        "netstat": ["sh", "-c", f"netstat -an | grep ':{p} ' | wc -l"],
        "psutil": [str(venv / "bin" / "python"), "-c", PSUTIL_CODE, str(p)],
        "python": [str(venv / "bin" / "python"), "-c", "pass"],
        "imports": [str(venv / "bin" / "python"), "-c", STATES_IMPORTS],
    }


def _count(tool: str, stdout: str) -> int | None:
    if tool in REFERENCES:
        return None
    if tool == "tcplab":
        return int(json.loads(stdout)["total"])
    if tool == "psutil":
        return sum(int(n) for n in json.loads(stdout).values())
    return int(stdout.strip())


def run_tool(tool: str, cmd: list[str]) -> tuple[float, float, int | None]:
    """Wall ms, CPU ms (the child and what it waited for) and the count it printed."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise BenchError(f"{tool}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return _ms(t1 - t0), _ms(cpu), _count(tool, r.stdout)


def _budget(t_tw: float, what: str) -> float:
    used = time.monotonic() - t_tw
    if used > BUDGET_S:
        raise BenchError(f"{used:.0f} s have passed since the first TIME_WAIT socket was made "
                         f"(they last 60 s) and {what} is still to do: use fewer --runs, "
                         "--samples or sockets")
    return used


def _paired(a: list[float], b: list[float]) -> float | None:
    ratios = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    return statistics.median(ratios) if ratios else None


def inner_main(args: argparse.Namespace) -> int:
    """In the private namespace: build, check, measure, report."""
    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    sysctls = setup_namespace(args.host_netns)
    progress(f"  namespace net:[{_netns_inode()}]: lo up, "
             + ", ".join(f"{k} = {v}" for k, v in sysctls.items()))
    tcplab = str(Path(args.venv) / "bin" / "tcplab")
    holder = Holder(args)
    try:
        built = holder.ready()
        t_tw = built["time_wait_from"]
        progress(f"  built in {built['build_s']:.1f} s ({args.established:,} held connections "
                 f"in {built['established_s']:.1f} s, "
                 f"{args.time_wait + args.other_time_wait:,} TIME_WAIT in "
                 f"{built['time_wait_s']:.1f} s); the holder has {built['fds']:,} fds "
                 f"(limit {built['fd_limit']:,})")
        settled = settle(args.port)
        unstable = {k: v for k, v in settled.items() if k not in STABLE_STATES}
        if unstable:
            raise BenchError(f"sockets still in passing states after 10 s: {unstable}")
        counts = {
            "port": compare_counts(tcplab, args.port),
            "other_port": compare_counts(tcplab, args.other_port),
            "all": compare_counts(tcplab, None),
        }
        n_port = counts["port"]["total"]
        if n_port < args.min_sockets:
            raise BenchError(f"only {n_port:,} sockets have port {args.port} "
                             f"(ss: {counts['port']['ss']}); at least {args.min_sockets:,} "
                             "are needed: raise --time-wait or --established")
        for key, c in counts.items():
            progress(f"  counts ({key}): {'MATCH' if c['match'] else 'MISMATCH'} "
                     f"{c['total']:,} sockets {c['ss']}")
        cmds = _commands(args)
        progress(f"  warm-up ({_budget(t_tw, 'the warm-up'):.0f} s since the first TIME_WAIT)")
        timed = TOOLS + REFERENCES
        for tool in timed:
            run_tool(tool, cmds[tool])
        runs: dict[str, dict[str, list[Any]]] = {
            t: {"wall_ms": [], "cpu_ms": [], "count": []} for t in timed}
        for i in range(args.runs):
            _budget(t_tw, f"run {i + 1} of {args.runs}")
            order = timed[i % len(timed):] + timed[: i % len(timed)]
            line = []
            for tool in order:
                wall, cpu, n = run_tool(tool, cmds[tool])
                runs[tool]["wall_ms"].append(wall)
                runs[tool]["cpu_ms"].append(cpu)
                runs[tool]["count"].append(n)
                line.append(f"{tool} {wall:5.1f}/{cpu:5.1f}")
            progress(f"  run {i + 1}/{args.runs} wall/cpu ms: " + "  ".join(line))
        _budget(t_tw, "the in-process timings")
        progress("  in-process timings")
        r = subprocess.run(
            [str(Path(args.venv) / "bin" / "python"), str(Path(__file__).resolve()),
             "--_role", "inproc", "--port", str(args.port), "--samples", str(args.samples),
             "--runs", str(args.runs)],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise BenchError(f"in-process timings: exit {r.returncode}: {r.stderr.strip()}")
        inproc: dict[str, Any] = json.loads(r.stdout)
        used = time.monotonic() - t_tw
        final = ss_states(args.port)
        stable = final == counts["port"]["ss"]
        progress(f"  done {used:.0f} s after the first TIME_WAIT; table unchanged: {stable}")
    finally:
        holder.close()
    result = summarize(args, sysctls, built, counts, runs, inproc, stable, used)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if all(c["match"] for c in counts.values()) else 1


def summarize(args: argparse.Namespace, sysctls: dict[str, str], built: dict[str, Any],
              counts: dict[str, Any], runs: dict[str, dict[str, list[Any]]],
              inproc: dict[str, Any], stable: bool, used: float) -> dict[str, Any]:
    expected = counts["port"]["total"]
    tools = []
    for tool in TOOLS + REFERENCES:
        r = runs[tool]
        tools.append({
            "tool": tool,
            "label": LABELS[tool].format(P=args.port),
            "wall_ms": statistics.median(r["wall_ms"]),
            "cpu_ms": statistics.median(r["cpu_ms"]),
            "ratio_vs_ss_wall": _paired(r["wall_ms"], runs["ss"]["wall_ms"]),
            "ratio_vs_ss_cpu": _paired(r["cpu_ms"], runs["ss"]["cpu_ms"]),
            "counts": None if tool in REFERENCES else sorted(set(r["count"])),
            "count_exact": None if tool in REFERENCES else all(n == expected
                                                                for n in r["count"]),
            "runs_wall_ms": r["wall_ms"],
            "runs_cpu_ms": r["cpu_ms"],
        })
    by = {t["tool"]: t for t in tools}
    sample = statistics.median(inproc["sample_ms"])
    in_process = {
        "sample_ms": sample,
        "sample_cpu_ms": statistics.median(inproc["sample_cpu_ms"]),
        "sample_range_ms": [min(inproc["sample_ms"]), max(inproc["sample_ms"])],
        "sample_user_ms_mean": inproc["sample_user_ms"],
        "sample_sys_ms_mean": inproc["sample_sys_ms"],
        "first_sample_ms": inproc["first_sample_ms"],
        "state_counts_ms": statistics.median(inproc["state_counts_ms"]),
        "count_all_ports_ms": statistics.median(inproc["count_all_ms"]),
        "import_ms": inproc["import_ms"],
        "psutil_ms": statistics.median(inproc["psutil_ms"]),
        "psutil_cpu_ms": statistics.median(inproc["psutil_cpu_ms"]),
        "psutil_counts": inproc["psutil_counts"],
        "psutil_counts_match_ss": inproc["psutil_counts"] == counts["port"]["ss"],
        "sample_counts_match_ss": inproc["counts"] == counts["port"]["ss"],
        "samples": args.samples,
        "source": inproc["source"],
        "warning": inproc.get("warning"),
    }
    tl_ss_wall = by["tcplab"]["ratio_vs_ss_wall"]
    tl_ss_cpu = by["tcplab"]["ratio_vs_ss_cpu"]
    ps_tl_wall = _paired(runs["psutil"]["wall_ms"], runs["tcplab"]["wall_ms"])
    ps_tl_cpu = _paired(runs["psutil"]["cpu_ms"], runs["tcplab"]["cpu_ms"])
    ps_sample = in_process["psutil_ms"] / sample if sample > 0 else None
    goals = [
        {"goal": "tcplab/ss wall <= 1.5", "value": tl_ss_wall,
         "pass": tl_ss_wall is not None and tl_ss_wall <= 1.5},
        {"goal": "tcplab/ss cpu <= 1.5", "value": tl_ss_cpu,
         "pass": tl_ss_cpu is not None and tl_ss_cpu <= 1.5},
        {"goal": "psutil/tcplab wall >= 8", "value": ps_tl_wall,
         "pass": ps_tl_wall is not None and ps_tl_wall >= 8},
        {"goal": "psutil/tcplab cpu >= 8", "value": ps_tl_cpu,
         "pass": ps_tl_cpu is not None and ps_tl_cpu >= 8},
        {"goal": "sample < 25 ms", "value": sample, "pass": sample < 25},
        {"goal": "(in-process) psutil/sample >= 8", "value": ps_sample,
         "pass": ps_sample is not None and ps_sample >= 8},
        {"goal": "tcplab counts == ss counts", "value": None,
         "pass": all(c["match"] for c in counts.values())
         and by["tcplab"]["count_exact"] and by["ss"]["count_exact"]},
    ]
    editable = inproc.get("editable")
    return {
        "benchmark": "states_vs_ss",
        "settings": {k: getattr(args, k) for k in (
            "port", "other_port", "time_wait", "established", "other_time_wait", "runs",
            "samples", "min_sockets")},
        "cpus": os.cpu_count(),
        "namespace": {"sysctls": sysctls, "build_s": built["build_s"],
                      "holder_fds": built["fds"], "holder_fd_limit": built["fd_limit"],
                      "seconds_since_first_time_wait": used, "table_unchanged": stable},
        "install": {"venv": args.venv, "fresh_venv": args.fresh, "editable": editable,
                    "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
                    "tcplab_file": inproc["tcplab_file"], "version": inproc["version"],
                    "python": inproc["python"], "psutil": inproc["psutil_version"]},
        "counts": counts,
        "tools": tools,
        "in_process": in_process,
        "goals": goals,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


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
              f"{_fmt(t['ratio_vs_ss_wall'], '.2f'):>9} {_fmt(t['ratio_vs_ss_cpu'], '.2f'):>8}"
              f"  {n}{note}")
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
        if c["match"]:
            print(f"counts, {where}: MATCH (tcplab per state == ss per state)")
        else:
            diffs = ", ".join(f"{k} tcplab {a:,} ss {b:,}" for k, (a, b) in c["diff"].items())
            print(f"counts, {where}: MISMATCH: {diffs}")
    ns = res["namespace"]
    print(f"table unchanged during the measurements: {ns['table_unchanged']} "
          f"(done {ns['seconds_since_first_time_wait']:.0f} s after the first TIME_WAIT)")
    print()
    print("goals:")
    for g in res["goals"]:
        print(f"  {g['goal']:<32} {_fmt(g['value'], '.2f'):>7}  "
              f"{'pass' if g['pass'] else 'FAIL'}")


# --- the host side: the fresh venv, then the namespace ---------------------------------


def make_venv(where: Path, quiet: bool) -> float:
    """A regular (non-editable) install of this checkout, built from a copy of it."""
    t0 = time.perf_counter()
    src = where / "src-copy"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", "tests", "bench", "report"))
    venv = where / "venv"
    for cmd in ([sys.executable, "-m", "venv", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", str(src)]):
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=600)
        if r.returncode:
            raise BenchError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr.strip()}")
    shutil.rmtree(src)
    if not quiet:
        print(f"  fresh venv {venv}: pip install {ROOT} (regular) in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return time.perf_counter() - t0


def outer_main(args: argparse.Namespace, argv: list[str]) -> int:
    unshare = shutil.which("unshare")
    for tool in ("unshare", "ip", "ss", "netstat"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (apt-get install iproute2 net-tools "
                             "util-linux)")
    assert unshare is not None
    tmp: Path | None = None
    try:
        venv = Path(args.venv)
        if args.fresh_venv:
            tmp = Path(tempfile.mkdtemp(prefix="tcplab-bench-"))
            make_venv(tmp, args.quiet)
            venv = tmp / "venv"
        for name in ("tcplab", "python"):
            if not (venv / "bin" / name).exists():
                raise BenchError(f"{venv / 'bin' / name} does not exist: give --venv a venv "
                                 f"where tcplab is installed, or pass --fresh-venv")
        ns = ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]
        cmd = [unshare, *ns, sys.executable, str(Path(__file__).resolve()), *argv,
               "--venv", str(venv), "--_role", "inner", "--_host-netns", str(_netns_inode())]
        if args.fresh_venv:
            cmd.append("--_fresh")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The namespace's processes got the Ctrl-C too and are cleaning up.
            try:
                proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
            print("interrupted: every child has been reaped", file=sys.stderr)
            return 130
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Whole-process and in-process time of 'tcplab states --port P --json' "
        "against ss, netstat and psutil, on 20,000+ sockets in a private network namespace.",
    )
    p.add_argument("--port", type=int, default=8080, help="the port P (default 8080)")
    p.add_argument("--other-port", type=int, default=9090,
                   help="a second port, so the filter matters (default 9090)")
    p.add_argument("--time-wait", type=int, default=15_000,
                   help="TIME_WAIT sockets with port P (default 15,000)")
    p.add_argument("--established", type=int, default=2_800,
                   help="connections to P held open, 2 sockets and 2 fds each (default 2,800)")
    p.add_argument("--other-time-wait", type=int, default=3_000,
                   help="TIME_WAIT sockets with the other port (default 3,000)")
    p.add_argument("--min-sockets", type=int, default=20_000,
                   help="abort when fewer sockets have port P (default 20,000)")
    p.add_argument("--runs", type=int, default=7, help="timed runs per tool (default 7)")
    p.add_argument("--samples", type=int, default=20,
                   help="in-process samples of SocketTable.count (default 20)")
    p.add_argument("--venv", default=str(ROOT / ".venv"),
                   help="the venv whose tcplab (console script) and python are measured "
                   "(default: this checkout's .venv)")
    p.add_argument("--fresh-venv", action="store_true",
                   help="pip install this checkout (not editable) into a temporary venv "
                   "and measure that")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--_role", default="outer", choices=("outer", "inner", "holder", "inproc"),
                   help=argparse.SUPPRESS)
    p.add_argument("--_host-netns", dest="host_netns", type=int, default=0,
                   help=argparse.SUPPRESS)
    p.add_argument("--_fresh", dest="fresh", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.role = args._role
    for name in ("port", "other_port"):
        if not 1 <= getattr(args, name) <= 65535:
            p.error(f"--{name.replace('_', '-')} must be a port (1-65535)")
    if args.port == args.other_port:
        p.error("--port and --other-port must differ")
    for name in ("time_wait", "established", "other_time_wait", "min_sockets"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    for name in ("runs", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.role in ("outer", "inner"):
        if planned_sockets(args) < args.min_sockets:
            p.error(f"{_hint_sockets(args)} sockets with port {args.port}: fewer than "
                    f"--min-sockets {args.min_sockets:,}")
        ports = args.time_wait + args.established + args.other_time_wait
        if ports > 60_000:
            p.error(f"{ports:,} client ports needed; the namespace has 64,512 (1024-65535): "
                    "keep the sum of --time-wait, --established and --other-time-wait "
                    "under 60,000")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and 2 * args.established + 100 > 0.9 * hard:
            p.error(f"--established {args.established:,} needs {2 * args.established:,} fds "
                    f"in one process; the hard limit is {hard:,} (keep a 10 % margin)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.role == "holder":
        return holder_main(args)
    if args.role == "inproc":
        return inproc_main(args)
    try:
        if args.role == "inner":
            return inner_main(args)
        return outer_main(args, argv)
    except KeyboardInterrupt:
        if args.role == "inner":
            print("interrupted: sockets closed, children reaped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
