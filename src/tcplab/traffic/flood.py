"""A bounded flood of clients for the FD-leak experiment (run by ``tcplab.agents.flood``).

Each client connects (non-blocking, given up after ``connect_timeout``),
sends one message, waits up to ``read_timeout`` for its echo, and closes.
Against a server that has run out of fds the three outcomes are the lesson:

* echoed: the server accepted it while it still had fds;
* connected but no echo: the kernel completed the handshake into the accept
  queue, but the server cannot accept() it (EMFILE): the read hangs;
* connect timed out: the accept queue (backlog + 1) is full, the kernel drops
  the SYN, and the client sits in SYN_SENT. There is no "connection refused".

Clients are opened in batches over ``ramp`` seconds so the climb is visible.
``run`` is a configuration of the client engine (``traffic/engine.py``): its
connect and echo timeouts, and the outcomes counted by the stage they ended in.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from tcplab.traffic import engine
from tcplab.traffic.target import Target

PAYLOAD = b"tcplab fd leak\n"


@dataclass(frozen=True, slots=True)
class FloodResult:
    clients: int
    echoed: int
    no_echo: int  # connected, but the echo never came (stuck in the accept queue)
    connect_timeouts: int  # never connected: SYN dropped, accept queue full
    hung_up: int = 0  # the server closed before echoing
    errors: dict[str, int] = field(default_factory=dict)  # other failures by errno
    elapsed_s: float = 0.0


#: Failures flood.run counts apart from ``errors`` (engine.failure_name's names).
_COUNTED_APART = ("ETIMEDOUT", "timeout", "EOF")


def run(port: int, clients: int, ramp: float = 1.0, connect_timeout: float = 2.0,
        read_timeout: float = 2.0, host: str = "127.0.0.1") -> FloodResult:
    """``clients`` connections in batches over ``ramp`` s: each connects (at most
    ``connect_timeout``), sends one message, waits at most ``read_timeout`` for the
    echo, and closes; an engine configuration."""
    target = Target(host, port, socket.AF_INET, (host, port))
    cfg = engine.Config(
        connections=clients, ramp_s=ramp, ramp_step_s=0.05, payload=PAYLOAD, verify=False,
        connect_timeout=connect_timeout, echo_timeout=read_timeout)
    with engine.Driver(target, cfg) as driver:
        # Bounded: the ramp, then a connect and an echo timeout at most (slack for load).
        driver.run(until=driver.started + ramp + connect_timeout + read_timeout + 5)
        late = driver.stop()  # none, unless the box was starved past the slack
        r = driver.report()
    never = sum(1 for w in late if w.stage is engine.Stage.CONNECTING)
    return FloodResult(
        clients=clients, echoed=r.ok,
        no_echo=r.failures(engine.Outcome.TIMED_OUT) - r.failures(
            engine.Outcome.TIMED_OUT, engine.Stage.CONNECTING) + len(late) - never,
        connect_timeouts=r.failures(engine.Outcome.TIMED_OUT, engine.Stage.CONNECTING) + never,
        hung_up=r.failures(engine.Outcome.CLOSED_EARLY),
        errors={k: v for k, v in r.errors.items() if k not in _COUNTED_APART},
        elapsed_s=r.elapsed_s,
    )
