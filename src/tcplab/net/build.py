"""Make a net's namespaces, links, addresses, routes and shaping over rtnetlink.

Runs in the holder (``tcplab.agents.netholder``), a fresh single-threaded
interpreter: ``unshare(CLONE_NEWUSER)`` refuses a multithreaded caller. The
holder's own network namespace is the router's (or, without a router, an
empty one that only holds nothing). The client's and the server's are made by
``unshare(CLONE_NEWNET)`` and kept by a file descriptor each until the pins
(children that sit in them) exist.

Links, addresses, routes, rules and qdiscs go through pyroute2 (rtnetlink), not
``ip``/``tc``: one netlink socket per namespace, opened while the holder is in
it (a socket stays in the namespace it was made in), and no child process per
step. Loss is an nftables ruleset given to ``nft -f -`` (see ``nft_apply``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tcplab.net import plan as P
from tcplab.observe.nsutil import CLONE_NEWNET, CLONE_NEWUSER, setns, unshare

#: The nftables table a net adds in its router (gone with the namespace).
NFT_TABLE = "tcplab"
#: The routing table whose only route is the delay line's TUN device.
DELAY_TABLE = 100
IFA_F_NODAD = 0x02  # include/uapi/linux/if_addr.h: no duplicate address detection
NUD_PERMANENT = 0x80  # include/uapi/linux/neighbour.h
SIOCGIFFLAGS = 0x8913  # include/uapi/linux/sockios.h
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1  # include/uapi/linux/if.h


class Failed(Exception):
    """A step failed: ``stage`` names it, ``errno`` and ``message`` say why."""

    def __init__(self, stage: str, code: int | None, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.errno = code
        self.message = message


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Turn an OSError or a NetlinkError of one step into ``Failed(name, ...)``."""
    try:
        yield
    except Failed:
        raise
    except Exception as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        message = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
        raise Failed(name, code if isinstance(code, int) else None, message) from exc


def enter_user_namespace() -> None:
    """A user and a network namespace: root inside, our uid outside (a net's holder,
    and a Sandbox's, agents/nsholder.py); user_namespaces(7): an unprivileged process
    must deny setgroups before it may write a gid_map."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def new_netns(home: int) -> int:
    """A new network namespace, held by the returned fd; we go back to ``home``."""
    unshare(CLONE_NEWNET)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    setns(home, CLONE_NEWNET)
    return fd


def link_up(name: str = "lo") -> None:
    """``ip link set NAME up`` in this process's namespace with one ioctl pair (struct
    ifreq: name, flags): for an agent that needs only its lo up, no rtnetlink socket
    (and no pyroute2 import) at all."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def write_sysctl(name: str, value: str) -> None:
    """In the namespace this process is in (/proc/sys/net follows the opener's)."""
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)


@dataclass
class Namespaces:
    home: int  # the holder's (the router's)
    client: int
    server: int


class Builder:
    """The rtnetlink sockets of a net's namespaces, and the steps that use them."""

    def __init__(self, ns: Namespaces) -> None:
        from pyroute2 import IPRoute

        self.ns = ns
        self.sockets: dict[str, Any] = {}
        for role, fd in (("client", ns.client), ("server", ns.server)):
            setns(fd, CLONE_NEWNET)
            try:
                self.sockets[role] = IPRoute()
            finally:
                setns(ns.home, CLONE_NEWNET)
        self.sockets["router"] = IPRoute()

    def close(self) -> None:
        for ipr in self.sockets.values():
            ipr.close()

    def sysctl(self, role: str, name: str, value: str) -> None:
        """Write ``name`` in ``role``'s namespace (the holder steps in and out)."""
        fd = {"client": self.ns.client, "server": self.ns.server}.get(role)
        with stage(f"sysctl {name} in {role}"):
            if fd is not None:
                setns(fd, CLONE_NEWNET)
            try:
                write_sysctl(name, value)
            finally:
                if fd is not None:
                    setns(self.ns.home, CLONE_NEWNET)

    def index(self, role: str, name: str) -> int:
        found = self.sockets[role].link_lookup(ifname=name)
        if not found:
            raise Failed(f"find {name}", errno.ENODEV, f"no interface {name} in {role}")
        return int(found[0])

    def up(self, role: str, name: str, mtu: int | None = None) -> None:
        with stage(f"{name} up in {role}"):
            kw: dict[str, Any] = {"state": "up"}
            if mtu is not None:
                kw["mtu"] = mtu
            self.sockets[role].link("set", index=self.index(role, name), **kw)

    def down(self, role: str, name: str) -> None:
        with stage(f"{name} down in {role}"):
            self.sockets[role].link("set", index=self.index(role, name), state="down")

    def veth(self, here: str, name: str, peer_role: str, peer: str,
             macs: tuple[str, str] | None = None) -> None:
        """A veth pair made in ``here``'s namespace, its peer end moved into
        ``peer_role``'s (IFLA_NET_NS_FD in the same RTM_NEWLINK); ``macs``: the two
        ends' link-layer addresses (random without)."""
        fd = getattr(self.ns, peer_role)
        kw: dict[str, Any] = {}
        peer_kw: dict[str, Any] = {"ifname": peer, "net_ns_fd": fd}
        if macs is not None:
            kw["address"], peer_kw["address"] = macs
        with stage(f"veth {name}-{peer}"):
            self.sockets[here].link("add", ifname=name, kind="veth", peer=peer_kw, **kw)

    def move(self, role: str, name: str, to_role: str) -> None:
        """Move interface ``name`` from ``role``'s namespace into ``to_role``'s; it keeps
        its index there if free (dev_change_net_namespace, net/core/dev.c)."""
        with stage(f"{name} into {to_role}"):
            self.sockets[role].link("set", index=self.index(role, name),
                                    net_ns_fd=getattr(self.ns, to_role))

    def neighbour(self, role: str, name: str, addr: str, lladdr: str) -> None:
        """A permanent neighbour entry (``ip neigh replace ... nud permanent``): never
        probed, never failed, whether the neighbour answers or not."""
        with stage(f"neighbour {addr} on {name}"):
            self.sockets[role].neigh("replace", ifindex=self.index(role, name), dst=addr,
                                     lladdr=lladdr, state=NUD_PERMANENT)

    def address(self, role: str, name: str, addr: str, prefix: int) -> None:
        with stage(f"address {addr} on {name}"):
            flags = IFA_F_NODAD if ":" in addr else 0  # usable at once, not after DAD
            self.sockets[role].addr("add", index=self.index(role, name), address=addr,
                                    prefixlen=prefix, flags=flags)

    def route(self, role: str, dst: str, gateway: str) -> None:
        dst = str(ipaddress.ip_interface(dst).network)  # the kernel wants no host bits
        with stage(f"route {dst} via {gateway} in {role}"):
            self.sockets[role].route("add", dst=dst, gateway=gateway)

    def tbf(self, role: str, name: str, q: P.Queue, parent: int | None = None) -> None:
        with stage(f"tbf on {name}"):
            kw: dict[str, Any] = {"handle": 0x10000 if parent is None else 0x20000}
            if parent is not None:
                kw["parent"] = parent
            self.sockets[role].tc("add", "tbf", self.index(role, name), rate=q.rate_bit // 8,
                                  burst=q.burst, limit=q.limit, **kw)

    def netem(self, role: str, name: str, delay_ms: float, jitter_ms: float,
              limit: int) -> None:
        with stage(f"netem on {name}"):
            self.sockets[role].tc("add", "netem", self.index(role, name), handle=0x10000,
                                  delay=int(delay_ms * 1000), jitter=int(jitter_ms * 1000),
                                  limit=limit)

    def has_netem(self) -> bool:
        """Try a netem qdisc on the router's lo, then remove it: the kernel's answer
        is the only reliable one (a module may load on demand; /proc/config.gz may be
        absent). ENOENT: no such qdisc kind here."""
        return self._tries("netem", delay=1000)

    def has_tbf(self) -> bool:
        return self._tries("tbf", rate=125000, burst=20000, limit=100000)

    def _tries(self, kind: str, **kw: int) -> bool:
        """Whether a ``kind`` qdisc can be added (on the router's lo; removed again)."""
        ipr = self.sockets["router"]
        lo = self.index("router", "lo")
        try:
            ipr.tc("add", kind, lo, handle=0x10000, **kw)
        except Exception:
            return False
        with contextlib.suppress(Exception):
            ipr.tc("del", index=lo, handle=0x10000)
        return True

    def delay_routes(self, tun: str) -> None:
        """What comes in on rc or rs goes to table DELAY_TABLE, whose only route is
        the TUN device (both families); what the line writes back comes in on the TUN
        device, matches no rule, and is forwarded by the main table."""
        ipr = self.sockets["router"]
        dev = self.index("router", tun)
        for family, default in ((2, "0.0.0.0/0"), (10, "::/0")):
            with stage(f"delay route ({'IPv4' if family == 2 else 'IPv6'})"):
                ipr.route("add", dst=default, oif=dev, table=DELAY_TABLE, family=family)
            for iface in (P.ROUTER_C_IF, P.ROUTER_S_IF):
                with stage(f"rule iif {iface}"):
                    ipr.rule("add", iifname=iface, table=DELAY_TABLE, priority=100,
                             family=family)


def build(b: Builder, p: P.Plan, tun: str | None) -> None:
    """Everything of ``p`` but the nftables rules and the delay line's loop."""
    for role in ("client", "server", "router"):
        b.up(role, "lo")
        # No duplicate address detection, link-local addresses included: DAD keeps a
        # new address tentative for one probe's RetransTimer (1 s by default), and
        # the first IPv6 packet waited for the fe80:: address (1,128 ms against
        # 114 ms, measured here). net/ipv6/addrconf.c, addrconf_dad_begin: no DAD
        # when both the "all" and the device's accept_dad are below 1 (a veth's
        # conf is copied from "default" in the namespace it ends up in).
        for conf in ("all", "default"):
            b.sysctl(role, f"net.ipv6.conf.{conf}.accept_dad", "0")
    mtu = p.mtu if p.shaping.mtu else None
    if p.router:
        b.veth("router", P.ROUTER_C_IF, "client", P.CLIENT_IF)
        b.veth("router", P.ROUTER_S_IF, "server", P.SERVER_IF)
        assert p.router_client4 and p.router_server4 and p.router_client6 and p.router_server6
        b.address("router", P.ROUTER_C_IF, p.router_client4, p.client.prefix4)
        b.address("router", P.ROUTER_C_IF, p.router_client6, p.client.prefix6)
        b.address("router", P.ROUTER_S_IF, p.router_server4, p.server.prefix4)
        b.address("router", P.ROUTER_S_IF, p.router_server6, p.server.prefix6)
        for iface in (P.ROUTER_C_IF, P.ROUTER_S_IF):
            b.up("router", iface, mtu)
        with stage("router sysctls"):
            # Forwarding on, reverse-path filter off: the delay line's packets come
            # back in on dl0 with the client's source, which strict rp_filter drops
            # (net/ipv4/fib_frontend.c, fib_validate_source).
            write_sysctl("net.ipv4.ip_forward", "1")
            write_sysctl("net.ipv6.conf.all.forwarding", "1")
            for conf in ("all", "default"):
                write_sysctl(f"net.ipv4.conf.{conf}.rp_filter", "0")
    else:
        b.veth("client", P.CLIENT_IF, "server", P.SERVER_IF)
    for side in (p.client, p.server):
        b.address(side.role, side.interface, side.ipv4, side.prefix4)
        b.address(side.role, side.interface, side.ipv6, side.prefix6)
        b.up(side.role, side.interface, mtu)
    if p.router:
        assert p.router_client4 and p.router_server4 and p.router_client6 and p.router_server6
        # Only the other side's subnet, never a default route: anything else is
        # unreachable (ENETUNREACH) from inside.
        b.route("client", f"{p.server.ipv4}/{p.server.prefix4}", p.router_client4)
        b.route("client", f"{p.server.ipv6}/{p.server.prefix6}", p.router_client6)
        b.route("server", f"{p.client.ipv4}/{p.client.prefix4}", p.router_server4)
        b.route("server", f"{p.client.ipv6}/{p.client.prefix6}", p.router_server6)
    rtt_s = 2 * (p.shaping.delay_ms + p.shaping.jitter_ms) / 1000
    if p.netem:
        # netem's limit is in packets: the bandwidth-delay product at the rate
        # (or at 10 Gbit/s unshaped), and never below its default 1000.
        rate = p.queue.rate_bit if p.queue else 10_000_000_000
        limit = max(1000, int(rate / 8 * rtt_s / (p.mtu + 14)) + 1)
        for iface in (P.ROUTER_C_IF, P.ROUTER_S_IF):
            b.netem("router", iface, p.shaping.delay_ms, p.shaping.jitter_ms, limit)
    if p.queue is not None:
        ends = ([("router", P.ROUTER_C_IF), ("router", P.ROUTER_S_IF)] if p.router
                else [("client", P.CLIENT_IF), ("server", P.SERVER_IF)])
        for role, iface in ends:
            # Under netem, tbf is its child (netem's class 1:1).
            b.tbf(role, iface, p.queue, parent=0x10001 if p.netem else None)
    if tun is not None:
        b.up("router", tun, max(p.mtu, P.DEFAULT_MTU))
        b.delay_routes(tun)


def nft_command() -> str | None:
    return shutil.which("nft")


def nft_apply(ruleset: str) -> None:
    """``nft -f -`` in this process's namespace (the router's).

    The nft command rather than pyroute2's nftables module: pyroute2 0.9 sends
    nf_tables messages but has no builder for rule expressions, so a rule such
    as ``numgen random mod N < T drop`` would be written here as raw netlink
    attributes (payload, numgen, cmp, immediate verdict) and checked by nobody;
    nft compiles it and one batch applies the table atomically. Its cost is one
    fork and exec per net, once: 5 ms here (measured: bench/results.md)."""
    nft = nft_command()
    if nft is None:
        raise Failed("nft", errno.ENOENT,
                     "the nft command is missing (Debian: apt-get install nftables)")
    r = subprocess.run([nft, "-f", "-"], input=ruleset.encode(), capture_output=True,
                       timeout=30)
    if r.returncode != 0:
        raise Failed("nft", None, r.stderr.decode(errors="replace").strip().splitlines()[-1]
                     if r.stderr else f"nft exited {r.returncode}")
