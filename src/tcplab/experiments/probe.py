"""What works on this machine, and the fix for what does not.

``tcplab check`` prints these; experiments call the same probes and skip with
their reason instead of failing halfway.
"""

from __future__ import annotations

import platform
import resource
import socket
from dataclasses import dataclass

from tcplab.errors import TcplabError


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    needed_by: str = ""


def kernel() -> Check:
    return Check("Linux kernel", platform.system() == "Linux", platform.release(),
                 None if platform.system() == "Linux" else "tcplab needs Linux", "everything")


def sock_diag() -> Check:
    from tcplab.observe.sockets import SocketTable

    try:
        with SocketTable() as table:
            table.count()
            source = table.source
    except OSError as exc:
        return Check("NETLINK_SOCK_DIAG", False, f"reading the socket table failed: {exc}",
                     "load the inet_diag and tcp_diag modules (modprobe tcp_diag)", "states")
    if source != "netlink":
        return Check("NETLINK_SOCK_DIAG", False, "unavailable: falling back to /proc/net/tcp",
                     "load the inet_diag and tcp_diag modules (modprobe tcp_diag)",
                     "states, sockets, fds (slower fallback works)")
    return Check("NETLINK_SOCK_DIAG", True, "socket table readable over netlink", None,
                 "states, sockets, fds, experiments")


def namespaces() -> Check:
    """Can we make a private network namespace and set its sysctls?"""
    from tcplab.experiments.sandbox import HOWTO, Sandbox

    sysctls = {"net.ipv4.ip_local_port_range": "40000 40999", "net.ipv4.tcp_tw_reuse": "0",
               "net.ipv4.tcp_fin_timeout": "5", "net.core.somaxconn": "128"}
    try:
        with Sandbox(sysctls) as sb:
            kind = sb.kind
    except TcplabError as exc:
        return Check("private network namespace", False, exc.message, exc.hint or HOWTO,
                     "experiments")
    except OSError as exc:
        return Check("private network namespace", False, str(exc), HOWTO, "experiments")
    return Check("private network namespace", True,
                 f"{kind}, with its own ip_local_port_range, tcp_tw_reuse, tcp_fin_timeout, "
                 "somaxconn", None, "experiments")


def tracefs() -> Check:
    """What ``tcplab trace`` needs; as root, a tracefs that is not mounted is
    fine when trace can mount it privately (tried in a child)."""
    from tcplab.observe.tracefs import availability

    ok, detail, fix = availability()
    return Check("tracefs", ok, detail, fix, "trace")


def raw_packets() -> Check:
    from tcplab.observe.capture import raw_socket_hint

    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return Check("CAP_NET_RAW", False, "AF_PACKET sockets need CAP_NET_RAW",
                     raw_socket_hint(), "capture")
    except OSError as exc:
        return Check("CAP_NET_RAW", False, f"AF_PACKET unavailable: {exc}", None, "capture")
    return Check("CAP_NET_RAW", True, "AF_PACKET sockets can be opened", None, "capture")


def fd_limits() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fits = hard - 100 if hard > 0 else 0
    ok = hard >= 2048
    return Check("fd limits", ok,
                 f"soft {soft}, hard {hard}: one process can hold about {fits:,} sockets",
                 None if ok else "raise the hard limit (ulimit -Hn, as root) to at least 2048",
                 "fd-leak, multiplex")


def all_checks() -> list[Check]:
    return [kernel(), sock_diag(), namespaces(), tracefs(), raw_packets(), fd_limits()]


# --- will a listener take a connection to this address? ---------------------------------------

#: Addresses from which a connection to 127.0.0.2 is accepted: the wildcards (an
#: AF_INET6 socket on :: takes IPv4 too unless IPV6_V6ONLY, off by default:
#: net.ipv6.bindv6only = 0) and the address itself.
_COVERS_ANY = ("0.0.0.0", "::")


def accepts_on(addresses: list[str], host: str) -> bool:
    """Would a listener bound to ``addresses`` accept a connection to ``host``?"""
    return any(a in _COVERS_ANY or a in (host, f"::ffff:{host}") for a in addresses)
