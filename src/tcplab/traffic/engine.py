"""One client engine: a client connection's life as one table, and one epoll driver.

Every load tcplab makes from the client side is a configuration of this module:
the port bomb (``traffic/bomb.py``: connect, one echo, close, W at once), the
C10k client (``traffic/multiplex.py``: N connections held, M round trips on all
at once), the bomb's pools (a connection per worker; or with an idle cap, as Go's
http.Transport keeps one: ``Config.idle_cap``), the fd-leak flood
(``traffic/flood.py``: connect and echo, each bounded by a timeout), and bench's
load generators (``pingpong``: C connections doing a 64 B ping-pong for S
seconds; ``churn``: the bomb's connect, echo, close, repeat).

Part 1 has no I/O at all, in the manner of h11's ``_state.py``. Its rules:

Rule 1: a connection is in exactly one ``Stage``; every ``Event`` that moves it
    is a row of ``TRANSITIONS``; ``step(stage, event)`` is the only way to the
    next stage, and the driver makes every move through it.
Rule 2: a pair that is not in the table is a bug in the driver, never something
    a peer did: ``step`` raises ``IllegalTransition``. Whatever a peer does
    (refuse, reset, close first, echo other bytes, stay silent) is an event
    with a row, so it can never raise.
Rule 3: a connection ends in DONE exactly once, with one ``Outcome``: OK, or
    the failure that ended it (each failure from the errno the kernel gave, or
    one of our own: wrong bytes, closed early, timed out), or as *stopped*:
    still under way when the run ended, neither ok nor failed.
Rule 4: the table does not know what the connection was asked to do. After an
    echo the driver says which way it goes (another round trip, the last one
    held open, the last one waiting for the peer to close, the last one closed;
    a pooled request's connection back to the idle pool, or closed when the
    pool is full) by the event it fires; the table says only where each leads.

The life, drawn (``*``: from every stage but DONE)::

    CONNECTING --connected--> SENDING --sent--> AWAITING_ECHO --echo_complete--> SENDING
        |                      ^  (sent_partial,                |
        | connected_held       |   echo_partial)                +--last_echo_held---> HOLDING
        v                      |                                +--last_echo_close--> DONE (ok)
     HOLDING --released--------+                                +--last_echo_await_close--> CLOSING
     HOLDING --close--> DONE (ok)                               CLOSING --peer_closed--> DONE (ok)
     * --failed / timed_out / peer_closed--> DONE (a failure)   * --stopped--> DONE (still waiting)

Part 2 is the driver: one ``select.epoll`` loop that runs many such
connections as a ``Config`` says (how they open, what each does, the bounds),
counts outcomes, keeps the first error, and reports.
"""

from __future__ import annotations

import errno as _errno
import os
import select
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from tcplab.errors import errno_name
from tcplab.kernel.inet import IP_BIND_ADDRESS_NO_PORT
from tcplab.traffic.target import Target

# --- Part 1: the table (no I/O) -----------------------------------------------------------


class Stage(StrEnum):
    """Where a client connection is. StrEnum, not Enum: its hash is str's (C), which
    keeps a table lookup at ~15 ns; Enum's Python-level ``__hash__`` costs 8x that."""

    CONNECTING = "connecting"  # connect() issued; the handshake not yet complete
    SENDING = "sending"  # a round trip's request partly written (its echo may be arriving)
    AWAITING_ECHO = "awaiting_echo"  # the request written; reading its echo
    HOLDING = "holding"  # open and idle: held until released (more round trips) or closed
    CLOSING = "closing"  # the last echo is in; waiting for the peer to close first
    DONE = "done"  # closed: ok, failed, or stopped while under way


class Event(StrEnum):
    CONNECTED = "connected"  # the handshake completed; the first round trip starts
    CONNECTED_HELD = "connected_held"  # the handshake completed; held before any round trip
    RELEASED = "released"  # a held connection is told to run its next round trip
    SENT_PARTIAL = "sent_partial"  # part of the request written; the rest when writable
    SENT = "sent"  # the whole request written
    ECHO_PARTIAL = "echo_partial"  # some echo bytes arrived (and matched, when verified)
    ECHO_COMPLETE = "echo_complete"  # the whole echo arrived; another round trip follows
    LAST_ECHO_HELD = "last_echo_held"  # the last echo (of the plan, or of a pooled request)
    # arrived; held open until told (a pool's idle connection)
    LAST_ECHO_CLOSE = "last_echo_close"  # the last echo arrived; we close (FIN, or RST); a
    # pooled connection the full idle pool has no room for
    LAST_ECHO_AWAIT_CLOSE = "last_echo_await_close"  # the last echo; the peer closes first
    PEER_CLOSED = "peer_closed"  # EOF: the peer closed its side
    FAILED = "failed"  # an errno from the kernel, or wrong bytes
    TIMED_OUT = "timed_out"  # the connect or the echo took longer than its timeout
    CLOSE = "close"  # a held connection is told to close
    STOPPED = "stopped"  # the run ended while this connection was under way


S, E = Stage, Event

class IllegalTransition(RuntimeError):
    """A (stage, event) pair not in TRANSITIONS: a bug in the driver (Rule 2)."""


class _Row(dict[Event, Stage]):
    """One stage's row: event -> next stage. A missing event raises IllegalTransition
    (``__missing__``), so ``TRANSITIONS[stage][event]`` is both the lookup and the
    check, at the speed of a plain dict lookup on the driver's hot path."""

    __slots__ = ("stage",)

    def __init__(self, stage: Stage, moves: dict[Event, Stage]) -> None:
        super().__init__(moves)
        self.stage = stage

    def __missing__(self, event: Event) -> Stage:
        raise IllegalTransition(f"a client connection cannot take {event.value!r} while "
                                f"{self.stage.value!r}")


#: (stage, event) -> the next stage: the whole of a client connection's life.
TRANSITIONS: dict[Stage, _Row] = {stage: _Row(stage, moves) for stage, moves in {
    S.CONNECTING: {
        E.CONNECTED: S.SENDING,
        E.CONNECTED_HELD: S.HOLDING,
        E.FAILED: S.DONE,  # ECONNREFUSED, EADDRNOTAVAIL, EADDRINUSE, EMFILE, ...
        E.TIMED_OUT: S.DONE,  # the SYN went unanswered (a full accept queue drops it)
        E.STOPPED: S.DONE,  # counted as unconnected
    },
    S.SENDING: {
        E.SENT_PARTIAL: S.SENDING,
        E.ECHO_PARTIAL: S.SENDING,  # a large request's echo starts before it is all written
        E.SENT: S.AWAITING_ECHO,
        E.PEER_CLOSED: S.DONE,  # closed early
        E.FAILED: S.DONE,  # EPIPE, ECONNRESET; or more bytes back than were sent
        E.TIMED_OUT: S.DONE,
        E.STOPPED: S.DONE,  # counted as unanswered
    },
    S.AWAITING_ECHO: {
        E.ECHO_PARTIAL: S.AWAITING_ECHO,
        E.ECHO_COMPLETE: S.SENDING,
        E.LAST_ECHO_HELD: S.HOLDING,  # ok
        E.LAST_ECHO_CLOSE: S.DONE,  # ok
        E.LAST_ECHO_AWAIT_CLOSE: S.CLOSING,
        E.PEER_CLOSED: S.DONE,  # closed early: EOF before the whole echo
        E.FAILED: S.DONE,  # ECONNRESET; wrong bytes
        E.TIMED_OUT: S.DONE,  # no echo in time
        E.STOPPED: S.DONE,  # counted as unanswered
    },
    S.HOLDING: {
        E.RELEASED: S.SENDING,
        E.CLOSE: S.DONE,
        E.PEER_CLOSED: S.DONE,  # the peer closed a connection we held: closed early
        E.FAILED: S.DONE,  # a reset while held (epoll reports EPOLLERR/EPOLLHUP always)
    },
    S.CLOSING: {
        E.PEER_CLOSED: S.DONE,  # ok: the peer closed first, as asked
        E.FAILED: S.DONE,  # a reset instead of a FIN; bytes after the echo
        E.STOPPED: S.DONE,  # counted as unanswered
    },
    S.DONE: {},
}.items()}

#: Stages in which a connection is under way (the driver waits for it); HOLDING is
#: open but idle, DONE is gone.
ACTIVE: frozenset[Stage] = frozenset({S.CONNECTING, S.SENDING, S.AWAITING_ECHO, S.CLOSING})


def step(stage: Stage, event: Event) -> Stage:
    """The stage ``event`` leads to from ``stage``; raises IllegalTransition off the table."""
    return TRANSITIONS[stage][event]


class Outcome(StrEnum):
    """How a connection (or one round trip of it) ended. The errnos each comes
    from are ``ERRNOS[outcome]``; ``outcome_of(errno)`` goes the other way."""

    OK = "ok"
    REFUSED = "refused"  # ECONNREFUSED: nothing listens (a RST answered the SYN)
    RESET = "reset"  # ECONNRESET, EPIPE: the peer reset (or closed and we wrote)
    TIMED_OUT = "timed_out"  # ETIMEDOUT from the kernel, or our connect/echo timeout
    ADDR_NOT_AVAIL = "addr_not_avail"  # EADDRNOTAVAIL: no ephemeral port left
    ADDR_IN_USE = "addr_in_use"  # EADDRINUSE: bind() found the port taken
    EMFILE = "emfile"  # EMFILE: this process is out of fds
    ENFILE = "enfile"  # ENFILE: the whole system is out of files
    UNREACHABLE = "unreachable"  # EHOSTUNREACH, ENETUNREACH
    WRONG_BYTES = "wrong_bytes"  # the echo differed from what was sent
    CLOSED_EARLY = "closed_early"  # the peer closed before the echo (or while held)
    OTHER = "other"  # any other errno: its name is in the counts


ERRNOS: dict[Outcome, tuple[int, ...]] = {
    Outcome.REFUSED: (_errno.ECONNREFUSED,),
    Outcome.RESET: (_errno.ECONNRESET, _errno.EPIPE),
    Outcome.TIMED_OUT: (_errno.ETIMEDOUT,),
    Outcome.ADDR_NOT_AVAIL: (_errno.EADDRNOTAVAIL,),
    Outcome.ADDR_IN_USE: (_errno.EADDRINUSE,),
    Outcome.EMFILE: (_errno.EMFILE,),
    Outcome.ENFILE: (_errno.ENFILE,),
    Outcome.UNREACHABLE: (_errno.EHOSTUNREACH, _errno.ENETUNREACH),
}
_BY_ERRNO = {code: outcome for outcome, codes in ERRNOS.items() for code in codes}


def outcome_of(code: int) -> Outcome:
    """The outcome an errno means (OTHER for one not in ERRNOS)."""
    return _BY_ERRNO.get(code, Outcome.OTHER)


#: The names failures are counted under: the errno's name, or ours where no errno
#: says it (the vocabulary ``tcplab bomb`` and ``tcplab multiplex`` print).
EOF_NAME = "EOF"
MISMATCH_NAME = "MISMATCH"
ECHO_TIMEOUT_NAME = "timeout"


def failure_name(outcome: Outcome, code: int, stage: Stage) -> str:
    """The name a failure is counted under: ``EADDRNOTAVAIL``, ``EOF``, ``MISMATCH``,
    ``ETIMEDOUT`` (no handshake in time), ``timeout`` (no echo in time)."""
    if outcome is Outcome.CLOSED_EARLY:
        return EOF_NAME
    if outcome is Outcome.WRONG_BYTES:
        return MISMATCH_NAME
    if outcome is Outcome.TIMED_OUT and code == _errno.ETIMEDOUT and stage is not S.CONNECTING:
        return ECHO_TIMEOUT_NAME
    return errno_name(code)


def failure_text(outcome: Outcome, code: int, stage: Stage) -> str:
    if outcome is Outcome.CLOSED_EARLY:
        return ("connection closed by the peer while held open" if stage is S.HOLDING
                else "connection closed before the echo")
    if outcome is Outcome.WRONG_BYTES:
        return "the echo differed from what was sent"
    if outcome is Outcome.TIMED_OUT and stage is not S.CONNECTING:
        return "no echo in time"
    return os.strerror(code)


# --- Part 2: the configuration and the records ----------------------------------------------


class Then(StrEnum):
    """What a connection does after its last round trip."""

    CLOSE = "close"  # close at once (the client closes first: TIME_WAIT on our side)
    HOLD = "hold"  # stay open, idle, until released or closed (C10k; a pool at its end)
    AWAIT_CLOSE = "await_close"  # read until the peer closes first (TIME_WAIT on its side)


#: SO_LINGER {on, 0}: close() sends RST instead of FIN and skips TIME_WAIT.
LINGER0 = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Config:
    """How connections open, what each does, and the bounds. At least one of
    ``connections`` and ``concurrency`` bounds how many are opened, and ``duration``
    (or ``Driver.run(until=...)``) bounds the time."""

    # How connections are opened.
    connections: int | None = None  # opened in all (None: until count or duration ends)
    concurrency: int | None = None  # open at once, at most; a finished one is replaced
    ramp_s: float = 0.0  # open ``connections`` spread over this long, in batches
    ramp_step_s: float = 0.01  # one batch every this long
    source: tuple[Any, ...] | None = None  # bind() to this address before connect()
    # with ``source``: IP_BIND_ADDRESS_NO_PORT first, so connect() picks the port per
    # destination (a source address's ports serve every destination, not one)
    bind_no_port: bool = False
    linger0: bool = False  # SO_LINGER {on, 0}: our close() sends RST (no TIME_WAIT)
    nodelay: bool = False  # TCP_NODELAY on every connection
    # What each connection does.
    round_trips: int | None = 1  # per connection; None: as long as count and time allow
    payload: bytes | Callable[[int, int], bytes] = b"tcplab"  # or f(connection, trip)
    verify: bool = True  # compare every echoed byte; False: count them only
    hold_first: bool = False  # connect, then wait for Driver.release() (all start at once)
    then: Then = Then.CLOSE
    record_rtts: bool = False  # keep every round trip's time, in seconds
    # A pool with an idle cap, as Go's http.Transport keeps one (MaxIdleConnsPerHost,
    # DefaultMaxIdleConnsPerHost = 2 in net/http/transport.go): after each round trip (a
    # request) a connection goes back to the pool, held idle if fewer than ``idle_cap``
    # are, else closed (tryPutIdleConn's errTooManyIdleHost); a request takes an idle
    # connection (the latest, as queueForIdleConn does) before it opens one (IdlePool).
    # Requests go out in rounds of ``concurrency``, the next round when none is under
    # way (a fan-out: N calls to one backend, then wait for all): a round's returns fill
    # the idle pool before the next round takes from it, so the number of new
    # connections per round is a count (concurrency - idle_cap), not a race.
    idle_cap: int | None = None
    # Bounds.
    count: int | None = None  # attempts in all: connections opened + later round trips
    duration: float | None = None  # seconds from the start; then no new attempt
    connect_timeout: float | None = None  # a handshake not complete by then fails
    echo_timeout: float | None = None  # an echo not complete this long after its send

    def __post_init__(self) -> None:
        if self.connections is None and self.concurrency is None:
            raise ValueError("bound the connections: give connections or concurrency")
        if self.round_trips is not None and self.round_trips < 1:
            raise ValueError("round_trips must be at least 1")
        if self.idle_cap is not None and (
                self.idle_cap < 0 or self.concurrency is None or self.round_trips is not None
                or self.ramp_s > 0 or self.hold_first):
            raise ValueError("a pool (idle_cap >= 0) needs a concurrency and round_trips=None "
                             "(a connection serves requests while it lives), no ramp, no "
                             "hold_first")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed connection (the driver keeps the first)."""

    outcome: Outcome
    errno: int  # 0 where no errno says it (closed early, wrong bytes)
    name: str  # EADDRNOTAVAIL, EOF, MISMATCH, ETIMEDOUT, timeout
    message: str  # the kernel's text (strerror), or ours
    stage: Stage  # where it was when it failed
    at_s: float  # seconds since the driver started
    ok_before: int  # round trips ok before it
    in_flight: int  # other connections open at that moment (they may still succeed)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A connection still under way when the run stopped: neither ok nor failed."""

    stage: Stage  # CONNECTING: the handshake never completed; else its request went out
    waited_s: float  # since its connect() (or, on a reused connection, its round trip) began


class Stop(StrEnum):
    """Why ``Driver.run`` returned."""

    DONE = "done"  # nothing under way and nothing more to open (the rest are held)
    UNTIL = "until"  # run()'s ``until`` came
    DURATION = "duration"  # the config's duration ran out with connections under way
    ECHOES = "echoes"  # run()'s ``max_echoes`` was reached


@dataclass(frozen=True, slots=True)
class Report:
    attempted: int  # connections opened + round trips started on open ones
    opened: int  # connections opened (socket() tried)
    connected: int  # handshakes completed
    ok: int  # round trips that ended well (closed as asked, where asked)
    echoes: int  # complete echoes (verified, if asked)
    failed: int
    outcomes: dict[Outcome, int]  # OK and each failure kind
    errors: dict[str, int]  # failures by name (EADDRNOTAVAIL, EOF, ...), most first
    failed_in: dict[tuple[Stage, Outcome], int]  # failures by where they happened
    first_error: Failure | None
    waiting: list[Waiting]  # under way when the run stopped
    served: int  # connections with at least one complete echo
    elapsed_s: float
    rtts_s: list[float] = field(default_factory=list)  # if record_rtts, in order

    def failures(self, outcome: Outcome, stage: Stage | None = None) -> int:
        if stage is None:
            return sum(n for (_, o), n in self.failed_in.items() if o is outcome)
        return self.failed_in.get((stage, outcome), 0)


# --- Part 2: the driver ---------------------------------------------------------------------

IN, OUT = select.EPOLLIN, select.EPOLLOUT
_UNREGISTERED = -1
_EPOLL_MAX_WAIT_S = 1.0  # poll at least this often: the bounds are checked between batches
_INF = float("inf")

# The table's rows and the events, bound once: the driver's hot paths look a move up
# as ``_AWAITING[_ECHO_COMPLETE]`` (two dict lookups, no call).
T = TRANSITIONS
_CONNECTING_, _SENDING_, _AWAITING_, _HOLDING_, _CLOSING_ = (
    S.CONNECTING, S.SENDING, S.AWAITING_ECHO, S.HOLDING, S.CLOSING)
_CONNECTING, _SENDING, _AWAITING = T[S.CONNECTING], T[S.SENDING], T[S.AWAITING_ECHO]
_CONNECTED, _SENT, _SENT_PARTIAL = E.CONNECTED, E.SENT, E.SENT_PARTIAL
_ECHO_PARTIAL, _ECHO_COMPLETE, _LAST_ECHO_CLOSE = (
    E.ECHO_PARTIAL, E.ECHO_COMPLETE, E.LAST_ECHO_CLOSE)
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
#: The C socket type itself (``_socket.socket``): socket.socket is its Python subclass,
#: whose __init__ and close() (io-refs bookkeeping for makefile(), unused here) cost
#: 0.35 us per connection measured here, about as much as the engine's bookkeeping.
_Socket = socket.SocketType


class _Conn:
    __slots__ = ("deadline", "expect", "fd", "got", "index", "mask", "sent", "sock", "stage",
                 "t0", "trips")

    def __init__(self, sock: socket.SocketType, fd: int, index: int, expect: bytes) -> None:
        self.sock = sock
        self.fd = fd
        self.index = index
        self.stage = _CONNECTING_
        self.trips = 0  # round trips completed
        self.expect = expect  # this round trip's request, and so its echo
        self.sent = 0
        self.got = 0
        self.t0 = 0.0  # when this attempt began: connect(), or the round trip's send
        self.deadline = 0.0  # of the connect or echo timeout now running
        self.mask = _UNREGISTERED  # the epoll interest now registered


C = TypeVar("C")


class IdlePool(Generic[C]):
    """A capped pool's idle connections, and nothing else (no I/O): what the driver
    keeps after a request (``keep``: while fewer than ``cap`` are idle, as
    tryPutIdleConn does) and what the next request takes (``take``: the latest, as
    Go's queueForIdleConn does, net/http/transport.go); one reset while idle leaves
    it (``discard``)."""

    __slots__ = ("_idle", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._idle: list[C] = []  # the latest last

    def __len__(self) -> int:
        return len(self._idle)

    def __bool__(self) -> bool:
        return bool(self._idle)

    def keep(self, c: C) -> bool:
        """Hold ``c`` idle if there is room; False: the caller closes it."""
        if len(self._idle) < self.cap:
            self._idle.append(c)
            return True
        return False

    def take(self) -> C:
        return self._idle.pop()

    def discard(self, c: C) -> None:
        if c in self._idle:
            self._idle.remove(c)

    def keep_only(self, held: Callable[[C], bool]) -> None:
        self._idle = [c for c in self._idle if held(c)]

    def clear(self) -> None:
        self._idle.clear()


class Driver:
    """One epoll loop running connections as ``config`` says.

    Level-triggered, with each connection's interest set to what its stage waits
    for (EPOLLOUT while connecting or partly sent, EPOLLIN while awaiting its
    echo, nothing while held) and changed only when that changes: a round trip
    that writes its request whole costs no epoll_ctl, and one recv() reads what
    epoll said had arrived, with no rule to read on to EAGAIN as edge-triggered
    needs. Edge-triggered (registered once with EPOLLIN|EPOLLOUT|EPOLLET, never
    modified) measured the same: client CPU per echo 7.26 us against 7.38 us
    level-triggered, medians of 4 interleaved runs of 1,000 connections x 200
    round trips of 64 B against the uvloop server (within this loaded machine's
    noise), so the simpler rule stays.

    The loops this replaced called epoll_ctl once per round trip (multiplex)
    and unregistered every socket before close() (bomb); close() alone drops
    a socket from the epoll set (its file is released: eventpoll_release,
    fs/eventpoll.c). Measured against them, interleaved, on this 2-core box:
    the multiplex client's CPU per echo (1,000 connections x 20 round trips)
    8.63 us against 9.37, medians of 5 (0.91 paired); bench/bomb_vs_go.py, 7
    runs each, tcplab bomb's conns/s over the Go churn client's 1.17 against
    1.16 and its CPU per connection 36.9 us against 37.5 (medians of 35
    rounds). User-space instructions (callgrind, deterministic where the
    clock is not): 154.7 k per bomb connection against 156.1 k, 15.2 k per
    multiplex echo against 17.0 k.

    Use: ``run()`` (as often as the phases need), ``release()`` held connections,
    ``stop_sending()`` to let the echoes in flight come home, ``stop()`` to close
    everything (those under way are recorded as waiting), ``report()``, ``close()``.
    """

    def __init__(self, target: Target, config: Config,
                 on_first_error: Callable[[Failure], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.config = config
        self.on_first_error = on_first_error
        self.clock = clock
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.attempted = 0
        self.opened = 0
        self.connected = 0
        self.ok = 0
        self.echoes = 0
        self.failed = 0
        self.active = 0  # connections in an ACTIVE stage
        self.served = 0  # connections with at least one complete echo
        self.last_first_echo = 0.0  # when the latest of those got its first
        self.outcomes: Counter[Outcome] = Counter()
        self.errors: Counter[str] = Counter()
        self.failed_in: Counter[tuple[Stage, Outcome]] = Counter()
        self.first_error: Failure | None = None
        self.waiting: list[Waiting] = []
        self.rtts: list[float] = []
        self.sending = True  # False after stop_sending(): no new round trips
        self.started = clock()
        self.deadline = (self.started + config.duration if config.duration is not None
                         else _INF)
        self._next_batch = self.started
        self._per_batch = 0  # 0: no ramp, open as many as the bounds allow
        if config.ramp_s > 0 and config.connections:
            batches = max(1, int(config.ramp_s / config.ramp_step_s))
            self._per_batch = max(1, -(-config.connections // batches))
        # The config's fields the hot paths read, as plain attributes.
        self._fixed = config.payload if isinstance(config.payload, bytes) else None
        self._make = None if isinstance(config.payload, bytes) else config.payload
        self._count = config.count if config.count is not None else _INF
        self._connections = config.connections if config.connections is not None else _INF
        self._concurrency = config.concurrency if config.concurrency is not None else _INF
        self._round_trips = config.round_trips if config.round_trips is not None else _INF
        self._rtts_on = config.record_rtts
        self._close_last = config.then is Then.CLOSE
        self._verify = config.verify
        self._setup = config.nodelay or config.source is not None
        self._hold_first = config.hold_first
        self._echo_to = config.echo_timeout
        self._linger0 = config.linger0
        self._idle_cap = config.idle_cap
        self.idle: IdlePool[_Conn] = IdlePool(config.idle_cap or 0)  # a capped pool's
        self._connect_timeouts: deque[tuple[float, _Conn]] = deque()
        self._echo_timeouts: deque[tuple[float, _Conn]] = deque()
        self._closed = False

    # -- opening ---------------------------------------------------------------------

    def _may_open(self, now: float) -> bool:
        if self._idle_cap is not None:  # a pool: requests under way, idle ones taken first
            return ((bool(self.idle) or self.opened < self._connections)
                    and self.active < self._concurrency and self.attempted < self._count
                    and now < self.deadline)
        return (self.opened < self._connections and len(self.conns) < self._concurrency
                and self.attempted < self._count and now < self.deadline)

    def _open_some(self, now: float) -> None:
        if self._idle_cap is not None:
            self._pool_some()
            return
        per = self._per_batch
        if per:
            if now < self._next_batch:
                return
            self._next_batch = now + self.config.ramp_step_s
        else:
            per = -1  # no ramp: as many as the bounds allow
        clock, conns, deadline = self.clock, self.conns, self.deadline
        concurrency, connections, count = self._concurrency, self._connections, self._count
        # Bounded: connections or concurrency is finite (Config checks), and count, time.
        while (per and self.opened < connections and len(conns) < concurrency
               and self.attempted < count and clock() < deadline):
            self._open_one()
            per -= 1

    def _pool_some(self) -> None:
        """A capped pool's requests: each takes the latest idle connection, or opens one.
        A round starts only when none is under way, and has ``concurrency`` requests
        (one whose connect() fails at once still counts in its round)."""
        if self.active:
            return
        idle, clock, may_open = self.idle, self.clock, self._may_open
        while True:  # bounded: each pass starts a request or stops (count, time)
            per = self._concurrency
            while per and may_open(clock()):
                per -= 1
                if idle:
                    c = idle.take()
                    self.attempted += 1
                    c.stage = T[c.stage][E.RELEASED]
                    self.active += 1
                    self._begin(c, clock())
                    self._push(c)
                else:
                    self._open_one()
            # A round whose every request failed at once (no port left, no idle one):
            # the next round now, not after an epoll wait with nothing to wait for.
            if self.active or not may_open(clock()):
                return

    def _open_one(self) -> None:
        """Open one connection; unless held, send its request at once if it connected.
        The hot path of the bomb: what _sent and _want do, written out for the common
        case (connected inside connect(), the request written whole)."""
        index = self.opened
        self.opened += 1
        self.attempted += 1
        try:
            sock = _Socket(self.target.family, _STREAM_NONBLOCK)
        except OSError as exc:  # EMFILE, ENFILE: no connection to count it against
            self._count_failure(_CONNECTING_, outcome_of(exc.errno or 0), exc.errno or 0)
            return
        make = self._make
        fd = sock.fileno()
        c = _Conn(sock, fd, index, make(index, 0) if make is not None else self._fixed)  # type: ignore[arg-type]
        self.conns[fd] = c
        self.active += 1
        if self._setup:
            cfg = self.config
            try:
                if cfg.nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if cfg.source is not None:
                    if cfg.bind_no_port:
                        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind(cfg.source)  # EADDRINUSE: bind() must find a port free for all
            except OSError as exc:
                self._fail(c, exc.errno or 0)
                return
        c.t0 = now = self.clock()
        code = sock.connect_ex(self.target.sockaddr)
        if code == 0:
            self._connected(c)
        elif code != _errno.EINPROGRESS:
            self._fail(c, code)
        elif self._hold_first:
            self._wait_connect(c, now)
        else:
            # On loopback the handshake often completes inside connect(): try the
            # request now, and skip one epoll round trip when it did.
            try:
                k = sock.send(c.expect)
            except BlockingIOError:
                self._wait_connect(c, now)
                return
            except OSError as exc:
                self._fail(c, exc.errno or 0)
                return
            self.connected += 1
            c.stage = _CONNECTING[_CONNECTED]
            if self._echo_to is not None:
                self._echo_clock(c, now)
            if k == len(c.expect):
                c.sent = k
                c.stage = _SENDING[_SENT]
                self.ep.register(fd, IN)
                c.mask = IN
            else:
                self._sent(c, k)

    def _wait_connect(self, c: _Conn, now: float) -> None:
        self._want(c, OUT)
        timeout = self.config.connect_timeout
        if timeout is not None:
            c.deadline = now + timeout
            self._connect_timeouts.append((c.deadline, c))

    def _connected(self, c: _Conn) -> None:
        self.connected += 1
        if self.config.hold_first:
            c.stage = T[c.stage][E.CONNECTED_HELD]
            self.active -= 1
            self._want(c, 0)  # EPOLLERR and EPOLLHUP still come: a reset while held
            return
        c.stage = T[c.stage][_CONNECTED]  # the first round trip's time includes the handshake
        if self._echo_to is not None:
            self._echo_clock(c, self.clock())
        self._push(c)

    # -- round trips -------------------------------------------------------------------

    def _begin(self, c: _Conn, now: float) -> None:
        """A round trip starts (after the first): its request, its clock, its timeout."""
        make = self._make
        if make is not None:
            c.expect = make(c.index, c.trips)
        c.sent = c.got = 0
        c.t0 = now
        if self._echo_to is not None:
            self._echo_clock(c, now)

    def _echo_clock(self, c: _Conn, now: float) -> None:
        c.deadline = now + self._echo_to  # type: ignore[operator]
        self._echo_timeouts.append((c.deadline, c))

    def _push(self, c: _Conn) -> None:
        """SENDING: write what the kernel takes of the rest of the request."""
        sent = c.sent
        try:
            k = c.sock.send(c.expect[sent:] if sent else c.expect)
        except BlockingIOError:
            k = 0
        except OSError as exc:
            self._fail(c, exc.errno or 0)
            return
        self._sent(c, k)

    def _sent(self, c: _Conn, k: int) -> None:
        c.sent += k
        if c.sent < len(c.expect):
            c.stage = _SENDING[_SENT_PARTIAL]
            self._want(c, IN | OUT)  # read the echo meanwhile: a large one cannot deadlock
        else:
            c.stage = _SENDING[_SENT]
            if c.mask != IN:
                self._want(c, IN)

    def _want(self, c: _Conn, mask: int) -> None:
        if c.mask != mask:
            if c.mask == _UNREGISTERED:
                self.ep.register(c.fd, mask)
            else:
                self.ep.modify(c.fd, mask)
            c.mask = mask

    def _echoed(self, c: _Conn) -> None:
        """AWAITING_ECHO, the whole echo in: count it, then the next round trip, or
        the plan's end. The hot path of every load: what _begin, _push, _sent and
        _last_echo do, written out for the common cases (the request written whole;
        the connection closed after its last echo)."""
        now = self.clock()
        self.echoes += 1
        if self._rtts_on:
            self.rtts.append(now - c.t0)
        trips = c.trips = c.trips + 1
        if trips == 1:
            self.served += 1
            self.last_first_echo = now
        if self._idle_cap is not None:
            self._to_pool(c)
        elif (trips < self._round_trips and self.sending and self.attempted < self._count
                and now < self.deadline):
            self.ok += 1
            self.attempted += 1
            c.stage = _AWAITING[_ECHO_COMPLETE]
            make = self._make
            expect = c.expect = make(c.index, trips) if make is not None else c.expect
            c.got = 0
            c.t0 = now
            if self._echo_to is not None:
                self._echo_clock(c, now)
            try:
                k = c.sock.send(expect)
            except BlockingIOError:
                k = 0
            except OSError as exc:
                self._fail(c, exc.errno or 0)
                return
            if k == len(expect):  # the interest stays EPOLLIN: no epoll_ctl
                c.sent = k
                c.stage = _SENDING[_SENT]
            else:
                c.sent = 0
                self._sent(c, k)
        elif self._close_last:  # what _close does
            self.ok += 1
            self.active -= 1
            c.stage = _AWAITING[_LAST_ECHO_CLOSE]
            del self.conns[c.fd]
            if self._linger0:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            c.sock.close()
        else:
            self._last_echo(c)

    def _to_pool(self, c: _Conn) -> None:
        """A pooled request is done: its connection waits idle if the pool has room,
        else it is closed (the client closes first: its side goes to TIME_WAIT)."""
        self.ok += 1
        self.active -= 1
        if self.idle.keep(c):
            c.stage = T[c.stage][E.LAST_ECHO_HELD]
            self._want(c, 0)  # EPOLLERR and EPOLLHUP still come: a reset while idle
        else:
            c.stage = T[c.stage][_LAST_ECHO_CLOSE]
            self._close(c)

    def _last_echo(self, c: _Conn) -> None:
        """The last echo, when the plan is not to close at once (_echoed does that)."""
        if self.config.then is Then.AWAIT_CLOSE:
            c.stage = T[c.stage][E.LAST_ECHO_AWAIT_CLOSE]  # ok when the peer's FIN comes
            return
        self.ok += 1
        self.active -= 1
        c.stage = T[c.stage][E.LAST_ECHO_HELD]
        self._want(c, 0)

    def _close(self, c: _Conn) -> None:
        del self.conns[c.fd]
        if self._linger0:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            except OSError:
                pass  # already reset by the peer: closing is all that is left
        c.sock.close()  # also drops it from the epoll set

    # -- reading ---------------------------------------------------------------------

    def _read(self, c: _Conn) -> None:
        """SENDING or AWAITING_ECHO with something to read: echo bytes, EOF or an error."""
        try:
            data = c.sock.recv(len(c.expect) - c.got)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(c, exc.errno or 0)
            return
        self._took(c, data)

    def _took(self, c: _Conn, data: bytes) -> None:
        expect, got, n = c.expect, c.got, len(data)
        size = len(expect)
        if not n:
            self._fail(c, 0, Outcome.CLOSED_EARLY, E.PEER_CLOSED)
        elif (got + n > c.sent  # an echo of bytes not yet sent: the peer made them up
              or (self._verify and data != (expect if n == size else expect[got:got + n]))):
            self._fail(c, 0, Outcome.WRONG_BYTES)
        elif got + n < size:
            c.got = got + n
            c.stage = T[c.stage][_ECHO_PARTIAL]
        else:
            c.got = size
            self._echoed(c)

    def _recv_off_path(self, c: _Conn, n: int) -> bytes | None:
        """A read off the echo path (closing, held): the bytes (b"" at EOF), or None
        when there is nothing yet or the read failed (the failure already counted)."""
        try:
            return c.sock.recv(n)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._fail(c, exc.errno or 0)
            return None

    def _read_closing(self, c: _Conn) -> None:
        """CLOSING: the peer's FIN (ok), a reset, or bytes after the echo."""
        data = self._recv_off_path(c, 4096)
        if data is None:
            return
        if data:
            if self.config.verify:
                self._fail(c, 0, Outcome.WRONG_BYTES)
            return  # unverified: bytes past the echo are read and let go
        c.stage = T[c.stage][E.PEER_CLOSED]
        self.ok += 1
        self.active -= 1
        self._close(c)

    def _read_held(self, c: _Conn) -> None:
        """HOLDING: epoll reports EPOLLERR/EPOLLHUP even with no interest: why."""
        code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(c, code)
            return
        data = self._recv_off_path(c, 1)
        if data is None:
            return
        if data:
            self._fail(c, 0, Outcome.WRONG_BYTES)  # bytes nobody asked for
        else:
            self._fail(c, 0, Outcome.CLOSED_EARLY, E.PEER_CLOSED)

    # -- failures ------------------------------------------------------------------

    def _fail(self, c: _Conn, code: int, outcome: Outcome | None = None,
              event: Event = E.FAILED) -> None:
        stage = c.stage
        c.stage = T[stage][event]
        if stage in ACTIVE:
            self.active -= 1
        elif stage is _HOLDING_:
            self.idle.discard(c)  # reset or closed by the peer while idle in the pool
        del self.conns[c.fd]
        c.sock.close()
        self._count_failure(stage, outcome if outcome is not None else outcome_of(code), code)

    def _count_failure(self, stage: Stage, outcome: Outcome, code: int) -> None:
        name = failure_name(outcome, code, stage)
        self.failed += 1
        self.outcomes[outcome] += 1
        self.errors[name] += 1
        self.failed_in[stage, outcome] += 1
        if self.first_error is None:
            self.first_error = Failure(
                outcome=outcome, errno=code, name=name,
                message=failure_text(outcome, code, stage), stage=stage,
                at_s=round(self.clock() - self.started, 3), ok_before=self.ok,
                in_flight=len(self.conns))
            if self.on_first_error is not None:
                self.on_first_error(self.first_error)

    def _expire(self, now: float) -> None:
        """Connect and echo timeouts due by ``now``. Each deque is in deadline order
        (one timeout each); an entry whose connection moved on is dropped."""
        q = self._connect_timeouts
        while q and q[0][0] <= now:
            deadline, c = q.popleft()
            if c.stage is _CONNECTING_ and c.deadline == deadline:
                self._fail(c, _errno.ETIMEDOUT, Outcome.TIMED_OUT, E.TIMED_OUT)
        q = self._echo_timeouts
        while q and q[0][0] <= now:
            deadline, c = q.popleft()
            if (c.stage is _AWAITING_ or c.stage is _SENDING_) and c.deadline == deadline:
                self._fail(c, _errno.ETIMEDOUT, Outcome.TIMED_OUT, E.TIMED_OUT)

    # -- the loop ------------------------------------------------------------------

    def run(self, until: float | None = None, max_echoes: int | None = None,
            on_tick: Callable[[float], None] | None = None, tick_s: float = 0.5) -> Stop:
        """Run until nothing is under way and nothing more may open (DONE), ``until``
        (a clock time), the config's duration, or ``max_echoes`` echoes in all.
        ``on_tick(now)`` is called between epoll batches, at most every ``tick_s``."""
        end = min(until if until is not None else _INF, self.deadline)
        if end == _INF:
            raise ValueError("unbounded run: give the config a duration or run() an until")
        clock, poll, get = self.clock, self.ep.poll, self.conns.get
        read, took, echoed, push, fail = (self._read, self._took, self._echoed, self._push,
                                          self._fail)
        verify = self._verify
        now = clock()
        next_tick = now + tick_s if on_tick is not None else _INF
        timeouts = self._connect_timeouts, self._echo_timeouts
        timed = self.config.connect_timeout is not None or self._echo_to is not None
        ramped = self._per_batch > 0
        while True:  # bounded: every pass checks ``end``, at most _EPOLL_MAX_WAIT_S apart
            if self.sending:
                self._open_some(now)
            if not self.active and not (self.sending and self._may_open(now)):
                return Stop.DONE
            if max_echoes is not None and self.echoes >= max_echoes:
                return Stop.ECHOES
            if now >= end:
                return Stop.DURATION if now >= self.deadline else Stop.UNTIL
            wait = (end if end < next_tick else next_tick) - now
            if ramped and self.opened < self._connections:
                wait = min(wait, self._next_batch - now)
            if timed:
                for q in timeouts:
                    if q:
                        wait = min(wait, q[0][0] - now)
            if wait > _EPOLL_MAX_WAIT_S:
                wait = _EPOLL_MAX_WAIT_S
            elif wait < 0.0:
                wait = 0.0
            for fd, ev in poll(wait):
                c = get(fd)
                if c is None:
                    continue
                st = c.stage
                if st is _AWAITING_:
                    # The hot path: the rest of the echo, whole (and equal, if verified).
                    # Anything else (part of it, EOF, other bytes) goes to _took.
                    want = len(c.expect) - c.got
                    try:
                        data = c.sock.recv(want)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        fail(c, exc.errno or 0)
                        continue
                    if len(data) == want and not c.got and (not verify or data == c.expect):
                        c.got = want
                        echoed(c)
                    else:
                        took(c, data)
                elif st is _SENDING_:
                    if ev & OUT:
                        push(c)
                    if ev & ~OUT and c.stage is _SENDING_:
                        read(c)
                elif st is _CONNECTING_:
                    code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        fail(c, code)
                    else:
                        self._connected(c)
                elif st is _CLOSING_:
                    self._read_closing(c)
                else:
                    self._read_held(c)
            now = clock()
            if timed:
                self._expire(now)
            if now >= next_tick:
                on_tick(now)  # type: ignore[misc]
                next_tick = now + tick_s

    # -- phases --------------------------------------------------------------------

    def release(self) -> int:
        """Every held connection with round trips left starts its next one; how many."""
        n, clock = 0, self.clock
        for c in list(self.conns.values()):
            if c.stage is _HOLDING_ and c.trips < self._round_trips:
                if c.trips:  # its first round trip was counted when it was opened
                    self.attempted += 1
                c.stage = T[c.stage][E.RELEASED]
                self.active += 1
                self._begin(c, clock())  # each its own clock: a round trip's time is its own
                self._push(c)
                n += 1
        self.idle.keep_only(lambda c: c.stage is _HOLDING_)
        return n

    def check_held(self) -> int:
        """Read what the kernel reported on held connections since the last run():
        a reset or an EOF while held is a failure. ``run()`` returns at once when
        nothing is under way, so a phase that waits with every connection held
        calls this before counting them. Returns the connections still held."""
        for _ in range(len(self.conns) + 1):  # each pass fails (closes) what it reads
            events = self.ep.poll(0)  # interest is empty while held: ERR/HUP only
            if not events:
                break
            read = 0
            for fd, _ev in events:
                c = self.conns.get(fd)
                if c is not None and c.stage is _HOLDING_:
                    self._read_held(c)
                    read += 1
            if not read:  # only connections under way: run() reads those
                break
        return self.holding()

    def holding(self) -> int:
        """Connections open and idle (held), each with its round trips done so far."""
        return sum(1 for c in self.conns.values() if c.stage is _HOLDING_)

    def unserved(self) -> int:
        """Open connections that have had no complete echo yet."""
        return sum(1 for c in self.conns.values() if not c.trips)

    def stop_sending(self) -> None:
        """No new round trips: each connection ends with the one it is on (drain)."""
        self.sending = False

    def stop(self) -> list[Waiting]:
        """Close every connection: held ones as asked (FIN, or RST with linger0), those
        under way recorded as waiting (neither ok nor failed). Returns those."""
        now = self.clock()
        stopped = []
        for c in list(self.conns.values()):
            if c.stage is S.DONE:  # a move cut short by Ctrl-C: it ended already
                del self.conns[c.fd]
                c.sock.close()
            elif c.stage is _HOLDING_:
                c.stage = T[c.stage][E.CLOSE]
                self._close(c)
            else:
                stopped.append(Waiting(c.stage, now - c.t0))
                c.stage = T[c.stage][E.STOPPED]
                self.active -= 1
                del self.conns[c.fd]
                c.sock.close()
        self.idle.clear()
        self.waiting.extend(stopped)
        return stopped

    def close(self) -> None:
        """Close every socket and the epoll instance (idempotent; also on Ctrl-C)."""
        if self._closed:
            return
        self._closed = True
        for c in self.conns.values():
            c.sock.close()
        self.conns.clear()
        self.idle.clear()
        self.ep.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def report(self) -> Report:
        return Report(
            attempted=self.attempted, opened=self.opened, connected=self.connected,
            ok=self.ok, echoes=self.echoes, failed=self.failed,
            outcomes={Outcome.OK: self.ok, **self.outcomes},
            errors=dict(self.errors.most_common()), failed_in=dict(self.failed_in),
            first_error=self.first_error, waiting=list(self.waiting), served=self.served,
            elapsed_s=round(self.clock() - self.started, 3), rtts_s=list(self.rtts))


# --- Part 3: bench's load generators, as configurations ---------------------------------


def churn_config(count: int, workers: int = 32, duration: float = 60.0,
                 payload: bytes = b"tcplab port bomb") -> Config:
    """Connect, one echo (counted, not compared), close; ``workers`` at once, until
    ``count`` connections or ``duration`` s: the port bomb's fresh mode
    (``traffic/bomb.py`` builds on this) and bench's churn client."""
    return Config(concurrency=workers, round_trips=1, payload=payload, verify=False,
                  count=count, duration=duration)


def churn(target: Target, count: int, workers: int = 32, duration: float = 60.0,
          payload: bytes = b"tcplab port bomb") -> Report:
    with Driver(target, churn_config(count, workers, duration, payload)) as driver:
        driver.run()
        driver.stop()
        return driver.report()


def pingpong_config(connections: int, size: int = 64, payload: bytes | None = None,
                    connect_timeout: float = 10.0, ramp_s: float = 0.0,
                    verify: bool = True, rtts: bool = True) -> Config:
    """``connections`` connections, each with one ``size``-byte message in flight:
    send, wait for the whole echo (verified), send again, for as long as run() says.
    Connected first and held, then released at once; TCP_NODELAY, as a latency
    load generator sets it."""
    return Config(
        connections=connections, ramp_s=ramp_s, hold_first=True, round_trips=None,
        payload=payload if payload is not None else bytes(i & 0xFF for i in range(size)),
        verify=verify, then=Then.HOLD, record_rtts=rtts, nodelay=True,
        connect_timeout=connect_timeout)


@dataclass(frozen=True, slots=True)
class Mark:
    """The load's state between two epoll batches: the echo count and the clock
    belong to the same instant, and ``extra`` is what the caller measured then."""

    t: float  # the driver's clock (time.monotonic)
    echoes: int  # complete echoes since the start
    rtts: int  # round-trip times recorded since the start (index into the list)
    extra: Any = None


@dataclass(frozen=True, slots=True)
class PingPong:
    connections: int
    connected: int
    connect_s: float
    a: Mark  # after the warm-up
    b: Mark  # after ``seconds`` (or ``max_echoes``)
    echoes_total: int  # the whole run, drain included
    in_flight: int  # requests whose echo had not come back after the drain
    failed: int
    errors: dict[str, int]
    window_rtts_s: list[float]  # sorted: the round trips completed between a and b

    def percentile_us(self, q: float) -> float:
        """Nearest-rank percentile of the window's round trips, in microseconds."""
        from tcplab.traffic.client import percentile  # not at import: the bomb never needs it

        return percentile(self.window_rtts_s, q) * 1e6


def pingpong(target: Target, connections: int, size: int = 64, warmup: float = 0.5,
             seconds: float = 3.0, max_echoes: int | None = None,
             mark: Callable[[], Any] | None = None, payload: bytes | None = None,
             connect_timeout: float = 10.0, ramp_s: float = 0.0,
             drain_s: float = 10.0, verify: bool = True, rtts: bool = True) -> PingPong:
    """bench's load: connect all, then ping-pong on all for ``warmup`` s, mark A,
    ``seconds`` s more (or ``max_echoes`` echoes), mark B, stop sending and collect
    the echoes in flight (at most ``drain_s``). ``mark()`` runs at A and at B,
    between two epoll batches (the server's CPU time, say). ``verify=False``
    counts echoed bytes without comparing them, ``rtts=False`` keeps no round-trip
    times: a load that only counts, as bench/cpu_per_echo.py's own did."""
    cfg = pingpong_config(connections, size, payload, connect_timeout, ramp_s, verify, rtts)
    with Driver(target, cfg) as driver:
        clock = driver.clock

        def take() -> Mark:
            extra = mark() if mark is not None else None
            return Mark(clock(), driver.echoes, len(driver.rtts), extra)

        driver.run(until=driver.started + ramp_s + connect_timeout + 5)
        connect_s = clock() - driver.started
        driver.release()
        driver.run(until=clock() + warmup)
        a = take()
        driver.run(until=a.t + seconds,
                   max_echoes=a.echoes + max_echoes if max_echoes is not None else None)
        b = take()
        driver.stop_sending()
        driver.run(until=clock() + drain_s)
        return PingPong(
            connections=connections, connected=driver.connected, connect_s=round(connect_s, 3),
            a=a, b=b, echoes_total=driver.echoes, in_flight=driver.active, failed=driver.failed,
            errors=dict(driver.errors.most_common()),
            window_rtts_s=sorted(driver.rtts[a.rtts:b.rtts]))
