"""What every bench shares: medians, paired ratios, formatting, the Go peers, measured
children, servers in a sandbox and the ping-pong load (bench/README.md, "How the benches
measure"). ``python bench/harness.py --pingpong SPEC`` is the load generator's child.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PEERS = Path(__file__).resolve().parent / "peers"
PORT = 8080
DEFAULT_MODEL = "uvloop"


class BenchError(Exception):
    pass


# --- numbers, arguments, printing --------------------------------------------------------


def median(xs: Iterable[float]) -> float | None:
    v = list(xs)
    return statistics.median(v) if v else None


def medians(rows: Sequence[Any], **fields: str) -> dict[str, float | None]:
    """{key: the median of attribute ``field`` over ``rows``} for each key=field."""
    return {k: median(getattr(r, f) for r in rows) for k, f in fields.items()}


def paired(pairs: Iterable[tuple[float, float]]) -> float | None:
    """Median of a / b over pairs from the same round; pairs with b <= 0 are left out."""
    return median(a / b for a, b in pairs if b > 0)


def by_round(rows: Sequence[T], base: Sequence[T], key: Callable[[T], Any],
             value: Callable[[T], float]) -> float | None:
    """``paired`` over the rows of ``rows`` and ``base`` that share ``key`` (their round)."""
    b = {key(r): r for r in base}
    return paired((value(r), value(b[key(r)])) for r in rows if key(r) in b)


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def size_text(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def pairs_text(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in d.items())


def rotate(items: Sequence[T], i: int) -> list[T]:
    """Round i's order: interleaved rounds, each starting at the next item."""
    k = i % len(items)
    return [*items[k:], *items[:k]]


def progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def csv_ints(text: str) -> list[int]:
    try:
        vals = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}"
                                         ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError("every value must be at least 1")
    return vals


def parser(description: str, go: bool = True) -> argparse.ArgumentParser:
    """A bench's parser: help shows each default; --json, and --go for the Go peers."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    if go:
        p.add_argument("--go", metavar="PATH", default="go", help="the go tool")
    return p


def check(p: argparse.ArgumentParser, args: argparse.Namespace, least: float,
          *names: str) -> None:
    """p.error unless every option ``names`` is at least ``least``."""
    for name in names:
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least:g}")


def run_main(body: Callable[[Path], dict[str, Any]], prefix: str, as_json: bool,
             report: Callable[[dict[str, Any]], None]) -> int:
    """``body`` with a temporary directory (removed after) under the package's Ctrl-C rules
    (tcplab/interrupts.py); its result printed as JSON or by ``report``. Exit 1 on
    BenchError or "problems", 130 on Ctrl-C (the context managers reap every child)."""
    from tcplab.interrupts import install

    restore = install()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        res = body(tmp)
    except KeyboardInterrupt:
        print("interrupted: every child has been reaped, the namespaces are gone",
              file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        restore()
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        report(res)
    return 1 if res.get("problems") else 0


def goal(text: str, value: float | None, ok: bool, spec: str | None = None,
         **extra: Any) -> dict[str, Any]:
    """One goal for ``print_goals`` and the JSON: value printed with ``spec`` (.2f)."""
    return {"goal": text, **extra, "value": value, **({"fmt": spec} if spec else {}),
            "pass": ok}


def print_goals(goals: list[dict[str, Any]], width: int, vwidth: int, none: str) -> None:
    print()
    print("goals:")
    if not goals:
        print(f"  {none}")
    for g in goals:
        value = fmt(g["value"], g.get("fmt", ".2f"))
        print(f"  {g['goal']:<{width}} {value:>{vwidth}}  {'pass' if g['pass'] else 'FAIL'}")


# --- the Go peers in bench/peers ----------------------------------------------------------

HOWTO_GO = ("install Go: apt-get install golang-go (Debian/Ubuntu), or https://go.dev/dl/, "
            "or pass --go PATH")


def build_go(requested: str | None, tmp: Path, name: str, target: str
             ) -> tuple[str | None, dict[str, Any]]:
    """``go build -o TMP/NAME TARGET`` in bench/peers, nothing downloaded, with
    tcplab's Go builder (experiments/gopeer.py: go_env, go_version, go_build): (the
    binary, or None when go is missing and the Go rows are skipped; facts to print)."""
    from tcplab.experiments import gopeer

    go = shutil.which(requested or "go")
    if go is None and requested not in (None, "go"):
        raise BenchError(f"--go {requested}: not found or not executable")
    if go is None:
        progress(f"note: go is not on PATH: the Go rows are skipped; to run them, {HOWTO_GO}")
        return None, {"skipped": f"go is not on PATH; to run the Go rows, {HOWTO_GO}"}
    home = os.environ.get("HOME", "")
    # Go's own build cache under HOME when it is writable (warm across runs), else in tmp.
    usable = bool(home and os.path.isdir(home) and os.access(home, os.W_OK))
    env = gopeer.go_env(None if usable else tmp)
    try:
        version = gopeer.go_version(go, PEERS, env)
        took = gopeer.go_build(go, PEERS, target, tmp / name, env, timeout=600)
    except gopeer.GoUnavailable as e:
        raise BenchError(str(e)) from None
    info = {"version": version, "build_s": took, "gocache": env.get("GOCACHE", "(default)"),
            "gomaxprocs": os.environ.get("GOMAXPROCS") or os.cpu_count()}
    progress(f"built {name} with {version} in {took:.1f} s")
    return str(tmp / name), info


def go_line(go: dict[str, Any], cpus: int | None, what: str) -> str:
    if go.get("skipped"):
        return f"  Go: skipped: {go['skipped']}"
    return (f"  Go: {go['version']}, GOMAXPROCS {go['gomaxprocs']} ({cpus} cpus); "
            f"{what} built in {go['build_s']:.1f} s into a temporary directory")


# --- a measured child, a server's CPU time, the machine's -------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """A child run to its end; CPU times from wait4(): its own and its waited children's."""

    out: str
    err: str
    code: int
    wall_s: float  # spawn to exit
    user_s: float
    sys_s: float
    csw: int  # context switches, voluntary + involuntary


def measured(cmd: Sequence[str], timeout: float, popen: Callable[..., Any] = subprocess.Popen
             ) -> Measured:
    """Run ``cmd`` (``popen``: Sandbox.popen runs it in a namespace), reap it with wait4();
    killed after ``timeout`` s."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        fd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            done = bool(poller.poll(timeout * 1000))
        except BaseException:  # Ctrl-C: a child not in a Sandbox is ours to stop and reap
            proc.kill()
            proc.wait()
            raise
        finally:
            os.close(fd)
        if not done:
            proc.kill()
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if not done:
            raise BenchError(f"{shlex.join(cmd[:4])} did not finish in {timeout:.0f} s: killed")
        out.seek(0)
        err.seek(0)
        return Measured(out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        proc.returncode, wall, ru.ru_utime, ru.ru_stime,
                        ru.ru_nvcsw + ru.ru_nivcsw)


def last_json(m: Measured, what: str) -> dict[str, Any]:
    """The JSON object on the last line of a child's stdout; BenchError when it failed."""
    if m.code != 0:
        raise BenchError(f"{what}: exit {m.code}: {m.err.strip()[-500:]}")
    try:
        res: dict[str, Any] = json.loads(m.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"{what}: no JSON line in {m.out[-300:]!r}") from None
    return res


def holder_report(proc: Any, timeout: float, what: str = "the holder process"
                  ) -> dict[str, Any]:
    """The one JSON line a holder child prints when its sockets are in place
    ({"ok": true, ...} or {"ok": false, "error": ...}); BenchError when it does
    not come within ``timeout`` seconds, or the child died, or it says no."""
    import json
    import select

    r, _, _ = select.select([proc.stdout], [], [], max(0.0, timeout))
    line = proc.stdout.readline() if r else b""
    if not line:
        code = proc.poll()
        raise BenchError(f"{what} " + (
            f"did not report in {timeout:.0f} s" if code is None else f"died (exit {code})"))
    report: dict[str, Any] = json.loads(line)
    if not report.get("ok"):
        raise BenchError(str(report.get("error")))
    return report


def machine_busy() -> float:
    """Seconds every CPU has been busy (/proc/stat "cpu" but idle and iowait), via psutil:
    tcplab/observe/procfs.py has no machine-wide reader."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


#: Read at each mark (the namespace's /proc/net/snmp and netstat): retransmitted segments,
#: tail-loss probes, D-SACKs received (a spurious retransmission), RTOs.
TCP_COUNTERS = {"Tcp": ("RetransSegs",),
                "TcpExt": ("TCPLossProbes", "TCPDSACKRecv", "TCPTimeouts")}


def tcp_counters() -> dict[str, int]:
    from tcplab.kernel.procfs import parse_netstat
    from tcplab.observe.procfs import read_text

    found: dict[str, int] = {}
    for path in ("net/snmp", "net/netstat"):
        table = parse_netstat(read_text(path))
        for kind, names in TCP_COUNTERS.items():
            found.update({n: table[kind][n] for n in names if n in table.get(kind, {})})
    return found


def sum_tcp(rows: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for tcp in rows:
        for k, v in tcp.items():
            total[k] = total.get(k, 0) + v
    return total


# --- servers in a sandbox -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """One running server: its pid, and stop() -> its totals (None if it printed none)."""

    pid: int
    stop: Callable[[], dict[str, Any] | None]


@contextlib.contextmanager
def serving(sb: Any, key: str, go_binary: str | None, extra: Sequence[str] = ()
            ) -> Iterator[Served]:
    """``key`` "go": bench/peers/echo.go (totals: the JSON line it prints on SIGTERM); else
    ``tcplab server --model KEY EXTRA``; on 127.0.0.1:PORT inside ``sb``."""
    from tcplab.errors import TcplabError
    from tcplab.experiments.children import ForeignServer, ServerProcess

    if key == "go":
        assert go_binary is not None
        try:
            fs = ForeignServer(sb, f"{shlex.quote(go_binary)} -addr 127.0.0.1:{{port}}", PORT)
        except TcplabError as exc:
            raise BenchError(f"go echo server: {exc}") from None

        def stop_go() -> dict[str, Any] | None:
            fs.stop()
            for _t, line in fs.log:
                with contextlib.suppress(ValueError):
                    if line.startswith("{"):
                        totals: dict[str, Any] = json.loads(line)
                        return totals
            return None

        try:
            yield Served(fs.pid, stop_go)
        finally:
            fs.stop()
        return
    server = ServerProcess(["--port", str(PORT), "--model", key, *extra], popen=sb.popen)
    try:
        try:
            server.start()
        except TcplabError as exc:
            raise BenchError(f"tcplab server --model {key}: {exc}") from None
        if server.port != PORT:
            raise BenchError(f"the {key} server listens on {server.port}, not {PORT}")
        yield Served(server.pid, server.stop)
    finally:
        server.kill()


def check_totals(server: str, totals: dict[str, Any] | None, expected: int,
                 in_flight: int) -> str | None:
    """None when the server echoed exactly ``expected`` bytes; else what differed."""
    if totals is None:
        return f"{server}: the server printed no totals"
    echoed = int(totals.get("bytes_echoed", -1))
    if echoed != expected or in_flight:
        return (f"{server}: the server echoed {echoed:,} bytes, the load generators counted "
                f"{expected:,} ({in_flight} round trips unanswered, "
                f"{totals.get('open', 0)} connections open at exit)")
    return None


#: --pin: (the server's CPU, the load generator's CPU).
PINS: dict[str, tuple[int, int] | None] = {"none": None, "split": (0, 1), "same": (0, 0)}


def pin(pid: int, how: str) -> list[int] | None:
    """Every thread of the server onto its CPU (later threads inherit it); the load
    generator's CPU list, None when unpinned."""
    pins = PINS[how]
    if pins is None:
        return None
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {pins[0]})
    return [pins[1]]


# --- the ping-pong load, and its measurement window -----------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """One load generator run against one server: the window between marks A and B."""

    server: str
    round: int
    connections: int
    size: int
    echoes: int  # in the window
    window_s: float
    user_us: float  # server, per echo
    sys_us: float
    cpu_us: float
    echoes_per_s: float
    p50_us: float
    p99_us: float
    server_core_pct: float
    client_us: float  # the load generator's CPU per echo
    others_core_pct: float  # the rest of the machine's busy CPU over the window, % of one core
    tcp: dict[str, int]  # TCP_COUNTERS of the namespace: their growth over the window
    server_threads: int
    echoes_total: int  # the whole load generator run, warm-up and drain included
    in_flight: int  # round trips left unanswered at the end (0)


def pingpong_load(sb: Any, server: str, index: int, pid: int, connections: int, size: int,
                  warmup: float, seconds: float, max_echoes: int,
                  cpus: list[int] | None = None) -> Window:
    """``connections`` S-byte ping-pongs to 127.0.0.1:PORT in ``sb`` from one child (this
    file, ``--pingpong``); the server ``pid``'s CPU time over the window it measured."""
    spec = {"server": server, "round": index, "pid": pid, "connections": connections,
            "size": size, "warmup": warmup, "seconds": seconds, "max_echoes": max_echoes,
            "cpus": cpus}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 60.0 + warmup + seconds + connections / 100
    what = f"load generator ({connections} x {size} B)"
    m = measured([sys.executable, str(Path(__file__).resolve()), "--pingpong", json.dumps(spec)],
                 limit, lambda cmd, **kw: sb.popen(cmd, fd_limit=hard, **kw))
    res = last_json(m, what)
    if not res.get("ok"):
        raise BenchError(f"{what}: {res.get('error')}")
    return Window(**res["window"])


def _pingpong(spec: dict[str, Any]) -> Window:
    """The load generator: the client engine's ``pingpong`` (tcplab/traffic/engine.py),
    every echo compared with what was sent; marks A and B around the window, each between
    two epoll batches (the server's CPU time, ours, the machine's, the TCP counters)."""
    from tcplab.observe.procfs import cpu_times, status
    from tcplab.traffic.engine import pingpong
    from tcplab.traffic.target import resolve

    pid, size, connections = int(spec["pid"]), int(spec["size"]), int(spec["connections"])
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < connections + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def mark() -> dict[str, Any]:
        user, system = cpu_times(pid)
        c = os.times()
        return {"server_user": user, "server_sys": system, "client_cpu": c.user + c.system,
                "machine_busy": machine_busy(), "tcp": tcp_counters(),
                "server_threads": status(pid).threads}

    run = pingpong(resolve("127.0.0.1", PORT), connections, size=size,
                   warmup=float(spec["warmup"]), seconds=float(spec["seconds"]),
                   max_echoes=int(spec["max_echoes"]), mark=mark,
                   payload=bytes((i * 7 + 13) & 0xFF for i in range(size)))
    if run.connected < connections or run.failed:
        raise ConnectionError(f"{run.connected} of {connections} connected, {run.failed} "
                              f"failed: {run.errors}")
    a, b = run.a.extra, run.b.extra
    echoes, window = run.b.echoes - run.a.echoes, run.b.t - run.a.t
    if echoes <= 0 or window <= 0:
        raise BenchError(f"{spec['server']}: no echo completed in the window")
    user, system = b["server_user"] - a["server_user"], b["server_sys"] - a["server_sys"]
    client = b["client_cpu"] - a["client_cpu"]
    return Window(
        server=spec["server"], round=spec["round"], connections=connections, size=size,
        echoes=echoes, window_s=window, user_us=user / echoes * 1e6,
        sys_us=system / echoes * 1e6, cpu_us=(user + system) / echoes * 1e6,
        echoes_per_s=echoes / window, p50_us=run.percentile_us(50),
        p99_us=run.percentile_us(99), server_core_pct=(user + system) / window * 100,
        client_us=client / echoes * 1e6,
        others_core_pct=max(0.0, (b["machine_busy"] - a["machine_busy"] - user - system
                                  - client) / window * 100),
        tcp={k: v - a["tcp"].get(k, 0) for k, v in b["tcp"].items()},
        server_threads=int(b["server_threads"]), echoes_total=run.echoes_total,
        in_flight=run.in_flight,
    )


if __name__ == "__main__" and sys.argv[1:2] == ["--pingpong"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops and reaps us
    try:
        report = {"ok": True, "window": asdict(_pingpong(json.loads(sys.argv[2])))}
    except Exception as exc:
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report))
