"""How a local port is chosen: ``tcplab experiment ports``.

A choreography (``python -m tcplab.agents.ports``) runs in a sandbox whose
ip_local_port_range it narrows to ten ports (40000-40009): connect() and
bind() to port 0 (parity), bind() before connect() with and without
IP_BIND_ADDRESS_NO_PORT toward two destinations, IP_LOCAL_PORT_RANGE on each
socket, and ip_local_reserved_ports (the agent's docstring cites the kernel).
Each is a ``Ports`` record: the local ports the sockets got, in order, and the
call that failed with its errno.

Across a link (``--link veth``) the clients are in the net's client namespace,
whose ip_local_port_range the experiment narrows (and whose reserved ports it
sets before the last case), and the listeners in the server's: the two
destinations are the server's address at ports 8080 and 8081 (it has one IPv4
address; agents/ports.py says why not its IPv6 one).

Every check is a count or a set of port numbers: with ten ports the kernel's
choices are exact, on a loaded machine too (only their order may vary).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tcplab.agents.ports import HIGH, LOW, ONE, PORT, RESERVED, SOCKET_RANGE, TWO, Failed, Ports
from tcplab.experiments import result as base
from tcplab.experiments.choreography import agent_records, records
from tcplab.experiments.link import LOOPBACK, LinkSpec, LinkUsed, ends
from tcplab.experiments.result import Event, Progress, say_nothing

#: The range's ports, and the two halves __inet_hash_connect and
#: inet_csk_find_open_port try first (even and odd offsets from the low end).
RANGE = frozenset(range(LOW, HIGH + 1))
EVEN = frozenset(p for p in RANGE if (p - LOW) % 2 == 0)
ODD = RANGE - EVEN
#: The two destinations' keys in by_case (loopback's; across a link the run's first
#: and second destination are filed under them: destinations() names them).
FIRST, SECOND = f"{ONE}:{PORT}", f"{TWO}:{PORT}"
#: How a case ends: the call that failed and its errno's name.
Ending = tuple[str, str]
OUT_OF_PORTS: Ending = ("connect", "EADDRNOTAVAIL")
PORT_TAKEN: Ending = ("bind", "EADDRINUSE")


@dataclass(frozen=True, slots=True)
class RunWith:
    port_range: str  # the namespace's ip_local_port_range, "40000-40009"


@dataclass(frozen=True, slots=True)
class Facts:
    cases: tuple[Ports, ...]  # in the agent's order (two per bind-then-connect case)


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The ports experiment's result: one Ports per case and destination, no variants."""


def ports_words(p: Ports) -> str:
    """``5 ports: 40000, 40002, ...; then connect: EADDRNOTAVAIL ("Cannot assign ...")``."""
    got = ", ".join(str(x) for x in p.ports) or "none"
    text = f"{len(p.ports)} {'port' if len(p.ports) == 1 else 'ports'}: {got}"
    return text + (f"; then {p.error} (\"{p.error.message}\")" if p.error else "")


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    what = "the ports choreography"
    used = None
    if link.kind == "loopback":
        cases = records("ports", [], Ports, what)
    else:
        cases, used = across(link, what)
    events = []
    for p in cases:
        line = f"{p.case}{' to ' + p.destination if p.destination else ''}: {ports_words(p)}"
        events.append(Event(p.t, line))
        progress(f"  {line}")
    return Result(experiment="ports", ok=judge(cases), settings=RunWith(f"{LOW}-{HIGH}"),
                  facts=Facts(cases=cases), events=tuple(events), link=used)


def across(link: LinkSpec, what: str) -> tuple[tuple[Ports, ...], LinkUsed]:
    """The cases with the clients at the client's end: its port range narrowed from the
    start, its reserved ports set before the reserved case (and nowhere else)."""
    with ends(link, {"net.ipv4.ip_local_port_range": f"{LOW} {HIGH}"}, prefix="ports") as e:
        where = ["--client-host", e.client_host]
        started = time.monotonic()
        cases = agent_records(e, "ports", ["--cases", "main", *where], Ports, what)
        e.set_sysctls("client", {"net.ipv4.ip_local_reserved_ports": RESERVED})
        offset = time.monotonic() - started  # the second agent counts from its own start
        cases += tuple(replace(p, t=round(p.t + offset, 3)) for p in agent_records(
            e, "ports", ["--cases", "reserved", *where], Ports, what))
        return cases, e.used


def destinations(cases: Sequence[Ports]) -> tuple[str, str]:
    """The run's first and second destination ("host:port"), in the order the agent
    used them (FIRST and SECOND when a run has fewer)."""
    seen = list(dict.fromkeys(p.destination for p in cases if p.destination))
    return (seen[0] if seen else FIRST, seen[1] if len(seen) > 1 else SECOND)


def names(cases: Sequence[Ports]) -> tuple[str, str]:
    """The two destinations as a sentence names them: their addresses when they differ
    (loopback: 127.0.0.1, 127.0.0.2), else "address:port" (across a link)."""
    one, two = destinations(cases)
    a, b = one.rsplit(":", 1)[0], two.rsplit(":", 1)[0]
    return (a, b) if a != b else (one, two)


def by_case(cases: Sequence[Ports]) -> dict[tuple[str, str], Ports]:
    """(case, destination) -> its Ports, the destination filed under FIRST or SECOND."""
    one, two = destinations(cases)
    key = {one: FIRST, two: SECOND, "": ""}
    return {(p.case, key.get(p.destination, p.destination)): p for p in cases}


def reserved_left() -> frozenset[int]:
    lo, hi = (int(x) for x in RESERVED.split("-"))
    return RANGE - set(range(lo, hi + 1))


#: (case, destination) -> what it should show: the set of ports, and the error that ended
#: it (None: it was not meant to run out).
EXPECTED: dict[tuple[str, str], tuple[frozenset[int], Ending | None]] = {
    ("connect", FIRST): (EVEN, None),
    ("bind", ""): (ODD, None),
    # bind() takes the port for the socket: the whole range toward one destination, then
    # nothing is left for the other.
    ("bind-then-connect", FIRST): (RANGE, PORT_TAKEN),
    ("bind-then-connect", SECOND): (frozenset(), PORT_TAKEN),
    # With IP_BIND_ADDRESS_NO_PORT connect() chooses per destination: the same ten twice.
    ("bind-address-no-port", FIRST): (RANGE, OUT_OF_PORTS),
    ("bind-address-no-port", SECOND): (RANGE, OUT_OF_PORTS),
    ("socket-range", FIRST): (frozenset(range(SOCKET_RANGE[0], SOCKET_RANGE[1] + 1)),
                              OUT_OF_PORTS),
    ("reserved", FIRST): (reserved_left(), OUT_OF_PORTS),
}


def ending(error: Failed | None) -> Ending | None:
    return None if error is None else (error.call, error.name)


def case_shown(p: Ports | None, key: tuple[str, str]) -> bool:
    """The case got exactly the expected ports, each once, and ended as expected."""
    want, end = EXPECTED[key]
    return (p is not None and len(p.ports) == len(want) and set(p.ports) == want
            and ending(p.error) == end)


def judge(cases: Sequence[Ports]) -> bool:
    """Shown: every case got the ports the kernel's rules give (see EXPECTED)."""
    by = by_case(cases)
    return list(by) == list(EXPECTED) and all(case_shown(by.get(k), k) for k in EXPECTED)
