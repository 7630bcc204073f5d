"""The kernel's memory per socket: slab caches before and at the peak, and the ledger.

A TCP socket that a process holds is several kernel objects, each from its own slab
cache (read here from /proc/slabinfo, mm/slab_common.c cache_show):

- ``TCP``: the struct tcp_sock (net/core/sock.c sk_prot_alloc, from tcp_prot.slab; an
  accepted one is cloned from the listener in sk_clone_lock);
- ``sock_inode_cache``: struct socket_alloc, the socket and its inode together
  (net/socket.c sock_alloc_inode);
- ``filp`` and ``dentry``: the fd's struct file and a pseudo dentry for it
  (net/socket.c sock_alloc_file -> fs/file_table.c alloc_file_pseudo: d_alloc_pseudo,
  then alloc_file -> alloc_empty_file, kmem_cache_zalloc(filp_cachep));
- ``lsm_file_cache``: the security modules' blob of that file (security_file_alloc,
  when an LSM keeps one; this machine's kernel does);
- when the socket is in an epoll set: ``eventpoll_epi`` (fs/eventpoll.c ep_insert),
  ``eventpoll_pwq`` (ep_ptable_queue_proc: one per wait queue, one for a socket) and
  ``ep_head`` (attach_epitem: the first epoll watch of a file);
- a connect()ed socket's local port: ``tcp_bind_bucket`` per port and
  ``tcp_bind2_bucket`` per (address, port) (net/ipv4/inet_hashtables.c
  __inet_hash_connect; accepted sockets share their listener's).

**Merged caches.** SLUB merges a new cache into an existing one of the same size and
flags unless either is unmergeable (mm/slab_common.c find_mergeable and
slab_unmergeable: SLAB_TYPESAFE_BY_RCU, a constructor or a usercopy region prevent it);
/proc/slabinfo then shows only the first cache's name, and the other names are
symlinks in /sys/kernel/slab to one directory named after the cache's flags and size
(mm/slub.c sysfs_slab_add: ``create_unique_id``, then sysfs_slab_alias for each
name). On this machine (Linux 6.18, read as root): eventpoll_epi is one cache with
tcp_bind_bucket, tcp_bind2_bucket, pte_list_desc and fib6_node (``:A-0000128``);
eventpoll_pwq is reported as ``anon_vma_chain`` (with fs_cache, ``:A-0000064``);
lsm_file_cache shares ``:0000024`` with fsnotify_mark_connector; ep_head has a
``:A-0000016`` directory of its own (mergeable, but alone); TCP, sock_inode_cache,
filp and dentry are directories under their own names (never merged). A merged
cache's count moves with its other users, so its row is always an estimate.

**Who may read what.** /proc/slabinfo is mode 0400 (root's): ``snapshot`` then carries
``caches=None`` and ``why_not`` says why, and still reads what everyone may:
/proc/meminfo's Slab and SUnreclaim (machine-wide) and /proc/net/sockstat's TCP
``mem`` (pages charged to TCP buffers, tcp_memory_allocated: machine-wide too).
``slabinfo()`` is the strict reader: it raises PrivilegeError. The symlinks in
/sys/kernel/slab are readable by anyone (only the files inside are 0400).

**Noise.** All of these are machine-wide: anything else on the machine that opens
files or sockets moves them too. ``ledger`` therefore checks each cache against what
the sockets should have made (``ratio``) and trusts only 0.9-1.1; the rest is priced at
object size x the expected count and marked "estimated". SLUB's active_objs also
counts every free object of a CPU's current slab as in use (mm/slub.c get_slabinfo:
``nr_objs - count_partial(n, count_free)``), so a cache moves by up to a slab's worth
per CPU with no allocation at all: small against thousands of sockets.

**Measured here** (root, 2,000 and 8,000 loopback connections, both ends in one process,
16 runs): TCP, sock_inode_cache, filp and dentry moved by 0.94-1.0 objects a socket, so
each accepted or connected socket has its own file and dentry (as sock_alloc_file says);
about 3.8 KB of slab a socket, 7.6 KB a connection; /proc/meminfo's Slab moved by
3.3-3.7 KB a socket. ep_head came out 0.76 a watch at 2,000 and 0.96 at 8,000: a fixed
shortfall of about 490 objects (free objects the CPUs' slabs already counted as in use),
which vanishes at scale. The eventpoll_epi line (with both bind buckets) moved by about
one object a connect()ed socket fewer than epi + bind + bind2 predicts, at both sizes,
although __inet_hash_connect creates one bucket of each for every new port; why is not
established here, so the bind-bucket rows stay estimates at objsize x connects (an
upper bound if the measurement is right).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from tcplab.errors import PrivilegeError
from tcplab.kernel.procfs import Slab, parse_meminfo, parse_slabinfo, parse_sockstat
from tcplab.observe.procfs import PROCFS_PATH, read_text

#: The caches a held TCP socket (and its epoll watch, its local port) allocates from.
CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "lsm_file_cache",
          "eventpoll_epi", "eventpoll_pwq", "ep_head", "tcp_bind_bucket", "tcp_bind2_bucket")

#: What each expected count is made of: one per socket, per watched fd, or per
#: connect()ed socket (its local port).
PER_SOCKET = ("TCP", "sock_inode_cache", "filp", "dentry", "lsm_file_cache")
PER_WATCH = ("eventpoll_epi", "eventpoll_pwq", "ep_head")
PER_CONNECT = ("tcp_bind_bucket", "tcp_bind2_bucket")

#: A cache's measured count is believed when it is within this of the expected count.
TRUST = (0.9, 1.1)

SYS_SLAB = "/sys/kernel/slab"


@dataclass(frozen=True, slots=True)
class CacheRead:
    """One cache of interest as /proc/slabinfo showed it."""

    cache: str  # the name the kernel code gives it (kmem_cache_create)
    reported_as: str  # the slabinfo line it is counted in (another name when merged)
    shared_with: tuple[str, ...]  # the other caches merged into that one
    slab: Slab

    @property
    def merged(self) -> bool:
        return bool(self.shared_with)


@dataclass(frozen=True, slots=True)
class SlabSnapshot:
    """The slab caches of interest and the machine's slab total, at one moment."""

    caches: tuple[CacheRead, ...] | None  # None: /proc/slabinfo could not be read
    why_not: str  # why caches is None ("" when it is not)
    slab_bytes: int  # /proc/meminfo Slab: every slab cache's pages
    sunreclaim_bytes: int  # /proc/meminfo SUnreclaim (sockets and files are here)
    tcp_mem_pages: int | None  # /proc/net/sockstat TCP mem: pages charged to TCP buffers
    page_size: int

    def cache(self, name: str) -> CacheRead | None:
        return next((c for c in self.caches or () if c.cache == name), None)


@dataclass(frozen=True, slots=True)
class Resolved:
    reported_as: str
    shared_with: tuple[str, ...]


def resolve(names: Collection[str], links: Mapping[str, str | None],
            reported: Collection[str]) -> dict[str, Resolved]:
    """Which slabinfo line counts each cache, and which other caches share it.

    ``links`` is /sys/kernel/slab: each entry's symlink target, or None for a
    directory (a cache under its own name: unmergeable, mm/slub.c sysfs_slab_add).
    ``reported`` is the set of names /proc/slabinfo shows. A name found in neither
    is left out (this kernel has no such cache)."""
    out: dict[str, Resolved] = {}
    for name in names:
        target = links.get(name)
        if target is None:
            if name in reported:
                out[name] = Resolved(name, ())
            continue
        users = sorted(n for n, t in links.items() if t == target)
        shown = [n for n in users if n in reported]
        if len(shown) != 1:
            continue  # not one line for it: cannot say which counts it
        out[name] = Resolved(shown[0], tuple(n for n in users if n != name))
    return out


def read_links(sys_slab: str = SYS_SLAB) -> dict[str, str | None]:
    """/sys/kernel/slab's entries: symlink target (``:A-0000128``) or None (a directory).
    Empty when there is no such directory (a kernel without SLUB's sysfs)."""
    try:
        names = os.listdir(sys_slab)
    except OSError:
        return {}
    links: dict[str, str | None] = {}
    for name in names:
        try:
            links[name] = os.path.basename(os.readlink(f"{sys_slab}/{name}"))
        except OSError:
            links[name] = None  # a directory: EINVAL from readlink
    return links


def slabinfo(root: str = PROCFS_PATH) -> dict[str, Slab]:
    """/proc/slabinfo parsed; PrivilegeError when it may not be read (it is root's)."""
    try:
        text = read_text("slabinfo", root)
    except PermissionError:
        raise PrivilegeError(
            f"cannot read {root}/slabinfo: permission denied (the file is mode 0400)",
            hint="run as root for the kernel's per-cache figures; /proc/meminfo's Slab "
                 "total is readable by anyone") from None
    return parse_slabinfo(text)


def caches_from(slabs: Mapping[str, Slab], links: Mapping[str, str | None],
                names: Collection[str] = CACHES) -> tuple[CacheRead, ...]:
    """The caches of interest from a parsed slabinfo and /sys/kernel/slab's links."""
    found = resolve(names, links, slabs.keys())
    return tuple(CacheRead(n, found[n].reported_as, found[n].shared_with,
                           slabs[found[n].reported_as]) for n in names if n in found)


def snapshot(root: str = PROCFS_PATH, sys_slab: str = SYS_SLAB) -> SlabSnapshot:
    """The caches of interest (None without root, with the reason) and the
    world-readable cross-checks. Everything is machine-wide, whatever the reader's
    network namespace (sockstat's ``mem`` is the protocol's global count)."""
    caches: tuple[CacheRead, ...] | None
    try:
        caches, why_not = caches_from(slabinfo(root), read_links(sys_slab)), ""
    except PrivilegeError as e:
        caches, why_not = None, f"{e} ({e.hint})"
    except OSError as e:
        caches, why_not = None, f"cannot read {root}/slabinfo: {e.strerror}"
    mem = parse_meminfo(read_text("meminfo", root))
    try:
        tcp_mem: int | None = parse_sockstat(read_text("net/sockstat", root)).get("mem")
    except (OSError, ValueError):
        tcp_mem = None
    return SlabSnapshot(caches, why_not, mem.get("Slab", 0), mem.get("SUnreclaim", 0),
                        tcp_mem, os.sysconf("SC_PAGE_SIZE"))


# --- the ledger --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One cache's share of the sockets: measured when believable, else estimated."""

    cache: str
    reported_as: str
    objsize: int  # bytes per object, the cache's stride
    delta_objects: int  # active objects at the peak minus before
    expected_per_socket: float  # objects each socket should have made
    expected: int  # objects all the sockets should have made
    ratio: float  # delta_objects / expected (of every cache counted on its slabinfo line)
    bytes: int  # delta_objects x objsize when trusted, else expected x objsize
    slab_bytes: int  # the same from slab pages (their unused slots included)
    trusted: bool
    note: str


@dataclass(frozen=True, slots=True)
class Ledger:
    """Kernel bytes per socket and per connection, from two snapshots."""

    sockets: int
    connections: int
    rows: tuple[LedgerRow, ...]  # empty when the caches could not be read
    why_not: str
    bytes_per_socket: float | None  # every row: measured where trusted, else estimated
    measured_bytes_per_socket: float | None  # the trusted rows only
    estimated_bytes_per_socket: float | None  # the rest
    bytes_per_connection: float | None  # all rows' bytes / connections
    slab_bytes_per_socket: float | None  # the same from slab pages
    slab_bytes_per_connection: float | None
    meminfo_slab_per_socket: float  # /proc/meminfo Slab delta / sockets: a cross-check
    meminfo_sunreclaim_per_socket: float
    tcp_mem_pages: int | None  # sockstat TCP mem delta: buffers, not the sockets themselves


def expected_counts(sockets: int, watched: int, connects: int) -> dict[str, int]:
    """How many objects of each cache the sockets should have made."""
    return {**dict.fromkeys(PER_SOCKET, sockets), **dict.fromkeys(PER_WATCH, watched),
            **dict.fromkeys(PER_CONNECT, connects)}


def ledger(before: SlabSnapshot, peak: SlabSnapshot, sockets: int, watched: int = 0,
           *, connects: int = 0, connections: int | None = None) -> Ledger:
    """What ``sockets`` held sockets cost the kernel between ``before`` and ``peak``.

    ``sockets`` counts every socket made between the two: on loopback **both ends are
    in this kernel**, so for ``held`` connections and K listeners opened after
    ``before`` the caller passes ``sockets = 2 * held + K``. ``watched`` is how many of
    them are in an epoll set (each one epitem, pwq and ep_head), ``connects`` how many
    were connect()ed (each its own local port: a bind bucket and a bind2 bucket).
    ``connections`` (default sockets // 2) divides the total for the per-connection
    figure. Caches with no expected objects get no row.

    A row is trusted when its cache is not merged and its measured count is within
    0.9-1.1 of the expected one; otherwise its bytes are objsize x expected count and
    its note says so."""
    if sockets <= 0:
        raise ValueError(f"sockets must be positive, not {sockets}")
    conns = connections if connections is not None else max(1, sockets // 2)
    page = peak.page_size
    meminfo_slab = (peak.slab_bytes - before.slab_bytes) / sockets
    meminfo_unrec = (peak.sunreclaim_bytes - before.sunreclaim_bytes) / sockets
    tcp_mem = (None if peak.tcp_mem_pages is None or before.tcp_mem_pages is None
               else peak.tcp_mem_pages - before.tcp_mem_pages)
    if peak.caches is None or before.caches is None:
        why = peak.why_not or before.why_not
        return Ledger(sockets, conns, (), why, None, None, None, None, None, None,
                      meminfo_slab, meminfo_unrec, tcp_mem)
    expected = expected_counts(sockets, watched, connects)
    # Caches merged into one slabinfo line share its count: the line is checked against
    # all of their expected objects together (eventpoll_epi with the bind buckets here).
    line_wants: dict[str, int] = {}
    for now in peak.caches:
        want = expected.get(now.cache, 0)
        line_wants[now.reported_as] = line_wants.get(now.reported_as, 0) + want
    rows = []
    for now in peak.caches:
        then = before.cache(now.cache)
        want = expected.get(now.cache, 0)
        if then is None or want <= 0:
            continue
        rows.append(_row(then, now, want, line_wants[now.reported_as], sockets, page))
    measured = sum(r.bytes for r in rows if r.trusted)
    estimated = sum(r.bytes for r in rows if not r.trusted)
    slab_total = sum(r.slab_bytes for r in rows)
    return Ledger(sockets, conns, tuple(rows), "", (measured + estimated) / sockets,
                  measured / sockets, estimated / sockets, (measured + estimated) / conns,
                  slab_total / sockets, slab_total / conns, meminfo_slab, meminfo_unrec,
                  tcp_mem)


def _row(then: CacheRead, now: CacheRead, want: int, line_want: int, sockets: int,
         page: int) -> LedgerRow:
    slab = now.slab
    delta = slab.active_objs - then.slab.active_objs
    ratio = delta / line_want
    in_range = TRUST[0] <= ratio <= TRUST[1]
    trusted = in_range and not now.merged
    if trusted:
        size = delta * slab.objsize
        pages = (slab.num_slabs - then.slab.num_slabs) * slab.pagesperslab * page
        note = "measured"
    else:
        size, pages = want * slab.objsize, round(want * slab.bytes_per_object(page))
        why = []
        if now.merged:
            shown = "" if now.reported_as == now.cache else f", counted as {now.reported_as}"
            why.append(f"merged: shared with other users ({', '.join(now.shared_with)}"
                       f"{shown})")
        if not in_range:
            why.append(f"moved by others ({ratio:.2f} per expected object)")
        note = "estimated: " + "; ".join(why) + f": {slab.objsize} B x {want:,}"
    return LedgerRow(now.cache, now.reported_as, slab.objsize, delta, want / sockets, want,
                     ratio, size, pages, trusted, note)
