"""``tcplab bomb``: the port bomb of Experiment 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
Opens many short-lived connections to an echo server, as fast as it can, and
reports when and how the kernel refuses: with TIME_WAIT holding every
ephemeral port, connect() fails with EADDRNOTAVAIL, "Cannot assign requested
address". Bounded by --count and --duration; stops by itself.

modes:
  fresh    connect, one echo, close: the client closes first, so its side
           sits in TIME_WAIT for 60 s, holding its port (the bomb)
  pool     --pool-size connections reused for the same requests: the fix
  linger0  SO_LINGER {on, 0}: close() sends RST and skips TIME_WAIT. A hack:
           TIME_WAIT protects the next connection on the same 4-tuple from
           this one's delayed segments, and the server sees ECONNRESET
  bind     bind() before connect(): ports stop being shared per destination,
           and it fails earlier, with EADDRINUSE

On a modern kernel the bomb against 127.0.0.1 does NOT fail with default
settings: net.ipv4.tcp_tw_reuse = 2 lets loopback connections reuse a
TIME_WAIT port after 1 s. 'tcplab experiment port-bomb' runs it in a private
namespace with tcp_tw_reuse = 0 and a narrow port range, where it fails every
time without touching your machine.

Traffic goes only to loopback unless --allow-remote is given.
"""

EXAMPLES = """\
examples:
  tcplab bomb --port 8080                      30,000 connections or 30 s
  tcplab bomb --mode pool --pool-size 8        the same requests over 8 connections
  tcplab bomb --count 5000 --json
"""


def add_parser(sub: Any, name: str) -> None:
    from tcplab.traffic.bomb import MODES

    p = sub.add_parser(
        name, parents=[common.parent()],
        help="the port bomb: short-lived connections until the ports run out",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=common.port, default=8080, help="server port (default 8080)")
    p.add_argument("--count", type=common.positive_int, default=30_000, metavar="N",
                   help="stop after N connections (requests, in pool mode); default 30,000")
    p.add_argument("--duration", type=common.seconds, default=30.0, metavar="S",
                   help="stop after S seconds (default 30)")
    p.add_argument("--workers", type=common.positive_int, default=32, metavar="W",
                   help="connections in flight at once (default 32)")
    p.add_argument("--mode", choices=MODES, default="fresh", help="default fresh")
    p.add_argument("--pool-size", type=common.positive_int, default=8, metavar="K",
                   help="connections in pool mode (default 8)")
    p.add_argument("--wait-close", action="store_true",
                   help="after the echo, wait for the server to close first (EOF), so "
                   "TIME_WAIT lands on the server's side")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a target outside loopback (only hosts you own)")
    common.add_json(p, "the result as one object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.traffic import bomb
    from tcplab.traffic.target import resolve

    target = resolve(args.host, args.port, allow_remote=args.allow_remote)
    tty = sys.stderr.isatty()

    def progress(p: Any) -> None:
        tw = "?" if p.time_wait is None else f"{p.time_wait:,}"
        line = (f"{p.t:6.1f} s  attempted {p.attempted:,}  ok {p.ok:,}  failed {p.failed:,}  "
                f"{p.conns_per_s:,.0f} conn/s  TIME_WAIT {tw}")
        if tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        else:
            note(line)

    def first_error(e: Any) -> None:
        if tty:
            sys.stderr.write("\n")
        note(first_error_line(e) + "; counting failures until the bound")

    note(f"bombing {target.where} in {args.mode} mode: up to {args.count:,} connections "
         f"or {args.duration:g} s" + (" (Ctrl-C stops early)" if tty else ""))
    result = bomb.run(target, mode=args.mode, count=args.count, duration=args.duration,
                      workers=args.workers, pool_size=args.pool_size, progress=progress,
                      wait_close=args.wait_close, on_first_error=first_error)
    if tty:
        sys.stderr.write("\n")
    if args.json:
        from dataclasses import asdict

        body = asdict(result)
        body.pop("timeline")
        emit_json(body)
        return 0
    for line in result_lines(result):
        out(line)
    return 0


def result_lines(r: Any) -> list[str]:
    what = "requests" if r.mode == "pool" else "connections"
    lines = [
        f"{r.mode}: {r.attempted:,} {what} attempted, {r.ok:,} ok, {r.failed:,} failed "
        f"in {r.elapsed_s:.2f} s ({r.conns_per_s:,.0f} ok/s; stopped by {r.stopped_by})",
    ]
    e = r.first_error
    if e is not None:
        lines.append(first_error_line(e))
        lines.append("errors: " + ", ".join(f"{n} {c:,}" for n, c in r.errors.items()))
    else:
        lines.append("no errors")
    if r.time_wait_peak is not None:
        lines.append(f"TIME_WAIT peak: {r.time_wait_peak:,} sockets to port {r.port}")
    return lines


def first_error_line(e: Any) -> str:
    tw = "unknown" if e.time_wait is None else f"{e.time_wait:,}"
    rng = "unknown" if e.port_range is None else f"{e.port_range:,}"
    return (f"first error at {e.at_s:.3f} s after {e.after_ok:,} ok: [Errno {e.errno}] "
            f"{e.name}: {e.message}; TIME_WAIT then {tw}, port range {rng} ports")
