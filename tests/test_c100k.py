"""Issue 17 (C100k), its pure pieces: the kernel's slab caches, decoded from a
recorded /proc/slabinfo (Linux 6.18, this machine, as root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tcplab.kernel.procfs import SLABINFO_VERSION, parse_slabinfo

SLABINFO = (Path(__file__).parent / "data" / "slabinfo-6.18.txt").read_text()


@pytest.mark.pure
def test_slabinfo_gives_every_cache_with_the_kernel_s_numbers() -> None:
    caches = parse_slabinfo(SLABINFO)
    lines = [x for x in SLABINFO.splitlines()[2:] if x.strip()]
    assert len(caches) == len(lines)  # one cache a line, none dropped
    tcp = caches["TCP"]
    # the line, read the plain way: name, 5 numbers, tunables, slabdata
    raw = next(x for x in lines if x.split()[0] == "TCP").split()
    assert (tcp.active_objs, tcp.num_objs, tcp.objsize, tcp.objperslab,
            tcp.pagesperslab) == tuple(int(x) for x in raw[1:6])
    assert (tcp.active_slabs, tcp.num_slabs) == (int(raw[13]), int(raw[14]))
    assert tcp.active_objs <= tcp.num_objs <= tcp.num_slabs * tcp.objperslab
    # A TCP socket's share of its slab: 8 pages for 13 sockets of 2,368 B here.
    assert tcp.bytes_per_object(4096) == pytest.approx(8 * 4096 / 13)
    assert tcp.objsize <= tcp.bytes_per_object(4096)
    assert tcp.slab_bytes(4096) == tcp.num_slabs * 8 * 4096
    for name in ("sock_inode_cache", "filp", "dentry", "eventpoll_epi", "tw_sock_TCP",
                 "request_sock_TCP"):
        assert name in caches, name


@pytest.mark.pure
@pytest.mark.parametrize("text", ["", "slabinfo - version: 2.0\n",
                                  SLABINFO_VERSION + "\nTCP 1 2 3\n",
                                  SLABINFO_VERSION + "\nTCP a b c d e : tunables 0 0 0 : "
                                  "slabdata 1 1 0\n"])
def test_slabinfo_of_another_shape_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_slabinfo(text)


@pytest.mark.loopback
def test_reuseport_listeners_each_get_a_share_of_the_connections() -> None:
    """Three SO_REUSEPORT listeners on one address: 600 connections land in their
    three accept queues, every queue some (the kernel hashes each 4-tuple to one:
    all 600 in one queue has odds of about 3 x (1/3)^600), 600 in all; a listener
    without the option cannot join them (EADDRINUSE, said as tcplab says it)."""
    import select
    import socket

    from tcplab.errors import TcplabError
    from tcplab.traffic.server import open_listener

    first = open_listener("127.0.0.1", 0, 1024, reuseport=True)
    port = first.getsockname()[1]
    listeners = [first] + [open_listener("127.0.0.1", port, 1024, reuseport=True)
                           for _ in range(2)]
    clients: list[socket.socket] = []
    try:
        with pytest.raises(TcplabError, match="already in use"):
            open_listener("127.0.0.1", port, 16).close()
        for _ in range(600):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        counts = [0, 0, 0]
        while sum(counts) < 600:
            ready, _, _ = select.select(listeners, [], [], 10)
            assert ready, f"only {sum(counts)} of 600 accepted: {counts}"
            for ls in ready:
                i = listeners.index(ls)
                try:
                    while True:
                        conn, _ = ls.accept()
                        conn.close()
                        counts[i] += 1
                except BlockingIOError:
                    pass
        assert sum(counts) == 600 and min(counts) > 0, counts
    finally:
        for s in clients + listeners:
            s.close()


# --- the memory ledger (observe/slab.py) ------------------------------------------------------

LINKS_TEXT = (Path(__file__).parent / "data" / "slab-links-6.18.txt").read_text()


def recorded_links() -> dict[str, str | None]:
    """/sys/kernel/slab as recorded on this machine: symlink target, or None (a directory)."""
    out: dict[str, str | None] = {}
    for line in LINKS_TEXT.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, target = line.split()
        out[name] = None if target == "-" else target
    return out


def recorded_snapshot(grow: dict[str, int] | None = None, slab_kib: int = 0,
                      tcp_mem: int | None = 0) -> Any:
    """A SlabSnapshot from the recorded slabinfo, with ``grow`` added to the active
    objects of those slabinfo lines (and their slabs grown to hold them)."""
    import dataclasses
    import math

    from tcplab.observe.slab import SlabSnapshot, caches_from

    slabs = parse_slabinfo(SLABINFO)
    for name, n in (grow or {}).items():
        s = slabs[name]
        num = s.num_objs + max(0, n - (s.num_objs - s.active_objs))
        slabs[name] = dataclasses.replace(
            s, active_objs=s.active_objs + n, num_objs=num,
            num_slabs=math.ceil(num / s.objperslab), active_slabs=math.ceil(num / s.objperslab))
    return SlabSnapshot(caches_from(slabs, recorded_links()), "",
                        1_600_000_000 + slab_kib * 1024, 80_000_000, tcp_mem, 4096)


def raw(name: str) -> list[int]:
    """The numbers of a recorded slabinfo line, read the plain way."""
    words = next(x for x in SLABINFO.splitlines() if x.split()[:1] == [name]).split()
    return [int(x) for x in words[1:6]]


@pytest.mark.pure
def test_merged_caches_are_named_by_the_line_slabinfo_counts_them_in() -> None:
    """SLUB merging as this machine's /sys/kernel/slab recorded it: a cache that has a
    directory of its own is alone; the names linked to one ':A-...' directory are one
    cache, shown in slabinfo under exactly one of them."""
    from tcplab.observe.slab import CACHES, caches_from, resolve

    links = recorded_links()
    caches = {c.cache: c for c in caches_from(parse_slabinfo(SLABINFO), links)}
    assert set(caches) == set(CACHES)
    for alone in ("TCP", "sock_inode_cache", "filp", "dentry", "ep_head"):
        assert caches[alone].reported_as == alone and not caches[alone].merged, alone
    pwq = caches["eventpoll_pwq"]
    assert pwq.reported_as == "anon_vma_chain" and pwq.merged
    assert set(pwq.shared_with) == {n for n, t in links.items()
                                   if t == links["eventpoll_pwq"]} - {"eventpoll_pwq"}
    for bucket in ("tcp_bind_bucket", "tcp_bind2_bucket"):
        assert caches[bucket].reported_as == "eventpoll_epi", bucket
        assert "eventpoll_epi" in caches[bucket].shared_with
    epi = caches["eventpoll_epi"]
    assert epi.merged and "tcp_bind_bucket" in epi.shared_with
    assert caches["lsm_file_cache"].shared_with == ("fsnotify_mark_connector",)
    assert caches["TCP"].slab.objsize == raw("TCP")[2]
    # a name this kernel lacks, or one linked where slabinfo shows none of the names
    assert resolve(["nosuch", "x"], {"x": ":A-1", "y": ":A-1"}, {"TCP"}) == {}


@pytest.mark.pure
def test_ledger_measures_what_moved_as_expected_and_estimates_the_rest() -> None:
    """4,000 sockets (2,000 loopback connections, both ends here), 2,000 of them in an
    epoll set, 2,000 connect()ed: TCP and sock_inode_cache moved by about as many
    objects as sockets (measured); dentry moved 2.5 times that (the file system's own
    churn: estimated at objsize x 4,000); the eventpoll_epi line is shared with the
    bind buckets (merged: always estimated)."""
    from tcplab.observe.slab import ledger

    grow = {"TCP": 4000, "sock_inode_cache": 3960, "filp": 4400, "dentry": 10_000,
            "lsm_file_cache": 4000, "eventpoll_epi": 6000, "anon_vma_chain": 2000,
            "ep_head": 1990}
    before, peak = recorded_snapshot(), recorded_snapshot(grow, slab_kib=15_000, tcp_mem=3)
    led = ledger(before, peak, 4000, watched=2000, connects=2000)
    rows = {r.cache: r for r in led.rows}
    tcp = rows["TCP"]
    assert (tcp.delta_objects, tcp.expected, tcp.ratio, tcp.trusted) == (4000, 4000, 1.0, True)
    assert tcp.bytes == 4000 * raw("TCP")[2]
    # slab pages: the 4,000 sockets filled the recorded 143 free slots, then new slabs
    objs, _active, per, pages = raw("TCP")[1], raw("TCP")[0], raw("TCP")[3], raw("TCP")[4]
    grown = -(-(objs + 4000 - (objs - raw("TCP")[0])) // per) - (-(-objs // per))
    assert tcp.slab_bytes == grown * pages * 4096
    assert rows["sock_inode_cache"].trusted and rows["sock_inode_cache"].ratio == 0.99
    assert rows["filp"].ratio == 1.1 and rows["filp"].trusted  # the edge is in
    dentry = rows["dentry"]
    assert not dentry.trusted and dentry.ratio == 2.5
    assert dentry.bytes == 4000 * raw("dentry")[2] and "moved by others" in dentry.note
    assert "estimated" in dentry.note
    lsm = rows["lsm_file_cache"]  # moved exactly as expected, yet shared with another cache
    assert lsm.ratio == 1.0 and not lsm.trusted and "merged: shared with other users" in lsm.note
    epi, bucket = rows["eventpoll_epi"], rows["tcp_bind_bucket"]
    # one slabinfo line for three caches: checked against all three's 6,000 together
    assert epi.delta_objects == bucket.delta_objects == 6000 and epi.ratio == 1.0
    assert not epi.trusted and epi.bytes == 2000 * 128 and bucket.bytes == 2000 * 128
    assert rows["eventpoll_pwq"].reported_as == "anon_vma_chain"
    assert rows["ep_head"].trusted and rows["ep_head"].ratio == 0.995  # alone: not merged
    measured = sum(r.bytes for r in led.rows if r.trusted)
    estimated = sum(r.bytes for r in led.rows if not r.trusted)
    assert measured == 4000 * 2368 + 3960 * 832 + 4400 * 192 + 1990 * 16
    assert led.measured_bytes_per_socket == measured / 4000
    assert led.bytes_per_socket == (measured + estimated) / 4000
    assert led.bytes_per_connection == (measured + estimated) / 2000  # default: sockets // 2
    assert led.meminfo_slab_per_socket == 15_000 * 1024 / 4000
    assert led.tcp_mem_pages == 3
    assert ledger(before, peak, 4001, connections=2000).connections == 2000
    with pytest.raises(ValueError):
        ledger(before, peak, 0)


@pytest.mark.pure
def test_ep_head_is_estimated_only_when_it_moves_by_more_than_a_tenth() -> None:
    """ep_head is mergeable (a link to ':A-0000016') but no other cache shares it, so it
    is not merged and its ratio decides: 0.9 and 1.1 are in, 0.89 and 1.11 out."""
    from tcplab.observe.slab import ledger

    for moved, trusted in ((1800, True), (1780, False), (2200, True), (2220, False)):
        led = ledger(recorded_snapshot(), recorded_snapshot({"ep_head": moved}), 4000,
                     watched=2000)
        row = next(r for r in led.rows if r.cache == "ep_head")
        assert row.trusted is trusted, (moved, row)
        assert row.bytes == (moved if trusted else 2000) * 16


@pytest.mark.pure
def test_ledger_without_slabinfo_keeps_the_meminfo_cross_check() -> None:
    import dataclasses

    from tcplab.observe.slab import Ledger, SlabSnapshot, ledger
    from tcplab.records import from_json, to_json

    why = "cannot read /proc/slabinfo: permission denied (run as root)"
    before = dataclasses.replace(recorded_snapshot(), caches=None, why_not=why)
    peak = dataclasses.replace(recorded_snapshot(slab_kib=8000), caches=None, why_not=why)
    led = ledger(before, peak, 2000)
    assert led.rows == () and led.why_not == why and led.bytes_per_socket is None
    assert led.meminfo_slab_per_socket == 8000 * 1024 / 2000
    # every record crosses JSON and back unchanged (it goes into a JSON result)
    for record in (led, ledger(recorded_snapshot(), recorded_snapshot({"TCP": 10}), 10)):
        assert from_json(Ledger, to_json(record)) == record
    snap = recorded_snapshot({"TCP": 10})
    assert from_json(SlabSnapshot, to_json(snap)) == snap


@pytest.mark.loopback
def test_tcp_slab_grows_by_one_object_per_socket() -> None:
    """As root: 2,000 loopback connections (4,000 sockets, both ends in this process)
    between two snapshots move the TCP cache by about 4,000 objects. The cache is the
    machine's, shared with everything else running here, so a round counts only when
    its ratio is believable: up to five rounds, and the median of them must be within
    0.9-1.1. Each round closes its sockets with RST (SO_LINGER 0), leaving no TIME_WAIT."""
    import os
    import resource
    import socket
    import statistics
    import struct

    from tcplab.observe.slab import ledger, snapshot

    if os.geteuid() != 0:
        pytest.skip("/proc/slabinfo is root's (mode 0400): the per-cache ledger needs root")
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 64:
        if hard != resource.RLIM_INFINITY and hard < 2 * n + 64:
            pytest.skip(f"needs {2 * n + 64} fds, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 64, hard))
    linger0 = struct.pack("ii", 1, 0)
    ratios: list[float] = []
    rows = []
    try:
        with socket.socket() as lst:
            lst.bind(("127.0.0.1", 0))
            lst.listen(n)
            while len(ratios) < 5 and sum(0.9 <= r <= 1.1 for r in ratios) < 3:
                before = snapshot()
                assert before.caches is not None, before.why_not
                socks: list[socket.socket] = []
                try:
                    for _ in range(n):
                        socks.append(socket.create_connection(lst.getsockname()))
                        socks.append(lst.accept()[0])
                    led = ledger(before, snapshot(), 2 * n, connects=n)
                finally:
                    for s in socks:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                        s.close()
                tcp = next(r for r in led.rows if r.cache == "TCP")
                ratios.append(tcp.ratio)
                rows.append(led)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 0.9 <= statistics.median(ratios) <= 1.1, ratios
    print(f"TCP objects per socket, by round: {ratios}")
    best = rows[min(range(len(ratios)), key=lambda i: abs(ratios[i] - 1))]
    tcp = next(r for r in best.rows if r.cache == "TCP")
    assert tcp.trusted and tcp.objsize > 1000 and tcp.bytes == tcp.delta_objects * tcp.objsize
    assert best.bytes_per_socket is not None and best.bytes_per_socket > tcp.objsize


# --- limits: what each allows here (observe/limits.capacity) ----------------------------------

def recorded_host(**changes: Any) -> Any:
    """This machine's values as plan17 §0 read them (as root; 2026-12-01)."""
    import dataclasses

    from tcplab.observe.limits import HostFacts

    host = HostFacts(nofile_soft=20_000, nofile_hard=20_000, cap_sys_resource=False,
                     nr_open=1_048_576, port_range=(32768, 60999),
                     tcp_mem=(287_901, 383_868, 575_802), file_max=2_466_177, files_open=3071,
                     mem_available=24_230_273_024, pid_max=32_768, threads_now=122,
                     max_map_count=65_530, page_size=4096)
    return dataclasses.replace(host, **changes)


#: Bytes per connection: kernel from a loopback ledger (both ends), the server's and the
#: client's user memory (uvloop's 1,550 B per idle connection in bench/results.md).
COSTS = {"kernel_per_conn": 7600.0, "server_per_conn": 1550.0, "client_per_conn": 850.0}


@pytest.mark.pure
def test_capacity_sorts_the_limits_and_names_the_first_two_walls() -> None:
    from tcplab.observe.limits import Capacity, capacity
    from tcplab.records import from_json, to_json

    cap = capacity(recorded_host(), **COSTS)
    allows = {r.name: r.allows for r in cap.rows}
    assert allows == {
        "fds per process": 20_000 - 64,
        "ports per destination": 60999 - 32768 + 1,
        "tcp_mem": 575_802 // 2,  # one page in flight at each end of a loopback connection
        "fs.file-max": (2_466_177 - 3071) // 2,  # two files a connection on loopback
        "RAM": 24_230_273_024 // 10_000,
        "kernel.pid_max": 32_768 - 122,
        "vm.max_map_count": 65_530 // 2,
    }
    assert [r.allows for r in cap.rows] == sorted(allows.values())
    assert (cap.hit_first.name, cap.next and cap.next.name) == (
        "fds per process", "ports per destination")
    assert "CAP_SYS_RESOURCE" in cap.hit_first.note and "1,048,576" in cap.hit_first.note
    # spreading over processes and source addresses reaches the first machine-wide wall
    assert cap.machine_allows == 287_901
    assert (cap.processes_needed, cap.sources_needed) == (6, 4)  # 100,000 connections
    assert cap.missing == ()
    assert from_json(Capacity, to_json(cap)) == cap
    # a run that gives each process a lower hard limit (--process-fds) hits it sooner
    small = capacity(recorded_host(), **COSTS, fds_per_process=1024)
    assert small.hit_first.allows == 1024 - 64 and "this machine's is 20,000" in \
        small.hit_first.note
    assert small.processes_needed == -(-100_000 // 960)


@pytest.mark.pure
def test_capacity_counts_the_thread_limits_only_for_a_thread_per_connection() -> None:
    from tcplab.observe.limits import capacity

    host = recorded_host(pid_max=4096, threads_now=96, nofile_hard=1_048_576,
                         cap_sys_resource=True)
    plain = capacity(host, **COSTS)
    assert plain.hit_first.name == "ports per destination"  # pid_max is for threads only
    assert "may raise it up to fs.nr_open" in next(
        r.note for r in plain.rows if r.name == "fds per process")
    threads = capacity(host, **COSTS, threads=True)
    assert threads.hit_first.name == "kernel.pid_max" and threads.hit_first.allows == 4000
    assert threads.next is not None and threads.next.name == "ports per destination"
    assert threads.machine_allows == 4000
    # not on loopback: one socket, one file a connection
    far = capacity(recorded_host(), **COSTS, loopback=False)
    assert {r.name: r.allows for r in far.rows}["tcp_mem"] == 575_802


@pytest.mark.pure
def test_capacity_without_tcp_mem_or_costs_says_what_is_missing() -> None:
    from tcplab.observe.limits import capacity

    cap = capacity(recorded_host(tcp_mem=None), kernel_per_conn=7600.0, server_per_conn=None)
    names = {r.name for r in cap.rows}
    assert "tcp_mem" not in names and "RAM" not in names
    assert any(m.startswith("tcp_mem") and "namespace" in m for m in cap.missing)
    assert any(m.startswith("RAM") and "server, client" in m for m in cap.missing)
    assert cap.machine_allows == (2_466_177 - 3071) // 2


@pytest.mark.pure
def test_meminfo_and_capabilities_are_read_the_plain_way() -> None:
    from tcplab.kernel.procfs import cap_bit, parse_meminfo

    mem = parse_meminfo("MemTotal:       24684092 kB\nMemAvailable:   23683844 kB\n"
                        "HugePages_Total:       0\n")
    assert mem == {"MemTotal": 24684092 * 1024, "MemAvailable": 23683844 * 1024,
                   "HugePages_Total": 0}
    status = "Name:\tx\nCapEff:\t000001fffeffffff\n"  # this machine's root: no bit 24
    assert not cap_bit(status, 24) and cap_bit(status, 25) and cap_bit(status, 23)
    assert cap_bit("CapEff:\t000001ffffffffff\n", 24)
    with pytest.raises(ValueError):
        cap_bit("Name:\tx\n", 24)


@pytest.mark.loopback
def test_host_facts_reads_this_machine() -> None:
    import os
    import resource

    from tcplab.observe.limits import host_facts

    host = host_facts()
    assert (host.nofile_soft, host.nofile_hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/sys/kernel/pid_max") as f:
        assert host.pid_max == int(f.read())
    if os.path.exists("/proc/sys/net/ipv4/tcp_mem"):  # the host's network namespace
        with open("/proc/sys/net/ipv4/tcp_mem") as f:
            assert host.tcp_mem == tuple(int(x) for x in f.read().split())
    assert host.mem_available > 0 and host.page_size == os.sysconf("SC_PAGE_SIZE")


@pytest.mark.loopback
def test_limits_shows_the_machine_wide_knobs() -> None:
    """``tcplab limits`` lists tcp_mem, fs.file-max, kernel.pid_max and vm.max_map_count
    with /proc/sys's values; tcp_mem is the host's even with --netns (it exists only
    there), and as "-" with the reason when tcplab itself runs in another namespace."""
    import json
    import os
    import shutil

    from tests.helpers import run_tcplab, tcplab

    r = run_tcplab("limits", "--json")
    assert r.returncode == 0, r.stderr.decode()
    knobs = {k["name"]: k for k in json.loads(r.stdout)["limits"]}
    for name in ("net.ipv4.tcp_mem", "fs.file-max", "kernel.pid_max", "vm.max_map_count"):
        path = f"/proc/sys/{name.replace('.', '/')}"
        if os.path.exists(path):
            with open(path) as f:
                assert knobs[name]["value"] == " ".join(f.read().split()), name
            assert knobs[name]["meaning"], name
    text = run_tcplab("limits").stdout.decode()
    assert any(line.startswith("fs.file-max ") for line in text.splitlines()), text
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return
    import subprocess

    inside = subprocess.run([unshare, "-n", *tcplab("limits", "--json")], capture_output=True,
                            timeout=60)
    assert inside.returncode == 0, inside.stderr.decode()
    mem = next(k for k in json.loads(inside.stdout)["limits"] if k["name"] == "net.ipv4.tcp_mem")
    assert mem["value"] == "-" and "host" in mem["meaning"]
