"""Ethernet, IPv4, IPv6 and TCP headers, decoded; classic BPF for a port; pcap files.

Pure: bytes in, records or bytes out. A malformed frame raises
:class:`PacketError` (never anything else), since capture reads whatever the
wire carries.

Formats: Ethernet II (IEEE 802.3), IPv4 (RFC 791), IPv6 (RFC 8200, with the
common extension headers skipped), TCP (RFC 9293) and its options (MSS,
window scale, SACK-permitted, SACK, timestamps); pcap is the classic libpcap
file format (magic 0xa1b2c3d4, version 2.4, LINKTYPE_ETHERNET).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_ntop

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
#: IPv6 extension headers we step over to find TCP.
IPV6_EXT = {0, 43, 60, 51}
IPV6_FRAG = 44

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


class PacketError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Packet:
    t: float
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    seq: int
    ack: int
    win: int
    length: int  # TCP payload bytes
    options: list[str] = field(default_factory=list)

    @property
    def flag_text(self) -> str:
        """tcpdump's: ``S``, ``S.``, ``.``, ``P.``, ``F.``, ``R``, ``R.``."""
        # tcpdump's order (print-tcp.c): F S R P . U E W
        return "".join(c for bit, c in ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"),
                                         (ACK, "."), (URG, "U"), (ECE, "E"), (CWR, "W"))
                       if self.flags & bit)

    @property
    def lab_word(self) -> str:
        """The lab's name for it: SYN, SYN-ACK, ACK, FIN, RST, data."""
        f = self.flags
        if f & RST:
            return "RST"
        if f & SYN:
            return "SYN-ACK" if f & ACK else "SYN"
        if f & FIN:
            return "FIN" + (" + data" if self.length else "")
        if self.length:
            return "data"
        return "ACK"


_ETH = struct.Struct("!6s6sH")
_TCP = struct.Struct("!HHIIBBHHH")


def decode_frame(frame: bytes, t: float = 0.0) -> Packet | None:
    """An Ethernet frame to a TCP Packet; None when it is not TCP over IP."""
    if len(frame) < _ETH.size:
        raise PacketError(f"frame of {len(frame)} bytes is shorter than an Ethernet header")
    _dst, _src, ethertype = _ETH.unpack_from(frame)
    off = _ETH.size
    if ethertype == ETH_P_IP:
        return _ipv4(frame, off, t)
    if ethertype == ETH_P_IPV6:
        return _ipv6(frame, off, t)
    return None


def _ipv4(b: bytes, off: int, t: float) -> Packet | None:
    if len(b) < off + 20:
        raise PacketError("truncated IPv4 header")
    vihl = b[off]
    if vihl >> 4 != 4:
        raise PacketError(f"IPv4 header with version {vihl >> 4}")
    ihl = (vihl & 0xF) * 4
    total = struct.unpack_from("!H", b, off + 2)[0]
    frag = struct.unpack_from("!H", b, off + 6)[0]
    proto = b[off + 9]
    if ihl < 20 or total < ihl or len(b) < off + ihl:
        raise PacketError(f"bad IPv4 lengths (ihl {ihl}, total {total})")
    if proto != IPPROTO_TCP or frag & 0x1FFF:
        return None  # not TCP, or a non-first fragment
    end = min(len(b), off + total)
    return _tcp(b, off + ihl, end, t, AF_INET, inet_ntop(AF_INET, b[off + 12:off + 16]),
                inet_ntop(AF_INET, b[off + 16:off + 20]))


def _ipv6(b: bytes, off: int, t: float) -> Packet | None:
    if len(b) < off + 40:
        raise PacketError("truncated IPv6 header")
    if b[off] >> 4 != 6:
        raise PacketError(f"IPv6 header with version {b[off] >> 4}")
    plen = struct.unpack_from("!H", b, off + 4)[0]
    nxt = b[off + 6]
    src = inet_ntop(AF_INET6, b[off + 8:off + 24])
    dst = inet_ntop(AF_INET6, b[off + 24:off + 40])
    end = min(len(b), off + 40 + plen)
    p = off + 40
    for _ in range(8):  # a bounded walk over extension headers
        if nxt == IPPROTO_TCP:
            return _tcp(b, p, end, t, AF_INET6, src, dst)
        if nxt in IPV6_EXT:
            if p + 2 > end:
                raise PacketError("truncated IPv6 extension header")
            # AH counts its length in 4-byte words minus 2 (RFC 4302); the
            # others in 8-byte units minus 1 (RFC 8200).
            step = (b[p + 1] + 2) * 4 if nxt == 51 else (b[p + 1] + 1) * 8
            nxt, p = b[p], p + step
        elif nxt == IPV6_FRAG:
            if p + 8 > end:
                raise PacketError("truncated IPv6 fragment header")
            if struct.unpack_from("!H", b, p + 2)[0] & 0xFFF8:
                return None  # not the first fragment
            nxt, p = b[p], p + 8
        else:
            return None
    return None


def _tcp(b: bytes, off: int, end: int, t: float, family: int, src: str, dst: str) -> Packet:
    if end < off + _TCP.size:
        raise PacketError("truncated TCP header")
    sport, dport, seq, ack, doff, flags, win, _sum, _urg = _TCP.unpack_from(b, off)
    hlen = (doff >> 4) * 4
    if hlen < 20 or off + hlen > end:
        raise PacketError(f"bad TCP header length {hlen}")
    return Packet(t=t, family=family, src=src, sport=sport, dst=dst, dport=dport, flags=flags,
                  seq=seq, ack=ack, win=win, length=end - off - hlen,
                  options=_options(b[off + 20:off + hlen]))


def _options(o: bytes) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(o):
        kind = o[i]
        if kind == 0:
            break
        if kind == 1:
            out.append("nop")
            i += 1
            continue
        if i + 1 >= len(o) or o[i + 1] < 2 or i + o[i + 1] > len(o):
            raise PacketError(f"bad TCP option {kind} at {i}")
        n = o[i + 1]
        data = o[i + 2:i + n]
        if kind == 2 and n == 4:
            out.append(f"mss {struct.unpack('!H', data)[0]}")
        elif kind == 3 and n == 3:
            out.append(f"wscale {data[0]}")
        elif kind == 4 and n == 2:
            out.append("sackOK")
        elif kind == 8 and n == 10:
            val, ecr = struct.unpack("!II", data)
            out.append(f"TS val {val} ecr {ecr}")
        elif kind == 5:
            out.append(f"sack {len(data) // 8}")
        else:
            out.append(f"opt-{kind}")
        i += n
    return out


# -- classic BPF: "tcp port P" on Ethernet, as tcpdump -dd compiles it -------------

_LDH_ABS, _LDB_ABS, _JEQ, _JSET, _LDXB_MSH, _LDH_IND, _RET = (
    0x28, 0x30, 0x15, 0x45, 0xB1, 0x48, 0x06)
SNAPLEN = 262144


def port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions accepting TCP segments with either port ``port``."""
    return [
        (_LDH_ABS, 0, 0, 12),            # 0 ethertype
        (_JEQ, 0, 6, ETH_P_IPV6),        # 1 -> 2 (IPv6) or 8
        (_LDB_ABS, 0, 0, 20),            # 2 IPv6 next header
        (_JEQ, 0, 15, IPPROTO_TCP),      # 3 -> 4 or 19 (drop)
        (_LDH_ABS, 0, 0, 54),            # 4 TCP source port
        (_JEQ, 12, 0, port),             # 5 -> 18 (accept) or 6
        (_LDH_ABS, 0, 0, 56),            # 6 TCP destination port
        (_JEQ, 10, 11, port),            # 7 -> 18 or 19
        (_JEQ, 0, 10, ETH_P_IP),         # 8 -> 9 (IPv4) or 19
        (_LDB_ABS, 0, 0, 23),            # 9 IPv4 protocol
        (_JEQ, 0, 8, IPPROTO_TCP),       # 10 -> 11 or 19
        (_LDH_ABS, 0, 0, 20),            # 11 fragment offset
        (_JSET, 6, 0, 0x1FFF),           # 12 a later fragment -> 19
        (_LDXB_MSH, 0, 0, 14),           # 13 x = IPv4 header length
        (_LDH_IND, 0, 0, 14),            # 14 TCP source port
        (_JEQ, 2, 0, port),              # 15 -> 18 or 16
        (_LDH_IND, 0, 0, 16),            # 16 TCP destination port
        (_JEQ, 0, 1, port),              # 17 -> 18 or 19
        (_RET, 0, 0, SNAPLEN),           # 18 accept
        (_RET, 0, 0, 0),                 # 19 drop
    ]


# -- pcap ------------------------------------------------------------------------

PCAP_HEADER = struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1)


def pcap_record(t: float, frame: bytes) -> bytes:
    sec = int(t)
    usec = round((t - sec) * 1e6)
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    return struct.pack("=IIII", sec, usec, len(frame), len(frame)) + frame
