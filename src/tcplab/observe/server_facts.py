"""What the multiplexing lesson needs to know about a server process.

Threads from /proc/PID/status, RSS, fds against the limit, and how many
sockets its epoll instances watch: each ``tfd:`` line of
``/proc/PID/fdinfo/N`` for an ``anon_inode:[eventpoll]`` fd is one watched
file (proc(5), "/proc/pid/fdinfo"). "1 thread, 1 epoll instance watching
10,000 sockets" is the C10k lesson in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tcplab.kernel.procfs import parse_limits, status_field
from tcplab.observe.process import fds_in_use


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


def epoll_watches(pid: int, procfs: str = "/proc") -> tuple[int, int]:
    """(epoll instances, total watched fds) of a process."""
    instances = watches = 0
    base = f"{procfs}/{pid}"
    try:
        names = os.listdir(f"{base}/fd")
    except OSError:
        return 0, 0
    for name in names:
        try:
            if os.readlink(f"{base}/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"{base}/fdinfo/{name}") as f:
                text = f.read()
        except OSError:
            continue
        instances += 1
        watches += sum(1 for line in text.splitlines() if line.startswith("tfd:"))
    return instances, watches


def server_facts(pid: int, procfs: str = "/proc") -> ServerFacts:
    base = f"{procfs}/{pid}"
    with open(f"{base}/status") as f:
        status = f.read()
    with open(f"{base}/limits") as f:
        limit = parse_limits(f.read()).soft
    with open(f"{base}/comm") as f:
        command = f.read().strip()
    rss_kb = status_field(status, "VmRSS") or "0 kB"
    instances, watches = epoll_watches(pid, procfs)
    return ServerFacts(
        pid=pid, command=command, threads=int(status_field(status, "Threads") or 0),
        rss_bytes=int(rss_kb.split()[0]) * 1024, fds=fds_in_use(pid, procfs), fd_limit=limit,
        epoll_instances=instances, epoll_watches=watches,
    )


def cpu_seconds(pid: int, procfs: str = "/proc") -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"{procfs}/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
