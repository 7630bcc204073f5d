"""``tcplab experiment``: run the lab's experiments and say what each showed."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out, to_jsonable
from tcplab.errors import ExitStatus

DESCRIPTION = """\
Runs the lab's experiments for real and reports, for each, the fact it
demonstrated with the figure measured on this machine.

  echo       Experiment 1: an echo server and a client; round trips measured,
             every byte verified, and the server's own totals checked against them
  port-bomb  Experiment 2: short-lived connections until connect() fails with
             EADDRNOTAVAIL, in a private network namespace per variant (fresh,
             pool, pool-too-small, default-reuse, linger0, server-closes,
             two-destinations, and real-link: the kernel's defaults across a
             veth pair between two namespaces, where they do fail);
             the host's sysctls are never touched
  fd-leak    Experiment 3: a leak-mode server with a 256-fd limit flooded by
             clients: fds to the limit, EMFILE, the accept queue, CLOSE_WAIT on
             the server, FIN_WAIT2 on the clients expiring; then the fix; and,
             with go on PATH, a Go server without Close(): a finalizer closes,
             after a GC, what nothing references (late), not what a slice
             keeps (--go)
  half-close one connection closed slowly: FIN_WAIT2 on the client and CLOSE_WAIT
             on the server until the server closes, then TIME_WAIT's countdown
  restart    a server stopped while its port holds TIME_WAIT sockets: a new
             listener's bind() fails with EADDRINUSE without SO_REUSEADDR and
             succeeds with it (and only if the old server had set it too)
  reset      close() with unread data sends RST, not FIN: the peer's next read
             gets ECONNRESET; SO_LINGER 0 for comparison
  syn-queue  a listener that never calls accept(): its accept queue holds
             backlog + 1, then SYNs and final ACKs are dropped (clients in
             SYN_SENT, or ESTABLISHED with no server socket; ListenOverflows);
             syncookies on and off; tcp_abort_on_overflow = 1 resets those
             with a request socket
  multiplex  Experiment 4, C10k: each server model against 100, 1,000 and 10,000
             concurrent connections: threads, RSS and CPU per echo, p99
  handshake  one connection's life with its syscalls, state changes and packets on
             one timeline; then an RST close (needs root: tracefs, AF_PACKET)
  keepalive  a peer gone silent (its link set down; on --link veth dropped by
             nftables at the server's end): keep-alive probes, then
             ETIMEDOUT; TCP_USER_TIMEOUT with keep-alive and with retransmissions
  ports      which local port connect() and bind() take in a ten-port range:
             parity, IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE, reserved ports
  orphans    sockets no process holds: FIN_WAIT2 minisockets counted as "tw" by
             /proc/net/sockstat ("timewait" in 'ss -s'), FIN_WAIT1 orphans,
             tcp_orphan_retries
  nagle      write-write-read: a small header write, a small body write, then
             the reply: with Nagle's algorithm each request waits for the
             server's delayed ACK (40 ms or more), with TCP_NODELAY or one
             sendmsg() it does not; the first request of a connection does not
             wait (quick-ACK mode); a full run on loopback adds a veth link with
             10 ms each way, where the wait grows by a round trip
  retransmit SYNs to a black-holed server across a delayed veth link (1 s apart,
             then doubling, as tcp_syn_linear_timeouts has it) until ETIMEDOUT;
             a lost segment sent again by fast retransmit within a round trip;
             two lost at the end: the tail loss probe, no timeout; a lost tail
             and its probe: the retransmission timer (>= 200 ms); as root with
             tcp:tcp_retransmit_skb on the packets' timeline
  all        every experiment above, in turn, with a summary

On its own (it takes minutes; 'all' does not run it):
  c100k      100,000 connections open and echoing at once on two cores: a
             server of K processes with SO_REUSEPORT listeners (and one shared
             listener, for its uneven accept histogram), a client spread over
             processes and 127.0.0.x source addresses, every byte verified; the
             server's user memory per connection, the kernel's bytes per socket
             (/proc/slabinfo, as root), which limit this machine hits first;
             each model at the largest scale it holds (threads: a ladder)
"""


#: In the order `experiment all` runs them.
EXPERIMENTS = ("echo", "port-bomb", "fd-leak", "half-close", "restart", "reset", "syn-queue",
               "multiplex", "handshake", "keepalive", "ports", "orphans", "nagle",
               "retransmit")
#: Experiments that run only when named: `all` leaves them out.
ON_ITS_OWN = ("c100k",)


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        parents=[common.parent()],
        help="run the lab's experiments (echo; 'all' runs every one)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=["all", *EXPERIMENTS, *ON_ITS_OWN],
                   help="which experiment")
    p.add_argument("--quick", action="store_true", help="smaller counts and shorter waits")
    p.add_argument("--report", metavar="DIR",
                   help="also write DIR/index.html (charts inline, no network needed) and "
                   "DIR/results.json")
    g = p.add_argument_group("port-bomb")
    g.add_argument("--ports", type=common.int_range(10, 28232), default=1000, metavar="N",
                   help="ephemeral ports in the narrowed range (default 1,000)")
    g.add_argument("--server-cmd", metavar="CMD",
                   help="run against your own server (port-bomb, fd-leak): CMD is started in "
                   "the namespace, {port} in it is replaced by the port; fd-leak sets LEAK=true "
                   "and a soft and hard fd limit for it; a variant your server cannot support "
                   "is skipped with the reason")
    g = p.add_argument_group("multiplex")
    g.add_argument("--connections", type=common.int_range(1, 1_000_000), action="append",
                   metavar="N", help="the ladder of concurrent connections (repeatable; "
                   "default 100, 1000, 10000)")
    g = p.add_argument_group("c100k")
    g.add_argument("--workers", type=common.int_range(1, 32), metavar="K",
                   help="server processes (default: as few as the hard fd limit allows, at "
                   "least one per CPU: 6 for 100,000 under 20,000)")
    g.add_argument("--processes", type=common.int_range(1, 32), metavar="C",
                   help="client processes (default: as few as the hard fd limit allows)")
    g.add_argument("--listener", choices=["reuseport", "shared", "both"], default="both",
                   help="the default model's listeners: one SO_REUSEPORT listener per "
                   "worker, one shared by all, or both in turn (default)")
    g.add_argument("--models", type=_models, metavar="M,M,...",
                   help="models to run (default uvloop,epoll,asyncio,threads); threads runs a "
                   "ladder of 2,500 to 20,000 that stops where it fails")
    g.add_argument("--process-fds", type=common.int_range(256, 1_048_576), metavar="N",
                   help="a hard fd limit for every server and client process (lower than "
                   "yours: more processes; for trying the spread at a small N)")
    g = p.add_argument_group("fd-leak")
    g.add_argument("--keepalive", type=common.int_range(1, 7200), metavar="SECONDS",
                   help="repeat the leak with SO_KEEPALIVE on the accepted sockets, idle "
                   "and interval SECONDS (15 is what Go sets on every accepted connection): "
                   "CLOSE_WAIT goes, the fds stay")
    g.add_argument("--go", choices=["auto", "yes", "no"], default="auto",
                   help="the Go rounds, with a Go server built from tcplab/peers/goleak.go "
                   "(go on PATH; nothing downloaded; the binary cached per user): go-drop, a "
                   "handler that returns without Close(): the finalizer net set on it closes the "
                   "unreachable net.Conn at a later garbage collection (the leak heals itself, "
                   "late); go-keep, the connections kept in a slice: the fds stay leaked while "
                   "Go's 15 s keep-alive clears CLOSE_WAIT once the peers' sockets are gone. auto "
                   "(default): when go is on PATH, not with --quick (they take about 25 s); "
                   "yes: also with --quick; no: left out. Not with --server-cmd")
    g.add_argument("--fd-limit", type=common.int_range(32, 4096), default=256, metavar="N",
                   help="the leaking server's fd limit (default 256; soft, and hard too "
                   "for --server-cmd)")
    g.add_argument("--variant", action="append", metavar="NAME",
                   help="run only this variant (repeatable)")
    g = p.add_argument_group("the link")
    g.add_argument("--link", choices=["loopback", "veth"], default="loopback",
                   help="where the client and the server run: loopback (default: one "
                   "private namespace, lo: MSS 32,741, no delay, no loss) or veth (a client "
                   "and a server namespace joined by a veth pair, 198.18.0.0/15, MTU 1500; "
                   "through a router namespace when shaped, see 'tcplab net --help'); each "
                   "experiment makes its own and takes it down, Ctrl-C and SIGKILL included")
    g = p.add_argument_group("live (the page of 'tcplab live', following each experiment)")
    g.add_argument("--live", action="store_true",
                   help="serve a page that follows each experiment as it runs: the states of "
                   "every TCP socket in its namespaces, their transitions (as root from the "
                   "kernel's tracepoints, the experiment's kept; else from sock_diag "
                   "snapshots, which miss short states), its progress lines; it stays after "
                   "the run until Ctrl-C")
    g.add_argument("--listen", type=common.listen_address, default=("127.0.0.1", 9310),
                   metavar="HOST:PORT", help="where --live serves the page (default "
                   "127.0.0.1:9310)")
    g.add_argument("--record", type=argparse.FileType("w"), metavar="FILE",
                   help="write what the page shows to FILE, one JSON object a line "
                   "('tcplab live --replay FILE' plays it); --report has each experiment's "
                   "replay without it")
    g.add_argument("--live-interval", type=common.seconds, default=0.5, metavar="SECONDS",
                   help="seconds between two counts for --live, --record and --report's "
                   "replays (default 0.5)")
    from tcplab.cli.net import add_shaping_options

    add_shaping_options(p)
    common.add_json(p, "each experiment's result (one object per line)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import ExperimentFailed, NotSupported, UsageError
    from tcplab.experiments import (
        echo,
        fd_leak,
        half_close,
        handshake,
        keepalive,
        multiplex,
        nagle,
        orphans,
        port_bomb,
        ports,
        reset,
        restart,
        retransmit,
        syn_queue,
    )
    from tcplab.experiments.result import result_type
    from tcplab.records import to_json
    from tcplab.report.prose import worded
    from tcplab.report.terminal import result_lines, summary_lines

    if args.report:
        check_report_dir(args.report)  # now, not after minutes of experiments
    from tcplab.cli.net import shaping_of
    from tcplab.experiments.link import LinkSpec

    link = LinkSpec(args.link, shaping_of(args))
    problem = link.problem()
    if problem:
        raise UsageError(problem)
    variants = tuple(args.variant or port_bomb.VARIANTS)
    unknown = [v for v in variants if v not in port_bomb.VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant {unknown[0]!r}",
                         hint=f"choose from: {', '.join(port_bomb.VARIANTS)}")
    bomb_settings = port_bomb.Settings(ports=args.ports, count=args.ports * 3,
                                       server_cmd=args.server_cmd, variants=variants)

    def run_bomb(quick: bool, progress: Any, link: Any) -> Any:
        return port_bomb.run(bomb_settings, quick=quick, progress=progress, link=link)

    leak_settings = fd_leak.Settings(fd_limit=args.fd_limit,
                                     keepalive=args.keepalive is not None,
                                     keepalive_s=args.keepalive or fd_leak.KEEPALIVE_S,
                                     server_cmd=args.server_cmd,
                                     clients=max(450, args.fd_limit * 2), go=args.go)

    def run_leak(quick: bool, progress: Any, link: Any) -> Any:
        return fd_leak.run(leak_settings, quick=quick, progress=progress, link=link)

    mux_settings = multiplex.Settings(
        ladder=tuple(args.connections) if args.connections else (100, 1000, 10_000))
    if args.name in ("multiplex", "all") and max(mux_settings.ladder) > multiplex.MOST:
        raise UsageError(f"--connections {max(mux_settings.ladder):,}: experiment multiplex "
                         f"runs one client and one server process, which hold at most "
                         f"{multiplex.MOST:,} (the hard fd limit, less spare)",
                         hint="for more, run 'tcplab experiment c100k --connections N'")
    if args.name == "c100k":
        from tcplab.experiments import c100k

        if args.connections and len(args.connections) > 1:
            raise UsageError("experiment c100k takes one --connections", hint="e.g. "
                             "--connections 100000")
        c100k_settings = c100k.Settings(
            connections=args.connections[0] if args.connections else 100_000,
            models=tuple(args.models) if args.models else c100k.Settings().models,
            listener=args.listener, workers=args.workers, processes=args.processes,
            process_fds=args.process_fds)

        def run_c100k(quick: bool, progress: Any, link: Any) -> Any:
            return c100k.run(c100k_settings, quick=quick, progress=progress, link=link)

    def run_multiplex(quick: bool, progress: Any, link: Any) -> Any:
        return multiplex.run(mux_settings, quick=quick, progress=progress, link=link)

    runners = {"echo": echo.run, "port-bomb": run_bomb, "fd-leak": run_leak,
               "half-close": half_close.run, "restart": restart.run,
               "reset": reset.run, "syn-queue": syn_queue.run,
               "multiplex": run_multiplex, "handshake": handshake.run,
               "keepalive": keepalive.run, "ports": ports.run,
               "orphans": orphans.run,
               "nagle": nagle.run,
               "retransmit": retransmit.run}
    assert list(runners) == list(EXPERIMENTS)
    if args.name == "c100k":
        runners["c100k"] = run_c100k
    names = list(runners) if args.name == "all" else [args.name]
    results = []
    bodies = []
    could_not_run = []
    started = time.monotonic()
    live = _live(args)
    if live is not None and args.name == "c100k":
        from tcplab.experiments import c100k

        # 200,000 sockets: every state change traced would be millions of events,
        # and a snapshot each 0.5 s a large share of a core (c100k.LIVE_INTERVAL).
        live.follower.tracepoint = False
        if live.follower.interval < c100k.LIVE_INTERVAL:
            live.follower.interval = c100k.LIVE_INTERVAL
            note(f"note: c100k's live counts come every {c100k.LIVE_INTERVAL:g} s, from "
                 "sock_diag snapshots without the tracepoints: at 200,000 sockets more "
                 "often would take the CPU the experiment measures")
    for i, name in enumerate(names, 1):
        status = _Status(f"[{i}/{len(names)}] {name}", started, quiet=args.json)
        note(f"running experiment {name} ...")
        try:
            verbose = args.json or name in ("port-bomb", "multiplex", "c100k")
            progress = status.step if not verbose else status.note
            if live is not None:  # its progress lines are events on the page
                progress = live.experiment(name, progress)
            result = worded(runners[name](quick=args.quick, progress=progress, link=link))
        except NotSupported as exc:
            if args.name != "all":
                raise
            result = result_type(name)(experiment=name, ok=False,
                                       skipped=f"{exc.message} (fix: {exc.hint})")
        except ExperimentFailed as exc:
            if args.name != "all":
                raise
            could_not_run.append(name)
            result = result_type(name)(experiment=name, ok=False,
                                       fact=f"failed to run: {exc.message}")
        except (OSError, RuntimeError, ValueError) as exc:  # a bug: the others still run
            if args.name != "all":
                raise
            result = result_type(name)(experiment=name, ok=False,
                                       fact=f"failed to run: {type(exc).__name__}: {exc}")
        finally:
            status.stop()
        results.append(result)
        # --json and results.json are the worded record, as report/ renders it.
        body = {"schema": 1, **to_jsonable(to_json(result))}
        bodies.append(body)
        if args.json:
            emit_json(body)
        else:
            for line in result_lines(result):
                out(line)
    if len(results) > 1:
        if not args.json:
            for line in summary_lines(results):
                out(line)
        note(f"all experiments took {time.monotonic() - started:.0f} s")  # stderr: --json too
    failed = [r.experiment for r in results if not r.ok and r.skipped is None]
    if failed:
        note(f"tcplab: experiment {', '.join(failed)} did not show its fact")
    if args.report:
        # The results are on stdout already; a report that cannot be written
        # (the disk filled, the directory went away) is said with its path.
        from tcplab.report import html

        try:
            path = html.write(results, args.report, bodies,
                              command=shlex.join(["tcplab", *sys.argv[1:]]),
                              recordings=live.recordings if live is not None else None)
        except OSError as exc:
            raise _report_error(exc, args.report) from None
        note(f"report written to {path}")
    if live is not None:
        live.hold()  # --live: the page stays until Ctrl-C
        live.close()
    if could_not_run:
        return ExitStatus.EXPERIMENT_FAILED
    return ExitStatus.ERROR if failed else ExitStatus.OK


def _live(args: argparse.Namespace) -> Any:
    """What follows the experiments for --live, --record and --report's replays
    (cli/live.py, experiments/live_hook.py); None: nothing does."""
    if not (args.live or args.record or args.report):
        return None
    from tcplab.cli.live import ExperimentLive

    return ExperimentLive(args.live, args.listen, args.record, args.live_interval,
                          f"tcplab experiment {args.name}")


def _models(text: str) -> list[str]:
    from tcplab.traffic.models import MODELS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model {unknown[0] if unknown else text!r}: "
                                         f"choose from {', '.join(MODELS)}")
    return names


#: The files ``--report DIR`` writes (report/html.write).
REPORT_FILES = ("index.html", "results.json")


def check_report_dir(directory: str) -> None:
    """Refuse a ``--report DIR`` that cannot be written, before any experiment runs.

    DIR may exist (a directory we may write into) or not (then its parent must
    exist and be writable: a missing parent is more often a typo than a wish).
    ``os.access`` answers for root too: EROFS on a read-only file system.
    """
    from tcplab.errors import PrivilegeError, UsageError

    path = os.path.abspath(directory)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--report {directory}: {path} is a file, not a directory",
                         hint="give a directory (tcplab writes index.html and results.json "
                         "into it)")
    where = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isdir(where):
        raise UsageError(f"--report {directory}: the parent directory {where} does not exist",
                         hint=f"create it first (mkdir -p {where}) or pick another directory")
    if not os.access(where, os.W_OK | os.X_OK):
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            raise UsageError(f"--report {directory}: {where} is on a read-only file system",
                             hint="pick a directory on a writable file system")
        raise PrivilegeError(f"--report {directory}: {where} is not writable by this user",
                             hint="pick a directory you may write to")
    for name in REPORT_FILES if where == path else ():
        target = os.path.join(path, name)
        if os.path.isdir(target) or (os.path.exists(target)
                                     and not os.access(target, os.W_OK)):
            raise UsageError(f"--report {directory}: {target} exists and cannot be replaced",
                             hint="pick another directory")


def _report_error(exc: OSError, directory: str) -> Exception:
    from tcplab.errors import PrivilegeError, TcplabError, describe_oserror

    where = exc.filename or os.path.abspath(directory)
    message = f"could not write the report to {where}: {describe_oserror(exc)}"
    hint = "the results above are complete; run again with another --report directory"
    if isinstance(exc, PermissionError):
        return PrivilegeError(message, hint=hint)
    return TcplabError(message, hint=hint)


class _Status:
    """Which experiment, which step, elapsed: a live line on a terminal, plain lines
    otherwise (and nothing extra when stdout carries JSON: notes go to stderr)."""

    def __init__(self, label: str, started: float, quiet: bool) -> None:
        self.label = label
        self.started = started
        self.live = None
        if sys.stderr.isatty() and not quiet:
            from rich.console import Console

            self.live = Console(stderr=True).status(label)
            self.live.start()

    @staticmethod
    def _words(line: str, verdict: object) -> str:
        """A verdict's line with its reason in words (report/prose.py), not its code."""
        if verdict is None:
            return line
        from tcplab.report.prose import verdict_words

        why = verdict_words(verdict)
        head = line.split(" (", 1)[0]  # "  fixed: skipped (leaked-without-leak)"
        return f"{head}: {why}" if why else line

    def step(self, line: str, verdict: object = None, /) -> None:
        line = self._words(line, verdict)
        if self.live is not None:
            elapsed = time.monotonic() - self.started
            self.live.update(f"{self.label}: {line.strip()}  ({elapsed:.0f} s)")

    def note(self, line: str, verdict: object = None, /) -> None:
        line = self._words(line, verdict)
        if self.live is not None:
            self.step(line)
        else:
            note(line)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
