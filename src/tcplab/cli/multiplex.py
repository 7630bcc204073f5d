"""``tcplab multiplex``: thousands of concurrent connections against one server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, human_bytes, note, out
from tcplab.words import plural

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

Past one process (C100k): one client process holds at most its hard fd limit
('ulimit -Hn', 20,000 here; only CAP_SYS_RESOURCE raises it) less a few, and one
source address offers one ephemeral port range toward one server address and
port (net.ipv4.ip_local_port_range, 28,232 by default). So when N is larger
than one process holds, or --processes asks, the connections are spread over
forked client processes, each with its own source address (127.0.0.2, .3, ...
toward a 127.0.0.1 server; --source for others) bound with
IP_BIND_ADDRESS_NO_PORT, each given at most 40 % of the port range: connect()
scans one parity of the range first (__inet_hash_connect), and once that half
is full every connect() walks all of it. They connect, hold, echo and close in step, and the
server's processes (every --server-pid, or every process listening on the
port, e.g. 'tcplab server --workers 6') are read at each step: connections
per process (the accept histogram), user memory per connection, CPU.

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
  tcplab server --workers 6 --fd-limit max &  six processes, SO_REUSEPORT listeners
  tcplab multiplex --connections 100000      six client processes, 127.0.0.2 to .7
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="C10k: many concurrent connections, and what the server needed",
                       description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=common.port, default=8080)
    p.add_argument("--connections", type=common.int_range(1, 1_000_000), default=1000,
                   metavar="N", help="connections open at once (default 1000)")
    p.add_argument("--processes", type=common.int_range(1, 64), metavar="C",
                   help="client processes to spread them over (default: as few as the hard "
                   "fd limit allows)")
    p.add_argument("--source", type=_addresses, metavar="A,B,...",
                   help="source addresses for the client processes, in turn (default: "
                   "127.0.0.2 and up toward a 127.0.0.1 server, else the kernel's choice)")
    p.add_argument("--messages", type=common.positive_int, default=5, metavar="M",
                   help="round trips per connection (default 5)")
    p.add_argument("--size", type=common.positive_int, default=64, metavar="B",
                   help="bytes per message (default 64)")
    p.add_argument("--ramp", type=common.seconds, metavar="S",
                   help="seconds over which to open the connections (default N / 5000, "
                   "at least 0.2)")
    p.add_argument("--server-pid", type=common.positive_int, metavar="PID", action="append",
                   help="a server process; repeat it for each of a server's processes "
                   "(default: whoever listens on --port)")
    p.add_argument("--timeout", type=common.seconds, default=60.0, metavar="S",
                   help="give up on the echoes after S seconds (default 60)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a server outside loopback (only hosts you own)")
    common.add_json(p, "the result as one object")
    p.set_defaults(func=run)


def _addresses(text: str) -> list[str]:
    import ipaddress

    out = []
    for part in text.split(","):
        try:
            out.append(str(ipaddress.ip_address(part.strip())))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not an IP address") from None
    return out


def find_servers(port: int) -> list[int]:
    from tcplab.observe.owners import listening_processes

    return sorted({o.pid for o in listening_processes(port)})


def run(args: argparse.Namespace) -> int:
    from tcplab.observe.process import own_fd_limit
    from tcplab.observe.procfs import port_range_size
    from tcplab.traffic import multiplex, spread
    from tcplab.traffic.target import resolve

    target = resolve(args.host, args.port, allow_remote=args.allow_remote)
    pids = args.server_pid or find_servers(args.port)
    if not pids:
        note(f"note: no process of yours listens on port {args.port} that could be read; "
             "server facts are skipped (give --server-pid, or run as root)")
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        else:
            note(line)

    processes = args.processes or spread.client_processes(
        args.connections, own_fd_limit().hard, target, port_range_size())
    if processes > 1 or len(pids) > 1:  # a server of several processes: read them all
        sources = args.source or spread.default_sources(target, processes)
        r = spread.run(target, args.connections, processes, sources, args.messages, args.size,
                       args.ramp, pids, timeout=args.timeout, progress=progress)
    else:
        if args.source:
            note("note: --source is used by spread runs only (--processes 2 or more)")
        r = multiplex.run(target, args.connections, args.messages, args.size, args.ramp,
                          pids[0] if pids else None, timeout=args.timeout, progress=progress)
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
    if r.spread is not None:
        lines.extend(spread_lines(r))
    for name, count in r.failures.items():
        why = r.explanations.get(name, "")
        lines.append(f"failed: {name} x{count:,}" + (f": {why}" if why else ""))
    return lines


def spread_lines(r: Any) -> list[str]:
    """A spread run: held, the server's processes as an accept histogram, memory."""
    sp = r.spread
    src = (f" from {r.sources[0]}" + (f" to {r.sources[-1]}" if len(r.sources) > 1 else "")
           if r.sources else "")
    lines = [f"held {r.held:,} of {r.connections:,} connections open and echoing at once, "
             f"{sp.held_s:.1f} s after the first connect; "
             f"{plural(r.processes, 'client process')}{src}"]
    if sp.workers:
        most = max(w.held for w in sp.workers) or 1
        lines.append(f"server: {plural(len(sp.workers), 'process')}, connections held by "
                     "each (socket fds at the peak less at idle):")
        for w in sp.workers:
            bar = "#" * max(0, round(30 * w.held / most))
            lines.append(f"  pid {w.pid:>7} {w.held:>8,} {bar:<30} RSS "
                         f"+{human_bytes(w.rss_peak - w.rss_idle)}, CPU {w.cpu_s:.2f} s, "
                         f"{_plural(w.threads, 'thread')}")
    if sp.rss_growth_per_conn is not None:
        lines.append(f"server user memory: {human_bytes(sp.rss_growth_per_conn)} per connection "
                     "(all its processes' RSS growth over idle, / held)")
    if sp.client_rss_per_conn is not None:
        lines.append(f"client user memory: {human_bytes(sp.client_rss_per_conn)} per connection")
    led = sp.ledger
    if led is not None and led.bytes_per_socket is not None:
        est = (f", {led.estimated_bytes_per_socket:,.0f} B of it estimated"
               if led.estimated_bytes_per_socket else "")
        ends = "both ends here" if led.sockets > led.connections else "this end"
        lines.append(f"kernel memory: {led.bytes_per_socket:,.0f} B per socket, "
                     f"{led.bytes_per_connection:,.0f} B per connection ({ends}; "
                     f"/proc/slabinfo's caches{est})")
    elif led is not None:
        lines.append(f"kernel memory: /proc/meminfo's Slab grew "
                     f"{led.meminfo_slab_per_socket:,.0f} B per socket ({led.why_not})")
    if sp.listen_overflows:
        lines.append(f"accept queue overflows: {sp.listen_overflows:,} (TcpExt ListenOverflows; "
                     "each one a final ACK the kernel dropped and the client sent again)")
    return lines
