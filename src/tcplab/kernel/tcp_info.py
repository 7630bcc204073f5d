"""``getsockopt(IPPROTO_TCP, TCP_INFO)``: the first fields of ``struct tcp_info``.

The layout is include/uapi/linux/tcp.h's: eight ``__u8`` (tcpi_state, ca_state,
retransmits, probes, backoff, options, the two window scales in one byte, and
delivery_rate_app_limited with fastopen_client_fail in another), then ``__u32``
fields in this order: rto, ato, snd_mss, rcv_mss, unacked, sacked, lost,
retrans, fackets, last_data_sent, last_ack_sent, last_data_recv,
last_ack_recv, pmtu, rcv_ssthresh, rtt, rttvar, ... Times are microseconds
(tcp_get_info in net/ipv4/tcp.c converts jiffies with jiffies_to_usecs). The
kernel copies ``min(len, sizeof(struct tcp_info))`` bytes, so an older kernel's
shorter struct decodes as long as it holds the fields read here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Bytes to ask for: every field read here, with room to spare.
SIZE = 104
_HEAD = struct.Struct("=8B")
_U32 = struct.Struct("=17I")  # rto ... rttvar


@dataclass(frozen=True, slots=True)
class TcpInfo:
    state: int  # the TCP state number (1: ESTABLISHED, kernel/tcp_states.py)
    rto_us: int  # the retransmission timeout
    ato_us: int  # the delayed-ACK timeout (icsk_ack.ato)
    snd_mss: int
    rcv_mss: int  # the peer's MSS as this socket estimates it (icsk_ack.rcv_mss)
    unacked: int  # segments in flight
    rtt_us: int  # smoothed round-trip time
    rttvar_us: int


def parse_tcp_info(raw: bytes) -> TcpInfo | None:
    """The fields above, or None when ``raw`` is too short to hold them."""
    if len(raw) < _HEAD.size + _U32.size:
        return None
    state = _HEAD.unpack_from(raw)[0]
    u = _U32.unpack_from(raw, _HEAD.size)
    return TcpInfo(state=state, rto_us=u[0], ato_us=u[1], snd_mss=u[2], rcv_mss=u[3],
                   unacked=u[4], rtt_us=u[15], rttvar_us=u[16])
