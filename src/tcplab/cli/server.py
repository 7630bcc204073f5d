"""``tcplab server``: the echo server of Experiment 1, and the subject of 2 to 4."""

from __future__ import annotations

import argparse
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, human_bytes, note, out, to_jsonable, write_line

DESCRIPTION = """\
An echo server: every byte a client sends comes back, byte for byte.

Four models serve the same protocol, to compare how they scale:
  uvloop   asyncio protocol on libuv's event loop (the default)
  asyncio  the same protocol on the stdlib event loop (epoll underneath)
  epoll    a hand-written select.epoll loop: Go's netpoll spelled out (level-
           triggered; Go registers each fd once, edge-triggered)
  threads  one OS thread per connection with blocking sockets (what C10k defeats)

Leak mode (--leak, or LEAK=true in the environment as in the original lab)
never calls close() on an accepted socket. After a client closes, the server's
socket sits in CLOSE_WAIT and keeps its fd, until accept() fails with
EMFILE "Too many open files". The server then logs one line per backoff step
(5 ms doubling to 1 s, as Go's net/http does; on EMFILE, ENFILE, ENOBUFS and
ENOMEM, the errnos CPython's asyncio retries), stays idle, and accepts again
as soon as fds are free.

Server CPU per echo (100 connections, 64 B; bench/results.md, "CPU per echo"):
uvloop 3.65 us, epoll 3.74 us, asyncio 4.44 us, threads 29.3 us, a Go
reference server 4.99 us; most of each is the kernel's own read() and write().

Several processes (--workers K): RLIMIT_NOFILE is a per-process limit, one fd
per connection, and the hard limit can be raised only with CAP_SYS_RESOURCE;
with a hard limit of 20,000, 100,000 connections need at least 6 processes.
A supervisor applies --fd-limit (a fork inherits it), forks K workers before
importing the model (fork copies only the calling thread), says where it
listens with every worker's pid, forwards SIGTERM to them when it is stopped
(SIGKILL after 2 s) and prints each worker's totals, then their sum. A worker
that dies stops the whole server (exit status 1, the worker named). The
listener (--listener):
  reuseport  every worker opens its own listener on the port with SO_REUSEPORT
             (Linux 3.9): each has its own accept queue, and the kernel picks
             one for each new connection by a hash of the 4-tuple
             (net/ipv4/inet_hashtables.c, inet_lookup_reuseport: inet_ehashfn
             of both addresses and ports; net/core/sock_reuseport.c,
             reuseport_select_sock_by_hash: reciprocal_scale(hash, num_socks)).
             Since the late-2022 patch "soreuseport: Fix socket selection for
             SO_INCOMING_CPU" (so in the 6.18 we run) it prefers a listener whose
             SO_INCOMING_CPU is the CPU handling the SYN, but only once some
             listener of the group has set that option; tcplab's do not, so
             the spread is the hash's: about even, a binomial share each.
  shared     the supervisor opens one listener before the fork and all workers
             accept from it: one accept queue. Every worker's poller watches
             the same socket without EPOLLEXCLUSIVE (fs/eventpoll.c,
             ep_ptable_queue_proc: add_wait_queue, not _exclusive), so each
             connection wakes them all; whoever runs first takes a batch (up to
             64 accept()s a wake-up, traffic/accept.py) and the others find the
             queue empty. The spread is uneven, more so with fewer cores.
Measured here (2 cores; 6 uvloop workers; 3,000 connections opened one after
another and held; 2 runs each): reuseport gave each worker 472 to 533, shared
85 to 1,377.

The fd limit: the server keeps the soft limit it was started with ('ulimit -n'),
or the one --fd-limit sets. Note that Go, since 1.19, raises its own soft limit
to the hard limit at start, so 'ulimit -Sn 128' does not reproduce the leak in
the Go original ('ulimit -n 128' sets the hard limit too, and Go keeps that
one); it does in tcplab.
"""

EXAMPLES = """\
examples:
  tcplab server                            127.0.0.1:8080, uvloop model
  tcplab server --port 0 --model threads   a free port, thread per connection
  LEAK=true tcplab server --fd-limit 128   leak fds until EMFILE, quickly
  tcplab server --stats 1                  a status line every second
  tcplab server --close-first              the server closes first: TIME_WAIT lands here
  tcplab server --workers 6 --fd-limit max 6 processes, one SO_REUSEPORT listener each
  tcplab server --workers 6 --listener shared   6 processes accepting from one listener

The first line says where it listens, the model, the pid, leak on/off and the fd
limit; with --workers, a second line names the workers and their pids. Stop it
with Ctrl-C (or SIGTERM): it closes its connections (unless leaking), prints
totals (per worker, with a bar of its accepted connections, then the sum) and
exits 0 (130 after Ctrl-C).
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        parents=[common.parent()],
        help="run an echo server (models: uvloop, asyncio, epoll, threads; leak mode)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tcplab.traffic.models import DEFAULT_MODEL, MODELS

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=common.port, default=8080, help="port (default 8080; 0 picks a free one)"
    )
    p.add_argument(
        "--model", choices=MODELS, default=DEFAULT_MODEL,
        help=f"server model (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--leak",
        action="store_true",
        help="never close() accepted sockets (also LEAK=true): CLOSE_WAIT, then EMFILE",
    )
    p.add_argument(
        "--backlog",
        type=common.positive_int,
        help="listen() backlog (default: net.core.somaxconn, as Go; the kernel caps it there)",
    )
    p.add_argument(
        "--stats", type=common.seconds, metavar="SECONDS",
        help="print a status line every SECONDS: connections, bytes, accept errors, fds",
    )
    p.add_argument(
        "--fd-limit", metavar="N|max",
        help="set the soft fd limit ('ulimit -Sn') to N, or 'max' for the hard limit",
    )
    p.add_argument(
        "--close-first", action="store_true",
        help="close each connection right after its first echo, so TIME_WAIT lands on the server",
    )
    p.add_argument(
        "--keepalive", type=common.seconds, metavar="SECONDS",
        help="SO_KEEPALIVE on accepted sockets, idle and interval SECONDS (Go's default is 15)",
    )
    p.add_argument(
        "--workers", type=common.int_range(1, 64), default=1, metavar="K",
        help="serve from K processes (default 1: one process); the fd limit is per process",
    )
    p.add_argument(
        "--listener", choices=("reuseport", "shared"), default=None,
        help="with --workers K > 1: one SO_REUSEPORT listener per worker (the default), "
        "or one listener shared by all",
    )
    common.add_json(p, "the listening line, status lines, per-worker totals and totals "
                    "(one object per line)")
    p.set_defaults(func=run)


class _Printer:
    """Hooks for the server: text lines, or one JSON object per line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.worker_totals_seen: list[Any] = []

    def listening(self, info: Any) -> None:
        if self.as_json:
            emit_json(info, event="listening")
            return
        keep = f", keepalive {info.keepalive:g} s" if info.keepalive else ""
        first = ", closes first" if info.close_first else ""
        who = f"supervisor pid {info.pid}" if info.workers else f"pid {info.pid}"
        out(
            f"listening on {_where(info.host, info.port)} (model {info.model}, {who}, "
            f"leak {'on' if info.leak else 'off'}, fd limit {info.fd_soft} soft / "
            f"{info.fd_hard} hard, backlog {info.backlog}{first}{keep})"
        )
        if info.workers:
            pids = ", ".join(f"{w.index} pid {w.pid}" for w in info.workers)
            out(f"{len(info.workers)} workers, {info.listener} listener: {pids}")

    def log(self, line: str) -> None:
        note(line)

    def stats(self, s: Any) -> None:
        # A worker's line (--workers) goes to the stdout it shares with the
        # others in one write() of at most PIPE_BUF bytes, so lines never mix
        # (pipe(7): such writes are atomic).
        worker = getattr(s, "worker", None)
        if self.as_json:
            emit_json(s, event="stats", atomic=worker is not None)
            return
        who = f"worker {worker} (pid {s.pid})  " if worker is not None else ""
        write_line(
            f"{who}open {s.open}  accepted {s.accepted}  closed {s.closed}  "
            f"echoed {human_bytes(s.bytes_echoed)}  accept errors {s.accept_errors}  "
            f"fds {s.fds_in_use}/{s.fd_limit}", atomic=worker is not None
        )

    def worker_totals(self, t: Any) -> None:
        self.worker_totals_seen.append(t)
        if self.as_json:
            emit_json(t, event="worker-totals")

    def histogram(self) -> None:
        """The workers' accepted connections as text bars, once all are in."""
        most = max((w.accepted for w in self.worker_totals_seen), default=0) or 1
        width = len(f"{most:,}")
        for t in self.worker_totals_seen:
            out(f"worker {t.index} (pid {t.pid}): accepted {t.accepted:>{width},}  "
                f"{'#' * round(BAR * t.accepted / most)}")


#: Width of the widest bar in the per-worker totals (text).
BAR = 40


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run(args: argparse.Namespace) -> int:
    import signal

    from tcplab.errors import ExitStatus
    from tcplab.traffic import server

    config = server.ServerConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        leak=args.leak or common.env_flag("LEAK"),
        backlog=args.backlog,
        stats_interval=args.stats,
        close_first=args.close_first,
        keepalive=args.keepalive,
    )
    if config.leak and config.close_first:
        note("tcplab: --close-first has no effect in leak mode: a leaking server never closes")
    if args.listener is not None and args.workers == 1:
        note(f"tcplab: --listener {args.listener} has no effect with one worker: "
             "a single process listens on one socket (use --workers K)")
    printer = _Printer(args.json)
    try:
        totals = server.run_workers(config, printer, fd_limit=args.fd_limit,
                                    workers=args.workers, listener=args.listener or "reuseport")
    finally:
        if not args.json:
            printer.histogram()  # also those of the workers left when one died
    if args.json:
        extra = ({"workers": to_jsonable(printer.worker_totals_seen)} if args.workers > 1
                 else {})
        emit_json(totals, event="totals", open=totals.open, **extra)
    else:
        leaked = f", leaked {totals.leaked} (never closed)" if config.leak else ""
        out(
            f"stopped: accepted {totals.accepted}, closed {totals.closed}{leaked}, "
            f"echoed {human_bytes(totals.bytes_echoed)}, accept errors {totals.accept_errors}"
        )
    # Totals first, then the status a shell expects of Ctrl-C.
    return ExitStatus.INTERRUPTED if server.stopped_by == signal.SIGINT else ExitStatus.OK
