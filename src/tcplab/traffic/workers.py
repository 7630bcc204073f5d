"""``tcplab server --workers K``: a supervisor and K forked worker processes.

Why: RLIMIT_NOFILE is per process, and here its hard limit is 20,000 and cannot
be raised (no CAP_SYS_RESOURCE), so 100,000 connections need at least 6 server
processes (issue 17).

The supervisor validates the model, applies the fd limit (a fork inherits it)
and forks the workers *before* importing the model or starting any thread
(fork copies only the calling thread; uvloop and asyncio are imported in the
worker only). Two ways to share the port:

- ``reuseport``: each worker opens its own SO_REUSEPORT listener on the same
  port, each with its own accept queue; the kernel picks one for each new
  connection (net/core/sock_reuseport.c, reuseport_select_sock). The
  supervisor first *binds* a reservation socket (SO_REUSEADDR and SO_REUSEPORT,
  no listen()) on the port, so that ``--port 0`` names one free port for all
  and a port held by another program fails here, with the usual message. A
  socket enters the listening hash and the reuseport group only in listen():
  net/ipv4/inet_hashtables.c, __inet_hash returns early for a state other
  than TCP_LISTEN, and inet_reuseport_add_sock is called after that check
  (reached from inet_csk_listen_start, net/ipv4/inet_connection_sock.c);
  bind() only enters the bind hash (inet_csk_get_port). An incoming SYN is
  matched against listeners only (__inet_lookup_listener walks lhash2), so the
  reservation receives no connection. It is closed once every worker listens.
- ``shared``: the supervisor opens one listener before forking and every worker
  accepts from it.

Each worker: its own process group (a terminal's Ctrl-C reaches only the
supervisor, which stops the workers: tcplab/interrupts.py, rule 1),
PR_SET_PDEATHSIG SIGKILL (it dies with the supervisor, SIGKILL included), its
listener, the model's import, then "ready" over a socketpair, then it waits for
"go" (so that the supervisor's listening line is the first line on stdout),
serves until SIGTERM (the model's own signal handling), sends its totals and
leaves with os._exit. A stop signal before "go" ends it at once (zero totals);
one between "go" and the model's own handlers is noted (server.stop_pending)
and the model stops as soon as it starts.

Messages on the socketpair are single JSON lines: ``{"ready": WorkerInfo}``,
``{"totals": WorkerTotals}``, ``{"error": ..., "hint": ..., "code": N}``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tcplab.errors import ExitStatus, TcplabError, UsageError
from tcplab.records import from_json, to_json
from tcplab.traffic.accept import ServerStats
from tcplab.traffic.models import MODELS
from tcplab.traffic.server import (
    Listening,
    ServerConfig,
    StatsLine,
    SupervisorHooks,
    WorkerInfo,
    WorkerStatsLine,
    WorkerTotals,
    apply_fd_limit,
    bind_error,
    default_backlog,
    note_stop,
    open_listener,
    pending_handler,
    stop_on_signals,
)
from tcplab.traffic.target import lookup

LISTENERS = ("reuseport", "shared")

#: How long the supervisor waits for its workers after SIGTERM before SIGKILL.
STOP_GRACE = 2.0

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class WorkerDied(TcplabError):
    """A worker ended while the supervisor had not asked it to: the server is
    short of a listener (reuseport: its share of new connections is refused or
    waits in a queue nobody accepts from), so the supervisor stops them all.
    Exit status 1 (ERROR): neither a usage error nor an experiment's failure
    (9 is "an experiment could not run to its end"); a server that broke."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on ``host:port`` (0: a free port)."""
    family, addr = lookup(host, port, passive=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    where = f"[{addr[0]}]:{port}" if family == socket.AF_INET6 else f"{addr[0]}:{port}"
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port) from None
    return sock


# -- the worker -------------------------------------------------------------


class _Stop(BaseException):
    """SIGINT/SIGTERM before the model's serve() took over the signals."""


def _raise_stop(signum: int, frame: object) -> None:
    note_stop(signum)
    raise _Stop


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall((json.dumps(msg) + "\n").encode())


class _WorkerHooks:
    """The CLI's hooks, in a worker: status lines carry ``worker`` and ``pid``,
    log lines say which worker wrote them."""

    def __init__(self, hooks: SupervisorHooks, index: int) -> None:
        self.hooks = hooks
        self.index = index
        self.pid = os.getpid()

    def listening(self, info: Listening) -> None:  # the supervisor announces
        pass

    def log(self, line: str) -> None:
        self.hooks.log(f"worker {self.index} (pid {self.pid}): {line}")

    def stats(self, line: StatsLine) -> None:
        fields = {k: getattr(line, k) for k in StatsLine.__dataclass_fields__}
        self.hooks.stats(WorkerStatsLine(**fields, worker=self.index, pid=self.pid))


def _worker(index: int, config: ServerConfig, hooks: SupervisorHooks, chan: socket.socket,
            listener: socket.socket | None, port: int, backlog: int, close_fds: list[int],
            supervisor: int) -> NoReturn:
    """The forked child: never returns, whatever happens (os._exit)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the supervisor's stop pipe is not ours
        for sig in _STOP_SIGNALS:
            signal.signal(sig, _raise_stop)
        os.setpgid(0, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        for fd in close_fds:
            os.close(fd)
        from tcplab.observe.nsutil import die_with_parent

        die_with_parent(signal.SIGKILL)
        if os.getppid() != supervisor:  # it died before prctl: nobody would kill us
            raise _Stop
        if listener is None:
            listener = open_listener(config.host, port, backlog, reuseport=True)
        import importlib

        module = importlib.import_module(f"tcplab.traffic.echo_{config.model}")
        from tcplab.observe.procfs import fds_in_use, status

        _send(chan, {"ready": to_json(WorkerInfo(
            index=index, pid=os.getpid(), rss_idle=status("self").rss_bytes,
            fds_idle=fds_in_use()))})
        if chan.recv(16) != b"go":  # EOF: the supervisor is gone or gave up
            raise _Stop
        # From here a stop signal must not raise: inside the model's loop setup
        # it would leave the loop half-run ("RuntimeError: Cannot close a
        # running event loop" from uvloop, seen in 1 of 60 double Ctrl-Cs).
        # It is noted instead, and the model, once its own handlers are in,
        # stops at once (server.stop_pending).
        for sig in _STOP_SIGNALS:
            signal.signal(sig, pending_handler)
        stats: ServerStats = module.serve(listener, config, _WorkerHooks(hooks, index))
        # The supervisor sends one SIGTERM: no second one comes to cut this.
        _send(chan, {"totals": to_json(WorkerTotals(
            index=index, pid=os.getpid(), accepted=stats.accepted, closed=stats.closed,
            bytes_echoed=stats.bytes_echoed, accept_errors=stats.accept_errors,
            leaked=stats.leaked))})
        code = 0
    except _Stop:  # stopped before it served: it accepted nothing, and says so
        code = 0
        try:
            _send(chan, {"totals": to_json(WorkerTotals(index, os.getpid(), 0, 0, 0, 0, 0))})
        except OSError:
            pass
    except TcplabError as exc:
        try:
            _send(chan, {"error": exc.message, "hint": exc.hint, "code": int(exc.exit_code)})
        except OSError:
            pass
    except BaseException as exc:  # a forked child must never return into the CLI
        try:
            _send(chan, {"error": f"internal error: {type(exc).__name__}: {exc}",
                         "hint": None, "code": int(ExitStatus.ERROR)})
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# -- the supervisor ---------------------------------------------------------


@dataclass(slots=True)
class _Child:
    index: int
    pid: int
    chan: socket.socket
    buf: bytes = b""
    info: WorkerInfo | None = None
    totals: WorkerTotals | None = None
    error: dict[str, Any] | None = None
    status: int | None = None  # waitpid's, once reaped
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.chan.fileno() >= 0


def _read(child: _Child) -> bool:
    """Read what the worker sent; False at EOF (it exited, or is exiting)."""
    try:
        data = child.chan.recv(65536)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        data = b""
    if not data:
        return False
    child.buf += data
    *lines, child.buf = child.buf.split(b"\n")
    for line in lines:
        try:
            msg = json.loads(line)
        except ValueError:  # a line cut by a signal in the worker, then another
            continue
        if "ready" in msg:
            child.info = from_json(WorkerInfo, msg["ready"])
        elif "totals" in msg:
            child.totals = from_json(WorkerTotals, msg["totals"])
        elif "error" in msg:
            child.error = msg
    return True


def describe_status(status: int) -> str:
    """A waitpid status in words: "killed by signal 9 (SIGKILL)", "exited with status 1"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class _Supervisor:
    def __init__(self, config: ServerConfig, hooks: SupervisorHooks, workers: int,
                 listener_kind: str, backlog: int) -> None:
        self.config = config
        self.hooks = hooks
        self.count = workers
        self.kind = listener_kind
        self.backlog = backlog
        self.children: list[_Child] = []
        self.sel = selectors.DefaultSelector()

    def fork_all(self, stop_fds: list[int], listener: socket.socket | None,
                 reservation: socket.socket | None, port: int) -> None:
        me = os.getpid()
        for index in range(self.count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            close = [*stop_fds, ours.fileno(), *(c.chan.fileno() for c in self.children)]
            if reservation is not None:
                close.append(reservation.fileno())
            sys.stdout.flush()  # a fork copies unwritten buffers: they would print twice
            sys.stderr.flush()
            # SIGINT/SIGTERM are held from before fork() until the child set its
            # handlers (or the parent recorded the pid): neither can run a
            # handler meant for the other.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:
                    _worker(index, self.config, self.hooks, theirs, listener, port,
                            self.backlog, close, me)
                self.children.append(_Child(index=index, pid=pid, chan=ours))
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                theirs.close()
            ours.setblocking(False)
            self.sel.register(ours, selectors.EVENT_READ, self.children[-1])

    def _events(self, stop_fd: int) -> Iterator[_Child | None]:
        """Children with something to read, or None when a stop signal came."""
        for key, _ in self.sel.select():
            yield None if key.fileobj == stop_fd else key.data

    def _ended(self, child: _Child) -> None:
        self.sel.unregister(child.chan)
        child.chan.close()
        _, child.status = os.waitpid(child.pid, 0)

    def wait(self, stop: Any, until_ready: bool) -> bool:
        """Until every worker is ready (``until_ready``) or until a stop signal.
        False if a stop signal came; raises if a worker ended or failed."""
        self.sel.register(stop.fd, selectors.EVENT_READ, None)
        try:
            while not stop.requested:
                if until_ready and all(c.info is not None for c in self.children):
                    return True
                for child in self._events(stop.fd):
                    if child is None:
                        stop.drain()
                    elif not _read(child):
                        self._ended(child)
                        raise self._failure(child)
                    elif child.error is not None:
                        raise self._failure(child)
            return False
        finally:
            self.sel.unregister(stop.fd)

    def _failure(self, child: _Child) -> TcplabError:
        if child.error is not None:
            exc = TcplabError(f"worker {child.index} (pid {child.pid}): {child.error['error']}",
                              hint=child.error.get("hint"))
            code = child.error.get("code")
            exc.exit_code = next((s for s in ExitStatus if s == code), ExitStatus.ERROR)
            return exc
        how = describe_status(child.status or 0)
        others = self.count - 1
        return WorkerDied(
            f"worker {child.index} (pid {child.pid}) {how} while serving; "
            f"stopped the other {others} worker{'s' if others != 1 else ''}",
            hint="its share of the connections went with it; see the lines above for why, "
            "or dmesg for the OOM killer")

    def go(self) -> None:
        for child in self.children:
            child.chan.setblocking(True)
            try:
                child.chan.sendall(b"go")
            except OSError:
                pass  # it ended: the wait loop reads its EOF
            child.chan.setblocking(False)

    def stop_all(self) -> None:
        """SIGTERM each live worker, wait up to STOP_GRACE for them to report and
        end, SIGKILL the rest, reap every one. Only our own children's pids,
        which cannot be reused before we reap them."""
        live = [c for c in self.children if c.status is None]
        for child in live:
            os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(c.open for c in live):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in self.sel.select(left):
                child = key.data
                if child is not None and not _read(child):
                    self.sel.unregister(child.chan)
                    child.chan.close()
        for child in live:
            if child.open:
                os.kill(child.pid, signal.SIGKILL)
                self.sel.unregister(child.chan)
                child.chan.close()
            _, child.status = os.waitpid(child.pid, 0)
            if child.error is not None:  # it failed on its way out: say so, go on
                self.hooks.log(f"worker {child.index} (pid {child.pid}): "
                               f"{child.error['error']}")
            elif child.totals is None:
                self.hooks.log(f"worker {child.index} (pid {child.pid}) "
                               f"{describe_status(child.status)} before its totals")
        self.sel.close()


def supervise(config: ServerConfig, hooks: SupervisorHooks, fd_limit: str | None,
              workers: int, listener: str) -> ServerStats:
    if config.model not in MODELS:
        raise UsageError(
            f"unknown model {config.model!r}", hint=f"choose one of: {', '.join(MODELS)}"
        )
    if listener not in LISTENERS:
        raise UsageError(f"unknown listener {listener!r}",
                         hint=f"choose one of: {', '.join(LISTENERS)}")
    limit = apply_fd_limit(fd_limit)  # the workers inherit it
    backlog = config.backlog if config.backlog is not None else default_backlog()
    shared: socket.socket | None = None
    reservation: socket.socket | None = None
    if listener == "shared":
        shared = open_listener(config.host, config.port, backlog)
        host, port = shared.getsockname()[:2]
    else:
        reservation = reserve_port(config.host, config.port)
        host, port = reservation.getsockname()[:2]
    sup = _Supervisor(config, hooks, workers, listener, backlog)
    failure: TcplabError | None = None
    try:
        with stop_on_signals() as stop:
            try:
                sup.fork_all([stop.fd, stop._w, sup.sel.fileno()], shared, reservation, port)
                if shared is not None:
                    shared.close()  # the workers hold it
                    shared = None
                if sup.wait(stop, until_ready=True):
                    if reservation is not None:
                        reservation.close()
                        reservation = None
                    hooks.listening(Listening(
                        host=host, port=port, model=config.model, pid=os.getpid(),
                        leak=config.leak, backlog=backlog, fd_soft=limit.soft,
                        fd_hard=limit.hard, close_first=config.close_first,
                        keepalive=config.keepalive,
                        workers=tuple(c.info for c in sup.children if c.info is not None),
                        listener=listener))
                    sup.go()
                    sup.wait(stop, until_ready=False)
            except TcplabError as exc:  # a worker failed: the others' totals still count
                failure = exc
            finally:
                sup.stop_all()  # inside stop_on_signals: a second Ctrl-C cannot cut it
                if stop.requested:
                    # The command is ending: a later Ctrl-C must not cut the
                    # totals still to be printed (as tcplab/interrupts.py, rule
                    # 2, ignores SIGINT after the first). Held, never delivered.
                    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    finally:
        for sock in (shared, reservation):
            if sock is not None:
                sock.close()
    total = ServerStats()
    for child in sup.children:
        t = child.totals
        if t is None:
            continue
        hooks.worker_totals(t)
        total.accepted += t.accepted
        total.closed += t.closed
        total.bytes_echoed += t.bytes_echoed
        total.accept_errors += t.accept_errors
        total.leaked += t.leaked
    if failure is not None:
        raise failure
    return total
