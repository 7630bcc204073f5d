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
import socket

from tcplab.observe.netns import entered
from tcplab.observe.sockets import SocketTable

ROLES = ("client", "server")


class Ends:
    def __init__(self, client: str | None = None, server: str | None = None) -> None:
        self.paths = {"client": client, "server": server}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Ends:
        return cls(args.client_netns, args.server_netns)

    def socket(self, role: str, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket of ``role``'s namespace (entered for the call, then left)."""
        with entered(self.paths[role]):
            return socket.socket(family, socket.SOCK_STREAM)

    def table(self, role: str) -> SocketTable:
        """The sockets of ``role``'s namespace (its sock_diag)."""
        return SocketTable(netns=self.paths[role])


def add_arguments(p: argparse.ArgumentParser) -> None:
    for role in ROLES:
        p.add_argument(f"--{role}-netns", metavar="PATH",
                       help=f"make the {role}'s sockets in this network namespace "
                       "(/proc/PID/ns/net; default: here)")
