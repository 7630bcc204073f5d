"""Which process holds which socket: inode -> (pid, fd, command).

Walks ``/proc/PID/fd`` links for the pids asked for, or every pid when asked
(like ``ss -p`` and ``lsof -i``). The result is cached between refreshes:
a walk happens again only when a socket inode turns up that the cache does
not know. Sockets with inode 0 (TIME_WAIT, orphaned FIN_WAIT2) belong to no
process: the kernel holds them.

Without root, other users' fd tables are unreadable (EACCES): those pids are
counted in ``hidden`` so the caller can say why owners are missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from tcplab.kernel.procfs import socket_inode
from tcplab.observe.sockets import SocketTable


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    fd: int
    command: str


def read_comm(pid: int, procfs: str = "/proc") -> str:
    try:
        with open(f"{procfs}/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def read_cmdline(pid: int, procfs: str = "/proc") -> str:
    """The command line of ``pid``, as ps shows it (its comm when unreadable)."""
    try:
        with open(f"{procfs}/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or read_comm(pid, procfs)


def all_pids(procfs: str = "/proc") -> list[int]:
    return [int(name) for name in os.listdir(procfs) if name.isdigit()]


class OwnerMap:
    def __init__(self, pids: Iterable[int] | None = None, procfs: str = "/proc") -> None:
        self.procfs = procfs
        self.pids = None if pids is None else list(pids)
        self.by_inode: dict[int, Owner] = {}
        self.hidden: set[int] = set()  # pids whose fds we may not read
        self._missing: set[int] = set()  # inodes the last scan could not place
        self._scanned = False

    def scan(self) -> None:
        by_inode: dict[int, Owner] = {}
        hidden: set[int] = set()
        pids = all_pids(self.procfs) if self.pids is None else self.pids
        for pid in pids:
            fd_dir = f"{self.procfs}/{pid}/fd"
            try:
                names = os.listdir(fd_dir)
            except PermissionError:
                hidden.add(pid)
                continue
            except (FileNotFoundError, ProcessLookupError):
                continue
            command: str | None = None
            for name in names:
                try:
                    inode = socket_inode(os.readlink(f"{fd_dir}/{name}"))
                except OSError:
                    continue
                if inode:
                    if command is None:
                        command = read_comm(pid, self.procfs)
                    by_inode.setdefault(inode, Owner(pid, int(name), command))
        self.by_inode = by_inode
        self.hidden = hidden
        self._scanned = True

    def lookup(self, inodes: Iterable[int]) -> dict[int, Owner]:
        """Owners of these inodes, rescanning only when one is unknown."""
        wanted = [i for i in inodes if i]
        known = self.by_inode
        if not self._scanned or any(i not in known and i not in self._missing for i in wanted):
            self.scan()
            known = self.by_inode
            self._missing = {i for i in wanted if i not in known}
        return {i: known[i] for i in wanted if i in known}


def listening_processes(port: int, table: SocketTable | None = None) -> list[Owner]:
    """The processes holding a LISTEN socket on ``port``, one entry per pid.

    Without root, other users' processes are not readable: they are missing
    here, and the caller should say why.
    """
    if table is None:
        with SocketTable() as own:
            inodes = [s.inode for s in own.listeners(port)]
    else:
        inodes = [s.inode for s in table.listeners(port)]
    seen: dict[int, Owner] = {}
    for owner in OwnerMap().lookup(inodes).values():
        seen.setdefault(owner.pid, owner)
    return list(seen.values())
