"""Every network namespace on the node (issue 15): found, and read from inside.

Kept apart from observe/netns.py and observe/sockets.py, which `tcplab states`
imports on its fast path (no dataclasses there: tests/test_cli.py).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tcplab.observe.sockets import SocketTable, StateCounts


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
    pids: tuple[int, ...] = ()  # those processes


@dataclass(frozen=True, slots=True)
class Discovery:
    namespaces: tuple[Namespace, ...]
    #: processes whose namespace could not be read (another user's, as an ordinary
    #: user): their namespaces may be missing from the list.
    unreadable: int = 0


def discover(procfs: str = "/proc", run_netns: str = "/run/netns",
             pinned: Iterable[str] = ()) -> Discovery:
    """Every network namespace on the node that we can find, each once, by the nsfs
    identity (device and inode) of the files that open it, as ``lsns -t net`` and
    ``ip netns identify`` decide:

    - ``/proc/*/ns/net``: the namespaces processes are in;
    - nsfs bind mounts from ``/proc/self/mountinfo``: ``ip netns``'s
      /run/netns/NAME (the name is kept), and those of runtimes that mount them
      elsewhere (Docker's /var/run/docker/netns/ID, CNI's);
    - ``pinned``: open fds such as /proc/PID/fd/N that refer to a namespace
      (observe.owners.OwnerMap.pinned collects them while it walks every fd): a
      namespace kept alive only by a descriptor has no process and no mount.

    A namespace held only by its sockets (made inside it, then left) cannot be
    found from /proc. Nothing is entered here; ours is first, then by inode. (Not
    pid 1's as "the host's": in a container, or here, pid 1 may be in a user
    namespace we may not look into.)"""
    from tcplab.observe.netns import each_pid_netns

    found: dict[str, list[int]] = {}
    unreadable = 0
    for pid, ident in each_pid_netns(procfs):
        if ident is None:
            unreadable += 1
        else:
            found.setdefault(ident, []).append(pid)
    names: dict[str, str] = {}
    paths: dict[str, str] = {}
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
        paths.setdefault(f"{st.st_dev}:{st.st_ino}", os.path.join(run_netns, name))
    for path in [*_nsfs_mounts(procfs), *pinned]:
        try:
            st = os.stat(path)
        except OSError:
            continue  # unmounted or closed since
        paths.setdefault(f"{st.st_dev}:{st.st_ino}", path)
    st = os.stat(f"{procfs}/self/ns/net")
    ours = f"{st.st_dev}:{st.st_ino}"
    out = []
    for ident in set(found) | set(paths):
        pids = sorted(found.get(ident, []))
        path = paths.get(ident) or f"{procfs}/{pids[0]}/ns/net"
        out.append(Namespace(ident, int(ident.split(":")[1]), path, names.get(ident),
                             pids[0] if pids else None, len(pids), ident == ours,
                             tuple(pids)))
    out.sort(key=lambda n: (not n.ours, n.inode))
    return Discovery(tuple(out), unreadable)


def _nsfs_mounts(procfs: str) -> list[str]:
    """Mount points of network namespaces (mountinfo lines whose root is
    ``net:[INODE]`` and whose type is nsfs; see proc(5))."""
    try:
        with open(f"{procfs}/self/mountinfo") as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[3].startswith("net:[") and " - nsfs " in line:
            # Octal escapes in the mount point: \040 is a space (show_mountinfo).
            out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return out


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """State counts of every network namespace on the node (issue 15)."""

    counted: tuple[tuple[Namespace, StateCounts], ...]
    failed: tuple[tuple[Namespace, str], ...]  # not examined, and why
    unreadable: int  # processes whose namespace could not be looked at
    states: dict[str, int]
    total: int


T = TypeVar("T")


class Gone(OSError):
    """A namespace's file now opens another namespace, or nothing: it is gone."""


@contextmanager
def pinned_open(ns: Namespace) -> Iterator[str | None]:
    """What to enter for ``ns`` (None: ours), held open while the body runs: its
    file is opened once and checked to be the namespace discover() found (a pid,
    or an fd number, may have been reused since), and the body gets
    ``/proc/self/fd/N``, which opens that very namespace again (netns.entered).
    Gone when it is not there any more."""
    if ns.ours:
        yield None
        return
    try:
        fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Gone(errno.ENOENT, "gone since it was found") from None
    try:
        st = os.fstat(fd)
        if f"{st.st_dev}:{st.st_ino}" != ns.id:
            raise Gone(errno.ESTALE, "gone since it was found (its file now opens another)")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def each_namespace(read: Callable[[str | None], T], procfs: str = "/proc",
                   pinned: Iterable[str] = ()
                   ) -> tuple[list[tuple[Namespace, T]], list[tuple[Namespace, str]], int]:
    """``read(netns)`` in every namespace discover() finds (None for ours, else a
    path that opens it, as SocketTable(netns=...) takes it: pinned_open):
    (namespace, result) for those read, (namespace, why) for those that could not
    be, and the count of processes whose namespace could not be looked at."""
    from tcplab.errors import TcplabError

    found = discover(procfs, pinned=pinned)
    done: list[tuple[Namespace, T]] = []
    failed: list[tuple[Namespace, str]] = []
    for ns in found.namespaces:
        try:
            with pinned_open(ns) as spec:
                done.append((ns, read(spec)))
        except (TcplabError, OSError) as exc:
            failed.append((ns, why_not(exc)))
    return done, failed, found.unreadable


def why_not(exc: Exception) -> str:
    """Why a namespace could not be read, in words (without the /proc/self/fd path
    it was entered by)."""
    from tcplab.errors import PrivilegeError, TcplabError

    if isinstance(exc, Gone):
        return exc.strerror or "gone since it was found"
    if isinstance(exc, PrivilegeError):
        # netns_install (net/core/net_namespace.c) wants CAP_SYS_ADMIN in the user
        # namespace that owns the network namespace and in the caller's own.
        return "entering it needs CAP_SYS_ADMIN (run as root)"
    if isinstance(exc, TcplabError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def why_word(exc: Exception) -> str:
    """why_not() as a label value of a few fixed words (no pid or path in it):
    ``gone``, ``no_privilege`` or ``error``."""
    from tcplab.errors import PrivilegeError, UsageError

    if isinstance(exc, (Gone, UsageError)):
        return "gone"  # UsageError: --netns names nothing (any more)
    if isinstance(exc, PrivilegeError) or (
            isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES)):
        return "no_privilege"
    return "error"


def node_counts(port: int = 0, procfs: str = "/proc") -> NodeCounts:
    """Each namespace (discover) counted by a sock_diag socket opened inside it:
    setns in, socket(), setns back (SocketTable(netns=...)); the socket stays bound
    to that namespace, and no process is forked per namespace."""
    from tcplab.kernel import tcp_states

    def count(netns: str | None) -> StateCounts:
        with SocketTable(netns=netns) as table:
            return table.state_counts(port)

    counted, failed, unreadable = each_namespace(count, procfs)
    states = dict.fromkeys(tcp_states.STATE_NAMES, 0)
    for _, c in counted:
        for k, v in c.states.items():
            states[k] = states.get(k, 0) + v
    return NodeCounts(tuple(counted), tuple(failed), unreadable, states,
                      sum(c.total for _, c in counted))


def where(ns: Namespace | None, pid: int | None = None) -> dict[str, object]:
    """A namespace as every --all-netns JSON row names it: its inode, its `ip netns`
    name, and the container, pod or unit (kernel.cgroup) of ``pid`` (a row's own
    process), else of the namespace's first process (in a pod, the pause
    container's words carry the pod). All None for a namespace not readable."""
    from tcplab.observe.doctor import cgroup_words

    if ns is None:
        return {"netns": None, "netns_name": None, "container": cgroup_words(pid)}
    return {"netns": ns.inode, "netns_name": ns.name,
            "container": cgroup_words(pid) or cgroup_words(ns.pid)}


def where_text(ns: Namespace) -> str:
    """``net:[4026532246] lab-client (docker container 3f2a...)``."""
    w = where(ns)
    held = "" if ns.pid or ns.name else f" (held by {ns.path})"
    return (f"net:[{ns.inode}]" + (f" {ns.name}" if ns.name else "") + held
            + (" (ours)" if ns.ours else "") + (f" ({w['container']})" if w["container"] else ""))
