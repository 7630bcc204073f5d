"""Experiment 2, the port bomb, in a private network namespace per variant.

Each variant gets a fresh namespace (so TIME_WAIT sockets of one do not
disturb the next) with its own sysctls, a server, a 100 ms state sampler and
one or two ``tcplab bomb`` runs, all as children inside the namespace. The
host's sysctls are never touched.

Facts this rests on, measured on this kernel (Linux 6.x):

* TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN in include/net/tcp.h), on the side
  that closes first; ``tcp_fin_timeout`` does not shorten it.
* An ephemeral port is taken per destination (address, port); a TIME_WAIT
  socket keeps its port for that destination until it expires.
* Modern kernels default to ``tcp_tw_reuse = 2``: connect() to loopback may
  take a port whose TIME_WAIT socket is older than ``tcp_tw_reuse_delay``
  (1 s), so the classic bomb against 127.0.0.1 does not fail by default.
* connect() tries ports of one parity first and leaves the other to bind()
  (``__inet_hash_connect`` in net/ipv4/inet_hashtables.c): measured here,
  20,000 loopback connections with the default range left 14,116 even-port
  and 361 odd-port TIME_WAIT sockets, so with reuse TIME_WAIT levels off at
  about half the range.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcplab.experiments.children import ForeignServer, ServerProcess
from tcplab.experiments.result import Result
from tcplab.experiments.sampler import StateSampler
from tcplab.experiments.sandbox import Sandbox

PORT = 8080
PORT_LOW = 40000

VARIANTS = ("fresh", "pool", "default-reuse", "linger0", "server-closes", "two-destinations")



@dataclass
class Settings:
    ports: int = 1000
    count: int = 3000
    reuse_count: int = 40_000
    pool_size: int = 8
    duration: float = 20.0
    server_cmd: str | None = None
    variants: tuple[str, ...] = VARIANTS


@dataclass
class Variant:
    name: str
    sysctls: dict[str, str]
    bombs: list[list[str]]  # extra tcplab bomb args, one list per run
    server_args: list[str] = field(default_factory=list)


def _plan(s: Settings) -> list[Variant]:
    low = min(PORT_LOW, 65536 - s.ports)  # the range must end at 65535 at most
    narrow = {"net.ipv4.ip_local_port_range": f"{low} {low + s.ports - 1}",
              "net.ipv4.tcp_tw_reuse": "0"}
    n = str(s.count)
    plans = {
        "fresh": Variant("fresh", narrow, [["--mode", "fresh", "--count", n]]),
        "pool": Variant("pool", narrow, [["--mode", "pool", "--count", n,
                                          "--pool-size", str(s.pool_size)]]),
        "default-reuse": Variant("default-reuse", {"net.ipv4.tcp_tw_reuse": "2"},
                                 [["--mode", "fresh", "--count", str(s.reuse_count)]]),
        "linger0": Variant("linger0", narrow, [["--mode", "linger0", "--count", n]]),
        "server-closes": Variant("server-closes", narrow,
                                 [["--mode", "fresh", "--count", n, "--wait-close"]],
                                 server_args=["--close-first"]),
        "two-destinations": Variant(
            "two-destinations", narrow,
            [["--mode", "fresh", "--count", str(s.ports * 2), "--host", "127.0.0.1"],
             ["--mode", "fresh", "--count", str(s.ports * 2), "--host", "127.0.0.2"]],
            server_args=["--host", "0.0.0.0"],
        ),
    }
    return [plans[name] for name in s.variants]


def run(settings: Settings | None = None, quick: bool = False,
        progress: Callable[[str], None] = lambda _: None) -> Result:
    s = settings or Settings()
    if quick:
        s.reuse_count = min(s.reuse_count, 32_000)
    variants: list[dict[str, Any]] = []
    for plan in _plan(s):
        if plan.server_args == ["--close-first"] and s.server_cmd:
            variants.append({"name": plan.name, "skipped": "needs tcplab server --close-first",
                             "shown": None})
            continue
        progress(f"port-bomb: {plan.name}")
        variants.append(_run_variant(plan, s, progress))
    ran = [v for v in variants if v.get("skipped") is None]
    ok = all(v["shown"] for v in ran)
    by = {v["name"]: v for v in ran}
    fact = _headline(by)
    server = f"your server ({s.server_cmd})" if s.server_cmd else "tcplab server (uvloop)"
    return Result(
        experiment="port-bomb", ok=ok, fact=fact,
        settings={"ports": s.ports, "count": s.count, "reuse_count": s.reuse_count,
                  "pool_size": s.pool_size, "server": server, "port": PORT},
        variants=variants,
    )


def _headline(by: dict[str, dict[str, Any]]) -> str:
    parts = []
    fresh = by.get("fresh")
    if fresh and fresh.get("first_error"):
        e = fresh["first_error"]
        if e["errno"] == 99:
            parts.append(f"connect() failed with {e['name']} after {e['after_ok']:,} "
                         f"connections in {e['at_s']:.2f} s")
        else:
            parts.append(f"fresh: the first error was {e['name']} ({e['message']}) after "
                         f"{e['after_ok']:,} connections, not port exhaustion")
    pool = by.get("pool")
    if pool:
        parts.append(f"pooled: {pool['failed']} failures, TIME_WAIT {pool['time_wait_peak']}")
    reuse = by.get("default-reuse")
    if reuse:
        parts.append(f"kernel defaults (tcp_tw_reuse=2): {reuse['ok']:,} connections, "
                     f"{reuse['failed']} failures")
    return "; ".join(parts) or "no variant ran"


def _run_variant(plan: Variant, s: Settings, progress: Callable[[str], None]) -> dict[str, Any]:
    with Sandbox(plan.sysctls) as sb:
        range_text = sb.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"],
                            stdout=subprocess.PIPE).stdout.decode().split()
        port_range = int(range_text[1]) - int(range_text[0]) + 1 if len(range_text) == 2 else None
        server = None
        if s.server_cmd:
            ForeignServer(sb, s.server_cmd, PORT)
        else:
            server = ServerProcess(["--port", str(PORT), *plan.server_args], popen=sb.popen)
            server.start()
        sampler = StateSampler(sb, PORT)
        runs = []
        for args in plan.bombs:
            runs.append(_bomb(sb, args, s.duration, lambda line: progress(f"  {line}")))
        time.sleep(0.3)  # a last sample or two of the plateau
        ends = _time_wait_sides(sb)
        timeline = sampler.stop()
        if server is not None:
            server.stop()
    return _summarise(plan, s, runs, timeline, ends, port_range, sampler)


def _bomb(sb: Sandbox, args: list[str], duration: float,
          progress: Callable[[str], None]) -> dict[str, Any]:
    proc = sb.popen(sb.tcplab("bomb", "--port", str(PORT), "--duration", str(duration),
                              "--json", *args),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def relay() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            progress(raw.decode(errors="replace").rstrip())

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    t.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"tcplab bomb exited with status {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def _time_wait_sides(sb: Sandbox) -> dict[str, int]:
    """TIME_WAIT sockets at the end, by side: the server's (sport = 8080) or the clients'."""
    r = sb.run(sb.tcplab("sockets", "--port", str(PORT), "--state", "time-wait", "--json"),
               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    socks = json.loads(r.stdout)["sockets"] if r.returncode == 0 else []
    server = sum(1 for x in socks if x["sport"] == PORT)
    return {"server_side": server, "client_side": len(socks) - server}


def _summarise(plan: Variant, s: Settings, runs: list[dict[str, Any]],
               timeline: list[list[Any]], ends: dict[str, int], port_range: int | None,
               sampler: StateSampler) -> dict[str, Any]:
    ok = sum(r["ok"] for r in runs)
    failed = sum(r["failed"] for r in runs)
    first = next((r["first_error"] for r in runs if r["first_error"]), None)
    tw_peak = sampler.peak("TIME_WAIT")
    est_peak = max([sampler.peak("ESTABLISHED")]
                   + [r["established_before_close"] or 0 for r in runs])
    rate = max(r["conns_per_s"] for r in runs)
    v: dict[str, Any] = {
        "name": plan.name, "ok": ok, "failed": failed, "first_error": first,
        "time_wait_peak": tw_peak, "conns_per_s": rate, "port_range": port_range,
        "established_peak": est_peak, "time_wait_end": ends, "runs": runs,
        "timeline": timeline,
    }
    name = plan.name
    if name == "fresh":
        v["shown"] = bool(first and first["errno"] == 99 and tw_peak >= 0.9 * (port_range or 0))
        v["lesson"] = (f"every one of the {port_range:,} ports ended in TIME_WAIT on the client, "
                       "and the next connect() failed with EADDRNOTAVAIL")
    elif name == "pool":
        v["shown"] = failed == 0 and tw_peak <= s.pool_size
        v["lesson"] = (f"{s.pool_size} reused connections carried all {ok:,} requests: no new "
                       f"ports, no TIME_WAIT until the pool closed, ESTABLISHED {est_peak} "
                       "(both ends)")
    elif name == "default-reuse":
        v["shown"] = failed == 0 and ok > (port_range or 0)
        v["lesson"] = (f"with tcp_tw_reuse = 2, {ok:,} connections fit in {port_range:,} ports "
                       f"and TIME_WAIT levelled off at {tw_peak:,}: connect() takes even "
                       "ports first (bind() gets the odd ones), about half the range, and on "
                       "loopback reuses a port once its TIME_WAIT is 1 s old (tcp_tw_reuse_delay)"
                       ", so the bomb does not fail on a default kernel. With a narrow range it "
                       "still fails: ports run out faster than they age")
    elif name == "linger0":
        v["shown"] = failed == 0 and tw_peak == 0
        v["lesson"] = ("SO_LINGER 0 made close() send RST: no TIME_WAIT and no failure, but "
                       "the server saw resets and any data in flight would be lost")
    elif name == "server-closes":
        v["shown"] = failed == 0 and ends["server_side"] > 0 and ends["client_side"] == 0
        v["lesson"] = (f"the server closed first, so TIME_WAIT moved to it "
                       f"({ends['server_side']:,} on the server's side, {ends['client_side']} on "
                       "the clients'), and the clients never ran out of ports")
    elif name == "two-destinations":
        first_run, second = runs[0], runs[1]
        v["shown"] = (first_run["failed"] > 0 and second["ok"] >= 0.9 * (port_range or 0))
        v["lesson"] = (f"127.0.0.1 ran out after {first_run['ok']:,} connections, yet 127.0.0.2 "
                       f"took {second['ok']:,} more with the same ports: ports are per "
                       "destination")
    return v
