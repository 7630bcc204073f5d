"""The sandbox: a private network namespace per experiment, and nothing left behind.

Inside, a child sees the sysctls we asked for and a working ``lo``; outside,
the host's own sysctls never change. On close (normal, an exception, Ctrl-C,
or the parent SIGKILLed) the holder, every child and the namespace are gone.
Both ways of making the namespace are run: as root (``unshare(CLONE_NEWNET)``)
and through an unprivileged user namespace (``user=True``; what an ordinary
user gets automatically).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tcplab.errors import NotSupported
from tcplab.experiments.children import ServerProcess
from tcplab.experiments.sandbox import Sandbox
from tests.helpers import userns_allowed

pytestmark = pytest.mark.privileged

SYSCTLS = {
    "net.ipv4.ip_local_port_range": "40000 40099",
    "net.ipv4.tcp_tw_reuse": "0",
    "net.ipv4.tcp_fin_timeout": "7",
    "net.core.somaxconn": "64",
}


def sysctl_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def host_sysctls() -> dict[str, str]:
    """The host's values, read as ``cat /proc/sys/...`` shows them (whitespace normalised)."""
    values = {}
    for name in SYSCTLS:
        with open(sysctl_path(name)) as f:
            values[name] = " ".join(f.read().split())
    return values



@pytest.fixture(params=[False, True], ids=["root-netns", "user-netns"])
def user(request: pytest.FixtureRequest) -> bool:
    """Both ways of making the namespace; the root one only where we are root."""
    if not request.param and os.geteuid() != 0:
        pytest.skip("Sandbox(user=False) needs root; the user-namespace path runs instead")
    if request.param and not userns_allowed():
        pytest.skip("unprivileged user namespaces are disabled on this kernel")
    return bool(request.param)


# --- processes and namespaces, read from /proc -----------------------------------------

def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[3])


def exists(pid: int) -> bool:
    """The pid names a process, zombie or not (os.kill(pid, 0) would succeed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie: an orphan's zombie is its new parent's (init's) to reap."""
    stat = read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ns_inode(pid: int | str, kind: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


#: fds this test process holds on the sandbox's namespaces (pin) while it checks
#: that nothing else does: a namespace's inode number is reused once it is freed,
#: and another suite beside this one (or another xdist worker) holding a new
#: namespace with the same number was taken for a leak (seen once).
PINNED: set[int] = set()


def pin(path: str) -> int:
    """Hold the namespace at ``path`` open (so its inode is not reused); its inode."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    PINNED.add(fd)
    return os.fstat(fd).st_ino


@pytest.fixture(autouse=True)
def _unpin() -> Iterator[None]:
    yield
    while PINNED:
        os.close(PINNED.pop())


def ns_users(inode: int, kind: str = "net") -> list[str]:
    """Every process in that namespace, and every fd (of a process we may read) open on
    it, but for this process's pins."""
    found = []
    me = os.getpid()
    for pid in all_pids():
        if ns_inode(pid, kind) == inode:
            found.append(f"pid {pid} ({cmdline(pid)})")
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            if pid == me and int(fd) in PINNED:
                continue
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"{kind}:[{inode}]":
                    found.append(f"fd {fd} of pid {pid} ({cmdline(pid)})")
            except OSError:
                continue
    return found


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Poll until predicate() is true; a hang guard, not a speed assertion."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def kill_leftovers(pids: dict[int, str]) -> None:
    """Failure-path cleanup: SIGKILL, by pid, what we started if it still runs as itself."""
    for pid, cmd in pids.items():
        if running(pid) and cmdline(pid) == cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def assert_gone(holder: int, children: list[int], netns: int, userns: int | None) -> None:
    """What close() promises: every pid reaped (no zombie of ours), the namespaces freed."""
    for pid in [holder, *children]:
        assert not exists(pid), f"pid {pid} still exists after close(): {read_stat(pid)}"
        assert not os.path.exists(f"/proc/{pid}")
    assert ns_users(netns) == [], "the sandbox's network namespace is still in use"
    if userns is not None:
        assert ns_users(userns, "user") == [], "the sandbox's user namespace is still in use"


# --- the sandbox from inside and outside -------------------------------------------------

def test_child_sees_the_sysctls_and_lo_host_untouched(user: bool) -> None:
    before = host_sysctls()
    host_netns = ns_inode("self")
    with Sandbox(SYSCTLS, user=user) as sb:
        assert sb.holder is not None
        holder = sb.holder.pid
        netns = pin(sb.netns_path)
        userns = pin(f"/proc/{holder}/ns/user") if user else None
        assert netns != host_netns
        if user:
            assert userns != ns_inode("self", "user")
            assert "user" in sb.kind
        else:
            assert ns_inode(holder, "user") == ns_inode("self", "user")

        # What a child sees: cat /proc/sys/... inside.
        r = sb.run(["cat", *(sysctl_path(n) for n in SYSCTLS)], stdout=subprocess.PIPE,
                   text=True, timeout=30)
        assert r.returncode == 0
        inside = dict(zip(SYSCTLS, (" ".join(line.split()) for line in r.stdout.splitlines()),
                          strict=True))
        assert inside == SYSCTLS
        # ... and it is really in that namespace, not the host's.
        r = sb.run(["readlink", "/proc/self/ns/net"], stdout=subprocess.PIPE, text=True,
                   timeout=30)
        assert r.stdout.strip() == f"net:[{netns}]"
        # Only lo, and it is up.
        r = sb.run(["ip", "-o", "link", "show"], stdout=subprocess.PIPE, text=True, timeout=30)
        links = [line.split(":")[1].strip() for line in r.stdout.splitlines()]
        assert links == ["lo"], r.stdout
        assert ",UP" in r.stdout

        # A tcplab server inside answers a tcplab client inside; its port 0 came
        # from the namespace's own ip_local_port_range.
        server = ServerProcess([], popen=sb.popen)
        try:
            server.start()
            assert 40000 <= server.port <= 40099
            r = sb.run(sb.tcplab("client", "--port", str(server.port), "hello", "sandbox"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert r.stdout.splitlines() == ["hello", "sandbox"]
            sleeper = sb.popen(["sleep", "60"])
            children = [p.pid for p in sb.children]
            started = {pid: cmdline(pid) for pid in [holder, *children]}
            assert server.pid in children and sleeper.pid in children
            assert host_sysctls() == before  # also while the sandbox is up
        except BaseException:
            server.kill()
            raise
        # close() itself must stop the server and the sleeper: no stop() here.
    try:
        assert_gone(holder, children, netns, userns)
        assert sleeper.returncode == -signal.SIGTERM
        assert not server.alive()
    finally:
        kill_leftovers(started)
        server.kill()  # closes its pipes; the process is already reaped
    assert host_sysctls() == before


def test_exception_in_the_block_still_cleans_up(user: bool) -> None:
    started: dict[int, str] = {}
    try:
        with pytest.raises(RuntimeError, match="boom"), Sandbox(SYSCTLS, user=user) as sb:
            assert sb.holder is not None
            holder = sb.holder.pid
            netns = pin(sb.netns_path)
            userns = pin(f"/proc/{holder}/ns/user") if user else None
            sb.popen(["sleep", "60"])
            sb.popen(sb.tcplab("server", "--port", "8080"), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children = [p.pid for p in sb.children]
            started = {pid: cmdline(pid) for pid in [holder, *children]}
            raise RuntimeError("boom")
        assert_gone(holder, children, netns, userns)
        sb.close()  # a second close is harmless
    finally:
        kill_leftovers(started)


def test_sigkilled_parent_leaves_nothing(user: bool) -> None:
    script = textwrap.dedent(f"""
        import json, os, signal, subprocess
        from tcplab.experiments.sandbox import Sandbox
        sb = Sandbox({SYSCTLS!r}, user={user!r})
        sb.start()
        child = sb.popen(["sleep", "60"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(json.dumps({{"holder": sb.holder.pid, "child": child.pid,
                          "netns": os.stat(sb.netns_path).st_ino}}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else ""
        info = json.loads(line)
        pids = [info["holder"], info["child"]]
        started = {pid: cmdline(pid) for pid in pids}
        assert proc.wait(timeout=30) == -signal.SIGKILL
        wait_for(lambda: not any(running(pid) for pid in pids),
                 "PR_SET_PDEATHSIG to kill the holder and the child")
        wait_for(lambda: ns_users(info["netns"]) == [], "the namespace to go")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_leftovers(started)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_a_sysctl_that_cannot_be_set_is_named_and_leaves_nothing(user: bool) -> None:
    mine = {p for p in all_pids() if (read_stat(p) or ("", 0, 0))[1] == os.getpid()}
    sb = Sandbox({"net.ipv4.no_such_knob": "1"}, user=user)
    with pytest.raises(NotSupported) as info:
        sb.start()
    assert "net.ipv4.no_such_knob" in info.value.message
    assert sb.holder is None and sb.children == []
    # No child of ours (a holder) is left, not even a zombie.
    left = {p for p in all_pids() if (read_stat(p) or ("", 0, 0))[1] == os.getpid()} - mine
    assert left == set(), [cmdline(p) for p in left]


def test_popen_before_start_is_refused() -> None:
    sb = Sandbox(SYSCTLS)
    with pytest.raises(RuntimeError, match="not started"):
        sb.popen(["true"])
    assert sb.tcplab("bomb", "--json") == [sys.executable, "-m", "tcplab", "bomb", "--json"]


# --- Ctrl-C on a whole experiment ----------------------------------------------------------

def in_session(sid: int) -> dict[int, str]:
    """Running processes of a session: whatever the experiment started, even if orphaned."""
    found = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and stat[2] == sid and stat[0] not in ("Z", "X"):
            found[pid] = cmdline(pid)
    return found


def descendants(root: int) -> dict[int, str]:
    parents = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            parents[pid] = stat[1]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline(pid)
                frontier.append(pid)
    return found


@pytest.fixture
def group() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in their own process group; the group is SIGKILLed if still there."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_ctrl_c_mid_experiment_leaves_no_process(group: list[subprocess.Popen[bytes]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcplab", "experiment", "port-bomb", "--variant", "default-reuse"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # its own session and process group, as a shell job's
    )
    group.append(proc)
    lines: list[str] = []
    bombing, progress = threading.Event(), threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))
            if "bombing" in lines[-1]:
                bombing.set()
            if "attempted" in lines[-1]:  # the bomb's first progress line, 0.5 s in
                progress.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    seen: dict[int, str] = {}
    try:
        wait_for(lambda: bombing.is_set() or proc.poll() is not None, "the bomb to start", 30)
        assert bombing.is_set(), "".join(lines)
        progress.wait(timeout=1.0)
        seen = descendants(proc.pid)
        # Mid-run: the holder, the server, the sampler and the bomb are all there.
        assert any("tcplab.agents.nsholder" in c for c in seen.values()), seen
        assert any(" bomb " in c for c in seen.values()), seen
        assert any(" server " in c for c in seen.values()), seen
        assert proc.poll() is None, "the experiment ended before Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the whole group
        proc.wait(timeout=60)
        reader.join(timeout=5)
        assert proc.returncode in (130, 0), "".join(lines)
        if proc.returncode == 130:
            assert "interrupted" in "".join(lines)
        assert not any("Traceback" in line for line in lines), "".join(lines)
        wait_for(lambda: not any(running(pid) for pid in seen), "every child to be gone")
        # Nothing of its session is left either (a process it started that we
        # did not see would still carry the session id).
        assert in_session(proc.pid) == {}
    finally:
        kill_leftovers(seen)
