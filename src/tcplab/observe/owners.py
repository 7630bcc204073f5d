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

from collections.abc import Iterable
from dataclasses import dataclass

from tcplab.kernel.procfs import socket_inode
from tcplab.observe import procfs
from tcplab.observe.sockets import SocketTable


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    fd: int
    command: str


# The readers of /proc are observe/procfs.py's; these names stay for the callers.
read_comm = procfs.comm
read_cmdline = procfs.cmdline
all_pids = procfs.pids


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
        pids = procfs.pids(self.procfs) if self.pids is None else self.pids
        for pid in pids:
            command: str | None = None
            try:
                for fd, target in procfs.fd_links(pid, self.procfs):
                    inode = socket_inode(target)
                    if inode:
                        if command is None:
                            command = procfs.comm(pid, self.procfs)
                        by_inode.setdefault(inode, Owner(pid, fd, command))
            except procfs.AccessDenied:
                hidden.add(pid)
            except procfs.NoSuchProcess:
                continue
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
