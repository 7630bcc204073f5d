"""One multiplex run spread over several client processes and source addresses.

Two walls stop one client process short of C100k, and neither is the machine's:

- **fds per process.** One connection is one fd, and RLIMIT_NOFILE's hard limit
  (20,000 on this machine) can be raised only with CAP_SYS_RESOURCE. So the
  connections are shared among ``processes`` children, each under the limit.
- **ports per destination.** A client socket's 4-tuple must be unique; toward one
  server address and port, one source address offers one ephemeral port range
  (``net.ipv4.ip_local_port_range``, 28,232 ports by default). So each child binds
  its own source address (127.0.0.2, 127.0.0.3, ... on loopback: the whole of
  127.0.0.0/8 is lo's) with IP_BIND_ADDRESS_NO_PORT, which leaves the port to
  connect(), where the kernel checks the whole 4-tuple
  (``__inet_hash_connect``, net/ipv4/inet_hashtables.c), instead of bind()
  reserving a port for every destination at once.

Each child runs ``traffic.multiplex.run`` on its share, with the phases held at a
barrier: every child connects and holds (the parent reads the server's processes
and the kernel's memory with every connection open and idle), then every child
runs its verified round trips and holds again (the parent reads again), then all
close with SO_LINGER 0 (RST: no TIME_WAIT left behind). The parent watches the
listeners' accept queues. Children are forked (no second interpreter start) and
die with the parent (PR_SET_PDEATHSIG); messages are JSON over SOCK_SEQPACKET
socketpairs, one message per send.
"""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tcplab.errors import ConnectFailed, UsageError
from tcplab.observe import procfs, slab
from tcplab.observe.procfs import ProcessError
from tcplab.records import from_json, to_json
from tcplab.traffic import multiplex
from tcplab.traffic.client import percentile
from tcplab.traffic.multiplex import EXPLAIN, MultiplexResult, Spread, WorkerRow
from tcplab.traffic.target import Target

#: Connections opened per second, all processes together, when no ramp is given:
#: 100,000 in 5 s, well inside what 6 SO_REUSEPORT listeners with queues of 8,192
#: drained on this 2-core machine (bench/c100k.py).
RATE = 20_000

#: The most of the ephemeral port range one source address is given: 40 %, so 80 %
#: of the half connect() scans first. __inet_hash_connect (net/ipv4/inet_hashtables.c)
#: tries ports of one parity first, from a random offset in steps of 2, leaving the
#: other parity to bind(); once that half is full, every connect() walks all of it
#: (14,116 ports here) before it tries the other half. Measured here, 100,000
#: connections to six Go servers: 6 sources (16,667 each, past the half) cost the
#: client 22.8 s of system time; 12 sources (8,334 each) 6.1 s.
SOURCE_FILL = 0.4

#: How often a child tells its parent its count (connections open, echoes verified).
TICK_S = 0.25

#: Slack on top of the phases' own bounds before the parent gives up on a child.
SLACK_S = 30.0


def shares(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` shares differing by at most one, larger first."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def processes_for(n: int, hard: int, spare: int = multiplex.SPARE_FDS) -> int:
    """The fewest client processes that hold ``n`` connections under the hard fd limit."""
    room = max(1, hard - spare)
    return max(1, -(-n // room))


def sources_for(n: int, ports: int | None) -> int:
    """Source addresses for ``n`` connections to one destination, each given at most
    SOURCE_FILL of the ``ports`` of the ephemeral range."""
    if not ports:
        return 1
    return max(1, -(-n // max(1, int(ports * SOURCE_FILL))))


def client_processes(n: int, hard: int, target: Target, ports: int | None) -> int:
    """Client processes for ``n``: enough for the hard fd limit and, toward an IPv4
    loopback server (where each process gets a source address of its own), enough
    source addresses to keep each one's ports short of the cliff (SOURCE_FILL)."""
    c = processes_for(n, hard)
    if _ipv4_loopback(target):
        c = max(c, sources_for(n, ports))
    return c


def default_sources(target: Target, processes: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, ... for an IPv4 loopback target, one per process; for
    any other target none: the kernel's choice of source (one port range)."""
    if _ipv4_loopback(target) and processes > 1:
        return [str(ipaddress.IPv4Address("127.0.0.2") + i) for i in range(processes)]
    return []


def check_ports(n: int, sources: Sequence[str], ports: int | None) -> None:
    """Refuse a spread that needs more ephemeral ports per source than there are."""
    if ports is None:
        return
    per_source = -(-n // max(1, len(sources)))
    if per_source > ports:
        need = -(-n // ports)
        raise UsageError(
            f"{n:,} connections to one address and port need {need} source addresses: "
            f"each offers {ports:,} ephemeral ports (net.ipv4.ip_local_port_range), "
            f"and {max(1, len(sources))} {'gives' if len(sources) <= 1 else 'give'} "
            f"{max(1, len(sources)) * ports:,}",
            hint="give more with --source A,B,... (addresses of this host), or connect to "
            "127.0.0.1 so that 127.0.0.2 and up are used")


@dataclass(slots=True)
class _Child:
    index: int
    pid: int
    sock: socket.socket
    share: int
    count: dict[str, int] = field(default_factory=dict)  # phase -> its latest count
    phase: str = "connecting"  # the last barrier it reached (or "result", "lost")
    held: int = 0
    rss: dict[str, int] = field(default_factory=dict)  # phase -> its VmRSS
    result: MultiplexResult | None = None
    quantiles: list[float] = field(default_factory=list)
    lost: str | None = None  # why it ended without a result
    refused: ConnectFailed | None = None  # it ended because nothing listens


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message, separators=(",", ":")).encode())


def _rss() -> int:
    return procfs.status("self").rss_bytes


def _child_main(sock: socket.socket, target: Target, share: int, offset: int,
                source: str | None, messages: int, size: int, ramp: float,
                connect_timeout: float, timeout: float) -> None:
    """A child's whole life: its share of the run, the barriers, its result."""
    from tcplab.observe.nsutil import die_with_parent

    die_with_parent(signal.SIGKILL)
    # Ctrl-C reaches the whole process group: the parent decides and kills us (our
    # sockets have SO_LINGER 0, so the kernel resets them as we go).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rss0 = _rss()
    last = [0.0]

    def tick(phase: str, count: int) -> None:
        now = time.monotonic()
        if now - last[0] >= TICK_S:
            last[0] = now
            _send(sock, {"tick": phase, "count": count})

    def pause(phase: str, held: int) -> None:
        _send(sock, {"phase": phase, "held": held, "rss": _rss()})
        if sock.recv(64) != b"go":  # EOF: the parent is gone
            os._exit(1)

    quantiles: list[float] = []
    result = multiplex.run(
        target, share, messages, size, ramp, None, connect_timeout=connect_timeout,
        timeout=timeout, source=(source, 0) if source else None, linger0=True,
        offset=offset, pause=pause, tick=tick, rtt_quantiles=quantiles,
        watch_accept=False)
    _send(sock, {"result": to_json(result), "quantiles": quantiles, "rss0": rss0})


def _fork_child(index: int, share: int, offset: int, source: str | None,
                run_args: tuple[Target, int, int, float, float, float]) -> _Child:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 1
        try:
            parent.close()
            target, messages, size, ramp, connect_timeout, timeout = run_args
            _child_main(child, target, share, offset, source, messages, size, ramp,
                        connect_timeout, timeout)
            code = 0
        except BaseException as exc:  # reported to the parent, then exit
            try:
                _send(child, {"error": f"{type(exc).__name__}: {exc}",
                              "refused": isinstance(exc, ConnectFailed),
                              "hint": getattr(exc, "hint", None)})
            except OSError:
                pass
        finally:
            os._exit(code)
    child.close()
    return _Child(index=index, pid=pid, sock=parent, share=share)


class _Server:
    """The server's processes as /proc shows them: idle, then at each phase."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.idle: dict[int, tuple[int, int, float]] = {}  # pid -> (rss, sockets, cpu)
        self.peak: dict[int, tuple[int, int]] = {}  # pid -> (rss, sockets): the most seen
        self.last: dict[int, tuple[float, int, int]] = {}  # pid -> (cpu, threads, watches)
        self.commands: dict[int, str] = {}
        for pid in self.pids:
            try:
                status = procfs.status(pid)
                self.idle[pid] = (status.rss_bytes, procfs.fd_census(pid)[0],
                                  procfs.cpu_seconds(pid))
                self.commands[pid] = procfs.comm(pid)
            except (ProcessError, OSError):
                continue

    def read(self) -> None:
        for pid in self.idle:
            try:
                status = procfs.status(pid)
                sockets, _, watches = procfs.fd_census(pid)  # one walk of its fds
                cpu = procfs.cpu_seconds(pid)
            except (ProcessError, OSError):
                continue
            rss, fds = self.peak.get(pid, (0, 0))
            self.peak[pid] = (max(rss, status.rss_bytes), max(fds, sockets))
            self.last[pid] = (cpu, status.threads, watches)

    def rows(self) -> list[WorkerRow]:
        rows = []
        for pid, (rss0, fds0, cpu0) in self.idle.items():
            rss, fds = self.peak.get(pid, (rss0, fds0))
            cpu, threads, watches = self.last.get(pid, (cpu0, 0, 0))
            rows.append(WorkerRow(pid=pid, command=self.commands.get(pid, "?"),
                                  held=fds - fds0, rss_idle=rss0, rss_peak=rss,
                                  cpu_s=round(cpu - cpu0, 3), threads=threads,
                                  epoll_watches=watches))
        return rows


def run(target: Target, connections: int, processes: int, sources: Sequence[str] = (),
        messages: int = 5, size: int = 64, ramp: float | None = None,
        server_pids: Sequence[int] = (), connect_timeout: float = 10.0,
        timeout: float = 60.0, progress: Callable[[str], None] | None = None,
        at_phase: Callable[[str], None] | None = None) -> MultiplexResult:
    """``connections`` over ``processes`` forked clients, source addresses taken in
    turn from ``sources`` (none: the kernel picks). ``at_phase(name)`` runs in the
    parent at each barrier ("idle", "held", "echoed"), with every connection held
    there, for readings of the caller's own (the kernel's slabs)."""
    if processes < 1:
        raise UsageError("--processes must be at least 1")
    processes = min(processes, connections)
    check_ports(connections, sources, procfs.port_range_size())
    ramp = ramp if ramp is not None else max(0.2, connections / RATE)
    split = shares(connections, processes)
    raised = _raise_soft_limit(max(split))
    server = _Server(server_pids)
    counters0 = _listen_counters()
    slabs = {"idle": slab.snapshot()}
    if at_phase is not None:
        at_phase("idle")
    started = time.monotonic()
    phases: dict[str, float] = {}
    children: list[_Child] = []
    watch = multiplex.AcceptWatch(target)
    sel = selectors.DefaultSelector()
    try:
        offset = 0
        run_args = (target, messages, size, ramp, connect_timeout, timeout)
        for i, share in enumerate(split):
            source = sources[i % len(sources)] if sources else None
            children.append(_fork_child(i, share, offset, source, run_args))
            offset += share
        for c in children:
            sel.register(c.sock, selectors.EVENT_READ, c)
        # Bounded: the ramp, the connects, the echoes, and slack for a loaded box.
        deadline = started + 2 * ramp + connect_timeout + timeout + SLACK_S
        accepted_s: float | None = None
        reported = {"connecting": 0, "echoes": 0}
        total = {"connecting": connections, "echoes": connections * messages}

        def report_progress() -> None:
            if progress is None:
                return
            for phase, word in (("connecting", "open"), ("echoes", "verified")):
                count = sum(c.count.get(phase, 0) for c in children)
                if count - reported[phase] >= max(1, total[phase] // 10):
                    reported[phase] = count
                    progress(f"{phase}: {count:,} of {total[phase]:,} {word}"
                             f" ({processes} processes)")

        def wait_for(phase: str) -> None:
            nonlocal accepted_s
            while any(c.phase not in (phase, "result", "lost") for c in children):
                now = time.monotonic()
                if now >= deadline:
                    for c in children:
                        if c.phase not in (phase, "result", "lost"):
                            c.phase, c.lost = "lost", f"no word by the deadline ({phase})"
                            os.kill(c.pid, signal.SIGKILL)
                    break
                for key, _ in sel.select(timeout=min(multiplex.ACCEPT_SAMPLE_S,
                                                     deadline - now)):
                    _receive(key.data, sel)
                queue = watch.sample(time.monotonic())
                if (accepted_s is None and queue == 0
                        and all(c.phase != "connecting" for c in children)):
                    accepted_s = time.monotonic() - started
                report_progress()

        wait_for("connected")
        if all(c.refused is not None for c in children):
            # Nothing listens: one error, as the one-process run says it (exit 3).
            raise ConnectFailed(
                f"connection refused: nothing listens on {target.where} (none of the "
                f"{connections:,} connections could open)",
                hint=f"start one with 'tcplab server --port {target.port} --workers "
                f"{processes} --fd-limit max', or check --host/--port")
        phases["connected"] = round(time.monotonic() - started, 3)
        server.read()
        slabs["held"] = slab.snapshot()
        if at_phase is not None:
            at_phase("held")
        _go(children)
        wait_for("echoed")
        phases["echoed"] = round(time.monotonic() - started, 3)
        server.read()
        if at_phase is not None:
            at_phase("echoed")
        watch.next = 0.0
        unaccepted = watch.sample(time.monotonic())
        _go(children)
        wait_for("result")
        phases["closed"] = round(time.monotonic() - started, 3)
        counters1 = _listen_counters()
        r = _merge(target, connections, messages, size, timeout, children, server,
                   phases, sources, watch, accepted_s, unaccepted, counters0, counters1)
        if raised:
            r = replace(r, notes=[raised, *r.notes])
        return _with_ledger(r, target, slabs)
    finally:  # no child outlives the run, also on Ctrl-C or an error
        sel.close()
        watch.close()
        for c in children:
            c.sock.close()
        _reap(children)


def _receive(c: _Child, sel: selectors.BaseSelector) -> None:
    try:
        data = c.sock.recv(1 << 22)
    except OSError as exc:
        data, why = b"", str(exc)
    else:
        why = "it exited without a result"
    if not data:
        sel.unregister(c.sock)
        if c.phase != "result":
            c.phase, c.lost = "lost", c.lost or why
        return
    msg = json.loads(data)
    if "tick" in msg:
        c.count[msg["tick"]] = msg["count"]
    elif "phase" in msg:
        c.phase, c.held = msg["phase"], msg["held"]
        c.rss[msg["phase"]] = msg["rss"]
    elif "result" in msg:
        c.result = from_json(MultiplexResult, msg["result"])
        c.quantiles = msg["quantiles"]
        c.rss["idle"] = msg["rss0"]
        c.phase = "result"
    elif "error" in msg:
        c.phase, c.lost = "lost", msg["error"]
        if msg.get("refused"):
            c.refused = ConnectFailed(msg["error"], hint=msg.get("hint"))


def _go(children: Sequence[_Child]) -> None:
    for c in children:
        if c.phase not in ("lost", "result"):
            try:
                c.sock.send(b"go")
            except OSError:
                c.phase, c.lost = "lost", "its pipe closed"


def _reap(children: Sequence[_Child]) -> None:
    """Wait for every child; one that has not exited within 2 s is killed."""
    end = time.monotonic() + 2.0
    for c in children:
        while True:
            try:
                pid, _ = os.waitpid(c.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            if time.monotonic() >= end:
                os.kill(c.pid, signal.SIGKILL)
                os.waitpid(c.pid, 0)
                break
            time.sleep(0.01)


def _with_ledger(r: MultiplexResult, target: Target,
                 slabs: dict[str, slab.SlabSnapshot]) -> MultiplexResult:
    """The kernel's bytes for the held connections, from the snapshots before any and
    with every one held idle. On loopback both ends are sockets of this kernel; each
    client socket is in its process's epoll set, and so is each server socket of a
    server whose processes use epoll (their watches, read from /proc)."""
    sp = r.spread
    held_at = r.held
    if sp is None or not held_at or "held" not in slabs:
        return r
    loopback = _is_loopback(target)
    sockets = held_at * (2 if loopback else 1)
    server_watched = sum(w.epoll_watches for w in sp.workers) if loopback else 0
    watched = held_at + min(server_watched, held_at)
    led = slab.ledger(slabs["idle"], slabs["held"], sockets, watched, connects=held_at,
                      connections=held_at)
    return replace(r, spread=replace(sp, ledger=led))


def _raise_soft_limit(share: int) -> str | None:
    """Raise the soft fd limit once, before the fork, so that every child starts with
    room for its share (one note, not one per child); None when it had room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = min(hard, share + multiplex.SPARE_FDS)
    if need <= soft:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return f"raised the client processes' soft fd limit from {soft:,} to {need:,}"


def _is_loopback(target: Target) -> bool:
    return ipaddress.ip_address(str(target.sockaddr[0]).split("%")[0]).is_loopback


def _ipv4_loopback(target: Target) -> bool:
    """127.0.0.0/8 is lo's: each client process may have a source address of its own."""
    return target.family == socket.AF_INET and _is_loopback(target)


def _listen_counters() -> tuple[int, int] | None:
    try:
        _, ext = procfs.tcp_counters()
    except OSError:
        return None
    return ext.get("ListenOverflows", 0), ext.get("ListenDrops", 0)


def _merge(target: Target, connections: int, messages: int, size: int, timeout: float,
           children: Sequence[_Child], server: _Server, phases: dict[str, float],
           sources: Sequence[str], watch: multiplex.AcceptWatch, accepted_s: float | None,
           unaccepted: int | None, counters0: tuple[int, int] | None,
           counters1: tuple[int, int] | None) -> MultiplexResult:
    results = [c.result for c in children if c.result is not None]
    failures: Counter[str] = Counter()
    notes: list[str] = []
    explanations: dict[str, str] = {}
    for r in results:
        failures.update(r.failures)
        explanations.update(r.explanations)
        notes.extend(n for n in r.notes if n not in notes)
    for c in children:
        if c.result is None:
            failures["LOST"] += c.share
            notes.append(f"client process {c.index} (pid {c.pid}) ended without a result: "
                         f"{c.lost}; its {c.share:,} connections count as failed")
            explanations["LOST"] = "a client process ended early (see the notes)"
    held = sum(r.held for r in results)
    echoes = sum(r.echoes for r in results)
    quantiles = sorted(q for c in children for q in c.quantiles)
    exchange_s = max((r.exchange_s for r in results), default=0.0)
    rows = server.rows()
    growth = sum(w.rss_peak - w.rss_idle for w in rows)
    client_growth = sum(max(c.rss.get("connected", 0), c.rss.get("echoed", 0))
                        - c.rss.get("idle", 0) for c in children if c.result is not None)
    overflows = drops = None
    if counters0 is not None and counters1 is not None:
        overflows, drops = counters1[0] - counters0[0], counters1[1] - counters0[1]
    spread = Spread(
        workers=rows,
        held_s=phases.get("echoed", 0.0),
        rss_growth_per_conn=round(growth / held, 1) if rows and held else None,
        server_cpu_us_per_conn=(round(sum(w.cpu_s for w in rows) / held * 1e6, 2)
                                if rows and held else None),
        client_rss_per_conn=round(client_growth / held, 1) if held else None,
        listen_overflows=overflows, listen_drops=drops, phases=phases)
    connected = sum(r.connected for r in results)
    return MultiplexResult(
        host=target.host, port=target.port, connections=connections, connected=connected,
        messages=messages, size=size, echoes=echoes, verified_bytes=echoes * size,
        failures=dict(failures), notes=notes,
        connect_s=max((r.connect_s for r in results), default=0.0),
        exchange_s=exchange_s,
        rtt_p50_us=round(percentile(quantiles, 50), 1),
        rtt_p99_us=round(percentile(quantiles, 99), 1),
        rtt_max_us=max((r.rtt_max_us for r in results), default=0.0),
        echoes_per_s=round(echoes / exchange_s, 1) if exchange_s > 0 else 0.0,
        server=None, server_rss_per_conn=spread.rss_growth_per_conn,
        server_cpu_us_per_echo=None,
        explanations={k: explanations.get(k, EXPLAIN.get(k, "")) for k in failures},
        timeout_s=timeout, served=sum(r.served for r in results),
        no_echo=sum(r.no_echo for r in results),
        served_all_s=(max(r.served_all_s for r in results if r.served_all_s is not None)
                      if results and all(r.served_all_s is not None for r in results)
                      else None),
        accept_queue_peak=watch.peak if watch.table is not None else None,
        accepted_s=None if accepted_s is None else round(accepted_s, 3),
        unaccepted=unaccepted, held=held, processes=len(children),
        sources=list(dict.fromkeys(sources)), spread=spread,
    )
