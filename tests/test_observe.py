"""The observation commands on live sockets: states, sockets, fds, limits, --netns.

The ground truth is ``ss`` and /proc, read at the same moment as tcplab.
The sockets are real: the lab's scenario on loopback (tests/data/record.py's
:class:`Lab`), ``tcplab server`` children, and processes in private network
namespaces.
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
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tcplab.kernel import tcp_states
from tcplab.observe.sockets import SocketTable
from tests.data.record import TRANSIENT, Lab, ss_counts, ss_rows
from tests.helpers import run_tcplab

GUARD = 15.0  # seconds: hang guards only


def wait_for(predicate: Callable[[], Any], what: str, limit: float = GUARD) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def tcplab_json(*args: str) -> Any:
    r = run_tcplab(*args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_fds(pid: int) -> int:
    """How many of pid's fds are sockets, from its fd table."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
        except FileNotFoundError:
            continue
    return n


def with_ss(run: Callable[[], Any], port: int) -> tuple[Any, list[tuple[Any, ...]]]:
    """run() between two identical ss readings of ``port`` (retried if the table moved)."""
    for _ in range(5):
        before = ss_rows(port)
        result = run()
        after = ss_rows(port)
        if sorted(before) == sorted(after):
            return result, after
    pytest.fail(f"the sockets of port {port} kept changing")


def by_state(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    counts = dict.fromkeys(tcp_states.STATE_NAMES, 0)
    for row in rows:
        counts[row[0]] += 1
    return counts


# -- the Done-when check: tcplab states == ss, every state -----------------------------------


@pytest.fixture
def lab() -> Iterator[Lab]:
    for ipv6 in (True, False):  # [::1] on the same port when this host has IPv6
        scenario = Lab(ipv6=ipv6)
        try:
            scenario.build()
        except OSError:
            scenario.close()
            if not ipv6:
                raise
            continue
        try:
            scenario.wait_settled(exact=False)
            yield scenario
        finally:
            scenario.close()
        return


@pytest.mark.loopback
def test_states_agree_with_ss_on_every_lab_state(lab: Lab) -> None:
    p, q = lab.port, lab.syn_port
    for port in (p, q):
        got, rows = with_ss(lambda port=port: tcplab_json("states", "--port", str(port),
                                                          "--json"), port)
        ss = by_state(rows)
        assert got["states"] == ss, f"port {port}: tcplab {got['states']} != ss {ss}"
        assert got["total"] == len(rows)
        assert got["port"] == port and got["schema"] == 1 and got["source"] == "netlink"
        # the scenario is really there (more is possible: a reused port's old TIME_WAIT)
        for state, n in lab.expected[port].items():
            assert ss[state] >= n, (port, state, ss)
    on_p = by_state(ss_rows(p))
    for state in ("ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT2", "LISTEN", "SYN_SENT"):
        assert on_p[state] > 0, state


@pytest.mark.loopback
@pytest.mark.parametrize("force_procfs", [False, True], ids=["netlink", "procfs"])
def test_socket_table_in_process_agrees_with_ss(lab: Lab, force_procfs: bool) -> None:
    with SocketTable(force_procfs=force_procfs) as table:
        assert table.source == ("procfs" if force_procfs else "netlink")
        for port in (lab.port, lab.syn_port):
            counts, rows = with_ss(lambda port=port: table.state_counts(port), port)
            assert counts.states == by_state(rows)
            assert counts.total == len(rows)
            socks, rows = with_ss(lambda port=port: table.sockets(port), port)
            assert sorted((tcp_states.name(s.state), s.src, s.sport, s.dst, s.dport)
                          for s in socks) == sorted(rows)
        # the whole table too: ss -tan at the same moment, up to sockets of other tests
        whole = table.state_counts().states
        assert all(whole[s] >= n for s, n in by_state(ss_rows(lab.port)).items())


# -- tcplab sockets ----------------------------------------------------------------------


def echo_clients(port: int, n: int) -> list[socket.socket]:
    """n clients that each got an echo back: the server has accepted them all."""
    socks = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        socks.append(c)
        c.sendall(b"ping %d\n" % i)
        got = b""
        while len(got) < len(b"ping %d\n" % i):
            chunk = c.recv(100)
            assert chunk
            got += chunk
    return socks


TW_ROW = re.compile(r"^TIME_WAIT\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s+time-wait (\d+\.\d)s\s+kernel$")


@pytest.mark.loopback
def test_sockets_time_wait_countdowns_owned_by_the_kernel(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    p = server.port
    clients = echo_clients(p, 4)
    mine = {f"127.0.0.1:{c.getsockname()[1]}" for c in clients}
    for c in clients:
        c.close()  # the client closes first, the server answers: TIME_WAIT on the client
    wait_for(lambda: ss_counts(p)["TIME_WAIT"] >= 4
             and not any(ss_counts(p)[s] for s in TRANSIENT), "4 TIME_WAIT sockets")

    r, rows = with_ss(lambda: run_tcplab("sockets", "--port", str(p), "--state", "time-wait"), p)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[0] == "State"
    tw = [(s, lh, lp, ph, pp) for s, lh, lp, ph, pp in rows if s == "TIME_WAIT"]
    assert len(lines) - 1 == len(tw) >= 4
    shown = set()
    for line in lines[1:]:
        m = TW_ROW.match(line)
        assert m, line
        assert 0.0 < float(m.group(3)) <= 60.0, line
        shown.add((m.group(1), m.group(2)))
    assert shown == {(f"{lh}:{lp}", f"{ph}:{pp}") for _, lh, lp, ph, pp in tw}
    assert {(local, f"127.0.0.1:{p}") for local in mine} <= shown  # on the clients' ends

    got = tcplab_json("sockets", "--port", str(p), "--state", "TIME_WAIT", "--json")
    assert got["count"] == len(got["sockets"]) >= 4
    for s in got["sockets"]:
        assert s["state"] == "TIME_WAIT" and s["owner"] == "kernel" and s["inode"] == 0
        assert s["timer"] == 3 and 0 < s["expires_ms"] <= 60_000


@pytest.mark.loopback
def test_sockets_name_the_owning_process_and_fd(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--leak")
    p = server.port
    held = echo_clients(p, 3)  # ESTABLISHED on both ends
    closed = echo_clients(p, 2)
    for c in closed:
        c.close()  # the server never closes: CLOSE_WAIT there, FIN_WAIT2 here
    try:
        wait_for(lambda: ss_counts(p)["CLOSE_WAIT"] == 2 and ss_counts(p)["FIN_WAIT2"] == 2,
                 "2 CLOSE_WAIT and 2 FIN_WAIT2")
        got, rows = with_ss(lambda: tcplab_json("sockets", "--port", str(p), "--all-procs",
                                                "--json"), p)
        socks = got["sockets"]
        assert sorted((s["state"], s["src"], s["sport"], s["dst"], s["dport"])
                      for s in socks) == sorted(rows)
        # (a TIME_WAIT of an earlier server on a reused port number would have no owner)
        server_side = [s for s in socks if s["sport"] == p and s["state"] != "TIME_WAIT"]
        assert sorted(s["state"] for s in server_side) == sorted(
            ["LISTEN"] + ["ESTABLISHED"] * 3 + ["CLOSE_WAIT"] * 2)
        for s in server_side:
            owner = s["owner"]
            assert owner["pid"] == server.pid, s
            # the fd it names is that socket, as the server's own fd table says
            assert os.readlink(f"/proc/{server.pid}/fd/{owner['fd']}") == f"socket:[{s['inode']}]"
        mine = {c.getsockname()[1]: c.fileno() for c in held}
        for s in socks:
            if s["dport"] == p and s["state"] == "ESTABLISHED":
                assert s["owner"] == {"pid": os.getpid(), "fd": mine[s["sport"]],
                                      "command": s["owner"]["command"]}, s
            if s["state"] == "FIN_WAIT2":
                assert s["owner"] == "kernel" and s["inode"] == 0, s

        only = tcplab_json("sockets", "--port", str(p), "--pid", str(server.pid), "--json")
        assert {s["owner"]["pid"] for s in only["sockets"]} == {server.pid}
        assert sorted((s["state"], s["sport"], s["dport"]) for s in only["sockets"]) == sorted(
            (s["state"], s["sport"], s["dport"]) for s in server_side)
        assert only["count"] == 6
    finally:
        for c in held:
            c.close()


# -- tcplab fds ------------------------------------------------------------------------------


@pytest.mark.loopback
def test_fds_climb_with_close_wait_until_the_warning(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--leak", "--fd-limit", "64")
    pid, p = server.pid, server.port

    def report() -> dict[str, Any]:
        (one,) = tcplab_json("fds", str(pid), "--json")["processes"]
        assert one["pid"] == pid and one["soft"] == 64
        return one

    first = report()
    assert first["tcp"] == {"LISTEN": 1} and first["warning"] is None
    base = socket_fds(pid)
    leaked = 0
    samples = [first]
    # Three waves, the last one up to 56 fds of 64: past the 80 % warning. (Not one fd
    # per connection from the start: libuv, for one, opens a spare fd at the first accept.)
    target = 56
    for wave in range(3):
        n = (target - fd_count(pid)) // (3 - wave)
        for c in echo_clients(p, n):
            c.close()
        leaked += n
        wait_for(lambda want=base + leaked: socket_fds(pid) == want,
                 f"the server to hold {leaked} more sockets")
        wait_for(lambda want=leaked: ss_counts(p)["CLOSE_WAIT"] >= want, f"{leaked} CLOSE_WAIT")
        samples.append(report())
        assert samples[-1]["tcp"].get("CLOSE_WAIT", 0) == leaked
    fds = [s["fds"] for s in samples]
    assert fds == sorted(fds) and len(set(fds)) == len(fds), fds  # climbing
    assert fds[-1] == target == fd_count(pid)
    for s in samples:
        assert (s["warning"] is not None) == (s["fds"] / 64 >= 0.8), s
    assert "88% of its fd limit" in samples[-1]["warning"]
    assert f"{leaked} sockets in CLOSE_WAIT" in samples[-1]["warning"]

    by_port = tcplab_json("fds", "--port", str(p), "--json")["processes"]
    assert [r["pid"] for r in by_port] == [pid]
    assert by_port[0]["tcp"]["CLOSE_WAIT"] == leaked


# -- --watch, limits, bad input -----------------------------------------------------------------


@pytest.mark.loopback
def test_states_watch_json_prints_one_object_per_sample() -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        port = lst.getsockname()[1]
        r = run_tcplab("states", "--port", str(port), "--watch", "--json", "--samples", "3",
                       "--interval", "0.1")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 3
    ts = []
    for line in lines:
        obj = json.loads(line)
        assert obj["schema"] == 1
        assert list(obj["states"]) == list(tcp_states.STATE_NAMES)
        assert obj["total"] == sum(obj["states"].values())
        assert obj["states"]["LISTEN"] == 1  # ours: nothing else may listen on its port
        ts.append(obj["t"])
    assert all(isinstance(t, float | int) for t in ts) and ts == sorted(ts)


def proc_sys(name: str) -> str:
    with open(f"/proc/sys/{name.replace('.', '/')}") as f:
        return " ".join(f.read().split())


@pytest.mark.loopback
def test_limits_json_shows_the_sysctls_of_proc_sys() -> None:
    knobs = {k["name"]: k for k in tcplab_json("limits", "--json")["limits"]}
    for name in ("net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse",
                 "net.ipv4.tcp_fin_timeout", "net.core.somaxconn"):
        assert knobs[name]["value"] == proc_sys(name), name
        assert knobs[name]["meaning"], name
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert knobs["ulimit -n (soft)"]["value"] == str(soft)
    assert knobs["ulimit -Hn (hard)"]["value"] == str(hard)


@pytest.mark.loopback
def test_unknown_state_is_a_usage_error_that_lists_the_states() -> None:
    r = run_tcplab("sockets", "--state", "bogus")
    err = r.stderr.decode()
    assert r.returncode == 2
    assert "bogus" in err and all(name in err for name in tcp_states.STATE_NAMES)
    assert "Traceback" not in err and r.stdout == b""


@pytest.mark.loopback
def test_fds_of_a_missing_process() -> None:
    r = run_tcplab("fds", "999999999")
    err = r.stderr.decode()
    assert r.returncode == 2
    assert "no process 999999999" in err and "Traceback" not in err


@pytest.mark.loopback
def test_states_netns_that_does_not_exist() -> None:
    r = run_tcplab("states", "--netns", "/nonexistent")
    err = r.stderr.decode()
    assert r.returncode == 2
    assert "/nonexistent" in err and "does not exist" in err and "Traceback" not in err


# -- --netns: a private network namespace ---------------------------------------------------

#: Runs in the target namespace: lo up, sysctls written inside, a listener and one
#: connection to it; prints where it listens, then waits until its stdin closes.
TARGET = r"""
import fcntl, json, os, socket, struct, sys
with socket.socket() as s:
    req = struct.pack("16sH14x", b"lo", 0)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
for name, value in json.loads(sys.argv[1]).items():
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen()
c = socket.create_connection(lst.getsockname())
s, _ = lst.accept()
print(json.dumps({"pid": os.getpid(), "port": lst.getsockname()[1],
                  "netns": os.readlink("/proc/self/ns/net")}), flush=True)
sys.stdin.read()
"""
#: Another namespace's holder: stays until its stdin closes.
HOLDER = "import sys; print('ready', flush=True); sys.stdin.read()"
INSIDE = {"net.ipv4.ip_local_port_range": "40123 40456", "net.core.somaxconn": "77",
          "net.ipv4.tcp_fin_timeout": "17"}


def read_line(proc: subprocess.Popen[bytes], limit: float = GUARD) -> bytes:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], limit)[0]:
        return b""
    return proc.stdout.readline()


class Children:
    """Processes started here, ended by pid and reaped, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.netns: set[str] = set()

    def start(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def end(self) -> None:
        for proc in reversed(self.procs):
            assert proc.stdin is not None
            proc.stdin.close()  # they exit on EOF...
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)  # ...or are killed, by their pid
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def processes_in(netns: str) -> list[int]:
    """Pids (of those we may look at) still in the network namespace ``net:[N]``."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/net") == netns:
                    pids.append(int(name))
            except OSError:
                continue
    return pids


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.end()
        for proc in kids.procs:
            assert not os.path.exists(f"/proc/{proc.pid}"), f"pid {proc.pid} is still there"
        for netns in kids.netns:
            assert processes_in(netns) == [], f"{netns} still has processes"


def user_namespace(children: Children) -> subprocess.Popen[bytes]:
    """A holder in a new user and network namespace (unshare -Urn), or skip."""
    holder = children.start(["unshare", "-Urn", sys.executable, "-c", HOLDER])
    if read_line(holder) != b"ready\n":
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=5)
        err = holder.stderr.read().decode().strip() if holder.stderr else ""
        pytest.skip(f"no unprivileged user namespace here (unshare -Urn: {err})")
    children.netns.add(os.readlink(f"/proc/{holder.pid}/ns/net"))
    return holder


@pytest.mark.privileged
def test_netns_sees_that_namespace_only(children: Children) -> None:
    """``--netns PID``: the sockets and sysctls of PID's network namespace.

    As root, the target is ``unshare -n`` and tcplab runs on the host. As an
    ordinary user, both run inside a user namespace (unshare -Urn) whose root
    may enter any network namespace it owns: tcplab in that namespace's own
    network namespace, the target in a second one made inside it.
    """
    if os.geteuid() == 0:
        prefix: list[str] = []
    else:
        holder = user_namespace(children)
        prefix = ["nsenter", "-t", str(holder.pid), "-U", "-n", "--preserve-credentials", "--"]
    target = children.start([*prefix, "unshare", "-n", sys.executable, "-c", TARGET,
                             json.dumps(INSIDE)])
    line = read_line(target)
    if not line:
        target.stdin.close()  # type: ignore[union-attr]
        target.wait(timeout=5)
        pytest.fail(f"the namespace's process did not start: {target.stderr.read().decode()}")  # type: ignore[union-attr]
    info = json.loads(line)
    children.netns.add(info["netns"])
    assert info["pid"] == target.pid  # unshare and nsenter exec: that pid is the process inside
    assert info["netns"] != os.readlink("/proc/self/ns/net")
    pid, port = str(target.pid), info["port"]

    def tcplab(*args: str) -> Any:
        r = subprocess.run([*prefix, sys.executable, "-m", "tcplab", *args],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        return json.loads(r.stdout)

    inside = tcplab("states", "--netns", pid, "--json")
    want = {**dict.fromkeys(tcp_states.STATE_NAMES, 0), "LISTEN": 1, "ESTABLISHED": 2}
    assert inside["states"] == want and inside["total"] == 3
    assert tcplab("states", "--netns", pid, "--port", str(port), "--json")["total"] == 3
    # fds --netns: that namespace's processes only (the one target here), not the host's.
    procs = tcplab("fds", "--netns", pid, "--json")["processes"]
    assert [(p["pid"], p["tcp"]) for p in procs] == [
        (target.pid, {"ESTABLISHED": 2, "LISTEN": 1})], procs
    socks = tcplab("sockets", "--netns", pid, "--json")["sockets"]
    assert sorted((s["state"], s["sport"] == port, s["dport"] == port) for s in socks) == [
        ("ESTABLISHED", False, True), ("ESTABLISHED", True, False), ("LISTEN", True, False)]

    knobs = {k["name"]: k["value"] for k in tcplab("limits", "--netns", pid, "--json")["limits"]}
    for name, value in INSIDE.items():
        assert knobs[name] == " ".join(value.split()), name
    home = {k["name"]: k["value"] for k in tcplab("limits", "--json")["limits"]}
    assert home["net.ipv4.ip_local_port_range"] != "40123 40456"  # written inside only
    if not prefix:
        # the host's table is not the namespace's: a host listener is seen only here
        with socket.socket() as lst:
            lst.bind(("127.0.0.1", 0))
            lst.listen()
            host_port = str(lst.getsockname()[1])
            assert tcplab("states", "--port", host_port, "--json")["states"]["LISTEN"] == 1
            assert tcplab("states", "--netns", pid, "--port", host_port, "--json")["total"] == 0
        assert home["net.ipv4.ip_local_port_range"] == proc_sys("net.ipv4.ip_local_port_range")


@pytest.mark.privileged
def test_netns_without_privilege_says_what_is_missing(children: Children) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may enter any namespace: this checks the ordinary user's error")
    holder = user_namespace(children)
    for command in ("states", "sockets", "limits"):
        r = run_tcplab(command, "--netns", str(holder.pid), "--json")
        err = r.stderr.decode()
        assert r.returncode == 4, (command, err)
        assert "CAP_SYS_ADMIN" in err and "root" in err, err
        assert r.stdout == b"" and "Traceback" not in err


# -- observe.procfs: one reader for /proc and /proc/sys -------------------------------------------

LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units
Max processes             63422                63422                processes
Max open files            100                  unlimited            files
"""


@pytest.fixture
def fake_proc(tmp_path: Any) -> str:
    """A procfs root of our own (psutil's PROCFS_PATH habit): sysctls, and pid 4242 with
    limits, status, stat, two fds (a socket, an epoll instance watching 2 files)."""
    root = tmp_path / "proc"
    for name, text in {"sys/net/ipv4/ip_local_port_range": "1000\t1999\n",
                       "sys/net/core/somaxconn": "77\n",
                       "sys/net/ipv4/tcp_tw_reuse": "not a number\n",
                       "4242/limits": LIMITS, "4242/comm": "leaky server\n",
                       "4242/status": "Name:\tleaky\nThreads:\t3\nVmRSS:\t    2048 kB\n",
                       "4242/stat": "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 "
                                    "250 50 0 0 20 0 3 0 100 0 0",
                       "4242/fdinfo/4": "pos:\t0\nflags:\t02\ntfd:        5 events: 19\n"
                                        "tfd:        6 events: 19\n"}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "4242/fd").mkdir()
    os.symlink("socket:[123]", root / "4242/fd/3")
    os.symlink("anon_inode:[eventpoll]", root / "4242/fd/4")
    return str(root)


@pytest.mark.loopback
def test_procfs_reads_under_its_root(fake_proc: str) -> None:
    from tcplab.kernel.procfs import Limit, Status
    from tcplab.observe import procfs

    assert procfs.sysctl_path("net.core.somaxconn") == "/proc/sys/net/core/somaxconn"
    assert procfs.sysctl("net.ipv4.ip_local_port_range", fake_proc) == "1000 1999"
    assert procfs.local_port_range(fake_proc) == (1000, 1999)
    assert procfs.port_range_size(fake_proc) == 1000
    assert procfs.sysctl_int("net.core.somaxconn", 5, fake_proc) == 77
    assert procfs.sysctl_int("net.ipv4.tcp_tw_reuse", 5, fake_proc) == 5  # not a number
    assert procfs.sysctl("net.ipv4.no_such_knob", fake_proc) is None
    assert procfs.sysctl_int("net.ipv4.no_such_knob", 5, fake_proc) == 5
    assert procfs.fd_limit(4242, fake_proc) == Limit(100, -1)
    assert procfs.status(4242, fake_proc) == Status(threads=3, rss_bytes=2048 * 1024)
    assert procfs.comm(4242, fake_proc) == "leaky server"
    assert procfs.comm(4343, fake_proc) == "?"
    assert sorted(procfs.fd_links(4242, fake_proc)) == [
        (3, "socket:[123]"), (4, "anon_inode:[eventpoll]")]
    assert procfs.epoll_watches(4242, fake_proc) == (1, 2)
    tick = os.sysconf("SC_CLK_TCK")
    assert procfs.cpu_times(4242, fake_proc) == (250 / tick, 50 / tick)
    assert procfs.cpu_seconds(4242, fake_proc) == 300 / tick


@pytest.mark.loopback
def test_procfs_no_such_process_carries_the_pid(fake_proc: str) -> None:
    from tcplab.errors import TcplabError
    from tcplab.observe import procfs

    with open("/proc/sys/kernel/pid_max") as f:
        gone = int(f.read()) + 1  # a pid no process can have
    for read in (procfs.fd_limit, procfs.status, procfs.fds_in_use, procfs.cpu_seconds,
                 lambda pid: list(procfs.fd_links(pid))):
        with pytest.raises(procfs.NoSuchProcess) as info:
            read(gone)
        assert info.value.pid == gone and str(gone) in info.value.path
        assert isinstance(info.value, TcplabError) and info.value.message == f"no process {gone}"
    with pytest.raises(procfs.NoSuchProcess):
        procfs.status(4343, fake_proc)


@pytest.mark.privileged
def test_procfs_access_denied_carries_pid_and_name() -> None:
    """Another user's fd table (pid 1's, read as nobody): EACCES becomes AccessDenied
    with the pid and its command name. In a forked child that drops to nobody: the
    interpreter cannot be exec'd as nobody here (it lives under /root)."""
    import warnings

    from tcplab.observe import procfs

    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() beside threads
        child = os.fork()
    if child == 0:  # the child: only os calls and our reader, then _exit
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                list(procfs.fd_links(1))
                answer = "read"
            except procfs.AccessDenied as exc:
                answer = f"denied {exc.pid} {exc.name} {exc.exit_code}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            answer = f.read().decode()
    finally:
        os.waitpid(child, 0)
    assert answer == f"denied 1 {procfs.comm(1)} 4", answer


@pytest.mark.loopback
def test_fds_counts_and_the_status_reader_agree_with_the_kernel() -> None:
    """A process whose fds and threads do not change: ``cat`` waiting on its stdin."""
    import psutil

    from tcplab.observe import procfs
    from tcplab.observe.fds import fd_report
    from tcplab.observe.process import own_fd_limit
    from tcplab.observe.server_facts import server_facts

    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # One line through it first: then it has started and waits in read(), its
        # memory settled (read while it was still starting: RSS 176 KiB, then 292 KiB).
        proc.stdin.write(b"x\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"x\n"
        report = fd_report(proc.pid, {})
        facts = server_facts(proc.pid)
        ps = psutil.Process(proc.pid)
        assert report.fds == facts.fds == len(os.listdir(f"/proc/{proc.pid}/fd")) == 3
        assert report.threads == facts.threads == ps.num_threads() == 1
        assert report.rss_bytes == facts.rss_bytes == ps.memory_info().rss > 0
        # stdin and stdout are our pipes; stderr is whatever pytest's is.
        assert report.other["pipe"] >= 2 and sum(report.other.values()) == 3 and not report.tcp
        assert (report.soft, report.hard) == tuple(ps.rlimit(psutil.RLIMIT_NOFILE))
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
    # Our own limit, from getrlimit and from /proc/self/limits: one record, one value.
    assert own_fd_limit() == procfs.fd_limit("self")


@pytest.mark.loopback
def test_one_compat_dump_equals_the_two_by_family_dumps() -> None:
    """The live kernel: the one TCPDIAG_GETSOCK dump (both families, one walk) and
    the two SOCK_DIAG_BY_FAMILY dumps return the same sockets, IPv6 included."""
    with socket.socket(socket.AF_INET6) as l6:
        l6.bind(("::1", 0))
        port = l6.getsockname()[1]
        l6.listen()
        with socket.socket() as l4:
            l4.bind(("127.0.0.1", port))
            l4.listen()
            c4 = socket.create_connection(("127.0.0.1", port))
            c6 = socket.create_connection(("::1", port))
            try:
                with SocketTable() as table:
                    one = table.sockets(port)
                    assert table.compat, "the kernel refused TCPDIAG_GETSOCK"
                    table.compat = False
                    two = table.sockets(port)
            finally:
                c4.close()
                c6.close()
    key = sorted((s.family, s.state, s.src, s.sport, s.dst, s.dport) for s in one)
    assert key == sorted((s.family, s.state, s.src, s.sport, s.dst, s.dport) for s in two)
    assert {s.family for s in one} == {socket.AF_INET, socket.AF_INET6}
    assert len(one) == 6  # two listeners, and both ends of two connections


@pytest.mark.loopback
def test_a_refused_compat_dump_falls_back_to_one_dump_per_family(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A kernel without the TCPDIAG_GETSOCK handler answers EINVAL or EOPNOTSUPP
    before any reply. Caused here for real: a request cut short, which the kernel
    refuses with EINVAL (inet_diag_rcv_msg_compat's length check); the table then
    dumps per family, and says so in ``compat``."""
    from tcplab.kernel import sock_diag

    real = sock_diag.build_request_compat

    def short(states: int, port: int = 0, seq: int = 1) -> bytes:
        req = real(states, 0, seq)[:sock_diag.HDR_LEN + 8]
        return sock_diag.NLMSGHDR.pack(len(req), sock_diag.TCPDIAG_GETSOCK,
                                       sock_diag.NLM_F_REQUEST | sock_diag.NLM_F_DUMP,
                                       seq, 0) + req[sock_diag.HDR_LEN:]

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with SocketTable() as table:
            want = table.sockets(port)
            monkeypatch.setattr(sock_diag, "build_request_compat", short)
            table.compat = True
            got = table.sockets(port)
            assert table.compat is False
    assert [(s.state, s.sport) for s in got] == [(s.state, s.sport) for s in want]
    assert got and got[0].sport == port
