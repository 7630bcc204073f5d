"""TCP socket records decoded from sock_diag replies (and built by the /proc fallback).

Kept apart from ``sock_diag.py`` so that counting, which builds no record,
never imports this module: ``tcplab states`` stays on its fast path
(tests/test_cli.py ``test_counting_states_never_imports_dataclasses``).

``TcpSocket`` is a NamedTuple, not a frozen dataclass like the project's other
records: a dump returns one per socket (56,800 in issue 15's node), and building
a 14-field frozen slots dataclass cost 0.92 us here against 0.10 us for a tuple
(timeit, Python 3.11). It is just as immutable; ``_asdict()`` gives the JSON body.
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6, inet_ntop
from typing import NamedTuple

from tcplab.kernel.sock_diag import (
    HDR_LEN,
    HDR_LEN_TYPE,
    MIN_REPLY,
    SOCK_DIAG_BY_FAMILY,
    DecodeError,
    check_control,
)


class TcpSocket(NamedTuple):
    """One TCP socket as sock_diag (or /proc/net/tcp) describes it."""

    family: int  # AF_INET or AF_INET6
    state: int  # kernel state number, see tcp_states
    src: str
    sport: int
    dst: str
    dport: int
    timer: int  # idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 time-wait, 4 probe
    expires_ms: int  # time left on that timer (the TIME_WAIT countdown)
    retrans: int
    rqueue: int  # Recv-Q; on LISTEN: the accept queue's length
    wqueue: int  # Send-Q; on LISTEN: the backlog
    uid: int
    inode: int  # 0 for TIME_WAIT and orphaned sockets: no process owns them
    cookie: int  # the kernel's unique id for this socket (0 from /proc)


def _addr(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return inet_ntop(AF_INET, raw[:4])
    return inet_ntop(AF_INET6, raw)


#: Address texts by (family, raw bytes): a busy table repeats a few addresses
#: tens of thousands of times. Bounded: cleared when it grows past _ADDRS_MAX.
_ADDRS: dict[tuple[int, bytes], str] = {}
_ADDRS_MAX = 4096
#: One sock_diag reply up to the end of its inet_diag_msg, in one unpack: the
#: nlmsghdr's length and type, idiag_family/state/timer/retrans, the sockid (ports
#: big-endian, read as two bytes each, then the addresses, the interface and the
#: cookie) and expires, rqueue, wqueue, uid, inode.
_REPLY = struct.Struct("=IH10xBBBB2s2s16s16s4xIIIIIII")


def decode_sockets(
    buf: bytes | bytearray | memoryview, out: list[TcpSocket], end: int | None = None
) -> bool:
    """Like :func:`~tcplab.kernel.sock_diag.count_states` but appends a
    :class:`TcpSocket` per reply.

    The hot loop of every socket listing (1 us a socket here, issue 15): one
    unpack per reply, names bound locally, address texts from a cache."""
    n = len(buf) if end is None else end
    off = 0
    unpack, addrs, remember = _REPLY.unpack_from, _ADDRS.get, _remember
    new, port, append, record = tuple.__new__, int.from_bytes, out.append, TcpSocket
    while off < n:
        if off + MIN_REPLY <= n:
            (length, mtype, family, state, timer, retrans, sport, dport, src, dst, cookie_lo,
             cookie_hi, expires, rqueue, wqueue, uid, inode) = unpack(buf, off)
        elif off + HDR_LEN <= n:
            length, mtype = HDR_LEN_TYPE.unpack_from(buf, off)
        else:
            raise DecodeError(f"truncated netlink header at offset {off}")
        if length < HDR_LEN or off + length > n:
            raise DecodeError(f"bad netlink message length {length} at offset {off}")
        if mtype == SOCK_DIAG_BY_FAMILY:
            if length < MIN_REPLY:
                raise DecodeError(f"short inet_diag_msg ({length} bytes) at offset {off}")
            if family != AF_INET and family != AF_INET6:
                raise DecodeError(f"unknown address family {family} at offset {off}")
            a = addrs((family, src)) or remember(family, src)
            b = addrs((family, dst)) or remember(family, dst)
            # Field order of TcpSocket; tuple.__new__ skips the keyword-parsing __new__.
            append(new(record, (family, state, a, port(sport), b, port(dport), timer, expires,
                                retrans, rqueue, wqueue, uid, inode, cookie_hi << 32 | cookie_lo)))
        elif check_control(buf, off, mtype, length):
            return True
        off += (length + 3) & ~3
    return False


def _remember(family: int, raw: bytes) -> str:
    if len(_ADDRS) >= _ADDRS_MAX:
        _ADDRS.clear()
    text = _ADDRS[(family, raw)] = _addr(family, raw)
    return text
