"""Issue 15's speed goals, on the issue's populations built for real in private network
namespaces (root only: ``--netns`` needs CAP_SYS_ADMIN). What is measured and how:
bench/README.md, "node.py".

a. one namespace, 48,800 TIME_WAIT + 8,000 ESTABLISHED (4,000 connections, both ends
   inside): ``tcplab states`` vs ``ss -tan``, ``tcplab sockets --all-procs`` vs
   ``ss -tanpo``, ``tcplab doctor`` (< 0.25 s), one exporter scrape (< 0.25 s);
b. 20 namespaces of 3,000 sockets: ``tcplab states --all-netns`` vs ``tcplab states``
   on one namespace that holds the same 60,000 (<= 2x);
c. 20,601 sockets with port P: ``tcplab states --port P`` vs ``ss -tan '( sport = :P or
   dport = :P )'`` (<= 0.8x).

``--_role holder`` builds and holds one share of a namespace's sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness as h  # bench/harness.py, next to this file

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN, include/net/tcp.h): a round starts only when it
#: ends within this many seconds of a population's first TIME_WAIT; else it is rebuilt.
BUDGET_S = 55.0
#: Inside each namespace only (the nsholder writes them there). tcp_max_tw_buckets: a new
#: namespace gets half the ehash size (tcp_sk_init, net/ipv4/tcp_ipv4.c), 131,072 here;
#: raised so that no TIME_WAIT is refused whatever the host's memory.
SYSCTLS = {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "0",
           "net.ipv4.tcp_max_tw_buckets": "262144"}
#: Connections per holder process: 2 fds each, under this machine's 20,000-fd hard limit.
MAX_CONNS = 4_000
#: Listeners of parts a and b: below the ephemeral range (1024-65535 here), so no holder's
#: connect() can take a port another holder, starting at the same time, is to bind.
LISTEN_BASE = 200
EXPORTER_PORT = 9309  # bound before any client socket, so no connect() takes it
CMD_TIMEOUT = 120.0
GOALS_S = {"doctor": 0.25, "scrape": 0.25}


# --- the holder: one share of a namespace's sockets ------------------------------------


def holder_main(spec: dict[str, Any]) -> int:
    """Listen on spec["listen"]; hold spec["established"] [port, n] connections (both
    ends); make spec["time_wait"] [port, n] connections and close the client first, so
    the client's socket ends in TIME_WAIT. With spec["enter"], all of it inside that
    namespace, then back home (the sockets stay there, and keep it alive). One JSON line,
    then hold until stdin closes."""
    from tcplab.observe.nsutil import CLONE_NEWNET, setns

    socks: list[socket.socket] = []
    report: dict[str, Any]
    try:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        nsfd = None
        try:
            t0 = time.monotonic()
            if spec.get("enter"):
                home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                nsfd = os.open(spec["enter"], os.O_RDONLY | os.O_CLOEXEC)
                setns(nsfd, CLONE_NEWNET)
            listeners = {}
            for port in spec["listen"]:
                socks.append(s := socket.socket())
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))
                s.listen(4096)
                listeners[port] = s
            for port, n in spec["established"]:
                for _ in range(n):
                    socks.append(c := socket.socket())
                    c.connect((HOST, port))
                    socks.append(listeners[port].accept()[0])
            t_tw = time.monotonic()
            for port, n in spec["time_wait"]:
                for _ in range(n):
                    with socket.socket() as c:
                        c.connect((HOST, port))
                        server = listeners[port].accept()[0]
                    server.close()  # after the client's FIN: LAST_ACK, then gone
            if spec.get("enter"):
                setns(home, CLONE_NEWNET)
                os.close(home)
            report = {"ok": True, "time_wait_from": t_tw, "build_s": time.monotonic() - t0,
                      "fds": len(socks), "nsfd": nsfd, "pid": os.getpid()}
        except OSError as exc:
            report = {"ok": False, "error": f"building the sockets: {exc} "
                      f"(after {len(socks)} held sockets)"}
        print(json.dumps(report), flush=True)
        sys.stdin.buffer.read()  # until the bench closes our stdin (or kills us)
    except KeyboardInterrupt:
        return 130
    finally:
        for s in socks:
            s.close()
    return 0


#: mount(2) flags (include/uapi/linux/mount.h) and clone flags (include/uapi/linux/sched.h)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000


def isolated_main(spec: dict[str, Any], cmd: list[str]) -> int:
    """Run ``cmd`` where the only namespaces to discover are ours: in a new mount and pid
    namespace, a tmpfs over /run with each spec["binds"] path (dst: src, an nsfs file)
    bound there, and a /proc that shows only the new pid namespace (``cmd`` is its pid 1).
    So ``--all-netns`` (observe/nodes.py discover: /proc/*/ns/net, /run/netns, nsfs bind
    mounts in mountinfo) finds the namespaces bound there and its own (the host's), not
    other work on this node. spec["fd"]: a namespace opened here and inherited by ``cmd``
    as "@FD" in its arguments (/proc/self/fd/N: no mount, so nothing discovers it).
    Exits with cmd's status; wait4() of this process covers cmd's CPU (it waits for it)."""
    import ctypes

    from tcplab.observe.nsutil import unshare

    libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def mount(src: str | None, dst: str, fstype: str | None, flags: int) -> None:
        if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(),
                      flags, None):
            err = ctypes.get_errno()
            raise OSError(err, f"mount {dst}: {os.strerror(err)}")

    if spec.get("fd"):
        fd = os.open(spec["fd"], os.O_RDONLY)
        os.set_inheritable(fd, True)  # cmd opens /proc/self/fd/N
        cmd = [f"/proc/self/fd/{fd}" if a == "@FD" else a for a in cmd]
    unshare(CLONE_NEWNS | CLONE_NEWPID)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    mount("none", "/run", "tmpfs", MS_NOSUID | MS_NODEV)
    os.mkdir("/run/netns")
    for dst, src in spec["binds"].items():
        open(dst, "w").close()
        mount(src, dst, None, MS_BIND)
    pid = os.fork()
    if pid == 0:  # pid 1 of the new pid namespace
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def plan(conns: int, time_wait: int, ports: int, base: int, holders: int = 1
         ) -> list[dict[str, Any]]:
    """Holder specs for ``conns`` held connections (on each holder's first port) and
    ``time_wait`` TIME_WAIT sockets spread over ``ports`` listeners per holder, in at
    least ``holders`` processes and at most MAX_CONNS connections in one."""
    n = max(holders, -(-conns // MAX_CONNS))
    specs = []
    for i in range(n):
        mine = [base + 10 * i + j for j in range(ports)]
        c = conns // n + (i < conns % n)
        tw = time_wait // n + (i < time_wait % n)
        specs.append({"listen": mine, "established": [[mine[0], c]] if c else [],
                      "time_wait": [[p, tw // ports + (j < tw % ports)]
                                    for j, p in enumerate(mine)]})
    return specs


def start_holders(jobs: list[tuple[Any, dict[str, Any]]], timeout: float = 300.0
                  ) -> list[dict[str, Any]]:
    """Start a holder per (sandbox, spec) at once (they build in parallel), then wait for
    every report; each runs inside its sandbox, which stops and reaps it."""
    procs = [sb.popen([sys.executable, str(Path(__file__).resolve()), "--_role", "holder",
                       "--spec", json.dumps(spec)], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE) for sb, spec in jobs]
    deadline = time.monotonic() + timeout
    return [h.holder_report(proc, deadline - time.monotonic(), "a holder process")
            for proc in procs]


# --- looking at a namespace from here -----------------------------------------------------


def sockstat(path: str) -> dict[str, int]:
    """The TCP line of a namespace's /proc/net/sockstat (what ``ss -s`` prints): inuse
    (hashed sockets: ESTABLISHED, LISTEN, ...), orphan, tw, alloc; read by this thread
    after setns into it (tcplab.observe.netns.entered)."""
    from tcplab.observe.netns import entered

    with entered(path), open("/proc/thread-self/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()[1:]
                return {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
    raise h.BenchError(f"{path}: no TCP line in /proc/net/sockstat")


def wait_stable(paths: list[str], tw: int, inuse: int, what: str, extra: int = 0
                ) -> dict[str, int]:
    """Until the namespaces hold at least ``tw`` TIME_WAIT and ``inuse`` other sockets
    in all, and at most ``extra`` (listeners) more: a server's socket in LAST_ACK is still
    hashed, so counted in inuse until its last ACK comes (milliseconds). Not "orphan":
    that count is the node's, not the namespace's (tcp_orphan_count, net/ipv4/tcp.c).
    At most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        total: dict[str, int] = {}
        for p in paths:
            for k, v in sockstat(p).items():
                total[k] = total.get(k, 0) + v
        if total.get("tw", 0) >= tw and inuse <= total.get("inuse", 0) <= inuse + extra:
            return total
        if time.monotonic() > deadline:
            raise h.BenchError(f"{what}: after 10 s the namespaces hold {total} (sockstat), "
                               f"not {tw:,} TIME_WAIT and {inuse:,} in use")
        time.sleep(0.1)


def node_load() -> dict[str, int]:
    """What ``ss -p`` and ``--all-procs`` walk besides our sockets: the node's processes
    and its open files (/proc/sys/fs/file-nr, allocated file handles: fs/file_table.c)."""
    with open("/proc/sys/fs/file-nr") as f:
        files = int(f.read().split()[0])
    return {"node_processes": sum(1 for e in os.listdir("/proc") if e.isdigit()),
            "node_open_files": files}


def in_ns(path: str) -> Callable[..., subprocess.Popen[Any]]:
    """A popen for ``measured`` whose child joins namespace ``path`` before exec, as
    ``nsenter --net=PATH`` does (its own process group, as every bench child)."""
    from tcplab.interrupts import spawn
    from tcplab.observe.nsutil import CLONE_NEWNET, setns

    def popen(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            proc: subprocess.Popen[Any] = spawn(
                cmd, preexec_fn=lambda: setns(fd, CLONE_NEWNET), **kw)
            return proc
        finally:
            os.close(fd)
    return popen


def scrape(path: str, port: int, pid: int) -> tuple[float, float, dict[str, Any]]:
    """One GET /metrics from a socket opened inside namespace ``path``: wall ms from
    connect() to the end of the reply, the exporter's CPU ms over it (/proc/PID/stat)."""
    from tcplab.observe.netns import entered
    from tcplab.observe.procfs import cpu_seconds

    with entered(path):
        s = socket.socket()
    with s:
        s.settimeout(CMD_TIMEOUT)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        s.connect((HOST, port))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
        wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - c0  # read after the exporter closed: its work is done
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status} ":
        raise h.BenchError(f"exporter scrape: {status!r}")
    return wall * 1e3, cpu * 1e3, {"bytes": len(body),
                                   "series": sum(1 for ln in body.splitlines()
                                                 if ln and not ln.startswith(b"#"))}


# --- a stage: a population, the tools measured on it, rounds --------------------------


@dataclass
class Tool:
    label: str
    cmd: list[str] | None  # None: ``special`` measures it
    popen: Callable[..., Any] | None = None
    codes: tuple[int, ...] = (0,)
    special: Callable[[], tuple[float, float, dict[str, Any]]] | None = None


@dataclass
class Stage:
    """A population: build() it, then tools() measured on it in rounds, rebuilt when
    TIME_WAIT would expire during the next round."""

    name: str
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    t_tw: float = 0.0
    builds: list[dict[str, Any]] = field(default_factory=list)

    def build(self) -> None:
        raise NotImplementedError

    def tools(self) -> dict[str, Tool]:
        raise NotImplementedError

    def check(self) -> dict[str, int]:
        """The population, read before each round (sockstat); BenchError if short."""
        raise NotImplementedError

    def close(self) -> None:
        self.stack.close()


def run_tool(tool: Tool) -> tuple[float, float, dict[str, Any]]:
    if tool.special is not None:
        return tool.special()
    assert tool.cmd is not None
    m = h.measured(tool.cmd, CMD_TIMEOUT, *([tool.popen] if tool.popen else []))
    if m.code not in tool.codes:
        raise h.BenchError(f"{tool.label}: exit {m.code}: {m.err.strip()[-500:]}")
    return m.wall_s * 1e3, (m.user_s + m.sys_s) * 1e3, {"exit": m.code,
                                                        "lines": m.out.count("\n")}


def rounds(stage: Stage, n: int) -> dict[str, Any]:
    """Warm-up (each tool once), then ``n`` interleaved rounds (h.rotate), the population
    checked before each, rebuilt when the round might outlast its TIME_WAIT."""
    stage.build()
    tools = stage.tools()
    for t in tools.values():
        run_tool(t)
    h.progress(f"{stage.name}: warm-up done "
               f"({time.monotonic() - stage.t_tw:.0f} s since the first TIME_WAIT)")
    runs: dict[str, dict[str, list[Any]]] = {
        k: {"wall_ms": [], "cpu_ms": [], "extra": []} for k in tools}
    checks, last = [], 0.0
    for i in range(n):
        if time.monotonic() - stage.t_tw + 1.5 * last > BUDGET_S:
            h.progress(f"{stage.name}: TIME_WAIT would expire in round {i + 1}: rebuilding")
            stage.close()
            stage.build()
            tools = stage.tools()
            for t in tools.values():
                run_tool(t)
        t0 = time.monotonic()
        checks.append({"round": i + 1, "s_since_first_time_wait":
                       round(t0 - stage.t_tw, 1), **stage.check()})
        line = []
        for k in h.rotate(list(tools), i):
            wall, cpu, extra = run_tool(tools[k])
            for key, v in (("wall_ms", wall), ("cpu_ms", cpu), ("extra", extra)):
                runs[k][key].append(v)
            line.append(f"{k} {wall:.0f}/{cpu:.0f}")
        last = time.monotonic() - t0
        h.progress(f"{stage.name} round {i + 1}/{n} wall/cpu ms: " + "  ".join(line))
    return {"runs": runs, "checks": checks, "builds": stage.builds,
            "labels": {k: t.label for k, t in tools.items()}}


class StageA(Stage):
    """One namespace: 4,000 connections held (both ends inside, 8,000 sockets) and 48,800
    TIME_WAIT over 4 listeners, in 2 holder processes; an exporter inside it."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("a")
        self.args = args
        self.exporter_pid = 0

    def build(self) -> None:
        from tcplab.experiments.sandbox import Sandbox

        self.stack = contextlib.ExitStack()
        self.sb = self.stack.enter_context(Sandbox(SYSCTLS))
        self.path = self.sb.netns_path
        exp = self.sb.popen([self.args.tcplab, "exporter", "--netns", self.path,
                             "--listen", f"{HOST}:{EXPORTER_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.exporter_pid = exp.pid
        deadline = time.monotonic() + 30
        while True:  # until it serves (its imports take a while)
            try:
                scrape(self.path, EXPORTER_PORT, exp.pid)
                break
            except (OSError, h.BenchError):
                if exp.poll() is not None or time.monotonic() > deadline:
                    raise h.BenchError("tcplab exporter did not serve in 30 s "
                                       f"(exit {exp.poll()})") from None
                time.sleep(0.2)
        t0 = time.monotonic()
        specs = plan(self.args.a_conns, self.args.a_time_wait, 2, LISTEN_BASE, holders=2)
        reports = start_holders([(self.sb, s) for s in specs])
        self.t_tw = min(r["time_wait_from"] for r in reports)
        stat = wait_stable([self.path], self.args.a_time_wait, 2 * self.args.a_conns, "a",
                           4 + 1 + 2)  # 4 listeners, the exporter's and its scrape's
        ss_s = h.measured(["ss", "-s"], 60, in_ns(self.path)).out
        tcp = next((ln.strip() for ln in ss_s.splitlines() if ln.startswith("TCP:")), "?")
        self.builds.append({"build_s": round(time.monotonic() - t0, 1), "holders": len(specs),
                            "sockstat": stat, "ss_s": tcp})
        h.progress(f"a: namespace {self.path} built in {time.monotonic() - t0:.1f} s by "
                   f"{len(specs)} holders; ss -s: {tcp}")

    def check(self) -> dict[str, int]:
        st = sockstat(self.path)
        if st["tw"] < self.args.a_time_wait or st["inuse"] < 2 * self.args.a_conns:
            raise h.BenchError(f"a: the population is short: sockstat {st}")
        return {**st, **node_load()}

    def tools(self) -> dict[str, Tool]:
        t, p, pop = self.args.tcplab, self.path, in_ns(self.path)
        return {
            "states": Tool("tcplab states --netns X", [t, "states", "--netns", p], pop),
            "ss-tan": Tool("ss -tan", ["ss", "-tan"], pop),
            "sockets": Tool("tcplab sockets --all-procs --netns X",
                            [t, "sockets", "--all-procs", "--netns", p], pop),
            "ss-tanpo": Tool("ss -tanpo", ["ss", "-tanpo"], pop),
            # 1: a warning (48,800 TIME_WAIT toward 4 destinations is no finding, but a
            # change of thresholds must not fail the bench); 2: critical
            "doctor": Tool("tcplab doctor --netns X", [t, "doctor", "--netns", p], pop,
                           (0, 1, 2)),
            "doctor0": Tool("tcplab doctor --netns X --interval 0",
                            [t, "doctor", "--netns", p, "--interval", "0"], pop, (0, 1, 2)),
            "scrape": Tool("exporter --netns X: GET /metrics", None, special=lambda: scrape(
                p, EXPORTER_PORT, self.exporter_pid)),
        }


class StageB(Stage):
    """20 namespaces of 3,000 sockets (400 connections held, 2,200 TIME_WAIT), and one
    namespace S with the same 60,000 (8,000 connections, 44,000 TIME_WAIT, 2 holders).
    S's holders live in the first small namespace and made S's sockets after setns into
    it; S's own holder process is then gone, so no process is in S: `--all-netns` (which
    finds namespaces by /proc/*/ns/net and /run/netns) does not see it, while its sockets
    keep it alive and `--netns /proc/PID/fd/N` (an nsfs fd the holder keeps) reads it."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("b")
        self.args = args

    def build(self) -> None:
        from tcplab.experiments.sandbox import Sandbox

        a = self.args
        self.stack = contextlib.ExitStack()
        small = [self.stack.enter_context(Sandbox(SYSCTLS)) for _ in range(a.b_namespaces)]
        self.paths = [sb.netns_path for sb in small]
        t0 = time.monotonic()
        with Sandbox(SYSCTLS) as single:
            s_specs = [{**spec, "enter": single.netns_path}
                       for spec in plan(a.b_namespaces * a.b_conns,
                                        a.b_namespaces * a.b_time_wait, 2, LISTEN_BASE)]
            jobs = [(small[0], spec) for spec in s_specs]
            for sb in small:
                jobs += [(sb, spec) for spec in plan(a.b_conns, a.b_time_wait, 1, LISTEN_BASE)]
            reports = start_holders(jobs)
        # S's nsholder is gone; S lives on in its sockets
        s_rep = reports[0]
        self.single = f"/proc/{s_rep['pid']}/fd/{s_rep['nsfd']}"
        self.t_tw = min(r["time_wait_from"] for r in reports)
        tw, conns = a.b_namespaces * a.b_time_wait, a.b_namespaces * a.b_conns
        stat_small = wait_stable(self.paths, tw, 2 * conns, "b, 20 namespaces",
                                 len(self.paths))
        stat_single = wait_stable([self.single], tw, 2 * conns, "b, one namespace",
                                  2 * len(s_specs))
        if os.stat(self.single).st_ino in {os.stat(p).st_ino for p in self.paths}:
            raise h.BenchError("b: the one namespace is one of the 20")
        self.builds.append({"build_s": round(time.monotonic() - t0, 1),
                            "holders": len(jobs), "sockstat_20": stat_small,
                            "sockstat_one": stat_single})
        h.progress(f"b: {len(small)} namespaces and one more built in "
                   f"{time.monotonic() - t0:.1f} s by {len(jobs)} holders; sockstat, the "
                   f"{len(small)}: {stat_small}; the one: {stat_single}")

    def check(self) -> dict[str, int]:
        a = self.args
        tw, inuse = a.b_namespaces * a.b_time_wait, 2 * a.b_namespaces * a.b_conns
        out = {}
        for key, paths in (("20", self.paths), ("one", [self.single])):
            st: dict[str, int] = {}
            for p in paths:
                for k, v in sockstat(p).items():
                    st[k] = st.get(k, 0) + v
            if st["tw"] < tw or st["inuse"] < inuse:
                raise h.BenchError(f"b: the population is short ({key}): sockstat {st}")
            out.update({f"{key}_tw": st["tw"], f"{key}_inuse": st["inuse"]})
        return out

    def isolated(self, *cmd: str) -> list[str]:
        """``cmd`` under isolated_main: only our 20 namespaces (named b0..b19 in
        /run/netns) to be found; S as the inherited fd "@FD"."""
        spec = {"binds": {f"/run/netns/b{i}": p for i, p in enumerate(self.paths)},
                "fd": self.single}
        return [sys.executable, str(Path(__file__).resolve()), "--_role", "isolated",
                "--spec", json.dumps(spec), "--", *cmd]

    def tools(self) -> dict[str, Tool]:
        t = self.args.tcplab
        return {
            "all-netns": Tool("[ours only] tcplab states --all-netns",
                              self.isolated(t, "states", "--all-netns")),
            "one": Tool("[ours only] tcplab states --netns S",
                        self.isolated(t, "states", "--netns", "@FD")),
            # what the wrapper costs (its interpreter, the mounts), taken off both rows
            # above in the same round: an added constant would flatter the ratio
            "wrapper": Tool("[ours only] the wrapper alone (exec true)",
                            self.isolated("/bin/true")),
            "all-netns-node": Tool("tcplab states --all-netns (the whole node)",
                                   [t, "states", "--all-netns"]),
            "one-node": Tool("tcplab states --netns S (from the host)",
                             [t, "states", "--netns", self.single]),
            # the kernel's side: each sock_diag dump walks the node's whole TCP ehash,
            # shared by every namespace (inet_diag_dump_icsk skips other namespaces'
            # sockets by net_eq), so a dump of a small namespace costs about as much
            "ss-small": Tool("ss -tan in one of the 20 (3,000 sockets)", ["ss", "-tan"],
                             in_ns(self.paths[0])),
            "ss-one": Tool("ss -tan in S (60,000 sockets)", ["ss", "-tan"],
                           in_ns(self.single)),
        }

    def seen(self) -> dict[str, Any]:
        """What --all-netns saw: namespaces, sockets, and those not ours (other work on
        this node: the host's, other sandboxes')."""
        res = h.last_json(h.measured(
            [self.args.tcplab, "states", "--all-netns", "--json"], CMD_TIMEOUT),
            "tcplab states --all-netns --json")
        iso = h.last_json(h.measured(
            self.isolated(self.args.tcplab, "states", "--all-netns", "--json"), CMD_TIMEOUT),
            "[ours only] tcplab states --all-netns --json")
        ours = {os.stat(p).st_ino for p in self.paths}
        foreign = [n for n in res["namespaces"] if n["netns"] not in ours]
        one = h.last_json(h.measured([self.args.tcplab, "states", "--netns", self.single,
                                      "--json"], CMD_TIMEOUT), "tcplab states --netns S")
        return {"examined": res["examined"], "failed": res["not_examined"], "total": res["total"],
                "ours": sum(n["total"] for n in res["namespaces"] if n["netns"] in ours),
                "ours_seen": sum(n["netns"] in ours for n in res["namespaces"]),
                "foreign_namespaces": len(foreign),
                "foreign_sockets": sum(n["total"] for n in foreign),
                "one_total": one["total"], "isolated_examined": iso["examined"],
                "isolated_total": iso["total"],
                "isolated_ours_seen": sum(n["netns"] in ours for n in iso["namespaces"])}


class StageC(Stage):
    """One namespace: 2,800 connections held and 15,000 TIME_WAIT on port P (20,601
    sockets with P, the listener included), 3,000 TIME_WAIT on another port, which the
    filter must leave out (bench/states_vs_ss.py's population)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("c")
        self.args = args

    def build(self) -> None:
        from tcplab.experiments.sandbox import Sandbox

        a = self.args
        self.stack = contextlib.ExitStack()
        self.sb = self.stack.enter_context(Sandbox(SYSCTLS))
        self.path = self.sb.netns_path
        t0 = time.monotonic()
        spec = {"listen": [a.port, a.port + 1010],
                "established": [[a.port, a.c_conns]],
                "time_wait": [[a.port, a.c_time_wait], [a.port + 1010, a.c_other_time_wait]]}
        reports = start_holders([(self.sb, spec)])
        self.t_tw = reports[0]["time_wait_from"]
        stat = wait_stable([self.path], a.c_time_wait + a.c_other_time_wait,
                           2 * a.c_conns, "c", 2)
        self.builds.append({"build_s": round(time.monotonic() - t0, 1), "sockstat": stat})
        h.progress(f"c: built in {time.monotonic() - t0:.1f} s; sockstat {stat}")

    def check(self) -> dict[str, int]:
        a = self.args
        st = sockstat(self.path)
        if st["tw"] < a.c_time_wait + a.c_other_time_wait or st["inuse"] < 2 * a.c_conns:
            raise h.BenchError(f"c: the population is short: sockstat {st}")
        return st

    def tools(self) -> dict[str, Tool]:
        t, p, pop, port = self.args.tcplab, self.path, in_ns(self.path), str(self.args.port)
        return {
            "states": Tool(f"tcplab states --port {port} --netns X",
                           [t, "states", "--port", port, "--netns", p], pop),
            # the same, started inside without --netns (setns through ctypes is an import)
            "states-in": Tool(f"tcplab states --port {port} (no --netns)",
                              [t, "states", "--port", port], pop),
            "ss": Tool(f"ss -tan '( sport = :{port} or dport = :{port} )'",
                       ["ss", "-tan", f"( sport = :{port} or dport = :{port} )"], pop),
            "python": Tool("(ref) python -c pass", [self.args.python, "-c", "pass"], pop),
        }

    def counts(self) -> dict[str, Any]:
        """tcplab's total for P against ss's line count (no header with -H)."""
        port = str(self.args.port)
        pop = in_ns(self.path)
        mine = h.last_json(h.measured([self.args.tcplab, "states", "--port", port, "--netns",
                                       self.path, "--json"], CMD_TIMEOUT, pop), "states")
        ss = h.measured(["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
                        CMD_TIMEOUT, pop)
        n = sum(1 for ln in ss.out.splitlines() if ln.strip())
        return {"tcplab": mine["total"], "ss": n, "match": mine["total"] == n}


# --- profiles: where the time goes -----------------------------------------------------

#: One scrape profiled in one process: the exporter's collector on a registry of its own,
#: the first scrape a warm-up (imports, caches), the second profiled.
SCRAPE_PROFILE = """\
import cProfile, sys
from prometheus_client import CollectorRegistry, generate_latest
from tcplab.observe.exporter import TcplabCollector
r = CollectorRegistry()
r.register(TcplabCollector(sys.argv[1]))
generate_latest(r)
cProfile.run("generate_latest(r)", sys.argv[2])
"""


def profile(stage: Stage, where: Path) -> dict[str, str]:
    """Each tcplab command of ``stage`` once under ``python -m cProfile -m tcplab``, the
    way it is timed (same namespace, same arguments); part a's scrape in one process
    (SCRAPE_PROFILE). Writes WHERE/KEY.prof and KEY.txt (top 30 by cumulative, then by
    own time); returns {key: the .txt's path}."""
    import pstats

    stage.build()
    where.mkdir(parents=True, exist_ok=True)
    py, tcplab = ARGS.python, ARGS.tcplab
    out = {}
    for key, tool in stage.tools().items():
        prof = where / f"{stage.name}-{key}.prof"
        if tool.cmd is None:
            assert isinstance(stage, StageA)
            cmd = [py, "-c", SCRAPE_PROFILE, stage.path, str(prof)]
        elif tcplab in tool.cmd:
            i = tool.cmd.index(tcplab)
            cmd = [*tool.cmd[:i], py, "-m", "cProfile", "-o", str(prof), "-m", "tcplab",
                   *tool.cmd[i + 1:]]
        else:
            continue  # ss, python: not ours
        m = h.measured(cmd, CMD_TIMEOUT, *([tool.popen] if tool.popen else []))
        if m.code not in tool.codes:
            raise h.BenchError(f"profiling {tool.label}: exit {m.code}: {m.err[-500:]}")
        txt = prof.with_suffix(".txt")
        with open(txt, "w") as f:
            f.write(f"{tool.label}: {m.wall_s * 1e3:.0f} ms under cProfile\n")
            for order in ("cumulative", "tottime"):
                pstats.Stats(str(prof), stream=f).sort_stats(order).print_stats(30)
        out[key] = str(txt)
        h.progress(f"profile of {tool.label}: {txt}")
    return out


# --- summary --------------------------------------------------------------------------------


def summary(res: dict[str, Any], ratios: dict[str, str]) -> dict[str, Any]:
    """Medians per tool, and each tool's ratio to its peer, paired by round."""
    runs = res["runs"]
    rows = {}
    for k, r in runs.items():
        peer = ratios.get(k)
        rows[k] = {
            "label": res["labels"][k], "wall_ms": h.median(r["wall_ms"]),
            "cpu_ms": h.median(r["cpu_ms"]),
            "peer": peer,
            "x_wall": h.paired(zip(r["wall_ms"], runs[peer]["wall_ms"], strict=True))
            if peer else None,
            "x_cpu": h.paired(zip(r["cpu_ms"], runs[peer]["cpu_ms"], strict=True))
            if peer else None,
            "runs_wall_ms": [round(x, 1) for x in r["wall_ms"]],
            "runs_cpu_ms": [round(x, 1) for x in r["cpu_ms"]],
            "extra": r["extra"][-1] if r["extra"] else None,
        }
    return {"tools": rows, "checks": res["checks"], "builds": res["builds"]}


def own_ehash(buckets: int) -> None:
    """Move this process into a private network namespace and there set
    net.ipv4.tcp_child_ehash_entries, so every namespace our sandboxes create from it
    gets a TCP hash table of its own (tcp_set_hashinfo, net/ipv4/tcp_ipv4.c; the default
    0: they share the host's, which every sock_diag dump walks whole). The host's
    sysctls are not touched: the write is refused unless we are out of pid 1's namespace."""
    from tcplab.observe.nsutil import CLONE_NEWNET, unshare

    def ident(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:  # pid 1's may not be ours to read
            return None
        return st.st_dev, st.st_ino

    before = ident("/proc/self/ns/net")
    unshare(CLONE_NEWNET)
    if ident("/proc/self/ns/net") in (before, ident("/proc/1/ns/net"), None):
        raise h.BenchError("--child-ehash: still in the namespace we started in; not writing")
    with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "w") as f:
        f.write(str(buckets))


def measure(args: argparse.Namespace, _tmp: Path) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise h.BenchError("node.py needs root: tcplab's --netns and --all-netns look into "
                           "other namespaces (CAP_SYS_ADMIN)")
    for tool in ("ss",):
        if not (p := subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True)
                ).stdout:
            raise h.BenchError(f"{tool} is not installed (apt-get install iproute2): {p}")
    if args.fresh_venv:
        from states_vs_ss import make_venv

        args.venv = str(make_venv(_tmp))
    args.tcplab = str(Path(args.venv) / "bin" / "tcplab")
    args.python = str(Path(args.venv) / "bin" / "python")
    if not Path(args.tcplab).exists():
        raise h.BenchError(f"{args.tcplab} does not exist: give --venv a venv where tcplab "
                           "is installed, or pass --fresh-venv")
    if args.child_ehash:
        own_ehash(args.child_ehash)
    # A user's shell does not set it; with it, an editable install compiles every module
    # on every run (bench/README.md, states_vs_ss.py)
    dont = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    out: dict[str, Any] = {
        "benchmark": "node", "rounds": args.rounds, "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(), "venv": args.venv,
        "PYTHONDONTWRITEBYTECODE_removed": dont is not None,
        "how": "every measured command is a whole process of the venv's tcplab entry point "
               "(or ss), started inside the namespace as nsenter --net=PATH does (setns "
               "between fork and exec); tcplab is also given --netns PATH of that same "
               "namespace; part b runs both tcplab commands from the host's namespace",
        "child_ehash": args.child_ehash or None,
        "parts": {}, "goals": [], "problems": []}
    goals, parts = out["goals"], out["parts"]
    stages: dict[str, Callable[[argparse.Namespace], Stage]] = {
        "a": StageA, "b": StageB, "c": StageC}
    stage: Stage
    if args.profile:
        for part in args.parts:
            stage = stages[part](args)
            try:
                out["parts"][part] = {"profiles": profile(stage, Path(args.profile))}
            finally:
                stage.close()
        return out
    for part in args.parts:
        stage = stages[part](args)
        try:
            res = rounds(stage, args.rounds)
            if part == "a":
                s = summary(res, {"states": "ss-tan", "sockets": "ss-tanpo",
                                  "doctor": "ss-tan", "doctor0": "ss-tan",
                                  "scrape": "ss-tan"})
                t = s["tools"]
                goals += [
                    h.goal("a: sockets --all-procs / ss -tanpo <= 1 (wall)",
                           t["sockets"]["x_wall"], (t["sockets"]["x_wall"] or 9) <= 1.0),
                    h.goal("a: sockets --all-procs / ss -tanpo <= 1 (cpu)",
                           t["sockets"]["x_cpu"], (t["sockets"]["x_cpu"] or 9) <= 1.0),
                    h.goal("a: doctor < 0.25 s (wall, s)", t["doctor"]["wall_ms"] / 1e3,
                           t["doctor"]["wall_ms"] < 250, ".3f"),
                    h.goal("a: doctor < 0.25 s (cpu, s)", t["doctor"]["cpu_ms"] / 1e3,
                           t["doctor"]["cpu_ms"] < 250, ".3f"),
                    h.goal("a: doctor --interval 0 < 0.25 s (wall, s)",
                           t["doctor0"]["wall_ms"] / 1e3, t["doctor0"]["wall_ms"] < 250, ".3f"),
                    h.goal("a: exporter scrape < 0.25 s (wall, s)",
                           t["scrape"]["wall_ms"] / 1e3, t["scrape"]["wall_ms"] < 250, ".3f"),
                    h.goal("a: exporter scrape < 0.25 s (exporter's cpu, s)",
                           t["scrape"]["cpu_ms"] / 1e3, t["scrape"]["cpu_ms"] < 250, ".3f"),
                ]
            elif part == "b":
                assert isinstance(stage, StageB)
                s = summary(res, {"all-netns": "one", "all-netns-node": "one-node",
                                  "ss-small": "ss-one"})
                s["seen"] = seen = stage.seen()
                r = res["runs"]
                for key in ("wall_ms", "cpu_ms"):
                    net = h.paired(
                        (a - w, o - w) for a, o, w in zip(r["all-netns"][key], r["one"][key],
                                                          r["wrapper"][key], strict=True))
                    s["tools"]["all-netns"][f"x_{key.split('_')[0]}_net"] = net
                    goals.append(h.goal(f"b: [ours only] --all-netns / one namespace <= 2 "
                                        f"({key.split('_')[0]}, net of the wrapper)",
                                        net, (net or 9) <= 2.0))
                if args.b_namespaces not in (seen["ours_seen"], seen["isolated_ours_seen"]):
                    out["problems"].append(f"b: --all-netns saw {seen['ours_seen']} of our "
                                           f"{args.b_namespaces} namespaces")
            else:
                assert isinstance(stage, StageC)
                s = summary(res, {"states": "ss", "states-in": "ss", "python": "ss"})
                s["counts"] = c = stage.counts()
                x, xc = s["tools"]["states"]["x_wall"], s["tools"]["states"]["x_cpu"]
                xi = s["tools"]["states-in"]["x_wall"]
                goals += [h.goal("c: states --port P / ss <= 0.8 (wall)", x, (x or 9) <= 0.8),
                          h.goal("c: states --port P / ss <= 0.8 (cpu)", xc, (xc or 9) <= 0.8),
                          h.goal("c: the same without --netns (wall)", xi, (xi or 9) <= 0.8)]
                if not c["match"]:
                    out["problems"].append(f"c: tcplab counted {c['tcplab']:,} sockets with "
                                           f"port {args.port}, ss {c['ss']:,}")
            parts[part] = s
        finally:
            stage.close()
    out["load_avg_end"] = os.getloadavg()
    return out


PART_TITLES = {
    "a": "a. one namespace: {tw:,} TIME_WAIT + {est:,} ESTABLISHED ({conns:,} connections, "
         "both ends inside, 2 holder processes)",
    "b": "b. {n} namespaces of {each:,} sockets ({bc:,} connections held, {btw:,} TIME_WAIT "
         "each) against one namespace with the same {total:,}",
    "c": "c. one namespace: {cp:,} sockets with port {port} ({ctw:,} TIME_WAIT, {cc:,} "
         "connections held, the listener), {cother:,} TIME_WAIT on port {other}",
}


def print_table(res: dict[str, Any]) -> None:
    a = ARGS
    if a.profile:
        for part, s in res["parts"].items():
            for key, txt in s["profiles"].items():
                print(f"{part} {key}: {txt}")
        return
    print(f"tcplab across the node (issue 15, part 5): medians of {res['rounds']} interleaved "
          f"rounds after a warm-up; ratios paired by round; load average "
          f"{res['load_avg_start'][0]:.1f} at the start, {res['load_avg_end'][0]:.1f} at the end")
    print(f"  how: {res['how']}")
    if res.get("child_ehash"):
        print(f"  every namespace made here has a TCP hash table of its own "
              f"({res['child_ehash']:,} buckets: --child-ehash); by default they share the "
              "host's")
    print(f"  tcplab: {res['venv']}"
          + ("; PYTHONDONTWRITEBYTECODE removed from the children's environment"
             if res["PYTHONDONTWRITEBYTECODE_removed"] else ""))
    for part, s in res["parts"].items():
        print()
        print(PART_TITLES[part].format(
            tw=a.a_time_wait, est=2 * a.a_conns, conns=a.a_conns, n=a.b_namespaces,
            each=2 * a.b_conns + a.b_time_wait, bc=a.b_conns, btw=a.b_time_wait,
            total=a.b_namespaces * (2 * a.b_conns + a.b_time_wait), cp=2 * a.c_conns
            + a.c_time_wait + 1, port=a.port, ctw=a.c_time_wait, cc=a.c_conns,
            cother=a.c_other_time_wait, other=a.port + 1010))
        builds = s["builds"]
        print(f"  built {len(builds)} time(s) ({', '.join(str(b['build_s']) for b in builds)}"
              f" s); checked before each round (sockstat, as ss -s reads it): " + "; ".join(
                  ", ".join(f"{k} {v:,}" for k, v in c.items()
                            if k in ("s_since_first_time_wait", "tw", "inuse")
                            or k.endswith(("_tw", "_inuse")))
                  for c in s["checks"][:1]) + (" ..." if len(s["checks"]) > 1 else ""))
        if "ss_s" in builds[0]:
            print(f"  ss -s in it: {builds[0]['ss_s']}")
        print(f"  {'command':<46} {'wall ms':>8} {'cpu ms':>7} {'x wall':>7} {'x cpu':>6}  vs")
        for t in s["tools"].values():
            peer = s["tools"][t["peer"]]["label"] if t["peer"] else ""
            print(f"  {t['label']:<46} {t['wall_ms']:>8.1f} {t['cpu_ms']:>7.1f} "
                  f"{h.fmt(t['x_wall'], '.2f'):>7} {h.fmt(t['x_cpu'], '.2f'):>6}  {peer}")
        if part == "a":
            procs = [c["node_processes"] for c in s["checks"]]
            files = [c["node_open_files"] for c in s["checks"]]
            print(f"  the node during the rounds: {min(procs)}-{max(procs)} processes, "
                  f"{min(files):,}-{max(files):,} open files (ss -p and --all-procs walk "
                  "them)")
            sc = s["tools"]["scrape"]
            print("  (scrape: cpu is the exporter's, /proc/PID/stat; "
                  f"{sc['extra']['bytes']:,} bytes, {sc['extra']['series']:,} series; "
                  "doctor reads ListenOverflows twice, at least --interval apart: the "
                  "default's cost shows against --interval 0)")
        if part == "b":
            seen = s["seen"]
            print(f"  --all-netns examined {seen['examined']} namespaces, "
                  f"{len(seen['failed'])} not; {seen['total']:,} sockets: ours "
                  f"{seen['ours']:,} in {seen['ours_seen']}, others on this node "
                  f"{seen['foreign_sockets']:,} in {seen['foreign_namespaces']}; --netns S: "
                  f"{seen['one_total']:,}")
            t = s["tools"]["all-netns"]
            print(f"  [ours only] net of the wrapper (its time taken off both, per round): "
                  f"x {h.fmt(t.get('x_wall_net'), '.2f')} wall, "
                  f"x {h.fmt(t.get('x_cpu_net'), '.2f')} cpu")
            print(f"  [ours only]: in a mount and pid namespace of their own, where /proc "
                  "shows only the command and /run/netns names our namespaces (isolated_main):"
                  f" --all-netns examined {seen['isolated_examined']} (ours "
                  f"{seen['isolated_ours_seen']} and the host's), {seen['isolated_total']:,} "
                  "sockets")
        if part == "c":
            c = s["counts"]
            print(f"  counts with port {a.port}: tcplab {c['tcplab']:,}, ss {c['ss']:,}: "
                  + ("MATCH" if c["match"] else "MISMATCH"))
    h.print_goals(res["goals"], 56, 7, "none measured")
    for p in res["problems"]:
        print(f"problem: {p}")


ARGS = argparse.Namespace()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = h.parser("Issue 15's speed goals: tcplab states, sockets, doctor and exporter on "
                 "56,800 sockets, --all-netns over 20 namespaces, states --port at 20,601 "
                 "sockets; each against its peer in the same rounds. Root only.", go=False)
    add = p.add_argument
    add("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    add("--quick", action="store_true", help="--rounds 2")
    add("--parts", default="a,b,c", help="which parts: a, b, c (comma-separated)")
    add("--venv", default=str(ROOT / ".venv"), help="the venv whose tcplab is measured")
    add("--fresh-venv", action="store_true",
        help="pip install this checkout (not editable) into a temporary venv, measure that")
    add("--a-conns", type=int, default=4_000, help="a: connections held (2 sockets each)")
    add("--a-time-wait", type=int, default=48_800, help="a: TIME_WAIT sockets")
    add("--b-namespaces", type=int, default=20, help="b: namespaces")
    add("--b-conns", type=int, default=400, help="b: connections held per namespace")
    add("--b-time-wait", type=int, default=2_200, help="b: TIME_WAIT per namespace")
    add("--port", type=int, default=8080, help="c: the port P (and P+1010, the other)")
    add("--c-conns", type=int, default=2_800, help="c: connections held on P")
    add("--c-time-wait", type=int, default=15_000, help="c: TIME_WAIT on P")
    add("--c-other-time-wait", type=int, default=3_000, help="c: TIME_WAIT on P+1010")
    add("--child-ehash", type=int, default=0, metavar="BUCKETS",
        help="give each namespace made here a TCP hash table of its own (set "
             "net.ipv4.tcp_child_ehash_entries in a private namespace the bench moves into; "
             "a power of 2, 128 to 16M); 0: they share the host's, as containers do by "
             "default")
    add("--profile", metavar="DIR",
        help="instead of timing: run each tcplab command once under cProfile, write "
             "DIR/PART-KEY.prof and a .txt of the top functions")
    add("--_role", dest="role", default="measure", choices=("measure", "holder", "isolated"),
        help=argparse.SUPPRESS)
    add("--spec", help=argparse.SUPPRESS)
    add("cmd", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role != "measure":
        return args
    if args.quick:
        args.rounds = 2
    if args.child_ehash and not (128 <= args.child_ehash <= 1 << 24
                                 and args.child_ehash & (args.child_ehash - 1) == 0):
        p.error("--child-ehash must be 0 or a power of 2 from 128 to 16,777,216")
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not args.parts or set(args.parts) - {"a", "b", "c"}:
        p.error("--parts takes a, b and c, comma-separated")
    h.check(p, args, 1, "rounds", "b_namespaces")
    h.check(p, args, 0, "a_conns", "a_time_wait", "b_conns", "b_time_wait", "c_conns",
            "c_time_wait", "c_other_time_wait")
    if not 1024 <= args.port <= 64000:
        p.error("--port must be in 1024..64000")
    # client ports per destination (each holder's listener) stay well inside 1024-65535
    for what, per_dest in (("a", args.a_time_wait / 4 + args.a_conns / 2),
                           ("b", args.b_namespaces * (args.b_time_wait / 4 + args.b_conns / 2)),
                           ("c", args.c_time_wait + args.c_conns)):
        if per_dest > 50_000:
            p.error(f"{what}: {per_dest:,.0f} client ports toward one listener: more than "
                    "50,000 of the 64,512 in 1024-65535")
    return args


def main(argv: list[str] | None = None) -> int:
    global ARGS
    args = parse_args(argv)
    if args.role == "holder":
        return holder_main(json.loads(args.spec))
    if args.role == "isolated":
        return isolated_main(json.loads(args.spec), args.cmd)
    ARGS = args
    return h.run_main(lambda tmp: measure(args, tmp), "tcplab-bench-node-", args.json,
                      print_table)


if __name__ == "__main__":
    sys.exit(main())
