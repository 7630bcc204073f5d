"""Where tcplab may send traffic: loopback, unless the user says otherwise.

tcplab generates load. By default it only ever talks to 127.0.0.0/8 and ::1
(and, later, to addresses inside namespaces it created); ``--allow-remote``
is the one way past that, and the refusal names it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

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


def resolve(host: str, port: int, allow_remote: bool = False) -> Target:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(
            f"invalid host {host!r}: {exc.strerror}",
            hint="use an address such as 127.0.0.1 or ::1, or a name in /etc/hosts",
        ) from None
    family, _type, _proto, _canon, sockaddr = infos[0]
    addr = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
    if not allow_remote and not addr.is_loopback:
        raise UsageError(
            f"refusing to send traffic to {addr}: tcplab talks only to loopback "
            "(127.0.0.0/8, ::1) unless told otherwise",
            hint="pass --allow-remote if you own that host and mean it",
        )
    return Target(host, port, family, sockaddr)  # type: ignore[arg-type]
