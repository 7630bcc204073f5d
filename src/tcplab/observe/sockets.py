"""The live TCP socket table: NETLINK_SOCK_DIAG, with /proc/net/tcp as fallback.

``SocketTable`` opens one netlink socket and reuses it and one receive
buffer for every sample, so ``--watch`` costs a few syscalls per refresh.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from tcplab.kernel import sock_diag, tcp_states
from tcplab.observe.netns import entered

if TYPE_CHECKING:
    from tcplab.kernel.records import TcpSocket

FAMILIES = (socket.AF_INET, socket.AF_INET6)
#: Netlink dump datagrams are at most 32 KiB (netlink_recvmsg caps
#: max_recvmsg_len at SKB_WITH_OVERHEAD(32768)); twice that leaves room.
RECV_BUF = 64 * 1024
N_STATES = tcp_states.NEW_SYN_RECV + 1


class StateCounts:
    """Counts per state (every netstat name, zero included) and their total.

    A plain class rather than a dataclass: ``tcplab states`` must not pay for
    importing dataclasses. ``asdict`` gives the JSON body.
    """

    __slots__ = ("states", "total")

    def __init__(self, states: dict[str, int], total: int) -> None:
        self.states = states
        self.total = total

    def asdict(self) -> dict[str, object]:
        return {"states": self.states, "total": self.total}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StateCounts) and other.states == self.states
                and other.total == self.total)

    def __repr__(self) -> str:
        return f"StateCounts({self.states!r}, total={self.total})"


class SocketTable:
    """Reads TCP sockets of the current (or the given) network namespace."""

    def __init__(self, netns: str | None = None, procfs: str = "/proc",
                 force_procfs: bool = False) -> None:
        self.procfs = procfs
        self._netns_fd: int | None = None
        self.sock: socket.socket | None = None
        self.source = "procfs"
        self.fallback_reason: str | None = None
        with entered(netns):
            if not force_procfs:
                try:
                    self.sock = socket.socket(
                        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                        sock_diag.NETLINK_SOCK_DIAG,
                    )
                    self.source = "netlink"
                except OSError as exc:
                    self.fallback_reason = f"NETLINK_SOCK_DIAG unavailable: {exc}"
            if self.sock is None:
                # /proc/thread-self/net follows the namespace we are in now;
                # keep the directory open so later reads see the same one.
                self._netns_fd = os.open(f"{procfs}/thread-self/net",
                                         os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._buf = bytearray(RECV_BUF)
        self._seq = 0
        #: one dump for both families (TCPDIAG_GETSOCK) until the kernel refuses it
        self.compat = True

    def close(self) -> None:
        """Idempotent: a second close never closes an fd number used again since."""
        if self.sock is not None:
            self.sock.close()
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None

    def __enter__(self) -> SocketTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- netlink ---------------------------------------------------------------

    def _dump(self, family: int, states: int, port: int,
              handle: Callable[[bytearray, int], bool]) -> None:
        """One dump: of ``family``, or with AF_UNSPEC of both (TCPDIAG_GETSOCK)."""
        assert self.sock is not None
        self._seq += 1
        self.sock.send(sock_diag.build_request_compat(states, port, self._seq)
                       if family == socket.AF_UNSPEC
                       else sock_diag.build_request(family, states, port, self._seq))
        buf = self._buf
        recv_into = self.sock.recv_into
        while True:
            n = recv_into(buf, 0, socket.MSG_TRUNC)
            if n > len(buf):
                raise sock_diag.DecodeError(f"netlink datagram of {n} bytes truncated")
            if handle(buf, n):
                return

    def _each_dump(self, port: int, states: int,
                   handle: Callable[[bytearray, int], bool]) -> None:
        """Both address families in one dump, filtered by the kernel: the older
        TCPDIAG_GETSOCK request walks the TCP hash tables once for both, where
        SOCK_DIAG_BY_FAMILY walks them once per family (as ss does). 56,800
        sockets: ; 3,000 in a namespace sharing the host's table (bench/node.py):
        41 ms against 81. Per family when the kernel refuses it (EINVAL, EOPNOTSUPP:
        no compat handler), before any reply."""
        if self.compat:
            try:
                self._dump(socket.AF_UNSPEC, states, port, handle)
                return
            except sock_diag.NetlinkError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
                    raise
                self.compat = False
        for family in FAMILIES:
            try:
                self._dump(family, states, port, handle)
            except sock_diag.NetlinkError as exc:
                if family == socket.AF_INET6 and exc.errno in (2, 97):  # no IPv6 here
                    continue
                raise

    # -- public -----------------------------------------------------------------

    def count(self, port: int = 0, states: int = tcp_states.ALL_STATES_MASK) -> list[int]:
        """Counts per kernel state number (index); no record is built."""
        counts = [0] * N_STATES
        if self.sock is None:
            from tcplab.kernel import proc_net_tcp

            for name in ("tcp", "tcp6"):
                text = self._read_proc(name)
                if text is not None:
                    proc_net_tcp.count_lines(text, counts, port)
            return _only(counts, states)
        self._each_dump(port, states, lambda b, n: sock_diag.count_states(b, counts, n))
        return counts

    def state_counts(self, port: int = 0) -> StateCounts:
        counts = self.count(port)
        folded = tcp_states.fold(counts)
        return StateCounts(folded, sum(folded.values()))

    def sockets(self, port: int = 0, states: int = tcp_states.ALL_STATES_MASK
                ) -> list[TcpSocket]:
        from tcplab.kernel import records

        out: list[TcpSocket] = []
        if self.sock is None:
            from tcplab.kernel import proc_net_tcp

            ticks = os.sysconf("SC_CLK_TCK")
            for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
                text = self._read_proc(name)
                if text is None:
                    continue
                for s in proc_net_tcp.parse(text, family, ticks_per_s=ticks):
                    if states >> s.state & 1 and (not port or port in (s.sport, s.dport)):
                        out.append(s)
            return out
        self._each_dump(port, states, lambda b, n: records.decode_sockets(b, out, n))
        return out

    def listeners(self, port: int) -> list[TcpSocket]:
        """The LISTEN sockets bound to ``port`` (any address, IPv4 and IPv6)."""
        mask = tcp_states.mask([tcp_states.LISTEN])
        return [s for s in self.sockets(port, mask) if s.sport == port]

    def _read_proc(self, name: str) -> str | None:
        assert self._netns_fd is not None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._netns_fd)
        except FileNotFoundError:
            return None  # tcp6 without IPv6
        from tcplab.kernel.proc_net_tcp import unique_lines

        with os.fdopen(fd) as f:
            return unique_lines(f.read())


def _only(counts: list[int], states: int) -> list[int]:
    return [c if states >> i & 1 else 0 for i, c in enumerate(counts)]
