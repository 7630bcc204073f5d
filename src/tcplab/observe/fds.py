"""FD headroom per process: fds in use against the limit, and what they are.

The count is ``stat('/proc/PID/fd').st_size`` (Linux >= 6.2: one syscall,
works unprivileged for our own processes), with a listdir fallback; the
limits are the process's own, from ``/proc/PID/limits`` (a process may have
changed its own with setrlimit, so our ``ulimit -n`` says nothing about it);
threads and RSS from ``/proc/PID/status``. Every read goes through
``observe.procfs``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tcplab.kernel import tcp_states
from tcplab.kernel.procfs import fd_kind, socket_inode
from tcplab.observe import procfs
from tcplab.observe.procfs import PROCFS_PATH, AccessDenied

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


def fd_report(pid: int, state_of_inode: dict[int, int], root: str = PROCFS_PATH) -> FdReport:
    """Everything ``tcplab fds`` shows for one pid; NoSuchProcess if it is gone.

    ``state_of_inode`` maps socket inodes to TCP states (from the socket
    table); sockets not in it are counted as ``socket`` (UDP, unix, netlink, or
    TCP in another namespace).
    """
    limit = procfs.fd_limit(pid, root)
    count = procfs.fds_in_use(pid, root)
    tcp: Counter[str] = Counter()
    other: Counter[str] = Counter()
    try:
        for _fd, target in procfs.fd_links(pid, root):
            if not target:
                other["(unreadable)"] += 1
                continue
            inode = socket_inode(target)
            if inode and inode in state_of_inode:
                tcp[tcp_states.name(state_of_inode[inode])] += 1
            else:
                other[fd_kind(target)] += 1
    except AccessDenied:
        other["(hidden: not your process)"] = count
    status = procfs.status(pid, root)
    percent = 100.0 * count / limit.soft if limit.soft > 0 else 0.0
    warning = None
    if percent >= WARN_PERCENT:
        cause = ""
        if tcp.get("CLOSE_WAIT"):
            cause = f"; {tcp['CLOSE_WAIT']} sockets in CLOSE_WAIT: it does not close() them"
        warning = f"{percent:.0f}% of its fd limit in use{cause}"
    return FdReport(
        pid=pid, command=procfs.comm(pid, root), fds=count, soft=limit.soft, hard=limit.hard,
        percent=round(percent, 1), tcp=dict(tcp.most_common()), other=dict(other.most_common()),
        threads=status.threads, rss_bytes=status.rss_bytes, warning=warning,
    )
