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
  pool     --pool-size connections reused for the same requests: the fix.
           With --max-idle M below --pool-size, the fix undone: requests go out
           --pool-size at a time, the next ones when all are answered, and a
           connection goes back to the pool only if fewer than M are idle,
           else it is closed; a request takes an idle connection before it
           opens one. Go's http.Transport keeps 2 idle connections per host by
           default (MaxIdleConnsPerHost; DefaultMaxIdleConnsPerHost = 2 in
           net/http/transport.go, Go 1.19: tryPutIdleConn refuses the rest and
           they are closed), so 8 requests at a time open 6 new connections
           per round after the first, and TIME_WAIT comes back
  linger0  SO_LINGER {on, 0}: close() sends RST and skips TIME_WAIT. A hack:
           TIME_WAIT protects the next connection on the same 4-tuple from
           this one's delayed segments, and the server sees ECONNRESET
  bind     bind() before connect(): each port is taken for every destination;
           toward one destination it runs out at about the same count, and
           bind() fails with EADDRINUSE (earlier only where connect() could
           have shared ports across destinations)

On a modern kernel the bomb against 127.0.0.1 does NOT fail with default
settings: net.ipv4.tcp_tw_reuse = 2 lets connect() reuse the port of a
loopback TIME_WAIT socket (127.0.0.0/8, ::1, v4-mapped loopback, or bound to
lo) 1 s after it entered TIME_WAIT, when the connection had TCP timestamps.
'tcplab experiment port-bomb' runs it in a private namespace with
tcp_tw_reuse = 0 and a narrow port range, where it fails every time without
touching your machine.

What it counts: TIME_WAIT sockets this run made (those already there when it
starts, from an earlier run, are reported apart and left out); connections
still waiting for their echo or their handshake when the time bound stops it
(neither ok nor failed; "hung" when they waited 2 s or more); and, at the
first error, how many others were under way (they hold a port and may still
finish ok). When not one connection could be made (nothing listens) it exits
with the connection-failed status.

Traffic goes only to loopback unless --allow-remote is given.
"""

EXAMPLES = """\
examples:
  tcplab bomb --port 8080                      30,000 connections or 30 s
  tcplab bomb --mode pool --pool-size 8        the same requests over 8 connections
  tcplab bomb --mode pool --pool-size 8 --max-idle 2
                                               8 at a time, 2 kept idle (Go's default)
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
    p.add_argument("--max-idle", type=common.int_range(0, 10_000), metavar="M",
                   help="pool mode: keep at most M idle connections between requests "
                   "(Go's http.Transport: 2 per host by default); requests go out "
                   "--pool-size at a time, and a connection the full pool has no room "
                   "for is closed (default: no cap, every connection kept)")
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

    if args.max_idle is not None and args.mode != "pool":
        from tcplab.errors import UsageError

        raise UsageError("--max-idle is pool mode's", hint="add --mode pool")
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

    what = "requests" if args.mode == "pool" else "connections"
    capped = (f" ({args.pool_size} at a time, at most {args.max_idle} kept idle)"
              if args.max_idle is not None else "")
    note(f"bombing {target.where} in {args.mode} mode{capped}: up to {args.count:,} {what} "
         f"or {args.duration:g} s" + (" (Ctrl-C stops early)" if tty else ""))
    result = bomb.run(target, mode=args.mode, count=args.count, duration=args.duration,
                      workers=args.workers, pool_size=args.pool_size, progress=progress,
                      wait_close=args.wait_close, on_first_error=first_error,
                      max_idle=args.max_idle)
    if tty:
        sys.stderr.write("\n")
    if args.json:
        from dataclasses import asdict

        body = asdict(result)
        body.pop("timeline")
        emit_json(body)
    else:
        for line in result_lines(result):
            out(line)
    failure = connect_failure(result, target.where)
    if failure is not None:
        raise failure  # after the result: it is what happened, the status says it failed
    return 0


#: Errors that mean no connection could be made at all (as ``tcplab client`` says).
_CONNECT_ERRORS = {
    "ECONNREFUSED": ("connection refused: nothing listens on {where}",
                     "start one with 'tcplab server --port {port}', or check --host/--port"),
    "ETIMEDOUT": ("connecting to {where} timed out", "is the server's accept queue full, "
                  "or does a firewall drop SYNs?"),
    "EHOSTUNREACH": ("{where} is unreachable", "check --host"),
    "ENETUNREACH": ("{where} is unreachable", "check --host"),
}


def connect_failure(r: Any, where: str) -> Exception | None:
    """ConnectFailed when not one connection succeeded and every failure was a
    failure to connect (nothing listening: 100 ECONNREFUSED is not a port bomb)."""
    from tcplab.errors import ConnectFailed

    if r.ok or not r.failed or not set(r.errors) <= set(_CONNECT_ERRORS):
        return None
    name = r.first_error.name if r.first_error else next(iter(r.errors))
    message, hint = _CONNECT_ERRORS[name]
    return ConnectFailed(
        message.format(where=where) + f" ({r.failed:,} of {r.attempted:,} attempts failed: "
        + ", ".join(f"{n} {c:,}" for n, c in r.errors.items()) + ")",
        hint=hint.format(port=r.port))


def result_lines(r: Any) -> list[str]:
    from tcplab.traffic.bomb import STALL_S

    what = "requests" if r.mode == "pool" else "connections"
    waiting = r.unanswered + r.unconnected
    lines = [
        f"{r.mode}: {r.attempted:,} {what} attempted, {r.ok:,} ok, {r.failed:,} failed"
        + (f", {waiting:,} still waiting" if waiting else "")
        + f" in {r.elapsed_s:.2f} s ({r.conns_per_s:,.0f} ok/s; stopped by {r.stopped_by})",
    ]
    e = r.first_error
    if e is not None:
        lines.append(first_error_line(e))
        later = r.ok - e.after_ok
        if later > 0:
            lines.append(f"{r.ok:,} ok in all: {e.after_ok:,} before the first error and "
                         f"{later:,} after it (connections already under way, holding a port)")
        lines.append("errors: " + ", ".join(f"{n} {c:,}" for n, c in r.errors.items()))
    elif not waiting:
        lines.append("no errors")
    if waiting:
        bound = {"duration": "the time bound", "interrupt": "Ctrl-C"}.get(r.stopped_by,
                                                                         r.stopped_by)
        lines.append(
            f"{waiting:,} still waiting when {bound} stopped the run (neither ok nor failed): "
            f"{r.unanswered:,} sent the request and got no echo, {r.unconnected:,} never "
            f"finished connecting; the longest waited {r.longest_wait_s:.1f} s"
            + (f", {r.stalled:,} of them {STALL_S:g} s or more: hung (a server that stopped "
               "accepting or answering?)" if r.stalled else ": in flight, not hung"))
    if r.max_idle is not None and r.opened is not None:
        lines.append(f"pool of {r.pool_size} with at most {r.max_idle} idle: "
                     f"{r.opened:,} new connections for {r.attempted:,} requests "
                     f"({r.attempted - r.opened:,} took an idle one)")
    if r.time_wait_peak is not None:
        lines.append(f"TIME_WAIT peak: {r.time_wait_peak:,} sockets to port {r.port} "
                     "made by this run" + baseline_note(r.time_wait_baseline))
    return lines


def baseline_note(baseline: int | None) -> str:
    if not baseline:
        return ""
    return (f" ({baseline:,} more were already there when it started, from earlier "
            "connections: not counted)")


def first_error_line(e: Any) -> str:
    tw = "unknown" if e.time_wait is None else f"{e.time_wait:,}"
    rng = "unknown" if e.port_range is None else f"{e.port_range:,}"
    flight = f" ({e.in_flight:,} more under way)" if e.in_flight else ""
    return (f"first error at {e.at_s:.3f} s after {e.after_ok:,} ok{flight}: [Errno {e.errno}] "
            f"{e.name}: {e.message}; TIME_WAIT then {tw}, port range {rng} ports")
