"""Retransmissions across a delayed link: ``tcplab experiment retransmit``.

In a temporary tcplab net (client and server namespaces, a router with the
delay line between them), three children (agents/retransmit.py) do the work:
the server adds nftables rules in its own namespace that drop (1) every SYN
from one client port, (2) the first copy of one segment in the middle of a
burst and (3) the first two copies of a burst's last segment, and listens; the
client, which captures its own veth, connects from the black-holed port until
connect() fails, then sends one burst per data case; as root a tracer outside
the net records tcp:tcp_retransmit_skb for the port (tracefs is global, and
root's). The experiment puts packets and trace events on one clock
(CLOCK_MONOTONIC) and judges them against the kernel's rules:

* SYN: the connect()'s SYNs leave at the times ``syn_schedule`` computes from
  tcp_syn_retries and tcp_syn_linear_timeouts (net/ipv4/tcp_timer.c), and
  connect() fails with ETIMEDOUT when it says;
* middle: the lost segment is sent again about one round trip later, when the
  later segments' duplicate ACKs with SACK blocks come back (TcpExt
  TCPFastRetrans), with no timeout;
* tail: nothing comes back to show the loss; the copy that finally gets
  through is sent by the retransmission timer (TcpExt TCPTimeouts), at least
  TCP_RTO_MIN (200 ms) after the copy before it.

The link needs a round trip to show one: ``--link loopback`` (the default of
``tcplab experiment``) runs on a veth link with DEFAULT_DELAY_MS each way
instead, and so does an unshaped veth link; the result says so.
"""

from __future__ import annotations

import errno
import random
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tcplab.agents.io import command
from tcplab.agents.retransmit import CASES, Case, Ready, Retransmitted, Seen, SynTry
from tcplab.errors import ExperimentFailed, NotSupported, PrivilegeError
from tcplab.experiments import result as base
from tcplab.experiments.children import terminate
from tcplab.experiments.link import LOOPBACK, Ends, LinkSpec, LinkUsed
from tcplab.experiments.result import Event, Progress, say_nothing
from tcplab.interrupts import deferred
from tcplab.net.plan import CLIENT_IF
from tcplab.records import RecordError, from_json_line

#: One-way delay when the asked link has none: a 40 ms round trip, well apart
#: from TCP_RTO_MIN (200 ms, include/net/tcp.h) and from the delay line's
#: error (tenths of a millisecond, bench/results.md).
DEFAULT_DELAY_MS = 20.0
#: net.ipv4.tcp_syn_retries in the client's namespace (the kernel's default is 6:
#: 131 s of SYNs with linear timeouts, see syn_schedule).
SYN_RETRIES = 3
SYN_RETRIES_QUICK = 2
#: TCP_RTO_MIN (include/net/tcp.h: HZ / 5), the floor of the retransmission timeout.
RTO_MIN_S = 0.2
TCP_TIMEOUT_INIT_S = 1.0  # include/net/tcp.h: the SYN's first RTO
TCP_RTO_MAX_S = 120.0


@dataclass(frozen=True, slots=True)
class RunWith:
    syn_retries: int  # net.ipv4.tcp_syn_retries in the client's namespace
    port: int  # the server's port (random: tracing is global)
    link: LinkUsed = field(default_factory=LinkUsed)
    #: Why the link is not the one asked for ("" when it is).
    link_note: str = ""


@dataclass(frozen=True, slots=True)
class SynFacts:
    sent: tuple[float, ...]  # each SYN's departure, seconds after connect() was called
    model: tuple[float, ...]  # the same, as syn_schedule computes it
    failed_after: float  # connect()'s error, seconds after it was called
    model_failed_after: float
    errno: int | None
    error: str | None
    syn_retries: int
    linear_timeouts: int | None


@dataclass(frozen=True, slots=True)
class CaseFacts:
    name: str  # "middle", "probe" or "tail"
    #: the watched lost segment's transmissions, seconds after the first
    copies: tuple[float, ...]
    rtt_ms: float  # TCP_INFO's smoothed RTT
    rto_ms: float  # TCP_INFO's RTO
    fast_retrans: int  # TcpExt TCPFastRetrans during the case
    timeouts: int  # TcpExt TCPTimeouts
    loss_probes: int  # TcpExt TCPLossProbes
    retrans_segs: int  # Tcp RetransSegs
    dupacks: int  # ACKs with SACK blocks before the first retransmission
    #: The case's handshake at the client (SYN to SYN-ACK), ms: its shortest round trip
    #: as far as the capture shows (the kernel's min_rtt is at most this).
    handshake_ms: float | None = None
    #: The first SACK after the watched segment's second copy, ms after that copy: the
    #: probe's round trip (the "probe" case).
    resent_sack_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    syn: SynFacts | None
    cases: tuple[CaseFacts, ...]
    packets: int  # captured on the client's veth
    retransmitted_packets: int  # of them: copies of a segment sent before (SYNs included)
    traced: int | None  # tcp:tcp_retransmit_skb events (None: not traced)
    trace_skipped: str | None = None  # why not traced
    #: Tries of a data case that did not show it, in order, each run again (up to
    #: REDOS times, on a port of its own, untraced): every failure seen, said.
    earlier: tuple[CaseFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The retransmit experiment's result."""


def syn_schedule(retries: int, linear: int | None, rto: float = TCP_TIMEOUT_INIT_S,
                 rto_max: float = TCP_RTO_MAX_S) -> tuple[tuple[float, ...], float]:
    """When a connect() to a black hole sends its SYNs, and when it fails, as
    net/ipv4/tcp_timer.c does it (Linux 6.5+; read in the 6.7+ form):

    * the first RTO is TCP_TIMEOUT_INIT (1 s); each time the timer fires
      tcp_retransmit_timer resends the SYN, and doubles the RTO only once the
      connection has had more timeouts than tcp_syn_linear_timeouts
      (``tp->total_rto > sysctl_tcp_syn_linear_timeouts``; 6.5 and 6.6 compare
      icsk_backoff, the same count here): with 4, five gaps of 1 s, then 2, 4, 8 s;
    * before resending, tcp_write_timeout gives up (ETIMEDOUT, tcp_write_err) when
      the SYN was resent tcp_syn_retries + tcp_syn_linear_timeouts times
      (``max_retransmits``), or when (2^(tcp_syn_retries + 1) - 1) x 1 s have
      passed since the first SYN (retransmits_timed_out with tcp_model_timeout,
      whose rto_base is tcp_timeout_init(sk) for a SYN_SENT socket).

    Returns (the SYNs' times, the time of the error), from the first SYN."""
    linear = linear or 0
    limit = retries + linear
    thresh = 0
    while rto * (2 << thresh) <= rto_max:  # ilog2(TCP_RTO_MAX / rto_base)
        thresh += 1
    model = ((2 << retries) - 1) * rto if retries <= thresh else (
        ((2 << thresh) - 1) * rto + (retries - thresh) * rto_max)
    sent, t, timeout, n = [0.0], 0.0, rto, 0
    while True:
        t += timeout
        if n >= limit or (n > 0 and t >= model - 1e-9):
            return tuple(sent), t
        n += 1
        sent.append(t)
        if n > linear:
            timeout = min(timeout * 2, rto_max)


def link_for(spec: LinkSpec) -> tuple[LinkSpec, str]:
    """The link this experiment runs on, and why it is not the one asked for."""
    if spec.kind == "loopback":
        return (LinkSpec("veth", replace(spec.shaping, delay_ms=DEFAULT_DELAY_MS)),
                f"loopback has no round trip to show: ran on a veth link with "
                f"{DEFAULT_DELAY_MS:g} ms each way instead")
    if not spec.shaping.delay_ms:
        return (LinkSpec("veth", replace(spec.shaping, delay_ms=DEFAULT_DELAY_MS)),
                f"the link had no delay: added {DEFAULT_DELAY_MS:g} ms each way")
    return spec, ""


def _lines(proc: subprocess.Popen[bytes], into: list[bytes]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append(line)


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    from tcplab.experiments import link as links
    from tcplab.experiments.handshake import stop_tracer
    from tcplab.experiments.probe import tracefs
    from tcplab.interrupts import spawn
    from tcplab.observe.nsutil import die_with_parent

    spec, note = link_for(link)
    retries = SYN_RETRIES_QUICK if quick else SYN_RETRIES
    port = random.randint(20000, 29999)  # tracing is global: a port only this run uses
    syn_from = random.randint(30000, 39999)
    trace_check = tracefs()
    trace_skipped = None if trace_check.ok else f"{trace_check.detail} ({trace_check.fix})"
    traced: list[bytes] = []
    tracer: list[subprocess.Popen[bytes]] = []
    if note:
        progress(f"retransmit: {note}")
    try:
        with links.ends(spec, {"net.ipv4.tcp_syn_retries": retries}, prefix="rtx") as e:
            used = e.used
            # Started with SIGINT and SIGTERM held (interrupts.spawn's rule 3): the
            # child runs Python between fork and exec (its preexec_fn enters the
            # namespace), where a Ctrl-C would otherwise raise in it.
            with deferred():
                server = e.server(command("retransmit", "server", "--port", str(port),
                                          "--syn-from", str(syn_from), "--size",
                                          str(used.mtu or 1500),
                                          *[a for c in CASES for a in ("--drop", c)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                _ready(server, "the server (nftables rules and listener)")
                if trace_skipped is None:
                    with deferred():
                        tracer.append(spawn(
                            command("retransmit", "trace", "--port", str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL,
                            # if we are SIGKILLed, SIGTERM makes it remove its instance
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM)))
                    _ready(tracer[0], "the tracer")
                    threading.Thread(target=_lines, args=(tracer[0], traced),
                                     daemon=True).start()
                progress(f"retransmit: SYNs to a black hole (tcp_syn_retries = {retries}), "
                         f"then one burst per lost segment, across {used.words()}")
                out = _client(e, port, syn_from, list(CASES), syn=True)
            finally:
                if tracer:
                    stop_tracer(tracer[0])
                terminate(server, grace=2)
            records = _decode(out.splitlines())
            redone = _redo(e, records, port, syn_from, progress)
    except (PrivilegeError, NotSupported) as exc:
        raise NotSupported(f"the retransmit experiment needs a veth link: {exc.message}",
                           hint=exc.hint) from None
    finally:
        if tracer:
            stop_tracer(tracer[0])
    trace = [_decode_one(Retransmitted, line) for line in traced if line.strip()]
    return _result(records, trace if trace_skipped is None else None, trace_skipped,
                   RunWith(retries, port, used, note), progress, redone)


#: How many times a data case that did not show its lesson is run again. Under heavy
#: load the delay line (one Python process) can hold a packet long enough for a
#: retransmission timer to fire first: seen once in about twenty runs beside a test
#: suite; each try is said, not averaged away.
REDOS = 2


def _client(e: Ends, port: int, syn_from: int, cases: list[str], syn: bool) -> bytes:
    with deferred():
        client = e.client(command("retransmit", "client", "--host", e.server_host,
                                  "--port", str(port), "--syn-from", str(syn_from),
                                  "--interface", CLIENT_IF, "--cases", ",".join(cases),
                                  *([] if syn else ["--no-syn"])),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = client.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        raise ExperimentFailed("the retransmit client did not finish in 300 s") from None
    finally:
        terminate(client, grace=2)
    if client.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"the retransmit client exited {client.returncode}:"
                               f" {lines[-1] if lines else 'no output'}")
    return bytes(out)


def _redo(e: Ends, records: list[object], port: int, syn_from: int, progress: Progress
          ) -> list[tuple[list[object], list[str]]]:
    """Each data case not shown, run again (a fresh server with only its drops, on a
    port of its own, no SYN try, no tracer), up to REDOS times: the runs, in order."""
    runs: list[tuple[list[object], list[str]]] = []
    failed = _not_shown(records)
    for n in range(1, REDOS + 1):
        if not failed:
            break
        progress(f"retransmit: {', '.join(failed)} not shown: once more ({n} of {REDOS})")
        again = port + n
        with deferred():
            server = e.server(command("retransmit", "server", "--port", str(again),
                                      "--syn-from", str(syn_from), "--size",
                                      str(e.used.mtu or 1500),
                                      *[a for c in failed for a in ("--drop", c)]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _ready(server, "the server (nftables rules and listener)")
            out = _client(e, again, syn_from, failed, syn=False)
        finally:
            terminate(server, grace=2)
        recs = _decode(out.splitlines())
        runs.append((recs, failed))
        failed = _not_shown(recs, records)
    return runs


def _not_shown(records: list[object], first: list[object] | None = None) -> list[str]:
    """The data cases of ``records`` that did not show their lesson (``first``: the
    first run's records, for the middle case the tail's judge compares with)."""
    facts = _case_facts(records)
    middle = by_name(Facts(None, tuple(_case_facts(first or records)), 0, 0, None),
                     "middle")
    judges = {"middle": lambda c: fast_shown(c), "probe": lambda c: probe_shown(c),
              "tail": lambda c: rto_shown(c, middle)}
    return [c.name for c in facts if not judges[c.name](c)]


def _ready(proc: subprocess.Popen[bytes], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        from_json_line(Ready, line)
    except RecordError:
        proc.kill()
        _, err = proc.communicate()
        lines = err.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"{what} did not start: {lines[-1] if lines else 'no output'}",
                               hint="run again with --debug; 'tcplab check' says what "
                               "works here") from None


def _decode_one(cls: type, line: bytes) -> object:
    try:
        return from_json_line(cls, line)
    except RecordError as e:
        raise ExperimentFailed(f"a retransmit agent wrote something else: {e}",
                               hint="this is a bug in tcplab: report it") from None


def _decode(lines: Sequence[bytes]) -> list[object]:
    """The client's lines: a SynTry, the Cases, then the Seen packets (by their keys)."""
    out: list[object] = []
    for line in lines:
        if b'"syn_retries"' in line:
            out.append(_decode_one(SynTry, line))
        elif b'"copies_dropped"' in line:
            out.append(_decode_one(Case, line))
        elif line.strip():
            out.append(_decode_one(Seen, line))
    return out


def seq_of(case: Case) -> int | None:
    """The first sequence number of the case's dropped segment."""
    if case.isn is None:
        return None
    return (case.isn + 1 + case.dropped * case.mss) % (1 << 32)


def copies(case: Case, seen: Sequence[Seen]) -> list[Seen]:
    """Every packet the client sent that carried the dropped segment's first byte
    (the first may be a GSO packet of several segments: the capture sees the
    client's veth, before the router's delay line cuts them)."""
    seq = seq_of(case)
    if seq is None:
        return []
    return [p for p in seen if p.out and p.sport == case.sport and p.length > 0
            and (seq - p.seq) % (1 << 32) < p.length]


def retransmitted(seen: Sequence[Seen]) -> int:
    """Packets the client sent that began below what it had sent before on that
    connection (snd_nxt): copies of a SYN or of data, whatever packet first carried
    it (a GSO packet of several segments, as the client's veth sees it)."""
    first: dict[int, int] = {}  # sport -> the first sequence number (the SYN's)
    end: dict[int, int] = {}  # sport -> how far, from it, the client has sent
    again = 0
    for p in seen:
        if not p.out or not (p.length or "S" in p.flags):
            continue
        start = first.setdefault(p.sport, p.seq)
        rel = (p.seq - start) % (1 << 32)
        if p.sport in end and rel < end[p.sport]:
            again += 1
        end[p.sport] = max(end.get(p.sport, 0), rel + p.length + (1 if "S" in p.flags else 0))
    return again


def _result(records: list[object], trace: list[object] | None, trace_skipped: str | None,
            settings: RunWith, progress: Progress,
            redone: Sequence[tuple[list[object], list[str]]] = ()) -> Result:
    syn = next((r for r in records if isinstance(r, SynTry)), None)
    cases = [r for r in records if isinstance(r, Case)]
    seen = [r for r in records if isinstance(r, Seen)]
    syn_facts = None
    if syn is not None:
        syns = [p for p in seen if p.out and p.sport == syn.sport and "S" in p.flags]
        model, fail = syn_schedule(syn.syn_retries, syn.linear_timeouts)
        t0 = syns[0].t if syns else syn.start
        syn_facts = SynFacts(tuple(round(p.t - t0, 4) for p in syns), model,
                             round(syn.start + syn.elapsed - t0, 4), fail, syn.errno, syn.error,
                             syn.syn_retries, syn.linear_timeouts)
    # The last try of each case counts; the tries before it, not shown, are kept.
    final = {c.name: c for c in _case_facts(records)}
    earlier: list[CaseFacts] = []
    for recs, names in redone:
        again = {c.name: c for c in _case_facts(recs)}
        for name in names:
            if name in again:
                earlier.append(final[name])
                final[name] = again[name]
    case_facts = [final[c.name] for c in cases if c.name in final]
    facts = Facts(syn_facts, tuple(case_facts), len(seen), retransmitted(seen),
                  len(trace) if trace is not None else None, trace_skipped, tuple(earlier))
    events = _timeline(seen, trace or [], syn, cases)
    for line in _progress_lines(facts):
        progress(f"  {line}")
    return Result(experiment="retransmit", ok=judge(facts), settings=settings, facts=facts,
                  events=tuple(events), link=settings.link)


def _case_facts(records: Sequence[object]) -> list[CaseFacts]:
    """Each data case's figures, from its Case record and the packets captured."""
    cases = [r for r in records if isinstance(r, Case)]
    seen = [r for r in records if isinstance(r, Seen)]
    case_facts = []
    for c in cases:
        cp = copies(c, seen)
        first = cp[0].t if cp else c.start
        dup = sum(1 for p in seen if not p.out and p.dport == c.sport and p.sack
                  and (len(cp) < 2 or p.t < cp[1].t))
        n = c.counters
        syn_out = next((p.t for p in seen if p.out and p.sport == c.sport and p.flags == "S"),
                       None)
        syn_ack = next((p.t for p in seen if not p.out and p.dport == c.sport
                        and p.flags == "S."), None)
        sack = next((p.t for p in seen if len(cp) > 1 and not p.out and p.dport == c.sport
                     and p.sack and p.t > cp[1].t), None)
        case_facts.append(CaseFacts(
            c.name, tuple(round(p.t - first, 4) for p in cp), c.rtt_ms, c.rto_ms,
            n.get("TcpExt.TCPFastRetrans", 0), n.get("TcpExt.TCPTimeouts", 0),
            n.get("TcpExt.TCPLossProbes", 0), n.get("Tcp.RetransSegs", 0), dup,
            round((syn_ack - syn_out) * 1000, 3) if syn_out and syn_ack else None,
            round((sack - cp[1].t) * 1000, 3) if sack is not None else None))
    return case_facts


def _timeline(seen: Sequence[Seen], trace: Sequence[object], syn: SynTry | None,
              cases: Sequence[Case]) -> list[Event]:
    names = {c.sport: c.name for c in cases}
    if syn is not None:
        names[syn.sport] = "syn"
    rows: list[tuple[float, str]] = []
    for p in seen:
        who = names.get(p.sport if p.out else p.dport, "?")
        arrow = "client > server" if p.out else "server > client"
        what = (f"{who:6} packet  {arrow} [{p.flags}] seq {p.seq}"
                + (f" len {p.length}" if p.length else "") + (" SACK" if p.sack else ""))
        rows.append((p.t, what))
    for r in trace:
        assert isinstance(r, Retransmitted)
        who = names.get(r.sport, "?")
        rows.append((r.t, f"{who:6} tcp:tcp_retransmit_skb {r.sport} > {r.dport} "
                     f"state {r.state}" + (f" err {r.err}" if r.err else "")))
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    return [Event(round(t - t0, 6), what) for t, what in rows]


def _progress_lines(f: Facts) -> list[str]:
    lines = []
    if f.syn is not None:
        gaps = ", ".join(f"{b - a:.2f}" for a, b in zip(f.syn.sent, f.syn.sent[1:], strict=False))
        lines.append(f"SYNs {len(f.syn.sent)}, gaps {gaps} s; connect() failed after "
                     f"{f.syn.failed_after:.2f} s: {f.syn.error}")
    for c in f.cases:
        lines.append(f"{c.name}: copies at " + ", ".join(f"{t * 1000:.0f}" for t in c.copies)
                     + f" ms; RTT {c.rtt_ms:.1f} ms")
    return lines


#: A SYN may leave this much before the model's time (clocks, rounding to jiffies).
EARLY_S = 0.05


def late_allowed(t: float) -> float:
    """How late a timer firing ``t`` seconds ahead may be: the timer wheel rounds a
    timeout up to its level's granularity, at most an eighth of it
    (kernel/time/timer.c, LVL_CLK_SHIFT = 3: each level is 8 times coarser), plus
    0.25 s for a loaded machine's softirqs and scheduling."""
    return t / 8 + 0.25


def syn_shown(s: SynFacts) -> bool:
    if s.errno != errno.ETIMEDOUT or len(s.sent) != len(s.model):
        return False
    gaps = [b - a for a, b in zip(s.sent, s.sent[1:], strict=False)]
    model = [b - a for a, b in zip(s.model, s.model[1:], strict=False)]
    fail_gap = s.failed_after - s.sent[-1]
    model_fail = s.model_failed_after - s.model[-1]
    return all(m - EARLY_S <= g <= m + late_allowed(m)
               for g, m in zip([*gaps, fail_gap], [*model, model_fail], strict=True))


def by_name(f: Facts, name: str) -> CaseFacts | None:
    return next((c for c in f.cases if c.name == name), None)


def fast_shown(c: CaseFacts | None) -> bool:
    """The middle segment sent twice in all, the second time within two round trips
    (plus 50 ms) and before its RTO (TCP_INFO's; at least TCP_RTO_MIN) would have
    fired, by fast retransmit and no timeout."""
    return (c is not None and len(c.copies) == 2 and c.fast_retrans >= 1 and c.timeouts == 0
            and c.copies[1] <= 2 * c.rtt_ms / 1000 + 0.05
            and c.copies[1] < max(c.rto_ms / 1000, RTO_MIN_S))


def probe_shown(c: CaseFacts | None) -> bool:
    """The last of two lost segments sent again once, by the tail loss probe, within
    three round trips (plus 100 ms: the flight's ACKs, then 2 x srtt), and no timeout:
    the probe's SACK got the other one resent too; or a timeout that the kernel's rule
    explains (probe_ambiguous)."""
    return (c is not None and len(c.copies) == 2 and c.loss_probes >= 1
            and (c.timeouts == 0 or probe_ambiguous(c))
            and c.copies[1] <= 3 * c.rtt_ms / 1000 + 0.1)


def probe_ambiguous(c: CaseFacts) -> bool:
    """The probe's SACK came back sooner than the connection's shortest round trip, so
    RACK could not tell whether it acknowledged the probe or the original copy and
    ignored it (tcp_rack_advance in net/ipv4/tcp_recovery.c, moved to tcp_input.c in
    the newest kernels: a SACK of a retransmitted
    segment whose RTT is below tcp_min_rtt() is skipped), and the other lost segment
    waited for the retransmission timer. Through the delay line the probe's RTT is
    within a fraction of a millisecond of the handshake's, below it about as often as
    above (seen: 40.3 against 40.4 ms, one run in about ten)."""
    return (c.timeouts >= 1 and c.resent_sack_ms is not None and c.handshake_ms is not None
            and c.resent_sack_ms < c.handshake_ms)


def rto_shown(c: CaseFacts | None, fast: CaseFacts | None) -> bool:
    """The tail segment sent three times, the third by the retransmission timer at
    least TCP_RTO_MIN after the second, and later than the middle's retransmission
    by more than that."""
    if c is None or len(c.copies) != 3 or c.timeouts < 1:
        return False
    gap = c.copies[2] - c.copies[1]
    return gap >= RTO_MIN_S - 0.005 and (fast is None or len(fast.copies) < 2
                                         or c.copies[2] >= fast.copies[1] + RTO_MIN_S)


def trace_shown(f: Facts) -> bool:
    """Traced: one tcp:tcp_retransmit_skb event per retransmitted packet."""
    return f.traced is None or f.traced == f.retransmitted_packets


def judge(f: Facts) -> bool:
    return (f.syn is not None and syn_shown(f.syn) and fast_shown(by_name(f, "middle"))
            and probe_shown(by_name(f, "probe"))
            and rto_shown(by_name(f, "tail"), by_name(f, "middle")) and trace_shown(f)
            and len(f.cases) == len(CASES))
