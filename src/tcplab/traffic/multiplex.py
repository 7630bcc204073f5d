"""Many concurrent connections from one client process: the C10k load.

A configuration of the client engine (``traffic/engine.py``, ``config()``):
it opens ``connections`` sockets (ramped, so the server's accept queue is not
overrun), holds them all open, releases them at once for ``messages`` round
trips of ``size`` bytes each, verifying every echoed byte, holds them again,
measures the server while everything is open, then closes. Its own: the fd
limit it fits itself into, the accept queue (``AcceptWatch``), the server's
facts, and what a timeout means.

Besides the echoes it measures what a server that cannot keep up looks like
from outside: how many connections got a first echo at all (``served``) and
when the last one did, and, on loopback, the listener's accept queue (LISTEN
Recv-Q, plus SYN_RECV sockets whose final ACK the full queue dropped): when
the server had accepted every connection, or how many it still had not when
the time ran out. A thread-per-connection Python server at 10,000
connections accepts most or all of them, yet answers only a few hundred
echoes a second: each echo needs the GIL, and 10,000 threads queue for it.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tcplab.errors import ConnectFailed
from tcplab.kernel import tcp_states
from tcplab.observe.server_facts import ServerFacts, cpu_seconds, server_facts
from tcplab.observe.slab import Ledger
from tcplab.observe.sockets import SocketTable
from tcplab.traffic import engine
from tcplab.traffic.client import percentile
from tcplab.traffic.target import Target

#: fds the client keeps for itself beyond one per connection.
SPARE_FDS = 64

EXPLAIN = {
    "EMFILE": "the client ran out of fds: raise 'ulimit -n' (the hard limit, as root)",
    "ETIMEDOUT": "connect timed out: the server's accept queue was full (raise its backlog "
                 "and net.core.somaxconn, or ramp more slowly)",
    "ECONNREFUSED": "nothing listens there",
    "ECONNRESET": "the server reset connections (out of fds? see its log)",
    "EADDRNOTAVAIL": "out of ephemeral ports toward this destination",
    "EOF": "the server closed connections before echoing everything",
    "MISMATCH": "an echo differed from what was sent",
}

#: How often the accept queue is sampled: one sock_diag dump of the LISTEN
#: sockets on the port per sample (30-250 us measured, 10,000 sockets open).
ACCEPT_SAMPLE_S = 0.2


def explain_timeout(timeout: float, no_echo: int) -> str:
    """What ``timeout`` means: it names connections, not a connect() error."""
    never = f"; {no_echo:,} of them never got a first echo" if no_echo else ""
    return (f"connections still waiting for an echo when --timeout ({timeout:g} s) ran out: "
            f"the server did not answer them in time (too slow for this many at once, or "
            f"not reading){never}")


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One server process of a spread run, read from /proc by the parent: the
    accept histogram's bar (``held``: its socket fds at the peak minus at idle, one
    per connection it accepted and holds; it works for any server, Go's too)."""

    pid: int
    command: str
    held: int
    rss_idle: int  # VmRSS before any connection, bytes
    rss_peak: int  # the most VmRSS seen with every connection held
    cpu_s: float  # user + system CPU over the run
    threads: int
    epoll_watches: int


@dataclass(frozen=True, slots=True)
class Spread:
    """What a run spread over several client processes saw (traffic/spread.py)."""

    workers: list[WorkerRow]  # the server's processes, in --server-pid order
    held_s: float  # from the first connect to every connection held and echoed
    rss_growth_per_conn: float | None  # all workers' VmRSS growth over idle / held, bytes
    server_cpu_us_per_conn: float | None  # all workers' CPU / connections, microseconds
    client_rss_per_conn: float | None  # all client processes' VmRSS growth / held, bytes
    listen_overflows: int | None  # TcpExt ListenOverflows over the run (this netns)
    listen_drops: int | None
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds from start
    # The kernel's slab caches from before the run to every connection held (root
    # only for the per-cache rows; /proc/meminfo's Slab delta for anyone).
    ledger: Ledger | None = None


@dataclass(frozen=True, slots=True)
class MultiplexResult:
    host: str
    port: int
    connections: int  # asked for
    connected: int  # open at once, at the peak
    messages: int
    size: int
    echoes: int  # verified round trips
    verified_bytes: int
    failures: dict[str, int]
    notes: list[str]
    connect_s: float
    exchange_s: float
    rtt_p50_us: float
    rtt_p99_us: float
    rtt_max_us: float
    echoes_per_s: float
    server: ServerFacts | None = None
    server_rss_per_conn: float | None = None  # bytes
    server_cpu_us_per_echo: float | None = None
    explanations: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 0.0  # the exchange's time limit
    served: int = 0  # connections that got at least one verified echo
    no_echo: int = 0  # connections still waiting for their first echo at the timeout
    served_all_s: float | None = None  # exchange start to the last first echo; None: never
    # The listener's accept queue (None: not visible from here, e.g. a remote server):
    accept_queue_peak: int | None = None  # LISTEN Recv-Q + SYN_RECV, the most seen
    accepted_s: float | None = None  # first connect to every connection accepted; None: never
    unaccepted: int | None = None  # connections not yet accepted when the exchange ended
    # Connections open with every round trip verified when the run closed them: the
    # ones the run held (C100k's figure). ``held + sum(failures) == connections``
    # whenever every connection opened and finished (nothing left waiting).
    held: int = 0
    processes: int = 1  # client processes (traffic/spread.py)
    sources: list[str] = field(default_factory=list)  # their source addresses, if bound
    spread: Spread | None = None  # what a spread run saw at its phases


def fit_fd_limit(connections: int) -> tuple[int, str | None]:
    """Raise our soft fd limit for ``connections``; returns (connections that fit, note)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + SPARE_FDS
    if need <= soft:
        return connections, None
    target = min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if need <= hard:
        return connections, f"raised this client's soft fd limit from {soft} to {target}"
    fit = max(0, hard - SPARE_FDS)
    return fit, (f"only {fit:,} connections fit: this client's hard fd limit is {hard:,} "
                 f"(one fd per connection, {SPARE_FDS} kept spare); as root, raise it with "
                 "'ulimit -Hn'")


class AcceptWatch:
    """The listener's accept queue: connections the kernel completed that the
    server has not accept()ed yet.

    LISTEN Recv-Q is the queue's length (inet_diag_msg's idiag_rqueue for a
    listener, net/ipv4/tcp_diag.c tcp_diag_get_info: sk_ack_backlog). When the
    queue is full the kernel drops the client's final ACK (tcp_check_req ->
    listen_overflow, net/ipv4/tcp_minisocks.c) and the connection waits in
    SYN_RECV while the client already counts it open, so those count too,
    once the queue was seen full.
    """

    def __init__(self, target: Target, enabled: bool = True) -> None:
        """``enabled=False``: a watch that sees nothing (a spread run's children: the
        parent watches)."""
        self.port = target.port
        self.table: SocketTable | None = None
        self.peak = 0
        self.last: int | None = None
        self.next = 0.0
        self.overflowed = False  # the accept queue was seen full
        if not enabled:
            return
        if not ipaddress.ip_address(str(target.sockaddr[0]).split("%")[0]).is_loopback:
            return  # a remote listener is in another host's table
        try:
            self.table = SocketTable()
            # /proc/net/tcp is parsed whole: with 10,000 sockets too slow to
            # sample while the load runs, so only over sock_diag.
            if self.table.source != "netlink" or not self.table.listeners(self.port):
                self.close()
        except (OSError, ValueError):
            self.close()

    def sample(self, now: float) -> int | None:
        """Connections waiting to be accepted, at most every ACCEPT_SAMPLE_S."""
        if self.table is None:
            return None
        if now < self.next:
            return self.last
        self.next = now + ACCEPT_SAMPLE_S
        try:
            listeners = self.table.listeners(self.port)
            queue = sum(s.rqueue for s in listeners)
            # Send-Q on LISTEN is its backlog. With SO_REUSEPORT each listener has its
            # own queue, and one full queue drops while the others have room.
            if any(s.rqueue >= s.wqueue for s in listeners):
                self.overflowed = True
            if self.overflowed:
                # Counting SYN_RECV walks the whole established hash (2-14 ms
                # with 10,000 sockets, measured), so only once the queue was full.
                queue += self.table.count(self.port, self.syn_recv)[tcp_states.SYN_RECV]
        except (OSError, ValueError):  # ValueError: sock_diag.DecodeError
            self.close()
            return None
        self.last = queue
        self.peak = max(self.peak, queue)
        return queue

    syn_recv = tcp_states.mask([tcp_states.SYN_RECV])  # SYN_RECV only, no LISTEN

    def close(self) -> None:
        if self.table is not None:
            self.table.close()
            self.table = None


def config(connections: int, messages: int, size: int, ramp: float,
           connect_timeout: float, source: tuple[str, int] | None = None,
           linger0: bool = False, offset: int = 0) -> engine.Config:
    """N connections ramped and held, then ``messages`` round trips of ``size`` bytes
    on all of them at once, every byte verified, each held open after its last."""
    base = os.urandom(max(size, 1))[:size]

    def payload(index: int, trip: int) -> bytes:
        """Message ``trip`` of connection ``index``: the base rotated, so that a stale
        or crossed echo never verifies by accident."""
        k = ((offset + index) * messages + trip) % max(1, size)
        return base[k:] + base[:k]

    return engine.Config(
        connections=connections, ramp_s=ramp, ramp_step_s=0.01, hold_first=True,
        round_trips=messages, payload=payload, verify=True, then=engine.Then.HOLD,
        record_rtts=True, connect_timeout=connect_timeout, source=source,
        bind_no_port=source is not None, linger0=linger0)


#: Round-trip quantiles a spread run's child sends its parent (traffic/spread.py).
QUANTILES = 1000

#: How often the phases' bookkeeping (accept queue, progress lines) runs between
#: epoll batches: the connect loop this replaced polled every 10 ms.
TICK_S = 0.01


def run(target: Target, connections: int = 1000, messages: int = 5, size: int = 64,
        ramp: float | None = None, server_pid: int | None = None,
        connect_timeout: float = 10.0, timeout: float = 60.0,
        progress: Callable[[str], None] | None = None, *,
        source: tuple[str, int] | None = None, linger0: bool = False, offset: int = 0,
        pause: Callable[[str, int], None] | None = None,
        tick: Callable[[str, int], None] | None = None,
        rtt_quantiles: list[float] | None = None,
        watch_accept: bool = True) -> MultiplexResult:
    """The C10k run in one process. traffic/spread.py runs one share of a larger run
    per process with ``source`` (an address of its own), ``offset`` (its first
    connection's index, so payloads differ across processes), ``pause`` (called
    with the phase's name and the connections held, "connected" then "echoed":
    it returns when every process got there), ``tick`` (the phase and its count,
    connections open or echoes verified, every TICK_S), ``rtt_quantiles`` (filled
    with QUANTILES of this share's round trips, for the parent to merge) and no
    accept watch (the parent's)."""
    notes: list[str] = []
    n, note = fit_fd_limit(connections)
    if note:
        notes.append(note)
    ramp = ramp if ramp is not None else max(0.2, n / 5000)
    rss0 = server_facts(server_pid).rss_bytes if server_pid else None
    watch = AcceptWatch(target, enabled=watch_accept)
    driver = engine.Driver(target, config(n, messages, size, ramp, connect_timeout,
                                          source=source, linger0=linger0, offset=offset))
    try:
        # accepted_s: from the first connect until the accept queue was seen empty
        # with every connection open (connect attempts all settled).
        accepted_s: float | None = None
        started = driver.started

        def watch_queue(now: float, settled: bool) -> None:
            nonlocal accepted_s
            queue = watch.sample(now)
            if accepted_s is None and settled and queue == 0:
                accepted_s = now - started

        # 1. connect, ramped; each connection held once open
        reported = 0

        def connecting(now: float) -> None:
            nonlocal reported
            if not driver.connected and not driver.active and set(driver.errors) == {
                    "ECONNREFUSED"}:
                # Nothing listens: say so at once, as 'tcplab client' does, instead
                # of ramping N refused connections (loopback refuses within the
                # connect() call: tcp_v4_send_reset answers the SYN on the spot).
                raise ConnectFailed(
                    f"connection refused: nothing listens on {target.where}"
                    + (f" (none of the {n:,} connections could open)" if n > 1 else ""),
                    hint=f"start one with 'tcplab server --port {target.port} --fd-limit max', "
                    "or check --host/--port")
            watch_queue(now, driver.opened >= n and not driver.active)
            if tick is not None:
                tick("connecting", driver.connected)
            if progress and driver.connected - reported >= max(1, n // 10):
                reported = driver.connected
                progress(f"connecting: {driver.connected:,} of {n:,} open")

        # Bounded: the ramp, then each connect by connect_timeout (slack for a loaded box).
        driver.run(until=started + 2 * ramp + connect_timeout + 10, on_tick=connecting,
                   tick_s=TICK_S)
        connecting(time.monotonic())
        connected = driver.connected
        connect_s = time.monotonic() - started
        if progress:
            progress(f"{connected:,} connections open in {connect_s:.2f} s")
        if pause is not None:
            pause("connected", driver.check_held())

        # 2. every connection runs its round trips at once
        cpu0 = cpu_seconds(server_pid) if server_pid else None
        reported = 0
        t_start = time.monotonic()

        def exchanging(now: float) -> None:
            nonlocal reported
            watch_queue(now, True)
            if tick is not None:
                tick("echoes", driver.echoes)
            if progress and driver.echoes - reported >= max(1, (n * messages) // 10):
                reported = driver.echoes
                progress(f"echoes: {driver.echoes:,} of {n * messages:,} verified")

        driver.release()
        driver.run(until=t_start + timeout, on_tick=exchanging, tick_s=TICK_S)
        exchanging(time.monotonic())
        exchange_s = time.monotonic() - t_start
        cpu1 = cpu_seconds(server_pid) if server_pid else None
        echoes = driver.echoes
        active = driver.active  # still waiting for an echo when the time ran out
        no_echo = driver.unserved()
        served_all_s = (driver.last_first_echo - t_start
                        if connected and driver.served == connected else None)
        watch.next = 0.0  # one last sample: who is still waiting to be accepted
        unaccepted = watch.sample(time.monotonic())
        if pause is not None:
            pause("echoed", driver.check_held())
        # 3. the server with every connection still open
        held = driver.check_held()  # a reset or EOF while held is a failure
        failures = Counter(driver.errors)
        if active:
            failures["timeout"] += active
        facts = server_facts(server_pid) if server_pid else None
        rtts = sorted(x * 1e6 for x in driver.rtts)
        if rtt_quantiles is not None and rtts:
            rtt_quantiles.extend(rtts[min(len(rtts) - 1, int(len(rtts) * (k + 0.5) / QUANTILES))]
                                 for k in range(QUANTILES))
        per_conn = None
        if facts is not None and rss0 is not None and connected:
            per_conn = round((facts.rss_bytes - rss0) / connected, 1)
        cpu_per = None
        if cpu0 is not None and cpu1 is not None and echoes:
            cpu_per = round((cpu1 - cpu0) / echoes * 1e6, 2)
        explanations = {k: EXPLAIN[k] for k in failures if k in EXPLAIN}
        if "timeout" in failures:
            explanations["timeout"] = explain_timeout(timeout, no_echo)
        return MultiplexResult(
            host=target.host, port=target.port, connections=connections, connected=connected,
            messages=messages, size=size, echoes=echoes, verified_bytes=echoes * size,
            failures=dict(failures), notes=notes, connect_s=round(connect_s, 3),
            exchange_s=round(exchange_s, 3),
            rtt_p50_us=round(percentile(rtts, 50), 1), rtt_p99_us=round(percentile(rtts, 99), 1),
            rtt_max_us=round(rtts[-1], 1) if rtts else 0.0,
            echoes_per_s=round(echoes / exchange_s, 1) if exchange_s > 0 else 0.0,
            server=facts, server_rss_per_conn=per_conn, server_cpu_us_per_echo=cpu_per,
            explanations=explanations, timeout_s=timeout, served=driver.served, no_echo=no_echo,
            served_all_s=None if served_all_s is None else round(served_all_s, 3),
            accept_queue_peak=watch.peak if watch.table is not None else None,
            accepted_s=None if accepted_s is None else round(accepted_s, 3),
            unaccepted=unaccepted, held=held,
            sources=[source[0]] if source is not None else [],
        )
    finally:  # every socket this run opened is closed, also on Ctrl-C or an error
        watch.close()
        driver.close()
