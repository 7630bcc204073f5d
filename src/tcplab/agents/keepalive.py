"""A peer gone silent: keep-alive and TCP_USER_TIMEOUT (``python -m tcplab.agents.keepalive``).

Run inside a sandbox (or ``unshare -Urn``): it needs CAP_NET_ADMIN and
CAP_SYS_ADMIN in its own network namespace (root inside a user namespace will
do), and no tool: links are made over rtnetlink (pyroute2). A peer that crashes or
loses its link sends nothing, not even a RST; loopback cannot show that (the
kernel answers for every local socket), so the agent builds a link that can go
silent (``PeerLink``): a veth pair (198.18.13.1 here, 198.18.13.2 there) to a
second network namespace, held by a file descriptor, where a listener on port
9000 holds what it accepts. Setting the peer's end down makes the pair drop
every frame without a word: veth_close (drivers/net/veth.c) turns the local
end's carrier off, linkwatch_do_dev then gives it the noop qdisc
(dev_deactivate), whose noop_enqueue (net/sched/sch_generic.c) drops each frame,
counts it in the device's TX dropped and returns NET_XMIT_CN, which TCP takes
for sent (net_xmit_eval); checked here: a UDP socket with IP_RECVERR got no
ENOBUFS, "ip -s link" counted the drops. The local end's neighbour entry is
permanent, so no ARP failure turns into "No route to host".

Across a real link (``--client-netns PATH --server-netns PATH --host ADDR``: ``tcplab
experiment keepalive --link veth``, run at the server's end of a tcplab net, see
agents/ends.py) the client socket is made in the net's client namespace and the
listener in the server's (``NetPeer``), and the peer goes silent by an nftables
table in the server's namespace that drops this connection's segments both ways
(input from the client's port, output to it). Not by setting a veth down: the
net's neighbour entries are not permanent, and a neighbour that stops answering
ARP fails (arp_error_report -> ipv4_link_failure, net/ipv4/route.c, sends an
ICMP host unreachable), which tcp_v4_err keeps as the socket's soft error, and
tcp_write_err then fails the socket with that soft error, EHOSTUNREACH, not
ETIMEDOUT (net/ipv4/tcp_timer.c: ``sk->sk_err_soft ? : ETIMEDOUT``; read in the
kernel's source, not run here: the PeerLink above avoids it with permanent
entries, which a net's veth would need at both ends and at the router's, when
there is one). A rule of the inet family leaves ARP alone (ARP is not an inet
packet), so neighbours stay valid; the client's segments still leave its veth
(counted as retransmissions, probes) and vanish at the server's input hook. The
rule is in place when ``nft -f`` returns (one batch, committed), so no wait like
the local link's linkwatch.
The agent adds it only after ``io.require_net_end`` found its namespace to be
the server's of a live net.

Per case: the link up, one connection, its options, the peer's end down, then
the client's recv() blocks until the kernel gives up. One ``Silent`` per case,
with when (seconds after connect() returned), the errno and its text, and the
namespace's counters over the case (TcpExt TCPKeepAlive: probes sent; Tcp
RetransSegs; TcpExt TCPAbortOnTimeout).

* ``keepalive``: SO_KEEPALIVE with TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s,
  TCP_KEEPCNT 3 (tcp_keepalive_timer in net/ipv4/tcp_timer.c: the first probe
  after KEEPIDLE without a received segment, then one per KEEPINTVL; after
  KEEPCNT unanswered probes it sends a RST and fails the socket, tcp_write_err:
  ETIMEDOUT);
* ``keepalive+user-timeout``: the same with TCP_KEEPCNT 9 and TCP_USER_TIMEOUT
  2.5 s: the timer then gives up once 2.5 s passed without a received segment
  and at least one probe went unanswered, whatever KEEPCNT says;
* ``retransmit+user-timeout``: no keep-alive; 100 bytes sent after the link
  went down, TCP_USER_TIMEOUT 2 s: the retransmission timer gives up 2 s after
  the first unacknowledged send (tcp_write_timeout, retransmits_timed_out),
  not after the 924.6 s that tcp_retries2 (15) allows.
"""

from __future__ import annotations

import argparse
import errno as errnos
import os
import select
import socket
import time
from dataclasses import dataclass
from types import TracebackType

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import checked_net_end, emit, require_net_end, require_private_netns
from tcplab.net.build import Builder, Namespaces, new_netns, nft_apply
from tcplab.observe import procfs
from tcplab.observe.netns import entered
from tcplab.observe.nsutil import CLONE_NEWNET, setns

LOCAL_DEV, PEER_DEV = "tl0", "tl1"
LOCAL, PEER = "198.18.13.1", "198.18.13.2"
LOCAL_MAC, PEER_MAC = "02:00:c6:12:0d:01", "02:00:c6:12:0d:02"
HERE, THERE = "client", "server"  # the Builder's roles: this namespace, the peer's
PORT = 9000
GUARD_S = 30.0  # a case that has not failed by then is reported as it stands
DEACTIVATE_GUARD_S = 5.0  # a linkwatch event waits 1 s at most (linkwatch_schedule_work)
IFF_LOWER_UP = 0x10000  # include/uapi/linux/if.h: the driver signals L1 up (carrier)
RTMGRP_LINK = 0x1  # include/uapi/linux/rtnetlink.h: link notifications
TABLE = "tcplab_silent"  # NetPeer's nftables table, in the net's server namespace


class PeerLink:
    """A veth pair to a peer network namespace whose end can go down.

    The peer's namespace is held by a file descriptor (net/build.py's new_netns),
    not by a process: its listener on PEER:PORT is made while this process steps
    into it (setns; a socket stays in the namespace it was made in) and the
    kernel completes the handshakes into its accept queue, where each connection
    stays until the listener closes. No ``ip``, no ``nsenter``, no child: the
    links, addresses and neighbours are rtnetlink messages (net/build.py's
    Builder), the local end plays the Builder's "client", the peer's end its
    "server". On exit the pair is deleted and the namespace goes with its last
    reference (the descriptor, the listener and the rtnetlink socket in it).
    """

    def __init__(self) -> None:
        self._ns: Namespaces | None = None
        self._builder: Builder | None = None
        self._listener: socket.socket | None = None

    def __enter__(self) -> PeerLink:
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer = new_netns(home)
        except BaseException:
            os.close(home)
            raise
        self._ns = Namespaces(home=home, client=home, server=peer)
        try:
            b = self._builder = Builder(self._ns)
            b.up(HERE, "lo")  # already up in a sandbox; not under unshare -Urn
            b.up(THERE, "lo")
            # Made here, then moved, rather than made there: the two ends then have
            # different interface indexes (a fresh namespace would give the peer's end
            # the same index as ours, 2). A veth end whose index equals its peer's
            # (its iflink) is not an urgent linkwatch event (linkwatch_urgent_event,
            # net/core/link_watch.c), and its carrier change then waits for the next
            # linkwatch run, up to 1 s (measured here: the local end was deactivated
            # 0.38 to 0.82 s after the peer's went down). See down().
            b.veth(HERE, LOCAL_DEV, HERE, PEER_DEV, macs=(LOCAL_MAC, PEER_MAC))
            b.move(HERE, PEER_DEV, THERE)
            b.address(HERE, LOCAL_DEV, LOCAL, 24)
            b.address(THERE, PEER_DEV, PEER, 24)
            b.up(HERE, LOCAL_DEV)
            self.up()
            setns(peer, CLONE_NEWNET)
            try:
                ls = self._listener = socket.socket()
            finally:
                setns(home, CLONE_NEWNET)
            ls.bind((PEER, PORT))
            ls.listen()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _b(self) -> Builder:
        if self._builder is None:
            raise RuntimeError("the peer link is not set up")
        return self._builder

    def up(self) -> None:
        b = self._b()
        b.up(THERE, PEER_DEV)
        # Permanent: a neighbour that stops answering would otherwise fail after a few
        # seconds of ARP, and its ICMP "host unreachable" would end the connection with
        # EHOSTUNREACH, not the silence this agent wants (arp_error_report). Again at
        # every up: setting the peer's end down flushed its entry, permanent or not
        # (arp_ifdown -> neigh_ifdown), while the local end, which only lost its
        # carrier, kept its own (neigh_carrier_down skips permanent entries;
        # net/core/neighbour.c, __neigh_ifdown; seen here with "ip neigh").
        b.neighbour(HERE, LOCAL_DEV, PEER, PEER_MAC)
        b.neighbour(THERE, PEER_DEV, LOCAL, LOCAL_MAC)

    def down(self) -> None:
        """The peer's end down, and back once the local end drops what it is given.

        Until linkwatch has deactivated the local end (dev_deactivate: the noop qdisc),
        veth_xmit still takes frames and, its peer down, drops them with NET_XMIT_DROP,
        which TCP takes for not sent (tcp_transmit_skb's error: the segment stays
        unsent and no retransmission is counted). linkwatch_do_dev announces the
        change (RTM_NEWLINK, after dev_deactivate), so wait for that announcement:
        the local end without IFF_LOWER_UP."""
        from pyroute2 import IPRoute

        b = self._b()
        index = b.index(HERE, LOCAL_DEV)
        with IPRoute() as watch:
            watch.bind(groups=RTMGRP_LINK)
            b.down(THERE, PEER_DEV)
            deadline = time.monotonic() + DEACTIVATE_GUARD_S
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([watch.fileno()], [], [], left)[0]:
                    break
                for m in watch.get():
                    if (m["event"] == "RTM_NEWLINK" and m["index"] == index
                            and not m["flags"] & IFF_LOWER_UP):
                        return
        raise OSError(errnos.ETIMEDOUT, f"{LOCAL_DEV} still had its carrier "
                      f"{DEACTIVATE_GUARD_S:.0f} s after {PEER_DEV} went down")

    def connect(self) -> socket.socket:
        """The link up, and a connection to the peer's listener."""
        self.up()
        return socket.create_connection((PEER, PORT), timeout=5)

    def silence(self, c: socket.socket) -> None:
        self.down()

    def counters(self) -> dict[str, int]:
        return counters()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._builder is not None:
            try:  # both ends at once (dellink of a veth takes its peer)
                self._builder.sockets[HERE].link("del", ifname=LOCAL_DEV)
            except Exception:
                pass  # not made; else gone with the peer's namespace anyway
            self._builder.close()
            self._builder = None
        if self._ns is not None:
            os.close(self._ns.server)
            os.close(self._ns.home)
            self._ns = None


class NetPeer:
    """The peer at the server's end of a tcplab net, the client at its client end
    (``--link veth``); each connection silenced by its own nftables rules in the
    server's namespace (this process's: the agent runs there)."""

    def __init__(self, ends: Ends, host: str) -> None:
        self.ends = ends
        self.host = host
        self._listener: socket.socket | None = None

    def __enter__(self) -> NetPeer:
        checked_net_end()  # io.require_net_end passed: this is the net's server end
        ls = self._listener = self.ends.socket("server")
        try:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((self.host, PORT))
            ls.listen()
            nft_apply(f"table inet {TABLE} {{\n"
                      "  chain input { type filter hook input priority 0; policy accept; }\n"
                      "  chain output { type filter hook output priority 0; policy accept; }\n"
                      "}\n")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def connect(self) -> socket.socket:
        c = self.ends.socket("client")
        c.settimeout(5)
        c.connect((self.host, PORT))
        return c

    def silence(self, c: socket.socket) -> None:
        """Drop this connection's segments both ways at the server (input and output
        hooks): the client's are sent and vanish, the server sends nothing."""
        address, port = c.getsockname()[:2]
        nft_apply(f"add rule inet {TABLE} input ip saddr {address} tcp sport {port} "
                  f"tcp dport {PORT} drop\n"
                  f"add rule inet {TABLE} output ip daddr {address} tcp dport {port} "
                  f"tcp sport {PORT} drop\n")

    def counters(self) -> dict[str, int]:
        """The client's namespace's counters (/proc/net follows the reading thread's
        namespace: observe/procfs.py)."""
        with entered(self.ends.paths["client"]):
            return counters()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._listener is not None:  # the table goes with the net's namespace
            self._listener.close()
            self._listener = None


Peer = PeerLink | NetPeer


@dataclass(frozen=True, slots=True)
class Silent:
    """One connection whose peer went silent, and how the kernel gave up on it."""

    case: str  # keepalive, keepalive+user-timeout or retransmit+user-timeout
    keepidle_s: int | None  # TCP_KEEPIDLE (None: keep-alive off)
    keepintvl_s: int | None  # TCP_KEEPINTVL
    keepcnt: int | None  # TCP_KEEPCNT
    user_timeout_ms: int | None  # TCP_USER_TIMEOUT (None: not set)
    sent_bytes: int  # sent after the peer went silent
    down_at_s: float  # when the peer's link went down, seconds after connect() returned
    error_at_s: float | None  # when the client's recv() failed (None: not within the guard)
    errno: int | None  # that recv()'s errno
    error: str | None  # its text
    keepalive_probes: int  # TcpExt TCPKeepAlive over the case
    retransmits: int  # Tcp RetransSegs over the case
    aborted_on_timeout: int  # TcpExt TCPAbortOnTimeout over the case
    t: float = 0.0  # when the case ended, seconds since the agent started


Case = tuple[int | None, int | None, int | None, int | None, int]
CASES: dict[str, Case] = {
    # case: (KEEPIDLE s, KEEPINTVL s, KEEPCNT, USER_TIMEOUT ms, bytes sent)
    "keepalive": (1, 1, 3, None, 0),
    "keepalive+user-timeout": (1, 1, 9, 2500, 0),
    "retransmit+user-timeout": (None, None, None, 2000, 100),
}
#: --quick: the same three verdicts about 3 s sooner (measured: 8 s against 11 s); a
#: user timeout of 1.5 s still ends the second case at the keep-alive timer's second
#: run (2 s), long before KEEPCNT 9 would (10 s).
QUICK: dict[str, Case] = {
    "keepalive": (1, 1, 2, None, 0),
    "keepalive+user-timeout": (1, 1, 9, 1500, 0),
    "retransmit+user-timeout": (None, None, None, 1000, 100),
}


def counters() -> dict[str, int]:
    snmp, ext = procfs.tcp_counters()
    return {"keepalive_probes": ext["TCPKeepAlive"], "retransmits": snmp["RetransSegs"],
            "aborted_on_timeout": ext["TCPAbortOnTimeout"]}


def one(link: Peer, case: str, quick: bool = False, started: float = 0.0) -> Silent:
    idle, intvl, cnt, user_ms, send = (QUICK if quick else CASES)[case]
    before = link.counters()
    c = link.connect()
    t0 = time.monotonic()
    if idle is not None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl or 1)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt or 1)
    if user_ms is not None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_ms)
    time.sleep(0.3)
    link.silence(c)
    down_at = time.monotonic() - t0
    if send:
        c.sendall(b"x" * send)
    c.settimeout(GUARD_S)
    at: float | None = None
    code: int | None = None
    try:
        c.recv(100)  # the peer sends nothing: this returns only with the kernel's verdict
        at = time.monotonic() - t0
    except OSError as e:  # ETIMEDOUT is a TimeoutError too; the guard's has no errno
        if e.errno is not None:
            at, code = time.monotonic() - t0, e.errno
    c.close()
    after = link.counters()
    return Silent(case, idle, intvl, cnt, user_ms, send, round(down_at, 3),
                  None if at is None else round(at, 3), code,
                  None if code is None else os.strerror(code),
                  **{k: after[k] - before[k] for k in after},
                  t=round(time.monotonic() - (started or t0), 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.keepalive",
                                description="Connections whose peer goes silent (a veth "
                                "link to a peer namespace, set down): keep-alive, and "
                                "TCP_USER_TIMEOUT with keep-alive and with retransmissions; "
                                "emit a Silent per case.")
    p.add_argument("cases", nargs="*", metavar="CASE",
                   help=f"the cases to run ({', '.join(CASES)}); all by default")
    p.add_argument("--quick", action="store_true",
                   help="shorter timers (KEEPCNT 2, user timeouts 1.5 s and 1 s)")
    p.add_argument("--host", default=PEER,
                   help="the server's address (with --client-netns/--server-netns: the "
                   "net's server end; else the agent's own peer link, " + PEER + ")")
    add_arguments(p)
    args = p.parse_args(argv)
    for case in args.cases:
        if case not in CASES:
            p.error(f"unknown case {case!r} (choose from {', '.join(CASES)})")
    ends = Ends.from_args(args)
    if args.client_netns or args.server_netns:
        if not (args.client_netns and args.server_netns):
            p.error("--client-netns and --server-netns go together")
        require_net_end(p, "keepalive", "server")  # before the listener and the rules
        link: Peer = NetPeer(ends, args.host)
    else:
        require_private_netns(p, "keepalive")  # before the veth pair
        link = PeerLink()
    started = time.monotonic()
    with link:
        for case in args.cases or CASES:
            emit(one(link, case, args.quick, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
