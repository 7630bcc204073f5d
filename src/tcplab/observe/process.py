"""Process facts the servers and the CLI need: fds in use, fd limits, port holders.

Every ``/proc`` path is built from one ``procfs`` root so tests can point it
elsewhere, as psutil does.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

PROCFS = "/proc"


def fds_in_use(pid: int | str = "self", procfs: str = PROCFS) -> int:
    """How many file descriptors ``pid`` has open.

    Since Linux 6.2, ``stat()`` on ``/proc/PID/fd`` reports the number of open
    fds in ``st_size`` (commit f1f1f2569901, "fs/proc: report open fds in
    st_size"): one syscall instead of reading the whole directory. Older kernels
    report 0 there, so fall back to counting the entries.
    """
    path = f"{procfs}/{pid}/fd"
    size = os.stat(path).st_size
    if size > 0:
        return size
    return len(os.listdir(path))


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int
    hard: int


def own_fd_limit() -> FdLimit:
    """This process's RLIMIT_NOFILE (what ``ulimit -Sn`` / ``ulimit -Hn`` print)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdLimit(soft, hard)


@dataclass(frozen=True, slots=True)
class PortHolder:
    pid: int | None
    command: str | None


def listeners_on_port(port: int) -> list[PortHolder]:
    """Processes with a TCP socket in LISTEN on ``port`` (any address).

    Used only on the error path (``bind`` failed with EADDRINUSE), so psutil's
    whole-table walk is acceptable here. Without root, sockets of other users'
    processes come back with no pid: the caller says so.
    """
    import psutil

    holders: list[PortHolder] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return holders
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        command: str | None = None
        if conn.pid is not None:
            try:
                command = " ".join(psutil.Process(conn.pid).cmdline()) or None
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                command = None
        holder = PortHolder(conn.pid, command)
        if holder not in holders:
            holders.append(holder)
    return holders
