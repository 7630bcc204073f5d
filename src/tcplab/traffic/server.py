"""What every echo server model shares: configuration, the listener, socket
options, the fd limit, signals, statistics, and the dispatch to a model.

A model is a module with ``serve(listener, config, hooks) -> ServerStats``. It
owns its loop, calls ``hooks`` for everything the user should see, and returns
the totals when SIGINT or SIGTERM asks it to stop.
"""

from __future__ import annotations

import errno
import importlib
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from tcplab.errors import AddressInUse, PrivilegeError, ResourceLimit, UsageError, describe_oserror
from tcplab.kernel.procfs import Limit
from tcplab.observe.process import fds_in_use, own_fd_limit
from tcplab.observe.procfs import sysctl_int
from tcplab.traffic.accept import ServerStats
from tcplab.traffic.models import DEFAULT_MODEL, MODELS
from tcplab.traffic.target import lookup

#: Bytes read per recv(); also the most a connection holds in user space
#: before the model stops reading from it (the high-water mark), so a client
#: that sends and never reads cannot grow the server without bound.
READ_SIZE = 64 * 1024
HIGH_WATER = 64 * 1024

#: Go's net.ListenConfig default keep-alive probes: count 9 (Go 1.23+).
KEEPALIVE_COUNT = 9


def default_backlog() -> int:
    """``net.core.somaxconn``, as Go uses: the kernel caps any larger backlog to it."""
    return sysctl_int("net.core.somaxconn", socket.SOMAXCONN)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    model: str = DEFAULT_MODEL
    leak: bool = False
    backlog: int | None = None
    stats_interval: float | None = None
    close_first: bool = False
    keepalive: float | None = None


@dataclass(frozen=True, slots=True)
class Listening:
    """The server's first words: where, how, and under which fd limit."""

    host: str
    port: int
    model: str
    pid: int
    leak: bool
    backlog: int
    fd_soft: int
    fd_hard: int
    close_first: bool
    keepalive: float | None
    #: ``--workers K`` (K > 1): the supervisor's workers, in index order; ``pid``
    #: above is then the supervisor's. Empty for the single-process server.
    workers: tuple[WorkerInfo, ...] = ()
    #: "single" (one process), "reuseport" (one SO_REUSEPORT listener per worker)
    #: or "shared" (one listener, opened before the fork, accepted from by all).
    listener: str = "single"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker of ``tcplab server --workers K``, as it reported ready: its
    VmRSS and fds in use after importing its model and opening its listener."""

    index: int
    pid: int
    rss_idle: int = 0  # bytes
    fds_idle: int = 0


@dataclass(frozen=True, slots=True)
class WorkerTotals:
    """One worker's ServerStats when it stopped (the CLI's "worker-totals" event)."""

    index: int
    pid: int
    accepted: int
    closed: int
    bytes_echoed: int
    accept_errors: int
    leaked: int


@dataclass(frozen=True, slots=True)
class StatsLine:
    open: int
    accepted: int
    closed: int
    bytes_echoed: int
    accept_errors: int
    fds_in_use: int
    fd_limit: int


@dataclass(frozen=True, slots=True)
class WorkerStatsLine(StatsLine):
    """A status line of one worker (``--workers K``): which one, and its pid."""

    worker: int
    pid: int


class Hooks(Protocol):
    def listening(self, info: Listening) -> None: ...
    def log(self, line: str) -> None: ...
    def stats(self, line: StatsLine) -> None: ...


class SupervisorHooks(Hooks, Protocol):
    def worker_totals(self, totals: WorkerTotals) -> None: ...


def snapshot(stats: ServerStats) -> StatsLine:
    return StatsLine(
        open=stats.open,
        accepted=stats.accepted,
        closed=stats.closed,
        bytes_echoed=stats.bytes_echoed,
        accept_errors=stats.accept_errors,
        fds_in_use=fds_in_use(),
        fd_limit=own_fd_limit().soft,
    )


def apply_fd_limit(spec: str | None) -> Limit:
    """Set the soft RLIMIT_NOFILE from ``--fd-limit``: a number, or ``max`` for the hard limit.

    Without the flag the server keeps the limit it was started with, as the
    original lab's notes assume (``ulimit -n``). Go, since 1.19, raises its own
    soft limit to the hard one at start (os package, ``rlimit.go``), so
    ``ulimit -Sn 128`` does not reproduce the leak there; tcplab does not.
    """
    current = own_fd_limit()
    if spec is None:
        return current
    if spec == "max":
        target = current.hard
    else:
        try:
            target = int(spec)
        except ValueError:
            raise UsageError(
                f"--fd-limit takes a number or 'max', not {spec!r}",
                hint="e.g. --fd-limit 128, or --fd-limit max for the hard limit",
            ) from None
    if target > current.hard:
        raise ResourceLimit(
            f"cannot set the soft fd limit to {target}: the hard limit is {current.hard}",
            hint="raise the hard limit first (as root: 'ulimit -Hn N' or 'prlimit --nofile'), "
            "or use --fd-limit max",
        )
    minimum = fds_in_use() + 4
    if target < minimum:
        raise UsageError(
            f"--fd-limit {target} is too low: the server already has {minimum - 4} fds open "
            "and needs a few more for its listener and poller",
            hint=f"use at least {minimum}",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, current.hard))
    return own_fd_limit()


def open_listener(host: str, port: int, backlog: int, reuseport: bool = False
                  ) -> socket.socket:
    """socket(), SO_REUSEADDR, bind(), listen(); OS errors become TcplabErrors.
    ``reuseport``: SO_REUSEPORT too, so that several listeners of the same user
    share the address, each with its own accept queue; the kernel spreads new
    connections over them by a hash of the 4-tuple (net/core/sock_reuseport.c,
    reuseport_select_sock), Linux 3.9 (issue 17's workers)."""
    family, addr = lookup(host, port, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Like every server (and Go): a restarted server can bind while its old
    # connections still sit in TIME_WAIT. It does not let two servers listen.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    where = f"[{addr[0]}]:{port}" if family == socket.AF_INET6 else f"{addr[0]}:{port}"
    try:
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port) from None
    sock.setblocking(False)
    return sock


def bind_error(exc: OSError, where: str, port: int, free: str = "--port 0") -> Exception:
    """A failed ``bind()``/``listen()`` on ``where`` as a TcplabError; an address in
    use names its holder. ``free`` is the option that picks a free port."""
    if exc.errno == errno.EADDRINUSE:
        from tcplab.observe.owners import listening_processes, read_cmdline

        named = listening_processes(port)
        if named:
            who = "; ".join(f"pid {h.pid} ({read_cmdline(h.pid)})" for h in named)
            return AddressInUse(
                f"{where} is already in use, held by {who}",
                hint=f"stop that process, or pick another port ({free} picks a free one)",
            )
        why = (
            "the holder could not be named: without root, other users' processes are hidden"
            if os.geteuid() != 0
            else "no process holds a listening socket on it; another socket is bound there"
        )
        return AddressInUse(
            f"{where} is already in use ({why})",
            hint=f"find it with 'ss -tanp sport = :{port}' as root, or use {free}",
        )
    if exc.errno == errno.EACCES:
        return PrivilegeError(
            f"binding {where} needs privilege: ports below "
            f"{_unprivileged_port_start()} are reserved for root",
            hint="use a port >= 1024, run as root, or grant CAP_NET_BIND_SERVICE",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(
            f"cannot listen on {where}: {describe_oserror(exc)} (no interface has that address)",
            hint="use 127.0.0.1, ::1, 0.0.0.0 or an address shown by 'ip addr'",
        )
    return UsageError(f"cannot listen on {where}: {describe_oserror(exc)}")


def _unprivileged_port_start() -> int:
    return sysctl_int("net.ipv4.ip_unprivileged_port_start", 1024)


def tune_accepted(sock: socket.socket, config: ServerConfig) -> None:
    """Per-connection options every model applies, as Go's net package does:
    TCP_NODELAY, and keep-alive probes when ``--keepalive`` asks (idle and
    interval both S seconds, 9 probes: Go's defaults with S = 15)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.keepalive:
        secs = max(1, int(config.keepalive))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, secs)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, secs)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


#: The signal that last asked this process's server to stop (None: none yet).
#: ``tcplab server`` exits 130 after SIGINT (Ctrl-C), as shells expect of an
#: interrupted command, and 0 after SIGTERM, a supervisor's ordinary stop.
stopped_by: int | None = None


def note_stop(signum: int) -> None:
    global stopped_by
    stopped_by = signum


#: A stop signal that reached a worker of ``--workers K`` after it stopped
#: raising on one and before its model installed its own handlers.
_pending: int | None = None


def note_pending(signum: int) -> None:
    """A worker's handler until the model's: notes the signal (note_stop too)."""
    global _pending
    _pending = signum
    note_stop(signum)


def pending_handler(signum: int, frame: object) -> None:
    """The SIGINT/SIGTERM handler from the listening line (or a worker's "go")
    until the model installs its own: a signal there is noted, not lost, and not
    fatal: a SIGTERM right after the listening line found SIG_DFL and killed
    the server without totals in 2 of 60 starts (all four models, stopped at
    once); 0 of 60 with this handler."""
    note_pending(signum)


def stop_pending() -> int | None:
    """The stop signal that came before the model installed its handlers: a model
    checks it right after installing them and stops at once. Always None in the
    single-process server, where nothing notes one."""
    return _pending


class StopSignal:
    """SIGINT/SIGTERM set ``requested`` and make ``fd`` readable, so a poller wakes.

    The C-level handler writes to the wakeup fd (signal.set_wakeup_fd) even
    while the main thread sits in epoll_wait or poll; the Python-level handler
    only sets the flag.
    """

    def __init__(self) -> None:
        self.requested = False
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _handler(self, signum: int, frame: object) -> None:
        self.requested = True
        note_stop(signum)

    def drain(self) -> None:
        drain(self.fd)


def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


@contextmanager
def stop_on_signals() -> Iterator[StopSignal]:
    stop = StopSignal()
    old_int = signal.signal(signal.SIGINT, stop._handler)
    old_term = signal.signal(signal.SIGTERM, stop._handler)
    old_wake = signal.set_wakeup_fd(stop._w, warn_on_full_buffer=False)
    if stop_pending() is not None:  # it came before these handlers: stop now
        stop.requested = True
        os.write(stop._w, b"x")
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(old_wake)
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        os.close(stop.fd)
        os.close(stop._w)


class Ticker:
    """Fires every ``interval`` seconds; ``timeout`` tells a poller how long it may sleep."""

    __slots__ = ("_due", "interval")

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._due = clock() + interval if interval else None

    def timeout(self, now: float) -> float | None:
        return None if self._due is None else max(0.0, self._due - now)

    def fire(self, now: float) -> bool:
        if self._due is None or now < self._due or self.interval is None:
            return False
        self._due = now + self.interval
        return True


def run_workers(config: ServerConfig, hooks: SupervisorHooks, fd_limit: str | None = None,
                workers: int = 1, listener: str = "reuseport") -> ServerStats:
    """``--workers K``: one worker is ``run`` itself, the single-process server;
    more are a supervisor and K forked workers (traffic/workers.py), and the
    totals returned are their sum (each worker's through ``hooks.worker_totals``)."""
    if workers == 1:
        return run(config, hooks, fd_limit)
    from tcplab.traffic.workers import supervise

    return supervise(config, hooks, fd_limit, workers, listener)


def run(config: ServerConfig, hooks: Hooks, fd_limit: str | None = None) -> ServerStats:
    """Apply the fd limit, open the listener, announce it, serve until a signal."""
    if config.model not in MODELS:
        raise UsageError(
            f"unknown model {config.model!r}", hint=f"choose one of: {', '.join(MODELS)}"
        )
    limit = apply_fd_limit(fd_limit)
    backlog = config.backlog if config.backlog is not None else default_backlog()
    listener = open_listener(config.host, config.port, backlog)
    module = importlib.import_module(f"tcplab.traffic.echo_{config.model}")
    previous = {sig: signal.signal(sig, pending_handler) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        host, port = listener.getsockname()[:2]
        hooks.listening(
            Listening(
                host=host,
                port=port,
                model=config.model,
                pid=os.getpid(),
                leak=config.leak,
                backlog=backlog,
                fd_soft=limit.soft,
                fd_hard=limit.hard,
                close_first=config.close_first,
                keepalive=config.keepalive,
            )
        )
        stats: ServerStats = module.serve(listener, config, hooks)
        return stats
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()
