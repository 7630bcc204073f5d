"""Experiment 3, the FD leak: a server that never calls close(), until accept() fails.

In a private namespace with ``tcp_fin_timeout`` shortened (5 s), a leak-mode
``tcplab server --fd-limit 256 --backlog 64`` faces a bounded flood of
clients that connect, send, wait briefly for the echo and close. The sampler
(every 100 ms, inside the namespace) records the server's fds, the states on
the port and the listener's accept queue. What it shows, measured:

* fds climb to the limit; accept() fails with EMFILE and the server logs
  "Too many open files" once per backoff step;
* the kernel still completes handshakes into the accept queue (LISTEN Recv-Q
  climbs to backlog + 1): those clients connect but never get an echo; once
  the queue is full, SYNs are dropped and clients hang in SYN_SENT. There is
  no "connection refused";
* every closed client leaves the server's socket in CLOSE_WAIT (accepted or
  still queued) and its own in FIN_WAIT2; the orphaned FIN_WAIT2 dies after
  ``tcp_fin_timeout``; CLOSE_WAIT stays as long as the process holds the fd;
* the fix, the same flood against a server that closes: CLOSE_WAIT 0;
* ``keepalive``: with SO_KEEPALIVE, the leaked sockets leave CLOSE_WAIT once
  the peer is gone (probes get a RST), but the fds stay leaked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tcplab.experiments.children import ForeignServer, ServerProcess
from tcplab.experiments.result import Event, Result
from tcplab.experiments.sampler import StateSampler
from tcplab.experiments.sandbox import Sandbox

PORT = 8080


@dataclass
class Settings:
    fd_limit: int = 256
    backlog: int = 64
    clients: int = 450
    fin_timeout: int = 5
    connect_timeout: float = 2.0
    read_timeout: float = 2.0
    keepalive: bool = False
    keepalive_s: int = 2
    server_cmd: str | None = None


def run(settings: Settings | None = None, quick: bool = False,
        progress: Callable[[str], None] = lambda _: None) -> Result:
    s = settings or Settings()
    started = time.monotonic()
    events: list[Event] = []

    def mark(what: str) -> None:
        events.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    progress("fd-leak: the leaking server")
    leak = _round(s, leak=True, keepalive=None, mark=mark)
    progress("fd-leak: the fix (a server that closes)")
    fixed = _round(s, leak=False, keepalive=None, mark=mark)
    kept = None
    if s.keepalive:
        progress("fd-leak: leaking, with SO_KEEPALIVE")
        kept = _round(s, leak=True, keepalive=s.keepalive_s, mark=mark)

    facts: dict[str, Any] = {
        "fd_limit": leak["fd_limit"],
        "server_fds_peak": leak["fds_peak"],
        "server_close_wait_peak": leak["close_wait_peak"],
        "server_close_wait_after_timeout": leak["close_wait_after"],
        "client_fin_wait2_peak": leak["fin_wait2_peak"],
        "client_fin_wait2_after_timeout": leak["fin_wait2_after"],
        "emfile_seen": leak["emfile_line"] is not None,
        "emfile_log_line": leak["emfile_line"],
        "accept_queue_peak": leak["queue_peak"],
        "backlog": leak["backlog"],
        "clients": leak["flood"],
        "server_alive": leak["alive"],
        "fixed_close_wait_peak": fixed["close_wait_peak"],
        "fixed_clients": fixed["flood"],
    }
    if kept is not None:
        facts["keepalive_close_wait_after"] = kept["close_wait_after"]
        facts["keepalive_fds_after"] = kept["fds_after"]
    limit = facts["fd_limit"] or s.fd_limit
    shown = (
        facts["emfile_seen"] and facts["server_alive"]
        and facts["server_fds_peak"] >= limit - 2
        and facts["server_close_wait_peak"] > 0
        and facts["server_close_wait_after_timeout"] >= facts["server_close_wait_peak"] * 0.95
        and facts["client_fin_wait2_peak"] > 0
        and facts["client_fin_wait2_after_timeout"] == 0
        and facts["fixed_close_wait_peak"] <= max(5, s.clients // 20)  # transient only
    )
    if kept is not None:
        # Keep-alive is set on accepted sockets (as Go does), so only those
        # leave CLOSE_WAIT; connections never accepted stay in the queue.
        shown = (shown and kept["close_wait_after"] <= kept["queue_peak"]
                 and kept["close_wait_after"] < kept["close_wait_peak"]
                 and (kept["fds_after"] or 0) >= limit - 2)
    fact = (
        f"the leaking server's fds hit its limit of {limit} ({facts['server_fds_peak']} in use), "
        f"accept() failed with EMFILE, {facts['server_close_wait_peak']} sockets sat in "
        f"CLOSE_WAIT and stayed after the clients' FIN_WAIT2 ({facts['client_fin_wait2_peak']}) "
        f"expired; a server that closes: CLOSE_WAIT peak {facts['fixed_close_wait_peak']}"
    )
    server = f"your server ({s.server_cmd})" if s.server_cmd else "tcplab server (uvloop)"
    return Result(
        experiment="fd-leak", ok=bool(shown), fact=fact,
        settings={"fd_limit": s.fd_limit, "backlog": s.backlog, "clients": s.clients,
                  "tcp_fin_timeout": s.fin_timeout, "keepalive": s.keepalive, "server": server,
                  "port": PORT},
        facts=facts, events=events, timeline=leak["timeline"],
        variants=[{"name": name, **r} for name, r in
                  (("leak", leak), ("fixed", fixed), ("keepalive", kept)) if r],
    )


def _round(s: Settings, leak: bool, keepalive: int | None,
           mark: Callable[[str], None]) -> dict[str, Any]:
    label = "leak" if leak else "fixed"
    if keepalive:
        label = "keepalive"
    with Sandbox({"net.ipv4.tcp_fin_timeout": str(s.fin_timeout)}) as sb:
        server: Any
        if s.server_cmd:
            server = ForeignServer(sb, s.server_cmd, PORT, env={"LEAK": "true" if leak else ""},
                                   fd_limit=s.fd_limit)
            pid = None  # the sampler finds whoever holds the listener
        else:
            args = ["--port", str(PORT), "--fd-limit", str(s.fd_limit),
                    "--backlog", str(s.backlog)]
            if leak:
                args.append("--leak")
            if keepalive:
                args += ["--keepalive", str(keepalive)]
            server = ServerProcess(args, popen=sb.popen)
            server.start()
            pid = server.pid
        sampler = StateSampler(sb, PORT, pid=pid)
        mark(f"{label}: {s.clients} clients connect, send, wait for the echo, close")
        flood = _flood(sb, s)
        mark(f"{label}: {flood['echoed']} echoed, {flood['no_echo']} connected but got no echo "
             f"(accept queue), {flood['connect_timeouts']} never connected (SYN_SENT)")
        after_flood = sampler.now()
        wait = s.fin_timeout + (keepalive * 4 if keepalive else 0) + 2.5
        if leak:
            mark(f"{label}: waiting {wait:.0f} s for the clients' FIN_WAIT2 to expire "
                 f"(tcp_fin_timeout = {s.fin_timeout} s)")
            time.sleep(wait)
        else:
            time.sleep(1.0)
        last = sampler.latest()
        alive = server.alive()
        log = [line for _, line in server.log if "too many open files" in line.lower()]
        timeline = [[r["t"], {"states": r["states"], "listen_queue": r["listen_queue"],
                              "server_fds": r["server_fds"]}] for r in sampler.rows]
        during = [r for r in sampler.rows if r["t"] <= after_flood + 1.0]
        result = {
            "fd_limit": sampler.peak_of("fd_limit") or None,
            "fds_peak": sampler.peak_of("server_fds"),
            "fds_after": last.get("server_fds"),
            "close_wait_peak": sampler.peak("CLOSE_WAIT"),
            "close_wait_after": sampler.state(last, "CLOSE_WAIT") if last else 0,
            "fin_wait2_peak": max((sampler.state(r, "FIN_WAIT2") for r in during), default=0),
            "fin_wait2_after": sampler.state(last, "FIN_WAIT2") if last else 0,
            "queue_peak": sampler.peak_of("listen_queue"),
            "backlog": sampler.peak_of("backlog"),
            "syn_sent_peak": sampler.peak("SYN_SENT"),
            "emfile_line": log[0] if log else None,
            "emfile_lines": len(log),
            "alive": alive,
            "flood": flood,
            "timeline": timeline,
        }
        sampler.stop()
        server.stop()
        if leak:
            mark(f"{label}: fds peaked at {result['fds_peak']} of {result['fd_limit']}, "
                 f"CLOSE_WAIT {result['close_wait_peak']} -> {result['close_wait_after']}, "
                 f"FIN_WAIT2 {result['fin_wait2_peak']} -> {result['fin_wait2_after']}, "
                 f"accept queue peak {result['queue_peak']}")
        else:
            mark(f"{label}: CLOSE_WAIT peak {result['close_wait_peak']}")
    return result


def _flood(sb: Sandbox, s: Settings) -> dict[str, Any]:
    r = sb.run([sys.executable, "-m", "tcplab.traffic.flood", "--port", str(PORT),
                "--clients", str(s.clients), "--connect-timeout", str(s.connect_timeout),
                "--read-timeout", str(s.read_timeout)],
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
               timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"the client flood failed: {r.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result
