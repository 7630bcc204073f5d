"""One connection's whole life, from three sides at once: ``tcplab experiment handshake``.

In a private namespace, a choreography (``python -m tcplab.agents.handshake``)
makes one connection slowly, step by step: the server's socket/bind/listen,
the client's socket/connect, accept, one echo, the client's close, the
server's close; then a second connection closed with SO_LINGER 0 (RST).
Meanwhile ``tcplab trace --syscalls`` records its socket calls and every
state change (tracefs is global, filtered by a port only this run uses), and
``tcplab capture`` (inside the namespace) its packets. The three are merged
on one clock (CLOCK_MONOTONIC; packet timestamps are moved from the wall
clock). Needs root: tracefs and AF_PACKET.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tcplab.agents.handshake import Done, Ready
from tcplab.agents.io import command, tcplab
from tcplab.experiments import result as base
from tcplab.experiments.children import terminate
from tcplab.experiments.link import LOOPBACK, LinkSpec, ends
from tcplab.experiments.result import Event
from tcplab.interrupts import deferred, spawn
from tcplab.kernel.tracefs import Transition
from tcplab.observe.nsutil import die_with_parent
from tcplab.records import from_json, from_json_line


@dataclass(frozen=True, slots=True)
class Arrow:
    """One packet of the sequence diagram."""

    t: float  # seconds since the first packet or event
    from_: str  # "client" or "server" (JSON: "from")
    word: str  # the lab's word: SYN, SYN-ACK, ACK, FIN, RST, ...
    flags: str  # tcpdump's: [S.], [F.], ...


@dataclass(frozen=True, slots=True)
class RunWith:
    """Nothing to choose: the choreography is fixed (its pause follows --quick)."""


@dataclass(frozen=True, slots=True)
class Facts:
    syn: int
    syn_ack: int
    fin: int
    rst: int
    packets: int
    syscalls: int  # socket calls traced
    transitions: int  # state changes traced
    time_wait_left_ms: tuple[int, ...]  # the client sockets' TIME_WAIT left at the end
    sequence: tuple[Arrow, ...]
    #: The first SYN to its SYN-ACK, as captured at the client's end: one round trip.
    syn_rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The handshake experiment's result: counts, the sequence, the merged timeline."""


def _reader(proc: subprocess.Popen[bytes], into: list[dict[str, Any]],
            ready: threading.Event, word: bytes) -> None:
    def err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if word in line:
                ready.set()

    threading.Thread(target=err, daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            into.append(json.loads(line))
        except ValueError:
            pass


def run(quick: bool = False, progress: Callable[[str], None] = lambda _: None,
        link: LinkSpec = LOOPBACK) -> Result:
    from tcplab.errors import NotSupported
    from tcplab.experiments.probe import raw_packets, tracefs

    for check in (tracefs(), raw_packets()):
        if not check.ok:
            raise NotSupported(f"the handshake experiment needs {check.name}: {check.detail}",
                               hint=check.fix)
    rtt = link.rtt_s
    pause = (0.1 if quick else 0.3) + 2 * rtt  # every step's packets arrive before the next
    port = random.randint(20000, 29999)  # tracing is global: a port only this run uses
    packets: list[dict[str, Any]] = []
    traced: list[dict[str, Any]] = []
    tracer: list[subprocess.Popen[bytes]] = []
    try:
        with ends(link, prefix="hs") as e:
            used = e.used
            cap_ready, trace_ready = threading.Event(), threading.Event()
            # Captured at the client's end: on a delayed link a SYN-ACK comes one
            # round trip after its SYN there.
            cap = e.client(tcplab("capture", "--port", str(port), "--json",
                                   "--interface", e.used.client_interface),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            threading.Thread(target=_reader, args=(cap, packets, cap_ready, b"capturing"),
                             daemon=True).start()
            dance = e.server(command("handshake", str(port), str(pause),
                                     "--host", e.server_host, *e.netns_args()),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert dance.stdout is not None and dance.stdin is not None
            pid = from_json_line(Ready, dance.stdout.readline()).pid
            # The tracer runs outside the sandbox, whose close() may SIGKILL: a killed
            # tracer would leave its trace instance. It is stopped by stop_tracer().
            with deferred():
                tracer.append(spawn(
                    tcplab("trace", "--port", str(port), "--syscalls", "--pid", str(pid),
                           "--json"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                    # if we are SIGKILLed, SIGTERM makes it remove its instance
                    preexec_fn=lambda: die_with_parent(signal.SIGTERM)))
            threading.Thread(target=_reader, args=(tracer[0], traced, trace_ready, b"tracing"),
                             daemon=True).start()
            if not (cap_ready.wait(20) and trace_ready.wait(20)):
                raise NotSupported("tracing or capture did not start",
                                   hint="run 'tcplab check' as root")
            progress(f"handshake: tracing and capturing port {port}; one connection, slowly")
            wall_minus_mono = time.time() - time.monotonic()
            dance.stdin.write(b"go\n")
            dance.stdin.flush()
            from_json_line(Done, dance.stdout.readline())
            time.sleep(0.3 + 2 * rtt)
            tw = e.run("client", tcplab("sockets", "--port", str(port), "--state",
                                         "time-wait", "--json"),
                       stdout=subprocess.PIPE).stdout
            stop_tracer(tracer[0])
            terminate(cap, grace=10)
    finally:
        if tracer:
            stop_tracer(tracer[0])
    time.sleep(0.2)
    r = _merge(packets, traced, wall_minus_mono, json.loads(tw or b'{"sockets": []}'))
    return replace(r, link=used)


def stop_tracer(proc: subprocess.Popen[bytes], grace: float = 4.0) -> None:
    """SIGTERM the tracer (it removes its trace instance and exits); if it does not
    go within ``grace`` s, SIGKILL it and remove its instance ourselves. Not cut by
    SIGINT or SIGTERM."""
    with deferred():
        if proc.returncode is not None:
            return
        terminate(proc, grace=grace)
        if proc.returncode == -signal.SIGKILL:
            subprocess.run(command("tracefs_probe", "--remove-stale"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                           check=False, process_group=0)


def _merge(packets: list[dict[str, Any]], traced: list[dict[str, Any]], offset: float,
           tw: dict[str, Any]) -> Result:
    rows: list[tuple[float, str, str]] = []
    for p in packets:
        rows.append((p["t"] - offset, "packet",
                     f"{p['src']}:{p['sport']} > {p['dst']}:{p['dport']} [{p['flags']}] "
                     f"{p['word']}" + (f" ({p['length']} B)" if p["length"] else "")))
    changes: list[Transition] = []
    for e in traced:
        if "syscall" in e:
            rows.append((e["mono"], "syscall", f"{e['syscall']}({e['args']}) = {e['ret']}"))
        elif "rst" in e:
            rows.append((e["mono"], "rst", e["what"]))
        elif "old" in e:
            c = from_json(Transition, e)  # `tcplab trace --json`: a Transition and its mono
            changes.append(c)
            rows.append((e["mono"], "state", f"{c.saddr}:{c.sport} {c.old} -> "
                         f"{c.new}" + (f"  [{c.note}]" if c.note else "")))
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    server_port = next((p["dport"] for p in packets if p["word"] == "SYN"), 0)
    sequence = tuple(Arrow(round(p["t"] - offset - t0, 6),
                           "server" if p["sport"] == server_port else "client",
                           p["word"], p["flags"])
                     for p in sorted(packets, key=lambda p: p["t"]))
    events = [Event(round(t - t0, 6), f"{kind:8} {text}") for t, kind, text in rows]
    left = tuple(s.get("expires_ms") for s in tw.get("sockets", []) if s.get("expires_ms"))
    if left:
        events.append(Event(events[-1].t if events else 0.0,
                            f"{'timer':8} the first client socket sits in TIME_WAIT: "
                            f"{left[0] / 1000:.1f} s of its 60 s left"))
    syn_t = [a.t for a in sequence if a.word == "SYN"]
    ack_t = [a.t for a in sequence if a.word == "SYN-ACK"]
    syn_rtt = round((ack_t[0] - syn_t[0]) * 1000, 3) if syn_t and ack_t else None
    if syn_rtt is not None:
        events.append(Event(round(ack_t[0], 6), f"{'rtt':8} SYN to SYN-ACK at the client: "
                            f"{syn_rtt:.3f} ms, one round trip"))
        events.sort(key=lambda e: e.t)
    words = [p["word"] for p in packets]
    states = {(c.old, c.new) for c in changes}
    facts = Facts(
        syn=words.count("SYN"), syn_ack=words.count("SYN-ACK"),
        fin=sum(1 for w in words if w.startswith("FIN")),
        rst=words.count("RST"), packets=len(packets),
        syscalls=sum(1 for e in traced if "syscall" in e),
        transitions=len(changes), time_wait_left_ms=left, sequence=sequence,
        syn_rtt_ms=syn_rtt,
    )
    return Result(experiment="handshake", ok=judge(facts, states), settings=RunWith(),
                  facts=facts, events=tuple(events))


#: The state changes one connection's life must show (the RST close adds none).
WANTED = {("SYN_SENT", "ESTABLISHED"), ("SYN_RECV", "ESTABLISHED"),
          ("ESTABLISHED", "FIN_WAIT1"), ("FIN_WAIT1", "FIN_WAIT2"),
          ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK")}


def judge(facts: Facts, states: set[tuple[str, str]]) -> bool:
    """Shown: both connections' handshakes, the first one's two FINs, the second's RST,
    every transition of WANTED, and the socket calls traced."""
    return (facts.syn == 2 and facts.syn_ack == 2 and facts.fin == 2 and facts.rst >= 1
            and states >= WANTED and facts.syscalls > 0)
