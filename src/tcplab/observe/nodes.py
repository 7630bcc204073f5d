"""Every network namespace on the node (issue 15): found, and read from inside.

Kept apart from observe/netns.py and observe/sockets.py, which `tcplab states`
imports on its fast path (no dataclasses there: tests/test_cli.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
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


def each_namespace(read: Callable[[str | None], T], procfs: str = "/proc",
                   pinned: Iterable[str] = ()
                   ) -> tuple[list[tuple[Namespace, T]], list[tuple[Namespace, str]], int]:
    """``read(netns)`` in every namespace discover() finds (None for ours, else its
    nsfs path, as SocketTable(netns=...) takes it): (namespace, result) for those
    read, (namespace, why) for those that could not be, and the count of processes
    whose namespace could not be looked at."""
    from tcplab.errors import TcplabError

    found = discover(procfs, pinned=pinned)
    done: list[tuple[Namespace, T]] = []
    failed: list[tuple[Namespace, str]] = []
    for ns in found.namespaces:
        try:
            done.append((ns, read(None if ns.ours else ns.path)))
        except (TcplabError, OSError) as exc:
            failed.append((ns, why_not(ns, exc)))
    return done, failed, found.unreadable


def why_not(ns: Namespace, exc: Exception) -> str:
    """Why ``ns`` could not be read, in words."""
    from tcplab.errors import TcplabError

    if not os.path.exists(ns.path):
        return "gone since it was found (its last process exited)"
    if isinstance(exc, TcplabError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


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


def where(ns: Namespace) -> dict[str, object]:
    """A namespace as every --all-netns JSON row names it: its inode, its `ip netns`
    name, and the container, pod or unit of its first process (kernel.cgroup)."""
    from tcplab.observe.doctor import cgroup_words

    return {"netns": ns.inode, "netns_name": ns.name, "container": cgroup_words(ns.pid)}


def where_text(ns: Namespace) -> str:
    """``net:[4026532246] lab-client (docker container 3f2a...)``."""
    w = where(ns)
    held = "" if ns.pid or ns.name else f" (held by {ns.path})"
    return (f"net:[{ns.inode}]" + (f" {ns.name}" if ns.name else "") + held
            + (" (ours)" if ns.ours else "") + (f" ({w['container']})" if w["container"] else ""))


def why_word(ns: Namespace, exc: Exception) -> str:
    """why_not() as a label value of a few fixed words (no pid or path in it):
    ``gone``, ``no_privilege`` or ``error``."""
    import errno

    from tcplab.errors import PrivilegeError

    if not os.path.exists(ns.path):
        return "gone"
    if isinstance(exc, PrivilegeError) or (
            isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES)):
        return "no_privilege"
    return "error"
