"""``tcplab client``: talk to an echo server: messages, a stream, or measured round trips."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, human_bytes, note, out
from tcplab.words import plural

DESCRIPTION = """\
Connects to an echo server and shows what comes back.

  MESSAGE ...       sends each message and prints its echo, one per line
  (stdin piped)     streams stdin to the server and the echo to stdout, byte for
                    byte, like nc; then half-closes (shutdown SHUT_WR) and waits
                    for the rest of the echo
  (a terminal)      an interactive prompt: each line you type is echoed back
  --count N         N messages of --size bytes, every echoed byte verified;
                    prints round-trip times (min, p50, p99, max) and throughput

MESSAGE arguments take precedence over stdin. Traffic goes only to loopback
(127.0.0.0/8, ::1) unless --allow-remote is given.
"""

EXAMPLES = """\
examples:
  tcplab client hello world                  two round trips
  head -c 10M /dev/urandom | tcplab client | cmp - <(...)   a byte-exact stream
  tcplab client --count 10000 --size 64      latency of small echoes
  tcplab client --count 100 --size 1048576 --json
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        parents=[common.parent()],
        help="send messages to an echo server and print the echoes, or measure round trips",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("message", nargs="*", metavar="MESSAGE", help="messages to send, in order")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=common.port, default=8080, help="server port (default 8080)")
    p.add_argument(
        "--count", type=common.positive_int, metavar="N",
        help="send N messages of --size bytes, verify each echo, report round-trip times",
    )
    p.add_argument(
        "--size", type=common.non_negative_int, default=64, metavar="B",
        help="bytes per message with --count (default 64)",
    )
    p.add_argument(
        "--timeout", type=common.seconds, default=5.0, metavar="SECONDS",
        help="give up connecting, or waiting for an echo, after SECONDS (default 5)",
    )
    p.add_argument(
        "--allow-remote", action="store_true",
        help="allow a server outside loopback (only for hosts you own)",
    )
    common.add_json(p, "each echo, or the --count report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import ExitStatus
    from tcplab.traffic import client, target

    dest = target.resolve(args.host, args.port, allow_remote=args.allow_remote)
    if args.count is not None:
        if args.message:
            note("tcplab: --count ignores the MESSAGE arguments")
        report = client.round_trips(dest, args.count, args.size, args.timeout)
        if args.json:
            emit_json(report)
        else:
            _print_round_trips(report)
        return 0
    if args.message:
        return _messages(client, dest, args)
    stdin = _stdin()
    if stdin is None or not stdin.isatty():
        sock = client.connect(dest, args.timeout)
        with sock:
            if stdin is None:
                note("tcplab: no stdin: nothing to send (give MESSAGE arguments or --count)")
                sent, received = 0, 0
            else:
                fd = stdin.fileno()
                sent, received = client.stream(
                    sock, lambda n: os.read(fd, n), client.fd_writer(sys.stdout.fileno())
                )
        if args.json:
            emit_json({"sent": sent, "received": received})
        elif sent != received:
            note(f"tcplab: sent {sent} bytes, got {received} back")
        return ExitStatus.OK if sent == received else ExitStatus.VERIFY_FAILED
    return _interactive(client, dest, args)


def _stdin() -> Any:
    """sys.stdin, or None when the process has no usable stdin (CI starts us without one)."""
    if sys.stdin is None:
        return None
    try:
        os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return sys.stdin


def _messages(client: Any, dest: Any, args: argparse.Namespace) -> int:
    sock = client.connect(dest, args.timeout)
    with sock:
        for text in args.message:
            message = text.encode()
            t0 = time.perf_counter()
            echo = client.exchange(sock, message, args.timeout)
            rtt = (time.perf_counter() - t0) * 1e6
            if args.json:
                emit_json({"sent": text, "echo": echo.decode(errors="replace"),
                           "bytes": len(echo), "rtt_us": round(rtt, 1)})
            else:
                out(echo.decode(errors="replace"))
    return 0


def _interactive(client: Any, dest: Any, args: argparse.Namespace) -> int:
    sock = client.connect(dest, args.timeout)
    note(f"connected to {dest.where}; type a line, get its echo; Ctrl-D to quit")
    with sock:
        while True:
            try:
                line = input("> ")
            except EOFError:
                note("")
                return 0
            message = (line + "\n").encode()
            t0 = time.perf_counter()
            echo = client.exchange(sock, message, args.timeout)
            rtt = (time.perf_counter() - t0) * 1e6
            out(f"{echo.decode(errors='replace').rstrip(chr(10))}    ({rtt:.0f} us)")


def _print_round_trips(r: Any) -> None:
    out(f"{plural(r.count, 'echo')} of {r.size} B to {r.host}:{r.port}, every byte verified "
        f"({human_bytes(r.verified_bytes)})")
    out(f"round trip  min {r.rtt_min_us:.0f} us  p50 {r.rtt_p50_us:.0f} us  "
        f"p99 {r.rtt_p99_us:.0f} us  max {r.rtt_max_us:.0f} us")
    out(f"throughput  {r.messages_per_s:,.0f} echoes/s  {r.mib_per_s:,.1f} MiB/s echoed "
        f"in {r.elapsed_s:.2f} s")
