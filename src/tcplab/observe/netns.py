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
from dataclasses import dataclass

from tcplab.errors import PrivilegeError, UsageError
from tcplab.observe.nsutil import CLONE_NEWNET, setns


def ns_path(spec: str) -> str:
    """NAME (from ``ip netns add``), a PID, or a path to a namespace file."""
    if spec.isdigit():
        return f"/proc/{spec}/ns/net"
    if "/" in spec:
        return spec
    return f"/run/netns/{spec}"


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
    path = ns_path(spec) if spec is not None else f"{procfs}/self/ns/net"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"no network namespace {spec!r} ({path} does not exist)") from None
    return pids_in_any({f"{st.st_dev}:{st.st_ino}"}, procfs)


def pids_in_any(netns: set[str], procfs: str = "/proc") -> list[int]:
    """The processes in any of the network namespaces ``netns`` (``DEV:INODE``, the
    nsfs file's identity), sorted; those gone or unreadable are left out."""
    found = []
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        try:
            ns = os.stat(f"{procfs}/{name}/ns/net")
        except OSError:
            continue
        if f"{ns.st_dev}:{ns.st_ino}" in netns:
            found.append(int(name))
    return sorted(found)


# -- every namespace on the node (issue 15) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace as found on the node."""

    id: str  # "DEV:INODE" of its nsfs file: the same from every process
    inode: int  # what `ls -l /proc/PID/ns/net` shows as net:[INODE]
    path: str  # a file that opens it: /run/netns/NAME, else /proc/PID/ns/net
    name: str | None  # its `ip netns` name, when it has one
    pid: int | None  # one process in it (the lowest pid), None if only named
    processes: int  # how many processes are in it (those we may look at)
    ours: bool  # the namespace this process runs in (the host's, run on the host)


@dataclass(frozen=True, slots=True)
class Discovery:
    namespaces: tuple[Namespace, ...]
    #: processes whose namespace could not be read (another user's, as an ordinary
    #: user): their namespaces may be missing from the list.
    unreadable: int = 0


def discover(procfs: str = "/proc", run_netns: str = "/run/netns") -> Discovery:
    """Every network namespace a process is in or `ip netns` names, each once: the
    nsfs identity (device and inode) of ``/proc/*/ns/net`` and of ``/run/netns/*``,
    de-duplicated, as ``lsns -t net`` and ``ip netns identify`` decide. Nothing is
    entered here; ours is first, then by inode. (Not pid 1's as "the host's": in a
    container, or here, pid 1 may be in a user namespace we may not look into.)"""
    found: dict[str, list[int]] = {}
    unreadable = 0
    for entry in os.listdir(procfs):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"{procfs}/{entry}/ns/net")
        except FileNotFoundError:
            continue  # gone, or a zombie (it has left its namespaces)
        except OSError:
            unreadable += 1
            continue
        found.setdefault(f"{st.st_dev}:{st.st_ino}", []).append(int(entry))
    names: dict[str, str] = {}
    try:
        listing = sorted(os.listdir(run_netns))
    except OSError:
        listing = []
    for name in listing:
        try:
            st = os.stat(os.path.join(run_netns, name))
        except OSError:
            continue
        names.setdefault(f"{st.st_dev}:{st.st_ino}", name)
    st = os.stat(f"{procfs}/self/ns/net")
    ours = f"{st.st_dev}:{st.st_ino}"
    out = []
    for ident in set(found) | set(names):
        pids = sorted(found.get(ident, []))
        named = names.get(ident)
        path = (os.path.join(run_netns, named) if named else f"{procfs}/{pids[0]}/ns/net")
        out.append(Namespace(ident, int(ident.split(":")[1]), path, named,
                             pids[0] if pids else None, len(pids), ident == ours))
    out.sort(key=lambda n: (not n.ours, n.inode))
    return Discovery(tuple(out), unreadable)
