"""Re-record the loopback frames that tests/test_capture.py decodes.

    sudo python tests/data/record_frames.py

Needs root (AF_PACKET). It re-runs itself under ``unshare --net`` so that
``lo`` carries the scenario's packets and nothing else, brings ``lo`` up,
opens an AF_PACKET socket on it (no filter, a large receive buffer), runs
the scenario and keeps every frame the kernel delivered except the outgoing
copies (loopback shows each packet twice). It uses nothing from tcplab.

The scenario, on port P (the port a test filters on) and Q (another one):

* IPv4 on P: handshake, "hello" and its echo, one 3,000-byte send, the
  client closes first, then the server;
* IPv4 on P with IP options (four bytes: NOP NOP NOP EOL, so a 24-byte IPv4
  header): handshake, "options", both close;
* IPv4 on P closed with SO_LINGER 0 (an RST with ACK);
* IPv4 on P with ECN asked for (net.ipv4.tcp_ecn=1 in the namespace): the SYN
  carries ECE and CWR, the SYN-ACK ECE;
* IPv6 on [::1]:P: handshake, "hello6" and its echo, both close;
* IPv4 and IPv6 on Q: handshake, "other", both close;
* a connect() to P after its listener closed: a SYN and the RST refusing it;
* UDP datagrams from port P to P (itself) and to a closed port, IPv4 and
  IPv6: UDP carrying port P, and the ICMP / ICMPv6 port-unreachable errors.

Saved:

==============  ============================================================
lo_frames.bin   the frames, concatenated, as recvmsg() returned them
lo_frames.json  P, Q, the kernel, and per frame: its length, its kernel
                timestamp, and what tshark decoded from it (first
                occurrence of each field: the outer headers of an ICMP
                error), read from a pcap file this script wrote itself
==============  ============================================================
"""

from __future__ import annotations

import json
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent
P, Q, CLOSED = 8080, 9090, 9999
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33

#: tshark fields recorded per frame (first occurrence).
FIELDS = (
    "eth.type", "ip.hdr_len", "ip.src", "ip.dst", "ip.proto", "ipv6.src", "ipv6.dst",
    "ipv6.nxt", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags",
    "tcp.window_size_value", "tcp.len", "tcp.hdr_len", "tcp.options.mss_val",
    "tcp.options.wscale.shift", "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr", "udp.srcport", "udp.dstport", "icmp.type", "icmpv6.type",
)


def echo_server(lst: socket.socket) -> None:
    """Accept one connection, echo until EOF, then close (the passive close)."""
    conn, _ = lst.accept()
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except ConnectionResetError:  # the SO_LINGER 0 close
            return
        time.sleep(0.05)


def connection(host: str, port: int, payloads: list[bytes], ip_options: bytes = b"",
               linger0: bool = False) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = socket.socket(family)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, port))
    lst.listen(1)
    server = threading.Thread(target=echo_server, args=(lst,))
    server.start()
    c = socket.socket(family)
    if ip_options:
        c.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
    c.connect((host, port))
    for data in payloads:
        c.sendall(data)
        got = b""
        while len(got) < len(data):
            got += c.recv(65536)
        time.sleep(0.05)
    if linger0:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    server.join()
    lst.close()
    time.sleep(0.05)


def refused(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as c:
        assert c.connect_ex((host, port)) != 0
    time.sleep(0.05)


def udp(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.bind((host, P))
        u.sendto(b"to myself", (host, P))
        u.recv(100)
        u.sendto(b"to nobody", (host, CLOSED))
        time.sleep(0.05)


def ecn(value: str) -> None:
    """net.ipv4.tcp_ecn of the private namespace (1: ask for ECN; 2, the default: accept it)."""
    Path("/proc/sys/net/ipv4/tcp_ecn").write_text(value)


def scenario() -> None:
    connection("127.0.0.1", P, [b"hello", b"x" * 3000])
    connection("127.0.0.1", P, [b"options"], ip_options=b"\x01\x01\x01\x00")
    connection("127.0.0.1", P, [b"reset"], linger0=True)
    ecn("1")
    connection("127.0.0.1", P, [b"ecn"])
    ecn("2")
    connection("::1", P, [b"hello6"])
    connection("127.0.0.1", Q, [b"other"])
    connection("::1", Q, [b"other6"])
    refused("127.0.0.1", P)
    refused("::1", P)
    udp("127.0.0.1")
    udp("::1")


def capture() -> list[tuple[float, bytes]]:
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sniff.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sniff.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sniff.bind(("lo", 0))
    scenario()
    time.sleep(0.2)
    frames: list[tuple[float, bytes]] = []
    while select.select([sniff], [], [], 0.2)[0]:
        data, anc, flags, addr = sniff.recvmsg(1 << 18, socket.CMSG_SPACE(16))
        assert not flags & socket.MSG_TRUNC
        if addr[2] == PACKET_OUTGOING:
            continue
        (_, _, stamp), = anc
        sec, nsec = struct.unpack("qq", stamp[:16])
        frames.append((sec + nsec / 1e9, data))
    sniff.close()
    return frames


def tshark(frames: list[tuple[float, bytes]]) -> list[dict[str, str]]:
    """tshark's decoding of each frame, from a pcap file written here (not by tcplab)."""
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for t, data in frames:
            sec = int(t)
            f.write(struct.pack("=IIII", sec, int((t - sec) * 1e6), len(data), len(data)) + data)
        f.flush()
        cmd = ["tshark", "-r", f.name, "-T", "fields", "-E", "separator=|",
               "-E", "occurrence=f"]
        for name in FIELDS:
            cmd += ["-e", name]
        rows = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        kinds = subprocess.run(["tshark", "-r", f.name, "-T", "fields", "-e", "tcp.option_kind"],
                               capture_output=True, text=True, check=True).stdout
    out = []
    for row, kind in zip(rows.splitlines(), kinds.splitlines(), strict=True):
        d = {k: v for k, v in zip(FIELDS, row.split("|"), strict=True) if v}
        if kind:
            d["tcp.option_kind"] = kind
        out.append(d)
    assert len(out) == len(frames)
    return out


def record() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    frames = capture()
    decoded = tshark(frames)
    (DATA / "lo_frames.bin").write_bytes(b"".join(data for _, data in frames))
    meta = {
        "port": P, "other_port": Q, "closed_port": CLOSED,
        "kernel": platform.release(),
        "recorded_by": "tests/data/record_frames.py",
        "frames": [{"len": len(data), "t": round(t, 9), "tshark": d}
                   for (t, data), d in zip(frames, decoded, strict=True)],
    }
    (DATA / "lo_frames.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(frames)} frames, {sum(len(d) for _, d in frames)} bytes")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("record_frames.py needs root (AF_PACKET, a private network namespace)")
    if sys.argv[1:] != ["--inside"]:
        os.execvp("unshare", ["unshare", "--net", sys.executable, __file__, "--inside"])
    record()


if __name__ == "__main__":
    main()
