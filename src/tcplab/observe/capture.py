"""Packets on ``lo`` from an AF_PACKET socket, filtered in the kernel by classic BPF.

On loopback every packet passes twice, once leaving and once arriving; like
libpcap we drop the outgoing copy (PACKET_OUTGOING) on a loopback device, so each
shows once; on any other device (a veth) the packets sent are the outgoing ones.
Timestamps are the kernel's (SO_TIMESTAMPNS), not the time we read them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator

from tcplab.errors import NotSupported, PrivilegeError
from tcplab.kernel.packets import SNAPLEN, port_filter

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
#: Bytes the socket may queue before the kernel drops packets (tcpdump uses
#: 2 MiB); capped by net.core.rmem_max unless we may force it.
RCVBUF = 4 << 20
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
ARPHRD_LOOPBACK = 772  # include/uapi/linux/if_arp.h


def raw_socket_hint() -> str:
    """How to get CAP_NET_RAW without handing raw sockets to every Python script.

    File capabilities belong to a binary, and a virtual environment's python
    is usually a link to a shared interpreter (here: .venv/bin/python3 ->
    pyenv's python3), so ``setcap`` on "python3" grants every script any
    user runs with it the right to read every packet on the machine."""
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.prefix)
    in_venv = sys.prefix != sys.base_prefix
    if in_venv and exe.startswith(prefix + os.sep):
        return (f"run as root (sudo), or give this virtual environment's own interpreter "
                f"raw sockets: sudo setcap cap_net_raw+ep {exe} (then every script that "
                "interpreter runs, not only tcplab, can capture any packet on this machine)")
    shared = (f"this virtual environment's python is a link to {exe}, so "
              if in_venv else "")
    return (f"run as root (sudo). Do not setcap {exe}: {shared}every script any user runs "
            "with that interpreter could then capture any packet on this machine; a virtual "
            "environment made with 'python3 -m venv --copies' has an interpreter of its own "
            "that could carry cap_net_raw instead")


def check_interface(name: str) -> None:
    """NotSupported (README's exit table: an interface this machine lacks, such as
    macOS's lo0) naming the interfaces there are (in this network namespace)."""
    try:
        socket.if_nametoindex(name)
        return
    except OSError:
        pass
    there = ", ".join(n for _, n in socket.if_nameindex())
    hint = f"interfaces here: {there}"
    if name.lower().startswith("lo"):
        hint = f"on Linux the loopback interface is lo (lo0 is macOS's and the BSDs'); {hint}"
    raise NotSupported(f"cannot capture on {name!r}: {os.strerror(errno.ENODEV)}", hint=hint)


class Capture:
    def __init__(self, port: int = 0, interface: str = "lo") -> None:
        check_interface(interface)  # bad input first, before the privilege question
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise PrivilegeError(
                "capturing packets needs CAP_NET_RAW (an AF_PACKET socket)",
                hint=raw_socket_hint(),
            ) from None
        except OSError as exc:
            raise NotSupported(f"no AF_PACKET sockets here: {exc}") from None
        if port:
            self.set_filter(port_filter(port))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        try:
            self.sock.bind((interface, 0))
        except OSError as exc:
            self.sock.close()
            raise NotSupported(f"cannot capture on {interface!r}: {exc}") from None
        # Packets that arrived before the filter was attached may sit in the
        # queue already: drain them.
        self.sock.setblocking(False)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        self.sock.setblocking(True)

    def set_filter(self, prog: list[tuple[int, int, int, int]]) -> None:
        """Attach a classic BPF program, in place of the one before (atomically:
        net/core/filter.c, sk_attach_filter; the kernel copies the program)."""
        # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } and
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        insns = b"".join(struct.pack("=HBBI", *i) for i in prog)
        buf = ctypes.create_string_buffer(insns)
        fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def frames(self, timeout: float) -> Iterator[tuple[float, bytes]]:
        """(kernel timestamp, frame) pairs arriving within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            # lo's MTU is 65536, so a frame can be 65,550 bytes: read up to the snaplen.
            data, anc, _flags, addr = self.sock.recvmsg(SNAPLEN, socket.CMSG_SPACE(16))
        except TimeoutError:
            return
        if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
            return  # lo hands each packet to taps twice: going out, and coming in
        t = time.time()
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack("qq", cdata[:16])
                t = sec + nsec / 1e9
        yield t, data

    def drops(self) -> int:
        """Packets the kernel dropped because we did not read fast enough."""
        try:
            stats = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return 0
        return int(struct.unpack("II", stats)[1])

    def close(self) -> None:
        self.sock.close()
