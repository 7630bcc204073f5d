"""TCP socket records decoded from sock_diag replies (and built by the /proc fallback).

Kept apart from ``sock_diag.py`` so that counting, which builds no record,
never imports dataclasses: ``tcplab states`` imports neither this module nor
dataclasses (tests/test_cli.py ``test_counting_states_never_imports_dataclasses``
guards it and gives the measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop

from tcplab.kernel.sock_diag import (
    HDR_LEN,
    HDR_LEN_TYPE,
    MIN_REPLY,
    MSG_TAIL,
    SOCK_DIAG_BY_FAMILY,
    SOCKID,
    SOCKID_TAIL,
    DecodeError,
    check_control,
)


@dataclass(frozen=True, slots=True)
class TcpSocket:
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


def decode_sockets(
    buf: bytes | bytearray | memoryview, out: list[TcpSocket], end: int | None = None
) -> bool:
    """Like :func:`~tcplab.kernel.sock_diag.count_states` but appends a
    :class:`TcpSocket` per reply."""
    n = len(buf) if end is None else end
    off = 0
    while off < n:
        if off + HDR_LEN > n:
            raise DecodeError(f"truncated netlink header at offset {off}")
        length, mtype = HDR_LEN_TYPE.unpack_from(buf, off)
        if length < HDR_LEN or off + length > n:
            raise DecodeError(f"bad netlink message length {length} at offset {off}")
        if mtype == SOCK_DIAG_BY_FAMILY:
            if length < MIN_REPLY:
                raise DecodeError(f"short inet_diag_msg ({length} bytes) at offset {off}")
            base = off + HDR_LEN
            family, state, timer, retrans = buf[base], buf[base + 1], buf[base + 2], buf[base + 3]
            if family not in (AF_INET, AF_INET6):
                raise DecodeError(f"unknown address family {family} at offset {off}")
            sport, dport, src, dst = SOCKID.unpack_from(buf, base + 4)
            _if, cookie_lo, cookie_hi = SOCKID_TAIL.unpack_from(buf, base + 40)
            expires, rqueue, wqueue, uid, inode = MSG_TAIL.unpack_from(buf, base + 52)
            out.append(TcpSocket(
                family=family, state=state, src=_addr(family, src), sport=sport,
                dst=_addr(family, dst), dport=dport, timer=timer, expires_ms=expires,
                retrans=retrans, rqueue=rqueue, wqueue=wqueue, uid=uid, inode=inode,
                cookie=cookie_hi << 32 | cookie_lo,
            ))
        elif check_control(buf, off, mtype, length):
            return True
        off += (length + 3) & ~3
    return False

