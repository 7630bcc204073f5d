"""Nagle's algorithm meets the delayed ACK: ``tcplab experiment nagle``.

A client writes each request in two small pieces (a header, then a body) and
then waits for the reply; the server answers only once the whole request is
in (agents/nagle.py runs both ends). One connection per way of writing:

- ``nagle`` (the default): the body is a second small segment while the
  header's is unacknowledged, so Nagle's algorithm holds it back
  (tcp_nagle_check and tcp_minshall_check, net/ipv4/tcp_output.c); the
  server, with nothing to send yet, delays its ACK (__tcp_ack_snd_check,
  net/ipv4/tcp_input.c) until the delayed-ACK timer fires, after the socket's
  ato: TCP_ATO_MIN (HZ/25: 40 ms, include/net/tcp.h) here. Every request waits;
- ``nodelay``: TCP_NODELAY on the client, each write leaves at once;
- ``one-write``: Nagle on, but header and body in one sendmsg(): one segment,
  nothing is held back, and one packet fewer than with TCP_NODELAY.

The first request of a connection does not stall: the server's socket is in
quick-ACK mode (tcp_in_quickack_mode: icsk_ack.quick set by the first data,
tcp_event_data_recv; the connection not yet "pingpong", the server has sent
nothing) and ACKs the header at once. Its reply makes the connection
interactive (tcp_event_data_sent counts a reply sent within ``ato`` of the last
receive; tcp_pingpong_thresh is 1), and from the second request on its ACKs are
delayed.

It runs on the link it is given (``--link``: loopback or a veth pair, shaped or
not); a full run on loopback also runs on a veth link with DELAY_MS each way,
where the stall is the 40 ms timer plus one more round trip.

Which source: net/ipv4/tcp_input.c read at Linux 6.10-rc1 (tcp_in_quickack_mode,
tcp_incr_quickack, tcp_event_data_recv, __tcp_ack_snd_check); tcp_nagle_check,
tcp_minshall_check, tcp_event_data_sent, tcp_delack_timer_handler and tcp.h's
constants in 5.x and 6.x trees (the same in each), as code search held them, not one
pinned version. This machine runs 6.18; what it does agrees (tcpi_ato 40 ms, the
first request fast and the rest stalled, net.ipv4.tcp_pingpong_thresh 1).

The verdict rests on medians over the requests after the first (``steady``),
with margins a loaded 2-core machine keeps: Nagle's requests wait at least
STALL_MS longer than each fix's, the first request is STALL_MS faster than the
steady ones, and the server's DelayedACKs counter rose for at least half the
steady requests (the kernel's own word that its delayed-ACK timer sent the ACK).
"""

from __future__ import annotations

import contextlib
import select
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tcplab.agents.io import command
from tcplab.agents.nagle import BODY, HEADER, REPLY, WAYS, Accepting, Exchange, Served
from tcplab.errors import ExperimentFailed, NotSupported, PrivilegeError, TcplabError
from tcplab.experiments import result as base
from tcplab.experiments.link import LOOPBACK, LinkSpec, LinkUsed, ends
from tcplab.experiments.result import Event, Progress, say_nothing
from tcplab.net.plan import Shaping
from tcplab.records import RecordError, from_json_line

#: The port the server listens on, in a namespace of the experiment's own.
PORT = 8080
#: The delayed link a full run adds to loopback: one way, each direction.
DELAY_MS = 10.0
#: The least a stall must add: the delayed-ACK timer's minimum is 40 ms
#: (TCP_DELACK_MIN); 10 ms of slack for a loaded machine. Medians only: one request
#: can be slowed by a late wake-up as much as by the timer (a first request took
#: 27.8 ms once on loopback), so the first request (quick-ACK mode) is judged by
#: the kernel's count of delayed ACKs, not by its time.
STALL_MS = 30.0
#: How long the two ends may take, at least (a hang guard, not a time limit): each
#: request takes about 40 ms and two round trips at most; guard() adds those.
GUARD_S = 60.0


def guard(spec: LinkSpec, requests: int) -> float:
    """The hang guard for one round: GUARD_S, plus every request's worst case on this
    link (the timer, with margin, and two round trips of the largest delay)."""
    one_way_s = (spec.shaping.delay_ms + spec.shaping.jitter_ms) / 1000
    return GUARD_S + len(WAYS) * requests * (0.1 + 4 * one_way_s)


@dataclass(frozen=True, slots=True)
class RunWith:
    requests: int  # per connection (per way), the first included
    header: int = HEADER  # bytes of each write
    body: int = BODY
    reply: int = REPLY
    #: The added round on a veth link: its delay each way (None: no such round).
    veth_delay_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Way:
    """One way of writing on one link, as measured."""

    way: str  # one of agents.nagle.WAYS
    first_us: int  # the connection's first request
    steady_us: float  # median of the requests after the first
    max_us: int  # slowest request after the first
    delayed_acks: int  # the server's DelayedACKs rise over this connection
    requests_us: tuple[int, ...]  # every request, in order
    rtt_us: int | None = None  # the client's smoothed RTT (tcpi_rtt) at the end
    server_ato_us: int | None = None  # the server's tcpi_ato at the end


@dataclass(frozen=True, slots=True)
class Round:
    """The ways measured on one link."""

    link: LinkUsed
    ways: tuple[Way, ...]
    shown: bool = False
    #: net.ipv4.tcp_pingpong_thresh at the server's end (None: unreadable).
    pingpong_thresh: int | None = None
    #: Why this round did not run (a veth link this machine or user cannot make).
    skip: str | None = None
    #: Why it ran and failed (an agent's error): never shown.
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    rounds: tuple[Round, ...]  # the link given first; then the delayed link, if added
    used: LinkUsed  # the link given (``--link``), as the first round ran on it


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The nagle experiment's result: rounds per link in its facts, no variants."""


def way_of(x: Exchange, s: Served | None) -> Way:
    rest = x.requests_us[1:] or x.requests_us
    return Way(way=x.way, first_us=x.requests_us[0] if x.requests_us else 0,
               steady_us=float(statistics.median(rest)) if rest else 0.0,
               max_us=max(rest, default=0),
               delayed_acks=s.delayed_acks if s else 0, requests_us=x.requests_us,
               rtt_us=x.rtt_us, server_ato_us=s.ato_us if s else None)


def by_way(r: Round) -> dict[str, Way]:
    return {w.way: w for w in r.ways}


def stall_us(r: Round) -> float | None:
    """How much longer Nagle's requests took than the faster fix's (None: not measured)."""
    ws = by_way(r)
    if "nagle" not in ws or not any(k in ws for k in ("nodelay", "one-write")):
        return None
    best = min(ws[k].steady_us for k in ("nodelay", "one-write") if k in ws)
    return ws["nagle"].steady_us - best


def shortfalls(r: Round) -> list[str]:
    """The checks this round failed, as codes report/prose.py words (empty: shown)."""
    if r.error is not None:
        return ["failed"]
    ws = by_way(r)
    if any(k not in ws for k in WAYS):
        return ["missing"]
    nagle, out = ws["nagle"], []
    margin = STALL_MS * 1000
    for k in ("nodelay", "one-write"):
        if nagle.steady_us - ws[k].steady_us < margin:
            out.append(f"no-stall:{k}")
    if nagle.delayed_acks >= len(nagle.requests_us):
        out.append("first-delayed")  # quick-ACK mode should have answered the first at once
    if 2 * nagle.delayed_acks < len(nagle.requests_us) - 1:
        out.append("few-delayed-acks")
    return out


def judge(rounds: Sequence[Round]) -> bool:
    """Shown: every round that ran was shown, and the first (the link given) ran."""
    ran = [r for r in rounds if r.skip is None]
    return bool(ran) and rounds[0].skip is None and all(r.shown for r in ran)


def read_records(proc: subprocess.Popen[bytes], what: str, timeout: float) -> list[bytes]:
    """The rest of a child's stdout, once it exits (within ``timeout`` s)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExperimentFailed(f"the nagle {what} did not finish in {timeout:.0f} s",
                               hint="run again with --debug") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"the nagle {what} exited {proc.returncode}: "
                               f"{lines[-1] if lines else 'no output'}",
                               hint="run again with --debug; 'tcplab check' says what "
                               "works here")
    return out.splitlines()


def measure(spec: LinkSpec, requests: int) -> Round:
    """One round: the server at one end, the client at the other, every way in turn."""
    wait = guard(spec, requests)
    with ends(spec, prefix="nagle") as e:
        server = e.server(command("nagle", "server", "--port", str(PORT),
                                  "--connections", str(len(WAYS))),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with contextlib.ExitStack() as stack:
            stack.callback(_stop, server)
            assert server.stdout is not None
            # The Accepting line: it accepts now. A server that neither says so nor
            # exits within the guard is a hang, said as one.
            if not select.select([server.stdout], [], [], wait)[0]:
                raise ExperimentFailed(f"the nagle server did not start in {wait:.0f} s",
                                       hint="run again with --debug")
            first = server.stdout.readline()
            try:
                accepting = from_json_line(Accepting, first)
            except RecordError:
                rest = read_records(server, "server", wait)
                raise ExperimentFailed("the nagle server did not start listening: "
                                       + (first or b"".join(rest)).decode(errors="replace")[:200],
                                       hint="run again with --debug") from None
            client = e.client(command("nagle", "client", "--host", e.server_host,
                                      "--port", str(PORT), "--requests", str(requests)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            stack.callback(_stop, client)
            lines = read_records(client, "client", wait)
            served_lines = read_records(server, "server", wait)
        try:
            exchanges = [from_json_line(Exchange, x) for x in lines]
            served = [from_json_line(Served, x) for x in served_lines]
        except RecordError as exc:
            raise ExperimentFailed(f"the nagle agent wrote something else than its records: "
                                   f"{exc}", hint="this is a bug in tcplab: report it") from None
        # The server serves the connections in the client's order, one at a time.
        ways = tuple(way_of(x, served[i] if i < len(served) else None)
                     for i, x in enumerate(exchanges))
        r = Round(link=e.used, ways=ways, pingpong_thresh=accepting.pingpong_thresh)
    return replace(r, shown=not shortfalls(r))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def round_line(r: Round) -> str:
    """A round in a line for the timeline: each way's steady median, and the stall."""
    if r.skip is not None or r.error is not None:
        return (f"{r.link.words()}: skipped: {r.skip}" if r.skip is not None
                else f"{r.link.words()}: failed: {r.error}")
    parts = [f"{w.way} {w.steady_us / 1000:.2f} ms (first {w.first_us / 1000:.2f} ms, "
             f"{w.delayed_acks} delayed ACKs)" for w in r.ways]
    return f"{r.link.words()}: " + ", ".join(parts)


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    requests = 12 if quick else 40
    started = time.monotonic()
    events: list[Event] = []

    def mark(what: str) -> None:
        events.append(Event(round(time.monotonic() - started, 3), what))
        progress(f"  {what}")

    rounds = [measure(link, requests)]
    mark(round_line(rounds[0]))
    delayed = not quick and link.kind == "loopback"
    if delayed:
        spec = LinkSpec(kind="veth", shaping=Shaping(delay_ms=DELAY_MS))
        link_used = LinkUsed(kind="veth", shaping=spec.shaping.words())
        try:
            rounds.append(measure(spec, max(requests // 2, 10)))
        except ExperimentFailed as exc:  # it ran and failed: said, and not shown
            rounds.append(Round(link=link_used, ways=(), error=_reason(exc)))
        except (NotSupported, PrivilegeError) as exc:
            # The link given ran; a veth link this user or kernel cannot make is said.
            rounds.append(Round(link=link_used, ways=(), skip=_reason(exc)))
        mark(round_line(rounds[-1]))
    return Result(experiment="nagle", ok=judge(rounds),
                  settings=RunWith(requests=requests,
                                   veth_delay_ms=DELAY_MS if delayed else None),
                  facts=Facts(rounds=tuple(rounds), used=rounds[0].link),
                  events=tuple(events), link=rounds[0].link)


def _reason(exc: TcplabError) -> str:
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
