"""``tcplab capture``: frames decoded, the port filter, pcap files, and the command run for real.

Pure tests read tests/data/lo_frames.bin: the frames an AF_PACKET socket got
on the loopback of a private network namespace during a small scenario (see
tests/data/record_frames.py), with what tshark decoded from each of them in
lo_frames.json. The decoder must agree with tshark field by field, the BPF
program must accept exactly the TCP segments with the port at either end,
and tshark must read the pcap files tcplab writes.

Privileged tests run ``tcplab capture`` as root while a connection happens
and read its pcap file with tshark; ``tcplab experiment handshake`` puts the
packets, the state changes and the syscalls on one timeline. Without
CAP_NET_RAW, capture must say so (exit 4).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcplab.errors import NotSupported
from tcplab.kernel.packets import (
    PCAP_HEADER,
    Packet,
    PacketError,
    decode_frame,
    pcap_record,
    port_filter,
)
from tests.helpers import (
    Child,
    Spawner,
    instances,
    left_behind,
    start_plain_server,
    tcplab,
    tracefs_mounts,
)

DATA = Path(__file__).resolve().parent / "data"
META: dict[str, Any] = json.loads((DATA / "lo_frames.json").read_text())
P: int = META["port"]
Q: int = META["other_port"]


def _frames() -> list[bytes]:
    blob, out, off = (DATA / "lo_frames.bin").read_bytes(), [], 0
    for f in META["frames"]:
        out.append(blob[off:off + f["len"]])
        off += f["len"]
    assert off == len(blob)
    return out


FRAMES = _frames()
STAMPS: list[float] = [f["t"] for f in META["frames"]]
TSHARK: list[dict[str, str]] = [f["tshark"] for f in META["frames"]]
#: The fields record_frames.py asked tshark for.
FIELDS = (
    "eth.type", "ip.hdr_len", "ip.src", "ip.dst", "ip.proto", "ipv6.src", "ipv6.dst",
    "ipv6.nxt", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags",
    "tcp.window_size_value", "tcp.len", "tcp.hdr_len", "tcp.options.mss_val",
    "tcp.options.wscale.shift", "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr", "udp.srcport", "udp.dstport", "icmp.type", "icmpv6.type",
)


def is_tcp(d: dict[str, str]) -> bool:
    """A TCP segment, by tshark: TCP directly over IP (not inside an ICMP error)."""
    return d.get("ip.proto", d.get("ipv6.nxt")) == "6"


def ports(d: dict[str, str]) -> set[int]:
    return {int(d["tcp.srcport"]), int(d["tcp.dstport"])} if is_tcp(d) else set()


TCP = [i for i, d in enumerate(TSHARK) if is_tcp(d)]
OTHER = [i for i, d in enumerate(TSHARK) if not is_tcp(d)]

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def tshark(path: Path, *fields: str, occurrence: str = "f") -> list[list[str]]:
    """``tshark -r PATH -T fields -e ...``: one row per packet (first occurrence of each)."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|",
           "-E", f"occurrence={occurrence}"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [row.split("|") for row in r.stdout.splitlines()]


# -- pure: the recorded frames --------------------------------------------------------------


@pytest.mark.pure
def test_the_recording_is_what_record_frames_says() -> None:
    assert len(TCP) > 60 and len(OTHER) == 6  # 2 UDP + 1 ICMP error, each IPv4 and IPv6
    assert {d["eth.type"] for d in TSHARK} == {"0x0800", "0x86dd"}
    assert any(d.get("ip.hdr_len") == "24" for d in TSHARK)  # IP options: a 24-byte header
    icmp = {TSHARK[i].get("icmp.type", TSHARK[i].get("icmpv6.type")) for i in OTHER}
    assert icmp == {None, "3", "1"}  # UDP; port unreachable (ICMP 3, ICMPv6 1)


def _option_kind(text: str) -> int:
    names = {"nop": 1, "mss": 2, "wscale": 3, "sackOK": 4, "sack": 5, "TS": 8}
    word = text.split()[0]
    return int(word[4:]) if word.startswith("opt-") else names[word]


@pytest.mark.pure
def test_every_frame_decodes_as_tshark_decoded_it() -> None:
    for i, (frame, d) in enumerate(zip(FRAMES, TSHARK, strict=True)):
        pk = decode_frame(frame, STAMPS[i])
        if not is_tcp(d):
            assert pk is None, (i, d)
            continue
        assert pk is not None, (i, d)
        v6 = d["eth.type"] == "0x86dd"
        assert pk.t == STAMPS[i]
        assert pk.family == (socket.AF_INET6 if v6 else socket.AF_INET)
        assert (pk.src, pk.dst) == ((d["ipv6.src"], d["ipv6.dst"]) if v6
                                    else (d["ip.src"], d["ip.dst"]))
        assert (pk.sport, pk.dport) == (int(d["tcp.srcport"]), int(d["tcp.dstport"]))
        assert (pk.seq, pk.ack) == (int(d["tcp.seq_raw"]), int(d["tcp.ack_raw"]))
        assert pk.flags == int(d["tcp.flags"], 16) & 0xFF
        assert pk.win == int(d["tcp.window_size_value"])
        assert pk.length == int(d["tcp.len"])
        kinds = [int(k) for k in d.get("tcp.option_kind", "").split(",") if k and k != "0"]
        assert [_option_kind(o) for o in pk.options] == kinds, (i, pk.options)
        if "tcp.options.mss_val" in d:
            assert f"mss {d['tcp.options.mss_val']}" in pk.options
        if "tcp.options.wscale.shift" in d:
            assert f"wscale {d['tcp.options.wscale.shift']}" in pk.options
        if "tcp.options.timestamp.tsval" in d:
            assert (f"TS val {d['tcp.options.timestamp.tsval']} "
                    f"ecr {d['tcp.options.timestamp.tsecr']}") in pk.options


@pytest.mark.pure
def test_the_recorded_handshakes_are_sane() -> None:
    """Each SYN-ACK acknowledges its SYN's sequence number + 1, the ACK after it the SYN-ACK's;
    every segment of a connection is between its two ports."""
    pks = [p for f in FRAMES if (p := decode_frame(f)) is not None]
    syns = {(p.src, p.sport): p for p in pks if p.lab_word == "SYN"}
    synacks = [p for p in pks if p.lab_word == "SYN-ACK"]
    assert len(synacks) == 7 and len(syns) == 9  # 7 connections, 2 connects refused
    for sa in synacks:
        syn = syns[(sa.dst, sa.dport)]
        assert sa.ack == (syn.seq + 1) % 2**32
        ack = next(p for p in pks if (p.src, p.sport, p.dst, p.dport) == (
            syn.src, syn.sport, sa.src, sa.sport) and p.lab_word == "ACK")
        assert ack.ack == (sa.seq + 1) % 2**32
    assert all(P in (p.sport, p.dport) or Q in (p.sport, p.dport) for p in pks)


@pytest.mark.pure
def test_flag_text_and_lab_word_of_the_recorded_frames() -> None:
    expected = {  # tcpdump's letters; the lab's word
        (0x02, False): ("S", "SYN"), (0x12, False): ("S.", "SYN-ACK"),
        (0x10, False): (".", "ACK"), (0x18, True): ("P.", "data"),
        (0x10, True): (".", "data"), (0x11, False): ("F.", "FIN"),
        (0x14, False): ("R.", "RST"), (0xC2, False): ("SEW", "SYN"),
    }
    words: set[str] = set()
    others: set[int] = set()
    for i in TCP:
        pk = decode_frame(FRAMES[i])
        assert pk is not None
        key = (pk.flags, pk.length > 0)
        if key in expected:
            assert (pk.flag_text, pk.lab_word) == expected[key], (i, hex(pk.flags))
        else:
            others.add(pk.flags)
        words.add(pk.lab_word)
    assert others == {0x52}  # the ECN SYN-ACK: see the test below
    assert words == {"SYN", "SYN-ACK", "ACK", "data", "FIN", "RST"}
    v6_words = {p.lab_word for i in TCP if (p := decode_frame(FRAMES[i])) and ":" in p.src}
    assert {"SYN", "SYN-ACK", "ACK", "data", "FIN", "RST"} == v6_words


@pytest.mark.pure
@pytest.mark.parametrize(("flags", "length", "text", "word"), [
    (0x04, 0, "R", "RST"),
    (0x19, 0, "FP.", "FIN"),
    (0x19, 7, "FP.", "FIN + data"),
    (0x18, 3, "P.", "data"),
])
def test_flag_text_and_lab_word(flags: int, length: int, text: str, word: str) -> None:
    pk = Packet(t=0.0, family=socket.AF_INET, src="127.0.0.1", sport=1, dst="127.0.0.1",
                dport=2, flags=flags, seq=0, ack=0, win=0, length=length)
    assert (pk.flag_text, pk.lab_word) == (text, word)


@pytest.mark.pure
def test_flag_text_is_tcpdumps_for_ecn_and_rare_combinations() -> None:
    """tcpdump prints the flags in the order F S R P . U E W (checked with tcpdump 4.99 on
    these very flags); the help says capture shows tcpdump's flags. The first is recorded:
    the SYN-ACK of a connection that asked for ECN."""
    i = next(i for i in TCP if TSHARK[i]["tcp.flags"] == "0x0052")
    ecn = decode_frame(FRAMES[i])
    assert ecn is not None and ecn.lab_word == "SYN-ACK"
    tcpdump = {0x52: "S.E", 0x98: "P.W", 0x30: ".U", 0x1C: "RP.", 0x03: "FS", 0xC2: "SEW"}
    shown = {flags: Packet(t=0.0, family=socket.AF_INET, src="127.0.0.1", sport=1,
                           dst="127.0.0.1", dport=2, flags=flags, seq=0, ack=0, win=0,
                           length=0).flag_text for flags in tcpdump}
    assert ecn.flag_text == shown[0x52]
    assert shown == tcpdump


# -- pure: IPv6 extension headers, fragments --------------------------------------------------


def _v6_syn() -> bytes:
    return next(FRAMES[i] for i in TCP if TSHARK[i].get("ipv6.nxt") == "6"
                and TSHARK[i]["tcp.flags"] == "0x0002")


def _with_v6_header(frame: bytes, nxt: int, header: bytes) -> bytes:
    """The frame with an IPv6 extension header inserted before its TCP header."""
    ip6 = bytearray(frame[14:54])
    ip6[6] = nxt
    struct.pack_into("!H", ip6, 4, struct.unpack_from("!H", ip6, 4)[0] + len(header))
    return frame[:14] + bytes(ip6) + header + frame[54:]


@pytest.mark.pure
@pytest.mark.parametrize("kind", ["hop-by-hop", "destination", "fragment-first", "ah"])
def test_ipv6_extension_headers_are_stepped_over(kind: str) -> None:
    """RFC 8200: hop-by-hop and destination options count 8-octet units beyond the first;
    RFC 4302: AH's length counts 4-octet units minus 2 (24 bytes with a 96-bit ICV: 4)."""
    frame = _v6_syn()
    header = {
        "hop-by-hop": (0, bytes([6, 0, 1, 4, 0, 0, 0, 0])),  # PadN
        "destination": (60, bytes([6, 1]) + bytes([1, 12]) + bytes(12)),  # 16 bytes
        "fragment-first": (44, struct.pack("!BBHI", 6, 0, 1, 0x1234)),  # offset 0, M set
        "ah": (51, struct.pack("!BBHII", 6, 4, 0, 0x1234, 1) + bytes(12)),
    }[kind]
    want = decode_frame(frame)
    got = decode_frame(_with_v6_header(frame, *header))
    assert got is not None and want is not None
    assert (got.sport, got.dport, got.seq, got.flags, got.options) == (
        want.sport, want.dport, want.seq, want.flags, want.options)


@pytest.mark.pure
def test_later_fragments_are_not_segments() -> None:
    v4 = next(FRAMES[i] for i in TCP if TSHARK[i]["eth.type"] == "0x0800")
    later = bytearray(v4)
    struct.pack_into("!H", later, 20, 185)  # fragment offset 185 * 8
    assert decode_frame(bytes(later)) is None
    assert run_filter(port_filter(int(TSHARK[TCP[0]]["tcp.dstport"])), bytes(later)) is False
    first = bytearray(v4)
    struct.pack_into("!H", first, 20, 0x2000)  # more fragments, offset 0: the TCP header is here
    assert decode_frame(bytes(first)) is not None
    v6_later = _with_v6_header(_v6_syn(), 44, struct.pack("!BBHI", 6, 0, 185 << 3, 7))
    assert decode_frame(v6_later) is None


# -- pure: the BPF program -------------------------------------------------------------------

# Classic BPF opcodes, composed as include/uapi/linux/bpf_common.h does (class | size |
# mode, or class | op | source): written out here rather than taken from
# tcplab.kernel.packets, so the interpreter below checks the program's codes too.
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET = 0x00, 0x01, 0x05, 0x06
BPF_H, BPF_B = 0x08, 0x10
BPF_ABS, BPF_IND, BPF_MSH = 0x20, 0x40, 0xA0
BPF_JEQ, BPF_JSET, BPF_K = 0x10, 0x40, 0x00
LDH_ABS, LDB_ABS = BPF_LD | BPF_H | BPF_ABS, BPF_LD | BPF_B | BPF_ABS
LDH_IND, LDXB_MSH = BPF_LD | BPF_H | BPF_IND, BPF_LDX | BPF_B | BPF_MSH
JEQ_K, JSET_K, RET_K = BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JSET | BPF_K, BPF_RET | BPF_K


def run_filter(program: list[tuple[int, int, int, int]], frame: bytes) -> bool:
    """A tiny classic-BPF interpreter for the instructions port_filter uses, as the
    kernel runs them (net/core/filter.c): jumps count from the next instruction, a
    load out of the packet's bounds drops it. The test oracle for port_filter."""
    a = x = pc = 0
    while pc < len(program):
        code, jt, jf, k = program[pc]
        try:
            if code == LDH_ABS:
                a = struct.unpack_from("!H", frame, k)[0]
            elif code == LDB_ABS:
                a = frame[k]
            elif code == LDH_IND:
                a = struct.unpack_from("!H", frame, x + k)[0]
            elif code == LDXB_MSH:
                x = (frame[k] & 0xF) * 4
            elif code == JEQ_K:
                pc += jt if a == k else jf
            elif code == JSET_K:
                pc += jt if a & k else jf
            elif code == RET_K:
                return k != 0
            else:
                raise AssertionError(f"instruction {pc}: opcode {code:#x} not interpreted here")
        except (IndexError, struct.error):
            return False  # the kernel drops a packet when a load is out of bounds
        pc += 1
    return False


@pytest.mark.pure
def test_port_filter_on_the_recorded_frames() -> None:
    for i, (frame, d) in enumerate(zip(FRAMES, TSHARK, strict=True)):
        candidates = {P, Q, META["closed_port"], 1, 65535} | ports(d)
        if "udp.srcport" in d:
            candidates |= {int(d["udp.srcport"]), int(d["udp.dstport"])}
        for port in candidates:
            assert run_filter(port_filter(port), frame) is (port in ports(d)), (i, port, d)
    # both families, IP options included, pass for P
    accepted = [TSHARK[i] for i in TCP if run_filter(port_filter(P), FRAMES[i])]
    assert {d["eth.type"] for d in accepted} == {"0x0800", "0x86dd"}
    assert any(d.get("ip.hdr_len") == "24" for d in accepted)
    # UDP and ICMP carrying port P do not
    assert not any(run_filter(port_filter(P), FRAMES[i]) for i in OTHER)


@pytest.mark.pure
@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(FRAMES))), st.integers(1, 65535))
def test_port_filter_any_port(i: int, port: int) -> None:
    assert run_filter(port_filter(port), FRAMES[i]) is (port in ports(TSHARK[i]))


# -- pure: robustness ----------------------------------------------------------------------------


def _decodes_or_packet_error(frame: bytes) -> None:
    try:
        pk = decode_frame(frame)
    except PacketError:
        pass
    else:
        assert pk is None or isinstance(pk, Packet)
        if pk is not None:
            assert 0 <= pk.length <= len(frame) and 0 <= pk.sport <= 65535
    assert run_filter(port_filter(P), frame) in (True, False)


@pytest.mark.pure
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(frame: bytes) -> None:
    _decodes_or_packet_error(frame)


@pytest.mark.pure
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(FRAMES))),
       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
       st.integers(0, 3100))
def test_damaged_recorded_frames(i: int, changes: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(FRAMES[i])
    for pos, value in changes:
        if pos < len(frame):
            frame[pos] = value
    _decodes_or_packet_error(bytes(frame[:cut]))
    _decodes_or_packet_error(bytes(frame))


# -- pcap files, read by tshark ----------------------------------------------------------------


@pytest.mark.loopback  # a file and a program (tshark): not pure
@needs_tshark
def test_tshark_reads_the_pcap_tcplab_writes(tmp_path: Path) -> None:
    path = tmp_path / "frames.pcap"
    path.write_bytes(PCAP_HEADER + b"".join(pcap_record(t, f) for t, f in zip(
        STAMPS, FRAMES, strict=True)))
    rows = tshark(path, *FIELDS)
    assert len(rows) == len(FRAMES)
    for row, d in zip(rows, TSHARK, strict=True):
        assert {k: v for k, v in zip(FIELDS, row, strict=True) if v} == {
            k: v for k, v in d.items() if k != "tcp.option_kind"}
    times = tshark(path, "frame.time_epoch", "frame.len", "frame.cap_len")
    for (epoch, flen, caplen), t, f in zip(times, STAMPS, FRAMES, strict=True):
        assert abs(float(epoch) - t) <= 1e-6
        assert int(flen) == int(caplen) == len(f)


@pytest.mark.loopback  # a file and a program (tshark): not pure
@needs_tshark
@pytest.mark.parametrize(("t", "shown"), [(5.9999996, "6.000000"), (7.0000004, "7.000000"),
                                          (1700000000.25, "1700000000.250000")])
def test_pcap_timestamps_round_to_the_microsecond(t: float, shown: str, tmp_path: Path) -> None:
    path = tmp_path / "one.pcap"
    path.write_bytes(PCAP_HEADER + pcap_record(t, FRAMES[0]))
    (epoch,), = tshark(path, "frame.time_epoch")
    assert f"{float(epoch):.6f}" == shown


# -- running tcplab ----------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_RAW)")


def until(cond: Callable[[], bool], what: str, guard: float = 30) -> None:
    """Wait for cond (the guard is against a hang, not a time limit on the code)."""
    end = time.monotonic() + guard
    while not cond():
        assert time.monotonic() < end, f"no {what} within {guard} s"
        time.sleep(0.02)


def one_connection_captured(cap: Child, server: Child, host: str, port: int) -> int:
    """connect, one echo, client close, server close; then Ctrl-C once the last ACK is shown."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as c:
        c.connect((host, port))
        cport: int = c.getsockname()[1]
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
    server.wait_line(lambda x: x == "closed", "out")

    def fins() -> list[int]:
        return [n for n, line in enumerate(cap.out) if "[F." in line or '"F.' in line]

    until(lambda: len(fins()) == 2 and len(cap.out) > fins()[1] + 1, "last ACK")
    cap.proc.send_signal(signal.SIGINT)
    assert cap.finish() == 130, cap.err  # interrupted, after closing the file whole
    return cport


def packets_note(cap: Child) -> int:
    m = next(m for line in cap.err if (m := re.match(r"(\d+) packets", line)))
    return int(m[1])


def flag(value: str) -> bool:
    return value in ("1", "True")


@pytest.mark.privileged
@needs_root
@needs_tshark
def test_capture_writes_one_connection(spawn: Spawner, tmp_path: Path) -> None:
    server, port = start_plain_server(spawn, close_after=0.1)
    pcap = tmp_path / "F.pcap"
    cap = spawn(tcplab("capture", "--port", str(port), "--write", str(pcap)))
    cap.wait_line(lambda x: x.startswith("capturing"))
    cport = one_connection_captured(cap, server, "127.0.0.1", port)

    n = packets_note(cap)
    assert n == len(cap.out)  # one line per packet
    rows = tshark(pcap, "tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin")
    assert len(rows) == n
    flags = [tuple(flag(v) for v in row) for row in rows]
    assert flags.count((True, False, False)) == 1  # SYN
    assert flags.count((True, True, False)) == 1  # SYN-ACK
    assert sum(fin for _, _, fin in flags) == 2
    # each packet once: no outgoing copy next to the incoming one
    ids = tshark(pcap, "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags",
                 "tcp.len")
    assert len(set(map(tuple, ids))) == len(ids) == n
    assert {(int(r[0]), int(r[1])) for r in ids} == {(cport, port), (port, cport)}
    # the lines say it as tcpdump does, with the lab's words
    assert re.search(rf"IP 127\.0\.0\.1\.{cport} > 127\.0\.0\.1\.{port}: Flags \[S\], "
                     r"seq \d+, win \d+, options \[mss \d+.*\], length 0\s+SYN$", cap.out[0])
    assert cap.out[1].endswith("SYN-ACK")


@pytest.mark.privileged
@needs_root
@needs_tshark
def test_capture_ipv6_json(spawn: Spawner, tmp_path: Path) -> None:
    server, port = start_plain_server(spawn, host="::1", close_after=0.1)
    pcap = tmp_path / "v6.pcap"
    cap = spawn(tcplab("capture", "--port", str(port), "--json", "--write", str(pcap)))
    cap.wait_line(lambda x: x.startswith("capturing"))
    one_connection_captured(cap, server, "::1", port)
    lines = cap.json()
    assert len(lines) == packets_note(cap) == len(tshark(pcap, "frame.number"))
    words = [x["word"] for x in lines]
    assert all(x["src"] == x["dst"] == "::1" and port in (x["sport"], x["dport"])
               for x in lines)
    assert words[:2] == ["SYN", "SYN-ACK"] and words.count("FIN") == 2
    assert words.count("data") == 2  # the message and its echo
    assert [x["flags"] for x in lines][:2] == ["S", "S."]
    assert {"t", "flags", "word", "seq", "ack", "win", "length", "options"} <= set(lines[0])
    assert tshark(pcap, "ipv6.src")[0] == ["::1"]


@pytest.mark.privileged
@needs_root
@needs_tshark
def test_capture_keeps_whole_64k_frames(spawn: Spawner, tmp_path: Path) -> None:
    """lo's MTU is 65,536: with its Ethernet header a frame is up to 65,550 bytes. Every frame
    must reach the pcap file whole, and every length shown must be the segment's."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    pcap = tmp_path / "bulk.pcap"
    cap = spawn(tcplab("capture", "--port", str(port), "--json", "--write", str(pcap)))

    def sink() -> None:
        conn, _ = lst.accept()
        with conn:
            while conn.recv(1 << 20):
                pass

    try:
        cap.wait_line(lambda x: x.startswith("capturing"))
        reader = threading.Thread(target=sink)
        reader.start()
        with socket.create_connection(("127.0.0.1", port)) as c:
            for _ in range(16):
                c.sendall(b"x" * 65483)  # one full-sized segment on lo (MSS 65,483)
                time.sleep(0.02)
        reader.join(timeout=30)
    finally:
        lst.close()
    time.sleep(0.3)
    cap.proc.send_signal(signal.SIGINT)
    assert cap.finish() == 130, cap.err
    rows = tshark(pcap, "frame.len", "ip.len", "ip.hdr_len", "tcp.hdr_len")
    if not any(int(r[1]) + 14 > 65536 for r in rows):
        pytest.skip("no frame above 65,536 bytes on lo here")
    assert [int(r[0]) for r in rows] == [int(r[1]) + 14 for r in rows], "frames cut short"
    shown = [x["length"] for x in cap.json()]
    assert shown == [int(r[1]) - int(r[2]) - int(r[3]) for r in rows]


# -- without CAP_NET_RAW -------------------------------------------------------------------------

PR_CAPBSET_DROP, CAP_NET_RAW = 24, 13


def drop_net_raw() -> None:
    """In the child, before exec: root keeps every capability but CAP_NET_RAW."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def without_net_raw() -> dict[str, Any]:
    return {"preexec_fn": drop_net_raw} if os.geteuid() == 0 else {}


@pytest.mark.loopback
def test_capture_without_cap_net_raw_says_so(spawn: Spawner) -> None:
    run = spawn(tcplab("capture", "--port", "8080", "--duration", "1"), **without_net_raw())
    assert run.finish() == 4, run.err
    text = "\n".join(run.err)
    assert "CAP_NET_RAW" in text and "Traceback" not in text


@pytest.mark.loopback
def test_capture_without_cap_net_raw_writes_no_file(spawn: Spawner, tmp_path: Path) -> None:
    pcap = tmp_path / "nothing.pcap"
    run = spawn(tcplab("capture", "--port", "8080", "--write", str(pcap)), **without_net_raw())
    assert run.finish() == 4, run.err
    assert not pcap.exists(), f"a {pcap.stat().st_size}-byte pcap file was left behind"


@pytest.mark.loopback
@pytest.mark.parametrize("name", ["lo0", "nosuch0"])
def test_capture_on_a_missing_interface_says_so(name: str, spawn: Spawner,
                                                tmp_path: Path) -> None:
    """Said at once (before the privilege question, no file made), with the interfaces
    there are; for macOS's lo0, Linux's name for loopback."""
    pcap = tmp_path / "none.pcap"
    run = spawn(tcplab("capture", "--interface", name, "--write", str(pcap)),
                **without_net_raw())
    assert run.finish() == NotSupported.exit_code, run.err
    text = "\n".join(run.err)
    assert f"cannot capture on '{name}': No such device" in text
    assert "lo" in re.findall(r"interfaces here: (.*)", text)[0].split(", ")
    assert ("on Linux the loopback interface is lo" in text) == (name == "lo0")
    assert "Traceback" not in text and not pcap.exists()


@pytest.mark.loopback
def test_capture_hint_never_gives_raw_sockets_to_a_shared_python(spawn: Spawner) -> None:
    """The hint names the interpreter that would get CAP_NET_RAW, resolved, and what that
    grants; when it is shared (a venv's python is usually a link to it), it says not to."""
    run = spawn(tcplab("capture", "--port", "8080", "--duration", "1"), **without_net_raw())
    assert run.finish() == 4, run.err
    hint = next(x for x in run.err if x.startswith("hint:"))
    exe = os.path.realpath(sys.executable)
    assert "root" in hint and "which python3" not in hint
    assert exe in hint and "every script" in hint
    own = sys.prefix != sys.base_prefix and exe.startswith(os.path.realpath(sys.prefix) + "/")
    assert (f"Do not setcap {exe}" in hint) == (not own), hint


@pytest.mark.pure
@pytest.mark.parametrize("layout", ["venv-copies", "venv-link", "no-venv"])
def test_capture_hint_by_interpreter(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """setcap is offered only on an interpreter the virtual environment owns (venv
    --copies); a linked or system interpreter is named with a warning instead."""
    from tcplab.observe.capture import raw_socket_hint

    venv, shared = "/nonexistent/venv", "/nonexistent/python/bin/python3.11"
    exe = {"venv-copies": f"{venv}/bin/python3", "venv-link": shared, "no-venv": shared}[layout]
    monkeypatch.setattr(sys, "executable", exe)  # paths that do not exist resolve to themselves
    monkeypatch.setattr(sys, "prefix", "/nonexistent/python" if layout == "no-venv" else venv)
    monkeypatch.setattr(sys, "base_prefix", "/nonexistent/python")
    hint = raw_socket_hint()
    assert hint.startswith("run as root")
    if layout == "venv-copies":
        assert f"sudo setcap cap_net_raw+ep {exe} " in hint and "every script" in hint
    else:
        assert f"Do not setcap {shared}:" in hint and "every script" in hint
        assert ("link to" in hint) == (layout == "venv-link")


# -- the handshake experiment ------------------------------------------------------------------


@pytest.mark.privileged
@needs_root
def test_experiment_handshake(spawn: Spawner) -> None:
    mounts = tracefs_mounts()
    before = instances()
    run = spawn(tcplab("experiment", "handshake", "--json"))
    assert run.finish(guard=120) == 0, run.err
    result = json.loads("\n".join(run.out))
    facts = result["facts"]
    assert result["ok"] is True, result["fact"]
    assert (facts["syn"], facts["syn_ack"], facts["fin"]) == (2, 2, 2)
    assert facts["rst"] >= 1 and facts["syscalls"] > 0
    times = [e["t"] for e in result["events"]]
    assert times and times == sorted(times)
    kinds = {e["what"].split()[0] for e in result["events"]}
    assert {"packet", "state", "syscall"} <= kinds
    assert left_behind(before=before) == [], "trace instances left behind"
    assert tracefs_mounts() == mounts
