"""Is a server listening yet? Run inside a sandbox:
``python -m tcplab.agents.listening PORT TIMEOUT``.

It waits up to ``TIMEOUT`` seconds for a LISTEN socket on ``PORT`` in the
socket table and emits one ``Listening`` with the addresses it is bound to;
exit status 1 if none appeared. ``experiments.children.ForeignServer`` runs it
to know that the user's server is ready, and on which addresses
(``experiments.probe.accepts_on`` then says whether 127.0.0.2 is served).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from tcplab.agents.io import emit
from tcplab.observe.sockets import SocketTable


@dataclass(frozen=True, slots=True)
class Listening:
    listening: list[str] = field(default_factory=list)  # bound addresses; [] if none in time


def listening_addresses(port: int, timeout: float, interval: float = 0.05) -> list[str]:
    """The addresses a LISTEN socket on ``port`` is bound to, once one appears.

    Read from the socket table (sock_diag), not by connecting: a probe
    connection would itself be a socket on the port, and it closes first, so it
    sits in TIME_WAIT on one ephemeral port for 60 s. Against a foreign server
    that stray made ``port-bomb``'s pool and linger0 verdicts fail (TIME_WAIT 9
    against 8, 1 against 0; issue 11) and took one port from the bomb. Listing
    the listener also tells which addresses the server took: 127.0.0.1 alone
    cannot serve the two-destinations variant (127.0.0.2).
    Returns [] if nothing listens within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    with SocketTable() as table:
        while True:
            found = sorted({s.src for s in table.listeners(port)})
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.listening",
                                description="Wait for a LISTEN socket on PORT; emit Listening.")
    p.add_argument("port", type=int)
    p.add_argument("timeout", type=float, help="seconds to wait at most")
    args = p.parse_args(argv)
    found = listening_addresses(args.port, args.timeout)
    emit(Listening(found))
    return 0 if found else 1


if __name__ == "__main__":
    raise SystemExit(main())
