"""``/proc/net/tcp`` and ``/proc/net/tcp6``: the text fallback when netlink is unavailable.

Each line (``tcp4_seq_show`` in ``net/ipv4/tcp_ipv4.c``)::

    sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt   uid  timeout inode
    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 12345

Addresses are the raw ``__be32`` words printed as host-order hex, so on a
little-endian machine 127.0.0.1 reads ``0100007F``; ports are plain hex.
``tm->when`` is in clock ticks (USER_HZ). There is no socket cookie here, and
for a listener no backlog: those fields come out 0. The records are the same
:class:`~tcplab.kernel.records.TcpSocket` the netlink reader produces.
"""

from __future__ import annotations

import sys
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Literal

from tcplab.kernel.records import TcpSocket
from tcplab.kernel.sock_diag import DecodeError

Order = Literal["little", "big"]


def _addr(text: str, family: int, byteorder: Order) -> tuple[str, int]:
    host, _, port = text.partition(":")
    words = [int(host[i : i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(host), 8)]
    return inet_ntop(family, b"".join(words)), int(port, 16)


def parse_line(
    line: str, family: int, byteorder: Order = sys.byteorder, ticks_per_s: int = 100
) -> TcpSocket:
    """One data line of /proc/net/tcp (AF_INET) or /proc/net/tcp6 (AF_INET6)."""
    f = line.split()
    try:
        src, sport = _addr(f[1], family, byteorder)
        dst, dport = _addr(f[2], family, byteorder)
        tx, _, rx = f[4].partition(":")
        timer, _, when = f[5].partition(":")
        return TcpSocket(
            family=int(family), state=int(f[3], 16), src=src, sport=sport, dst=dst, dport=dport,
            timer=int(timer, 16), expires_ms=int(when, 16) * 1000 // ticks_per_s,
            retrans=int(f[6], 16), rqueue=int(rx, 16), wqueue=int(tx, 16), uid=int(f[7]),
            inode=int(f[9]), cookie=0,
        )
    except (IndexError, ValueError, OSError) as exc:
        raise DecodeError(f"bad /proc/net/tcp line {line.strip()!r}: {exc}") from None


def unique_lines(text: str) -> str:
    """``text`` without the rows it repeats. A read of /proc/net/tcp is not one
    snapshot: each read(2) after the first re-walks to the bucket it stopped in and
    skips as many sockets as it had shown there (``tcp_seek_last_pos`` in
    net/ipv4/tcp_ipv4.c), and a socket added meanwhile goes to the head of its
    bucket (``inet_ehash_insert``, ``__sk_nulls_add_node_rcu``), so the row before
    the cut is shown again (seen here: 3 ESTABLISHED counted where ss, before and
    after, saw 2). A row is the same socket when its addresses, state and inode
    are (a TIME_WAIT or request socket has inode 0 but a 4-tuple no other socket
    in its state has); a socket that changed state between two reads can still be
    seen twice, once in each state. netlink's dump (the first choice) has the same
    cut between datagrams, but ss and tcplab read it alike."""
    lines = text.splitlines(keepends=True)
    seen: set[tuple[str, ...]] = set()
    out = lines[:1]
    for line in lines[1:]:
        f = line.split()
        key = (f[1], f[2], f[3], f[9]) if len(f) > 9 else (line,)
        if key not in seen:
            seen.add(key)
            out.append(line)
    return "".join(out)


def count_lines(text: str, counts: list[int], port: int = 0) -> None:
    """Add each socket's state to ``counts``; with ``port``, only sockets with
    that local or remote port. Builds no records."""
    lines = text.splitlines()
    want = f"{port:04X}" if port else ""
    for line in lines[1:]:
        f = line.split(None, 4)
        if len(f) < 4:
            continue
        if want and f[1].rpartition(":")[2] != want and f[2].rpartition(":")[2] != want:
            continue
        try:
            counts[int(f[3], 16)] += 1
        except (ValueError, IndexError):
            raise DecodeError(f"bad /proc/net/tcp line {line.strip()!r}") from None


def parse(
    text: str, family: int, byteorder: Order = sys.byteorder, ticks_per_s: int = 100
) -> list[TcpSocket]:
    return [parse_line(line, family, byteorder, ticks_per_s)
            for line in text.splitlines()[1:] if line.strip()]


__all__ = ["AF_INET", "AF_INET6", "count_lines", "parse", "parse_line"]
