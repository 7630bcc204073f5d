"""Where the nets that exist are written down: one JSON file per net.

A net lives as long as its holder process (``tcplab.agents.netholder``): the
holder owns the namespaces (its own, and two small "pin" children that sit in
the client's and the server's namespace), the delay line, and the file
``DIR/NAME.json`` that says what it made (a ``Net`` record). The holder writes
the file when the net is ready and removes it when it stops; a file whose
holder is gone (SIGKILL, a reboot of /tmp's contents aside) is stale, and is
removed by whoever finds it.

Why a holder and not ``/run/netns`` bind mounts (``ip netns add``): a bind mount
outlives a holder that crashed, so a SIGKILL would leave a namespace behind
until someone unmounts it; and an ordinary user cannot make one on the host at
all. A process-held namespace goes away with its last process, whatever kills
it (namespaces(7): "a namespace is automatically torn down when the last
process in the namespace terminates or leaves the namespace", unless a file
descriptor or bind mount holds it).

DIR is /run/tcplab/net for root; for anyone else $XDG_RUNTIME_DIR/tcplab/net,
else /tmp/tcplab-UID/net (made 0700 and checked to be ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat as stat_
from dataclasses import dataclass, field
from pathlib import Path

from tcplab.net.plan import Queue, Shaping

#: The environment `net exec` gives a command, besides TCPLAB_SERVER/CLIENT(6).
ENV_NET = "TCPLAB_NET"
ENV_STATE = "TCPLAB_NET_STATE"


@dataclass(frozen=True, slots=True)
class Endpoint:
    role: str  # client, server, router
    pid: int  # a process that sits in the namespace: /proc/PID/ns/net
    netns: str  # "DEV:INODE" of the namespace (nsfs), to recognise it anywhere
    ipv4: str | None = None
    ipv6: str | None = None
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class Net:
    name: str
    pid: int  # the holder
    start: int  # the holder's start time (clock ticks, /proc/PID/stat field 22)
    user: bool  # made in a user namespace (unprivileged)
    uid: int  # who made it
    client: Endpoint
    server: Endpoint
    router: Endpoint | None
    shaping: Shaping
    mtu: int
    mechanisms: dict[str, str] = field(default_factory=dict)
    queue: Queue | None = None

    def endpoint(self, role: str) -> Endpoint:
        ep = {"client": self.client, "server": self.server, "router": self.router}.get(role)
        if ep is None:
            raise KeyError(role)
        return ep

    def environment(self, path: Path) -> dict[str, str]:
        """What `net exec` adds to a command's environment."""
        env = {ENV_NET: self.name, ENV_STATE: str(path),
               "TCPLAB_SERVER": self.server.ipv4 or "", "TCPLAB_CLIENT": self.client.ipv4 or "",
               "TCPLAB_SERVER6": self.server.ipv6 or "", "TCPLAB_CLIENT6": self.client.ipv6 or ""}
        return env


def state_dir(euid: int | None = None) -> Path:
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return Path("/run/tcplab/net")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == euid:
        return Path(runtime) / "tcplab" / "net"
    return Path(f"/tmp/tcplab-{euid}") / "net"


def ensure_dir(path: Path) -> Path:
    """Make ``path`` (0700) and check that it is ours: /tmp is shared, and a
    directory someone else made there could feed us their files."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Every directory we made, or found, from the first one that is not a shared
    # system directory down (/tmp/tcplab-UID and net/ under it, or /run/tcplab/net):
    # no symlink (lstat, not stat), ours, and writable by nobody else; otherwise
    # another user could have made /tmp/tcplab-UID first and hand us their files.
    euid = os.geteuid()
    for part in [*reversed(path.parents), path]:
        if part in _SHARED:
            continue
        st = os.lstat(part)
        if stat_.S_ISLNK(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
            raise PermissionError(f"{part} is not ours alone (owner {st.st_uid}, "
                                  f"mode {st.st_mode & 0o777:o}"
                                  + (", a symlink" if stat_.S_ISLNK(st.st_mode) else "") + ")")
    return path


#: Directories that are shared by design (sticky or root's): not checked.
_SHARED = {Path("/"), Path("/tmp"), Path("/run"), Path("/run/user")}


def state_path(name: str, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"{name}.json"


def ns_id(path: str) -> str:
    """``DEV:INODE`` of a namespace file: the same namespace gives the same pair
    from any process (nsfs inodes are global; ``ip netns identify`` compares them)."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (starttime), or None if the pid is gone or a
    zombie (it has left its namespaces already): with the pid, it names a process
    uniquely (a reused pid has another start time)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(net: Net) -> bool:
    return start_time(net.pid) == net.start


def write(net: Net, path: Path) -> None:
    """Atomically (rename): a reader never sees half a file."""
    from tcplab.records import to_json

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(to_json(net), indent=1) + "\n")
    tmp.replace(path)


def read(path: Path) -> Net | None:
    """The net in ``path``, or None if the file is gone or not a net's."""
    from tcplab.records import RecordError, from_json

    try:
        data = json.loads(path.read_text())
        return from_json(Net, data)
    except (OSError, ValueError, RecordError):
        return None


def nets(directory: Path | None = None) -> tuple[list[Net], list[str]]:
    """The live nets, by name; and the names of stale files, which are removed."""
    directory = directory or state_dir()
    live: list[Net] = []
    stale: list[str] = []
    if not directory.is_dir():
        return live, stale
    for path in sorted(directory.glob("*.json")):
        net = read(path)
        if net is not None and alive(net):
            live.append(net)
        else:
            stale.append(path.stem)
            with contextlib.suppress(OSError):
                path.unlink()
    return live, stale


def find(name: str, directory: Path | None = None) -> Net | None:
    path = state_path(name, directory)
    net = read(path)
    if net is None:
        return None
    if not alive(net):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return net


def pids_in(netns: set[str], procfs: str = "/proc") -> list[int]:
    """Processes whose network namespace is one of ``netns`` (``DEV:INODE``):
    as ``ip netns pids`` decides (iproute2 ip/ipnetns.c, netns_pids), by the
    nsfs file's identity. Processes we may not look at are left out."""
    from tcplab.observe.netns import pids_in_any

    return pids_in_any(netns, procfs)


def inside(address: str) -> bool:
    """Whether this process runs inside a live net tcplab made, and ``address`` is
    one of that net's: the local-target check of client, bomb and multiplex.

    A net is found from TCPLAB_NET_STATE (set by `net exec`: inside a user
    namespace our euid is 0, so our own state_dir() would be root's), else in
    this user's directory. Both the namespace (by nsfs identity) and the address
    must match, so the variable alone lets nothing out."""
    try:
        here = ns_id("/proc/self/ns/net")
    except OSError:
        return False
    candidates: list[Net] = []
    env_path = os.environ.get(ENV_STATE)
    if env_path:
        net = read(Path(env_path))
        if net is not None:
            candidates.append(net)
    else:
        candidates = nets()[0]
    for net in candidates:
        ends = [net.client, net.server] + ([net.router] if net.router else [])
        if here not in {e.netns for e in ends} or not alive(net):
            continue
        if address in {a for e in (net.client, net.server) for a in (e.ipv4, e.ipv6) if a}:
            return True
    return False
