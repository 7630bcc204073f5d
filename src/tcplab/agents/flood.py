"""The FD-leak experiment's bounded client flood, run inside its sandbox:
``python -m tcplab.agents.flood --port P [--clients N] [--ramp S]
[--connect-timeout S] [--read-timeout S]``.

It runs ``tcplab.traffic.flood.run`` with those settings and emits its
``FloodResult`` (one JSON line) when every client is done; the parent
(``experiments.fd_leak``) decodes it back with ``from_json_line(FloodResult, ...)``.
"""

from __future__ import annotations

import argparse

from tcplab.agents.io import emit
from tcplab.traffic.flood import run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.flood",
                                description="Run a bounded client flood; emit a FloodResult.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=400)
    p.add_argument("--ramp", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=2.0)
    p.add_argument("--read-timeout", type=float, default=2.0)
    p.add_argument("--host", default="127.0.0.1", help="the server's address")
    args = p.parse_args(argv)
    emit(run(args.port, args.clients, args.ramp, args.connect_timeout, args.read_timeout,
             host=args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
