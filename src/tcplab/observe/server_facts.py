"""What the multiplexing lesson needs to know about a server process.

Threads and RSS from /proc/PID/status, fds against the limit, and how many
sockets its epoll instances watch: each ``tfd:`` line of
``/proc/PID/fdinfo/N`` for an ``anon_inode:[eventpoll]`` fd is one watched
file (proc(5), "/proc/pid/fdinfo"). "1 thread, 1 epoll instance watching
10,000 sockets" is the C10k lesson in one line. Every read goes through
``observe.procfs``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcplab.observe import procfs
from tcplab.observe.procfs import PROCFS_PATH, AccessDenied, cpu_seconds, epoll_watches

__all__ = ["ServerFacts", "cpu_seconds", "epoll_watches", "server_facts"]


@dataclass(frozen=True, slots=True)
class ServerFacts:
    pid: int
    command: str
    threads: int
    rss_bytes: int
    fds: int
    fd_limit: int
    epoll_instances: int
    epoll_watches: int  # files watched by all its epoll instances together


def server_facts(pid: int, root: str = PROCFS_PATH) -> ServerFacts:
    """The facts of ``pid``; NoSuchProcess if it is gone."""
    status = procfs.status(pid, root)
    limit = procfs.fd_limit(pid, root).soft
    try:
        instances, watches = epoll_watches(pid, root)
    except AccessDenied:
        instances = watches = 0  # another user's fds cannot be listed
    return ServerFacts(
        pid=pid, command=procfs.comm(pid, root), threads=status.threads,
        rss_bytes=status.rss_bytes, fds=procfs.fds_in_use(pid, root), fd_limit=limit,
        epoll_instances=instances, epoll_watches=watches,
    )
