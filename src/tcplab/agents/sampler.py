"""The 100 ms state sampler, run *inside* an experiment's namespace:
``python -m tcplab.agents.sampler --port P [--pid PID] [--interval S] [--origin MONO]
[--also-netns PATH]``.

Every ``--interval`` seconds it emits one ``Sample``: the state counts of
sockets with the port, the listener's accept queue (LISTEN Recv-Q) and
backlog, and the server's fds and fd limit (soft and hard). Across a link it
runs at the server's end and ``--also-netns`` adds the states of the client's
end, so the counts are the connection's two ends, as in one namespace. The server is
``--pid``, or whoever holds the listening socket (found once by its inode), so
it works for a foreign server too. It stops when its stdout closes or on
SIGTERM. The parent's side is ``experiments.sampling.StateSampler``.

Each sample carries ``mono``: CLOCK_MONOTONIC (``time.monotonic()``, one clock
for every process on the machine) read when the measurement began, and ``t``:
the same moment in seconds since ``--origin`` (the experiment's start, on that
clock; this agent's own start without it). Stamping a row when the parent
*reads* it instead made times run backwards under CPU load (issue 11: a row
read late, the next one read at once).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from dataclasses import dataclass

from tcplab.agents.io import emit
from tcplab.observe import procfs
from tcplab.observe.owners import listening_processes
from tcplab.observe.sockets import SocketTable


@dataclass(frozen=True, slots=True)
class Sample:
    # Microseconds: a sample (netlink dumps, /proc reads) takes far longer, so
    # consecutive stamps always differ.
    mono: float  # CLOCK_MONOTONIC when the measurement began
    t: float  # that moment, in seconds since --origin
    states: dict[str, int]  # TCP state -> sockets with the port (states with none left out)
    listen_queue: int  # LISTEN Recv-Q: connections completed, not yet accept()ed
    backlog: int  # the listener's backlog (LISTEN Send-Q)
    server_pid: int | None
    server_fds: int | None  # None: no server found, or its fds unreadable
    fd_limit: int | None  # the server's soft fd limit, read once
    fd_limit_hard: int | None

    def state(self, name: str) -> int:
        """Sockets in state ``name`` (``CLOSE_WAIT``) at this sample."""
        return self.states.get(name, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.sampler",
                                description="Emit a Sample (one JSON line) every interval.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, help="the server (default: who holds the listener)")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--also-netns", action="append", default=[], metavar="PATH",
                   help="also count the port's sockets in this network namespace (the "
                   "other end of a link: /proc/PID/ns/net)")
    p.add_argument("--origin", type=float,
                   help="CLOCK_MONOTONIC seconds that t counts from (default: now)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    origin = time.monotonic() if args.origin is None else args.origin
    pid = args.pid
    limit: int | None = None
    hard: int | None = None
    with SocketTable() as table, contextlib.ExitStack() as stack:
        # --also-netns: the other end of a link (its clients' FIN_WAIT2, SYN_SENT)
        others = [stack.enter_context(SocketTable(netns=path)) for path in args.also_netns]
        while True:
            now = time.monotonic()
            counts = table.state_counts(args.port)
            for other in others:
                for state, n in other.state_counts(args.port).states.items():
                    counts.states[state] = counts.states.get(state, 0) + n
            listeners = table.listeners(args.port)
            if pid is None and listeners:
                pid = next((o.pid for o in listening_processes(args.port, table)), None)
            fds = None
            if pid is not None:
                try:
                    fds = procfs.fds_in_use(pid)
                    if limit is None:
                        both = procfs.fd_limit(pid)
                        limit, hard = both.soft, both.hard
                except procfs.ProcessError:
                    fds = None
            sample = Sample(
                mono=round(now, 6), t=round(now - origin, 6),
                states={k: v for k, v in counts.states.items() if v},
                listen_queue=sum(s.rqueue for s in listeners),
                backlog=max((s.wqueue for s in listeners), default=0),
                server_pid=pid, server_fds=fds, fd_limit=limit, fd_limit_hard=hard,
            )
            try:
                emit(sample)
            except BrokenPipeError:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - now)))


if __name__ == "__main__":
    raise SystemExit(main())
