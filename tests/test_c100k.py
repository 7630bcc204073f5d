"""Issue 17 (C100k), its pure pieces: the kernel's slab caches, decoded from a
recorded /proc/slabinfo (Linux 6.18, this machine, as root)."""

from __future__ import annotations

from pathlib import Path

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
