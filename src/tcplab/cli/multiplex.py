"""``tcplab multiplex``: thousands of concurrent connections against one server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, human_bytes, note, out

DESCRIPTION = """\
Opens N concurrent connections from one client process (ramped, so the
server's accept queue is not overrun), holds them all open, sends M messages of
B bytes on every one and verifies every echoed byte, then closes. Then it says
what the server needed for it: OS threads, RSS per connection, fds against its
limit, and how many sockets its epoll instances watch: "1 thread, 1 epoll
instance watching 10,000 sockets" is the C10k lesson in one line. Go's netpoll
does the same with goroutines parked on epoll, run by GOMAXPROCS Ps on a few
OS threads.

The server is found by its listening port (or --server-pid). The client raises
its own soft fd limit as far as N needs, up to the hard limit, and says so.

A server that cannot keep up shows as "timeout": connections still waiting for
an echo when --timeout runs out. It also says how many connections got a first
echo at all, and (on loopback) when the server had accepted every connection,
read from the listener's accept queue. Nothing listening on the port: it stops
at the first refused connection with the connection-failed exit status.
"""

EXAMPLES = """\
examples:
  tcplab server --fd-limit max &             a server that may hold 10,000 sockets
  tcplab multiplex --connections 10000
  tcplab multiplex --connections 1000 --messages 20 --size 1024 --json
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="C10k: many concurrent connections, and what the server needed",
                       description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=common.port, default=8080)
    p.add_argument("--connections", type=common.positive_int, default=1000, metavar="N")
    p.add_argument("--messages", type=common.positive_int, default=5, metavar="M",
                   help="round trips per connection (default 5)")
    p.add_argument("--size", type=common.positive_int, default=64, metavar="B",
                   help="bytes per message (default 64)")
    p.add_argument("--ramp", type=common.seconds, metavar="S",
                   help="seconds over which to open the connections (default N / 5000, "
                   "at least 0.2)")
    p.add_argument("--server-pid", type=common.positive_int, metavar="PID",
                   help="the server process (default: whoever listens on --port)")
    p.add_argument("--timeout", type=common.seconds, default=60.0, metavar="S",
                   help="give up on the echoes after S seconds (default 60)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a server outside loopback (only hosts you own)")
    common.add_json(p, "the result as one object")
    p.set_defaults(func=run)


def find_server(port: int) -> int | None:
    from tcplab.observe.owners import listening_processes

    return next((o.pid for o in listening_processes(port)), None)


def run(args: argparse.Namespace) -> int:
    from tcplab.traffic import multiplex
    from tcplab.traffic.target import resolve

    target = resolve(args.host, args.port, allow_remote=args.allow_remote)
    pid = args.server_pid or find_server(args.port)
    if pid is None:
        note(f"note: no process of yours listens on port {args.port} that could be read; "
             "server facts are skipped (give --server-pid, or run as root)")
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        else:
            note(line)

    r = multiplex.run(target, args.connections, args.messages, args.size, args.ramp, pid,
                      timeout=args.timeout, progress=progress)
    if tty:
        sys.stderr.write("\n")
    for line in r.notes:
        note(f"note: {line}")
    if args.json:
        emit_json(r)
    else:
        for line in result_lines(r):
            out(line)
    return 0 if not r.failures else 1


def _plural(n: int, word: str) -> str:
    """``1 thread``, ``2 threads``, ``10,000 echoes``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{'es' if word.endswith('o') else 's'}"


def result_lines(r: Any) -> list[str]:
    lines = [
        f"{r.connected:,} of {_plural(r.connections, 'connection')} open at once in "
        f"{r.connect_s:.2f} s; {_plural(r.echoes, 'echo')} of {r.size} B verified in "
        f"{r.exchange_s:.2f} s ({r.echoes_per_s:,.0f} echoes/s)",
        f"round trip  p50 {r.rtt_p50_us:,.0f} us  p99 {r.rtt_p99_us:,.0f} us  "
        f"max {r.rtt_max_us:,.0f} us" + (f"  (of the {r.echoes:,} verified; connections that "
                                         "timed out are not in it)"
                                         if r.failures.get("timeout") else ""),
    ]
    served = (f"every connection got its first echo {r.served_all_s:.2f} s into the exchange"
              if r.served_all_s is not None else
              f"{r.served:,} of {r.connected:,} connections got a first echo in "
              f"{r.exchange_s:.2f} s")
    if r.accepted_s is not None:
        accepted = (f"the server had accepted all of them {r.accepted_s:.2f} s after the first "
                    "connect")
    elif r.unaccepted is not None:
        accepted = (f"{r.unaccepted:,} were still waiting to be accepted at the end (accept "
                    f"queue peak {r.accept_queue_peak:,})")
    else:
        accepted = ""
    lines.append(served + ("; " + accepted if accepted else ""))
    s = r.server
    if s is not None:
        per = (f" ({human_bytes(r.server_rss_per_conn)} per connection)"
               if r.server_rss_per_conn is not None else "")
        lines.append(
            f"server pid {s.pid} ({s.command}): {_plural(s.threads, 'thread')}, "
            f"{_plural(s.epoll_instances, 'epoll instance')} watching "
            f"{_plural(s.epoll_watches, 'socket')}, RSS {human_bytes(s.rss_bytes)}{per}, "
            f"{s.fds:,} fds of {s.fd_limit:,}"
            + (f", {r.server_cpu_us_per_echo} us of CPU per echo"
               if r.server_cpu_us_per_echo is not None else "")
        )
    for name, count in r.failures.items():
        why = r.explanations.get(name, "")
        lines.append(f"failed: {name} x{count:,}" + (f": {why}" if why else ""))
    return lines
