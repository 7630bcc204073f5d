"""NETLINK_SOCK_DIAG for TCP: the request we send and the replies we decode.

Pure: bytes in, counts or frozen records out. The layout is ``struct
nlmsghdr`` (``linux/netlink.h``), then ``struct inet_diag_req_v2`` for the
request and ``struct inet_diag_msg`` for each reply (``linux/inet_diag.h``,
sock_diag(7)). Ports are big-endian (``__be16``), addresses are
``__be32[4]`` (an IPv4 address fills the first word), everything else is in
host byte order.

Why our own reader: psutil parses ``/proc/net/tcp`` text after walking every
``/proc/*/fd`` (about 10x slower than ss on 20k sockets, measured), and
pyroute2's DiagSocket is marked work in progress and builds a dict per
message. Counting states needs neither: ``count_states`` reads two bytes of
each message and builds nothing (21,500 frozen dataclasses alone cost about
40 ms here, half of what ss takes for the whole job).

Kernel-side filtering: ``idiag_states`` is a bitmask of ``1 << state``, and
"either port is P" is a small filter program attached to the
request as an INET_DIAG_REQ_BYTECODE attribute, as ss sends it (``struct
inet_diag_bc_op``; run by ``inet_diag_bc_run`` in ``net/ipv4/inet_diag.c``):
one dump for both address families (the older TCPDIAG_GETSOCK request, which
inet_diag_dump_compat runs with AF_UNSPEC), walking the kernel's connection hash
once; one SOCK_DIAG_BY_FAMILY dump per family where the kernel refuses that.
(An earlier version used the sockid's sport/dport, which needs two dumps per
family, each walk a measured cost: bench/results.md, "Counting states".)

The records (:class:`~tcplab.kernel.records.TcpSocket`) live in
``records.py``: counting must not pay for importing dataclasses.
"""

from __future__ import annotations

import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
#: The older request (struct inet_diag_req): inet_diag_dump_compat dumps it with
#: sdiag_family = AF_UNSPEC, IPv4 and IPv6 in one walk of the TCP hash tables
#: (net/ipv4/inet_diag.c); its replies carry this type instead of 20.
TCPDIAG_GETSOCK = 18
REPLY_TYPES = (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK)
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
IPPROTO_TCP = 6
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_EQ = 11  # enum in linux/inet_diag.h: after S_COND, D_COND, DEV_COND, MARK_COND
INET_DIAG_BC_D_EQ = 12

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid: 16 bytes
#: inet_diag_req_v2 without its sockid: family, protocol, ext, pad, states.
REQ_HEAD = struct.Struct("=BBBBI")
#: inet_diag_sockid: sport, dport (big-endian), src[16], dst[16], if, cookie[2].
SOCKID = struct.Struct("!HH16s16s")
SOCKID_TAIL = struct.Struct("=III")
#: inet_diag_msg after its 4 leading bytes and sockid: expires, rqueue, wqueue, uid, inode.
MSG_TAIL = struct.Struct("=IIIII")

HDR_LEN = NLMSGHDR.size  # 16
MSG_LEN = 72  # sizeof(struct inet_diag_msg)
MIN_REPLY = HDR_LEN + MSG_LEN
# Offsets inside one reply message, from its nlmsghdr.
OFF_FAMILY = HDR_LEN + 0
OFF_STATE = HDR_LEN + 1

#: idiag_timer: which timer is pending (the values ss prints in timer:(...)).
TIMERS = {0: "", 1: "retransmit", 2: "keepalive", 3: "time-wait", 4: "zero-window-probe"}

_I32 = struct.Struct("=i")
#: struct inet_diag_bc_op: code, yes (jump if true), no (jump if false).
BC_OP = struct.Struct("=BBH")
NLATTR = struct.Struct("=HH")
HDR_LEN_TYPE = struct.Struct("=IH")


class DecodeError(ValueError):
    """The bytes are not a well-formed sock_diag reply."""


class NetlinkError(OSError):
    """The kernel answered the request with an NLMSG_ERROR carrying an errno."""


def port_filter(port: int) -> bytes:
    """Filter bytecode for "sport == port or dport == port", laid out as ss does.

    Each comparison is two ops: the test, then one whose ``no`` field holds
    the port. ``yes`` continues with the next instruction, ``no`` jumps; the
    program accepts a socket that reaches its end exactly and rejects one that
    jumps 4 bytes past it. The kernel's audit (``inet_diag_bc_audit``) follows
    the ``yes`` chain and requires every ``no`` target to lie on it, hence the
    JMP between the two tests rather than a direct jump to the end.
    """
    return (
        BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + BC_OP.pack(0, 0, port)  # no: try dport
        + BC_OP.pack(INET_DIAG_BC_JMP, 4, 12)  # sport matched: jump to the end, accept
        + BC_OP.pack(INET_DIAG_BC_D_EQ, 8, 12) + BC_OP.pack(0, 0, port)  # no: past the end
    )


def build_request(family: int, states: int, port: int = 0, seq: int = 1) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request for TCP sockets of ``family``;
    with ``port``, only sockets whose local or remote port is ``port``."""
    body = (
        REQ_HEAD.pack(family, IPPROTO_TCP, 0, 0, states)
        + SOCKID.pack(0, 0, bytes(16), bytes(16))
        + SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    if port:
        program = port_filter(port)
        body += NLATTR.pack(NLATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program
    return NLMSGHDR.pack(HDR_LEN + len(body), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


#: struct inet_diag_req: family, src_len, dst_len, ext, then the sockid, then
#: idiag_states and idiag_dbs (after the sockid, unlike inet_diag_req_v2).
REQ_COMPAT_HEAD = struct.Struct("=BBBB")
REQ_COMPAT_TAIL = struct.Struct("=II")


def build_request_compat(states: int, port: int = 0, seq: int = 1) -> bytes:
    """One TCPDIAG_GETSOCK dump request: every TCP socket of both address families
    in one dump (one walk of the kernel's tables where SOCK_DIAG_BY_FAMILY needs
    one per family); with ``port``, the same filter bytecode."""
    body = (
        REQ_COMPAT_HEAD.pack(0, 0, 0, 0)
        + SOCKID.pack(0, 0, bytes(16), bytes(16))
        + SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
        + REQ_COMPAT_TAIL.pack(states, 0)
    )
    if port:
        program = port_filter(port)
        body += NLATTR.pack(NLATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program
    return NLMSGHDR.pack(HDR_LEN + len(body), TCPDIAG_GETSOCK,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def check_control(buf: bytes | bytearray | memoryview, off: int, mtype: int, length: int) -> bool:
    """Handle a control message; True means the dump is complete.

    A dump that fails partway does not send NLMSG_ERROR: the kernel ends it
    with an NLMSG_DONE whose 4-byte payload is the negative errno
    (``netlink_dump``, ``dump_done_errno``), so DONE's payload is checked too.
    """
    if mtype == NLMSG_DONE:
        if length >= HDR_LEN + 4:
            code = -_I32.unpack_from(buf, off + HDR_LEN)[0]
            if code > 0:
                raise NetlinkError(code, f"sock_diag dump failed: errno {code}")
        return True
    if mtype == NLMSG_ERROR:
        if length < HDR_LEN + 4:
            raise DecodeError("truncated NLMSG_ERROR")
        code = -_I32.unpack_from(buf, off + HDR_LEN)[0]
        if code == 0:  # an ACK, not an error
            return False
        raise NetlinkError(code, f"sock_diag request failed: errno {code}")
    if mtype == NLMSG_OVERRUN:
        raise DecodeError("netlink reported an overrun: data was lost")
    return False


def count_states(
    buf: bytes | bytearray | memoryview, counts: list[int], end: int | None = None
) -> bool:
    """Add each reply's state to ``counts`` (index = state number); no records.

    ``buf[:end]`` must hold whole netlink messages, as one recv() on a netlink
    socket returns them. Returns True when the dump's NLMSG_DONE was seen.
    """
    n = len(buf) if end is None else end
    off = 0
    unpack_hdr = HDR_LEN_TYPE.unpack_from
    while off < n:
        if off + HDR_LEN > n:
            raise DecodeError(f"truncated netlink header at offset {off}")
        length, mtype = unpack_hdr(buf, off)
        if length < HDR_LEN or off + length > n:
            raise DecodeError(f"bad netlink message length {length} at offset {off}")
        if mtype in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
            if length < MIN_REPLY:
                raise DecodeError(f"short inet_diag_msg ({length} bytes) at offset {off}")
            state = buf[off + OFF_STATE]
            if state >= len(counts):
                raise DecodeError(f"unknown TCP state {state} at offset {off}")
            counts[state] += 1
        elif check_control(buf, off, mtype, length):
            return True
        off += (length + 3) & ~3
    return False

