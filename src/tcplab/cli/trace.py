"""``tcplab trace``: TCP state transitions as the kernel makes them."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import emit_json, note, out

DESCRIPTION = """\
Shows TCP state transitions live, from the kernel's sock:inet_sock_set_state
tracepoint read through tracefs (no BPF toolchain needed), in a private trace
instance with the port filter applied in the kernel; RSTs sent and received,
and with --syscalls the socket calls (socket, bind, listen, accept4, connect,
shutdown, close) of the given processes with their return values (the new
fd, or -EMFILE, -EADDRNOTAVAIL...).

The tracepoint is global to the machine: it shows the connections of every
network namespace (containers included) on that port, not only this one's.
--poll reads the socket table of this network namespace only.

Each line: time, the 4-tuple, old -> new state, the time spent in the old
state, and a note where the kernel hides a step. On exit, a timeline per
connection. The trace instance is removed on exit, Ctrl-C included (exit
status 130 after Ctrl-C or SIGTERM, 0 when --duration ends it).

Needs root (tracefs). Without it, --poll diffs socket-table snapshots keyed
by socket cookie: no privilege, but states shorter than the interval are
missed.
"""

EXAMPLES = """\
examples:
  sudo tcplab trace --port 8080
  sudo tcplab trace --port 8080 --json --duration 10
  sudo tcplab trace --port 8080 --syscalls --pid 4242
  tcplab trace --port 8080 --poll
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="live TCP state transitions from tracefs (or --poll)",
                       description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=common.port, default=0,
                   help="only sockets with this local or remote port")
    p.add_argument("--duration", type=common.seconds, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--syscalls", action="store_true",
                   help="also the socket lifecycle calls of --pid processes")
    p.add_argument("--pid", type=common.positive_int, action="append", default=[],
                   help="with --syscalls: a process (thread id) to follow (repeatable)")
    p.add_argument("--poll", action="store_true",
                   help="no tracefs: diff sock_diag snapshots (no privilege needed)")
    p.add_argument("--interval", type=common.seconds, default=0.02, metavar="S",
                   help="with --poll: seconds between snapshots (default 0.02)")
    common.add_json(p, "one object per transition")
    p.set_defaults(func=run)


def _where(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def run(args: argparse.Namespace) -> int:
    from tcplab.errors import UsageError
    from tcplab.interrupts import StopFlag

    if args.syscalls and not args.pid:
        raise UsageError("--syscalls needs at least one --pid", hint="e.g. --pid 4242")
    # Ctrl-C and SIGTERM only set this flag: the loops below look at it, so no
    # signal can cut the trace instance's removal (or a JSON line) in half.
    stop = StopFlag()
    transitions: list[Any] = []
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None

    def show(t: Any) -> None:
        transitions.append(t)
        if args.json:
            emit_json(t, mono=round(started + t.t, 6))
            return
        ms = "" if t.ms_in_old is None else f"  ({t.ms_in_old:,.3f} ms in {t.old})"
        line = (f"{t.t:10.6f}  {_where(t.saddr, t.sport):>21} > {_where(t.daddr, t.dport):<21}"
                f"  {t.old} -> {t.new}{ms}")
        out(line + (f"  [{t.note}]" if t.note else ""))

    if args.poll:
        _poll(args, started, deadline, show, stop)
    else:
        _trace(args, started, deadline, show, stop)
    if not args.json and transitions:
        out("")
        for line in connection_lines(transitions):
            out(line)
    stop.raise_if_set()  # stopped by a signal: cli/main.py says "interrupted" (130)
    return 0


def _running(deadline: float | None, stop: Any) -> bool:
    return not stop and (deadline is None or time.monotonic() < deadline)


def _poll(args: argparse.Namespace, started: float, deadline: float | None, show: Any,
          stop: Any) -> None:
    from tcplab.observe.poll_trace import PollTracer

    tracer = PollTracer(args.port, started)
    tracer.sample(time.monotonic())  # the baseline: what exists now is not a change
    note(f"polling the socket table every {args.interval * 1000:.0f} ms"
         + (f" for port {args.port}" if args.port else "")
         + " in this network namespace only (states shorter than that are missed); "
         "Ctrl-C stops")
    try:
        while _running(deadline, stop):
            for t in tracer.sample(time.monotonic()):
                show(t)
            time.sleep(args.interval)
    finally:
        tracer.close()


def _trace(args: argparse.Namespace, started: float, deadline: float | None, show: Any,
           stop: Any) -> None:
    from tcplab.kernel.tracefs import Tracker, errno_text
    from tcplab.observe.tracefs import TraceInstance

    if stop:
        return  # stopped while starting: make no instance at all
    inst = TraceInstance(args.port, args.pid if args.syscalls else None)
    try:
        # The first line says what the user may not expect: tracefs is one for
        # the whole machine, not per network namespace.
        note(f"tracing TCP state changes{' on port ' + str(args.port) if args.port else ''} "
             f"in {inst.path}; the tracepoint is global to the machine: it shows every "
             "network namespace's connections"
             + (" on that port" if args.port else "") + "; Ctrl-C stops")
        for name in inst.stale:
            note(f"removed a stale trace instance left by a killed run: {name}")
        tracker = Tracker(started)
        pending: dict[tuple[int, str], dict[str, str]] = {}
        while _running(deadline, stop):
            left = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            for e in inst.events(left):
                if e.event == "inet_sock_set_state":
                    t = tracker.feed(e)
                    if t is not None:
                        show(t)
                elif e.event.startswith("sys_enter_"):
                    pending[(e.pid, e.event[10:])] = e.fields
                elif e.event.startswith("sys_exit_"):
                    call = e.event[9:]
                    argsd = pending.pop((e.pid, call), {})
                    shown = ", ".join(f"{k}={_num(v)}" for k, v in argsd.items()
                                      if k in ("fd", "family", "type", "backlog", "how"))
                    _syscall(args, e, call, shown, errno_text(e.fields["ret"]), started)
                elif e.event in ("tcp_send_reset", "tcp_receive_reset"):
                    _reset(args, e, started)
    finally:
        inst.close()


def _syscall(args: argparse.Namespace, e: Any, call: str, shown: str, ret: str,
             started: float) -> None:
    t = round(e.ts - started, 6)
    if args.json:
        emit_json({"t": t, "mono": round(e.ts, 6), "pid": e.pid, "syscall": call,
                   "args": shown, "ret": ret})
    else:
        out(f"{t:10.6f}  pid {e.pid} {e.task}: {call}({shown}) = {ret}")


def _reset(args: argparse.Namespace, e: Any, started: float) -> None:
    from tcplab.kernel.tracefs import reset_text

    what = reset_text(e.event, e.fields, args.port)
    if what is None:
        return
    t = round(e.ts - started, 6)
    if args.json:
        emit_json({"t": t, "mono": round(e.ts, 6), "rst": e.event.split("_")[1], "what": what})
    else:
        out(f"{t:10.6f}  {what}")


def _num(v: str) -> str:
    """A syscall argument as tracefs printed it (hex, with or without 0x), in decimal."""
    try:
        return str(int(v, 16))
    except ValueError:
        return v


def connection_lines(transitions: list[Any]) -> list[str]:
    """Every connection's transitions together: both ends, in time order."""
    groups: dict[frozenset[tuple[str, int]], list[Any]] = {}
    for t in transitions:
        if t.sport == 0 or t.dport == 0:  # a connect() before its port, or a listener
            continue
        key = frozenset({(t.saddr, t.sport), (t.daddr, t.dport)})
        groups.setdefault(key, []).append(t)
    lines = [f"{len(groups)} connection{'s' if len(groups) != 1 else ''}:"]
    for items in groups.values():
        a = items[0]
        lines.append(f"  {_where(a.saddr, a.sport)} <> {_where(a.daddr, a.dport)}")
        for t in items:
            lines.append(f"    {t.t:10.6f}  {_where(t.saddr, t.sport):>21}  {t.old} -> {t.new}")
    return lines
