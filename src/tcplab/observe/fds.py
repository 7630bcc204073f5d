"""FD headroom per process: fds in use against the limit, and what they are.

The count is ``stat('/proc/PID/fd').st_size`` (Linux >= 6.2: one syscall,
works unprivileged for our own processes), with a listdir fallback; the
limits are the process's own, from ``/proc/PID/limits`` (a process may have
changed its own with setrlimit, so our ``ulimit -n`` says nothing about it).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from tcplab.kernel import tcp_states
from tcplab.kernel.procfs import fd_kind, parse_limits, socket_inode
from tcplab.observe.owners import read_comm
from tcplab.observe.process import fds_in_use

WARN_PERCENT = 80.0


@dataclass(frozen=True, slots=True)
class FdReport:
    pid: int
    command: str
    fds: int
    soft: int  # -1: unlimited
    hard: int
    percent: float  # of the soft limit
    tcp: dict[str, int] = field(default_factory=dict)  # sockets by TCP state
    other: dict[str, int] = field(default_factory=dict)  # other fds by kind
    threads: int = 0
    rss_bytes: int = 0
    warning: str | None = None


def fd_report(pid: int, state_of_inode: dict[int, int], procfs: str = "/proc") -> FdReport:
    """Everything ``tcplab fds`` shows for one pid.

    ``state_of_inode`` maps socket inodes to TCP states (from the socket
    table); sockets not in it are counted as ``socket`` (UDP, unix, netlink, or
    TCP in another namespace).
    """
    base = f"{procfs}/{pid}"
    with open(f"{base}/limits") as f:
        limit = parse_limits(f.read())
    count = fds_in_use(pid, procfs)
    tcp: Counter[str] = Counter()
    other: Counter[str] = Counter()
    try:
        names = os.listdir(f"{base}/fd")
    except PermissionError:
        names = []
        other["(hidden: not your process)"] = count
    for name in names:
        try:
            target = os.readlink(f"{base}/fd/{name}")
        except FileNotFoundError:
            continue  # closed since the listing
        except OSError:
            other["(unreadable)"] += 1
            continue
        inode = socket_inode(target)
        if inode and inode in state_of_inode:
            tcp[tcp_states.name(state_of_inode[inode])] += 1
        else:
            other[fd_kind(target)] += 1
    threads, rss = _threads_and_rss(pid)
    percent = 100.0 * count / limit.soft if limit.soft > 0 else 0.0
    warning = None
    if percent >= WARN_PERCENT:
        cause = ""
        if tcp.get("CLOSE_WAIT"):
            cause = f"; {tcp['CLOSE_WAIT']} sockets in CLOSE_WAIT: it does not close() them"
        warning = f"{percent:.0f}% of its fd limit in use{cause}"
    return FdReport(
        pid=pid, command=read_comm(pid, procfs), fds=count, soft=limit.soft, hard=limit.hard,
        percent=round(percent, 1), tcp=dict(tcp.most_common()), other=dict(other.most_common()),
        threads=threads, rss_bytes=rss, warning=warning,
    )


def _threads_and_rss(pid: int) -> tuple[int, int]:
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return proc.num_threads(), proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0, 0
