"""What ``tcplab live`` shows, as events: state counts, transitions, notable events.

One ``LiveSource`` reads the kernel for one port (of one network namespace) and
turns what it sees into plain dicts, the JSON lines a recording holds and the
page draws:

- ``{"kind": "counts", "t": 1.25, "states": {"ESTABLISHED": 3, ...}}``: every
  interval, from a sock_diag dump (SocketTable.count: every state, zero
  included);
- ``{"kind": "edges", "t": ..., "edges": {"SYN_SENT>ESTABLISHED": 120, ...}}``:
  every interval, how many sockets took each edge in it (the page lights the
  edges and shows their rate), and at most SHOWN of those transitions one by one:
  ``{"kind": "transition", "t": ..., "old": "SYN_SENT", "new": "ESTABLISHED",
  "saddr", "sport", "daddr", "dport", "ms_in_old"}`` (a port bomb makes tens of
  thousands a second: the page, its stream and a recording stay bounded). As
  root they come from the
  ``sock:inet_sock_set_state`` tracepoint (a trace instance of its own, filtered
  by port in the kernel; machine-wide, so a NamespaceFilter keeps the followed
  namespace's, and the meta event says how); otherwise from sock_diag
  snapshots (observe.poll_trace), which miss a state shorter than the interval;
- ``{"kind": "event", "t": ..., "text": "RST sent 127.0.0.1:8080 > ..."}``; as root
  also each thread's first connect() that fails with EADDRNOTAVAIL and first
  accept() with EMFILE or ENFILE, verbatim (observe.tracefs.FAILURES: the
  syscall's return carries no address: any port, a thread of the namespace),
  then how many more each interval;
- one ``{"kind": "meta", ...}`` first: port, namespace, source, interval, and
  the words the page shows about what it can miss.

``t`` is seconds since the source started (time.monotonic; the trace clock is
set to mono, so both agree).
"""

from __future__ import annotations

import os
import time
from typing import Any

from tcplab.errors import errno_name
from tcplab.kernel import tcp_states
from tcplab.observe.sockets import SocketTable
from tcplab.words import plural

Event = dict[str, Any]
#: A connection's two ends, (address, port) each, in a fixed order (pair_ends).
Ends = tuple[tuple[str, int], tuple[str, int]]

#: Transitions, and events, sent one by one per interval; the rest are counted.
SHOWN = 20

#: The page's words for each source: what it sees and what it can miss.
SOURCE_WORDS = {
    "tracepoint": "transitions from the kernel's sock:inet_sock_set_state tracepoint: every "
                  "change, as it happens; a failed connect() (EADDRNOTAVAIL) or accept() "
                  "(EMFILE, ENFILE) of a process in this namespace; ",
    "poll": "transitions from sock_diag snapshots every {interval:g} s: a state shorter "
            "than that (the handshake's SYN_SENT and SYN_RECV, on loopback) can be missed; "
            "failed connect() and accept() calls are not seen; run as root for the "
            "tracepoints",
}


class LiveSource:
    """Counts every ``interval`` seconds, transitions as they come (see module)."""

    def __init__(self, port: int, netns: str | None = None, interval: float = 0.5,
                 tracepoint: bool | None = None, ladder: bool | None = None,
                 keep: NamespaceFilter | None = None) -> None:
        """``keep``: which of the tracepoint's events (kernel.tracefs.TraceEvent) to
        keep (a NamespaceFilter); None: this namespace's (``netns``, else ours)."""
        self.port = port
        self._keep = keep
        self.netns = netns
        self.interval = interval
        self.start = time.monotonic()
        self.table = SocketTable(netns=netns)
        self._next_counts = self.start
        self._trace: Any = None
        self._tracker: Any = None
        self._poll: Any = None
        self._first: set[tuple[str, int, int]] = set()  # (call, errno, pid) printed
        self._more: dict[tuple[str, int], int] = {}  # (call, errno) -> not printed, this step
        self._lost = 0  # the trace's lost events, said so far
        self._held: list[Any] = []  # tracepoint events a NamespaceFilter decides on
        self.why_poll: str | None = None
        want_trace = os.geteuid() == 0 if tracepoint is None else tracepoint
        if want_trace:
            try:
                from tcplab.kernel.tracefs import Tracker
                from tcplab.observe.tracefs import TraceInstance

                if keep is None:  # the tracepoints are the machine's: this namespace's kept
                    from tcplab.observe.netns import entered

                    with entered(netns):
                        self._keep = NamespaceFilter({os.stat("/proc/thread-self/ns/net")
                                                      .st_ino})
                self._trace = TraceInstance(port, failures=True, buffer_kb=8192)
                self._tracker = Tracker(self.start)
            except Exception as exc:  # no tracefs, no privilege: poll instead, and say why
                self.why_poll = str(getattr(exc, "message", None) or exc)
                self._trace = None
        if self._trace is None:
            from tcplab.observe.poll_trace import PollTracer

            self._poll = PollTracer(port, self.start, netns=netns)
        from tcplab.observe.ladder import Ladder  # the ladder's packets and timers

        self.ladder = Ladder(port, netns, self.start, self.table,
                             capture=True if ladder is None else ladder)

    @property
    def source(self) -> str:
        return "tracepoint" if self._trace is not None else "poll"

    def meta(self) -> Event:
        words = SOURCE_WORDS[self.source].format(interval=self.interval)
        if self.source == "tracepoint":
            words += NamespaceFilter.WORDS
        if self.why_poll:
            words += f" (the tracepoint could not be used: {self.why_poll})"
        return {"kind": "meta", "t": 0.0, "port": self.port, "netns": self.netns,
                "source": self.source, "interval": self.interval, "words": words,
                "states": list(tcp_states.STATE_NAMES), "ladder": self.ladder.words}

    def close(self) -> None:
        self.ladder.close()
        self.table.close()
        if self._trace is not None:
            self._trace.close()
        if self._poll is not None:
            self._poll.close()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> Event:
        c = self.table.state_counts(self.port)
        return {"kind": "counts", "t": round(time.monotonic() - self.start, 3),
                "states": c.states, "total": c.total}

    def step(self) -> list[Event]:
        """What happened until the next count is due (at most one interval): the
        edges taken, the first SHOWN transitions and events, then the counts."""
        seen: list[Event] = []
        while True:
            left = self._next_counts - time.monotonic()
            if left <= 0:
                break
            if self._trace is not None:
                seen += self._traced(left)
            else:
                time.sleep(left)
        if self._poll is not None:
            seen += [_transition(t) for t in self._poll.sample(time.monotonic())]
        if self._held:  # a NamespaceFilter's: decided with the interval's whole view
            assert self._keep is not None
            kept = self._keep.settle(self._held, self.present_ends())
            self._held = []
            seen += [x for e in kept if (x := self._convert(e)) is not None]
        now = round(time.monotonic() - self.start, 3)
        edges: dict[str, int] = {}
        for ev in seen:
            if ev["kind"] == "transition":
                key = f"{_state(ev['old'])}>{_state(ev['new'])}"
                edges[key] = edges.get(key, 0) + 1
        shown = [ev for ev in seen if ev["kind"] == "transition"][:SHOWN]
        events = [ev for ev in seen if ev["kind"] == "event"]
        out = shown + events[:SHOWN]
        if len(events) > SHOWN:
            out.append({"kind": "event", "t": now,
                        "text": f"and {len(events) - SHOWN} more in {self.interval:g} s"})
        for (call, code), n in self._more.items():
            out.append({"kind": "event", "t": now,
                        "text": f"{call}() failed with {errno_name(code)} "
                                f"{plural(n, 'more time')} in {self.interval:g} s"})
        self._more.clear()
        if self._trace is not None and self._trace.lost > self._lost:
            n, self._lost = self._trace.lost - self._lost, self._trace.lost
            out.append({"kind": "event", "t": now,
                        "text": f"the kernel's trace buffer dropped {plural(n, 'event')} in "
                                f"{self.interval:g} s (this reader fell behind): the edges' "
                                "rates are short of the truth; the counts are whole"})
        out += self.ladder.step(seen)
        if edges:
            out.append({"kind": "edges", "t": now, "edges": edges})
        # In time order: the page keeps each event once by its time (a reconnected
        # WebSocket sends its history again), so one out of order would be lost
        # (the ladder's timers are read after ``now``, and a page lost the edges).
        out.sort(key=lambda e: e["t"])
        out.append(self.counts())
        self._next_counts += self.interval
        if self._next_counts < time.monotonic():  # fell behind (a loaded machine)
            self._next_counts = time.monotonic() + self.interval
        return out

    def present_ends(self) -> set[Ends]:
        """The two ends of every socket in the namespace now (NamespaceFilter.settle)."""
        return {pair_ends(x.src, x.sport, x.dst, x.dport) for x in self.table.sockets(self.port)}

    def _traced(self, timeout: float) -> list[Event]:
        if self._keep is not None:  # held until the interval ends (step)
            self._held += self._trace.events(timeout)
            return []
        return [x for e in self._trace.events(timeout) if (x := self._convert(e)) is not None]

    def _convert(self, e: Any) -> Event | None:
        """One tracepoint event as the page's: a transition, a failure, a reset."""
        from tcplab.kernel.tracefs import reset_text

        if e.event == "inet_sock_set_state":
            t = self._tracker.feed(e)
            return None if t is None else _transition(t)
        if e.event.startswith("sys_exit_"):
            return self._failure(e)
        if e.event in ("tcp_send_reset", "tcp_receive_reset"):
            text = reset_text(e.event, e.fields, self.port)
            if text:
                return {"kind": "event", "t": round(e.ts - self.start, 3), "text": text}
        return None


    def _failure(self, e: Any) -> Event | None:
        """A thread's first failure of each kind, verbatim (the C library's words, as
        Python prints an OSError); later ones are counted, said once an interval."""
        from tcplab.kernel.tracefs import ret_value

        call, code = e.event.removeprefix("sys_exit_"), -ret_value(e.fields.get("ret", "0"))
        if code <= 0:
            return None
        first = (call, code, e.pid)
        if first in self._first or len(self._first) >= 10_000:
            self._more[call, code] = self._more.get((call, code), 0) + 1
            return None
        self._first.add(first)
        return {"kind": "event", "t": round(e.ts - self.start, 3),
                "text": f"{call}() failed: [Errno {code}] {errno_name(code)}: "
                        f"{os.strerror(code)} (pid {e.pid}, {e.task}: its first)"}


class NamespaceFilter:
    """Which of the machine-wide tracepoints' events are those of a few network
    namespaces' sockets (the tracepoints carry no namespace).

    An event is kept when it ran in a task's own context (not an interrupt's: the
    trace line's irq-info says) and that thread is in one of them (its
    /proc/TID/ns/net): connect(), close(), a failed syscall. Work done in softirq
    (most of TCP's: a segment's arrival) runs in whatever task the CPU had, often
    the sender, sometimes another namespace's process or ksoftirqd (measured
    here: a bomb's FIN_WAIT1 -> FIN_WAIT2 -> CLOSE ran in ksoftirqd for 419 of
    1,000 connections, and another namespace's handshakes ran in an experiment's
    thread). Those are kept by the connection: when one of its events was kept by
    its thread (in the interval, before or after it: ``settle`` decides on an
    interval's events together) or when the namespaces hold a socket with its two
    ends at the interval's end (a connection that went by leaves its TIME_WAIT),
    by the two ends' addresses and ports. So another namespace's connection with
    the same two ends at the same time can show too; the words say so."""

    WORDS = ("the tracepoints are the whole machine's: a change is kept when a thread of "
             "the namespace followed made it, or it is of a connection such a change was "
             "or whose socket is in the namespace at the interval's end (by its addresses "
             "and ports: another namespace's connection with the same four at the same "
             "time would show too)")

    def __init__(self, inodes: set[int], limit: int = 100_000) -> None:
        self.inodes = inodes
        self.limit = limit
        self._tids: dict[int, bool] = {}
        self._known: dict[Ends, None] = {}

    def __call__(self, e: Any) -> bool:
        """One event on its own, with what was learned so far (settle decides
        better, with the whole interval)."""
        return bool(self.settle([e], set()))

    def _by_thread(self, e: Any) -> bool:
        """Run by a thread of the namespaces, in its own context."""
        return e.in_interrupt is False and self._ours(e.pid)

    def settle(self, events: list[Any], present: set[Ends]) -> list[Any]:
        """An interval's events, in their order, those of the namespaces kept;
        ``present``: the two ends of every socket they hold at its end."""
        ours = [self._by_thread(e) for e in events]
        ends = [_ends(e) for e in events]
        for mine, x in zip(ours, ends, strict=True):
            if mine and x is not None and x[0][1] and x[1][1]:  # sport=0: connect() early
                self._learn(x)
        return [e for e, mine, x in zip(events, ours, ends, strict=True)
                if mine or (x is not None and (x in self._known or x in present))]

    def _learn(self, ends: Ends) -> None:
        self._known[ends] = None
        if len(self._known) > self.limit:
            del self._known[next(iter(self._known))]  # the oldest

    def _ours(self, tid: int) -> bool:
        if tid <= 0:
            return False
        hit = self._tids.get(tid)
        if hit is None:
            try:
                hit = os.stat(f"/proc/{tid}/ns/net").st_ino in self.inodes
            except OSError:  # gone already
                return False
            if len(self._tids) >= self.limit:
                self._tids.clear()  # tids are reused in time: forget them all at once
            self._tids[tid] = hit
        return hit


def pair_ends(a: str, ap: int, b: str, bp: int) -> Ends:
    """A connection's two ends in a fixed order: the same for both of its sockets."""
    x, y = (a, ap), (b, bp)
    return (x, y) if x <= y else (y, x)


def _ends(e: Any) -> Ends | None:
    """A TCP event's two ends, in a fixed order (the same for both sockets of a
    connection); None for an event with no addresses (a syscall's exit)."""
    from tcplab.kernel.tracefs import field_address

    f = e.fields
    if e.event == "tcp_send_reset":  # src=127.0.0.1:8080 dest=[::1]:41000
        (a, _, ap), (b, _, bp) = f.get("src", "").rpartition(":"), \
            f.get("dest", "").rpartition(":")
        x, y = (a.strip("[]"), _port(ap)), (b.strip("[]"), _port(bp))
    elif "sport" in f:
        x = (field_address(f, "saddr", "saddrv6"), _port(f["sport"]))
        y = (field_address(f, "daddr", "daddrv6"), _port(f.get("dport", "0")))
    else:
        return None
    return pair_ends(*x, *y)


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _state(name: str) -> str:
    """A transition's end as the diagram names it: a socket that appears or
    disappears between two snapshots (poll_trace's "(new)", "(gone)") is CLOSE."""
    return "CLOSE" if name in ("(new)", "(gone)") else name


def _transition(t: Any) -> Event:
    # to the microsecond, as the ladder's packets: a handshake on lo takes tens of them
    return {"kind": "transition", "t": round(t.t, 6), "old": t.old, "new": t.new,
            "saddr": t.saddr, "sport": t.sport, "daddr": t.daddr, "dport": t.dport,
            "ms_in_old": t.ms_in_old}
