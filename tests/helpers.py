"""What the test files share: the one module they import helpers from.

No test file imports from ``conftest`` or from another test file
(tests/test_suite.py walks them to check it); conftest.py builds its fixtures
from what is here. The server models come from ``tcplab.traffic.models``, not
from a copy of the list here.

- running tcplab as a user does: :func:`tcplab` (the argv), :func:`run_tcplab`
  (run it to the end), :class:`Child` and :class:`Spawner` (children whose
  output lines are collected as they come; every one stopped and reaped),
  :func:`free_port`; :func:`one_json` (an experiment's one ``--json`` line);
- namespaces: :func:`userns_allowed` (may an ordinary user make a user namespace);
- running as nobody: :func:`as_nobody` (a preexec_fn), :func:`make_nobody_venv` (a venv
  of /usr/bin/python3 nobody can run; conftest's ``nobody_venv``), :func:`run_as`, ``USERS``;
- the session's one ``experiment all`` run: :class:`ExperimentAll`;
- a server written without tcplab: :func:`start_plain_server`;
- trace instances left behind: :func:`instances`, :func:`left_behind` and the
  file of instances a test leaves stale on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tcplab.net import registry

# -- running tcplab ----------------------------------------------------------------------

def one_json(r: subprocess.CompletedProcess[bytes], shown: bool = False) -> dict[str, Any]:
    """The one JSON line ``tcplab experiment NAME --json`` printed, after exit 0;
    with ``shown``, also checked to say the experiment showed its lesson."""
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0 and len(lines) == 1, (r.returncode, lines,
                                                   r.stderr.decode(errors="replace"))
    body = json.loads(lines[0])
    assert isinstance(body, dict) and body["schema"] == 1
    if shown:
        assert body["ok"] is True and body["skipped"] is None, body["fact"]
    return body


def userns_allowed() -> bool:
    """Whether this kernel lets an ordinary user make a user (and network) namespace."""
    for path, bad in (("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/unprivileged_userns_clone", "0")):
        try:
            if Path(path).read_text().strip() == bad:
                return False
        except OSError:
            pass
    return True



def tcplab(*args: str) -> list[str]:
    """The argv of ``tcplab ARGS`` in this interpreter."""
    return [sys.executable, "-m", "tcplab", *args]


def run_tcplab(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would: a fresh ``python -m tcplab`` process."""
    return subprocess.run(
        tcplab(*args),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


# -- as an ordinary user -----------------------------------------------------------------

def as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


#: Who an experiment test runs as: root and nobody when we are root, else ourselves.
USERS = ["root", "nobody"] if os.geteuid() == 0 else ["user"]
NOBODY_ENV = {**os.environ, "HOME": "/tmp"}


def make_nobody_venv(where: Path, timeout: float = 300) -> str | None:
    """Make at ``where`` a venv of /usr/bin/python3 owned by nobody whose
    site-packages point at this checkout's src and the test venv's packages (same
    CPython 3.11 ABI): the test venv's interpreter may live where nobody cannot
    run it (under /root). None when nobody can import tcplab with it; else why not."""

    import tcplab

    system = Path("/usr/bin/python3")
    if not system.exists():
        return "no /usr/bin/python3 to make nobody's venv from"
    where.chmod(0o755)
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(where)], check=True,
                   capture_output=True, timeout=timeout)
    purelib = subprocess.run(
        [str(where / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=timeout).stdout.strip()
    src = Path(tcplab.__file__).resolve().parents[1]
    Path(purelib, "tcplab-checkout.pth").write_text(
        f"{src}\n{sysconfig.get_paths()['purelib']}\n")
    subprocess.run(["chown", "-R", "nobody", str(where)], check=True, timeout=timeout)
    r = subprocess.run([str(where / "bin" / "python"), "-c", "import tcplab.cli.main"],
                       preexec_fn=as_nobody, capture_output=True, text=True, cwd="/tmp",
                       env=NOBODY_ENV, timeout=timeout)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"nobody cannot import tcplab with /usr/bin/python3: {last}"
    return None


def run_as(user: str, venv: Path | None, *args: str, timeout: float = 300
           ) -> subprocess.CompletedProcess[bytes]:
    """``tcplab ARGS`` as root (this interpreter) or as nobody (the ``nobody_venv``
    fixture's venv)."""
    if user != "nobody":
        return subprocess.run(tcplab(*args), capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    assert venv is not None
    return subprocess.run([str(venv / "bin" / "python"), "-m", "tcplab", *args],
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=as_nobody, cwd="/tmp", env=NOBODY_ENV)


class Child:
    """A child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, argv: list[str], **kw: Any) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **kw)
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pred: Callable[[str], bool], stream: str = "err",
                  guard: float = 30) -> str:
        """The first line of stdout or stderr for which pred is true (guard: a hang)."""
        lines = self.err if stream == "err" else self.out
        end = time.monotonic() + guard
        with self._cond:
            while True:
                for line in lines:
                    if pred(line):
                        return line
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(f"{self.argv[2:]} ended ({self.proc.returncode}) "
                                         f"without it: {self.err}")
                if time.monotonic() > end:
                    raise AssertionError(f"no such line within {guard} s: {self.err}")
                self._cond.wait(0.1)

    def finish(self, guard: float = 60) -> int:
        """Wait for it to exit (the guard is against a hang) and for its output."""
        rc = self.proc.wait(timeout=guard)
        for t in self._threads:
            t.join(timeout=guard)
        return rc

    def kill(self) -> None:
        """SIGTERM (a tracer then removes its instance), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        for t in self._threads:  # the output up to the end, before the pipes close
            t.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out]


class Spawner:
    """Starts :class:`Child` processes and stops them all (the ``spawn`` fixture)."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def __call__(self, argv: list[str], **kw: Any) -> Child:
        child = Child(argv, **kw)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.started:
            child.kill()


def free_port() -> int:
    """A port nothing listens on now: bound on 127.0.0.1, then let go (no connection
    was made, so nothing of ours stays on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the session's one `experiment all` ----------------------------------------------------


@dataclass(frozen=True)
class ExperimentAll:
    """One ``tcplab experiment all --quick --json --report DIR`` run."""

    proc: subprocess.CompletedProcess[bytes]
    bodies: list[dict[str, Any]]  # the JSON objects on stdout, in order
    stray: list[str]  # stdout lines that are not a JSON object (there should be none)
    report: Path  # DIR: index.html and results.json

    @property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return {b["experiment"]: b for b in self.bodies}

    @property
    def stderr(self) -> str:
        return self.proc.stderr.decode(errors="replace")

    @classmethod
    def run(cls, directory: Path) -> ExperimentAll:
        report = directory / "report"  # tcplab makes DIR
        # The subprocess bound is below pytest-timeout's 600 s (pyproject), so a hang
        # is reported here, with the run's stderr, rather than as a stack dump.
        r = run_tcplab("experiment", "all", "--quick", "--json", "--report", str(report),
                       timeout=540)
        return cls.decode(r, report)

    @classmethod
    def decode(cls, r: subprocess.CompletedProcess[bytes], report: Path) -> ExperimentAll:
        bodies: list[dict[str, Any]] = []
        stray: list[str] = []
        for line in r.stdout.decode(errors="replace").splitlines():
            try:
                body = json.loads(line)
            except ValueError:
                stray.append(line)
                continue
            if isinstance(body, dict):
                bodies.append(body)
            else:
                stray.append(line)
        return cls(r, bodies, stray, report)


# -- a server written without tcplab -------------------------------------------------------

PLAIN_SERVER = r"""
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
lst = socket.socket(family)
lst.bind((sys.argv[1], 0))
lst.listen(4)
print(lst.getsockname()[1], flush=True)
conn, _ = lst.accept()
print(conn.fileno(), flush=True)
while data := conn.recv(65536):
    conn.sendall(data)
time.sleep(float(sys.argv[2]))  # in CLOSE_WAIT at least this long
conn.close()
print("closed", flush=True)
sys.stdin.read()
"""


def start_plain_server(spawn: Spawner, host: str = "127.0.0.1",
                       close_after: float = 0.25) -> tuple[Child, int]:
    """A one-connection echo server on ``host``, port 0: it prints its port, the
    accepted socket's fd, and "closed" once it closed, ``close_after`` seconds after
    the peer did (so its socket sits in CLOSE_WAIT that long); (child, port)."""
    server = spawn([sys.executable, "-c", PLAIN_SERVER, host, str(close_after)])
    port = int(server.wait_line(str.isdigit, "out"))
    return server, port


# -- trace instances: none left behind -----------------------------------------------------


def instances() -> set[str]:
    """instances/ of tracefs, seen from a private mount namespace (the host's mounts stay)."""
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing"
                        " && ls /sys/kernel/tracing/instances"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def remove_instance(name: str) -> None:
    subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing"
                    f" && rmdir /sys/kernel/tracing/instances/{name}"],
                   capture_output=True, timeout=30)


def tracefs_mounts() -> list[str]:
    """The host's tracefs mounts, as ``mount`` lists them."""
    out = subprocess.run(["mount"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if "tracefs" in line]


#: Trace instances a test leaves stale on purpose (test_a_stale_instance_is_removed),
#: by name, in a file every test session on the machine reads: another suite running
#: beside this one (two `bash .ci/run` side by side) must neither count them as left
#: behind nor remove them before the run under test does (seen once each way).
STALE_ON_PURPOSE = Path("/tmp/tcplab-tests-stale-instances")


def stale_on_purpose() -> set[str]:
    try:
        return set(STALE_ON_PURPOSE.read_text().split())
    except OSError:
        return set()


def mark_stale_on_purpose(name: str) -> None:
    with STALE_ON_PURPOSE.open("a") as f:
        f.write(name + "\n")


def unmark_stale_on_purpose(name: str) -> None:
    """Once the instance is gone, its name leaves the file (and the file, when empty)."""
    rest = [n for n in sorted(stale_on_purpose()) if n != name]
    try:
        if rest:
            STALE_ON_PURPOSE.write_text("".join(n + "\n" for n in rest))
        else:
            STALE_ON_PURPOSE.unlink()
    except OSError:
        pass


def left_behind(pids: Iterable[int] = (), before: set[str] | None = None) -> list[str]:
    """tcplab-PID instances of these pids, or of dead processes that appeared since
    ``before`` and are still there after a grace: another test (another worker, or
    another suite beside this one) may be in the middle of removing its own, which
    takes up to 4 s (a tracer that does not stop on SIGTERM is killed and its
    instance removed after it). Not the ones a test left stale on purpose."""
    mine = set(pids)

    def dead(names: set[str]) -> set[str]:
        return {n for n in names if n[7:].isdigit() and not os.path.exists(f"/proc/{n[7:]}")
                and n not in (before or set()) and int(n[7:]) not in mine}

    def candidates() -> tuple[set[str], set[str]]:
        names = {n for n in instances() if n.startswith("tcplab-")} - stale_on_purpose()
        return {n for n in names if n[7:].isdigit() and int(n[7:]) in mine}, dead(names)

    own, orphans = candidates()
    deadline = time.monotonic() + 8
    while orphans and time.monotonic() < deadline:
        time.sleep(0.5)
        orphans &= candidates()[1]
    return sorted(own | orphans)


# -- tcplab nets: what a net leaves behind ----------------------------------------------


def ticks_now() -> int:
    """Clock ticks since boot, the unit of /proc/PID/stat's starttime."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def netns_holders(net: registry.Net, made_before: int) -> list[str]:
    """What still holds one of the net's namespaces: a process in it, or a file
    descriptor open on it (/proc/PID/fd/N -> net:[INODE]). Only processes started
    before ``made_before`` (clock ticks) count: once a namespace is freed its inode
    number is given to the next new one (fs/proc/generic.c, proc_alloc_inum: the
    lowest free number of an IDA), and the other suites on this machine make
    namespaces all the time."""
    ends = [net.client, net.server] + ([net.router] if net.router else [])
    ids = {e.netns for e in ends}
    inodes = {f"net:[{i.split(':')[1]}]" for i in ids}

    def old(pid: int | str) -> bool:
        start = registry.start_time(int(pid))
        return start is not None and start <= made_before

    found = [f"pid {pid} in it" for pid in registry.pids_in(ids) if old(pid)]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes and old(entry):
                        found.append(f"pid {entry} fd {fd}")
    return found


def wait_for(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what} (waited {timeout:g} s)"
            return value
        time.sleep(0.05)


def assert_nothing_left(net: registry.Net) -> None:
    """No process or fd holds the net's namespaces, its holder and pins are gone, and
    no live state file names it: so its veths, qdiscs and nftables tables are gone."""
    now = ticks_now()
    wait_for(lambda: not netns_holders(net, now),
             f"net {net.name} left {netns_holders(net, now)}")
    # A process leaves its namespaces (exit_task_namespaces) before it is a zombie
    # (exit_notify), and in between the kernel closes its files (the holder's TUN
    # device, its netlink sockets): wait for that end too, do not race it.
    for pid, what in [(net.pid, "the holder")] + [(e.pid, f"the {e.role}'s pin")
                                                  for e in (net.client, net.server)]:
        wait_for(lambda pid=pid: registry.start_time(pid) is None, f"{what} ended")
    assert not registry.state_path(net.name).exists() or registry.find(net.name) is None


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1024")


@contextlib.contextmanager
def headless_chromium(workdir: Path) -> Iterator[Any]:
    """Debian's chromium under its own chromedriver; skips when either is missing."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
               if path is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: .ci/run installs Debian's chromium "
                    "and chromium-driver when run as root (apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    profile = workdir / "chromium-profile"
    profile.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = workdir / "chromedriver.log"
    # An explicit driver path: selenium then never runs Selenium Manager (no download).
    service = Service(executable_path=chromedriver, log_output=str(log))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"{chromium} did not start under {chromedriver}: {exc.msg}\n{tail}")
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def accepting_listener(handle: Callable[[socket.socket], None] | None = None,
                       backlog: int = 512) -> Iterator[socket.socket]:
    """A listener on 127.0.0.1, a port the kernel chose; a thread accepts each
    connection and gives it to ``handle`` (default: closes it at once). Stopped and
    closed on the way out."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    ls.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            with c:
                if handle is not None:
                    handle(c)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls
    finally:
        done.set()
        t.join()
        ls.close()


@contextlib.contextmanager
def tcplab_live(*args: str, venv: Path | None = None
                ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``tcplab live --listen 127.0.0.1:0 ARGS`` (as nobody with ``venv``: their
    venv's python) and its page's URL; always reaped, SIGINT first (its trace
    instance and capture are closed on the way out)."""
    import re
    import signal

    python = [str(venv / "bin" / "python")] if venv else [sys.executable]
    extra: dict[str, Any] = dict(preexec_fn=as_nobody, cwd="/tmp", env=NOBODY_ENV) if venv else {}
    proc = subprocess.Popen([*python, "-m", "tcplab", "live", "--listen", "127.0.0.1:0",
                             *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **extra)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        m = re.search(rb"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert m, proc.stderr.read().decode()
        yield proc, m.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def ws_events(url: str, until: Callable[[list[dict[str, Any]]], bool],
              seconds: float = 3.0) -> list[dict[str, Any]]:
    """The events `tcplab live`'s page gets on its WebSocket (URL + "events") within
    ``seconds``, or until ``until(events so far)`` holds."""
    import asyncio

    import aiohttp

    async def read() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url.replace("http://", "ws://") + "events") as ws:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not until(got):
                try:
                    msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                got += json.loads(msg.data)
        return got

    return asyncio.run(read())


#: For tests that make a private network namespace (tests/test_interrupt.py and others).
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 and not userns_allowed(),
    reason="no private network namespace: not root and unprivileged user namespaces are off")


class ReportPage(HTMLParser):
    """What index.html is made of: sections, charts, references, ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.charts: Counter[str] = Counter()  # <svg> directly in a figure.chart, by section
        self.svgs = 0
        self.scripts = 0
        self.refs: list[str] = []  # every src, href and xlink:href value
        self.ids: list[str] = []
        self.styles: list[str] = []
        self._section: str | None = None
        self._in_chart = False
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        self.refs += [v for k, v in a.items() if k in ("src", "href", "xlink:href")]
        if tag == "section":
            self._section = a.get("id", "")
            self.sections.append(self._section)
        elif tag == "figure" and "chart" in a.get("class", "").split():
            self._in_chart = True
        elif tag == "svg":
            self.svgs += 1
            if self._in_chart and self._section is not None:
                self.charts[self._section] += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        elif tag == "figure":
            self._in_chart = False
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
