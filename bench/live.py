"""How soon `tcplab live` shows a transition, and whether pages slow its sampler.

Issue 16's Done-when, measured (not asserted in a test): "a transition shows within
1 s of happening; 20 pages open at once do not slow the sampler past its interval".

1. Latency: one connection at a time to a listener of ours (a port the kernel
   chose, loopback, our namespace); the time from connect() returning to the line
   of that connection (by its own port) appearing in the page's Transitions list,
   in real Chromium (Debian's chromium and chromedriver, through selenium).
2. The sampler: the gaps between its counts (`--record`), with no page open and
   with 20 tabs open and drawing, in the same run: the ratio of the medians and of
   the largest gaps.
3. As root, what `experiment --live` costs: the live agent with --tracepoint (it
   reads the machine's tracepoints and keeps its namespace's) in a private
   namespace while a bomb of --bomb connections runs there; the agent's CPU time
   (user + system, past its start) per connection against the bomb process's own
   (which on loopback includes the kernel's TCP work for both ends), and whether
   the agent saw every connection's edges.

    python bench/live.py [--connections 20] [--interval 0.5] [--bomb 5000] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--window-size=1280,1024")


@contextmanager
def live(args: list[str]) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tcplab", "live", "--listen",
                             "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        m = re.search(rb"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        if not m:
            raise h.BenchError("tcplab live did not start: "
                               + (proc.stderr.read().decode() if proc.stderr else ""))
        yield m.group(1).decode()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.communicate()


@contextmanager
def chromium(workdir: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        raise h.BenchError("chromium and chromedriver are needed (apt-get install chromium "
                           "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={workdir / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def listener() -> Iterator[int]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(512)
    done = threading.Event()

    def serve() -> None:
        ls.settimeout(0.2)
        while not done.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1]
    finally:
        done.set()
        t.join()
        ls.close()


def latencies(n: int, interval: float, work: Path) -> list[float]:
    out = []
    with listener() as port, live(["--port", str(port), "--interval", str(interval)]) as url, \
            chromium(work) as driver:
        driver.get(url)
        time.sleep(1.5)
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            t0 = time.monotonic()
            needle = f"127.0.0.1:{c.getsockname()[1]} > 127.0.0.1:{port}"
            deadline = t0 + 10
            while time.monotonic() < deadline:
                if needle in driver.execute_script(
                        "return document.getElementById('transitions').textContent"):
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.01)
            else:
                out.append(float("inf"))
            c.close()
            time.sleep(0.3)
    return out


def bomb_to_page(rounds: int, interval: float, work: Path) -> list[float]:
    """A bomb of 100 connections, settled (only TIME_WAIT and the listener left on
    the port), then the time until the page's TIME_WAIT count equals ss's."""
    out = []
    with listener() as port, live(["--port", str(port), "--interval", str(interval)]) as url, \
            chromium(work / "bomb") as driver:
        driver.get(url)
        time.sleep(1.5)
        for _ in range(rounds):
            for _ in range(100):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            filt = f"( sport = :{port} or dport = :{port} )"
            while any(line.split()[0] not in ("TIME-WAIT", "LISTEN") for line in subprocess.run(
                    ["ss", "-Htan", filt], capture_output=True, text=True).stdout.splitlines()):
                time.sleep(0.01)
            want = len(subprocess.run(["ss", "-Htan", "state", "time-wait", filt],
                                      capture_output=True, text=True).stdout.splitlines())
            t0 = time.monotonic()
            while time.monotonic() < t0 + 10:
                text = driver.execute_script(
                    "return document.getElementById('count-TIME_WAIT').textContent")
                if int(text.replace(",", "")) == want:
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.01)
            else:
                out.append(float("inf"))
            time.sleep(0.7)
    return out


def gaps(pages: int, seconds: float, interval: float, work: Path) -> list[float]:
    rec = work / f"rec-{pages}.jsonl"
    with listener() as port, live(["--port", str(port), "--interval", str(interval),
                                   "--record", str(rec)]) as url:
        if pages:
            with chromium(work / f"p{pages}") as driver:
                for i in range(pages):
                    if i:
                        driver.switch_to.new_window("tab")
                    driver.get(url)
                _load(port, seconds)
        else:
            _load(port, seconds)
    ts = [e["t"] for e in map(json.loads, rec.read_text().splitlines()) if e["kind"] == "counts"]
    return [b - a for a, b in itertools.pairwise(ts)]


def _load(port: int, seconds: float) -> None:
    """Connections for the pages to draw: 20 every 0.5 s, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        time.sleep(0.5)


#: The bomb of part 3, run under ``unshare -n``: a listener that accepts and closes,
#: then (after a line on stdin) N connections, each closed by the client; prints the
#: CPU time (user + system) its process spent on them.
BOMB = """
import os, resource, socket, subprocess, sys, threading
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("10000 65000")
ls = socket.socket(); ls.bind(("127.0.0.1", 8080)); ls.listen(4096)
def serve():
    while True:
        c, _ = ls.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(int(sys.argv[1])):
    socket.create_connection(("127.0.0.1", 8080)).close()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, flush=True)
sys.stdin.readline()
"""


def agent_cost(n: int, interval: float) -> dict[str, Any] | None:
    """Part 3 (root only; None otherwise)."""
    import os

    import psutil

    if os.geteuid() != 0:
        return None
    bomb = subprocess.Popen(["unshare", "-n", sys.executable, "-c", BOMB, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        assert bomb.stdin is not None and bomb.stdout is not None
        if bomb.stdout.readline().strip() != "ready":
            raise h.BenchError("the bomb did not start")
        agent = subprocess.Popen(["nsenter", "-t", str(bomb.pid), "-n", sys.executable, "-m",
                                  "tcplab.agents.live", "--tracepoint", "--interval",
                                  str(interval)], stdout=subprocess.PIPE, text=True)
        assert agent.stdout is not None
        events: list[dict[str, Any]] = [json.loads(agent.stdout.readline())]  # meta
        reader = threading.Thread(target=lambda: events.extend(
            json.loads(x) for x in agent.stdout), daemon=True)  # type: ignore[union-attr]
        reader.start()
        time.sleep(2 * interval)  # its first counts: its start is behind it
        cpu = psutil.Process(agent.pid).cpu_times()
        before = cpu.user + cpu.system
        bomb.stdin.write("go\n")
        bomb.stdin.flush()
        bomb_cpu = float(bomb.stdout.readline())
        time.sleep(3 * interval)  # the agent's last interval read
        cpu = psutil.Process(agent.pid).cpu_times()
        agent_cpu = cpu.user + cpu.system - before
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        reader.join(timeout=20)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        bomb.kill()
        bomb.wait()
    taken = sum(e["edges"].get("SYN_SENT>ESTABLISHED", 0) for e in events
                if e["kind"] == "edges")
    lost = [e["text"] for e in events if e["kind"] == "event" and "dropped" in e["text"]]
    return {"connections": n, "source": events[0]["source"],
            "agent_cpu_us_per_connection": agent_cpu / n * 1e6,
            "bomb_cpu_us_per_connection": bomb_cpu / n * 1e6,
            "ratio": agent_cpu / bomb_cpu if bomb_cpu else None,
            "connections_seen": taken, "lost_notes": lost}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=12.0, help="each sampler run")
    p.add_argument("--bomb", type=int, default=5000, help="part 3's connections (root)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        work = Path(tmp)
        lat = latencies(args.connections, args.interval, work)
        (work / "bomb").mkdir()
        equal = bomb_to_page(5, args.interval, work)
        (work / "p20").mkdir()
        alone, busy = (gaps(0, args.seconds, args.interval, work),
                       gaps(20, args.seconds, args.interval, work))
        cost = agent_cost(args.bomb, args.interval)
    finite = [x for x in lat if x != float("inf")]
    body = {
        "interval": args.interval,
        "latency_s": {"median": statistics.median(finite) if finite else None,
                      "max": max(lat) if lat else None, "n": len(lat),
                      "missed": len(lat) - len(finite)},
        "bomb_to_page_s": {"median": statistics.median(equal), "max": max(equal),
                           "n": len(equal)},
        "gaps_s": {"alone_median": statistics.median(alone), "alone_max": max(alone),
                   "pages20_median": statistics.median(busy), "pages20_max": max(busy)},
        "experiment_agent": cost,
    }
    if args.json:
        print(json.dumps(body))
        return 0
    lt, g = body["latency_s"], body["gaps_s"]
    print(f"tcplab live, --interval {args.interval:g} s")
    print(f"  a transition on the page after it happened: median {lt['median']:.3f} s, "
          f"max {lt['max']:.3f} s over {lt['n']} connections ({lt['missed']} never shown); "
          f"goal <= 1 s: {'met' if lt['max'] <= 1 else 'NOT met'}")
    b = body["bomb_to_page_s"]
    print(f"  after a bomb (settled), the page's TIME_WAIT count equal to ss's: median "
          f"{b['median']:.3f} s, max {b['max']:.3f} s over {b['n']} bombs "
          f"({b['max'] / args.interval:.2f} refreshes at most)")
    print(f"  the sampler's gap between counts: alone median {g['alone_median']:.3f} s, max "
          f"{g['alone_max']:.3f} s; with 20 pages median {g['pages20_median']:.3f} s, max "
          f"{g['pages20_max']:.3f} s (x{g['pages20_median'] / g['alone_median']:.2f} median)")
    if cost is None:
        print("  experiment --live's agent: not measured (the tracepoints need root)")
    else:
        print(f"  experiment --live's agent ({cost['source']}) during a bomb of "
              f"{cost['connections']:,} connections in its namespace: "
              f"{cost['agent_cpu_us_per_connection']:.0f} us CPU per connection against the "
              f"bomb's own {cost['bomb_cpu_us_per_connection']:.0f} us (x{cost['ratio']:.2f}); "
              f"it saw {cost['connections_seen']:,} connections' SYN_SENT -> ESTABLISHED"
              + (f"; {'; '.join(cost['lost_notes'])}" if cost["lost_notes"] else
                 "; no event lost"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
