"""Experiment 4, C10k: every server model against 100, 1,000 and 10,000 connections.

In a private namespace, each model serves ``tcplab multiplex`` (one client
process, N connections held open at once, 5 round trips of 64 B on each).
Each row: the server's OS threads, RSS per connection, CPU per echo, p99
latency, throughput and failures. What it shows:

* threads: one OS thread per connection, each with its own stack; at 10,000
  connections Python's threads also fight over the GIL (a waiting thread asks
  for it every 5 ms, sys.getswitchinterval()), and throughput collapses;
* epoll, asyncio, uvloop: one thread and one epoll instance watching every
  socket, as Go's netpoll does with GOMAXPROCS threads and goroutines parked
  on it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tcplab.experiments.children import ServerProcess
from tcplab.experiments.result import Result
from tcplab.experiments.sandbox import Sandbox
from tcplab.traffic.models import MODELS

PORT = 8080


@dataclass
class Settings:
    ladder: tuple[int, ...] = (100, 1000, 10_000)
    models: tuple[str, ...] = ("threads", "epoll", "asyncio", "uvloop")
    messages: int = 5  # at least; see _row
    size: int = 64
    #: CPU time comes in clock ticks (10 ms): every row runs at least this many
    #: echoes so that CPU per echo rests on a second or so of server CPU.
    min_echoes: int = 50_000
    timeout: float = 20.0


def run(settings: Settings | None = None, quick: bool = False,
        progress: Callable[[str], None] = lambda _: None) -> Result:
    s = settings or Settings()
    if quick:
        s.ladder = tuple(n for n in s.ladder if n <= 1000) or s.ladder[:1]
    rows: list[dict[str, Any]] = []
    with Sandbox({"net.core.somaxconn": "8192"}) as sb:
        for model in s.models:
            for n in s.ladder:
                progress(f"multiplex: {model}, {n:,} connections")
                rows.append(_row(sb, model, n, s))
    big = max(s.ladder)
    at_big = {r["model"]: r for r in rows if r["connections"] == big}
    loops = [m for m in s.models if m != "threads" and m in at_big]
    ok = all(at_big[m]["failed"] == 0 and at_big[m]["threads"] <= 2 for m in loops)
    if "threads" in at_big:
        ok = ok and at_big["threads"]["threads"] >= big * 0.9
    best = min(loops, key=lambda m: at_big[m]["cpu_us_per_echo"] or 1e9) if loops else None
    parts = []
    if best:
        b = at_big[best]
        parts.append(f"{best}: {big:,} connections on {b['threads']} thread and "
                     f"{b['epoll_instances']} epoll instance watching {b['epoll_watches']:,} "
                     f"sockets, {b['rss_per_conn']:,.0f} B RSS per connection")
    if "threads" in at_big:
        t = at_big["threads"]
        parts.append(f"threads: {t['threads']:,} threads, {t['rss_per_conn']:,.0f} B per "
                     f"connection, {t['echoes_per_s']:,.0f} echoes/s")
    return Result(experiment="multiplex", ok=ok, fact="; ".join(parts),
                  settings={"ladder": list(s.ladder), "models": list(s.models),
                            "messages": s.messages, "size": s.size},
                  variants=rows)


def _row(sb: Sandbox, model: str, n: int, s: Settings) -> dict[str, Any]:
    assert model in MODELS
    server = ServerProcess(["--port", str(PORT), "--model", model, "--fd-limit", "max",
                            "--backlog", "8192"], popen=sb.popen)
    server.start()
    try:
        messages = max(s.messages, s.min_echoes // n)
        r = sb.run(sb.tcplab("multiplex", "--port", str(PORT), "--connections", str(n),
                             "--messages", str(messages), "--size", str(s.size),
                             "--timeout", str(s.timeout), "--server-pid", str(server.pid),
                             "--json"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=s.timeout + 120)
        m = json.loads(r.stdout)
    finally:
        server.stop(timeout=30)
    facts = m.get("server") or {}
    failed = sum(m["failures"].values())
    return {
        "name": f"{model} x{n}", "model": model, "connections": n, "connected": m["connected"],
        "messages": messages,
        "threads": facts.get("threads"), "epoll_instances": facts.get("epoll_instances"),
        "epoll_watches": facts.get("epoll_watches"), "rss_bytes": facts.get("rss_bytes"),
        "rss_per_conn": m["server_rss_per_conn"] or 0.0,
        "cpu_us_per_echo": m["server_cpu_us_per_echo"], "p99_us": m["rtt_p99_us"],
        "echoes": m["echoes"], "echoes_per_s": m["echoes_per_s"], "failed": failed,
        "failures": m["failures"], "explanations": m["explanations"],
    }
