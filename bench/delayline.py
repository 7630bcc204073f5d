"""How precisely the delay line delays: added one-way delay against the asked one.

For each asked delay and each background load (UDP packets per second through
the line, both directions' worth of probes on top), a net is made with
``tcplab net up --delay D`` and a UDP probe in the client's namespace sends
timestamped datagrams to a UDP echo in the server's, one every 5 ms; each
probe's round trip minus the median round trip of an unshaped net with a router
(``--router``: the same veths and forwarding, no delay line), halved, is the
one-way delay the line added. Its median and p99 are printed against the asked
delay (``x asked``), and against ``ping`` over the same net, the tool a user
would check it with (``x ping``: the probe's median RTT over ping's). Rounds
are interleaved over the configurations.

    python bench/delayline.py                       # delays 10,50 ms; loads 0,1000,5000 pps
    python bench/delayline.py --delays 50 --loads 0,10000 --rounds 5 --json

Needs root or unprivileged user namespaces, /dev/net/tun, and ping
(Debian: iputils-ping) for the ping column (without it the column is empty).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchError, csv_ints, fmt, median, parser, progress, rotate
from tcplab.net import control
from tcplab.net.plan import Shaping

ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    if data[:1] == b"p":
        s.sendto(data, peer)
"""

# PROBES probes, one every 5 ms; in between, LOAD packets/s of 200 bytes (not echoed).
PROBE = """
import json, os, socket, sys, time
probes, load = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((os.environ["TCPLAB_SERVER"], 9000))
s.setblocking(False)
filler = b"l" * 200
sent, rtts, due, next_load, loaded = {}, [], time.monotonic(), time.monotonic(), 0
i = 0
end = None
while True:
    now = time.monotonic()
    if i < probes and now >= due:
        s.send(b"p%d" % i)
        sent[i] = time.monotonic_ns()
        i += 1
        due += 0.005
    if load:
        while next_load <= now:
            s.send(filler)
            loaded += 1
            next_load += 1 / load
    try:
        while True:
            data = s.recv(64)
            rtts.append(time.monotonic_ns() - sent[int(data[1:])])
    except BlockingIOError:
        pass
    if i == probes and end is None:
        end = now + 2.0
    if end is not None and (now > end or len(rtts) == probes):
        break
    time.sleep(0.0002)
print(json.dumps({"rtts_us": [r / 1000 for r in rtts], "loaded": loaded}))
"""


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(name: str, probes: int, load: int) -> dict[str, Any]:
    """Probe RTTs (us) and ping's RTTs (us) over net ``name``."""
    echo = subprocess.Popen([sys.executable, "-m", "tcplab", "net", "exec", name, "server", "--",
                             sys.executable, "-c", ECHO], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, process_group=0)
    try:
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != b"ready":
            raise BenchError("the UDP echo did not start")
        r = subprocess.run([sys.executable, "-m", "tcplab", "net", "exec", name, "client", "--",
                            sys.executable, "-c", PROBE, str(probes), str(load)],
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"the probe failed: {r.stderr.decode()[-300:]}")
        result = json.loads(r.stdout)
    finally:
        echo.kill()
        echo.wait()
        if echo.stdout is not None:
            echo.stdout.close()
    pings: list[float] = []
    if shutil.which("ping"):
        r = subprocess.run([sys.executable, "-m", "tcplab", "net", "exec", name, "client", "--",
                            "sh", "-c", f'ping -n -c {min(probes, 100)} -i 0.01 "$TCPLAB_SERVER"'],
                           capture_output=True, timeout=120)
        for line in r.stdout.decode().splitlines():
            if "time=" in line:
                pings.append(float(line.split("time=")[1].split()[0]) * 1000)
    return {"rtts": result["rtts_us"], "pings": pings, "loaded": result["loaded"]}


def with_net(shaping: Shaping, router: bool, probes: int, load: int) -> dict[str, Any]:
    name = f"bench{os.getpid() % 100000}"
    control.up(name, shaping, router=router)
    try:
        return measure(name, probes, load)
    finally:
        control.down(name)


def main() -> int:
    p = parser(__doc__ or "", go=False)
    p.add_argument("--delays", type=csv_ints, default=[10, 50], help="one-way ms, e.g. 10,50")
    p.add_argument("--loads", type=lambda t: [int(x) for x in t.split(",")],
                   default=[0, 1000, 5000],
                   help="background UDP packets/s through the line")
    p.add_argument("--probes", type=int, default=200, help="probes per net, one every 5 ms")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rounds = args.rounds
    configs = [(d, load) for d in args.delays for load in args.loads]
    rows: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    bases: list[float] = []
    base_rtts: list[float] = []
    started = time.time()
    for rnd in range(rounds):
        progress(f"round {rnd + 1}/{rounds}: unshaped base")
        base = with_net(Shaping(), True, args.probes, 0)
        bases.append(median(base["rtts"]) or 0.0)
        base_rtts += base["rtts"]
        for d, load in rotate(configs, rnd):
            progress(f"round {rnd + 1}/{rounds}: delay {d} ms, load {load}/s")
            rows[(d, load)].append(with_net(Shaping(delay_ms=d), False, args.probes, load))
    base_us = median(bases) or 0.0
    table = []
    for (d, load), runs in rows.items():
        added = [(r - base_us) / 2 for run in runs for r in run["rtts"]]
        pings = [x for run in runs for x in run["pings"]]
        rtts = [r for run in runs for r in run["rtts"]]
        lost = sum(args.probes - len(run["rtts"]) for run in runs)
        med, p99 = median(added), percentile(added, 0.99)
        ping_med = median(pings)
        table.append({
            "delay_ms": d, "load_pps": load, "probes": len(added), "lost": lost,
            "added_median_ms": med / 1000 if med is not None else None,
            "added_p99_ms": p99 / 1000 if p99 is not None else None,
            "x_asked": med / 1000 / d if med is not None else None,
            "p99_x_asked": p99 / 1000 / d if p99 is not None else None,
            "ping_median_rtt_ms": ping_med / 1000 if ping_med is not None else None,
            "probe_median_rtt_ms": (median(rtts) or 0) / 1000,
            "x_ping": (median(rtts) or 0) / ping_med if ping_med else None,
        })
    base_p99 = percentile(base_rtts, 0.99) or 0.0
    out = {"base_rtt_ms": base_us / 1000, "base_rtt_p99_ms": base_p99 / 1000,
           "rounds": rounds, "rows": table,
           "seconds": round(time.time() - started, 1)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"unshaped base RTT (router, no delay line): median {base_us / 1000:.3f} ms, "
          f"p99 {base_p99 / 1000:.3f} ms, {rounds} rounds of {args.probes} probes")
    print(f"{'asked':>6} {'load/s':>7} {'probes':>7} {'lost':>5} {'added p50':>10} "
          f"{'x asked':>8} {'p99':>8} {'x asked':>8} {'ping RTT':>9} {'x ping':>7}")
    for row in table:
        print(f"{row['delay_ms']:>4}ms {row['load_pps']:>7} {row['probes']:>7} {row['lost']:>5} "
              f"{fmt(row['added_median_ms'], '.3f'):>8}ms {fmt(row['x_asked'], '.4f'):>8} "
              f"{fmt(row['added_p99_ms'], '.3f'):>6}ms {fmt(row['p99_x_asked'], '.4f'):>8} "
              f"{fmt(row['ping_median_rtt_ms'], '.2f'):>7}ms {fmt(row['x_ping'], '.4f'):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
