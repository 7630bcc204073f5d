"""A sampler that runs *inside* an experiment's namespace: ``python -m tcplab.observe.sampler``.

Every ``--interval`` seconds it prints one JSON line: the state counts of
sockets with the port, the listener's accept queue (LISTEN Recv-Q) and
backlog, and the server's fds and fd limit (soft and hard). The server is
``--pid``, or whoever holds the listening socket (found once by its inode), so
it works for a foreign server too. It stops when its stdout closes or on
SIGTERM.

Each line carries ``mono``: CLOCK_MONOTONIC (``time.monotonic()``, one clock
for every process on the machine) read when the measurement began. The
parent converts it to time since its own start; stamping a row when the
parent *reads* it instead made times run backwards under CPU load (issue 11:
a row read late, the next one read at once).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from tcplab.kernel.procfs import parse_limits
from tcplab.observe.owners import listening_processes
from tcplab.observe.process import fds_in_use
from tcplab.observe.sockets import SocketTable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.observe.sampler")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--interval", type=float, default=0.1)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pid = args.pid
    limit: int | None = None
    hard: int | None = None
    with SocketTable() as table:
        while True:
            now = time.monotonic()
            counts = table.state_counts(args.port)
            listeners = table.listeners(args.port)
            if pid is None and listeners:
                pid = next((o.pid for o in listening_processes(args.port, table)), None)
            fds = None
            if pid is not None:
                try:
                    fds = fds_in_use(pid)
                    if limit is None:
                        with open(f"/proc/{pid}/limits") as f:
                            both = parse_limits(f.read())
                        limit, hard = both.soft, both.hard
                except OSError:
                    fds = None
            line = {
                # Microseconds: a sample (netlink dumps, /proc reads) takes far
                # longer, so consecutive stamps always differ.
                "mono": round(now, 6),
                "states": {k: v for k, v in counts.states.items() if v},
                "listen_queue": sum(s.rqueue for s in listeners),
                "backlog": max((s.wqueue for s in listeners), default=0),
                "server_pid": pid, "server_fds": fds, "fd_limit": limit,
                "fd_limit_hard": hard,
            }
            try:
                sys.stdout.write(json.dumps(line) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                return 0
            time.sleep(max(0.0, args.interval - (time.monotonic() - now)))


if __name__ == "__main__":
    raise SystemExit(main())
