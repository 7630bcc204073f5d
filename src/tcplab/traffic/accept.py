"""The accept loop's logic, shared by every server model.

Every model owns its accept loop instead of relying on the event loop's
internal one: CPython 3.11's ``BaseSelectorEventLoop._accept_connection`` logs
a full error with traceback on every EMFILE and retries after a fixed second,
and uvloop accepts and immediately closes the connection on EMFILE, which hides
the very lesson of the FD-leak experiment.

On a resource error (EMFILE, ENFILE, ENOBUFS, ENOMEM: CPython's set, in
``BaseSelectorEventLoop._accept_connection``, Lib/asyncio/selector_events.py) we
stop watching the listener and retry after a delay that starts at 5 ms and
doubles up to 1 s, like Go's ``net/http.Server.Serve`` (its ``tempDelay``; Go
retries on its temporary errnos instead, EINTR, EMFILE, ENFILE and timeouts:
``Errno.Temporary`` in syscall/syscall_unix.go, and ECONNRESET and ECONNABORTED
from accept: ``(*OpError).Temporary`` in net/net.go). Level-triggered
pollers would otherwise spin: the listener stays readable while connections
wait in the accept queue. A connection that closes frees an fd, so a model
retries at once when that happens instead of waiting out the delay.

Logging is rate-limited too: at most ``LOG_BURST`` lines per second; the next
line that is allowed says how many were held back.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcplab.errors import describe_oserror
from tcplab.observe.process import fds_in_use, own_fd_limit


def poll_timeout(*timeouts: float | None) -> float | None:
    """The shortest of the timeouts that are set (None: sleep until an event)."""
    due = [t for t in timeouts if t is not None]
    return min(due) if due else None

#: errnos after which accept() should be retried later: the process or the
#: system ran out of something that a closing connection may give back.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: errnos that concern only the one connection being accepted: skip it.
#: accept(2) "Error handling": Linux passes already-pending network errors
#: of the new socket as an error code from accept().
TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
     errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
     errno.EINTR}
)

BACKOFF_MIN = 0.005
BACKOFF_MAX = 1.0
LOG_BURST = 3


class Backoff:
    """Exponential backoff, 5 ms doubling to 1 s; reset by a successful accept."""

    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = 0.0

    def next(self) -> float:
        self.delay = BACKOFF_MIN if self.delay == 0.0 else min(self.delay * 2, BACKOFF_MAX)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


class LogLimiter:
    """Allows at most ``burst`` messages in any one-second window."""

    __slots__ = ("_burst", "_clock", "_stamps", "held")

    def __init__(self, burst: int = LOG_BURST, clock: Callable[[], float] = time.monotonic):
        self._burst = burst
        self._clock = clock
        self._stamps: list[float] = []
        self.held = 0

    def allow(self) -> bool:
        now = self._clock()
        self._stamps = [t for t in self._stamps if now - t < 1.0]
        if len(self._stamps) < self._burst:
            self._stamps.append(now)
            return True
        self.held += 1
        return False


@dataclass(slots=True)
class ServerStats:
    """Counters of one server run; the models update them, the CLI prints them."""

    accepted: int = 0
    closed: int = 0
    bytes_echoed: int = 0
    accept_errors: int = 0
    leaked: int = 0

    @property
    def open(self) -> int:
        return self.accepted - self.closed


def accept_error_line(exc: OSError, delay: float, held: int) -> str:
    """``accept: [Errno 24] Too many open files (128 of 128 fds in use); retrying in 5 ms``."""
    limit = own_fd_limit().soft
    try:
        used = str(fds_in_use())
    except OSError:
        used = "?"
    line = (
        f"accept: {describe_oserror(exc)} ({used} of {limit} fds in use); "
        f"retrying in {delay * 1000:.0f} ms"
    )
    if held:
        line += f" ({held} similar lines held back)"
    return line


class Acceptor:
    """Accepts connections from a non-blocking listener, with backoff on EMFILE.

    A model calls :meth:`accept_ready` when the listener is readable. It returns
    the accepted sockets and, if a resource error stopped it, the delay before
    the model should watch the listener again (``None`` otherwise). ``log`` gets
    one line per reported error.
    """

    __slots__ = (
        "_backoff", "_batch", "_clock", "_limiter", "_log",
        "listener", "paused", "retry_at", "stats",
    )

    def __init__(
        self,
        listener: socket.socket,
        stats: ServerStats,
        log: Callable[[str], None],
        batch: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._clock = clock
        self.stats = stats
        self._log = log
        self._batch = batch
        self._backoff = Backoff()
        self._limiter = LogLimiter()
        self.paused = False
        self.retry_at: float | None = None  # when a paused model should retry

    def timeout(self, now: float) -> float | None:
        """How long a poller may sleep before the listener must be watched again."""
        return None if self.retry_at is None else max(0.0, self.retry_at - now)

    def resume_due(self, now: float) -> bool:
        """True once the backoff is over; the model then watches the listener again."""
        if self.retry_at is None or now < self.retry_at:
            return False
        self.retry_at = None
        self.paused = False
        return True

    def fd_freed(self) -> None:
        """A connection closed and gave an fd back: end the backoff now."""
        if self.retry_at is not None:
            self.retry_at = self._clock()

    def accept_ready(self) -> tuple[list[socket.socket], float | None]:
        accepted: list[socket.socket] = []
        accept = self.listener.accept
        for _ in range(self._batch):
            try:
                conn, _addr = accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                if exc.errno in RESOURCE_ERRNOS:
                    self.stats.accept_errors += 1
                    delay = self._backoff.next()
                    if self._limiter.allow():
                        self._log(accept_error_line(exc, delay, self._limiter.held))
                        self._limiter.held = 0
                    self.paused = True
                    self.retry_at = self._clock() + delay
                    self.stats.accepted += len(accepted)
                    return accepted, delay
                raise
            accepted.append(conn)
        if accepted:
            self._backoff.reset()
            self.stats.accepted += len(accepted)
        return accepted, None
