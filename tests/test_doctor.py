"""``tcplab doctor`` and ``tcplab exporter`` on live sockets, as an operator uses them.

The sick machines are real: private network namespaces (``Sandbox``) holding
a leaking server that is *not* tcplab's (a stdlib script: accepts, echoes
once, never closes, sleeps on EMFILE) flooded past its fd limit; orphaned
FIN_WAIT2 sockets; ephemeral ports used up by the port bomb. The doctor runs
inside the namespace, as a user would run it on that machine, and is judged
against what the test built (pids, counts, ports). The exporter is scraped
over real HTTP and parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tcplab.kernel.tcp_states import STATE_NAMES
from tests.helpers import run_tcplab

PORT = 8080
GUARD = 15.0  # seconds: hang guards only

#: A leaking server written without tcplab (with LEAK=true it never closes).
LEAKY_SERVER = Path(__file__).resolve().parent / "leaky_server.py"


def wait_for(predicate: Callable[[], Any], what: str, limit: float = GUARD) -> None:
    """Poll until predicate() is true; a hang guard, not a speed assertion."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def read_line(stream: Any, limit: float = GUARD) -> str:
    """The first line a child prints, or fail (hang guard)."""
    ready, _, _ = select.select([stream], [], [], limit)
    if not ready:
        pytest.fail("the child printed nothing")
    return str(stream.readline().decode(errors="replace"))


def in_sandbox(sb: Sandbox, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return sb.run(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True, timeout=timeout)


def doctor(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """``tcplab doctor ARGS`` run on the sandbox's 'machine' (inside its namespace), told
    to look at that namespace only: as root it would look into every namespace on the
    node (tests/test_all_netns.py)."""
    return in_sandbox(sb, *sb.tcplab("doctor", "--netns", "/proc/self/ns/net", *args))


def doctor_json(sb: Sandbox, *args: str) -> tuple[int, dict[str, Any]]:
    r = doctor(sb, "--json", *args)
    lines = r.stdout.splitlines()
    assert len(lines) == 1, f"exit {r.returncode}: {r.stdout!r} {r.stderr!r}"
    body: dict[str, Any] = json.loads(lines[0])
    assert body["schema"] == 1
    assert body["status"] == ["healthy", "warning", "critical"][r.returncode], (r.returncode, body)
    return r.returncode, body


def kinds(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in body["findings"]:
        out.setdefault(f["kind"], []).append(f)
    return out


def flood(sb: Sandbox, port: int, clients: int) -> dict[str, Any]:
    r = in_sandbox(sb, sys.executable, "-m", "tcplab.agents.flood", "--port", str(port),
                   "--clients", str(clients), timeout=120)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def ss_count(sb: Sandbox, state: str, port: int) -> int:
    r = in_sandbox(sb, "ss", "-Htan", "state", state, f"( sport = :{port} )")
    assert r.returncode == 0, r.stderr
    return len(r.stdout.splitlines())


def ss_accept_queue(sb: Sandbox, port: int) -> tuple[int, int]:
    """(Recv-Q, Send-Q) of the listener as ``ss -ltn`` shows them: queued, backlog."""
    r = in_sandbox(sb, "ss", "-Hltn", f"( sport = :{port} )")
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    recv_q, send_q = line.split()[1:3]
    return int(recv_q), int(send_q)


@contextmanager
def tcplab_server(sb: Sandbox, *args: str) -> Iterator[ServerProcess]:
    server = ServerProcess(["--port", str(PORT), *args], popen=sb.popen)
    try:
        server.start()
        assert server.port == PORT
        yield server
    finally:
        server.kill()


# --- a leaking server that is not tcplab's, flooded past its fd limit ---------------------

FD_LIMIT = 300
CLIENTS = 450


@pytest.fixture(scope="class")
def leak_scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One sandbox for the class's tests: the stdlib server under a 300-fd limit,
    flooded with 450 clients that connect, send, wait briefly and close."""
    log_path = tmp_path_factory.mktemp("leaky") / "server.log"
    with log_path.open("wb") as log, Sandbox({}) as sb:
        server = sb.popen([sys.executable, str(LEAKY_SERVER), str(PORT)], fd_limit=FD_LIMIT,
                          env={**os.environ, "LEAK": "true"},
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        assert server.stdout is not None
        assert read_line(server.stdout).split() == ["listening", str(PORT)]
        result = flood(sb, PORT, CLIENTS)
        with open(f"/proc/{server.pid}/limits") as f:
            assert re.search(rf"^Max open files\s+{FD_LIMIT}\s", f.read(), re.M)
        # The ground truth, read as an operator would: ss, inside.
        queued, backlog = ss_accept_queue(sb, PORT)
        close_wait = ss_count(sb, "close-wait", PORT)
        yield {"sb": sb, "pid": server.pid, "comm": comm(server.pid), "flood": result,
               "log": log_path, "queued": queued, "backlog": backlog,
               "close_wait": close_wait, "held": close_wait - queued}
        assert server.poll() is None, "the leaking server died"
    server.stdout.close()
    # The sandbox took the server with it.
    assert not os.path.exists(f"/proc/{server.pid}")


@pytest.mark.privileged
class TestLeakyServer:
    """The sandbox lives for this class only: its server, at 100% of its fd limit, would
    otherwise be part of every later test's machine."""

    def test_the_scene_is_what_doctor_should_find(self, leak_scene: dict[str, Any]) -> None:
        """Ground truth first, by ss and /proc, so the doctor's findings can be judged."""
        pid, f = leak_scene["pid"], leak_scene["flood"]
        assert f["echoed"] + f["no_echo"] + f["connect_timeouts"] + sum(f["errors"].values()) \
            == CLIENTS
        assert f["echoed"] > 100 and f["no_echo"] > 0 and f["connect_timeouts"] > 0
        assert len(os.listdir(f"/proc/{pid}/fd")) == FD_LIMIT
        assert "accept: Too many open files" in leak_scene["log"].read_text()
        # Every client that got a connection closed it: its server socket is in CLOSE_WAIT,
        # accepted (held by the server) or still in the accept queue, which is full.
        assert leak_scene["close_wait"] == f["echoed"] + f["no_echo"]
        assert leak_scene["backlog"] == 64
        assert leak_scene["queued"] == leak_scene["backlog"] + 1
        assert leak_scene["held"] > 100

    def test_doctor_names_the_leaking_process(self, leak_scene: dict[str, Any]) -> None:
        sb, pid = leak_scene["sb"], leak_scene["pid"]
        status, body = doctor_json(sb)
        assert status == 2 and body["status"] == "critical", body
        found = kinds(body)

        [leak] = found["close_wait_leak"]
        assert leak["pid"] == pid and leak["command"] == leak_scene["comm"]
        assert leak["command"].startswith("python")
        # The sockets it accepted and never closed (the queued ones are no process's yet).
        assert leak["count"] >= 100
        assert leak["count"] == leak_scene["held"]
        assert leak["severity"] == ("critical" if leak["count"] >= 1000 else "warning")
        assert f"pid {pid} ({leak['command']}) holds {leak['count']} sockets in CLOSE_WAIT" \
            in leak["evidence"]
        assert f"local port {PORT} ({leak['count']})" in leak["evidence"]

        exhausted = [x for x in found["fd_exhaustion"] if x["pid"] == pid]
        assert len(exhausted) == 1, found["fd_exhaustion"]
        [fds] = exhausted
        assert fds["severity"] == "critical"
        assert fds["count"] == FD_LIMIT and fds["command"] == leak_scene["comm"]
        assert f"has {FD_LIMIT} of {FD_LIMIT} fds open (100%)" in fds["evidence"]

        overflow = [x for x in found["listen_overflow"]
                    if f"127.0.0.1:{PORT} " in x["evidence"]]
        assert len(overflow) == 1, found.get("listen_overflow")
        assert overflow[0]["severity"] == "critical"
        assert overflow[0]["count"] == leak_scene["queued"]  # LISTEN Recv-Q: backlog 64 + 1
        assert f"{leak_scene['queued']} connections waiting in a queue of " \
               f"{leak_scene['backlog']}" in overflow[0]["evidence"]
        # The worst first.
        severities = [x["severity"] for x in body["findings"]]
        assert severities == sorted(severities, key=lambda s: s != "critical")

    def test_doctor_text_says_critical_and_the_fix(self, leak_scene: dict[str, Any]) -> None:
        sb, pid = leak_scene["sb"], leak_scene["pid"]
        r = doctor(sb)
        assert r.returncode == 2, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("CRITICAL "), lines
        heads = [line for line in lines if not line.startswith("  ")]
        fixes = [line for line in lines if line.startswith("  fix: ")]
        assert len(heads) == len(fixes) and len(heads) + len(fixes) == len(lines), lines
        # Each finding, then its fix on the next line.
        assert all(b.startswith("  fix: ") for b in lines[1::2]), lines
        assert any(line.startswith(f"CRITICAL fd_exhaustion: pid {pid} (") for line in heads)
        assert any(line.startswith(f"CRITICAL listen_overflow: the listener on 127.0.0.1:{PORT} ")
                   for line in heads), heads
        assert any(re.match(rf"(WARNING|CRITICAL) close_wait_leak: pid {pid} ", line)
                   for line in heads), heads
        assert "it never called close()" in r.stdout
        assert "  fix: a connection is not closed on some path" in r.stdout
        assert f"  fix: find what it holds ('tcplab fds {pid}')" in r.stdout

    def test_close_wait_threshold_drops_the_leak_finding(self, leak_scene: dict[str, Any]) -> None:
        sb, pid = leak_scene["sb"], leak_scene["pid"]
        status, body = doctor_json(sb, "--close-wait-threshold", "100000")
        found = kinds(body)
        assert "close_wait_leak" not in found
        # The rest of what is wrong is still said.
        assert any(x["pid"] == pid for x in found["fd_exhaustion"])
        assert status == 2

    def test_doctor_netns_from_outside(self, leak_scene: dict[str, Any]) -> None:
        """``--netns PATH`` from the host: as root the same leak is found; otherwise
        the doctor says it needs the privilege, with the 'unknown' status."""
        sb, pid = leak_scene["sb"], leak_scene["pid"]
        r = run_tcplab("doctor", "--json", "--netns", sb.netns_path)
        if os.geteuid() != 0:
            assert r.returncode == 3, r.stderr.decode()
            assert "CAP_SYS_ADMIN" in r.stderr.decode()
            assert r.stdout == b""
            return
        assert r.returncode == 2, r.stderr.decode()
        body = json.loads(r.stdout)
        [leak] = kinds(body)["close_wait_leak"]
        assert leak["pid"] == pid and leak["count"] == leak_scene["held"]


# --- healthy, then orphans ------------------------------------------------------------------
#
# The socket checks see the sandbox's namespace only, but fd_exhaustion looks at every
# process on the machine, whatever its namespace (a Sandbox has no pid namespace). On a
# machine where other work runs, a process elsewhere may be near its fd limit: such a
# finding is not about the sandbox, and the tests below tell the two apart by
# /proc/PID/ns/net. They wait (a hang guard) for a moment when there is none, and if
# that does not come, the status is judged with them counted in.

SEVERITY = {"warning": 1, "critical": 2}


def netns_of(pid: int | None) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None  # gone, or another user's: not ours, so not the sandbox's


def outside(sb: Sandbox, finding: dict[str, Any]) -> bool:
    return finding["kind"] == "fd_exhaustion" and \
        netns_of(finding["pid"]) != os.stat(sb.netns_path).st_ino


def settled_doctor(sb: Sandbox, *args: str, limit: float = 8.0
                   ) -> tuple[int, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """``tcplab doctor --json ARGS``: status, body, findings about the sandbox, and
    findings about processes elsewhere (retried until there are none, or ``limit``)."""
    deadline = time.monotonic() + limit
    while True:
        status, body = doctor_json(sb, *args)
        mine = [f for f in body["findings"] if not outside(sb, f)]
        elsewhere = [f for f in body["findings"] if outside(sb, f)]
        if not elsewhere or time.monotonic() > deadline:
            return status, body, mine, elsewhere
        time.sleep(0.5)


def worst(findings: list[dict[str, Any]]) -> int:
    return max((SEVERITY[f["severity"]] for f in findings), default=0)


def settled_text(sb: Sandbox, *args: str, limit: float = 8.0
                 ) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    """``tcplab doctor ARGS`` as text: the run, its finding lines about the sandbox, and
    those about processes elsewhere (retried until there are none, or ``limit``)."""
    deadline = time.monotonic() + limit
    while True:
        r = doctor(sb, *args)
        lines = r.stdout.splitlines()
        if r.returncode == 0:
            return r, [], []
        heads = lines[0::2]
        assert all(line.startswith("  fix: ") for line in lines[1::2]), lines
        assert len(heads) == len(lines[1::2]), lines
        mine, elsewhere = [], []
        for line in heads:
            m = re.match(r"(WARNING|CRITICAL) fd_exhaustion: pid (\d+) ", line)
            foreign = m and netns_of(int(m.group(2))) != os.stat(sb.netns_path).st_ino
            (elsewhere if foreign else mine).append(line)
        if not elsewhere or time.monotonic() > deadline:
            return r, mine, elsewhere
        time.sleep(0.5)


def text_status(lines: list[str]) -> int:
    return max((SEVERITY[line.split()[0].lower()] for line in lines), default=0)


@pytest.mark.privileged
def test_healthy_sandbox_says_healthy() -> None:
    with Sandbox({}) as sb, tcplab_server(sb):
        for word in ("one", "two", "three"):
            r = in_sandbox(sb, *sb.tcplab("client", "--port", str(PORT), word))
            assert r.returncode == 0 and r.stdout == f"{word}\n", r.stderr
        status, body, mine, elsewhere = settled_doctor(sb)
        assert mine == [], mine
        assert status == worst(elsewhere), body
        assert body["sockets"] >= 1  # at least the listener
        r, mine_text, elsewhere_text = settled_text(sb)
        assert mine_text == [], r.stdout
        assert r.returncode == text_status(elsewhere_text), r.stdout
        if r.returncode == 0:
            assert re.fullmatch(r"healthy: no problem found in \d+ TCP sockets and \d+ "
                                r"processes\n", r.stdout), r.stdout


@pytest.mark.privileged
def test_orphaned_fin_wait2_is_a_warning() -> None:
    """Clients that close against a server that never closes: each client socket is an
    orphan in FIN_WAIT2 (no process holds it) for tcp_fin_timeout (60 s here)."""
    clients = 300
    with Sandbox({"net.ipv4.tcp_fin_timeout": "60"}) as sb, tcplab_server(sb, "--leak"):
        f = flood(sb, PORT, clients)
        assert f["echoed"] == clients, f
        status, _, mine, elsewhere = settled_doctor(sb)
        found = kinds({"findings": mine})
        [orphans] = found["orphans"]
        assert orphans["severity"] == "warning" and orphans["pid"] is None
        assert orphans["count"] == clients
        assert orphans["evidence"].startswith(f"{clients} orphaned FIN_WAIT2 sockets")
        # The server's side of the same story: a CLOSE_WAIT leak (a warning below 10x).
        [leak] = found["close_wait_leak"]
        assert leak["count"] == clients and leak["severity"] == "warning"
        assert sorted(found) == ["close_wait_leak", "orphans"]
        assert status == max(1, worst(elsewhere))  # a warning, if nothing else is wrong
        # Without the leak finding, the orphans alone still make a warning.
        status, _, mine, elsewhere = settled_doctor(sb, "--close-wait-threshold", "100000")
        assert [x["kind"] for x in mine] == ["orphans"]
        assert status == max(1, worst(elsewhere))
        r, mine_text, elsewhere_text = settled_text(sb, "--close-wait-threshold", "100000")
        assert len(mine_text) == 1, r.stdout
        assert mine_text[0].startswith(f"WARNING orphans: {clients} orphaned FIN_WAIT2 sockets")
        assert r.returncode == max(1, text_status(elsewhere_text))


# --- ephemeral ports used up ------------------------------------------------------------------

RANGE = 200
NARROW = {"net.ipv4.ip_local_port_range": f"40000 {40000 + RANGE - 1}",
          "net.ipv4.tcp_tw_reuse": "0"}


@pytest.mark.privileged
def test_port_exhaustion_after_the_bomb() -> None:
    with Sandbox(NARROW) as sb, tcplab_server(sb):
        r = in_sandbox(sb, *sb.tcplab("bomb", "--port", str(PORT), "--count", "300", "--json"))
        assert r.returncode == 0, r.stderr
        bomb = json.loads(r.stdout)
        assert bomb["first_error"]["name"] == "EADDRNOTAVAIL"
        status, body = doctor_json(sb, "--interval", "0")
    [ports] = kinds(body)["port_exhaustion"]
    assert ports["count"] >= RANGE * 0.8
    assert ports["count"] == bomb["ok"] == RANGE  # every port, each in TIME_WAIT for 60 s
    percent = 100 * ports["count"] / RANGE
    assert ports["severity"] == ("critical" if percent >= 95 else "warning")
    assert f"toward 127.0.0.1:{PORT}, {percent:.0f}% of the {RANGE}-port range " \
           f"40000-{40000 + RANGE - 1}" in ports["evidence"]
    assert status == (2 if percent >= 95 else 1)


# --- usage errors: 'unknown' (3), never 'critical' (2) ---------------------------------------

@pytest.mark.loopback
def test_unknown_option_is_status_3() -> None:
    r = run_tcplab("doctor", "--bogus")
    assert r.returncode == 3, r.stderr.decode()
    assert "--bogus" in r.stderr.decode()
    assert r.stdout == b""


@pytest.mark.loopback
@pytest.mark.parametrize(("netns", "message"), [
    ("/nonexistent", "tcplab: no network namespace '/nonexistent' (/nonexistent does not exist)"),
    ("/etc/passwd", "tcplab: /etc/passwd is not a network namespace"),
])
def test_bad_netns_is_status_3_with_a_message(netns: str, message: str) -> None:
    r = run_tcplab("doctor", "--netns", netns)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert message in err
    assert r.stdout == b""


# --- the exporter --------------------------------------------------------------------------

def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict[str, Any], name: str) -> list[tuple[dict[str, str], float]]:
    """The series of ``name`` in our own network namespace (as root the exporter
    labels every namespace's; tests/test_all_netns.py looks at the others)."""
    here = str(os.stat("/proc/self/ns/net").st_ino)
    return [(s.labels, s.value) for s in families[name].samples
            if s.labels.get("netns", here) == here]


def ephemeral_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return low, high


@contextmanager
def exporter_process(listen: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``tcplab exporter --listen LISTEN`` and the first line it prints; always reaped."""
    proc = subprocess.Popen([sys.executable, "-m", "tcplab", "exporter", "--listen", listen],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield proc, read_line(proc.stdout, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def exporter() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    with exporter_process("127.0.0.1:0") as (proc, line):
        m = re.match(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics \(Ctrl-C stops\)$",
                     line)
        assert m, line
        yield proc, int(m.group(1))


@pytest.mark.loopback
def test_exporter_serves_the_facts(exporter, start_server) -> None:  # type: ignore[no-untyped-def]
    proc, port = exporter
    server = start_server("--leak")
    closed = 5
    for _ in range(closed):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            c.sendall(b"bye\n")
            assert c.recv(100) == b"bye\n"
    # A connection whose listener is gone: both ends are on ephemeral ports.
    with socket.socket() as lone:
        lone.bind(("127.0.0.1", 0))
        lone_port = lone.getsockname()[1]
        lone.listen()
        a = socket.create_connection(lone.getsockname(), timeout=10)
        b, _ = lone.accept()
    try:
        ss = ["ss", "-Htn", "state", "close-wait", f"( sport = :{server.port} )"]
        wait_for(lambda: len(subprocess.run(ss, capture_output=True, text=True, check=True)
                             .stdout.splitlines()) == closed, "the server's CLOSE_WAIT sockets")
        families = scrape(port)
    finally:
        a.close()
        b.close()

    for name in ("tcplab_tcp_sockets", "tcplab_tcp_service_sockets", "tcplab_process_open_fds",
                 "tcplab_process_max_fds", "tcplab_process_close_wait_sockets",
                 "tcplab_ephemeral_port_range_size", "tcplab_ephemeral_ports_used",
                 "tcplab_doctor_findings", "tcplab_doctor_status", "tcplab_netns_examined",
                 "tcplab_scrape_duration_seconds"):
        assert name in families, sorted(families)
        assert families[name].type == "gauge"
    # Prometheus naming practice: _total only on counters, and those are counters.
    for name in ("tcplab_tcp_listen_overflows", "tcplab_tcp_listen_drops"):
        assert families[name].type == "counter"
        assert all(s.name == name + "_total" for s in families[name].samples)
    assert not [n for n, f in families.items() if f.type != "counter"
                and any(s.name.endswith("_total") for s in f.samples)]
    # The listen counters are this namespace's TcpExt values (they only grow).
    [ours] = [s.value for s in families["tcplab_tcp_listen_overflows"].samples
              if s.labels["netns"] == str(os.stat("/proc/self/ns/net").st_ino)]
    from tcplab.kernel.procfs import parse_netstat

    with open("/proc/net/netstat") as f:
        now = parse_netstat(f.read())["TcpExt"]["ListenOverflows"]
    assert 0 <= ours <= now

    states = {labels["state"]: value for labels, value in samples(families, "tcplab_tcp_sockets")}
    assert sorted(states) == sorted(STATE_NAMES) and len(states) == 11
    assert states["LISTEN"] >= 1
    assert states["CLOSE_WAIT"] >= closed

    [(_, size)] = samples(families, "tcplab_ephemeral_port_range_size")
    low, high = ephemeral_range()
    assert size == high - low + 1
    # The lone pair's client end holds an ephemeral port toward the lone listener.
    used = {(labels["src"], labels["dst"], labels["dport"]): v
            for labels, v in samples(families, "tcplab_ephemeral_ports_used")}
    assert used.get(("127.0.0.1", "127.0.0.1", str(lone_port)), 0) >= 1 or len(used) == 10

    by_port = samples(families, "tcplab_tcp_service_sockets")
    listening = {labels["port"] for labels, v in by_port if labels["state"] == "LISTEN" and v}
    assert str(port) in listening and str(server.port) in listening
    cw = {labels["port"]: v for labels, v in by_port if labels["state"] == "CLOSE_WAIT"}
    assert cw.get(str(server.port)) == closed
    # Ephemeral ports are folded: a numeric label in the range is a listening port.
    for labels, _ in by_port:
        p = labels["port"]
        assert p == "ephemeral" or p.isdigit(), labels
        if p.isdigit() and low <= int(p) <= high:
            assert p in listening, f"ephemeral port {p} not folded: {labels}"
    folded = {labels["state"]: v for labels, v in by_port if labels["port"] == "ephemeral"}
    assert folded.get("ESTABLISHED", 0) >= 2  # at least the pair whose listener is gone

    pid = str(server.pid)
    per_pid = {name: {labels["pid"]: (labels["command"], v)
                      for labels, v in samples(families, name)}
               for name in ("tcplab_process_open_fds", "tcplab_process_max_fds",
                            "tcplab_process_close_wait_sockets")}
    assert per_pid["tcplab_process_close_wait_sockets"][pid] == (comm(server.pid), closed)
    assert per_pid["tcplab_process_max_fds"][pid][1] == server.info["fd_soft"]
    assert per_pid["tcplab_process_open_fds"][pid][1] >= closed + 1
    # The exporter itself holds TCP sockets (its listener), so it is there too.
    assert str(proc.pid) in per_pid["tcplab_process_open_fds"]

    [(_, status)] = samples(families, "tcplab_doctor_status")
    # The status is the node's: the worst finding in any namespace (other tests'
    # leaks beside this one count too).
    findings = [(s.labels, s.value) for s in families["tcplab_doctor_findings"].samples]
    worst = max(({"warning": 1, "critical": 2}[labels["severity"]] for labels, v in findings
                 if v), default=0)
    assert status == worst

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=GUARD) == 130  # ExitStatus.INTERRUPTED
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()


@pytest.mark.loopback
def test_exporter_port_in_use_is_status_5() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_tcplab("exporter", "--listen", f"127.0.0.1:{port}", timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 5, err
    assert f"127.0.0.1:{port} is already in use" in err
    assert "serving metrics" not in r.stdout.decode()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.loopback
def test_exporter_on_ipv6_prints_a_url_that_works() -> None:
    """The line says where to scrape; copied into a scraper (here urllib) it must work.
    An IPv6 address in a URL needs brackets: http://[::1]:PORT/metrics (RFC 3986)."""
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    with exporter_process("[::1]:0") as (proc, line):
        m = re.match(r"serving metrics on (\S+) \(Ctrl-C stops\)$", line)
        assert m, line
        url = m.group(1)
        assert re.fullmatch(r"http://\[::1\]:\d+/metrics", url), url
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert "tcplab_tcp_sockets" in resp.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=GUARD) == 130  # ExitStatus.INTERRUPTED


@pytest.mark.pure
def test_ports_are_counted_per_source_destination_and_port() -> None:
    """Two source addresses toward one destination each have the whole range: 80 of
    100 ports from each is not 160 of 100 (issue 15: what actually runs out)."""
    import socket as socket_

    from tcplab.kernel import tcp_states as ts
    from tcplab.kernel.records import TcpSocket
    from tcplab.observe.doctor import Thresholds, _port_exhaustion

    def sock(src: str, sport: int, dport: int = 8080) -> TcpSocket:
        return TcpSocket(family=socket_.AF_INET, state=ts.TIME_WAIT, src=src, sport=sport,
                         dst="10.0.0.9", dport=dport, timer=3, expires_ms=1000, retrans=0,
                         rqueue=0, wqueue=0, uid=0, inode=0, cookie=0)

    socks = ([sock("10.0.0.1", p) for p in range(40000, 40080)]
             + [sock("10.0.0.2", p) for p in range(40000, 40080)])
    found = _port_exhaustion(socks, 40000, 40099, Thresholds(port_percent=70))
    assert [f.count for f in found] == [80, 80]
    assert "from 10.0.0.1" in found[0].evidence or "from 10.0.0.1" in found[1].evidence
    assert _port_exhaustion(socks, 40000, 40099, Thresholds(port_percent=90)) == []


@pytest.mark.pure
def test_a_listener_in_the_ephemeral_range_is_not_a_destination_per_client() -> None:
    """A server listening on 50051 (inside 32768-60999) has accepted connections
    whose local port is 50051: they hold no ephemeral port, and counting them gave
    one series per client port (a label value churning without bound)."""
    import socket as socket_

    from tcplab.kernel import tcp_states as ts
    from tcplab.kernel.records import TcpSocket
    from tcplab.observe.doctor import ports_by_destination

    def sock(state: int, sport: int, dst: str, dport: int) -> TcpSocket:
        return TcpSocket(family=socket_.AF_INET, state=state, src="10.0.0.1", sport=sport,
                         dst=dst, dport=dport, timer=0, expires_ms=0, retrans=0, rqueue=0,
                         wqueue=0, uid=0, inode=0, cookie=0)

    socks = [sock(ts.LISTEN, 50051, "0.0.0.0", 0)]
    socks += [sock(ts.ESTABLISHED, 50051, "10.0.0.7", p) for p in range(51000, 51015)]
    socks += [sock(ts.TIME_WAIT, 50051, "10.0.0.7", 51100)]  # the server closed first
    socks += [sock(ts.ESTABLISHED, p, "10.0.0.9", 443) for p in range(40000, 40003)]
    per_dest, tw = ports_by_destination(socks, 32768, 60999)
    assert per_dest == {("10.0.0.1", "10.0.0.9", 443): 3}
    assert not tw
