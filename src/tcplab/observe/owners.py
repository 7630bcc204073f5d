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
    """``pids``: only these processes (None: every one). ``first``: with every
    process, walk these first (the namespace's own) and the rest only when a
    socket is still unplaced: a namespace's sockets are nearly always held by its
    own processes, and each fd costs a readlink (3 us here; 16,000 fds on this
    host took 55 ms)."""

    def __init__(self, pids: Iterable[int] | None = None, procfs: str = "/proc",
                 first: Iterable[int] | None = None) -> None:
        self.procfs = procfs
        self.pids = None if pids is None else list(pids)
        self.first = None if first is None or pids is not None else list(first)
        #: inode -> (pid, fd); Owner records are made only for the inodes asked for.
        self.by_inode: dict[int, tuple[int, str]] = {}
        self.commands: dict[int, str] = {}
        #: /proc/PID/fd/N of every fd that refers to a network namespace (nsfs),
        #: one per namespace: how observe.nodes.discover finds a namespace that only
        #: a descriptor keeps alive.
        self.pinned: dict[str, str] = {}
        self.hidden: set[int] = set()  # pids whose fds we may not read
        self._missing: set[int] = set()  # inodes the last scan could not place
        self._scanned = False

    def scan(self, pids: Iterable[int] | None = None) -> None:
        """Walk the fds of ``pids`` (default: those the map was made for). The loop
        is procfs.fd_links and kernel.procfs.socket_inode inlined: 8,000 fds of one
        process took 40 ms through them and half that inline (issue 15)."""
        by_inode: dict[int, tuple[int, str]] = {}
        pinned: dict[str, str] = {}
        hidden: set[int] = set()
        if pids is None:
            pids = procfs.pids(self.procfs) if self.pids is None else self.pids
        for pid in pids:
            try:
                dfd = os.open(f"{self.procfs}/{pid}/fd",
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except PermissionError:
                hidden.add(pid)
                continue
            except OSError:
                continue  # gone
            try:
                for name in os.listdir(dfd):
                    try:
                        target = os.readlink(name, dir_fd=dfd)
                    except OSError:
                        continue  # closed since the listing
                    if target.startswith("socket:["):
                        by_inode.setdefault(int(target[8:-1]), (pid, name))
                    elif target.startswith("net:["):
                        pinned.setdefault(target, f"{self.procfs}/{pid}/fd/{name}")
            except OSError:
                pass  # gone while listing
            finally:
                os.close(dfd)
        self.by_inode = by_inode
        self.pinned = pinned
        self.hidden = hidden
        self._scanned = True

    def _owner(self, inode: int) -> Owner:
        pid, fd = self.by_inode[inode]
        command = self.commands.get(pid)
        if command is None:
            command = self.commands[pid] = procfs.comm(pid, self.procfs)
        return Owner(pid, int(fd), command)

    def _ensure(self, wanted: list[int], rescan: bool) -> None:
        """Scan as needed for these inodes: the first time (the namespace's own
        processes first, when given), and again only when one is unknown (never
        with ``rescan=False`` once scanned: one walk serves a whole scrape)."""
        if self._scanned and not rescan:
            return
        if not self._scanned and self.first is not None:
            self.scan(self.first)
            self._missing = set()
            if all(i in self.by_inode for i in wanted):
                return
            self._scanned = False
        known = self.by_inode
        if not self._scanned or any(i not in known and i not in self._missing for i in wanted):
            self.scan()
            self._missing = {i for i in wanted if i not in self.by_inode}

    def lookup(self, inodes: Iterable[int], rescan: bool = True) -> dict[int, Owner]:
        """Owners of these inodes (those that have one)."""
        wanted = [i for i in inodes if i]
        self._ensure(wanted, rescan)
        known = self.by_inode
        return {i: self._owner(i) for i in wanted if i in known}

    def texts(self, inodes: Iterable[int], rescan: bool = True) -> dict[int, str]:
        """``command (pid P, fd F)`` for each of these inodes that has an owner, as
        `sockets` prints it, with no Owner record made."""
        wanted = [i for i in inodes if i]
        self._ensure(wanted, rescan)
        known, commands, texts = self.by_inode, self.commands, {}
        for i in wanted:
            if i in known:
                pid, fd = known[i]
                command = commands.get(pid)
                if command is None:
                    command = commands[pid] = procfs.comm(pid, self.procfs)
                texts[i] = f"{command} (pid {pid}, fd {fd})"
        return texts


def listening_processes(port: int, table: SocketTable | None = None) -> list[Owner]:
    """The processes holding a LISTEN socket on ``port``, one entry per pid, every
    holder of each: a listener opened before fork() is held by every worker of a
    pre-fork server (``tcplab server --workers K --listener shared``), one socket in
    several processes' fd tables, where OwnerMap keeps one owner per socket.

    Without root, other users' processes are not readable: they are missing
    here, and the caller should say why.
    """
    if table is None:
        with SocketTable() as own:
            inodes = {s.inode for s in own.listeners(port)}
    else:
        inodes = {s.inode for s in table.listeners(port)}
    inodes.discard(0)
    if not inodes:
        return []
    seen: dict[int, Owner] = {}
    for pid in procfs.pids():
        try:
            for fd, target in procfs.fd_links(pid):
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    seen[pid] = Owner(pid, fd, procfs.comm(pid))
                    break
        except (procfs.ProcessError, OSError):
            continue  # gone, or another user's
    return list(seen.values())
