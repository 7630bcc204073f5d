"""What ``experiment --live`` / ``--record`` shows, measured *inside* an experiment's
namespace: ``python -m tcplab.agents.live [--interval S] [--also-netns PATH]``.

It runs an observe.live.LiveSource there and writes its events (plain dicts, see
that module) as JSON lines. The namespace is the experiment's own, so it follows
every port (port 0): every TCP socket in it is the experiment's. Transitions come
from sock_diag snapshots; with ``--tracepoint`` (``experiment --live`` as root)
from the kernel's tracepoints instead, which are the whole machine's: an
observe.live.NamespaceFilter keeps this namespace's (and --also-netns's). Across a
link (``--link veth``) it runs at the server's end and ``--also-netns`` adds the
client's end, counts and transitions, so the counts are the connection's two
ends, as in one namespace (the sampler agent does the same).

The first line is the meta event, with ``mono``: CLOCK_MONOTONIC when the source
started (its ``t`` count from there), so the parent puts every namespace of a run
on one clock. On SIGTERM (the experiment is over, its namespace about to go) it
writes one last count and exits: the recording ends with what the namespace held
last, the plateau an experiment reports (a TIME_WAIT peak, CLOSE_WAIT).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from tcplab.observe.live import Ends, Event, LiveSource, NamespaceFilter, pair_ends
from tcplab.observe.poll_trace import PollTracer
from tcplab.observe.sockets import SocketTable

WORDS = ("every TCP socket of the experiment's own network namespace{ends}: counts from "
         "sock_diag every {interval:g} s; transitions from sock_diag snapshots, so a state "
         "shorter than that (the handshake's SYN_SENT and SYN_RECV, on loopback) can be "
         "missed")
TRACE_WORDS = ("every TCP socket of the experiment's own network namespace{ends}: counts "
               "from sock_diag every {interval:g} s; transitions as they happen, from the "
               "kernel's sock:inet_sock_set_state tracepoint, with resets and failed "
               "connect() and accept() calls; " + NamespaceFilter.WORDS)


class _Polls:
    """Several namespaces' PollTracers as one (LiveSource calls sample and close)."""

    def __init__(self, tracers: list[PollTracer]) -> None:
        self.tracers = tracers

    def sample(self, now: float) -> list[Any]:
        return [t for tracer in self.tracers for t in tracer.sample(now)]

    def close(self) -> None:
        for tracer in self.tracers:
            tracer.close()


class Source(LiveSource):
    """A LiveSource over this namespace and ``others`` (the other end of a link)."""

    def __init__(self, interval: float, others: list[str], tracepoint: bool = False) -> None:
        keep = None
        if tracepoint:
            keep = NamespaceFilter({os.stat(path).st_ino
                                    for path in ["/proc/self/ns/net", *others]})
        super().__init__(0, None, interval, tracepoint=tracepoint, keep=keep)
        self.paths = others
        self.others = [SocketTable(netns=path) for path in others]
        if self._poll is not None:
            self._poll = _Polls([self._poll, *(PollTracer(0, self.start, netns=path)
                                               for path in others)])
        both = " (both ends of the link: the client's namespace and the server's)"
        words = TRACE_WORDS if self.source == "tracepoint" else WORDS
        self.words = words.format(ends=both if others else "", interval=interval)
        if self.why_poll:
            self.words += f" (the tracepoint could not be used: {self.why_poll})"

    def meta(self) -> Event:
        return {**super().meta(), "words": self.words, "mono": self.start}

    def present_ends(self) -> set[Ends]:
        return super().present_ends().union(*(
            {pair_ends(x.src, x.sport, x.dst, x.dport) for x in table.sockets(0)}
            for table in self.others))

    def counts(self) -> Event:
        ev = super().counts()
        for table in self.others:
            c = table.state_counts(0)
            for state, n in c.states.items():
                ev["states"][state] = ev["states"].get(state, 0) + n
            ev["total"] += c.total
        return ev

    def __enter__(self) -> Source:
        return self

    def last_counts(self) -> Event:
        """The counts on SIGTERM, through new netlink sockets: SIGTERM may have cut a
        dump short, and a socket with a dump under way answers a new one with EBUSY."""
        for table in (self.table, *self.others):
            table.close()
        self.table = SocketTable()
        self.others = [SocketTable(netns=path) for path in self.paths]
        return self.counts()

    def close(self) -> None:
        super().close()
        for table in self.others:
            table.close()


def _write(events: list[Event]) -> None:
    sys.stdout.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.live",
                                description="Write live events (JSON lines) every interval.")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--also-netns", action="append", default=[], metavar="PATH",
                   help="also follow this network namespace (the other end of a link)")
    p.add_argument("--tracepoint", action="store_true",
                   help="transitions from the kernel's tracepoints (root), this "
                   "namespace's kept; else from sock_diag snapshots")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Source(args.interval, args.also_netns, args.tracepoint) as source:
        try:
            _write([source.meta()])
            while True:
                _write(source.step())
        except BrokenPipeError:
            return 0
        except SystemExit:
            # SIGTERM: the last count, what the namespace holds as the experiment ends.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                _write([source.last_counts()])
            except BrokenPipeError:
                pass
            return 0


if __name__ == "__main__":
    raise SystemExit(main())

