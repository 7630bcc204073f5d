"""Pure parsers for the /proc files the observers read."""

from __future__ import annotations

from dataclasses import dataclass

UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class Limit:
    """A soft and a hard resource limit, -1 meaning unlimited: a row of
    /proc/PID/limits, or this process's own ``getrlimit`` (RLIM_INFINITY is -1
    in Python on Linux too), so both say the same thing the same way."""

    soft: int
    hard: int


def parse_limits(text: str, resource: str = "Max open files") -> Limit:
    """One row of /proc/PID/limits, e.g. ``Max open files  1024  524288  files``."""
    for line in text.splitlines():
        if line.startswith(resource):
            fields = line[len(resource):].split()
            if len(fields) < 2:
                break
            return Limit(_limit(fields[0]), _limit(fields[1]))
    raise ValueError(f"no {resource!r} row in limits")


def _limit(text: str) -> int:
    return UNLIMITED if text == "unlimited" else int(text)


def fd_kind(target: str) -> str:
    """What an fd is, from its /proc/PID/fd/N link target."""
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith("anon_inode:"):
        kind = target[len("anon_inode:"):].strip("[]")
        return {"eventpoll": "epoll"}.get(kind, kind)
    if target.startswith("/dev/"):
        return "device"
    if target.startswith("/"):
        return "file"
    return target.split(":", 1)[0] or "other"


def socket_inode(target: str) -> int:
    """The inode in ``socket:[12345]``, or 0 when the link is not a socket."""
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[8:-1])
    return 0


def status_field(text: str, field: str) -> str | None:
    """A field of /proc/PID/status, e.g. ``Threads``."""
    prefix = field + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat (and /proc/net/snmp): pairs of lines, names then values.

    ``{"TcpExt": {"ListenOverflows": 195, ...}, "IpExt": {...}}``.
    """
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, keys = names.partition(":")
        vprefix, _, vals = values.partition(":")
        if prefix != vprefix:
            raise ValueError(f"mismatched netstat lines {prefix!r} / {vprefix!r}")
        out[prefix] = {k: int(v) for k, v in zip(keys.split(), vals.split(), strict=True)}
    return out


def parse_sockstat(text: str) -> dict[str, int]:
    """/proc/net/sockstat's TCP line, ``TCP: inuse 1 orphan 0 tw 5 alloc 9 mem 1``, as
    ``{"inuse": 1, "orphan": 0, "tw": 5, "alloc": 9, "mem": 1}``. "tw" counts every
    minisocket (FIN_WAIT2 and TIME_WAIT) of the reader's namespace; "orphan" is the
    machine's (tcp_orphan_count, not per namespace)."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            words = line.split()[1:]
            return {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
    raise ValueError("no TCP line in /proc/net/sockstat")


@dataclass(frozen=True, slots=True)
class Status:
    """What tcplab reads from /proc/PID/status."""

    threads: int
    rss_bytes: int  # VmRSS: resident anonymous + file + shmem pages (absent for kernel threads)


def parse_status(text: str) -> Status:
    """/proc/PID/status: ``Threads:`` and ``VmRSS:`` (in kB, proc(5))."""
    rss = status_field(text, "VmRSS") or "0 kB"
    return Status(threads=int(status_field(text, "Threads") or 0),
                  rss_bytes=int(rss.split()[0]) * 1024)


def parse_stat_ticks(text: str) -> tuple[int, int]:
    """utime and stime, in clock ticks, from /proc/PID/stat (fields 14 and 15, proc(5)).

    Fields are counted after the *last* ')': the command name (field 2) may
    itself hold spaces and parentheses.
    """
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def count_epoll_watches(fdinfo: str) -> int:
    """Files an epoll instance watches: one ``tfd:`` line each in its
    /proc/PID/fdinfo/N (proc(5), "/proc/pid/fdinfo"; fs/eventpoll.c ep_show_fdinfo)."""
    return sum(1 for line in fdinfo.splitlines() if line.startswith("tfd:"))


def parse_port_range(text: str) -> tuple[int, int]:
    """net.ipv4.ip_local_port_range: ``32768\t60999`` -> (32768, 60999)."""
    low, high = (int(x) for x in text.split())
    return low, high


#: /proc/slabinfo's first line, the only format this parser knows (mm/slab_common.c,
#: print_slabinfo_header: "slabinfo - version: 2.1"; the file is root's, mode 0400).
SLABINFO_VERSION = "slabinfo - version: 2.1"


@dataclass(frozen=True, slots=True)
class Slab:
    """One cache of /proc/slabinfo (the columns mm/slab_common.c's cache_show prints)."""

    name: str
    active_objs: int
    num_objs: int
    objsize: int  # bytes per object as the cache lays them out (its stride)
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int

    def slab_bytes(self, page_size: int) -> int:
        """The memory its slabs take: every page, the unused slots included."""
        return self.num_slabs * self.pagesperslab * page_size

    def bytes_per_object(self, page_size: int) -> float:
        """An object's share of its slab's pages (``objsize`` plus the slab's waste)."""
        return self.pagesperslab * page_size / self.objperslab


def parse_slabinfo(text: str) -> dict[str, Slab]:
    """/proc/slabinfo (version 2.1) as {cache name: Slab}. Raises ValueError for
    another version or a line that is not a cache's."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != SLABINFO_VERSION:
        raise ValueError(f"not /proc/slabinfo {SLABINFO_VERSION.split(': ')[1]}: "
                         f"{(lines[0] if lines else '')[:60]!r}")
    out: dict[str, Slab] = {}
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        head, _, rest = line.partition(" : tunables ")
        _, _, slabdata = rest.partition(" : slabdata ")
        f, d = head.split(), slabdata.split()
        if len(f) != 6 or len(d) < 2:
            raise ValueError(f"not a slabinfo line: {line[:80]!r}")
        try:
            n = [int(x) for x in (*f[1:], d[0], d[1])]
            out[f[0]] = Slab(f[0], n[0], n[1], n[2], n[3], n[4], n[5], n[6])
        except ValueError:
            raise ValueError(f"not a slabinfo line: {line[:80]!r}") from None
    return out


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: bytes} (its ``kB`` are KiB, proc(5)); a field without a
    unit (``HugePages_Total``) is a plain count."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if not words:
            continue
        try:
            value = int(words[0])
        except ValueError:
            raise ValueError(f"not a meminfo line: {line[:80]!r}") from None
        out[name.strip()] = value * 1024 if words[1:] == ["kB"] else value
    return out


def cap_bit(status_text: str, bit: int, field: str = "CapEff") -> bool:
    """Whether capability number ``bit`` is in /proc/PID/status's ``field`` (a hex mask;
    CAP_SYS_RESOURCE is 24, include/uapi/linux/capability.h)."""
    mask = status_field(status_text, field)
    if mask is None:
        raise ValueError(f"no {field} in status")
    return bool(int(mask, 16) >> bit & 1)
