"""The shape of a net, decided before anything is made: pure, no I/O.

A net is two namespaces, ``client`` and ``server``, joined by veth pairs,
either directly or through a ``router`` namespace. Addresses come from the
ranges set aside for benchmark networks: 198.18.0.0/15 (RFC 2544, appendix C:
its two halves are the two sides of the device under test) and 2001:2::/48
(RFC 5180). No namespace gets a default route, so a packet to any other
address fails at once with ENETUNREACH: nothing leaves the machine.

``Shaping`` is what the user asked (``--delay --jitter --loss --rate --mtu``);
``Mechanisms`` what the kernel has (netem or not); ``plan()`` joins them into a
``Plan`` that says, for each knob, which mechanism does it and where.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

#: RFC 2544 (appendix C) and RFC 5180: every address of a net is in one of them.
BENCHMARK_RANGES = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:2::/48"))

#: Names a user may give a net: they become parts of file names.
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")

# Interface names inside the namespaces (each namespace is private, so the
# names are short and the same in every net).
CLIENT_IF = "c0"  # in client: toward the server (or the router)
SERVER_IF = "s0"  # in server: toward the client (or the router)
ROUTER_C_IF = "rc"  # in router: toward the client
ROUTER_S_IF = "rs"  # in router: toward the server
DELAY_IF = "dl0"  # in router: the delay line's TUN device

#: Veth's default MTU (drivers/net/veth.c: ether_setup, ETH_DATA_LEN).
DEFAULT_MTU = 1500


@dataclass(frozen=True, slots=True)
class Shaping:
    """What the user asked; None or 0 means: not shaped."""

    delay_ms: float = 0.0  # one way, each direction
    jitter_ms: float = 0.0  # uniform in [-jitter, +jitter] around delay, order kept
    loss_pct: float = 0.0  # each direction
    rate_mbit: float | None = None  # each direction
    mtu: int | None = None

    @property
    def shaped(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct or self.rate_mbit)

    def words(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g} ms each way")
        if self.jitter_ms:
            parts.append(f"jitter ±{self.jitter_ms:g} ms")
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}% each way")
        if self.rate_mbit:
            parts.append(f"rate {self.rate_mbit:g} Mbit/s each way")
        if self.mtu:
            parts.append(f"MTU {self.mtu}")
        return ", ".join(parts) or "unshaped"


@dataclass(frozen=True, slots=True)
class Mechanisms:
    """What this kernel offers for shaping (found by trying, in a namespace)."""

    netem: bool = False
    tbf: bool = False
    nftables: bool = False  # nf_tables with numgen, and the nft command
    tun: bool = False  # /dev/net/tun opens and TUNSETIFF works


@dataclass(frozen=True, slots=True)
class Side:
    """One end of the net as its programs see it."""

    role: str  # "client" or "server"
    interface: str
    ipv4: str
    ipv6: str
    prefix4: int = 24
    prefix6: int = 64


@dataclass(frozen=True, slots=True)
class Queue:
    """A tbf queue: rate, bucket and the bytes it may hold."""

    rate_bit: int  # bits per second
    burst: int  # bytes
    limit: int  # bytes queued before tbf drops


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    shaping: Shaping
    router: bool
    client: Side
    server: Side
    router_client4: str | None = None  # the router's addresses (gateways)
    router_server4: str | None = None
    router_client6: str | None = None
    router_server6: str | None = None
    mtu: int = DEFAULT_MTU
    # knob -> "mechanism where": {"delay": "delay line (TUN) in router", ...}
    mechanisms: dict[str, str] = field(default_factory=dict)
    queue: Queue | None = None
    netem: bool = False  # delay, jitter with netem on the router's veths
    delay_line: bool = False  # delay, jitter with the TUN delay line in router
    nft_loss: bool = False  # loss with nftables numgen in router


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a net (None: it can)."""
    if NAME_RE.match(name):
        return None
    return ("a net's name is a lowercase letter then up to 23 letters, digits, '-' or '_' "
            f"(not {name!r})")


def check_shaping(s: Shaping) -> str | None:
    """Why ``s`` cannot be made (None: it can)."""
    if s.delay_ms < 0 or s.jitter_ms < 0:
        return "--delay and --jitter are milliseconds, 0 or more"
    if s.jitter_ms > s.delay_ms:
        return (f"--jitter {s.jitter_ms:g} is larger than --delay {s.delay_ms:g}: "
                "a packet cannot leave before it came")
    if s.delay_ms > 10_000:
        return "--delay is at most 10000 ms"
    if not 0 <= s.loss_pct <= 100:
        return "--loss is a percentage from 0 to 100"
    if s.rate_mbit is not None and not 0.01 <= s.rate_mbit <= 10_000:
        return "--rate is in Mbit/s, from 0.01 to 10000"
    # 1280: the least IPv6 allows (RFC 8200, section 5); 65535: veth's max_mtu.
    if s.mtu is not None and not 1280 <= s.mtu <= 65535:
        return "--mtu is from 1280 (IPv6's minimum) to 65535"
    return None


def queue_for(rate_mbit: float, rtt_s: float, mtu: int) -> Queue:
    """tbf's settings for ``rate_mbit`` on a path of ``rtt_s``.

    The queue holds at least the bandwidth-delay product (and at least 64
    packets): a queue smaller than what one window puts in flight drops the
    window's tail every round trip, and throughput collapses far below the
    rate (the netem "limit" complaint about Mininet; one BDP is the classic
    rule of thumb, Villamizar and Song 1994). The bucket holds 4 ms at the rate
    and at least two packets: tbf refuses a packet larger than its bucket
    (net/sched/sch_tbf.c, tbf_enqueue: qdisc_pkt_len > q->max_size is dropped
    or segmented).
    """
    rate_bit = max(8_000, int(rate_mbit * 1_000_000))
    bytes_per_s = rate_bit / 8
    bdp = int(bytes_per_s * rtt_s)
    frame = mtu + 14
    burst = max(2 * frame, int(bytes_per_s * 0.004))
    limit = max(bdp, 64 * frame)
    return Queue(rate_bit=rate_bit, burst=burst, limit=limit)


def plan(name: str, shaping: Shaping, have: Mechanisms, router: bool = False) -> Plan:
    """The net for ``shaping`` on a kernel that has ``have``.

    A router namespace is made when asked, and whenever delay, jitter or loss is
    asked: loss is an nftables rule on the router's forward hook, and without
    netem the delay line sits in the router (netem would do on the router's
    veths as well). Rate alone is tbf on each end's veth (no router needed).
    """
    needs_router = router or bool(shaping.delay_ms or shaping.jitter_ms or shaping.loss_pct)
    mtu = shaping.mtu or DEFAULT_MTU
    mech: dict[str, str] = {}
    use_netem = bool(shaping.delay_ms or shaping.jitter_ms) and have.netem
    use_line = bool(shaping.delay_ms or shaping.jitter_ms) and not have.netem
    if use_netem:
        mech["delay"] = "netem on the router's veths (rc, rs egress)"
    elif use_line:
        mech["delay"] = f"delay line in router (TUN {DELAY_IF}, one process)"
    if shaping.jitter_ms:
        mech["jitter"] = mech["delay"]
    if shaping.loss_pct:
        mech["loss"] = "nftables in router (forward hook, numgen random)"
    queue = None
    if shaping.rate_mbit:
        rtt = 2 * (shaping.delay_ms + shaping.jitter_ms) / 1000 + 0.001
        queue = queue_for(shaping.rate_mbit, rtt, mtu)
        where = "the router's veths (rc, rs egress)" if needs_router else \
            "each end's veth (c0, s0 egress)"
        mech["rate"] = f"tbf on {where}"
    if shaping.mtu:
        mech["mtu"] = "veth MTU"
    if needs_router:
        client = Side("client", CLIENT_IF, "198.18.0.1", "2001:2:0:1::1")
        server = Side("server", SERVER_IF, "198.19.0.1", "2001:2:0:2::1")
        return Plan(name, shaping, True, client, server,
                    router_client4="198.18.0.254", router_server4="198.19.0.254",
                    router_client6="2001:2:0:1::fe", router_server6="2001:2:0:2::fe",
                    mtu=mtu, mechanisms=mech, queue=queue, netem=use_netem,
                    delay_line=use_line, nft_loss=bool(shaping.loss_pct))
    client = Side("client", CLIENT_IF, "198.18.0.1", "2001:2::1")
    server = Side("server", SERVER_IF, "198.18.0.2", "2001:2::2")
    return Plan(name, shaping, False, client, server, mtu=mtu, mechanisms=mech, queue=queue)


def nft_loss_ruleset(table: str, loss_pct: float) -> str:
    """The nft script that drops ``loss_pct`` % of forwarded packets, each way.

    ``numgen random mod 1000000`` draws 0..999999 per packet
    (net/netfilter/nft_numgen.c, nft_ng_random_gen: reciprocal_scale of
    get_random_u32), so the loss resolves 0.0001 %. Only packets that came in on
    the veths are counted (the delay line's TUN forwards each packet a second
    time, and it must not be dropped twice)."""
    threshold = round(loss_pct * 10_000)
    return (
        f"table inet {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f'    iifname {{ "{ROUTER_C_IF}", "{ROUTER_S_IF}" }} '
        f"numgen random mod 1000000 < {threshold} counter drop\n"
        "  }\n"
        "}\n"
    )
