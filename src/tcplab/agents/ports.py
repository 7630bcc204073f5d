"""How a local port is chosen: ``python -m tcplab.agents.ports``.

Run inside a sandbox (or ``unshare -Urn``): it narrows its own namespace's
net.ipv4.ip_local_port_range to 40000-40009 (ten ports) and listens on
0.0.0.0:8080, so 127.0.0.1:8080 and 127.0.0.2:8080 are two destinations.
Every client is closed with SO_LINGER 0 (no TIME_WAIT left to hold a port for
the next case). One ``Ports`` per case, with the local port each socket got:

* ``connect``: 5 connect()s without bind(); ``bind``: 5 bind()s to port 0.
  __inet_hash_connect (net/ipv4/inet_hashtables.c) tries ports at an even
  offset from the range's low end first; inet_csk_find_open_port
  (net/ipv4/inet_connection_sock.c) tries the odd ones first, "to not pollute
  connect() users".
* ``bind-then-connect``: bind() to 127.0.0.1 port 0, then connect(), to
  127.0.0.1:8080 until it fails, then once to 127.0.0.2:8080: the bound ports
  belong to their sockets whatever the destination.
* ``bind-address-no-port``: the same with IP_BIND_ADDRESS_NO_PORT: bind()
  leaves the port 0 and connect() chooses it, per destination, as if there had
  been no bind().
* ``socket-range``: IP_LOCAL_PORT_RANGE 40002-40005 on each socket (Linux 6.3):
  connect() takes ports from that part of the range only.
* ``reserved``: net.ipv4.ip_local_reserved_ports 40000-40007: connect() skips
  them (inet_is_local_reserved_port), leaving two ports.

Across a link (``--host`` the server's address, ``--client-host`` the
client's, ``--client-netns`` and ``--server-netns``: agents/ends.py) the
listeners are made in the server's namespace and every client socket in the
client's, whose ip_local_port_range is the one that counts (connect() and bind()
read it through the socket's namespace: inet_sk_get_local_port_range,
net/ipv4/inet_connection_sock.c). The server has one IPv4 address, so the
second destination is that address's port 8081: another 4-tuple, all the
lesson needs (__inet_check_established compares the whole 4-tuple), whereas an
IPv6 destination would take an AF_INET6 socket whose bind() to its own address
does not collide with the IPv4 ports (inet_csk_bind_conflict compares the bound
addresses, inet_rcv_saddr_equal: net/ipv4/inet_connection_sock.c).
There the agent writes no sysctl: the experiment sets the client namespace's
range, and its reserved ports before ``--cases reserved``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit, require_private_netns, write_sysctl
from tcplab.errors import errno_name
from tcplab.kernel.inet import IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE
from tcplab.net.build import link_up
from tcplab.observe import procfs
from tcplab.observe.netns import entered

LOW, HIGH = 40000, 40009
PORT = 8080
ONE, TWO = "127.0.0.1", "127.0.0.2"
#: The second destination across a link: the server's one IPv4 address, another port.
PORT_TWO = 8081
SOCKET_RANGE = (40002, 40005)
RESERVED = "40000-40007"
MAX_TRIES = 12  # more than the range: every loop ends at the range's size or before
STARTED = time.monotonic()  # a record's t: seconds since then (when it was made)


@dataclass(frozen=True, slots=True)
class Failed:
    """The call that ended a case, and its errno."""

    call: str  # "bind" or "connect"
    errno: int
    name: str  # the errno's name, e.g. "EADDRNOTAVAIL"
    message: str  # its text (strerror), e.g. "Cannot assign requested address"

    @classmethod
    def of(cls, call: str, code: int) -> Failed:
        return cls(call, code, errno_name(code), os.strerror(code))

    def __str__(self) -> str:
        """``connect: EADDRNOTAVAIL``."""
        return f"{self.call}: {self.name}"


@dataclass(frozen=True, slots=True)
class Ports:
    """The local ports one case's sockets got, and how the case ended."""

    case: str
    setting: str  # what the case set, in words
    destination: str  # "127.0.0.1:8080", "127.0.0.2:8080", or "" (bind() only)
    ports: list[int]  # each socket's local port, in order (0: none yet)
    error: Failed | None  # the call that ended the case (None: none failed)
    t: float = field(default_factory=lambda: round(time.monotonic() - STARTED, 3))


def _linger0(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


Destination = tuple[str, int]


class Cases:
    def __init__(self, listeners: list[socket.socket], ends: Ends, local: str,
                 first: Destination, second: Destination) -> None:
        self.listeners, self.ends, self.local = listeners, ends, local
        self.first, self.second = first, second
        self.held: list[socket.socket] = []

    def release(self) -> None:
        for s in self.held:
            s.close()
        self.held.clear()
        for ls in self.listeners:
            ls.setblocking(False)
            try:
                while True:
                    ls.accept()[0].close()
            except BlockingIOError:
                pass
            ls.setblocking(True)

    def connect_until(self, case: str, setting: str, dest: Destination, count: int,
                      bind: bool = False, no_port: bool = False,
                      socket_range: tuple[int, int] | None = None) -> Ports:
        ports: list[int] = []
        error = None
        for _ in range(count):
            s = self.ends.socket("client")
            _linger0(s)
            call = "socket"
            try:
                if no_port:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                if socket_range:
                    lo, hi = socket_range
                    # A u32, low 16 bits the lower bound (above 2**31: passed as bytes).
                    s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE,
                                 struct.pack("I", lo | hi << 16))
                if bind:
                    call = "bind"
                    s.bind((self.local, 0))
                call = "connect"
                s.connect(dest)
            except OSError as e:
                s.close()
                error = Failed.of(call, e.errno or 0)
                break
            self.held.append(s)
            ports.append(s.getsockname()[1])
        return Ports(case, setting, f"{dest[0]}:{dest[1]}", ports, error)

    def parity(self) -> None:
        emit(self.connect_until("connect", "connect() without bind()", self.first, 5))
        self.release()
        ports = []
        for _ in range(5):
            s = self.ends.socket("client")
            s.bind((self.local, 0))
            self.held.append(s)
            ports.append(s.getsockname()[1])
        emit(Ports("bind", "bind() to port 0", "", ports, None))
        self.release()

    def bind_then_connect(self) -> None:
        for case, no_port in (("bind-then-connect", False), ("bind-address-no-port", True)):
            setting = (f"bind() to {self.local} port 0"
                       + (" with IP_BIND_ADDRESS_NO_PORT" if no_port else "")
                       + ", then connect()")
            for dest in (self.first, self.second):
                emit(self.connect_until(case, setting, dest, MAX_TRIES, bind=True,
                                        no_port=no_port))
            self.release()

    def socket_range(self) -> None:
        lo, hi = SOCKET_RANGE
        emit(self.connect_until("socket-range", f"IP_LOCAL_PORT_RANGE {lo}-{hi}", self.first,
                                MAX_TRIES, socket_range=SOCKET_RANGE))
        self.release()

    def reserved(self, write: bool = True) -> None:
        """``write``: set the reserved ports here, and clear them after (False: the
        namespace has them already, set by the experiment)."""
        if write:
            write_sysctl("net.ipv4.ip_local_reserved_ports", RESERVED)
        emit(self.connect_until("reserved", f"ip_local_reserved_ports {RESERVED}", self.first,
                                MAX_TRIES))
        self.release()
        if write:
            write_sysctl("net.ipv4.ip_local_reserved_ports", "")


#: --cases: every case (writing this namespace's sysctls), or, across a link (the
#: experiment sets the client namespace's sysctls), all but reserved, or reserved.
CASES = ("all", "main", "reserved")


def listener(ends: Ends, port: int) -> socket.socket:
    ls = ends.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(64)
    return ls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.ports",
                                description="Which local port connect() and bind() take in a "
                                "ten-port range: parity, bind() before connect() with and "
                                "without IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE, reserved "
                                "ports; emit a Ports per case.")
    p.add_argument("--cases", choices=CASES, default="all",
                   help="all (default: sets this namespace's port range and reserved "
                   "ports), main (all but reserved) or reserved: on the sysctls the "
                   "client's namespace has")
    p.add_argument("--host", default=None,
                   help="the server's address (default: 127.0.0.1 and 127.0.0.2, port "
                   f"{PORT}; given: that address, ports {PORT} and {PORT_TWO})")
    p.add_argument("--client-host", default=ONE, help="the client's address, for bind()")
    add_arguments(p)
    args = p.parse_args(argv)
    ends = Ends.from_args(args)
    if args.cases == "all":
        require_private_netns(p, "ports")
        try:
            link_up("lo")  # up in a sandbox already; down under unshare -Urn
            write_sysctl("net.ipv4.ip_local_port_range", f"{LOW} {HIGH}")
        except OSError as e:
            p.exit(1, f"cannot set this namespace's port range: {e} "
                   "(run in a sandbox or under unshare -Urn)\n")
    with entered(ends.paths["client"]):
        if procfs.local_port_range() != (LOW, HIGH):
            p.exit(1, f"the client's ip_local_port_range is not {LOW} {HIGH}\n")
        if args.cases == "reserved" and procfs.sysctl(
                "net.ipv4.ip_local_reserved_ports") != RESERVED:
            p.exit(1, f"the client's ip_local_reserved_ports is not {RESERVED}\n")
    if args.host is None:  # one listener on 0.0.0.0 takes both loopback addresses
        listeners = [listener(ends, PORT)]
        first, second = (ONE, PORT), (TWO, PORT)
    else:
        listeners = [listener(ends, PORT), listener(ends, PORT_TWO)]
        first, second = (args.host, PORT), (args.host, PORT_TWO)
    cases = Cases(listeners, ends, args.client_host, first, second)
    if args.cases != "reserved":
        cases.parity()
        cases.bind_then_connect()
        cases.socket_range()
    if args.cases != "main":
        cases.reserved(write=args.cases == "all")
    for ls in listeners:
        ls.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
