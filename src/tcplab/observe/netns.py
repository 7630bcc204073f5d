"""Look inside another network namespace: ``--netns NAME|PATH|PID``.

setns(2) moves only the calling thread; a socket made while inside stays bound
to that namespace after we return, and ``/proc/thread-self/net`` follows the
thread. So we enter, open what we need, and leave at once.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from tcplab.errors import PrivilegeError, UsageError
from tcplab.observe.nsutil import CLONE_NEWNET, setns


def ns_path(spec: str) -> str:
    """NAME (from ``ip netns add``), a PID, a path to a namespace file, or
    ``net:[INODE]`` as doctor, --all-netns and ``ls -l /proc/PID/ns/net`` print it."""
    if spec.isdigit():
        return f"/proc/{spec}/ns/net"
    if spec.startswith("net:[") and spec.endswith("]") and spec[5:-1].isdigit():
        return _by_inode(int(spec[5:-1]), spec)
    if "/" in spec:
        return spec
    return f"/run/netns/{spec}"


def _by_inode(inode: int, spec: str) -> str:
    """A file that opens the network namespace with this inode: a process's, else a
    mount's (observe.nodes.discover finds both)."""
    from tcplab.observe.nodes import discover

    for ns in discover().namespaces:
        if ns.inode == inode:
            return ns.path
    raise UsageError(f"no process or mount on this node is in the network namespace {spec}",
                     hint="'tcplab states --all-netns' lists the namespaces tcplab can find")


def _setns(fd: int) -> None:
    setns(fd, CLONE_NEWNET)


@contextmanager
def entered(spec: str | None) -> Iterator[None]:
    """Run the body inside the network namespace ``spec`` (None: stay here)."""
    if spec is None:
        yield
        return
    path = ns_path(spec)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(
            f"no network namespace {spec!r} ({path} does not exist)",
            hint="give a name from 'ip netns list', a pid, or a path such as /proc/PID/ns/net",
        ) from None
    except PermissionError:
        raise PrivilegeError(
            f"cannot open {path}: permission denied",
            hint="looking into another namespace needs root (CAP_SYS_ADMIN)",
        ) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise PrivilegeError(
                    f"entering the network namespace {spec!r} needs CAP_SYS_ADMIN",
                    hint="run as root (sudo tcplab ...)",
                ) from None
            if exc.errno == errno.EINVAL:
                raise UsageError(f"{path} is not a network namespace") from None
            raise
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def pids_in(spec: str | None, procfs: str = "/proc") -> list[int]:
    """The processes in the network namespace ``spec`` (ours when None).

    A process is in it when its ``/proc/PID/ns/net`` is the same nsfs file
    (device and inode), as ``ip netns pids`` decides (iproute2, ip/ipnetns.c,
    netns_pids). Processes that are gone, or another user's (unreadable
    without root), are left out.
    """
    return pids_and_unseen(spec, procfs)[0]


def pids_and_unseen(spec: str | None, procfs: str = "/proc") -> tuple[list[int], set[int]]:
    """pids_in(spec), and the processes whose namespaces could not be looked at
    (another user's, without root: whether they are in it cannot be told), from one
    walk of /proc."""
    path = ns_path(spec) if spec is not None else f"{procfs}/self/ns/net"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"no network namespace {spec!r} ({path} does not exist)") from None
    want = f"{st.st_dev}:{st.st_ino}"
    pids: list[int] = []
    unseen: set[int] = set()
    for pid, ident in each_pid_netns(procfs):
        if ident is None:
            unseen.add(pid)
        elif ident == want:
            pids.append(pid)
    return sorted(pids), unseen


def pids_in_any(netns: set[str], procfs: str = "/proc") -> list[int]:
    """The processes in any of the network namespaces ``netns`` (``DEV:INODE``, the
    nsfs file's identity), sorted; those gone or unreadable are left out."""
    return sorted(pid for pid, ident in each_pid_netns(procfs) if ident in netns)


def each_pid_netns(procfs: str = "/proc") -> Iterator[tuple[int, str | None]]:
    """(pid, ``DEV:INODE`` of its network namespace) for every process; None when
    it may not be looked at (another user's, or a user namespace of its own). Gone
    processes and zombies (they have left their namespaces) are left out."""
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        try:
            st = os.stat(f"{procfs}/{name}/ns/net")
        except FileNotFoundError:
            continue
        except OSError:
            yield int(name), None
            continue
        yield int(name), f"{st.st_dev}:{st.st_ino}"
