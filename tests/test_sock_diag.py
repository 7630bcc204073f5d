"""The decoders of the observation core, on kernel output recorded on a real machine.

tests/data holds, from one moment of the lab's scenario in a private network
namespace (see tests/data/record.py): the raw NETLINK_SOCK_DIAG replies of
all-states dumps (AF_INET, AF_INET6, and with the kernel's port filter),
/proc/net/tcp and tcp6, and what ``ss -Htan`` counted. Decoding must give
ss's numbers, whole or message by message or datagram by datagram, and the
/proc text must describe the same sockets as the netlink dump.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import signal
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcplab.kernel import proc_net_tcp, procfs, records, sock_diag, tcp_states
from tcplab.kernel.records import TcpSocket
from tcplab.kernel.sock_diag import DecodeError, NetlinkError

pytestmark = pytest.mark.pure

DATA = Path(__file__).resolve().parent / "data"
META: dict[str, Any] = json.loads((DATA / "recorded.json").read_text())
P: int = META["port"]  # the lab's port: every state
Q: int = META["syn_port"]  # a second listener with a full accept queue
N_STATES = tcp_states.NEW_SYN_RECV + 1
BYTEORDER = META["byteorder"]

#: Every recorded dump, with the family it was asked for.
DUMPS = {
    "lab_inet.bin": socket.AF_INET,
    "lab_inet6.bin": socket.AF_INET6,
    "lab_inet_port.bin": socket.AF_INET,
    "lab_inet6_port.bin": socket.AF_INET6,
    "timewait_inet.bin": socket.AF_INET,
}


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def datagrams(name: str) -> list[bytes]:
    """The dump as recv() returned it, one datagram each."""
    buf, out, off = load(name), [], 0
    for size in META["datagrams"][name]:
        out.append(buf[off : off + size])
        off += size
    assert off == len(buf)
    return out


def boundaries(buf: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, type) of each netlink message: our own walk, not the code under test."""
    out, off = [], 0
    while off < len(buf):
        length, mtype = struct.unpack_from("=IH", buf, off)
        assert length >= 16
        out.append((off, length, mtype))
        off += (length + 3) & ~3
    assert off == len(buf)
    return out


def counted(buf: bytes | memoryview) -> list[int]:
    counts = [0] * N_STATES
    assert sock_diag.count_states(buf, counts) is True
    return counts


def decoded(buf: bytes | memoryview) -> list[TcpSocket]:
    out: list[TcpSocket] = []
    assert records.decode_sockets(buf, out) is True
    return out


def folded(counts: list[int]) -> dict[str, int]:
    return tcp_states.fold(counts)


def by_state(socks: list[TcpSocket]) -> dict[str, int]:
    counts = [0] * N_STATES
    for s in socks:
        counts[s.state] += 1
    return folded(counts)


def lab_sockets() -> list[TcpSocket]:
    return decoded(load("lab_inet.bin")) + decoded(load("lab_inet6.bin"))


@contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
    """Fail instead of hanging (a guard, not a speed assertion)."""

    def alarm(signum: int, frame: Any) -> None:
        raise AssertionError(f"no answer within {seconds} s: the decoder hangs")

    old = signal.signal(signal.SIGALRM, alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:  # pytest-timeout's own alarm (pyproject): put it back, less the time spent
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started),
                                                     0.001))


# -- the recorded dumps, decoded ------------------------------------------------------------


def test_recorded_data_is_what_record_py_says() -> None:
    """Guards the fixtures themselves: whole messages ending in NLMSG_DONE, several
    datagrams for the TIME_WAIT dump, and the scenario ss saw."""
    for name in DUMPS:
        msgs = boundaries(load(name))
        assert msgs[-1][2] == sock_diag.NLMSG_DONE, name
        assert all(t == sock_diag.SOCK_DIAG_BY_FAMILY for _, _, t in msgs[:-1]), name
    assert len(datagrams("timewait_inet.bin")) >= 3
    assert META["ss_port"] == META["expected"][str(P)]
    assert META["ss_syn_port"] == META["expected"][str(Q)]


@pytest.mark.parametrize("name", list(DUMPS))
def test_whole_and_message_by_message_agree(name: str) -> None:
    buf = load(name)
    whole_counts, whole_socks = counted(buf), decoded(buf)
    assert sum(whole_counts) == len(whole_socks) > 0

    counts = [0] * N_STATES
    socks: list[TcpSocket] = []
    view = memoryview(buf)
    msgs = boundaries(buf)
    for i, (off, length, _) in enumerate(msgs):
        last = i == len(msgs) - 1
        # each message alone, the way a reader that splits recv() buffers would feed it
        assert sock_diag.count_states(view[off:], counts, end=length) is last
        assert records.decode_sockets(view[off:], socks, end=length) is last
    assert counts == whole_counts
    assert socks == whole_socks


@pytest.mark.parametrize("name", list(DUMPS))
def test_datagram_by_datagram_as_recv_returns_them(name: str) -> None:
    parts = datagrams(name)
    counts = [0] * N_STATES
    socks: list[TcpSocket] = []
    # a recv buffer reused for every datagram, as SocketTable does
    buf = bytearray(64 * 1024)
    for i, part in enumerate(parts):
        buf[: len(part)] = part
        last = i == len(parts) - 1
        assert sock_diag.count_states(buf, counts, end=len(part)) is last
        assert records.decode_sockets(buf, socks, end=len(part)) is last
    assert counts == counted(load(name))
    assert socks == decoded(load(name))


def test_counts_equal_what_ss_counted() -> None:
    counts = [0] * N_STATES
    for name in ("lab_inet.bin", "lab_inet6.bin"):
        assert sock_diag.count_states(load(name), counts) is True
    assert folded(counts) == META["ss"]
    # The many-datagram dump: 450 TIME_WAIT sockets more, ss -4 at that moment.
    tw = folded(counted(load("timewait_inet.bin")))
    assert tw == META["ss4_timewait"]
    assert tw["TIME_WAIT"] >= 450


def test_either_port_is_one_kernel_filtered_dump_per_family() -> None:
    """tcplab's "local or remote port P": the kernel runs the filter program
    "sport = P or dport = P" and the dumps equal ss '( sport = :P or dport = :P )'."""
    counts = [0] * N_STATES
    for family in ("inet", "inet6"):
        assert sock_diag.count_states(load(f"lab_{family}_port.bin"), counts) is True
    assert folded(counts) == META["ss_port"]
    for family in ("inet", "inet6"):
        assert all(P in (s.sport, s.dport) for s in decoded(load(f"lab_{family}_port.bin")))
    # and the same selection made here, from the unfiltered dumps
    socks = lab_sockets()
    assert by_state([s for s in socks if P in (s.sport, s.dport)]) == META["ss_port"]
    assert by_state([s for s in socks if Q in (s.sport, s.dport)]) == META["ss_syn_port"]


def run_filter(program: bytes, sport: int, dport: int) -> bool:
    """inet_diag_bc_run (net/ipv4/inet_diag.c) for the ops port_filter uses."""
    at, left = 0, len(program)
    while left > 0:
        code, yes, no = sock_diag.BC_OP.unpack_from(program, at)
        if code == sock_diag.INET_DIAG_BC_JMP:
            hit = False
        else:
            port = sock_diag.BC_OP.unpack_from(program, at + 4)[2]
            hit = (sport if code == sock_diag.INET_DIAG_BC_S_EQ else dport) == port
        step = yes if hit else no
        at, left = at + step, left - step
    return left == 0


def audit(program: bytes) -> bool:
    """inet_diag_bc_audit's rules for these ops: the yes-chain must end exactly
    at the end, and every no-target must be on the yes-chain (valid_cc)."""
    def on_chain(cc: int) -> bool:
        at, left = 0, len(program)
        while left >= 0:
            if cc > left:
                return False
            if cc == left:
                return True
            yes = sock_diag.BC_OP.unpack_from(program, at)[1]
            if yes < 4 or yes & 3:
                return False
            at, left = at + yes, left - yes
        return False

    at, left = 0, len(program)
    while left > 0:
        code, yes, no = sock_diag.BC_OP.unpack_from(program, at)
        size = 4 if code == sock_diag.INET_DIAG_BC_JMP else 8
        if no < size or no > left + 4 or no & 3 or (no < left and not on_chain(left - no)):
            return False
        if yes < size or yes > left + 4 or yes & 3:
            return False
        at, left = at + yes, left - yes
    return left == 0


@given(st.integers(1, 65535), st.integers(0, 65535), st.integers(0, 65535))
def test_port_filter_program_accepts_exactly_either_port(port: int, sport: int,
                                                         dport: int) -> None:
    program = sock_diag.port_filter(port)
    assert audit(program)  # the kernel would refuse it with EINVAL otherwise
    assert run_filter(program, sport, dport) == (port in (sport, dport))


def test_request_carries_the_filter_as_an_attribute() -> None:
    plain = sock_diag.build_request(2, tcp_states.ALL_STATES_MASK)
    filtered = sock_diag.build_request(2, tcp_states.ALL_STATES_MASK, 8080)
    program = sock_diag.port_filter(8080)
    assert filtered[: len(plain)][4:] == plain[4:]  # same header but for the length
    assert filtered[len(plain):] == sock_diag.NLATTR.pack(4 + len(program), 1) + program
    assert sock_diag.NLMSGHDR.unpack_from(filtered)[0] == len(filtered)


def test_decoded_fields_are_the_scenario() -> None:
    v4, v6 = decoded(load("lab_inet.bin")), decoded(load("lab_inet6.bin"))
    assert {s.family for s in v4} == {socket.AF_INET}
    assert {s.family for s in v6} == {socket.AF_INET6}
    socks = v4 + v6
    cookies = [s.cookie for s in socks]
    assert all(cookies) and len(set(cookies)) == len(cookies)
    for s in socks:
        src, dst = ipaddress.ip_address(s.src), ipaddress.ip_address(s.dst)
        assert src.is_loopback, s
        assert 1 <= s.sport <= 65535, s
        state = tcp_states.name(s.state)
        if state == "LISTEN":
            assert dst.is_unspecified and s.dport == 0, s
            assert s.sport in (P, Q) and s.inode > 0, s
            continue
        assert dst.is_loopback and 1 <= s.dport <= 65535, s
        assert P in (s.sport, s.dport) or Q in (s.sport, s.dport), s
        if state == "TIME_WAIT":
            # the client closed first: the countdown from 60 s sits on its end, no owner
            assert s.timer == 3 and 0 < s.expires_ms <= 60_000, s
            assert s.inode == 0 and s.dport == P, s
        elif state == "FIN_WAIT2":
            assert s.inode == 0 and s.dport == P, s  # orphaned: the kernel holds it
        elif state == "CLOSE_WAIT":
            assert s.sport == P and s.inode > 0, s  # the server's end, never closed
        elif state == "SYN_SENT":
            assert s.dport in (P, Q) and s.timer == 1 and s.inode > 0, s  # SYN retransmit
        else:
            assert state == "ESTABLISHED", s
        if s.inode:
            assert s.uid == META["uid"], s
    listeners = {(s.family, s.sport): s for s in socks if s.state == tcp_states.LISTEN}
    # Recv-Q of a listener: its accept queue, one connection never accepted on P and Q
    assert listeners[(socket.AF_INET, P)].rqueue == 1
    assert listeners[(socket.AF_INET, Q)].rqueue == 1
    assert listeners[(socket.AF_INET6, P)].rqueue == 0
    tw = [s for s in decoded(load("timewait_inet.bin"))
          if s.dport == META["timewait_port"]]
    assert len(tw) == 450
    assert all(s.state == tcp_states.TIME_WAIT and s.timer == 3 and s.inode == 0
               and 0 < s.expires_ms <= 60_000 for s in tw)


# The test oracle: the messages the kernel would send, laid out from the headers
# (include/uapi/linux/netlink.h, inet_diag.h) rather than from sock_diag's own structs.
NLMSG_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
DIAG_MSG = struct.Struct("=BBBB" "2s2s16s16s" "III" "IIIII")  # inet_diag_msg: 72 bytes
NLM_F_MULTI = 2  # every message of a dump reply carries it


def encode_reply(sock: TcpSocket, seq: int = 1,
                 mtype: int = sock_diag.SOCK_DIAG_BY_FAMILY) -> bytes:
    """The inet_diag_msg the kernel would send for ``sock``: ports and addresses in
    network order, the rest in the host's; cookie as two u32, low word first."""
    fam = sock.family
    body = DIAG_MSG.pack(
        fam, sock.state, sock.timer, sock.retrans,
        sock.sport.to_bytes(2, "big"), sock.dport.to_bytes(2, "big"),
        socket.inet_pton(fam, sock.src).ljust(16, b"\0"),
        socket.inet_pton(fam, sock.dst).ljust(16, b"\0"),
        0, sock.cookie & 0xFFFFFFFF, sock.cookie >> 32,
        sock.expires_ms, sock.rqueue, sock.wqueue, sock.uid, sock.inode)
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), mtype, NLM_F_MULTI, seq,
                             0) + body


def encode_done(seq: int = 1) -> bytes:
    """The end of a dump: NLMSG_DONE with a 0 errno (netlink_dump_done)."""
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + 4, sock_diag.NLMSG_DONE, NLM_F_MULTI,
                             seq, 0) + struct.pack("=i", 0)


def test_encode_reply_round_trips_the_recorded_sockets() -> None:
    socks = lab_sockets()
    buf = b"".join(encode_reply(s, seq=7) for s in socks) + encode_done(7)
    assert decoded(buf) == socks
    assert folded(counted(buf)) == META["ss"]


def _addr(family: int) -> st.SearchStrategy[str]:
    size = 4 if family == socket.AF_INET else 16
    return st.binary(min_size=size, max_size=size).map(lambda b: socket.inet_ntop(family, b))


def _sockets(family: int) -> st.SearchStrategy[TcpSocket]:
    u32 = st.integers(0, 2**32 - 1)
    return st.builds(
        TcpSocket, family=st.just(family), state=st.integers(1, tcp_states.NEW_SYN_RECV),
        src=_addr(family), sport=st.integers(0, 65535), dst=_addr(family),
        dport=st.integers(0, 65535), timer=st.integers(0, 4), expires_ms=u32,
        retrans=st.integers(0, 255), rqueue=u32, wqueue=u32, uid=u32, inode=u32,
        cookie=st.integers(0, 2**64 - 1),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_sockets(socket.AF_INET), _sockets(socket.AF_INET6)), max_size=20))
def test_encode_reply_round_trips_any_socket(socks: list[TcpSocket]) -> None:
    buf = b"".join(encode_reply(s) for s in socks) + encode_done()
    assert decoded(buf) == socks
    assert counted(buf) == [sum(1 for s in socks if s.state == n) for n in range(N_STATES)]


# -- errors ---------------------------------------------------------------------------------


def nlmsg_error(code: int, seq: int = 1) -> bytes:
    """NLMSG_ERROR: a negative errno (0 is an ACK), then the request's header."""
    request_header = sock_diag.NLMSGHDR.pack(72, sock_diag.SOCK_DIAG_BY_FAMILY, 0x301, seq, 0)
    body = struct.pack("=i", -code) + request_header
    return sock_diag.NLMSGHDR.pack(16 + len(body), sock_diag.NLMSG_ERROR, 0, seq, 0) + body


def both(buf: bytes) -> None:
    """Run both decoders on buf; a test expects them to raise."""
    sock_diag.count_states(buf, [0] * N_STATES)
    records.decode_sockets(buf, [])


def test_recorded_nlmsg_error_raises_netlink_error_with_its_errno() -> None:
    # The kernel's answer to a request for address family 99.
    buf = load("error_einval.bin")
    with pytest.raises(NetlinkError) as exc:
        sock_diag.count_states(buf, [0] * N_STATES)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(NetlinkError) as exc:
        records.decode_sockets(buf, [])
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOENT, errno.EACCES, errno.EAFNOSUPPORT])
def test_nlmsg_error_raises_netlink_error_with_its_errno(code: int) -> None:
    # after some sockets: an error ends the dump whatever came before
    lab = load("lab_inet.bin")
    buf = lab[: boundaries(lab)[2][0]] + nlmsg_error(code)
    for decode in (lambda b: sock_diag.count_states(b, [0] * N_STATES),
                   lambda b: records.decode_sockets(b, [])):
        with pytest.raises(NetlinkError) as exc:
            decode(buf)
        assert exc.value.errno == code
        assert isinstance(exc.value, OSError)


def test_an_ack_is_not_an_error() -> None:
    buf = nlmsg_error(0) + load("lab_inet.bin")
    assert folded(counted(buf)) == folded(counted(load("lab_inet.bin")))


def test_an_error_inside_a_dump_raises_netlink_error() -> None:
    """The kernel reports an error that happens during a dump in the NLMSG_DONE
    message's payload (netlink_dump: dump_done_errno); ss prints it. Recorded: a
    request for IP protocol 200 has no diag handler, and the dump ends in
    NLMSG_DONE carrying -ENOENT. Taking it for a complete, empty dump would
    report zero sockets where the kernel said it could not list them."""
    buf = load("done_enoent.bin")
    assert boundaries(buf) == [(0, 20, sock_diag.NLMSG_DONE)]
    assert struct.unpack_from("=i", buf, 16)[0] == -errno.ENOENT
    for decode in (lambda b: sock_diag.count_states(b, [0] * N_STATES),
                   lambda b: records.decode_sockets(b, [])):
        with pytest.raises(NetlinkError) as exc:
            decode(buf)
        assert exc.value.errno == errno.ENOENT


def test_every_truncation_is_a_decode_error_or_an_unfinished_dump() -> None:
    buf = load("lab_inet.bin")
    ends = {off + ((length + 3) & ~3) for off, length, _ in boundaries(buf)}
    for cut in range(1, len(buf)):
        for decode in (lambda b: sock_diag.count_states(b, [0] * N_STATES),
                       lambda b: records.decode_sockets(b, [])):
            if cut in ends:
                assert decode(buf[:cut]) is False  # whole messages, no NLMSG_DONE yet
            else:
                with pytest.raises(DecodeError):
                    decode(buf[:cut])


def _reply_header(length: int, mtype: int = sock_diag.SOCK_DIAG_BY_FAMILY) -> bytes:
    return sock_diag.NLMSGHDR.pack(length, mtype, 2, 1, 0)


@pytest.mark.parametrize("buf", [
    pytest.param(_reply_header(0), id="length 0 (would loop forever)"),
    pytest.param(_reply_header(8) + bytes(8), id="length below the header"),
    pytest.param(_reply_header(40) + bytes(24), id="short inet_diag_msg"),
    pytest.param(_reply_header(4096) + bytes(72), id="length beyond the buffer"),
    pytest.param(_reply_header(16, sock_diag.NLMSG_OVERRUN), id="NLMSG_OVERRUN"),
    pytest.param(_reply_header(16, sock_diag.NLMSG_ERROR), id="NLMSG_ERROR without errno"),
    pytest.param(b"\x10\x00\x00", id="three bytes"),
])
def test_garbage_is_a_decode_error(buf: bytes) -> None:
    with hang_guard(10):
        with pytest.raises(DecodeError):
            sock_diag.count_states(buf, [0] * N_STATES)
        with pytest.raises(DecodeError):
            records.decode_sockets(buf, [])


def test_unknown_state_and_family_are_decode_errors() -> None:
    lab = load("lab_inet.bin")
    one = lab[: boundaries(lab)[1][0]]
    bad_state = bytearray(one)
    bad_state[sock_diag.OFF_STATE] = 200
    with pytest.raises(DecodeError):
        sock_diag.count_states(bytes(bad_state), [0] * N_STATES)
    bad_family = bytearray(one)
    bad_family[sock_diag.OFF_FAMILY] = 99
    with pytest.raises(DecodeError):
        records.decode_sockets(bytes(bad_family), [])


def _fuzz(buf: bytes) -> None:
    """Either decoder returns (True or False) or raises DecodeError/NetlinkError."""
    for decode in (lambda b: sock_diag.count_states(b, [0] * N_STATES),
                   lambda b: records.decode_sockets(b, [])):
        with hang_guard(10):
            try:
                assert decode(buf) in (True, False)
            except (DecodeError, NetlinkError):
                pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash_or_hang(buf: bytes) -> None:
    _fuzz(buf)


RECORDED = load("lab_inet.bin")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(RECORDED) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.integers(0, len(RECORDED)))
def test_mutated_dumps_never_crash_or_hang(edits: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(RECORDED)
    for pos, value in edits:
        buf[pos] = value
    _fuzz(bytes(buf[:cut]))
    _fuzz(bytes(buf))


_messages = st.tuples(
    st.sampled_from([sock_diag.NLMSG_NOOP, sock_diag.NLMSG_ERROR, sock_diag.NLMSG_DONE,
                     sock_diag.NLMSG_OVERRUN, sock_diag.SOCK_DIAG_BY_FAMILY, 0, 0xFFFF]),
    st.binary(max_size=120),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_messages, max_size=8))
def test_plausible_message_streams_never_crash_or_hang(
    msgs: list[tuple[int, bytes, int | None]],
) -> None:
    buf = b"".join(
        sock_diag.NLMSGHDR.pack(16 + len(body) if length is None else length, mtype, 2, 1, 0)
        + body + bytes(-len(body) % 4)
        for mtype, body, length in msgs
    )
    _fuzz(buf)


# -- /proc/net/tcp ---------------------------------------------------------------------------


def _key(s: TcpSocket) -> tuple[Any, ...]:
    """What /proc/net/tcp and sock_diag both say (no cookie in /proc, and for a
    listener /proc shows no backlog; timers differ in unit and moment)."""
    wqueue = None if s.state == tcp_states.LISTEN else s.wqueue
    return (s.family, s.state, s.src, s.sport, s.dst, s.dport, s.inode, s.uid, s.timer,
            s.rqueue, wqueue)


def proc_sockets() -> list[TcpSocket]:
    return (proc_net_tcp.parse((DATA / "lab_tcp.txt").read_text(), socket.AF_INET, BYTEORDER)
            + proc_net_tcp.parse((DATA / "lab_tcp6.txt").read_text(), socket.AF_INET6,
                                 BYTEORDER))


def test_proc_net_tcp_describes_the_same_sockets_as_netlink() -> None:
    from_proc, from_netlink = proc_sockets(), lab_sockets()
    assert len(from_proc) == len(from_netlink) == sum(META["ss"].values())
    assert Counter(map(_key, from_proc)) == Counter(map(_key, from_netlink))
    assert all(s.cookie == 0 for s in from_proc)
    for s in from_proc:
        if s.state == tcp_states.TIME_WAIT:
            assert s.timer == 3 and 0 < s.expires_ms <= 60_000, s


def test_proc_count_lines_with_and_without_a_port() -> None:
    texts = [(DATA / name).read_text() for name in ("lab_tcp.txt", "lab_tcp6.txt")]

    def count(port: int) -> dict[str, int]:
        counts = [0] * N_STATES
        for text in texts:
            proc_net_tcp.count_lines(text, counts, port)
        return folded(counts)

    assert count(0) == META["ss"]
    assert count(P) == META["ss_port"]
    assert count(Q) == META["ss_syn_port"]
    unused = next(p for p in range(1024, 65536)
                  if p not in {x for s in proc_sockets() for x in (s.sport, s.dport)})
    assert sum(count(unused).values()) == 0


def test_proc_unique_lines_drops_a_row_a_second_read_repeated() -> None:
    # What tcp_seek_last_pos shows when a socket joined a bucket between two
    # read(2)s: the row before the cut once more, under another sl number.
    text = (DATA / "lab_tcp.txt").read_text()
    header, *rows = text.splitlines(keepends=True)
    again = rows[2].replace(rows[2].split()[0], f"{len(rows)}:", 1)
    doubled = header + "".join(rows[:3]) + again + "".join(rows[3:])
    counts = [0] * N_STATES
    proc_net_tcp.count_lines(doubled, counts)
    assert folded(counts) != META["ss"]  # the repeat counts twice ...
    assert proc_net_tcp.unique_lines(doubled) == text  # ... and unique_lines removes it
    assert proc_net_tcp.unique_lines(text) == text
    # Listeners sharing a port (SO_REUSEPORT) differ only by inode: both stay.
    twin = rows[0].replace(rows[0].split()[9], "1", 1)
    assert proc_net_tcp.unique_lines(header + rows[0] + twin).count("\n") == 3


def test_proc_parse_line_rejects_garbage() -> None:
    with pytest.raises(DecodeError):
        proc_net_tcp.parse_line("   0: 0100007F:ZZZZ 00000000:0000 0A", socket.AF_INET)
    with pytest.raises(DecodeError):
        proc_net_tcp.parse_line("   0: 0100007F:1F90", socket.AF_INET)


# -- state names, limits, fd kinds -----------------------------------------------------------


@pytest.mark.parametrize("text, state", [
    ("TIME_WAIT", tcp_states.TIME_WAIT), ("time-wait", tcp_states.TIME_WAIT),
    ("fin-wait-2", tcp_states.FIN_WAIT2), ("FIN_WAIT2", tcp_states.FIN_WAIT2),
    ("close-wait", tcp_states.CLOSE_WAIT), ("estab", tcp_states.ESTABLISHED),
    ("syn-recv", tcp_states.SYN_RECV), (" Listen ", tcp_states.LISTEN),
])
def test_state_names_as_netstat_and_ss_write_them(text: str, state: int) -> None:
    assert tcp_states.parse(text) == state


def test_unknown_state_lists_the_states() -> None:
    with pytest.raises(ValueError) as exc:
        tcp_states.parse("bogus")
    assert "bogus" in str(exc.value)
    assert all(name in str(exc.value) for name in tcp_states.STATE_NAMES)


def test_syn_recv_includes_new_syn_recv() -> None:
    bits = tcp_states.mask([tcp_states.SYN_RECV])
    assert bits == 1 << tcp_states.SYN_RECV | 1 << tcp_states.NEW_SYN_RECV
    assert tcp_states.mask([tcp_states.TIME_WAIT]) == 1 << tcp_states.TIME_WAIT
    counts = [0] * N_STATES
    counts[tcp_states.SYN_RECV], counts[tcp_states.NEW_SYN_RECV] = 2, 3
    assert tcp_states.fold(counts)["SYN_RECV"] == 5
    assert tcp_states.name(tcp_states.NEW_SYN_RECV) == "SYN_RECV"
    assert tcp_states.ALL_STATES_MASK >> 1 == (1 << tcp_states.NEW_SYN_RECV) - 1


@pytest.mark.parametrize("row", sorted(META["rlimits"]))
def test_parse_limits_on_a_real_proc_limits(row: str) -> None:
    text = (DATA / "limits.txt").read_text()
    soft, hard = META["rlimits"][row]  # getrlimit at the moment; -1 is RLIM_INFINITY
    assert procfs.parse_limits(text, row) == procfs.Limit(soft, hard)


def test_parse_limits_unlimited_and_missing_rows() -> None:
    text = (DATA / "limits.txt").read_text()
    row = next(line for line in text.splitlines()[1:] if line.split()[-3:-1] == ["unlimited"] * 2)
    name = row[:26].strip()  # "Max cpu time", the first column is 26 wide
    assert procfs.parse_limits(text, name) == procfs.Limit(-1, -1)
    with pytest.raises(ValueError):
        procfs.parse_limits(text, "Max sockets")


@pytest.mark.parametrize("target, kind", [
    ("socket:[737217]", "socket"), ("pipe:[31337]", "pipe"),
    ("anon_inode:[eventpoll]", "epoll"), ("anon_inode:[eventfd]", "eventfd"),
    ("anon_inode:[timerfd]", "timerfd"), ("anon_inode:inotify", "inotify"),
    ("/dev/null", "device"), ("/dev/pts/0", "device"),
    ("/var/log/tcplab.log", "file"), ("/tmp/x (deleted)", "file"),
    ("net:[4026531840]", "net"),
])
def test_fd_kind_of_link_targets(target: str, kind: str) -> None:
    assert procfs.fd_kind(target) == kind


def test_socket_inode() -> None:
    assert procfs.socket_inode("socket:[737217]") == 737217
    assert procfs.socket_inode("pipe:[737217]") == 0
    assert procfs.socket_inode("/dev/null") == 0


def test_compat_replies_decode_and_count_like_by_family_ones() -> None:
    """TCPDIAG_GETSOCK's replies (type 18: inet_sk_diag_fill puts the request's type)
    carry the same inet_diag_msg: decoded and counted alike."""
    socks = lab_sockets()
    buf = b"".join(encode_reply(s, mtype=sock_diag.TCPDIAG_GETSOCK) for s in socks)
    buf += encode_done()
    out: list[TcpSocket] = []
    assert records.decode_sockets(buf, out) is True
    assert out == socks
    counts = [0] * N_STATES
    assert sock_diag.count_states(buf, counts) is True
    assert folded(counts) == by_state(socks)


def test_compat_request_is_struct_inet_diag_req() -> None:
    """struct inet_diag_req: family 0 (inet_diag_dump_compat makes it AF_UNSPEC
    anyway), the sockid, then idiag_states and idiag_dbs; the filter after it."""
    req = sock_diag.build_request_compat(0xFFE, port=8080, seq=7)
    length, mtype, flags, seq, _pid = sock_diag.NLMSGHDR.unpack_from(req)
    assert (length, mtype, seq) == (len(req), sock_diag.TCPDIAG_GETSOCK, 7)
    assert flags == sock_diag.NLM_F_REQUEST | sock_diag.NLM_F_DUMP
    body = req[sock_diag.HDR_LEN:]
    assert body[:4] == bytes(4)
    assert sock_diag.REQ_COMPAT_TAIL.unpack_from(body, 52) == (0xFFE, 0)
    attr_len, attr_type = sock_diag.NLATTR.unpack_from(body, 60)
    assert attr_type == sock_diag.INET_DIAG_REQ_BYTECODE
    assert body[64:60 + attr_len] == sock_diag.port_filter(8080)

