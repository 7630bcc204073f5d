"""What a link costs to make and take down: tcplab's net (pyroute2) against iproute2.

Issue 14 asked for the topology over rtnetlink with pyroute2, "not by spawning
ip/tc, unless you measure a reason". This measures the reason either way, on
the same topology: two network namespaces joined by a veth pair, an address and
the link up at each end, lo up in each, then all of it removed.

- ``tcplab``: ``net.control.up(NAME, Shaping(), attached=True)`` then
  ``control.down(NAME)``: the holder (a fresh interpreter that imports pyroute2),
  its two pins, one netlink socket per namespace, the state file; ``down`` waits
  until no process is left in the namespaces.
- ``iproute2``: ``ip netns add`` x2, ``ip link add ... type veth peer ...``,
  ``ip -n NS addr add`` x2, ``ip -n NS link set ... up`` x4, ``ip netns del`` x2:
  11 processes, inside ``unshare --mount --net`` (``-Urnm`` unprivileged) so the
  /run/netns bind mounts and the veth never touch the host.

Rounds are interleaved; each config's wall time and CPU time (ours and our
children's, from getrusage: the holder is our child while attached) per
setup+teardown; medians, and tcplab's over iproute2's.

    python bench/net_setup.py              # 10 rounds
    python bench/net_setup.py --rounds 20 --json
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchError, fmt, median, parser, progress, rotate
from tcplab.net import control
from tcplab.net.plan import Shaping

IPROUTE2 = """
set -e
ip netns add tlc; ip netns add tls
ip link add c0 netns tlc type veth peer name s0 netns tls
ip -n tlc addr add 198.18.0.1/24 dev c0; ip -n tls addr add 198.18.0.2/24 dev s0
ip -n tlc link set lo up; ip -n tls link set lo up
ip -n tlc link set c0 up; ip -n tls link set s0 up
ip netns del tlc; ip netns del tls
"""


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(body: Any) -> tuple[float, float]:
    """(wall s, CPU s) of body()."""
    c0, t0 = cpu(), time.monotonic()
    body()
    return time.monotonic() - t0, cpu() - c0


def with_tcplab() -> None:
    name = f"ns{os.getpid() % 100000}"
    control.up(name, Shaping(), attached=True)
    control.down(name)


def with_iproute2() -> None:
    unshare = (["unshare", "--mount", "--net", "--propagation", "private"] if os.geteuid() == 0
               else ["unshare", "-Urnm", "--propagation", "private"])
    # /run/netns in a private mount namespace: a tmpfs of its own, gone with it
    script = "mkdir -p /run/netns && mount -t tmpfs none /run/netns\n" + IPROUTE2
    r = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(f"iproute2 failed: {r.stderr.decode(errors='replace').strip()[-300:]}")


CONFIGS = {"tcplab": with_tcplab, "iproute2": with_iproute2}


def main() -> int:
    p = parser(__doc__ or "", go=False)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/net_setup.py: needs {tool} (Debian: iproute2, util-linux)")
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in CONFIGS}
    started = time.time()
    for rnd in range(args.rounds):
        for name in rotate(list(CONFIGS), rnd):
            progress(f"round {rnd + 1}/{args.rounds}: {name}")
            rows[name].append(timed(CONFIGS[name]))
    out: dict[str, Any] = {"rounds": args.rounds, "seconds": round(time.time() - started, 1)}
    for name, xs in rows.items():
        out[name] = {"wall_ms": 1000 * (median(w for w, _ in xs) or 0),
                     "cpu_ms": 1000 * (median(c for _, c in xs) or 0),
                     "wall_ms_min": 1000 * min(w for w, _ in xs),
                     "wall_ms_max": 1000 * max(w for w, _ in xs)}
    t, i = out["tcplab"], out["iproute2"]
    out["x_wall"] = t["wall_ms"] / i["wall_ms"] if i["wall_ms"] else None
    out["x_cpu"] = t["cpu_ms"] / i["cpu_ms"] if i["cpu_ms"] else None
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"setup + teardown of two namespaces joined by a veth pair, {args.rounds} "
          "interleaved rounds, medians:")
    print(f"{'':10} {'wall':>10} {'(min-max)':>18} {'CPU':>10}")
    for name in CONFIGS:
        r = out[name]
        print(f"{name:10} {fmt(r['wall_ms'], '.1f'):>8}ms {fmt(r['wall_ms_min'], '.0f'):>8}-"
              f"{fmt(r['wall_ms_max'], '.0f'):<5}ms {fmt(r['cpu_ms'], '.1f'):>8}ms")
    print(f"tcplab / iproute2: wall x{fmt(out['x_wall'], '.2f')}, CPU x{fmt(out['x_cpu'], '.2f')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
