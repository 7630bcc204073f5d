"""The two ends of an agent that makes both sockets itself (handshake, half-close).

On loopback both ends are the agent's own namespace. Across a link
(``--client-netns PATH --server-netns PATH``: the ends of a tcplab net, given by
``experiments.link.Ends.netns_args``) each socket is made in its own end's
namespace: a socket belongs for life to the namespace it was made in
(``sock_net(sk)``, set by ``sk_alloc``), so one process enters the server's
namespace to make the listener and the client's to make the client socket, and
every packet between them crosses the veth pair. A look at the sockets
(``table``) reads each end's namespace the same way.
"""

from __future__ import annotations

import argparse
import os
import socket

from tcplab.observe.sockets import SocketTable

ROLES = ("client", "server")


class Ends:
    """Both ends' namespaces, opened when made (with libc loaded): a choreography
    makes it before it emits Ready, so that a traced run shows its own socket calls
    only, not this module's open/close of namespace files."""

    def __init__(self, client: str | None = None, server: str | None = None) -> None:
        self.paths = {"client": client, "server": server}
        self.fds: dict[str, int] = {}
        if client or server:
            from tcplab.observe.nsutil import _lib

            _lib()
            self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            for role, path in self.paths.items():
                if path:
                    self.fds[role] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Ends:
        return cls(args.client_netns, args.server_netns)

    def socket(self, role: str, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket of ``role``'s namespace (entered for the call, then left)."""
        fd = self.fds.get(role)
        if fd is None:
            return socket.socket(family, socket.SOCK_STREAM)
        from tcplab.observe.nsutil import CLONE_NEWNET, setns

        setns(fd, CLONE_NEWNET)
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            setns(self.home, CLONE_NEWNET)

    def table(self, role: str) -> SocketTable:
        """The sockets of ``role``'s namespace (its sock_diag)."""
        return SocketTable(netns=self.paths[role])


def add_arguments(p: argparse.ArgumentParser) -> None:
    for role in ROLES:
        p.add_argument(f"--{role}-netns", metavar="PATH",
                       help=f"make the {role}'s sockets in this network namespace "
                       "(/proc/PID/ns/net; default: here)")
