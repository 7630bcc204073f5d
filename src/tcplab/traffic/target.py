"""Where tcplab may send traffic: loopback, unless the user says otherwise.

tcplab generates load. By default it only ever talks to 127.0.0.0/8 and ::1
and to the addresses of a net `tcplab net` made, from inside that net's
namespaces (tcplab/net/registry.py, ``inside``); ``--allow-remote`` is the one
way past that, and the refusal names it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from tcplab.errors import UsageError


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    family: int
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @property
    def where(self) -> str:
        addr = self.sockaddr[0]
        return f"[{addr}]:{self.port}" if self.family == socket.AF_INET6 else f"{addr}:{self.port}"


def lookup(host: str, port: int, passive: bool = False) -> tuple[int, tuple[Any, ...]]:
    """(family, sockaddr) of the first address ``host`` resolves to; a clear
    error for a name that does not resolve. ``passive``: for bind(), as a server."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE if passive else 0
        )
    except socket.gaierror as exc:
        raise UsageError(
            f"invalid host {host!r}: {exc.strerror}",
            hint="use an address such as 127.0.0.1, ::1 or 0.0.0.0, or a name in /etc/hosts",
        ) from None
    family, _type, _proto, _canon, sockaddr = infos[0]
    return family, sockaddr


def resolve(host: str, port: int, allow_remote: bool = False) -> Target:
    """Where to send traffic; refuses anything but loopback without ``allow_remote``."""
    family, sockaddr = lookup(host, port)
    addr = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
    if not allow_remote and not addr.is_loopback and not _in_our_net(addr):
        raise UsageError(
            f"refusing to send traffic to {addr}: tcplab talks only to loopback "
            "(127.0.0.0/8, ::1) and, from inside a net of `tcplab net`, to its "
            "addresses, unless told otherwise",
            hint="pass --allow-remote if you own that host and mean it",
        )
    return Target(host, port, family, sockaddr)


def _in_our_net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address of a net tcplab made, seen from inside it (`tcplab net exec`)."""
    from tcplab.net.plan import BENCHMARK_RANGES

    if not any(addr in net for net in BENCHMARK_RANGES):
        return False  # the files of the nets are read only for their own ranges
    from tcplab.net.registry import inside

    return inside(str(addr))
