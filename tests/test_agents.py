"""The child processes as one contract (tcplab/agents/): argv in, typed records out.

Every agent runs here as its parent runs it, ``python -m tcplab.agents.NAME``
with its documented argv, and each line it writes must decode with
``from_json_line`` into its record: a field renamed on one side fails here,
by name, not later as a KeyError in a report. A module added to agents/
without a case here fails ``test_every_agent_has_a_case``.

Also: below ``cli/``, only agents write to stdout (an AST walk of src/tcplab).
"""

from __future__ import annotations

import ast
import errno
import itertools
import json
import os
import pkgutil
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tcplab
import tcplab.agents
from tcplab.agents.half_close import Step
from tcplab.agents.handshake import Done, Ready
from tcplab.agents.io import command
from tcplab.agents.keepalive import Silent
from tcplab.agents.listening import Listening
from tcplab.agents.nagle import Accepting, Exchange, Served
from tcplab.agents.netholder import Detached, Up
from tcplab.agents.nsholder import Answer
from tcplab.agents.orphans import Look
from tcplab.agents.ports import Failed, Ports
from tcplab.agents.reset import Close
from tcplab.agents.restart import Bind
from tcplab.agents.sampler import Sample
from tcplab.agents.syn_queue import Phase
from tcplab.agents.sysctl import Sysctl
from tcplab.agents.tracefs_probe import StaleRemoved
from tcplab.experiments import keepalive
from tcplab.experiments.sandbox import Sandbox
from tcplab.interrupts import spawn
from tcplab.net.plan import Mechanisms
from tcplab.observe.process import own_fd_limit
from tcplab.observe.tracefs import CANDIDATES, Availability
from tcplab.records import from_json_line
from tcplab.traffic.flood import FloodResult
from tests.helpers import userns_allowed

T = TypeVar("T")
GUARD = 30.0  # seconds: a hang guard only, never a speed assertion
SRC = Path(tcplab.__file__).parent


# --- nothing below cli/ writes to stdout, except the agents ---------------------------------

#: Modules that may name sys.stdout without writing to it, and why.
MAY_NAME_STDOUT = {
    "interrupts.py": "exit_now() flushes what cli/ wrote before os._exit",
    "traffic/workers.py": "flushes what cli/ wrote before fork() (a child would print it "
                          "again) and before a worker's os._exit",
}


def stdout_writes(source: str) -> list[str]:
    """Where ``source`` calls print() or names sys.stdout / sys.__stdout__ / fd 1."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "print":
            found.append(f"{node.lineno}: print()")
        elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "__stdout__") \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.append(f"{node.lineno}: sys.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "write" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "os" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == 1:
            found.append(f"{node.lineno}: os.write(1, ...)")
    return found


@pytest.mark.pure
def test_only_cli_and_agents_write_to_stdout() -> None:
    checked = 0
    offenders: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("cli", "agents") or str(rel) in MAY_NAME_STDOUT:
            continue
        checked += 1
        offenders += [f"{rel}:{where}" for where in stdout_writes(path.read_text())]
    assert checked > 50, checked  # the walk found the package
    assert not offenders, "\n".join(offenders)


@pytest.mark.pure
@pytest.mark.parametrize(("code", "kind"), [
    ("print('x')", "print()"), ("sys.stdout.write('x')", "sys.stdout"),
    ("f = sys.__stdout__", "sys.__stdout__"), ("os.write(1, b'x')", "os.write(1, ...)"),
    ("sys.stderr.write('x')", None), ("os.write(2, b'x')", None),
    ("print = log", None),
])
def test_the_stdout_walk_finds_each_kind_of_write(code: str, kind: str | None) -> None:
    """The walk itself: each way of writing to stdout is caught, stderr is not."""
    found = stdout_writes(f"import os, sys\n{code}\n")
    assert found == ([f"2: {kind}"] if kind else []), found


# --- every agent: --help, and its documented argv -------------------------------------------

#: Modules of tcplab/agents/ that are the agents' library, not agents.
LIBRARY = ("io", "ends")


def agent_modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(tcplab.agents.__path__)
            if m.name not in LIBRARY}


@pytest.mark.pure
def test_every_agent_has_a_case() -> None:
    assert agent_modules() == set(CASES), "add the new agent to CASES (and a test)"


@pytest.mark.pure
@pytest.mark.parametrize("agent", sorted(agent_modules()))
def test_agent_help(agent: str) -> None:
    r = subprocess.run(command(agent, "--help"), capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith(f"usage: python -m tcplab.agents.{agent}")


def read_record(proc: subprocess.Popen[bytes], cls: type[T]) -> T:
    """The next line of ``proc`` decoded into ``cls``."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], GUARD)[0]:
        pytest.fail(f"no {cls.__name__} line from {proc.args!r} within {GUARD} s")
    return from_json_line(cls, proc.stdout.readline())


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Agents started here: SIGKILLed by pid and reaped if still running at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.loopback
def test_sampler(children: list[subprocess.Popen[bytes]]) -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(7)
        port = lst.getsockname()[1]
        origin = time.monotonic()
        proc = spawn(command("sampler", "--port", str(port), "--interval", "0.05",
                             "--origin", repr(origin)), stdout=subprocess.PIPE,
                     stdin=subprocess.DEVNULL)
        children.append(proc)
        rows = [read_record(proc, Sample) for _ in range(3)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GUARD) == 0
    for row in rows:
        assert row.states == {"LISTEN": 1}
        assert row.listen_queue == 0 and row.backlog == 7
        assert row.server_pid == os.getpid()  # found by the listener's inode
        assert row.fd_limit == own_fd_limit().soft and row.fd_limit_hard == own_fd_limit().hard
        assert row.server_fds is not None and row.server_fds > 0
        assert row.t == pytest.approx(row.mono - origin, abs=2e-6)
    assert rows[0].t > 0 and all(a.t < b.t for a, b in itertools.pairwise(rows))


@pytest.mark.loopback
def test_flood(start_server: Callable[..., Any]) -> None:
    server = start_server()
    r = subprocess.run(command("flood", "--port", str(server.port), "--clients", "20",
                               "--ramp", "0.1"),
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    result = from_json_line(FloodResult, r.stdout)
    assert result.clients == 20 and result.echoed == 20, result


@pytest.mark.loopback
def test_listening() -> None:
    with socket.socket() as lst, socket.socket() as held:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        r = subprocess.run(command("listening", str(lst.getsockname()[1]), "5"),
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=GUARD)
        assert r.returncode == 0, r.stderr.decode()
        assert from_json_line(Listening, r.stdout) == Listening(["127.0.0.1"])
        held.bind(("127.0.0.1", 0))  # bound, never listening: the port stays ours and quiet
        r = subprocess.run(command("listening", str(held.getsockname()[1]), "0.2"),
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=GUARD)
    assert r.returncode == 1
    assert from_json_line(Listening, r.stdout) == Listening([])


@pytest.mark.privileged
def test_half_close() -> None:
    with Sandbox({}) as sb:
        r = sb.run(command("half_close", "0.05"), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    steps = [from_json_line(Step, line) for line in r.stdout.splitlines()]
    assert len(steps) == 5
    seen = [(s.client.state if s.client else "gone", s.server.state if s.server else "gone")
            for s in steps]
    assert seen[0] == ("ESTABLISHED", "ESTABLISHED")
    assert seen[1] == seen[2] == ("FIN_WAIT2", "CLOSE_WAIT")
    assert seen[3][0] == "TIME_WAIT"
    last = steps[4].client
    assert last is not None and last.owner == "kernel" and last.timer.startswith("time-wait")
    assert last.timer_left_s is not None and 0 < last.timer_left_s <= 60


@pytest.mark.privileged
def test_restart() -> None:
    with Sandbox({}) as sb:
        r = sb.run(command("restart", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    binds = [from_json_line(Bind, line) for line in r.stdout.splitlines()]
    assert [(b.port, b.old_reuseaddr, b.new_reuseaddr, b.listening) for b in binds] == [
        (8080, True, False, False), (8080, True, True, True),
        (8081, False, False, False), (8081, False, True, False)]
    assert all(b.time_wait == 2 for b in binds)
    assert {(b.errno, b.error) for b in binds if not b.listening} == {
        (errno.EADDRINUSE, "Address already in use")}


@pytest.mark.privileged
def test_reset() -> None:
    with Sandbox({}) as sb:
        r = sb.run(command("reset"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    closes = {c.case: c for c in (from_json_line(Close, line) for line in r.stdout.splitlines())}
    assert list(closes) == ["read-first", "unread", "linger0"]
    first, unread, linger = closes.values()
    assert (first.read_bytes, first.read_errno, first.out_rsts) == (0, None, 0)
    assert (first.server_after, first.client_after) == ("FIN_WAIT2", "CLOSE_WAIT")
    for c in (unread, linger):
        assert (c.read_errno, c.read_error) == (errno.ECONNRESET, "Connection reset by peer")
        assert c.out_rsts == 1 and (c.server_after, c.client_after) == ("gone", "gone")
    assert (unread.unread_bytes, unread.abort_on_close, unread.abort_on_data) == (5, 1, 0)
    assert (linger.unread_bytes, linger.abort_on_close, linger.abort_on_data) == (0, 0, 1)


@pytest.mark.privileged
def test_syn_queue() -> None:
    with Sandbox({}) as sb:
        r = sb.run(command("syn_queue", "4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=GUARD)
    assert r.returncode == 0, r.stderr.decode()
    phases = [from_json_line(Phase, line) for line in r.stdout.splitlines()]
    assert [(p.round, p.phase) for p in phases] == [
        (name, phase) for name in ("cookies", "abort", "no-cookies")
        for phase in ("filled", "burst", "acks", "syn")]
    assert {p.accept_queue for p in phases if p.phase in ("acks", "syn")} == {5}
    assert all(p.client_states == {"SYN_SENT": 3} for p in phases if p.phase == "syn")
    resets = [e for p in phases if p.round == "abort" for e in p.errors]
    assert [(e.errno, e.error) for e in resets] == [(errno.ECONNRESET, "Connection reset by peer")]


@pytest.mark.privileged
def test_handshake() -> None:
    with Sandbox({}) as sb:
        proc = sb.popen(command("handshake", "20001", "0.01"), stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        ready = read_record(proc, Ready)
        assert ready.pid == proc.pid  # a net namespace, not a pid namespace
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert read_record(proc, Done) == Done(connections=2)
        assert proc.wait(timeout=GUARD) == 0
        proc.stdin.close()
        proc.stdout.close()


@pytest.mark.privileged
def test_retransmit() -> None:
    # The server role (the client's and the tracer's are run by test_retransmit.py's
    # experiment): in a sandbox, its rules drop the SYNs from --syn-from, and only those.
    from tcplab.agents.retransmit import Ready as RetransmitReady

    with Sandbox({}) as sb:
        proc = sb.popen(command("retransmit", "server", "--port", "20002", "--syn-from",
                                "30002", "--size", "1500", "--drop", "tail"),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert read_record(proc, RetransmitReady).pid == proc.pid
            code = ("import socket\n"
                    "socket.create_connection(('127.0.0.1', 20002), timeout=5).close()\n"
                    "s = socket.socket(); s.settimeout(1.5); s.bind(('127.0.0.1', 30002))\n"
                    "try:\n    s.connect(('127.0.0.1', 20002))\n"
                    "except TimeoutError:\n    print('dropped')\n")
            r = sb.run([sys.executable, "-c", code], stdout=subprocess.PIPE, timeout=GUARD)
            assert r.stdout == b"dropped\n"
        finally:
            proc.kill()
            proc.communicate()


@pytest.mark.privileged
def test_nsholder(children: list[subprocess.Popen[bytes]]) -> None:
    if os.geteuid() != 0:
        pytest.skip("without --user the holder needs root (test_sandbox covers --user)")
    proc = spawn(command("nsholder", "--sysctl", "net.ipv4.tcp_fin_timeout=7"),
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children.append(proc)
    answer = read_record(proc, Answer)
    assert answer == Answer(ready=True, pid=proc.pid)
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert proc.stdin is not None
    proc.stdin.close()  # the holder's end
    assert proc.wait(timeout=GUARD) == 0

    failing = spawn(command("nsholder", "--sysctl", "net.ipv4.no_such_knob=1"),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children.append(failing)
    answer = read_record(failing, Answer)
    assert not answer.ready and answer.error == "sysctl net.ipv4.no_such_knob"
    assert answer.errno == errno.ENOENT and answer.message
    assert failing.wait(timeout=GUARD) == 1


@pytest.mark.privileged
def test_tracefs_probe() -> None:
    if os.geteuid() != 0:
        pytest.skip("tracefs is root's")
    from tcplab.experiments.probe import tracefs

    r = subprocess.run(command("tracefs_probe"), capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=GUARD, process_group=0)
    assert r.returncode == 0, r.stderr.decode()
    found = from_json_line(Availability, r.stdout)
    assert found.ok == tracefs().ok, found
    if found.ok:
        assert found.root in CANDIDATES and found.message is None
    else:
        assert found.message
    r = subprocess.run(command("tracefs_probe", "--remove-stale"), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=GUARD, process_group=0)
    assert r.returncode == 0, r.stderr.decode()
    removed = from_json_line(StaleRemoved, r.stdout).removed
    # Only instances of processes that are gone (another suite's SIGKILLed tracer, if any).
    assert all(n.startswith("tcplab-") and not os.path.exists(f"/proc/{n[7:]}")
               for n in removed), removed


@pytest.mark.privileged
def test_sysctl() -> None:
    """In a sandbox, the namespace's values: the ones it was given, not the host's."""
    with Sandbox({"net.ipv4.ip_local_port_range": "40000 40999",
                  "net.ipv4.tcp_fin_timeout": "7"}) as sb:
        r = sb.run(command("sysctl", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_fin_timeout",
                           "net.ipv4.no_such_knob"), stdout=subprocess.PIPE, timeout=GUARD)
        assert r.returncode == 0
        assert [from_json_line(Sysctl, line) for line in r.stdout.splitlines()] == [
            Sysctl("net.ipv4.ip_local_port_range", "40000 40999"),
            Sysctl("net.ipv4.tcp_fin_timeout", "7"), Sysctl("net.ipv4.no_such_knob", None)]
        assert sb.sysctl("net.ipv4.tcp_fin_timeout") == "7"


@pytest.mark.privileged
def test_sysctl_writes_only_in_the_namespace_it_is_told() -> None:
    """--set (port-bomb's real-link sets its net's client range with it) writes only
    where --netns names this process's own namespace: another's, or none, exits 2
    and writes nothing. Tried inside a sandbox, so a wrong write would stay there."""
    from tcplab.net.registry import ns_id

    with Sandbox({"net.ipv4.tcp_fin_timeout": "7"}) as sb:
        for where in ([], ["--netns", ns_id("/proc/self/ns/net")]):  # none; ours, not its
            r = sb.run(command("sysctl", "--set", "net.ipv4.tcp_fin_timeout=9", *where,
                               "net.ipv4.tcp_fin_timeout"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=GUARD)
            assert r.returncode == 2 and b"nothing written" in r.stderr, (where, r.stderr)
        assert sb.sysctl("net.ipv4.tcp_fin_timeout") == "7"
        here = sb.run([sys.executable, "-c", "from tcplab.net.registry import ns_id; "
                       "print(ns_id('/proc/self/ns/net'))"], stdout=subprocess.PIPE,
                      timeout=GUARD).stdout.decode().strip()
        r = sb.run(command("sysctl", "--set", "net.ipv4.tcp_fin_timeout=9", "--netns", here,
                           "net.ipv4.tcp_fin_timeout"), stdout=subprocess.PIPE, timeout=GUARD)
        assert from_json_line(Sysctl, r.stdout) == Sysctl("net.ipv4.tcp_fin_timeout", "9")


def agent_lines(agent: str, *args: str, **kwargs: Any) -> list[bytes]:
    with Sandbox({}) as sb:
        r = sb.run(command(agent, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   timeout=120, **kwargs)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.splitlines()


#: A PATH with no tool on it: the agents that build links do it over rtnetlink, and
#: need neither ``ip`` nor ``nsenter`` (nor anything else) to be found.
NO_TOOLS = {**os.environ, "PATH": "/nonexistent"}


@pytest.mark.privileged
def test_keepalive() -> None:
    lines = agent_lines("keepalive", env=NO_TOOLS)
    runs = {s.case: s for s in (from_json_line(Silent, line) for line in lines)}
    assert list(runs) == ["keepalive", "keepalive+user-timeout", "retransmit+user-timeout"]
    for s in runs.values():  # every case ends with the kernel's verdict on a silent peer
        assert (s.errno, s.error) == (errno.ETIMEDOUT, "Connection timed out"), s
        assert s.aborted_on_timeout == 1 and s.error_at_s is not None
    ka, ka_ut, rt_ut = runs.values()
    # The experiment's own judge (KEEPCNT probes and not before KEEPIDLE + KEEPCNT x
    # KEEPINTVL; with TCP_USER_TIMEOUT 2.5 s, fewer probes than KEEPCNT 9 and not before
    # it; with data in flight, retransmissions and no probe), with its 0.3 s allowance for
    # an agent clock that starts late on a loaded machine. The kernel's timers may fire
    # late, never early.
    assert all(keepalive.case_shown(s) for s in runs.values()), runs
    assert ka.keepalive_probes == 3 and 1 <= ka_ut.keepalive_probes < 9
    assert ka_ut.error_at_s is not None and ka_ut.error_at_s < 10  # KEEPCNT 9: 1 + 9 x 1 s
    assert rt_ut.keepalive_probes == 0 and rt_ut.retransmits >= 2


@pytest.mark.privileged
def test_orphans() -> None:
    looks = [from_json_line(Look, line) for line in agent_lines("orphans", env=NO_TOOLS)]
    assert [(x.case, x.states) for x in looks] == [
        ("fin-wait2", {"CLOSE_WAIT": 5, "FIN_WAIT2": 5}), ("fin-wait2", {"CLOSE_WAIT": 5}),
        ("fin-wait1", {"ESTABLISHED": 5, "FIN_WAIT1": 5}), ("fin-wait1", {}),
        ("orphan-retries", {"FIN_WAIT1": 1}), ("orphan-retries", {})]
    # sockstat's tw counts the FIN_WAIT2 minisockets: 5 with no socket in TIME_WAIT.
    assert [x.sockstat_tw for x in looks] == [5, 0, 0, 0, 0, 0]
    # The orphan count is the machine's (other processes move it): at least our 5.
    assert looks[2].sockstat_orphan >= 5
    last = looks[-1]
    assert last.lived_s is not None and 1.4 <= last.lived_s < 20
    assert last.retransmits is not None and last.retransmits >= 2


@pytest.mark.privileged
def test_ports() -> None:
    found = [from_json_line(Ports, line) for line in agent_lines("ports", env=NO_TOOLS)]
    by = {(p.case, p.destination): p for p in found}
    assert len(by) == len(found) == 8
    connect, bind = by["connect", "127.0.0.1:8080"], by["bind", ""]
    assert sorted(connect.ports) == [40000, 40002, 40004, 40006, 40008]  # even first
    assert sorted(bind.ports) == [40001, 40003, 40005, 40007, 40009]  # odd first
    for case, second in (("bind-then-connect", []), ("bind-address-no-port", list(range(10)))):
        one, two = by[case, "127.0.0.1:8080"], by[case, "127.0.0.2:8080"]
        assert sorted(one.ports) == list(range(40000, 40010)), one
        assert sorted(p - 40000 for p in two.ports) == second, two
    assert by["bind-then-connect", "127.0.0.2:8080"].error == Failed(
        "bind", errno.EADDRINUSE, "EADDRINUSE", "Address already in use")
    out_of_ports = Failed("connect", errno.EADDRNOTAVAIL, "EADDRNOTAVAIL",
                          "Cannot assign requested address")
    assert by["bind-address-no-port", "127.0.0.2:8080"].error == out_of_ports
    socket_range = by["socket-range", "127.0.0.1:8080"]
    assert sorted(socket_range.ports) == [40002, 40003, 40004, 40005]
    assert socket_range.error == out_of_ports
    assert str(out_of_ports) == "connect: EADDRNOTAVAIL"  # the terminal table's words
    assert by["reserved", "127.0.0.1:8080"].ports in ([40008, 40009], [40009, 40008])


@pytest.mark.privileged
def test_netholder(children: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """--probe: one Mechanisms; NAME --dir DIR: Up (its Net also in DIR/NAME.json),
    then Detached after "detach", and on SIGTERM gone with the file."""
    user = ["--user"] if os.geteuid() != 0 else []
    r = subprocess.run(command("netholder", "--probe", *user), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=GUARD, process_group=0)
    assert r.returncode == 0, r.stderr.decode()
    assert from_json_line(Mechanisms, r.stdout).tbf  # veth's qdisc of choice exists here
    proc = spawn(command("netholder", "agent", "--dir", str(tmp_path), "--rate", "10", *user),
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children.append(proc)
    up = read_record(proc, Up)
    assert up.ready and up.net is not None and up.net.pid == proc.pid, up
    assert up.net.queue is not None and up.net.queue.rate_bit == 10_000_000
    assert json.loads((tmp_path / "agent.json").read_text())["pid"] == proc.pid
    assert proc.stdin is not None
    proc.stdin.write(b"detach\n")
    proc.stdin.flush()
    assert read_record(proc, Detached) == Detached(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=GUARD) == 0
    assert not (tmp_path / "agent.json").exists()


@pytest.mark.privileged
def test_nagle() -> None:
    """Both roles in one sandbox: the server's Accepting line, then one Served per
    connection; the client's Exchange per way, each request timed."""
    with Sandbox({}) as sb:
        server = sb.popen(command("nagle", "server", "--port", "8080", "--connections", "2"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert server.stdout is not None
        accepting = from_json_line(Accepting, server.stdout.readline())
        r = sb.run(command("nagle", "client", "--port", "8080", "--requests", "3",
                           "--way", "nagle", "--way", "nodelay"),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=GUARD)
        rest, err = server.communicate(timeout=GUARD)
    assert r.returncode == 0 and server.returncode == 0, (r.stderr, err)
    assert accepting.port == 8080
    xs = [from_json_line(Exchange, line) for line in r.stdout.splitlines()]
    assert [(x.way, len(x.requests_us)) for x in xs] == [("nagle", 3), ("nodelay", 3)]
    assert min(xs[0].requests_us[1:]) >= 30_000  # the delayed ACK, from the 2nd request
    served = [from_json_line(Served, line) for line in rest.splitlines()]
    assert [s.requests for s in served] == [3, 3] and served[0].delayed_acks >= 2


@pytest.mark.loopback
def test_live(children: list[subprocess.Popen[bytes]]) -> None:
    """The live agent (experiment --live): a meta line, then counts of every port of
    its namespace each interval, a TIME_WAIT among them; on SIGTERM one last count."""
    import json

    proc = spawn(command("live", "--interval", "0.1"), stdout=subprocess.PIPE,
                 stdin=subprocess.DEVNULL)
    children.append(proc)
    assert proc.stdout is not None
    meta = json.loads(proc.stdout.readline())
    assert meta["kind"] == "meta" and meta["source"] == "poll" and meta["port"] == 0
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        c.close()  # the client closes first: its side in TIME_WAIT
        s.close()
        seen = []
        while not any(e["kind"] == "counts" and e["states"]["TIME_WAIT"] >= 1 for e in seen):
            if not select.select([proc.stdout], [], [], GUARD)[0]:
                pytest.fail(f"no count with TIME_WAIT within {GUARD} s: {seen[-3:]}")
            seen.append(json.loads(proc.stdout.readline()))
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(x) for x in proc.stdout.read().splitlines()]  # to its end
    assert proc.wait(timeout=GUARD) == 0
    assert rest and rest[-1]["kind"] == "counts"  # the last count, at SIGTERM


#: Each agent and the test that runs it with its documented argv.
CASES = {
    "live": test_live,
    "sampler": test_sampler, "flood": test_flood, "listening": test_listening,
    "half_close": test_half_close, "restart": test_restart, "reset": test_reset,
    "syn_queue": test_syn_queue,
    "handshake": test_handshake, "nsholder": test_nsholder,
    "tracefs_probe": test_tracefs_probe, "sysctl": test_sysctl,
    "keepalive": test_keepalive, "orphans": test_orphans, "ports": test_ports,
    "netholder": test_netholder, "nagle": test_nagle, "retransmit": test_retransmit,
}


@pytest.mark.privileged
@pytest.mark.parametrize("agent", [["syn_queue", "8"], ["orphans"], ["ports"], ["keepalive"]],
                         ids=lambda a: a[0])
def test_agents_that_write_sysctls_refuse_a_namespace_that_is_not_plainly_private(
        agent: list[str]) -> None:
    # A namespace with a veth pair in it stands for one that could be the host's (run by
    # hand outside a sandbox): the agent must refuse before any write. It is a fresh
    # user + network namespace, so even a broken guard could change nothing outside it.
    if not userns_allowed():
        pytest.skip("no unprivileged user namespaces here")
    script = "ip link add g0 type veth peer name g1 && exec \"$@\""
    r = subprocess.run(["unshare", "-Urn", "sh", "-c", script, "sh", *command(*agent)],
                       capture_output=True, timeout=GUARD)
    if b"ip link add" in r.stderr or b"not found" in r.stderr:
        pytest.skip(f"cannot make the veth pair here: {r.stderr.decode().strip()}")
    assert r.returncode == 2 and r.stdout == b"", r
    assert b"run inside a private network namespace" in r.stderr
