"""A private tracefs instance for tcplab trace: created, filtered, read, removed.

Instances (``instances/tcplab-PID``) are global kernel objects: they are
removed on every exit path we control (return, exception, Ctrl-C, SIGTERM),
and a later run removes the ones whose process is gone (a SIGKILL leaves one
behind, still tracing into its buffer). Creating one (mkdir, filters,
enable) and removing one run with SIGINT and SIGTERM held (see
tcplab/interrupts.py), so a signal cannot leave one half made or half
removed. If tracefs is not mounted we mount it in a private mount namespace
of this process, so the host's mounts do not change.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tcplab.errors import NotSupported, PrivilegeError
from tcplab.interrupts import deferred

CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
STATE_EVENTS = ("sock/inet_sock_set_state", "tcp/tcp_receive_reset", "tcp/tcp_destroy_sock")
RESET_SENT = "tcp/tcp_send_reset"  # its print format has no port fields to filter on
SYSCALLS = ("socket", "bind", "listen", "accept4", "connect", "shutdown", "close")
#: The failures tcplab live prints (``failures=True``): a syscall's exit, filtered in
#: the kernel on its return value, machine-wide (the return carries no address).
#: connect(): EADDRNOTAVAIL (no local port left); accept()/accept4(): EMFILE, ENFILE
#: (no file descriptor left, for the process or the system).
FAILURES = {"connect": (errno.EADDRNOTAVAIL,), "accept4": (errno.EMFILE, errno.ENFILE),
            "accept": (errno.EMFILE, errno.ENFILE)}
PREFIX = "tcplab-"


def find_tracefs(mount: bool = True) -> str:
    for path in CANDIDATES:
        if os.path.isdir(f"{path}/events"):
            return path
    if os.geteuid() != 0:
        raise PrivilegeError(
            "tracing needs root: tracefs is root's (CAP_SYS_ADMIN to mount it, and to "
            "create an instance)",
            hint="run as root (sudo tcplab trace ...), or use --poll, which diffs socket "
            "table snapshots and needs no privilege",
        )
    if not mount:
        raise NotSupported("tracefs is not mounted")
    from tcplab.observe.nsutil import private_tracefs

    try:
        private_tracefs(CANDIDATES[0])
    except OSError as exc:
        raise NotSupported(f"cannot mount tracefs in a private mount namespace: {exc}",
                           hint="mount it yourself: mount -t tracefs nodev "
                           f"{CANDIDATES[0]}") from None
    return CANDIDATES[0]


@dataclass(frozen=True, slots=True)
class Availability:
    """What ``tcplab.agents.tracefs_probe`` found when it tried to start a trace."""

    ok: bool
    root: str | None = None  # where tracefs is (or was mounted privately)
    event: bool = False  # sock:inet_sock_set_state is there
    message: str | None = None  # why not, when not ok


def availability() -> tuple[bool, str, str | None]:
    """Can ``tcplab trace`` trace here? (ok, what was found, the fix).

    As root with tracefs not mounted, ``trace`` mounts it in a private mount
    namespace: that is tried for real, in a child (``tcplab.agents.tracefs_probe``:
    unshare(CLONE_NEWNS) needs a single-threaded process, and this process's
    mounts must not change)."""
    if os.geteuid() != 0:
        return (False, "needs root", "run as root (sudo) for tcplab trace; "
                "'tcplab trace --poll' works without it")
    no_event = ("no sock:inet_sock_set_state tracepoint",
                "a kernel >= 4.16 with tracepoints enabled")
    for path in CANDIDATES:
        if os.path.isdir(f"{path}/events"):
            if not os.path.isdir(f"{path}/events/{STATE_EVENTS[0]}"):
                return False, *no_event
            return True, f"{path} with sock:inet_sock_set_state", None
    import subprocess
    import sys

    from tcplab.records import from_json_line

    try:
        # Its own process group and signals held: a Ctrl-C cannot stop it between
        # its mkdir and its rmdir (the try takes about 0.1 s).
        with deferred():
            r = subprocess.run([sys.executable, "-m", "tcplab.agents.tracefs_probe"],
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
                               check=False, process_group=0)
        answer = from_json_line(Availability, r.stdout)  # RecordError (a ValueError): no answer
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        answer = Availability(ok=False, message=str(exc))
    if not answer.ok:
        return (False, f"not mounted, and a private mount failed: {answer.message}",
                f"mount it: mount -t tracefs nodev {CANDIDATES[0]}")
    if not answer.event:
        return False, *no_event
    return (True, "not mounted on the host; tcplab trace mounts it in a private mount "
            "namespace of its own (tried: it works), with sock:inet_sock_set_state", None)


def remove_stale(root: str) -> list[str]:
    """Remove instances/tcplab-PID whose process no longer exists; returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(f"{root}/instances")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
            continue
        if os.path.exists(f"/proc/{name[len(PREFIX):]}"):
            continue
        try:
            os.rmdir(f"{root}/instances/{name}")
            removed.append(name)
        except OSError:
            pass
    return removed


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class TraceInstance:
    def __init__(self, port: int = 0, syscall_pids: list[int] | None = None,
                 resets: bool = True, events: tuple[str, ...] = STATE_EVENTS,
                 failures: bool = False, buffer_kb: int | None = None) -> None:
        """``events``: the tracepoints filtered by ``port`` (the state changes by
        default; ``experiment retransmit`` asks for tcp/tcp_retransmit_skb).
        ``failures``: also every process's connect() and accept() that fail as
        FAILURES says (the syscalls' exit events, filtered on ``ret``).
        ``buffer_kb``: this instance's ring buffer per CPU (its buffer_size_kb; the
        kernel's default for an instance is 1.4 MB): a reader that falls behind for
        a moment loses fewer events (``lost``)."""
        self.root = find_tracefs()
        self.stale = remove_stale(self.root)
        self.path = f"{self.root}/instances/{PREFIX}{os.getpid()}"
        self._fd: int | None = None
        self._partial = b""
        self.lost = 0  # events the kernel dropped: the reader fell behind (trace_pipe's notes)
        try:
            # Held signals are delivered when the block ends: inside the try,
            # so that the instance made is removed again.
            with deferred():
                try:
                    os.mkdir(self.path)
                except FileExistsError:
                    pass
                except PermissionError:
                    raise PrivilegeError(f"cannot create {self.path}",
                                         hint="run as root") from None
                self._setup(port, syscall_pids or [], resets, events, failures)
                if buffer_kb:
                    try:
                        _write(f"{self.path}/buffer_size_kb", str(buffer_kb))
                    except OSError:
                        pass  # the default buffer, then
        except BaseException:
            self.close()
            raise

    def _setup(self, port: int, pids: list[int], resets: bool,
               wanted: tuple[str, ...], failures: bool = False) -> None:
        p = self.path
        _write(f"{p}/tracing_on", "0")
        try:
            _write(f"{p}/trace_clock", "mono")  # timestamps comparable with time.monotonic()
        except OSError:
            pass
        port_filter = f"sport == {port} || dport == {port}" if port else ""
        events = list(wanted) + ([RESET_SENT] if resets else [])
        for ev in events:
            base = f"{p}/events/{ev}"
            if not os.path.isdir(base):
                continue
            if port_filter and ev != RESET_SENT:
                _write(f"{base}/filter", port_filter)
            _write(f"{base}/enable", "1")
        if pids:
            pid_filter = " || ".join(f"common_pid == {pid}" for pid in pids)
            for call in SYSCALLS:
                for kind in ("sys_enter_", "sys_exit_"):
                    base = f"{p}/events/syscalls/{kind}{call}"
                    if os.path.isdir(base):
                        _write(f"{base}/filter", pid_filter)
                        _write(f"{base}/enable", "1")
        for call, codes in (FAILURES.items() if failures else ()):
            base = f"{p}/events/syscalls/sys_exit_{call}"
            if os.path.isdir(base):
                _write(f"{base}/filter", " || ".join(f"ret == -{c}" for c in codes))
                _write(f"{base}/enable", "1")
        _write(f"{p}/tracing_on", "1")
        self._fd = os.open(f"{p}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

    def lines(self, timeout: float) -> Iterator[str]:
        """Lines available within ``timeout`` seconds (none if nothing happened)."""
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            return
        try:
            chunk = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace")

    def events(self, timeout: float) -> Iterator[Any]:
        """The lines of lines(timeout) parsed (kernel.tracefs.TraceEvent); comments,
        lost-event notes and lines that are not events are left out."""
        from tcplab.kernel.tracefs import TraceParseError, lost_events, parse_line

        for line in self.lines(timeout):
            try:
                e = parse_line(line)
            except TraceParseError:
                continue
            if e is not None:
                yield e
            else:
                self.lost += lost_events(line)

    def close(self) -> None:
        """Stop tracing and remove the instance; never cut by SIGINT or SIGTERM."""
        with deferred():
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.isdir(self.path):
            try:
                _write(f"{self.path}/tracing_on", "0")
            except OSError:
                pass
            for _ in range(50):
                try:
                    os.rmdir(self.path)
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.02)
