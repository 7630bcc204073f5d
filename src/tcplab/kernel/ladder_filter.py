"""The classic BPF program of ``tcplab live``'s ladder: only what it will draw.

A port bomb sends some 100,000 segments a second over lo (``tcplab bomb``: up to
13,600 connections a second here, about eight segments each, and lo shows each
twice); read in Python they overflow the socket's queue (391,000 dropped in a
10 s run with the port's filter alone, measured with PACKET_STATISTICS), losing
the very segments of the connections the ladder follows. So the kernel keeps,
of TCP over IPv4 or IPv6 on ``port``:

- while ``everything`` is set, every segment: the ladder may still follow a new
  connection in this interval (it clears it once the interval's quota is taken,
  and sets it again next interval). Not only SYNs: the SYN-ACK comes back some
  microseconds after the SYN, before we could read the SYN and add its port;
- else the segments of the connections followed, known by their other port (the
  client's, on the chosen server port: one per connection on one address);
- never the outgoing copy of a packet (``PACKET_OUTGOING``: lo hands each packet
  to packet sockets twice, going out and coming in; net/core/dev.c,
  dev_queue_xmit_nit), read from the ancillary field SKF_AD_PKTTYPE
  (include/uapi/linux/filter.h; net/core/filter.c, convert_bpf_extensions).

Pure: instruction tuples (code, jt, jf, k) out, as kernel.packets.port_filter.
"""

from __future__ import annotations

from tcplab.kernel.packets import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, SNAPLEN

# include/uapi/linux/bpf_common.h and filter.h
_LD_W_ABS, _LDH_ABS, _LDB_ABS = 0x20, 0x28, 0x30
_LDH_IND, _LDXB_MSH, _LDX_IMM = 0x48, 0xB1, 0x01
_ST, _LD_MEM, _JA, _JEQ, _JSET, _RET = 0x02, 0x60, 0x05, 0x15, 0x45, 0x06
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE, as a u32
PACKET_OUTGOING = 4
#: At most this many followed ports in the program: a jump skips at most 255
#: instructions (jt and jf are bytes), and the ladder follows fewer.
MAX_PORTS = 200

Insn = tuple[int, int, int, int]


def ladder_filter(port: int, others: list[int], everything: bool) -> list[Insn]:
    """Accept TCP segments of ``port`` whose other port is in ``others``, or with
    ``everything`` any segment of ``port`` (see module)."""
    others = sorted(set(others))[:MAX_PORTS]
    # (code, label-or-offset jt, label-or-offset jf, k): labels resolved below
    prog: list[tuple[object, object, object, object]] = [
        (_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        (_JEQ, "drop", 0, PACKET_OUTGOING),
        (_LDH_ABS, 0, 0, 12),                   # ethertype
        (_JEQ, "v6", 0, ETH_P_IPV6),
        (_JEQ, 0, "drop", ETH_P_IP),
        (_LDB_ABS, 0, 0, 23),                   # IPv4 protocol
        (_JEQ, 0, "drop", IPPROTO_TCP),
        (_LDH_ABS, 0, 0, 20),                   # fragment offset
        (_JSET, "drop", 0, 0x1FFF),             # a later fragment: no TCP header
        (_LDXB_MSH, 0, 0, 14),                  # x = IPv4 header length
        (_JA, 0, 0, "tcp"),
        ("v6", 0, 0, 0),
        (_LDB_ABS, 0, 0, 20),                   # IPv6 next header (no extension headers)
        (_JEQ, 0, "drop", IPPROTO_TCP),
        (_LDX_IMM, 0, 0, 40),                   # x = IPv6 header length
        ("tcp", 0, 0, 0),
        (_LDH_IND, 0, 0, 14),                   # TCP source port
        (_ST, 0, 0, 0),                         # M[0] = source port
        (_LDH_IND, 0, 0, 16),                   # TCP destination port
        (_JEQ, "other", 0, port),               # to port: the other is the source
        (_LD_MEM, 0, 0, 0),
        (_JEQ, 0, "drop", port),                # from port: the other is the destination
        (_LDH_IND, 0, 0, 16),
        (_ST, 0, 0, 0),
        ("other", 0, 0, 0),
        (_LD_MEM, 0, 0, 0),                     # A = the other port
        *((_JEQ, "accept", 0, p) for p in others),
    ]
    prog.append((_JA, 0, 0, "accept" if everything else "drop"))
    prog += [("accept", 0, 0, 0), (_RET, 0, 0, SNAPLEN),
             ("drop", 0, 0, 0), (_RET, 0, 0, 0)]
    return _resolve(prog)


def _resolve(prog: list[tuple[object, object, object, object]]) -> list[Insn]:
    """Labels (a string in the code column) to jump offsets, counted as the kernel
    does: from the instruction after the jump."""
    where: dict[str, int] = {}
    out: list[tuple[object, object, object, object]] = []
    for insn in prog:
        if isinstance(insn[0], str):
            where[insn[0]] = len(out)
        else:
            out.append(insn)

    def off(target: object, pc: int) -> int:
        if isinstance(target, str):
            return where[target] - pc - 1
        assert isinstance(target, int)
        return target

    done: list[Insn] = []
    for pc, (code, jt, jf, k) in enumerate(out):
        assert isinstance(code, int)
        if code == _JA:
            done.append((code, 0, 0, off(k, pc)))
        else:
            assert isinstance(k, int)
            done.append((code, off(jt, pc), off(jf, pc), k))
    for code, jt, jf, _k in done:
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError(f"BPF jump out of range in instruction {code:#x}")
    return done
