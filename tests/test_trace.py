"""``tcplab trace``: trace_pipe lines parsed, state changes tracked, and the command run for real.

Pure tests read tests/data/trace_pipe.txt (and trace_pipe_tgid.txt), what a
real trace instance printed for a small scenario whose facts (ports, errnos)
are in trace_pipe.json; see tests/data/record_trace.py. The expected
transitions and times come from the scenario and from the raw lines read a
simpler way, not from the parser under test.

Privileged tests run ``tcplab trace`` as root against a server it did not
start, and check that every trace instance it makes (``instances/tcplab-PID``)
is gone afterwards and that the host's mounts did not change: tracefs is not
mounted on the host, so tcplab mounts it in a private mount namespace of its
own. Without root, the same module checks the unprivileged behaviour: a clear
error (exit 4, pointing at --poll), and --poll itself.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcplab.kernel import tcp_states
from tcplab.kernel.tracefs import (
    TraceEvent,
    TraceParseError,
    Tracker,
    Transition,
    errno_text,
    lost_events,
    parse_line,
    reset_text,
    state_name,
)
from tests.helpers import (
    NOBODY_ENV,
    Child,
    Spawner,
    as_nobody,
    instances,
    left_behind,
    mark_stale_on_purpose,
    remove_instance,
    start_plain_server,
    tcplab,
    tracefs_mounts,
    unmark_stale_on_purpose,
)

DATA = Path(__file__).resolve().parent / "data"
META: dict[str, Any] = json.loads((DATA / "trace_pipe.json").read_text())
LINES = (DATA / "trace_pipe.txt").read_text().splitlines()
TGID_LINES = (DATA / "trace_pipe_tgid.txt").read_text().splitlines()
P: int = META["port"]
SEEN: dict[str, int] = META["scenario"]
GRACEFUL, V6, RESET = (SEEN["graceful_client_port"], SEEN["v6_client_port"],
                       SEEN["reset_client_port"])
TRANSITION_KEYS = {"t", "saddr", "sport", "daddr", "dport", "old", "new", "ms_in_old"}


def events(lines: list[str]) -> list[TraceEvent]:
    out = []
    for line in lines:
        e = parse_line(line)
        assert e is not None, line
        out.append(e)
    return out


def transitions(lines: list[str]) -> list[Transition]:
    evs = events(lines)
    tracker = Tracker(evs[0].ts)
    return [t for e in evs if (t := tracker.feed(e)) is not None]


def raw_changes(lines: list[str]) -> list[dict[str, Any]]:
    """The inet_sock_set_state lines read the simple way: the reference for the Tracker."""
    out = []
    for line in lines:
        m = re.search(r" (\d+\.\d+): inet_sock_set_state: (.*)$", line)
        if m:
            kv: dict[str, Any] = dict(item.split("=", 1) for item in m[2].split())
            kv["ts"] = float(m[1])
            v6 = kv["family"] == "AF_INET6"
            kv["src"] = kv["saddrv6"] if v6 else kv["saddr"]
            kv["dst"] = kv["daddrv6"] if v6 else kv["daddr"]
            out.append(kv)
    return out


# -- pure: the recorded trace_pipe -----------------------------------------------------------


@pytest.mark.pure
@pytest.mark.parametrize("lines", [LINES, TGID_LINES], ids=["irq-info", "record-tgid"])
def test_every_recorded_line_parses(lines: list[str]) -> None:
    evs = events(lines)
    assert len(evs) == len(lines) > 0
    # trace_pipe merges the per-CPU buffers in time order
    assert [e.ts for e in evs] == sorted(e.ts for e in evs)
    # the event names, counted the plain way
    for name in ("inet_sock_set_state", "tcp_send_reset", "tcp_receive_reset",
                 "tcp_destroy_sock"):
        assert sum(e.event == name for e in evs) == sum(f": {name}: " in x for x in lines)
    for call in ("socket", "bind", "listen", "accept4", "connect", "shutdown", "close"):
        assert sum(e.event == f"sys_enter_{call}" for e in evs) == sum(
            f": sys_{call}(" in x for x in lines)
        assert sum(e.event == f"sys_exit_{call}" for e in evs) == sum(
            f": sys_{call} -> " in x for x in lines)
    states = [e for e in evs if e.event == "inet_sock_set_state"]
    assert states
    for e in states:
        assert {"family", "protocol", "sport", "dport", "saddr", "daddr", "saddrv6", "daddrv6",
                "oldstate", "newstate"} <= set(e.fields)


#: Recorded on Linux 6.18 (2026-12-01) during a loopback bomb: a listener's reset.
LISTENER_RESET = ("python-4242    [000] b..1.  5120.000001: tcp_send_reset: "
                  "skbaddr=000000005b329929 skaddr=000000009aa8531a src=127.0.0.1:40339 "
                  "dest=0.0.0.0:0 state=TCP_LISTEN reason=TCP_FLAGS")


@pytest.mark.pure
def test_reset_lines_say_who_sent_and_the_kernel_s_reason() -> None:
    """A connection's reset names both ends and the kernel's state and reason; a
    listener's (its socket's addresses: 0.0.0.0:0 for the peer) says "by the
    listener", not a peer at 0.0.0.0; a reset received names its socket."""
    by_event = {}
    for line in [*LINES, LISTENER_RESET]:
        e = parse_line(line)
        if e is not None and e.event in ("tcp_send_reset", "tcp_receive_reset"):
            by_event.setdefault(e.event, []).append(e)
    sent = [reset_text(e.event, e.fields) for e in by_event["tcp_send_reset"]]
    assert sent[0] == ("RST sent 127.0.0.1:8080 > 127.0.0.1:52812 "
                       "(state=TCP_CLOSE reason=TCP_STATE)")
    assert sent[-1] == ("RST sent by the listener 127.0.0.1:40339 to a segment's sender "
                        "(state=TCP_LISTEN reason=TCP_FLAGS)")
    assert not any("> 0.0.0.0" in x for x in sent if x)
    got = by_event["tcp_receive_reset"][0]
    assert reset_text(got.event, got.fields) == ("RST received on 127.0.0.1:22819 from "
                                                 "127.0.0.1:51126")
    # another port's reset is not this port's
    assert reset_text("tcp_send_reset", by_event["tcp_send_reset"][0].fields, 9) is None


@pytest.mark.pure
def test_the_irq_info_says_when_an_event_ran_in_an_interrupt() -> None:
    """The third letter of the irq-info column: ``s`` softirq (the pid is whatever
    task the CPU had), ``.`` the task's own context; no column, no answer."""
    evs = [e for e in events(LINES) if e.event == "inet_sock_set_state"]
    assert {e.flags[2] for e in evs} >= {".", "s"}
    for e in evs:
        assert e.in_interrupt is (e.flags[2] == "s")
    assert TraceEvent(1.0, 5, "x", "e", {}).in_interrupt is None


@pytest.mark.pure
def test_a_lost_events_note_is_counted_and_is_not_an_event() -> None:
    """trace_pipe's note when the reader fell behind (kernel/trace/trace.c's
    print_trace_line prints it before the next event of that CPU)."""
    assert lost_events("CPU:1 [LOST 4127 EVENTS]") == 4127
    assert parse_line("CPU:1 [LOST 4127 EVENTS]") is None
    assert [lost_events(x) for x in LINES] == [0] * len(LINES)


@pytest.mark.pure
def test_tasks_and_pids_of_the_recorded_lines() -> None:
    """Task names with '/' and '<...>', the softirq's idle task, the tgid column."""
    evs = events(LINES)
    scenario = [e for e in evs if e.event.startswith("sys_")]
    assert {e.pid for e in scenario} == {SEEN["pid"]}
    assert {e.task for e in scenario} == {"python"}
    others = {(e.task, e.pid) for e in evs if e.pid != SEEN["pid"]}
    for line in LINES:
        task, _, rest = line.strip().partition("-")
        pid = int(rest.split()[0])
        if pid != SEEN["pid"]:
            assert (task, pid) in others
    tgid = events(TGID_LINES)
    assert {(e.task, e.pid) for e in tgid} == {("python", META["tgid_scenario"]["pid"])}


@pytest.mark.pure
@pytest.mark.parametrize("line", ["", "   ", "# tracer: nop", "#  TASK-PID  CPU#  TIMESTAMP",
                                  "CPU:1 [LOST 23 EVENTS]", "##### CPU 1 buffer started ####"])
def test_lines_that_are_not_events(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.pure
def test_the_recorded_scenario_as_transitions() -> None:
    trs = transitions(LINES)
    start = events(LINES)[0].ts
    raw = raw_changes(LINES)
    assert len(trs) == len(raw)
    by_socket: dict[tuple[str, int, int], list[tuple[str, str]]] = {}
    for t in trs:
        if t.sport:
            by_socket.setdefault((t.saddr, t.sport, t.dport), []).append((t.old, t.new))
    client = [("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
              ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")]
    server = [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
              ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")]
    expected = {
        ("127.0.0.1", GRACEFUL, P): client,
        ("127.0.0.1", P, GRACEFUL): server,
        # shutdown(SHUT_WR) then close() at once: FIN_WAIT1 again
        ("::1", V6, P): [*client[:2], ("FIN_WAIT1", "FIN_WAIT1"), *client[2:]],
        ("::1", P, V6): server,
        ("127.0.0.1", RESET, P): [("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "CLOSE")],
        ("127.0.0.1", P, RESET): [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
                                  ("ESTABLISHED", "CLOSE")],
        ("127.0.0.1", P, 0): [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")],
        ("::1", P, 0): [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")],
    }
    refused = {k: v for k, v in by_socket.items() if k not in expected}
    assert {k: by_socket.get(k) for k in expected} == expected
    # the refused connect(): its port is chosen, then the RST closes it
    assert list(refused.values()) == [[("SYN_SENT", "CLOSE")]]

    # connect() leaves CLOSE before its port is chosen: four connects, each with the note
    connecting = [t for t in trs if t.new == "SYN_SENT"]
    assert [(t.saddr, t.sport, t.dport, t.ms_in_old) for t in connecting] == [
        ("127.0.0.1", 0, P, None), ("::1", 0, P, None), ("127.0.0.1", 0, P, None),
        ("127.0.0.1", 0, P, None)]
    assert all("sport=0" in t.note for t in connecting)
    notes = {(t.old, t.new): t.note for t in trs if t.note}
    assert "TIME_WAIT" in notes[("FIN_WAIT2", "CLOSE")]
    assert "passive closer" in notes[("CLOSE_WAIT", "LAST_ACK")]
    assert "shutdown" in notes[("FIN_WAIT1", "FIN_WAIT1")]

    # the times, against the raw lines: t from the start, ms_in_old since the socket's
    # previous change (since connect() for SYN_SENT), None where that was not seen
    last: dict[tuple[str, str, str, str], float] = {}
    connect_at: dict[str, float] = {}
    for t, r in zip(trs, raw, strict=True):
        assert (t.saddr, t.sport, t.daddr, t.dport, t.old, t.new) == (
            r["src"], int(r["sport"]), r["dst"], int(r["dport"]),
            state_name(r["oldstate"]), state_name(r["newstate"]))
        assert t.t == pytest.approx(r["ts"] - start, abs=1e-6)
        key = (r["src"], r["sport"], r["dst"], r["dport"])
        before = last.get(key)
        if r["oldstate"] == "TCP_SYN_SENT":
            before = connect_at.pop(r["dst"])
        if r["sport"] == "0":  # not yet a 4-tuple: the connect() starts here
            connect_at[r["dst"]] = r["ts"]
            key = ("", "", "", "")
        if (t.old, t.new) != ("FIN_WAIT1", "FIN_WAIT2"):  # see the test below
            expect = None if before is None else (r["ts"] - before) * 1000
            assert t.ms_in_old == pytest.approx(expect, abs=0.002), t
        if r["newstate"] == "TCP_CLOSE":
            last.pop(key, None)
        else:
            last[key] = r["ts"]
    # the passive closer sat in CLOSE_WAIT until its close(), one pause (0.1 s) later
    waited = [t.ms_in_old for t in trs if (t.old, t.new) == ("CLOSE_WAIT", "LAST_ACK")]
    assert len(waited) == 2 and all(ms is not None and ms >= 100 for ms in waited)


@pytest.mark.pure
def test_time_in_fin_wait1_counts_from_entering_it() -> None:
    """close() after shutdown(SHUT_WR) is FIN_WAIT1 -> FIN_WAIT1: the socket never left
    FIN_WAIT1, so the time shown on FIN_WAIT1 -> FIN_WAIT2 runs from ESTABLISHED -> FIN_WAIT1."""
    raw = [r for r in raw_changes(LINES) if r["sport"] == str(V6)]
    entered = next(r["ts"] for r in raw if r["newstate"] == "TCP_FIN_WAIT1")
    left = next(r["ts"] for r in raw if r["oldstate"] == "TCP_FIN_WAIT1"
                and r["newstate"] == "TCP_FIN_WAIT2")
    t = next(t for t in transitions(LINES)
             if t.sport == V6 and (t.old, t.new) == ("FIN_WAIT1", "FIN_WAIT2"))
    assert t.ms_in_old == pytest.approx((left - entered) * 1000, abs=0.002), (
        "ms_in_old restarted at the FIN_WAIT1 -> FIN_WAIT1 change")


@pytest.mark.pure
def test_the_tgid_layout_tracks_the_refused_connect() -> None:
    trs = transitions(TGID_LINES)
    assert [(t.old, t.new) for t in trs] == [("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")]
    assert trs[0].sport == 0 and trs[1].sport != 0 and trs[1].ms_in_old is not None
    exits = [e for e in events(TGID_LINES) if e.event == "sys_exit_connect"]
    assert [errno_text(e.fields["ret"]) for e in exits] == ["-ECONNREFUSED"]


# -- pure: syscalls and return values -------------------------------------------------------


@pytest.mark.pure
def test_syscall_lines_as_tracefs_prints_them() -> None:
    enter = parse_line("  python3-4242  [001] .....  3367.427274: "
                       "sys_connect(fd: 3, uservaddr: 7ffd4b2c1a30, addrlen: 10)")
    assert enter is not None
    assert (enter.event, enter.pid, enter.task, enter.ts) == (
        "sys_enter_connect", 4242, "python3", 3367.427274)
    assert enter.fields == {"fd": "3", "uservaddr": "7ffd4b2c1a30", "addrlen": "10"}
    exit_ = parse_line("  python3-4242  [001] .....  3367.427301: "
                       "sys_connect -> 0xffffffffffffff91")
    assert exit_ is not None
    assert (exit_.event, exit_.fields) == ("sys_exit_connect", {"ret": "0xffffffffffffff91"})
    assert errno_text(exit_.fields["ret"]) == "-ECONNREFUSED"


@pytest.mark.pure
def test_the_recorded_syscalls_and_their_errors() -> None:
    """What the scenario's own process saw (trace_pipe.json) is what the trace says."""
    evs = events(LINES)
    calls = [(e.event[len("sys_exit_"):], errno_text(e.fields["ret"]))
             for e in evs if e.event.startswith("sys_exit_")]
    failed = [(c, r) for c, r in calls if r.startswith("-")]
    assert failed == [
        ("bind", "-" + errno.errorcode[SEEN["bind_errno"]]),
        ("connect", "-" + errno.errorcode[SEEN["connect6_errno"]]),
        ("connect", "-" + errno.errorcode[SEEN["refused_errno"]]),
    ]
    assert [r for _, r in failed] == ["-EADDRINUSE", "-EINPROGRESS", "-ECONNREFUSED"]
    # each accept4 returns a new fd, later closed
    accepted = [int(r) for c, r in calls if c == "accept4"]
    closed = [int(e.fields["fd"], 16) for e in evs if e.event == "sys_enter_close"]
    assert len(accepted) == 3 and all(fd > 2 and fd in closed for fd in accepted)
    enters = [e for e in evs if e.event == "sys_enter_socket"]
    assert {int(e.fields["family"], 16) for e in enters} == {2, 10}  # AF_INET, AF_INET6
    shutdown = next(e for e in evs if e.event == "sys_enter_shutdown")
    assert shutdown.fields["how"] == "1"  # SHUT_WR


@pytest.mark.pure
@pytest.mark.parametrize(("ret", "text"), [
    ("0x0", "0"), ("0x5", "5"), ("0x3e8", "1000"), ("0", "0"), ("17", "17"),
    ("0xffffffffffffff91", "-ECONNREFUSED"), ("0xffffffffffffff8d", "-EINPROGRESS"),
    ("0xffffffffffffff9e", "-EADDRINUSE"), ("0xffffffffffffff9d", "-EADDRNOTAVAIL"),
    ("0xffffffffffffffe8", "-EMFILE"), ("0xfffffffffffffff5", "-EAGAIN"),
    ("-111", "-ECONNREFUSED"),
    ("0x7fffffffffffffff", str((1 << 63) - 1)),  # a large value that is not an error
    ("0xfffffffffffff000", str(-4096)),  # below -4095: not an errno
])
def test_errno_text(ret: str, text: str) -> None:
    assert errno_text(ret) == text


@pytest.mark.pure
def test_state_names_are_the_socket_tables() -> None:
    """Every state in the tracepoint's print fmt (1..12) gets the name sock_diag gives it."""
    kernel = ["TCP_ESTABLISHED", "TCP_SYN_SENT", "TCP_SYN_RECV", "TCP_FIN_WAIT1",
              "TCP_FIN_WAIT2", "TCP_TIME_WAIT", "TCP_CLOSE", "TCP_CLOSE_WAIT", "TCP_LAST_ACK",
              "TCP_LISTEN", "TCP_CLOSING", "TCP_NEW_SYN_RECV"]
    assert [state_name(k) for k in kernel] == list(tcp_states.NAMES[1:13])
    assert state_name("TCP_NEW_SYN_RECV") == "SYN_RECV"


# -- pure: anything else is a TraceParseError ----------------------------------------------


def _only_parse_errors(line: str) -> None:
    try:
        e = parse_line(line)
    except TraceParseError:
        return
    assert e is None or isinstance(e, TraceEvent)


@pytest.mark.pure
@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_random_text_raises_only_trace_parse_error(line: str) -> None:
    _only_parse_errors(line)


_tasks = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=20)


@pytest.mark.pure
@settings(max_examples=300, deadline=None)
@given(_tasks, st.integers(0, 4_194_304), st.integers(0, 511),
       st.sampled_from([".....", "b..1.", "..s2.", "dNh1.", "....", ""]),
       st.integers(0, 10**7), st.integers(0, 999_999), st.text(max_size=200))
def test_lines_built_like_the_kernels(task: str, pid: int, cpu: int, flags: str, sec: int,
                                      usec: int, body: str) -> None:
    line = f"{task:>16}-{pid:<7} [{cpu:03d}] {flags} {sec:5d}.{usec:06d}: {body}"
    _only_parse_errors(line)
    plain_task = "\n" not in task and re.search(r"-\d|\[", task) is None
    if plain_task and re.match(r"^\w+: [^\n]*$", body):
        e = parse_line(line)
        assert e is not None
        assert (e.pid, e.ts) == (pid, float(f"{sec}.{usec:06d}"))


@pytest.mark.pure
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LINES + TGID_LINES), st.integers(0, 400), st.integers(0, 400),
       st.text(max_size=10))
def test_damaged_recorded_lines(line: str, start: int, stop: int, insert: str) -> None:
    _only_parse_errors(line[:start] + insert + line[stop:])


# -- running tcplab: helpers --------------------------------------------------------------

def one_connection(server: Child, host: str, port: int) -> int:
    """connect, one echo, the client closes first, then the server: the client's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as c:
        c.connect((host, port))
        cport: int = c.getsockname()[1]
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
    server.wait_line(lambda x: x == "closed", "out")
    return cport


# -- privilege: root, nobody, and what is left behind ----------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (tracefs); the unprivileged tests run instead")


def other_tcplab_runs() -> list[int]:
    """Pids of tcplab processes that are not this session's (another suite's)."""
    mine = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in mine and "tcplab" in cmd and (
                " trace" in cmd or "handshake" in cmd or " check" in cmd or " all" in cmd):
            found.append(proc.info["pid"])
    return found


@pytest.fixture
def nothing_left(spawn: Spawner) -> Iterator[list[int]]:
    """The pids of the tcplab runs a test makes (append them); once its children are
    stopped, no tcplab-PID instance of theirs, nor of any dead process, remains, and the
    host's tracefs mounts are what they were."""
    mounts = tracefs_mounts()
    before = instances()
    pids: list[int] = []
    yield pids
    spawn.stop_all()
    left = left_behind(pids, before)
    for name in left:
        remove_instance(name)  # do not leave them to the next test
    assert left == [], "trace instances left behind"
    assert tracefs_mounts() == mounts, "the host's mounts changed"


@dataclass
class Unprivileged:
    """How a test runs tcplab without privilege: as we are, when we are not root; as
    nobody, through nobody's venv (conftest's ``nobody_venv``), when we are."""

    venv: Path | None

    def argv(self, *args: str) -> list[str]:
        if self.venv is None:
            return tcplab(*args)
        return [str(self.venv / "bin" / "python"), "-m", "tcplab", *args]

    @property
    def kw(self) -> dict[str, Any]:
        if self.venv is None:
            return {}
        return {"preexec_fn": as_nobody, "env": NOBODY_ENV, "cwd": "/tmp"}


@pytest.fixture
def unprivileged(nobody_venv: Path | None) -> Unprivileged:
    return Unprivileged(nobody_venv)


# -- privileged: the Done-when -----------------------------------------------------


@pytest.mark.privileged
@needs_root
def test_trace_shows_one_connection_and_its_syscalls(spawn: Spawner,
                                                     nothing_left: list[int]) -> None:
    server, port = start_plain_server(spawn)
    states = spawn(tcplab("trace", "--port", str(port), "--json", "--duration", "5"))
    calls = spawn(tcplab("trace", "--port", str(port), "--json", "--duration", "5",
                         "--syscalls", "--pid", str(server.pid)))
    nothing_left += [states.pid, calls.pid]
    for tracer in (states, calls):
        line = tracer.wait_line(lambda x: x.startswith("tracing"))
        assert f"instances/tcplab-{tracer.pid}" in line
        # the first thing it says: the tracepoint is not per namespace
        assert tracer.err[0] == line
        assert "global to the machine" in line and "every network namespace" in line
        # tracefs is mounted in the tracer's own mount namespace, not ours
        assert os.stat(f"/proc/{tracer.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        assert "tracefs" in Path(f"/proc/{tracer.pid}/mounts").read_text()
    assert "tracefs" not in Path("/proc/self/mounts").read_text()
    cport = one_connection(server, "127.0.0.1", port)
    accepted = int(server.out[1])
    assert states.finish() == 0, states.err
    assert calls.finish() == 0, calls.err

    lines = states.json()
    assert lines and all(set(x) >= TRANSITION_KEYS for x in lines), lines
    seen = {(x["sport"], x["dport"], x["old"], x["new"]): x for x in lines}
    assert (cport, port, "SYN_SENT", "ESTABLISHED") in seen  # the client
    assert (cport, port, "FIN_WAIT1", "FIN_WAIT2") in seen  # the active closer
    passive = seen[(port, cport, "CLOSE_WAIT", "LAST_ACK")]  # the passive closer
    assert passive["ms_in_old"] >= 250  # the server slept 0.25 s before its close()
    assert all(x["saddr"] == x["daddr"] == "127.0.0.1" for x in lines if x["dport"])

    syscalls = [x for x in calls.json() if "syscall" in x]
    assert {"syscall": "accept4", "ret": str(accepted)}.items() <= next(
        x for x in syscalls if x["syscall"] == "accept4").items()
    assert any(x["syscall"] == "close" and x["args"] == f"fd={accepted}" and x["ret"] == "0"
               for x in syscalls), syscalls
    assert all(x["pid"] == server.pid for x in syscalls)
    assert (port, cport, "CLOSE_WAIT", "LAST_ACK") in {
        (x["sport"], x["dport"], x["old"], x["new"]) for x in calls.json() if "old" in x}


#: Run in a network namespace of its own (lo up, nothing listening): one connect()
#: to 127.0.0.1:PORT, refused there.
REFUSED_ELSEWHERE = """
import socket, sys
from tcplab.agents.nsholder import link_up
from tcplab.observe.nsutil import CLONE_NEWNET, unshare
unshare(CLONE_NEWNET)
link_up("lo")
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except ConnectionRefusedError:
    print(s.getsockname()[1])
"""


@pytest.mark.privileged
@needs_root
def test_trace_shows_other_namespaces(spawn: Spawner, nothing_left: list[int]) -> None:
    """What its help and first line say: the tracepoint is global, so a connection made
    in another network namespace on the port shows too."""
    port = 40000 + os.getpid() % 20000
    tracer = spawn(tcplab("trace", "--port", str(port), "--json"))
    nothing_left.append(tracer.pid)
    tracer.wait_line(lambda x: x.startswith("tracing"))
    other = subprocess.run([sys.executable, "-c", REFUSED_ELSEWHERE, str(port)],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode == 0 and other.stdout.strip().isdigit(), other.stderr
    cport = int(other.stdout)
    tracer.wait_line(lambda x: f'"sport": {cport}' in x and '"new": "CLOSE"' in x, "out")
    tracer.proc.send_signal(signal.SIGINT)
    assert tracer.finish() == 130, tracer.err
    assert (cport, port, "SYN_SENT", "CLOSE") in {
        (x["sport"], x["dport"], x["old"], x["new"]) for x in tracer.json() if "old" in x}


@pytest.mark.loopback
def test_trace_help_says_the_tracepoint_is_global() -> None:
    text = " ".join(subprocess.run(tcplab("trace", "--help"), capture_output=True, text=True,
                                   timeout=60).stdout.split())
    assert "global to the machine" in text
    assert "every network namespace" in text


@pytest.mark.privileged
@needs_root
def test_check_says_tracefs_works_when_trace_can_mount_it(nothing_left: list[int]) -> None:
    """tracefs not mounted on the host is no failure: trace mounts it privately, and
    check tries exactly that (in a child), leaving the host's mounts as they were."""
    r = subprocess.run(tcplab("check", "--json"), capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    tracefs = checks["tracefs"]
    assert tracefs["ok"] is True, tracefs
    if not any("tracefs" in m for m in tracefs_mounts()):
        assert "private mount namespace" in tracefs["detail"], tracefs
    assert tracefs["fix"] is None


@pytest.mark.privileged
@needs_root
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopped_by_a_signal_it_cleans_up(signum: int, spawn: Spawner,
                                          nothing_left: list[int]) -> None:
    server, port = start_plain_server(spawn, close_after=0.05)
    tracer = spawn(tcplab("trace", "--port", str(port)))
    nothing_left.append(tracer.pid)
    tracer.wait_line(lambda x: x.startswith("tracing"))
    one_connection(server, "127.0.0.1", port)
    tracer.wait_line(lambda x: "CLOSE_WAIT -> LAST_ACK" in x, "out")
    tracer.proc.send_signal(signum)
    rc = tracer.finish()
    assert rc == 130, (rc, tracer.err)  # interrupted, and handled: not killed by it
    text = "\n".join(tracer.out)
    assert "SYN_SENT -> ESTABLISHED" in text
    assert re.search(r"^\d+ connections?:$", text, re.M), text  # the timeline, on the way out


@pytest.mark.privileged
@needs_root
@pytest.mark.parametrize("how", ["made-by-hand", "sigkill"])
def test_a_stale_instance_is_removed(how: str, spawn: Spawner,
                                     nothing_left: list[int]) -> None:
    if how == "sigkill":  # a run that could not clean up
        killed = spawn(tcplab("trace", "--port", "1"))
        killed.wait_line(lambda x: x.startswith("tracing"))
        name = f"tcplab-{killed.pid}"
        mark_stale_on_purpose(name)
        killed.proc.kill()
        killed.finish()
        assert name in instances()
    else:
        # A pid no process has, picked at random: two suites side by side both took
        # the highest free one and collided on its instance (seen once).
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        taken = instances()
        pid = next(p for p in (random.randrange(pid_max // 2, pid_max) for _ in range(10_000))
                   if not os.path.exists(f"/proc/{p}") and f"tcplab-{p}" not in taken)
        name = f"tcplab-{pid}"
        mark_stale_on_purpose(name)
        r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tracefs nodev "
                            f"/sys/kernel/tracing && mkdir /sys/kernel/tracing/instances/{name}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    try:
        others = other_tcplab_runs()
        run = spawn(tcplab("trace", "--duration", "1"))
        nothing_left.append(run.pid)
        assert run.finish() == 0, run.err
        removed_here = any("removed a stale trace instance" in x and name in x for x in run.err)
        # Any tcplab run that makes a trace instance removes stale ones first: one
        # of another test session beside this one may have got there first.
        assert removed_here or others or other_tcplab_runs(), run.err
        assert name not in instances()
    finally:
        if name in instances():
            remove_instance(name)
        unmark_stale_on_purpose(name)


# -- unprivileged -----------------------------------------------------------------------------


@pytest.mark.loopback
def test_without_privilege_trace_points_at_poll(spawn: Spawner,
                                                unprivileged: Unprivileged) -> None:
    run = spawn(unprivileged.argv("trace", "--duration", "1"), **unprivileged.kw)
    assert run.finish() == 4, run.err
    text = "\n".join(run.err)
    assert "root" in text and "--poll" in text
    assert "Traceback" not in text


@pytest.mark.loopback
def test_poll_without_privilege_sees_a_slow_connection(spawn: Spawner,
                                                       unprivileged: Unprivileged) -> None:
    server, port = start_plain_server(spawn, close_after=0.3)
    poll = spawn(unprivileged.argv("trace", "--poll", "--port", str(port), "--duration", "3",
                                   "--json"), **unprivileged.kw)
    poll.wait_line(lambda x: x.startswith("polling"))
    with socket.socket() as c:
        c.connect(("127.0.0.1", port))
        cport = c.getsockname()[1]
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
        time.sleep(0.3)  # longer than the 20 ms interval: ESTABLISHED is seen
    server.wait_line(lambda x: x == "closed", "out")
    assert poll.finish() == 0, poll.err
    lines = poll.json()
    assert lines and all(set(x) >= TRANSITION_KEYS for x in lines), lines
    client = [(x["old"], x["new"]) for x in lines if x["sport"] == cport]
    server_end = [(x["old"], x["new"]) for x in lines if x["sport"] == port
                  and x["dport"] == cport]
    # the connection lived longer than the interval in each of these states
    assert ("FIN_WAIT2", "TIME_WAIT") in client, lines
    assert any(old == "ESTABLISHED" for old, _ in client + server_end), lines
    # and it was made after "polling" was said: it is new. A poll can fall inside the
    # handshake (seen once under load: the client first seen in SYN_SENT); then the
    # next change is to ESTABLISHED.
    for side, opening in ((client, "SYN_SENT"), (server_end, "SYN_RECV")):
        assert side and side[0] in (("(new)", "ESTABLISHED"), ("(new)", opening)), (
            f"the connection made after the 'polling' line is not shown as new: {side}")
        if side[0] == ("(new)", opening):
            assert side[1] == (opening, "ESTABLISHED"), side
