"""The knobs behind the experiments: fd limits and TCP sysctls, with what they mean.

The sysctls are read with ``observe.procfs.sysctl`` while inside ``--netns``
(the net.* ones are per namespace; a read sees the reader's namespace).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tcplab.kernel.procfs import parse_port_range
from tcplab.observe.netns import entered
from tcplab.observe.process import own_fd_limit
from tcplab.observe.procfs import PROCFS_PATH, local_port_range, sysctl, sysctl_int


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    value: str
    meaning: str


#: What each value lets connect() do (tcp_twsk_unique in net/ipv4/tcp_ipv4.c): only an
#: outgoing connect() reuses a TIME_WAIT port, and only when the connection had TCP
#: timestamps (with tcp_timestamps = 0 no port is reused: measured in issue 13).
TW_REUSE = {
    "0": "off: connect() never picks the port of a TIME_WAIT socket for a new "
         "connection (one bound to that port first, with SO_REUSEADDR, may still take the "
         "4-tuple over when it had TCP timestamps); the port bomb fails after the port "
         "range is used up",
    "1": "on: connect() may reuse a TIME_WAIT port after tcp_tw_reuse_delay (needs TCP "
         "timestamps)",
    "2": "loopback only (the default): connect() reuses the port of a TIME_WAIT socket after "
         "tcp_tw_reuse_delay when it has 127.0.0.0/8, ::1 or a v4-mapped loopback address at "
         "either end or is bound to lo (needs TCP timestamps), which is why the classic port "
         "bomb does not fail on a modern kernel",
}


def read_knobs(netns: str | None = None, root: str = PROCFS_PATH) -> list[Knob]:
    limit = own_fd_limit()
    knobs = [
        Knob("ulimit -n (soft)", str(limit.soft),
             "fds this shell's processes may open; accept() fails with EMFILE beyond it"),
        Knob("ulimit -Hn (hard)", str(limit.hard),
             "the most a process may raise its own soft limit to (Go raises to it since 1.19)"),
    ]
    fs_names = ("fs.nr_open", "fs.file-nr")
    with entered(netns):
        values = {name: sysctl(name, root) for name in (
            *fs_names, "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_max_tw_buckets", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
        )}
    if values["fs.nr_open"]:
        knobs.append(Knob("fs.nr_open", values["fs.nr_open"],
                          "the ceiling for any process's hard fd limit"))
    if values["fs.file-nr"]:
        used, _free, most = ([*values["fs.file-nr"].split(), "?", "?", "?"])[:3]
        knobs.append(Knob("fs.file-nr", values["fs.file-nr"],
                          f"open files system-wide: {used} of {most}; beyond it, ENFILE "
                          "(a process with CAP_SYS_ADMIN may exceed it)"))
    port_range = values["net.ipv4.ip_local_port_range"]
    if port_range:
        low, high = parse_port_range(port_range)
        knobs.append(Knob("net.ipv4.ip_local_port_range", port_range,
                          f"{high - low + 1:,} ephemeral ports per destination (address, port), "
                          "less ip_local_reserved_ports and ports held by bind() or listen(); "
                          "connect() fails with EADDRNOTAVAIL when all are taken"))
    reuse = values["net.ipv4.tcp_tw_reuse"]
    if reuse is not None:
        knobs.append(Knob("net.ipv4.tcp_tw_reuse", reuse, TW_REUSE.get(reuse, "")))
    if values["net.ipv4.tcp_tw_reuse_delay"] is not None:
        knobs.append(Knob("net.ipv4.tcp_tw_reuse_delay", values["net.ipv4.tcp_tw_reuse_delay"],
                          "ms a TIME_WAIT socket must age before tcp_tw_reuse may take its port"))
    rest = {
        "net.ipv4.tcp_fin_timeout": "seconds an orphaned FIN_WAIT2 socket lives (its process "
        "closed it); TIME_WAIT is fixed at 60 s (TCP_TIMEWAIT_LEN) and ignores this",
        "net.ipv4.tcp_max_tw_buckets": "TIME_WAIT (and orphaned FIN_WAIT2) minisockets the "
        "namespace may hold; beyond it a closing socket gets none and is destroyed at once, "
        "counted as TcpExt TCPTimeWaitOverflow in /proc/net/netstat (tcp_time_wait; "
        "nothing is logged)",
        "net.core.somaxconn": "the cap on any listen() backlog: connections the kernel has "
        "completed but the server has not accept()ed yet",
        "net.ipv4.tcp_max_syn_backlog": "matters only with tcp_syncookies = 0: then SYNs from "
        "peers not yet proven are dropped once SYN_RECV fills three quarters of it "
        "(tcp_conn_request); the listen() backlog caps the SYN queue either way, and with "
        "syncookies on (the default) cookies answer beyond it",
    }
    for name, meaning in rest.items():
        if values[name] is not None:
            knobs.append(Knob(name, values[name] or "", meaning))
    return knobs + host_knobs(root)


#: Read where this process is, never inside --netns: none of them is per network
#: namespace, and tcp_mem exists only in the first one (net/ipv4/sysctl_net_ipv4.c
#: ipv4_table, registered for init_net; a new namespace has no such file).
HOST_KNOBS = {
    "net.ipv4.tcp_mem": "pages (min, pressure, max) all TCP sockets of the machine may "
    "charge to their buffers: above the second TCP enters memory pressure, beyond the third "
    "no socket may charge more (net/core/sock.c __sk_mem_raise_allocated); idle sockets "
    "hold none; read on the host (no network namespace but the first has it)",
    "fs.file-max": "open files the whole machine may have (fs/file_table.c alloc_empty_file: "
    "ENFILE beyond it, except with CAP_SYS_ADMIN); every socket is one",
    "kernel.pid_max": "the highest pid plus one: every process and thread takes a pid "
    "(kernel/pid.c alloc_pid), so a thread per connection stops near it",
    "vm.max_map_count": "memory mappings a process may have (mm/mmap.c do_mmap: ENOMEM "
    "beyond it); each thread's stack is two (glibc: the stack and its guard page)",
}


def host_knobs(root: str = PROCFS_PATH) -> list[Knob]:
    """The machine-wide knobs of HOST_KNOBS, as this process sees them."""
    knobs = []
    for name, meaning in HOST_KNOBS.items():
        value = sysctl(name, root)
        if value is not None:
            knobs.append(Knob(name, value, meaning))
        elif name == "net.ipv4.tcp_mem":
            knobs.append(Knob(name, "-", "not in this network namespace: it exists only in "
                              "the host's (net/ipv4/sysctl_net_ipv4.c ipv4_table)"))
    return knobs


# --- capacity: how many connections each limit allows here (issue 17, C100k) ---------------

#: fds a process keeps for itself besides its connections (stdio, epoll, listener,
#: pipes): traffic/multiplex.SPARE_FDS's figure.
SPARE_FDS = 64

#: CAP_SYS_RESOURCE (include/uapi/linux/capability.h): needed to raise a hard rlimit
#: (kernel/sys.c do_prlimit), up to fs.nr_open for RLIMIT_NOFILE.
CAP_SYS_RESOURCE = 24


@dataclass(frozen=True, slots=True)
class HostFacts:
    """The values the capacity arithmetic needs, as read on this machine (``host_facts``).
    None: not readable here (tcp_mem inside a network namespace other than the first)."""

    nofile_soft: int
    nofile_hard: int
    cap_sys_resource: bool  # CapEff bit 24 of this process
    nr_open: int | None  # fs.nr_open
    port_range: tuple[int, int] | None  # net.ipv4.ip_local_port_range (per netns)
    tcp_mem: tuple[int, int, int] | None  # net.ipv4.tcp_mem, pages (init_net only)
    file_max: int | None  # fs.file-max
    files_open: int | None  # fs.file-nr's first number
    mem_available: int  # /proc/meminfo MemAvailable, bytes
    pid_max: int | None  # kernel.pid_max
    threads_now: int | None  # /proc/loadavg's second number of its fourth field
    max_map_count: int | None  # vm.max_map_count
    page_size: int


@dataclass(frozen=True, slots=True)
class CapacityRow:
    """One limit: its value here and how many connections it allows on this machine."""

    name: str
    value: str
    allows: int  # connections (threads for the thread rows)
    per: str  # what it limits: "process", "source address" or "machine"
    threads_only: bool  # applies to a thread-per-connection server only
    note: str  # where it is set and what the figure assumes


@dataclass(frozen=True, slots=True)
class Capacity:
    """Every limit sorted by what it allows; which one a run hits first, and next."""

    rows: tuple[CapacityRow, ...]  # every known limit, fewest connections first
    hit_first: CapacityRow  # the first of the rows that apply
    next: CapacityRow | None  # the one after it
    machine_allows: int  # the first machine-wide wall: the most spreading can reach
    connections: int  # the target
    processes_needed: int  # per-process walls: processes to hold the target
    sources_needed: int  # per-source walls: source addresses for the target
    missing: tuple[str, ...]  # limits that could not be read here, with why


def _ints(text: str | None) -> list[int] | None:
    try:
        return [int(x) for x in text.split()] if text is not None else None
    except ValueError:
        return None


def host_facts(netns: str | None = None, root: str = PROCFS_PATH) -> HostFacts:
    """This machine's values for ``capacity``. The port range is read inside ``netns``
    (it is per namespace); tcp_mem, fs.* and kernel.* are read where this process is:
    tcp_mem exists only in the first network namespace (net/ipv4/sysctl_net_ipv4.c
    registers it in ipv4_table, for init_net), so read it on the host."""
    from tcplab.kernel.procfs import cap_bit, parse_meminfo
    from tcplab.observe.procfs import read_text

    limit = own_fd_limit()
    with entered(netns):
        port_range = local_port_range(root)
    tcp_mem = _ints(sysctl("net.ipv4.tcp_mem", root))
    file_nr = _ints(sysctl("fs.file-nr", root))
    loadavg = read_text("loadavg", root).split()
    return HostFacts(
        nofile_soft=limit.soft, nofile_hard=limit.hard,
        cap_sys_resource=cap_bit(read_text("self/status", root), CAP_SYS_RESOURCE),
        nr_open=sysctl_int("fs.nr_open", 0, root) or None, port_range=port_range,
        tcp_mem=(tcp_mem[0], tcp_mem[1], tcp_mem[2]) if tcp_mem and len(tcp_mem) == 3
        else None,
        file_max=sysctl_int("fs.file-max", 0, root) or None,
        files_open=file_nr[0] if file_nr else None,
        mem_available=parse_meminfo(read_text("meminfo", root)).get("MemAvailable", 0),
        pid_max=sysctl_int("kernel.pid_max", 0, root) or None,
        threads_now=int(loadavg[3].split("/")[1]) if len(loadavg) > 3 else None,
        max_map_count=sysctl_int("vm.max_map_count", 0, root) or None,
        page_size=os.sysconf("SC_PAGE_SIZE"))


def capacity(host: HostFacts, *, kernel_per_conn: float | None = None,
             server_per_conn: float | None = None, client_per_conn: float | None = None,
             fds_per_process: int | None = None, connections: int = 100_000,
             loopback: bool = True, in_flight_pages: int = 1, spare_fds: int = SPARE_FDS,
             threads: bool = False) -> Capacity:
    """How many connections each limit allows, from ``host`` and measured costs in bytes
    per connection: the kernel's (observe.slab.ledger's bytes_per_connection), the
    server's and the client's user memory (their RSS growth); None: not measured, and
    the RAM row is missing. ``fds_per_process``: the hard fd limit the run gives each
    process, when it sets one lower than this machine's. ``loopback``: both ends are on
    this machine, so a connection is two sockets and two files. ``in_flight_pages``:
    pages each socket has charged to TCP buffers while data is in flight. ``threads``:
    the server runs a thread per connection, so pid_max and max_map_count apply."""
    ends = 2 if loopback else 1
    rows: list[CapacityRow] = []
    missing: list[str] = []

    hard = host.nofile_hard if fds_per_process is None else fds_per_process
    if host.cap_sys_resource:
        raise_note = (f"this process has CAP_SYS_RESOURCE, so it may raise it up to fs.nr_open "
                      f"{host.nr_open or '?':,}" if host.nr_open else
                      "this process has CAP_SYS_RESOURCE, so it may raise it")
    else:
        raise_note = ("it cannot be raised here: raising a hard limit needs CAP_SYS_RESOURCE "
                      "(kernel/sys.c do_prlimit), which this process lacks (CapEff bit 24)")
        if host.nr_open:
            raise_note += f"; fs.nr_open {host.nr_open:,} would allow more where it can"
    given = (f" (the run's; this machine's is {host.nofile_hard:,})"
             if hard != host.nofile_hard else "")
    rows.append(CapacityRow(
        "fds per process", f"{hard:,}", max(0, hard - spare_fds), "process", False,
        f"the hard RLIMIT_NOFILE{given} less {spare_fds} kept for the process's own files: "
        f"one fd a connection per process (accept() fails with EMFILE beyond it); "
        f"{raise_note}"))

    if host.port_range is None:
        missing.append("ports per destination: net.ipv4.ip_local_port_range unreadable")
    else:
        low, high = host.port_range
        rows.append(CapacityRow(
            "ports per destination", f"{low}-{high}", high - low + 1, "source address", False,
            f"net.ipv4.ip_local_port_range (per network namespace): {high - low + 1:,} local "
            "ports for each (source address, destination address and port); connect() fails "
            "with EADDRNOTAVAIL when all are taken; more source addresses, more ports"))

    if host.tcp_mem is None:
        missing.append("tcp_mem: net.ipv4.tcp_mem is not in this network namespace "
                       "(it exists only in the host's)")
    else:
        low_p, pressure, most = host.tcp_mem
        gib = most * host.page_size / 2**30
        rows.append(CapacityRow(
            "tcp_mem", f"{low_p} {pressure} {most}", most // (in_flight_pages * ends),
            "machine", False,
            f"net.ipv4.tcp_mem (the host's, in pages): once TCP buffers hold more than "
            f"{most:,} pages ({gib:.2f} GiB) machine-wide, no socket may charge more (net/core/"
            f"sock.c __sk_mem_raise_allocated, 'Over hard limit'; above {pressure:,} it enters "
            "memory pressure); an idle socket holds no pages (4,000 idle loopback sockets "
            "moved sockstat's TCP mem by 0 here), so this counts connections with "
            f"{in_flight_pages} page{'s' if in_flight_pages > 1 else ''} in flight at each of "
            f"{ends} end{'s' if ends > 1 else ''}, all at once"))

    if host.file_max is None:
        missing.append("fs.file-max: unreadable")
    else:
        free = host.file_max - (host.files_open or 0)
        rows.append(CapacityRow(
            "fs.file-max", f"{host.file_max:,}", max(0, free) // ends, "machine", False,
            f"open files machine-wide (fs/file_table.c alloc_empty_file: ENFILE beyond it, "
            f"except with CAP_SYS_ADMIN), less the {host.files_open or 0:,} open now; a "
            f"socket is a file, {ends} a connection"))

    costs = {"kernel": kernel_per_conn, "server": server_per_conn, "client": client_per_conn}
    unmeasured = [k for k, v in costs.items() if v is None]
    cost = sum(v for v in costs.values() if v is not None)
    if unmeasured or cost <= 0 or host.mem_available <= 0:
        missing.append("RAM: not measured: the bytes per connection of the "
                       + (", ".join(unmeasured) or "connections"))
    else:
        rows.append(CapacityRow(
            "RAM", f"{host.mem_available / 2**30:.1f} GiB", int(host.mem_available // cost),
            "machine", False,
            f"/proc/meminfo MemAvailable / {cost:,.0f} B a connection: "
            + " + ".join(f"{k} {v:,.0f}" for k, v in costs.items())
            + " (measured), no swap counted"))

    if host.pid_max is None:
        missing.append("kernel.pid_max: unreadable")
    else:
        rows.append(CapacityRow(
            "kernel.pid_max", f"{host.pid_max:,}", max(0, host.pid_max - (host.threads_now or 0)),
            "machine", True,
            f"every thread takes a pid, machine-wide (kernel/pid.c alloc_pid, at every pid "
            f"namespace level), less the {host.threads_now or 0:,} threads now"))
    if host.max_map_count is None:
        missing.append("vm.max_map_count: unreadable")
    else:
        rows.append(CapacityRow(
            "vm.max_map_count", f"{host.max_map_count:,}", host.max_map_count // 2, "process",
            True, "memory mappings per process (mm/mmap.c do_mmap: ENOMEM beyond it); a "
            "thread's stack is two, the stack and its guard page (glibc nptl/allocatestack.c), "
            "so half as many threads a process"))

    rows.sort(key=lambda r: r.allows)
    applies = [r for r in rows if threads or not r.threads_only]
    machine = [r.allows for r in applies if r.per == "machine"]
    per_process = min((r.allows for r in applies if r.per == "process"), default=0)
    per_source = min((r.allows for r in applies if r.per == "source address"), default=0)
    return Capacity(
        rows=tuple(rows), hit_first=applies[0], next=applies[1] if len(applies) > 1 else None,
        machine_allows=min(machine) if machine else 0, connections=connections,
        processes_needed=-(-connections // per_process) if per_process else 0,
        sources_needed=-(-connections // per_source) if per_source else 0,
        missing=tuple(missing))
