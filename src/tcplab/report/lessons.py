"""The lab's lessons, in our words, each with the experiments that show it.

A lesson is an explanation (true on any Linux, no figure of a particular run)
and its figures. Each figure is a ``Figures``: a sentence built from the
``Result`` of the experiment that measures it (``this_run``), and the same
sentence as one recorded run on this machine gave it, with where, when and the
command that reproduces it (``recorded``).

* The HTML report quotes this run: a figure whose experiment ran is built from
  that Result's own fields, never from the recorded text, so a lesson box
  cannot contradict the page it is on. When the Result lacks the fields (the
  experiment was skipped or failed, or ran without the option that measures
  them) the box says so and quotes no number. A recorded figure appears only
  for an experiment that was not part of the run and for the few figures no
  experiment measures, always with its date and command.
* ``tcplab explain TOPIC`` has no run to quote: it prints the recorded figures
  with their provenance. docs/lessons.md is ``tcplab explain --markdown``.

The recorded figures are from full runs (no ``--quick``) on Linux 6.18 with 2
cores, on the dates given; to refresh one, run its command and copy the
sentence ``this_run`` builds from the result (``Figures.sentence``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tcplab.agents.half_close import Side
from tcplab.agents.keepalive import Silent
from tcplab.agents.orphans import Look
from tcplab.agents.ports import RESERVED, SOCKET_RANGE, Ports
from tcplab.errors import errno_name
from tcplab.experiments import (
    c100k,
    fd_leak,
    half_close,
    handshake,
    keepalive,
    multiplex,
    nagle,
    orphans,
    port_bomb,
    ports,
    reset,
    restart,
    retransmit,
    syn_queue,
)
from tcplab.experiments.result import Result
from tcplab.observe import slab
from tcplab.report import prose
from tcplab.words import duration_us, plural

AnyResult = Result[Any, Any, Any]

#: Where the recorded figures were measured.
MACHINE = "Linux 6.18, 2 cores"


@dataclass(frozen=True, slots=True)
class Figures:
    """One experiment's figures for a lesson."""

    experiment: str  # the experiment that measures them ("" when no experiment does)
    command: str  # the command that reproduces the recorded figures
    when: str  # the date of the recorded run, YYYY-MM-DD
    recorded: str  # the figures of that run, one sentence or two, no final full stop
    #: The same sentence from this run's Result; None when the Result lacks the fields
    #: (the experiment failed, or ran without the option that measures them).
    this_run: Callable[[Any], str | None] | None = None
    context: str = ""  # how the command was run, when it matters

    def provenance(self) -> str:
        how = f" {self.context}" if self.context else ""
        return f"measured on {MACHINE}, on {self.when}, with `{self.command}`{how}"

    def sentence(self, result: AnyResult) -> str | None:
        """This run's figures, or None when the result does not have them."""
        if self.this_run is None or result.skipped:
            return None
        try:
            return self.this_run(result)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError,
                ZeroDivisionError, AssertionError):
            return None  # a field this run did not produce: say so, quote nothing


@dataclass(frozen=True, slots=True)
class Lesson:
    topic: str
    title: str
    text: str  # paragraphs separated by blank lines; no figure of one run
    shown_by: str  # the commands that demonstrate it
    figures: tuple[Figures, ...] = ()
    correction: str = ""  # where the original lab's notes are wrong on Linux


# --- this run's figures, built from the Result's own fields ----------------------------------
#
# Each function states what the run saw, conditionally: a claim the fields do not
# support is not made (an error that did not happen is not named, a state that was
# not sampled is not quoted).

def _seconds(timer: str) -> float | None:
    """``'time-wait 58.4s'`` (half-close's step timer) -> 58.4."""
    word = timer.split()[-1] if timer else ""
    return float(word[:-1]) if word.endswith("s") else None


def _half_close_time_wait(r: half_close.Result) -> str | None:
    assert r.facts is not None
    waits = [(s.t, _seconds(s.client.timer), s.client.owner)
             for s in r.facts.steps if s.client and s.client.state == "TIME_WAIT"]
    if not waits:
        return ("after both sides closed, this run's samples never caught the client's "
                "socket in TIME_WAIT")
    (t1, left1, owner), (t2, left2, _) = waits[0], waits[-1]
    if left1 is None:
        return None
    text = f"the client's socket, closed first, was in TIME_WAIT with {left1:.1f} s left"
    if len(waits) > 1 and left2 is not None:
        text += f", and {left2:.1f} s left {t2 - t1:.1f} s later"
    if owner == "kernel":
        text += "; it belonged to no process (inode 0: the kernel's minisocket)"
    return text


def _half_close_states(r: half_close.Result) -> str | None:
    def where(side: Side | None) -> str:
        return f"in {side.state}" if side else "gone"

    assert r.facts is not None
    seen = [(where(s.client), where(s.server)) for s in r.facts.steps]
    text = (f"after the client's shutdown(SHUT_WR), the client's socket was {seen[1][0]} and "
            f"the server's {seen[1][1]}")
    if seen[1] == seen[2] == ("in FIN_WAIT2", "in CLOSE_WAIT"):
        text += (", and both stayed there while the server still sent (a FIN closes one "
                 "direction only)")
    return text + (f"; after the server's close(), the client's socket was {seen[3][0]} and "
                   f"the server's {seen[3][1]}")


def _fd_leak_close_wait(r: fd_leak.Result) -> str | None:
    f, fin = r.facts, r.settings.tcp_fin_timeout if r.settings else None
    assert f is not None
    text = (f"with tcp_fin_timeout = {fin} s, "
            f"{plural(f.server_close_wait_peak, 'server socket')} in CLOSE_WAIT and "
            f"{plural(f.client_fin_wait2_peak, 'client socket')} in FIN_WAIT2 at the peak; "
            f"after the wait, FIN_WAIT2 {f.client_fin_wait2_after_timeout:,} and CLOSE_WAIT "
            f"still {f.server_close_wait_after_timeout:,}")
    fixed = next((v for v in r.variants if v.name == "fixed"), None)
    if fixed is not None and fixed.skip is not None:  # a --server-cmd that leaks anyway
        return text + f"; the round without LEAK was skipped: {fixed.skipped}"
    if f.fixed_close_wait_persisting is None:  # a result recorded before it was measured
        return text + f"; the server that closes: CLOSE_WAIT peak {f.fixed_close_wait_peak:,}"
    # Judged once the server had had time to close; the peak is a transient.
    return text + (f"; the server that closes: CLOSE_WAIT "
                   f"{f.fixed_close_wait_persisting:,} once it had closed (peak "
                   f"{f.fixed_close_wait_peak:,} while the clients closed)")


def _fd_leak_keepalive(r: fd_leak.Result) -> str | None:
    f = r.facts
    assert f is not None
    if f.keepalive_close_wait_after is None:
        return None  # the run had no --keepalive round
    return (f"with SO_KEEPALIVE on the accepted sockets, CLOSE_WAIT "
            f"{f.keepalive_close_wait_after:,} after the peers left and fds still "
            f"{f.keepalive_fds_after:,}")


def _go_round(r: fd_leak.Result, name: str) -> fd_leak.Round | None:
    """The Go round ``name`` of this run, if it ran (None: skipped or not in the run)."""
    found = next((v for v in r.variants if v.name == name), None)
    return found if found is not None and found.go is not None else None


def _fd_leak_go_drop(r: fd_leak.Result) -> str | None:
    v = _go_round(r, "go-drop")
    return None if v is None else prose.go_drop_figures(v)


def _fd_leak_go_keep(r: fd_leak.Result) -> str | None:
    v = _go_round(r, "go-keep")
    return None if v is None else prose.go_keep_figures(v)


def _fd_leak_limit(r: fd_leak.Result) -> str | None:
    f = r.facts
    assert f is not None and f.clients is not None and f.fd_limit is not None
    c = f.clients
    limit = f.fd_limit
    text = (f"limit {limit:,}, backlog {f.backlog:,}: the leaking server's fds peaked at "
            f"{f.server_fds_peak:,} of {limit:,}; ")
    if f.emfile_log_line:
        text += f"its log said \"{f.emfile_log_line}\"; "
    else:
        text += "its log never said \"Too many open files\"; "
    return text + (f"accept queue peak {f.accept_queue_peak:,}; of "
                   f"{plural(c.clients, 'client')}, {c.echoed:,} got their echo, "
                   f"{c.no_echo:,} connected without an echo and "
                   f"{c.connect_timeouts:,} never connected (SYN_SENT)")


def _bomb_variants(r: port_bomb.Result) -> dict[str, port_bomb.Variant]:
    return {v.name: v for v in r.variants if v.skip is None}


def _port_bomb(r: port_bomb.Result) -> str | None:
    by = _bomb_variants(r)
    parts = []
    fresh = by.get("fresh")
    if fresh:
        e, ports = fresh.first_error, fresh.port_range
        assert ports is not None
        if e and e.errno == 99:
            parts.append(f"with a {ports:,}-port range and tcp_tw_reuse = 0, connect() failed "
                         f"with EADDRNOTAVAIL after {plural(e.after_ok, 'connection')} in "
                         f"{e.at_s:.2f} s; TIME_WAIT peaked at {fresh.time_wait_peak:,}")
        elif e:
            parts.append(f"with a {ports:,}-port range, the first error was {e.name} "
                         f"({e.message}), not port exhaustion")
        else:
            parts.append(f"with a {ports:,}-port range, {plural(fresh.ok, 'connection')} "
                         "and no error")
    pool = by.get("pool")
    if pool:
        assert r.settings is not None
        parts.append(f"over {plural(r.settings.pool_size, 'pooled connection')}, "
                     f"{plural(pool.ok, 'request')} had {plural(pool.failed, 'failure')}"
                     f" and TIME_WAIT peaked at {pool.time_wait_peak:,}")
    two = by.get("two-destinations")
    if two and len(two.runs) == 2:
        one, other = two.runs
        parts.append(f"toward 127.0.0.1, {plural(one.ok, 'connection')} and "
                     f"{plural(one.failed, 'failure')}; toward 127.0.0.2, from the same "
                     f"ports, {plural(other.ok, 'connection')} and "
                     f"{plural(other.failed, 'failure')}")
    linger = by.get("linger0")
    if linger:
        parts.append(f"with SO_LINGER 0, {plural(linger.failed, 'failure')} and TIME_WAIT "
                     f"peak {linger.time_wait_peak:,}")
    return "; ".join(parts) or None


def _pool_too_small(r: port_bomb.Result) -> str | None:
    by = _bomb_variants(r)
    v = by.get("pool-too-small")
    if not v or not v.runs:
        return None
    run = v.runs[0]
    text = prose.pool_too_small_figures(v, run.pool_size)  # as the variant's lesson words them
    pool = by.get("pool")
    if pool:
        text += (f"; the pool that kept all {run.pool_size} had TIME_WAIT "
                 f"{pool.time_wait_peak:,}")
    return text


def _real_link(r: port_bomb.Result) -> str | None:
    v = _bomb_variants(r).get("real-link")
    if not v or v.skip is not None or v.port_range is None:
        return None
    return (f"across a veth pair, with tcp_tw_reuse = {v.tw_reuse} and {v.port_range:,} "
            f"ports, {plural(v.ok, 'connection')} and {plural(v.failed, 'failure')} "
            f"({', '.join(f'{n:,} {e}' for e, n in v.runs[0].errors.items()) or 'none'})")


def _default_reuse(r: port_bomb.Result) -> str | None:
    v = _bomb_variants(r).get("default-reuse")
    if not v:
        return None
    assert v.port_range is not None
    return (f"with the kernel's defaults (tcp_tw_reuse = 2, {v.port_range:,} ports), "
            f"{plural(v.ok, 'connection')}, {plural(v.failed, 'failure')}, TIME_WAIT "
            f"peaked at {v.time_wait_peak:,}")


def _handshake(r: handshake.Result) -> str | None:
    f = r.facts
    assert f is not None
    text = (f"{plural(f.packets, 'packet')} ({f.syn} SYN, {f.syn_ack} SYN-ACK, "
            f"{f.fin} FIN, {f.rst} RST), {plural(f.transitions, 'state change')} and "
            f"{plural(f.syscalls, 'socket call')} on one timeline")
    seq = f.sequence
    syn = next((p for p in seq if p.word == "SYN"), None)
    ack = (next((p for p in seq if p.t > syn.t and p.from_ == "client"
                 and p.word == "ACK"), None) if syn else None)
    if syn and ack:
        text += (f"; the first handshake took {(ack.t - syn.t) * 1000:.3f} ms from SYN "
                 "to the client's ACK (packet times)")
    left = f.time_wait_left_ms
    if left:
        text += f"; the first client socket then had {left[0] / 1000:.1f} s of TIME_WAIT left"
    return text


def _multiplex(r: multiplex.Result) -> str | None:
    rows = r.variants
    big = max(v.connections for v in rows)
    # The rung the verdict compares the largest with (experiments/multiplex.reference_of)
    small = (r.facts.reference if r.facts else None) or min(v.connections for v in rows)
    at = {(v.model, v.connections): v for v in rows}
    loops = [v for v in rows if v.connections == big and v.model != "threads"]
    parts = []
    if loops:
        threads = [v.threads for v in loops if v.threads is not None]
        watches = [v.epoll_watches for v in loops if v.epoll_watches]
        kib = [v.rss_per_conn / 1024 for v in loops]
        cpu = [v.cpu_us_per_echo for v in loops if v.cpu_us_per_echo is not None]
        failed = sum(v.failed for v in loops)
        text = f"at {plural(big, 'connection')}, {', '.join(v.model for v in loops)}"
        if threads:
            text += (f" each ran on {_span(threads, '{:,}')} "
                     f"{'thread' if max(threads) == 1 else 'threads'}")
        if watches:
            text += f", one epoll instance watching {_span(watches, '{:,}')} sockets"
        text += f", {_span(kib, '{:,.1f}')} KiB of RSS per connection"
        if cpu:
            text += f", {_span(cpu, '{:,.1f}')} us of server CPU per echo"
        parts.append(text + (f", {plural(failed, 'failed connection')}" if failed else
                             ", no connection failed"))
    t = at.get(("threads", big))
    if t:
        first = at.get(("threads", small))
        then = (f" (at {small:,}: {first.echoes_per_s:,.0f} echoes/s)"
                if first and small != big else "")
        why = ", ".join(f"{k} x{n:,}" for k, n in t.failures.items())
        if t.collapsed:
            # Most connections failed: no figure of this row is a clean measurement
            # (experiments/multiplex.py flags it), so say what got through, labelled.
            parts.append(
                f"thread per connection at {plural(big, 'connection')} collapsed: "
                f"{t.failed:,} of {big:,} connections failed; what got through: "
                f"{plural(t.echoes, 'echo')} ({t.echoes_per_s:,.0f}/s) on "
                f"{plural(t.threads or 0, 'thread')}{then}; failures: {why}")
        else:
            parts.append(
                f"thread per connection at {plural(big, 'connection')}: "
                f"{plural(t.threads or 0, 'thread')}, {t.rss_per_conn / 1024:,.1f} KiB "
                f"per connection, p99 {duration_us(t.p99_us)}, "
                f"{t.echoes_per_s:,.0f} echoes/s{then}"
                + (f"; {t.failed:,} of its {big:,} connections failed ({why})"
                   if t.failed else "; no connection failed"))
    return "; ".join(parts) or None


def _restart(r: restart.Result) -> str | None:
    f = r.facts
    assert f is not None
    parts = []
    for old in (True, False):
        tries = [b for b in f.binds if b.old_reuseaddr is old]
        if not tries:
            continue
        said = " and ".join(
            f"{'with' if b.new_reuseaddr else 'without'} SO_REUSEADDR "
            + ("succeeded" if b.listening else f"failed with {errno_name(b.errno)} "
               f"(\"{b.error}\")") for b in tries)
        parts.append(f"after a server {'with' if old else 'without'} SO_REUSEADDR stopped "
                     f"with {plural(tries[0].time_wait, 'TIME_WAIT socket')} on its port, a "
                     f"new bind() {said}")
    return "; ".join(parts) or None


def _retransmit(r: retransmit.Result) -> str | None:
    f = r.facts
    assert f is not None
    parts = []
    if f.syn is not None:
        s = f.syn
        gaps = ", ".join(f"{b - a:.2f}" for a, b in zip(s.sent, s.sent[1:], strict=False))
        parts.append(f"with tcp_syn_retries = {s.syn_retries}, {plural(len(s.sent), 'SYN')} "
                     f"left {gaps} s apart and connect() failed with "
                     f"{errno_name(s.errno) if s.errno else 'no error'} after "
                     f"{s.failed_after:.2f} s (the rule: {s.model_failed_after:g} s)")
    for c in f.cases:
        again = ", ".join(f"{t * 1000:.0f} ms" for t in c.copies[1:]) or "never"
        counted = ", ".join(f"{name} {n}" for name, n in (
            ("TCPFastRetrans", c.fast_retrans), ("TCPLossProbes", c.loss_probes),
            ("TCPTimeouts", c.timeouts)) if n)
        what = {"middle": "a segment lost in mid-burst",
                "probe": "the last of two lost last segments",
                "tail": "a lost last segment (and its probe)"}.get(c.name, c.name)
        parts.append(f"{what} was sent again after {again} at an RTT of {c.rtt_ms:.0f} ms "
                     f"({counted or 'nothing counted'})")
    if f.traced is not None:
        parts.append(f"tcp:tcp_retransmit_skb fired {plural(f.traced, 'time')} for "
                     f"{plural(f.retransmitted_packets, 'retransmitted packet')}")
    return "; ".join(parts) or None


def _reset(r: reset.Result) -> str | None:
    f = r.facts
    assert f is not None
    parts = []
    for c in f.closes:
        what = {"read-first": "after reading the bytes",
                "unread": f"with {c.unread_bytes} B unread",
                "linger0": "with SO_LINGER {1, 0} and nothing unread"}[c.case]
        sent = plural(c.out_rsts, "RST") + " sent" if c.out_rsts else "no RST"
        parts.append(f"close() {what}: {sent}, the server's socket {c.server_after}, the "
                     f"client's {c.client_after}, its next read {reset.read_words(c)}")
    return "; ".join(parts) or None


def _syn_queue(r: syn_queue.Result) -> str | None:
    """The clauses of the syn-queue fact (report/prose.py words each), for the phases
    this run has."""
    f = r.facts
    assert f is not None
    find = syn_queue.find
    acks, syn = find(f.phases, "cookies", "acks"), find(f.phases, "cookies", "syn")
    abort = find(f.phases, "abort", "acks")
    parts = [words(ph) for words, ph in ((prose.accept_queue_words, acks),
                                         (prose.syn_sent_words, syn),
                                         (prose.abort_words, abort)) if ph is not None]
    return "; ".join(parts + prose.syn_queue_lengths(f.phases)) or None


def _keepalive(r: keepalive.Result) -> str | None:
    f = r.facts
    assert f is not None
    by = keepalive.by_case(f.silences)
    ka, ut, rt = by["keepalive"], by["keepalive+user-timeout"], by["retransmit+user-timeout"]

    def ended(s: Silent, first: bool = False) -> str:
        if s.errno is None or s.error_at_s is None:
            return "the client's recv() had not failed after 30 s"
        if not first and s.errno == ka.errno:  # ka's error was said in full before
            return f"the same error at {s.error_at_s:.1f} s"
        return (f"the client's recv() failed with {errno_name(s.errno)} (\"{s.error}\") "
                f"{s.error_at_s:.1f} s after connect()")

    return (f"with the peer's link set down {ka.down_at_s:.1f} s after connect(), keep-alive "
            f"at {ka.keepidle_s} s idle, {ka.keepintvl_s} s interval and {ka.keepcnt} probes: "
            f"{plural(ka.keepalive_probes, 'probe')} (TcpExt TCPKeepAlive), then "
            f"{ended(ka, True)}; with {ut.keepcnt} probes and TCP_USER_TIMEOUT "
            f"{(ut.user_timeout_ms or 0) / 1000:g} s: {plural(ut.keepalive_probes, 'probe')} "
            f"and {ended(ut)}; with no keep-alive, {rt.sent_bytes} bytes sent into the "
            f"silence and TCP_USER_TIMEOUT {(rt.user_timeout_ms or 0) / 1000:g} s: "
            f"{plural(rt.retransmits, 'retransmission')} and {ended(rt)}")


def _ports(r: ports.Result) -> str | None:
    f = r.facts
    assert f is not None
    by = ports.by_case(f.cases)
    one, two = ports.FIRST, ports.SECOND
    to1, to2 = ports.names(f.cases)  # 127.0.0.1 and 127.0.0.2; across a link address:port

    def parity(p: Ports) -> str:
        even = sum(1 for x in p.ports if x in ports.EVEN)
        odd = len(p.ports) - even
        return " and ".join(plural(n, f"{kind} port") for n, kind in ((even, "even"),
                                                                      (odd, "odd")) if n)

    def then(p: Ports) -> str:
        if not p.error:
            return ""
        return f", then {p.error.call}() failed with {p.error.name}"

    def got(p: Ports) -> str:
        if p.ports or not p.error:
            return f"{plural(len(p.ports), 'connection')}{then(p)}"
        return f"the first {p.error.call}() failed with {p.error.name}"

    c, b = by["connect", one], by["bind", ""]
    btc1, btc2 = by["bind-then-connect", one], by["bind-then-connect", two]
    np1, np2 = by["bind-address-no-port", one], by["bind-address-no-port", two]
    sr, rs = by["socket-range", one], by["reserved", one]
    lo, hi = SOCKET_RANGE
    inside = all(lo <= x <= hi for x in sr.ports)
    return (f"in a ten-port range ({r.settings.port_range if r.settings else '?'}), "
            f"{len(c.ports)} connect()s got {parity(c)} and {len(b.ports)} bind()s to port 0 "
            f"got {parity(b)}; bind() then connect() to {to1} got "
            f"{got(btc1)}, and toward {to2} {got(btc2)}; with "
            f"IP_BIND_ADDRESS_NO_PORT, {plural(len(np1.ports), 'connection')} to "
            f"{to1} and {len(np2.ports)} more to {to2}"
            + (f" from the same {len(np1.ports)} ports" if set(np1.ports) == set(np2.ports)
               else "") + f"{then(np2)}; IP_LOCAL_PORT_RANGE {lo}-{hi} gave "
            f"{plural(len(sr.ports), 'connection')}{' on those ports' if inside else ''}"
            f"{then(sr)}; ip_local_reserved_ports {RESERVED} left "
            f"{' and '.join(str(x) for x in sorted(rs.ports)) or 'no port'}{then(rs)}")


def _orphans(r: orphans.Result) -> str | None:
    f, s = r.facts, r.settings
    assert f is not None and s is not None
    w2, w1 = orphans.pair(f.looks, "fin-wait2"), orphans.pair(f.looks, "fin-wait1")
    rt = orphans.pair(f.looks, "orphan-retries")
    assert w2 is not None and w1 is not None and rt is not None
    (a, b), (c, d), (_, e) = w2, w1, rt

    def n(look: Look, state: str) -> int:
        return look.states.get(state, 0)

    return (f"{s.connections} clients closed while the server held its ends: "
            f"{n(a, 'FIN_WAIT2')} sockets in FIN_WAIT2, {n(a, 'CLOSE_WAIT')} in CLOSE_WAIT, "
            f"{n(a, 'TIME_WAIT') or 'none'} in TIME_WAIT, sockstat tw {a.sockstat_tw}; with "
            f"tcp_fin_timeout = {s.tcp_fin_timeout}, {b.lived_s:.1f} s after close() FIN_WAIT2 "
            f"was {n(b, 'FIN_WAIT2')} and tw {b.sockstat_tw} while CLOSE_WAIT stayed "
            f"{n(b, 'CLOSE_WAIT')}; {s.connections} servers that closed behind unsent data to "
            f"clients that did not read left {plural(n(c, 'FIN_WAIT1'), 'orphan')} in "
            f"FIN_WAIT1 (sockstat's machine-wide orphan count {c.sockstat_orphan}, then "
            f"{d.sockstat_orphan} "
            + ("once the clients' RSTs ended them" if not n(d, "FIN_WAIT1") else
               f"with {n(d, 'FIN_WAIT1')} still in FIN_WAIT1 after the clients closed")
            + f"); with tcp_orphan_retries "
            f"= {s.tcp_orphan_retries}, an orphan whose peer went silent was "
            + (f"gone {e.lived_s:.1f} s after close(), after "
               f"{plural(e.retransmits or 0, 'retransmission')}" if not e.states and e.lived_s
               is not None else "still there after 30 s"))


def _span(values: list[float] | list[int], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


# --- the lessons -----------------------------------------------------------------------------

def _nagle(r: nagle.Result) -> str | None:
    """Each link's medians (requests after the first), the delayed ACKs, the first request."""
    assert r.facts is not None

    def ms(us: float) -> str:
        return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.1f} ms"

    parts = []
    for rd in r.facts.rounds:
        if rd.skip is not None:
            parts.append(f"{rd.link.kind} ({rd.link.shaping}) was not measured: {rd.skip}")
            continue
        ws = nagle.by_way(rd)
        n, nd, one = ws["nagle"], ws["nodelay"], ws["one-write"]
        where = ("on loopback" if rd.link.kind == "loopback"
                 else f"across {rd.link.kind} ({rd.link.shaping})")
        parts.append(
            f"{where}, with Nagle's algorithm a request took {ms(n.steady_us)} (median of "
            f"the {len(n.requests_us) - 1} after the first) against {ms(nd.steady_us)} with "
            f"TCP_NODELAY and {ms(one.steady_us)} with one sendmsg(); the server's delayed-ACK "
            f"timer fired {plural(n.delayed_acks, 'time')}; the connection's first request "
            f"took {ms(n.first_us)}")
    return "; ".join(parts)


def _c100k_walls(r: c100k.Result) -> str | None:
    f, s = r.facts, r.settings
    assert f is not None and s is not None and f.capacity is not None
    cap = f.capacity
    text = (f"{c100k.DEFAULT_MODEL} with SO_REUSEPORT held {r.held:,} of {f.connections:,} "
            f"connections open and echoing at once on {f.workers:,} server and "
            f"{plural(f.processes, 'client process', 'client processes')} under a hard fd "
            f"limit of {s.process_fds:,} a process; toward {cap.connections:,} connections "
            f"{cap.hit_first.name} is hit first ({cap.hit_first.allows:,} a "
            f"{cap.hit_first.per})")
    if cap.next is not None:
        text += f", then {cap.next.name} ({cap.next.allows:,} a {cap.next.per})"
    return text + f", and the first machine-wide wall allows {cap.machine_allows:,}"


def _c100k_sources(r: c100k.Result) -> str | None:
    f = r.facts
    assert f is not None and f.capacity is not None
    ports = next(c for c in f.capacity.rows if c.per == "source address")
    each = -(-f.connections // f.processes)
    return (f"{plural(f.processes, 'client process', 'client processes')}, one source "
            f"address each, opened at most {each:,} connections each toward the server: "
            f"{each / ports.allows:.0%} of the {ports.allows:,} ports of the range "
            f"({ports.value})")


def _c100k_spread(r: c100k.Result) -> str | None:
    return prose.c100k_spread_words(r)


def _c100k_ledger(r: c100k.Result) -> str | None:
    f = r.facts
    assert f is not None and f.ledger is not None
    led = f.ledger
    if not led.rows or led.bytes_per_connection is None or led.bytes_per_socket is None:
        return None
    by = {x.cache: x for x in led.rows}

    def each(names: tuple[str, ...]) -> int:
        return round(sum(by[n].bytes for n in names if n in by) / led.sockets)

    def how(name: str) -> str:
        return "measured" if by[name].trusted else "estimated"

    first = ", ".join(f"{n} {each((n,)):,} B ({how(n)})"
                      for n in ("TCP", "sock_inode_cache", "filp", "dentry") if n in by)
    return (f"with {led.connections:,} connections held ({led.sockets:,} sockets), the kernel's "
            f"slab caches held {led.bytes_per_socket:,.0f} B a socket, "
            f"{led.bytes_per_connection:,.0f} B a connection: {first}, epoll's entries "
            f"{each(slab.PER_WATCH):,} B, a connect()ed port's bind buckets "
            f"{each(slab.PER_CONNECT):,} B and the security modules' file blob "
            f"{each(('lsm_file_cache',)):,} B a socket (these from merged caches, mostly "
            "estimated)")


def _c100k_models(r: c100k.Result) -> str | None:
    f = r.facts
    assert f is not None and r.rss_growth_per_conn is not None
    n = f.connections
    loops = [f"{c100k.DEFAULT_MODEL} {r.rss_growth_per_conn:,.0f} B with SO_REUSEPORT"]
    for m in r.models:
        if m.model != "threads" and m.asked == n and m.rss_growth_per_conn is not None:
            how = " with one shared listener" if m.listener == "shared" else ""
            loops.append(f"{m.model} {m.rss_growth_per_conn:,.0f} B{how}")
    text = f"server user memory per connection at {n:,}: {', '.join(loops)}"
    threads = [m for m in r.models if m.model == "threads" and m.held]
    if threads:
        text += "; threads " + ", ".join(
            f"{m.rss_growth_per_conn:,.0f} B at {m.asked:,} ({plural(m.threads, 'thread')})"
            for m in threads if m.rss_growth_per_conn is not None)
    return text


def _c100k_threads(r: c100k.Result) -> str | None:
    rungs = [m for m in r.models if m.model == "threads"]
    if not rungs:
        return None
    last = rungs[-1]
    text = (f"the thread-per-connection ladder ran {', '.join(f'{m.asked:,}' for m in rungs)} "
            f"connections; its last rung held {last.held:,} of {last.asked:,} on "
            f"{plural(last.threads, 'thread')}")
    if last.stopped_because:
        return text + f", and it stopped there: {last.stopped_because}"
    return text + ", the last rung the run asked for"


LESSONS: dict[str, Lesson] = {}


def _add(lesson: Lesson) -> None:
    LESSONS[lesson.topic] = lesson


_add(Lesson(
    "time-wait", "TIME_WAIT: the active closer waits 60 s",
    """The side that closes first ends in TIME_WAIT, and Linux keeps it there for 60
seconds (TCP_TIMEWAIT_LEN in include/net/tcp.h), whatever tcp_fin_timeout says; the
timer fires up to about 2 s late (the timer wheel in kernel/time/timer.c rounds a 60 s
timer up to its next step of 512 jiffies, 2.048 s at HZ = 250, as on the kernel here), and a
FIN the peer sends again restarts it (tcp_timewait_state_process in
net/ipv4/tcp_minisocks.c). It exists so that a late duplicate segment of this
connection is not taken for part of the next connection on the same 4-tuple, and so
that a lost final ACK can be sent again when the peer repeats its FIN.

How the closer gets there depends on how it closed. After close() its socket is an
orphan, and once the peer ACKs its FIN the kernel replaces it by a small
'minisocket' in FIN_WAIT2 (tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) in
tcp_rcv_state_process, net/ipv4/tcp_input.c; with a tcp_fin_timeout above 60 s the
full socket waits out the excess first), which lives tcp_fin_timeout and turns
TIME_WAIT only when the peer's FIN arrives (tcp_timewait_state_process). After
shutdown(SHUT_WR) the full socket stays, in FIN_WAIT2, until that FIN; then it
becomes the TIME_WAIT minisocket.

A minisocket belongs to no process (ss and 'tcplab sockets' show no owner), but a
TIME_WAIT one keeps its local port for that destination. 'tcplab sockets --state
time-wait' shows the time each one has left. At most net.ipv4.tcp_max_tw_buckets of
them exist per namespace: beyond it the socket is closed at once, with no TIME_WAIT,
and counted as TCPTimeWaitOverflow in /proc/net/netstat (tcp_time_wait); Linux 6.x
writes nothing to the kernel log for it.""",
    "tcplab experiment half-close; tcplab sockets --state time-wait",
    (Figures("half-close", "tcplab experiment half-close", "2026-11-30",
             "the client's socket, closed first, was in TIME_WAIT with 59.0 s left, and 57.0 "
             "s left 2.0 s later; it belonged to no process (inode 0: the kernel's "
             "minisocket)", _half_close_time_wait),),
    "The original notes say TIME_WAIT lasts '60-120 s' (2MSL). On Linux it is 60 s, "
    "a constant (TCP_TIMEWAIT_LEN), not twice an MSL: RFC 9293's MSL is 2 minutes. "
    "Measured in private namespaces here, TIME_WAIT lasted 61.1 s (3 runs; 60.3 to "
    "62.0 s in issue 13's runs); "
    "with tcp_max_tw_buckets = 10, 30 closes left 10 sockets in TIME_WAIT, "
    "TCPTimeWaitOverflow counted 20 and the kernel log stayed silent. tcp_fin_timeout "
    "does not shorten TIME_WAIT: that sysctl only limits orphaned FIN_WAIT2 sockets.",
))

_add(Lesson(
    "port-range", "Ephemeral ports: per destination, and why the bomb fails (or not)",
    """connect() without bind() takes a local port from net.ipv4.ip_local_port_range
(32768-60999 by default: 28,232 ports), skipping the ports listed in
net.ipv4.ip_local_reserved_ports and every port a socket holds through bind() or
listen() (__inet_hash_connect in net/ipv4/inet_hashtables.c). Ports are shared per
destination: the same port may serve connections to different (address, port)
pairs, so the limit is what is left of the range, in TIME_WAIT or in use, toward ONE
destination. When it is all taken, connect() fails with EADDRNOTAVAIL, "Cannot
assign requested address".

Pooling reuses a few connections for every request, so it takes no new ports.
bind() before connect() takes a port for every destination at once: toward one
destination it runs out at about the same count (bind() then fails with
EADDRINUSE); it runs out earlier only where connect() could have shared ports
across destinations. SO_LINGER 0 avoids TIME_WAIT by sending RST: a hack, since it
throws away in-flight data and the peer sees ECONNRESET.

connect() also prefers ports of one parity and leaves the other to bind()
(__inet_hash_connect in net/ipv4/inet_hashtables.c), so with tcp_tw_reuse the
TIME_WAIT sockets level off at about half the range.""",
    "tcplab experiment port-bomb; tcplab bomb; tcplab limits",
    (Figures("port-bomb", "tcplab experiment port-bomb", "2026-11-30",
             "with a 1,000-port range and tcp_tw_reuse = 0, connect() failed with "
             "EADDRNOTAVAIL after 985 connections in 0.09 s; TIME_WAIT peaked at 1,000; over "
             "8 pooled connections, 3,000 requests had 0 failures and TIME_WAIT peaked at 8; "
             "toward 127.0.0.1, 1,000 connections and 1,000 failures; toward 127.0.0.2, from "
             "the same ports, 1,000 connections and 1,000 failures; with SO_LINGER 0, 0 "
             "failures and TIME_WAIT peak 0",
             _port_bomb),
     Figures("port-bomb", "tcplab experiment port-bomb", "2026-11-30",
             "with the kernel's defaults (tcp_tw_reuse = 2, 28,232 ports), 40,000 "
             "connections, 0 failures, TIME_WAIT peaked at 14,286", _default_reuse),
     Figures("port-bomb", "tcplab experiment port-bomb --variant real-link", "2026-11-30",
             "across a veth pair, with tcp_tw_reuse = 2 and 1,000 ports, 1,000 connections "
             "and 2,000 failures (2,000 EADDRNOTAVAIL)", _real_link),
     Figures("port-bomb", "tcplab experiment port-bomb --variant pool --variant "
             "pool-too-small", "2026-11-30",
             "with 8 requests at a time and at most 2 connections kept idle (Go's "
             "http.Transport default per host), 2,252 of 3,000 requests opened a new "
             "connection and TIME_WAIT peaked at 1,000 of 1,000 ports; connect() failed with "
             "EADDRNOTAVAIL after 1,328 ok requests, 1,252 failures in all (1,252 "
             "EADDRNOTAVAIL); the pool that kept all 8 had TIME_WAIT 8", _pool_too_small),
     Figures("", "tcplab bomb --count 20000 && tcplab sockets --state time-wait --json",
             "2026-11-30",
             "20,000 connections to one destination left 14,147 sockets in TIME_WAIT: "
             "14,116 on even local ports, 31 on odd ones",
             context="in a new network namespace (the kernel's default range and "
             "tcp_tw_reuse = 2) against tcplab server")),
    "On a modern kernel the classic bomb against 127.0.0.1 does not fail, but across a "
    "real link it still does: "
    "net.ipv4.tcp_tw_reuse defaults to 2, which lets connect() take the port of a "
    "loopback TIME_WAIT socket once it is 1 s old (tcp_tw_reuse_delay): loopback means "
    "an address in 127.0.0.0/8, ::1 or a v4-mapped loopback address at either end, or a "
    "socket bound to lo (tcp_twsk_unique in net/ipv4/tcp_ipv4.c; a 10.x address on lo "
    "does not count). It applies to outgoing connect() only, and needs TCP timestamps: "
    "with tcp_timestamps = 0 no port is reused (measured in issue 13). The port-bomb "
    "experiment's default-reuse variant measures it; its real-link variant runs the same "
    "defaults from one network namespace to another across a veth pair, where nothing is "
    "loopback, so no TIME_WAIT port is reused and connect() fails with EADDRNOTAVAIL once "
    "the range is in TIME_WAIT. tcplab's experiment sets "
    "tcp_tw_reuse = 0 inside its own namespace to show the failure. bind() before "
    "connect() toward one destination failed at the same count here (1,000 connections "
    "of a 1,000-port range either way; the first error after 978 to 999, 3 runs each, in "
    "private namespaces, issue 13). Go reports the exhaustion as 'dial tcp "
    "127.0.0.1:8080: connect: cannot assign requested address' (the original notes say "
    "'dial tcp: assign requested address'), and only after its dialer tried again: "
    "the dialer in net/tcpsock_posix.go retries EADDRNOTAVAIL (spuriousENOTAVAIL) up to "
    "twice (doDialTCP in Go 1.19). The fix is still connection pooling.",
))

_add(Lesson(
    "close-wait", "CLOSE_WAIT and FIN_WAIT2: the half-closed trap",
    """When the peer's FIN arrives, our socket moves to CLOSE_WAIT and stays there until
OUR application calls close() (or exits). A process with many CLOSE_WAIT sockets has a bug: some
path never closes (an error branch, a pool that loses connections). Each of those
sockets also keeps its file descriptor. The peer that closed first waits in
FIN_WAIT2 for our FIN; if it has closed its socket (orphaned), the kernel gives up
after tcp_fin_timeout (60 s by default); if it only shut down its write side, it
waits forever.

With SO_KEEPALIVE on the accepted sockets, the peer's RST answers a probe once the
peer is gone and CLOSE_WAIT goes away, but the fds stay: the leak is in fds, not
TCP states. 'tcplab doctor' names the process: close_wait_leak.

Go differs twice. It turns keep-alive on for every accepted connection, 15 s idle
and interval ((*TCPListener).accept in net/tcpsock_posix.go; defaultTCPKeepAlive in
net/dial.go, defaultTCPKeepAliveIdle and ...Interval in newer Go), so a leaking Go
server's CLOSE_WAIT sockets vanish at the first probe after the peer's socket is
gone, while its fds stay leaked. A peer that closed keeps a FIN_WAIT2 minisocket for
tcp_fin_timeout (60 s by default), and that answers the probes with an ACK
(tcp_timewait_state_process), so CLOSE_WAIT ends at the first probe after that
minisocket expired: 15 s to tcp_fin_timeout + 15 s after the peer closed.
'tcplab experiment fd-leak --keepalive 15' shows it with tcplab's server (its
namespace has tcp_fin_timeout = 5). And a net.Conn nobody references any
more (a handler that returns without Close()) is closed by the finalizer the net
package set on its netFD ((*netFD).setAddr calls runtime.SetFinalizer, net/fd_posix.go)
at a later garbage collection: such a leak heals itself, late. The runtime starts a
collection as the heap nears its goal: what the last one left live plus GOGC percent
(100 by default) of that, its stacks and globals, and at least 4 MiB (heapMinimum;
gcControllerState.commit in runtime/mgcpacer.go); so new traffic that allocates
brings one, and an idle server's
last unreachable connections wait for the collection the runtime forces 2 minutes
after the last (forcegcperiod in runtime/proc.go). The fd leak bites in Go when the
connections stay referenced (a map, a slice, a goroutine blocked on one).

With go on PATH, 'tcplab experiment fd-leak' shows both with a Go server of its own
(tcplab/peers/goleak.go): go-drop, a handler that returns without Close(), flooded,
then left without traffic, then sent later traffic on a port whose handler closes;
go-keep, the same handler with every connection kept in a slice. The server runs
with GODEBUG=gctrace=1, which makes the runtime print a line per collection (it does
not change when they run), and with GOGC and GOMEMLIMIT unset.""",
    "tcplab experiment half-close; tcplab experiment fd-leak; tcplab doctor",
    (Figures("half-close", "tcplab experiment half-close", "2026-11-30",
             "after the client's shutdown(SHUT_WR), the client's socket was in FIN_WAIT2 and "
             "the server's in CLOSE_WAIT, and both stayed there while the server still sent "
             "(a FIN closes one direction only); after the server's close(), the client's "
             "socket was in TIME_WAIT and the server's gone", _half_close_states),
     Figures("fd-leak", "tcplab experiment fd-leak", "2026-11-30",
             "with tcp_fin_timeout = 5 s, 307 server sockets in CLOSE_WAIT and 307 client "
             "sockets in FIN_WAIT2 at the peak; after the wait, FIN_WAIT2 0 and CLOSE_WAIT "
             "still 307; the server that closes: CLOSE_WAIT 0 once it had closed (peak 0 "
             "while the clients closed)",
             _fd_leak_close_wait),
     Figures("fd-leak", "tcplab experiment fd-leak", "2026-11-30",
             "a Go handler returned without Close() for 512 connections: the server's fds "
             "went from 8 to a peak of 60 (10 collections during the flood) and were 51 "
             "after 3 s without traffic (43 in CLOSE_WAIT); 128 later clients made the "
             "runtime collect 4.6 s after the flood began, and the fds were 8 at the end "
             "(go1.19.8, GODEBUG=gctrace=1, GOGC 100)", _fd_leak_go_drop,
             context="with go1.19.8 on PATH (its go-drop round)"),
     Figures("fd-leak", "tcplab experiment fd-leak", "2026-11-30",
             "with the connections kept in a slice, 128 sockets sat in CLOSE_WAIT until "
             "15.1 s after the flood began, none at 16.2 s, and the fds stayed at 135 "
             "(from 7)", _fd_leak_go_keep,
             context="with go1.19.8 on PATH (its go-keep round)"),
     # Recorded with the 2 s the option had before it took seconds (fd_leak.KEEPALIVE_S).
     Figures("fd-leak", "tcplab experiment fd-leak --keepalive 2", "2026-11-30",
             "with SO_KEEPALIVE on the accepted sockets, CLOSE_WAIT 65 after the peers left "
             "and fds still 256", _fd_leak_keepalive),
     Figures("", "ss -s", "2026-11-30",
             "with 5 sockets in CLOSE_WAIT, 5 in FIN_WAIT2 and none ESTABLISHED on the "
             "port (and no other socket in the namespace), 'ss -s' said 'estab 5'",
             context="beside `tcplab states --port P` in a new network namespace")),
    "The original notes say the Go server stays in CLOSE_WAIT, and that a connection "
    "whose Close() is missing remains in the process's file descriptor table. With Go's "
    "keep-alive the server stays in "
    "CLOSE_WAIT only until a probe (every 15 s) finds the peer's socket gone, which is "
    "after the peer's FIN_WAIT2 minisocket expired (measured with 1 s probes in a private "
    "namespace: CLOSE_WAIT lasted 8.6 s with tcp_fin_timeout = 8 and 4.5 s with 3), "
    "while the fds stay; "
    "and a handler that returns without Close() leaks only until a later collection. "
    "Measured in private namespaces with tcplab's Go server (go1.19.8; 5 runs of 'tcplab "
    "experiment fd-leak' as root, 3 as nobody, on 2026-11-30): 512 connections never "
    "closed by the server left its fds peaking at 52 to 83 (9 to 11 collections during "
    "the flood), the 17 to 44 still open 3 s after it went at the first collection of "
    "the later traffic (fds back at 8); 128 connections kept in a slice sat in CLOSE_WAIT "
    "until 15.1 to 16.3 s after their flood began (tcp_fin_timeout = 5 there), none was "
    "left at 16.0 to 17.9 s (the latest in a run beside a load average of 388), and "
    "the fds stayed at 135. "
    "'ss -s' prints the kernel's CurrEstab counter as 'estab', and that counter counts "
    "CLOSE_WAIT sockets too (tcp_set_state in net/ipv4/tcp.c; RFC 1213's tcpCurrEstab is "
    "ESTABLISHED or CLOSE-WAIT), so a summary can hide the leak: count per state "
    "('tcplab states').",
))

_add(Lesson(
    "fd-limit", "File descriptors: EMFILE, and who raises the limit",
    """Every socket is a file descriptor, and a process may hold at most its soft
RLIMIT_NOFILE ('ulimit -n'). Beyond it accept() fails with EMFILE, "Too many open
files" (and with ENFILE once the whole system holds fs.file-max files, a limit a
process with CAP_SYS_ADMIN may exceed: alloc_empty_file in fs/file_table.c). The
kernel still completes handshakes into the listener's accept queue (LISTEN Recv-Q
grows to backlog + 1): those clients connect, then their reads hang; once the queue
is full, new SYNs are dropped and clients hang in SYN_SENT. There is no "connection
refused".

tcplab's server backs off 5 ms doubling to 1 s when accept() fails, as Go's net/http
does (tempDelay in Server.Serve, net/http/server.go), and stays idle meanwhile. The
errnos it backs off on, EMFILE, ENFILE, ENOBUFS and ENOMEM, are CPython's
(BaseSelectorEventLoop._accept_connection in Lib/asyncio/selector_events.py); Go's
are its temporary ones, EINTR, EMFILE, ENFILE and the timeouts (Errno.Temporary in
syscall/syscall_unix.go), and ECONNRESET and ECONNABORTED from accept()
((*OpError).Temporary in net/net.go).""",
    "tcplab experiment fd-leak; tcplab fds PID; LEAK=true tcplab server --fd-limit 128",
    (Figures("fd-leak", "tcplab experiment fd-leak", "2026-11-30",
             "limit 256, backlog 64: the leaking server's fds peaked at 256 of 256; its log "
             "said \"accept: [Errno 24] Too many open files (256 of 256 fds in use); retrying "
             "in 5 ms\"; accept queue peak 65; of 512 clients, 242 got their echo, 65 "
             "connected without an echo and 205 never connected (SYN_SENT)", _fd_leak_limit),),
    "Go, since 1.19, raises its own soft limit to the hard limit at start (init in "
    "os/rlimit.go in Go 1.19.8, the Go here, and 1.20.0; in syscall/rlimit.go since 1.21 "
    "and in later 1.19 and 1.20 point releases), so 'ulimit -Sn 128' does not "
    "reproduce the leak with the Go original; 'ulimit -n 128' sets the hard limit too, "
    "and that one Go keeps. A Python process keeps the limit it was given. And a Go "
    "server whose handler merely returns without Close() may never reach the limit at all: "
    "the finalizer net sets on each connection's netFD closes those nothing references "
    "any more, after a garbage collection "
    "(the go-drop round of 'tcplab experiment fd-leak': 512 connections through a 256-fd "
    "limit, set soft and hard, its fds peaking at 52 to 83 and no EMFILE, in 5 runs here on "
    "2026-11-30, go1.19.8, 64 KiB allocated per connection). Whether it does depends on how "
    "much each connection allocates, since allocation brings the collections; to show "
    "'too many open files' reliably, keep the connections referenced (a map, a slice, a "
    "goroutine blocked on one).",
))

_add(Lesson(
    "handshake", "The socket lifecycle and the 3-way handshake",
    """The server: socket(), bind(), listen(); the client: socket(), connect(). connect()
sends SYN (the client is SYN_SENT; its port is chosen at that moment, so the first
trace line shows sport=0); the server answers SYN-ACK from a request socket
(SYN_RECV). The client is ESTABLISHED as soon as the SYN-ACK arrives, before its ACK
leaves (tcp_finish_connect, from tcp_rcv_synsent_state_process in
net/ipv4/tcp_input.c); the server's side is ESTABLISHED when that ACK arrives, and
only then does accept() return a new fd.

Closing: the first close() sends FIN (FIN_WAIT1); the peer enters CLOSE_WAIT when
that FIN arrives (tcp_fin), and its ACK moves the closer to FIN_WAIT2. The closer's
socket, an orphan after close(), is then replaced at once by a FIN_WAIT2 minisocket
(tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) in tcp_rcv_state_process, when tcp_fin_timeout
is at most 60 s, the default): the trace shows
FIN_WAIT2 -> CLOSE before the peer's FIN. The peer's close() sends its
FIN (LAST_ACK); the minisocket answers it and turns TIME_WAIT
(tcp_timewait_state_process in net/ipv4/tcp_minisocks.c), a change no trace event
shows. After shutdown(SHUT_WR) instead, the full socket waits in FIN_WAIT2 for that
FIN. An RST close (SO_LINGER 0) skips all of that.""",
    "tcplab experiment handshake; sudo tcplab trace --port 8080; sudo tcplab capture",
    (Figures("handshake", "tcplab experiment handshake", "2026-11-30",
             "15 packets (2 SYN, 2 SYN-ACK, 2 FIN, 1 RST), 18 state changes and 14 socket "
             "calls on one timeline; the first handshake took 0.031 ms from SYN to the "
             "client's ACK (packet times); the first client socket then had 58.6 s of "
             "TIME_WAIT left", _handshake),),
    "The original notes watch 'tcpdump -i lo0': lo0 is macOS. On Linux the loopback "
    "interface is 'lo'.",
))

_add(Lesson(
    "netpoll", "Multiplexing: netpoll, epoll and the event loop",
    """Go's conn.Read() looks blocking, but underneath it calls read() on a non-blocking
socket first and parks the goroutine only when that returns EAGAIN (FD.Read in
internal/poll/fd_unix.go). The runtime registered the fd with its epoll instance
once, edge-triggered, when the socket was created or accepted (EPOLLIN | EPOLLOUT |
EPOLLRDHUP | EPOLLET in netpollopen, runtime/netpoll_epoll.go); when epoll reports
it, the parked goroutine is made runnable again. GOMAXPROCS is the number of Ps, the
slots that run Go code at once, not of threads: the runtime has a few more OS threads
(for blocked system calls, sysmon; a Go server holding 10,000 and 19,000 connections
on this 2-core machine ran 10 threads in one run and 11 in another: bench/results.md,
"Concurrency"), and they
serve any number of connections.

A goroutine (G) runs on an OS thread (M), and an M runs Go code only while it holds a
P. A goroutine in a system call netpoll cannot park, such as a read of a regular file
(epoll refuses those files, so os.File's reads block in read(): newFile in
os/file_unix.go) or a cgo call (cgocall in runtime/cgocall.go), keeps its M for the
whole call (entersyscall in runtime/proc.go). Once sysmon finds the same call still
running at its next look (it sleeps 20 us between looks, doubling up to 10 ms while
idle), or after 10 ms when the P has nothing queued and another P or a spinning M is
free, its retake takes the P back and handoffp starts another M with it when there is
work (runtime/proc.go, Go 1.19); exitsyscall
looks for a P again when the call returns. That is why a Go program has more
threads than GOMAXPROCS: one per goroutine blocked in such a call, and a few more;
a socket read never holds a thread.

Level- against edge-triggered: a level-triggered epoll reports a socket in every
epoll_wait() while it has unread data, so a loop may read once and be told again;
an edge-triggered one (EPOLLET) reports it only when new data arrives, so a reader
must read until EAGAIN before it waits, or it may never hear of the rest. Go waits
only after read() said EAGAIN, which is what edge-triggering requires.

Python spells the same machinery out: the selector (select.epoll) is netpoll; the
event loop is the scheduler; a coroutine awaiting a read is parked on a future
that the loop completes when epoll says the socket is readable. tcplab's 'epoll'
model is that loop written by hand, level-triggered (select.epoll without EPOLLET,
traffic/echo_epoll.py), where Go's is edge-triggered;
'asyncio' and 'uvloop' are it in the stdlib and in C.

Thread per connection gives each connection an OS thread and its stack; in Python
those threads also queue for the GIL (a waiting thread asks for it every 5 ms,
sys.getswitchinterval()), so at thousands of connections the threads model serves
far fewer echoes per second and its connections can time out before they are
served.""",
    "tcplab experiment multiplex; tcplab multiplex --connections 10000",
    (Figures("multiplex", "tcplab experiment multiplex", "2026-11-30",
             "at 10,000 connections, epoll, asyncio, uvloop each ran on 1 thread, one epoll "
             "instance watching 10,002-10,004 sockets, 0.3-1.8 KiB of RSS per connection, "
             "9.2-12.2 us of server CPU per echo, no connection failed; thread per "
             "connection at 10,000 connections collapsed: 9,358 of 10,000 connections "
             "failed; what got through: 11,010 echoes (546/s) on 9,978 threads (at 1,000: "
             "7,406 echoes/s); failures: timeout x9,358", _multiplex),),
))

_add(Lesson(
    "restart", "Restarting a server: EADDRINUSE, SO_REUSEADDR and what the other knobs do",
    """A server that closed its connections first leaves its side of each in TIME_WAIT,
on its own port, for 60 s. Restarted within that time, its new listener's bind()
fails with EADDRINUSE, "Address already in use": the bind check
(inet_csk_bind_conflict in net/ipv4/inet_connection_sock.c, which calls
inet_bind_conflict) finds those sockets in the port's bind bucket.

SO_REUSEADDR lets a socket bind a port that non-listening sockets (TIME_WAIT
among them) still use, but only when BOTH have it: a TIME_WAIT socket keeps the
flag of the socket it replaced (inet_twsk_alloc in net/ipv4/inet_timewait_sock.c),
and an accepted socket has its listener's. So the old server must have set it
too (Go sets it on every listener, as do Python's asyncio servers and
http.server). It never lets two sockets LISTEN on the same address and port, and
binding with it does not end TIME_WAIT (a connect() from such a port to the same
peer does take the TIME_WAIT 4-tuple over when it had TCP timestamps, whatever
tcp_tw_reuse says: tcp_twsk_unique, measured in the issue 13 audit).

SO_REUSEPORT is another thing: several sockets, each with it, of the same user,
may listen on one port at once, and the kernel spreads new connections over
them (a restart without a gap: start the new process, then stop the old one;
connections still in the old listener's accept queue are reset when it closes,
unless net.ipv4.tcp_migrate_req = 1 moves them: inet_csk_listen_stop).

net.ipv4.tcp_tw_reuse does not touch bind() or servers at all: it lets an
outgoing connect() take over a TIME_WAIT 4-tuple once the TIME_WAIT socket is
tcp_tw_reuse_delay old (1,000 ms by default; tcp_twsk_unique in net/ipv4/tcp_ipv4.c;
it needs TCP timestamps; 2, the default, only for loopback).
net.ipv4.tcp_tw_recycle is gone
(removed in Linux 4.12): it made servers drop SYNs whose timestamps went back
in time, which broke clients behind NAT, whose hosts' clocks differ.""",
    "tcplab experiment restart",
    (Figures("restart", "tcplab experiment restart", "2026-11-30",
             "after a server with SO_REUSEADDR stopped with 5 TIME_WAIT sockets on its port, a "
             "new bind() without SO_REUSEADDR failed with EADDRINUSE (\"Address already in "
             "use\") and with SO_REUSEADDR succeeded; after a server without SO_REUSEADDR "
             "stopped with 5 TIME_WAIT sockets on its port, a new bind() without SO_REUSEADDR "
             "failed with EADDRINUSE (\"Address already in use\") and with SO_REUSEADDR failed "
             "with EADDRINUSE (\"Address already in use\")", _restart),),
))

_add(Lesson(
    "reset", "RST: close() with unread data, and SO_LINGER 0",
    """close() normally sends a FIN after any data still queued, and the peer reads
EOF. But if data the application never read is still in the socket's receive
buffer, __tcp_close (called by tcp_close, net/ipv4/tcp.c) sends a RST instead ("As
outlined in RFC 2525, section 2.17, we send a RST here because data was lost", its
comment says) and counts TcpExt TCPAbortOnClose: the peer's next read fails with
ECONNRESET, "Connection reset by peer". Neither socket goes through FIN_WAIT or
TIME_WAIT. A server that answers and closes without reading
the whole request (a body it did not want) hits this.

SO_LINGER {on, 0 s} does the same on purpose, unread data or not (counted as
TCPAbortOnData when nothing was unread, in __tcp_close too): the port-bomb
experiment's linger0 variant uses it to avoid TIME_WAIT, at the price of this error
on the peer and of any data in flight.""",
    "tcplab experiment reset; tcplab experiment port-bomb --variant linger0",
    (Figures("reset", "tcplab experiment reset", "2026-11-30",
             "close() after reading the bytes: no RST, the server's socket FIN_WAIT2, the "
             "client's CLOSE_WAIT, its next read EOF (0 bytes); close() with 5 B unread: 1 RST "
             "sent, the server's socket gone, the client's gone, its next read [Errno 104] "
             "ECONNRESET: Connection reset by peer; close() with SO_LINGER {1, 0} and nothing "
             "unread: 1 RST sent, the server's socket gone, the client's gone, its next read "
             "[Errno 104] ECONNRESET: Connection reset by peer", _reset),),
))

_add(Lesson(
    "syn-queue", "The SYN queue and the accept queue: a server that does not accept() fast enough",
    """A listening socket has two queues. A SYN makes a request socket (SYN_RECV; the
kernel's TCP_NEW_SYN_RECV) in its SYN queue; the client's final ACK turns it into a
full socket in the accept queue, where it waits for accept(). listen()'s backlog,
capped by net.core.somaxconn (__sys_listen_socket, net/socket.c), bounds both. 'ss -lnt'
shows the accept queue as the LISTEN socket's Recv-Q and the backlog as its Send-Q.

The accept queue is full when it holds MORE than the backlog (sk_acceptq_is_full,
include/net/sock.h), so it holds backlog + 1. Then the kernel drops, silently, new
SYNs (tcp_conn_request, net/ipv4/tcp_input.c): no SYN-ACK, no RST; the client sits
in SYN_SENT, its connect() neither done nor refused (no ECONNREFUSED), and sends
its SYN again later (the timings belong to a later lesson). It drops final ACKs
too (tcp_v4_syn_recv_sock, net/ipv4/tcp_ipv4.c, called from tcp_check_req in
net/ipv4/tcp_minisocks.c): that client is ESTABLISHED already (a client is, when
the SYN-ACK arrives) and its connect() has returned, while the server keeps only
the request socket, or nothing when the SYN was answered with a cookie.

Both are counted in /proc/net/netstat as TcpExt ListenOverflows (the accept queue
was full) and ListenDrops (every SYN tcp_conn_request dropped and every final ACK
tcp_v4_syn_recv_sock made no socket for, whatever the reason: tcp_listendrop in
include/net/tcp.h; so at least ListenOverflows); 'nstat -az
TcpExtListenOverflows' and 'tcplab doctor' read them. The fix is on the server:
accept() faster (more workers, SO_REUSEPORT), or a larger backlog and somaxconn
for bursts.

net.ipv4.tcp_abort_on_overflow = 1 makes tcp_check_req answer such a final ACK
with a RST instead (counted as EmbryonicRsts): the client learns at once, its next
read failing with ECONNRESET, "Connection reset by peer", instead of waiting. Only
a request socket's: the ACK of a SYN answered with a cookie goes through
cookie_v4_check (net/ipv4/syncookies.c) instead, which drops it when
tcp_v4_syn_recv_sock makes no socket, whatever tcp_abort_on_overflow says, so that
client stays ESTABLISHED with nothing on the server.

The SYN queue is full when it holds more request sockets than the backlog
(inet_csk_reqsk_queue_is_full, include/net/inet_connection_sock.h; "more than"
since the January 2025 fix "tcp/dccp: allow a connection when sk_max_ack_backlog
is zero", backported to stable kernels; before it, as many as). A SYN that
finds it full gets a SYN cookie when net.ipv4.tcp_syncookies is 1 (the default;
2: every SYN gets one): the SYN-ACK's sequence number encodes the connection, no
request socket is kept (SyncookiesSent, TCPReqQFullDoCookies), and the ACK
rebuilds it (cookie_v4_check, net/ipv4/syncookies.c). With syncookies 0 it is
dropped (TCPReqQFullDrop). Either way tcp_conn_request checks the accept queue
after that: a cookie does not get a SYN past a full accept queue.

net.ipv4.tcp_max_syn_backlog matters only with syncookies off: tcp_conn_request
then drops a SYN once the SYN queue leaves less than a quarter of it free, except
from a peer whose round-trip time the kernel remembers from an earlier connection
(tcp_peer_is_proven, net/ipv4/tcp_metrics.c). With syncookies on,
the listen backlog alone caps the SYN queue.

The experiment holds its clients' final ACKs back with TCP_QUICKACK = 0 (a client
in delayed-ACK mode answers the SYN-ACK from its delayed-ACK timer, TCP_DELACK_MAX
(200 ms) later: tcp_rcv_synsent_state_process, net/ipv4/tcp_input.c): on loopback the
whole handshake otherwise runs inside connect(), and the ACK never arrives after
the queue filled. Across a link (--link veth) it holds them the same way: the
link alone would hold an ACK only for its one-way delay after the server saw the
SYN, microseconds on an unshaped veth; the client's timer sends it
(tcp_delack_timer_handler, net/ipv4/tcp_timer.c, counted in the client's
namespace as DelayedACKs) and it arrives a one-way delay later.""",
    "tcplab experiment syn-queue",
    (Figures("syn-queue", "tcplab experiment syn-queue", "2026-11-30",
             "with backlog 8 the accept queue held 9 and no more: of 11 clients whose final "
             "ACK came late, 10 were left ESTABLISHED with no full socket on the server (9 "
             "with a request socket in SYN_RECV, 1 with none) and no error (ListenOverflows "
             "10); of 3 clients that came after, 3 sat in SYN_SENT, connect() neither done "
             "nor refused (ListenOverflows 3, ListenDrops 3); with tcp_abort_on_overflow = 1, "
             "9 clients got [Errno 104] ECONNRESET: Connection reset by peer (EmbryonicRsts "
             "9); with tcp_max_syn_backlog 8, the SYN queue held 9 request sockets with "
             "syncookies on (2 SYNs answered with a cookie) and 7 with them off (4 SYNs "
             "dropped: those clients in SYN_SENT)", _syn_queue),),
))

_add(Lesson(
    "keepalive", "Keep-alive: noticing a peer that went silent",
    """TCP keep-alive is off unless the program turns it on with SO_KEEPALIVE
(tcp_keepalive_timer in net/ipv4/tcp_timer.c probes only a socket with
SOCK_KEEPOPEN, the flag SO_KEEPALIVE sets). The kernel's
defaults are 7200 s of silence before the first probe, a probe every 75 s after that,
and 9 unanswered probes before it gives up (TCP_KEEPALIVE_TIME, TCP_KEEPALIVE_INTVL and
TCP_KEEPALIVE_PROBES in include/net/tcp.h; the sysctls net.ipv4.tcp_keepalive_time,
_intvl and _probes): a dead peer is noticed after 7200 + 9 x 75 s, about 2 h 11 min.
A program sets its own per socket with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.

tcp_keepalive_timer counts from the last segment received, and only while nothing is
in flight or queued ("It is alive without keepalive"): a probe goes out once KEEPIDLE
has passed, then one every KEEPINTVL, and any answer starts the count again. A peer
host that no longer has the connection (rebooted, or its socket closed and gone)
answers the probe with a RST, which ends the connection at once. A silent peer (a
crashed host, a pulled cable, a firewall that drops) answers nothing: after KEEPCNT
unanswered probes the kernel sends a RST into the silence and fails the socket
(tcp_write_err), so a blocked read returns ETIMEDOUT, "Connection timed out". A
connection with unacknowledged data is not probed: its retransmission timer decides
(tcp_write_timeout), once the time that net.ipv4.tcp_retries2 (15) retransmissions
and the timeout after them would take, from 200 ms doubling up to 120 s, has passed
since the data was sent (924.6 s), at the first retransmission timeout after that
(retransmits_timed_out; tcp_retries2 in Documentation/networking/ip-sysctl.rst): a
time, not a count of retransmissions.

TCP_USER_TIMEOUT, in milliseconds (the local half of RFC 5482's user timeout), caps
both. With keep-alive, tcp_keepalive_timer fails the socket once that much time has
passed since the last received segment and at least one probe went unanswered,
whatever KEEPCNT says; with data in flight, tcp_write_timeout fails it once that much
time has passed since the unacknowledged data was sent (retransmits_timed_out with
the user timeout in place of tcp_retries2).

Go turns keep-alive on for every connection it dials or accepts, 15 s idle and 15 s
between probes (defaultTCPKeepAlive in net/dial.go; (*TCPListener).accept in
net/tcpsock_posix.go; setKeepAlivePeriod sets TCP_KEEPIDLE and TCP_KEEPINTVL and
leaves TCP_KEEPCNT at the kernel's 9 in Go 1.19; the KeepAliveConfig of Go 1.23 and
later defaults to 15 s, 15 s and 9: defaultTCPKeepAliveIdle,
defaultTCPKeepAliveInterval and defaultTCPKeepAliveCount in net/dial.go), unless
Dialer.KeepAlive or ListenConfig.KeepAlive is negative: a silent peer is given up
after about 15 + 9 x 15 = 150 s. Python, like C, leaves it off. What keep-alive does
to a leaking server: 'tcplab explain close-wait'.""",
    "tcplab experiment keepalive; tcplab experiment fd-leak --keepalive 15",
    (Figures("keepalive", "tcplab experiment keepalive", "2026-11-30",
             "with the peer's link set down 0.3 s after connect(), keep-alive at 1 s idle, 1 s "
             "interval and 3 probes: 3 probes (TcpExt TCPKeepAlive), then the client's recv() "
             "failed with ETIMEDOUT (\"Connection timed out\") 4.1 s after connect(); with 9 "
             "probes and TCP_USER_TIMEOUT 2.5 s: 2 probes and the same error at 3.1 s; with no "
             "keep-alive, 100 bytes sent into the silence and TCP_USER_TIMEOUT 2 s: 4 "
             "retransmissions and the same error at 2.7 s",
             this_run=_keepalive,
             context="(the peer in a second network namespace over a veth pair; 3 runs as "
             "root and 2 as an ordinary user: the same probe counts each time, 3 or 4 "
             "retransmissions, the errors within 0.1 s of these)"),
    # Recorded with the 2 s the option had before it took seconds (fd_leak.KEEPALIVE_S).
     Figures("fd-leak", "tcplab experiment fd-leak --keepalive 2", "2026-11-30",
             "with SO_KEEPALIVE on the accepted sockets, CLOSE_WAIT 65 after the peers left "
             "and fds still 256", _fd_leak_keepalive)),
))

_add(Lesson(
    "ports", "Choosing a local port: bind() without a port, per-socket ranges, parity",
    """How many ports connect() has per destination, and why bind() before connect()
costs ports: 'tcplab explain port-range'. Three socket options and a sysctl decide
which port a socket gets.

IP_BIND_ADDRESS_NO_PORT (Linux 4.2) lets a client bind() its source address without
taking a port: the port stays 0 until connect(), which then chooses it per
destination as if there had been no bind() (__inet_hash_connect in
net/ipv4/inet_hashtables.c), so a client that must pick its source address still
shares ports across destinations. Without it, bind() to port 0 takes a port for the
socket at once (inet_csk_find_open_port in net/ipv4/inet_connection_sock.c), whatever
the destination will be.

IP_LOCAL_PORT_RANGE (Linux 6.3) narrows net.ipv4.ip_local_port_range for one socket:
the upper bound in the high 16 bits of a 32-bit value, the lower in the low 16; each
bound counts only if it lies inside the namespace's range, a bound outside it or 0
has no effect (inet_sk_get_local_port_range in net/ipv4/inet_connection_sock.c). Ports
listed in
net.ipv4.ip_local_reserved_ports are skipped by connect() and by bind() to port 0
(inet_is_local_reserved_port), but may still be bound by number.

Parity: within the range, connect() first tries ports at an even offset from its low
end ("In first pass we try ports of @low parity", __inet_hash_connect) and bind() to
port 0 the odd ones first ("We do the opposite to not pollute connect() users",
inet_csk_find_open_port); each falls back to the other half when its own is full.
With the default range 32768-60999 that is even ports for connect(). With a
per-socket range connect() drops the parity rule and tries every port in turn from a
random offset (step 1 in __inet_hash_connect), so its ports may come in order.

Across a link (--link veth) the range is the client namespace's (a socket's
namespace decides, sock_net) and the second destination is the server's one IPv4
address at another port, 8081: connect() needs only the whole 4-tuple to be unique
(__inet_check_established, net/ipv4/inet_hashtables.c), so a port is as good as an
address for showing IP_BIND_ADDRESS_NO_PORT.""",
    "tcplab experiment ports; tcplab experiment port-bomb; tcplab limits",
    (Figures("ports", "tcplab experiment ports", "2026-11-30",
             "in a ten-port range (40000-40009), 5 connect()s got 5 even ports and 5 bind()s "
             "to port 0 got 5 odd ports; bind() then connect() to 127.0.0.1 got 10 "
             "connections, then bind() failed with EADDRINUSE, and toward 127.0.0.2 the first "
             "bind() failed with EADDRINUSE; with IP_BIND_ADDRESS_NO_PORT, 10 connections to "
             "127.0.0.1 and 10 more to 127.0.0.2 from the same 10 ports, then connect() failed "
             "with EADDRNOTAVAIL; IP_LOCAL_PORT_RANGE 40002-40005 gave 4 connections on those "
             "ports, then connect() failed with EADDRNOTAVAIL; ip_local_reserved_ports "
             "40000-40007 left 40008 and 40009, then connect() failed with EADDRNOTAVAIL",
             this_run=_ports,
             context="(3 runs as root and 2 as an ordinary user, the same each time but "
             "for the order of the ports)"),),
))

_add(Lesson(
    "orphans", "Orphans: sockets no process holds",
    """After close() the kernel still owns the connection until it has finished
closing: the socket is an orphan (SOCK_DEAD, no file descriptor), and no process
shows as its owner. Orphans in FIN_WAIT1 (our FIN not yet acknowledged, perhaps
queued behind unsent data the peer's closed window holds back), CLOSING and LAST_ACK
are full sockets, counted as "orphan" in /proc/net/sockstat. An orphan in FIN_WAIT1
that gets its ACK is replaced at once by a small FIN_WAIT2 minisocket
(tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) in tcp_rcv_state_process, net/ipv4/tcp_input.c),
which waits net.ipv4.tcp_fin_timeout (60 s by default) for the peer's FIN and is then
dropped; with the FIN it turns TIME_WAIT ('tcplab explain time-wait'). (With
tcp_fin_timeout above 60 s the full socket waits out the excess first.)

/proc/net/sockstat's "tw", which 'ss -s' prints as "timewait", counts every
minisocket, FIN_WAIT2 and TIME_WAIT alike: a client whose peer never closes shows
there as TIME_WAIT it does not have. Count per state instead ('tcplab states'). Its
"orphan" is the whole machine's count, whatever namespace reads it, while "tw" and
"inuse" are the namespace's own (sockstat_seq_show in net/ipv4/proc.c; measured here).

net.ipv4.tcp_max_orphans (a machine-wide sysctl, absent in other network namespaces)
caps orphans: above it (a count refreshed every 100 ms), a closing socket or an
orphan whose timer fires is closed at once, usually with a RST, and counted as TcpExt
TCPAbortOnMemory, and the kernel logs "too many orphaned sockets", rate-limited
(tcp_check_oom in net/ipv4/tcp.c, from tcp_close and from tcp_out_of_resources in
net/ipv4/tcp_timer.c, which already acts at half or a quarter of it for an orphan
long silent or with an ICMP error; tcp_check_oom does the same when TCP's memory,
net.ipv4.tcp_mem, runs out). net.ipv4.tcp_orphan_retries bounds how long an orphan
retransmits its FIN or probes a closed window: 0, the default, means 8 while the
retransmission timeout is below its maximum, 120 s by default (tcp_orphan_retries in
tcp_timer.c: "8 corresponds to >100 seconds with minimal RTO of 200msec"). Like
tcp_retries2 it is a time: N allows what N retransmissions and the timeout after them
take from 200 ms (2: 0.2 + 0.4 + 0.8 = 1.4 s), and the orphan goes at the first
retransmission timeout after that (retransmits_timed_out).""",
    "tcplab experiment orphans; tcplab states; ss -s",
    (Figures("", "ss -s", "2026-11-30",
             "with 5 client sockets in FIN_WAIT2 and none in TIME_WAIT, 'ss -s' said "
             "'timewait 5' and /proc/net/sockstat 'tw 5'",
             context="in a new network namespace where 5 clients had closed while the "
             "server held its ends, beside `ss -tan state time-wait` (no socket) and `ss "
             "-tan state fin-wait-2` (5), as root and as an ordinary user"),
     Figures("orphans", "tcplab experiment orphans", "2026-11-30",
             "5 clients closed while the server held its ends: 5 sockets in FIN_WAIT2, 5 in "
             "CLOSE_WAIT, none in TIME_WAIT, sockstat tw 5; with tcp_fin_timeout = 3, 3.2 s "
             "after close() FIN_WAIT2 was 0 and tw 0 while CLOSE_WAIT stayed 5; 5 servers that "
             "closed behind unsent data to clients that did not read left 5 orphans in "
             "FIN_WAIT1 (sockstat's machine-wide orphan count 14, then 9 once the clients' "
             "RSTs ended them); with tcp_orphan_retries = 2, an orphan whose peer went silent "
             "was gone 3.3 s after close(), after 4 retransmissions",
             this_run=_orphans,
             context="(3 runs as root and 2 as an ordinary user: the states and tw the same "
             "each time, the FIN_WAIT2 minisockets gone after 3.0 to 3.2 s, the orphan after "
             "3.3 to 3.4 s and 3 or 4 retransmissions; the machine-wide orphan count moved "
             "with other processes' sockets)")),
))

_add(Lesson(
    "nagle", "Nagle's algorithm meets the delayed ACK: write-write-read",
    """A small write leaves at once when nothing small of ours is unacknowledged; a
second small write while the first small segment is still unacknowledged waits for
its ACK. That is Nagle's algorithm with Minshall's variant (tcp_nagle_check and
tcp_minshall_check in net/ipv4/tcp_output.c): a segment shorter than the MSS is held
while TCP_NODELAY is off, data is in flight and the last short segment sent (snd_sml)
is not yet acknowledged; it goes when that ACK comes or when a full segment has
gathered. TCP_CORK holds every short segment while it is set, acknowledged or not.

The receiver does not acknowledge each segment at once. __tcp_ack_snd_check
(net/ipv4/tcp_input.c) sends an ACK at once when more than one full segment is
unacknowledged, in quick-ACK mode, or when the protocol requires it; otherwise
tcp_send_delayed_ack arms the delayed-ACK timer for the socket's ato, which starts at
TCP_ATO_MIN = HZ/25 jiffies, 40 ms, the same as TCP_DELACK_MIN (include/net/tcp.h;
TCP_INFO's tcpi_ato shows it), unless data of its own carries the ACK first.

Together they stall a client that writes a request in two pieces (a header, then a
body) and then waits for the reply, against a server that answers only a whole
request: the header leaves, the body waits for the header's ACK, and the server, with
nothing to send before the body comes, lets the timer send that ACK. Each request then
costs the timer, a little over 40 ms (it counts jiffies: 4 ms each at HZ = 250, this
machine's CONFIG_HZ), where the request alone takes microseconds on loopback. Across a
link the body leaves only once the delayed ACK has crossed back: a request takes the
timer and two round trips instead of one. TcpExt DelayedACKs in /proc/net/netstat
counts each time the timer sent the ACK (tcp_delack_timer_handler, net/ipv4/tcp_timer.c).

The first request of a connection does not stall. A socket's first data gives it
quick-ACK credit (tcp_incr_quickack from tcp_event_data_recv, up to TCP_MAX_QUICKACKS =
16), and tcp_in_quickack_mode holds while that lasts and the connection is not
interactive ("pingpong"). The server's first reply, sent within the delayed-ACK time
of the request, counts it as interactive (tcp_event_data_sent;
net.ipv4.tcp_pingpong_thresh, 1 by default, is how many such replies it takes), and
from the second request on its ACKs wait for the timer. The timer, firing in pingpong
mode, leaves it and resets the delay to 40 ms (tcp_delack_timer_handler), but the next
reply enters it again. (Across a link the first request still takes two round trips: its
body waits for the quick ACK to cross back.)

The fixes are on the writer's side: TCP_NODELAY (each write leaves at once, two
packets; Go sets it on every TCP connection, newTCPConn in net/tcpsock.go, Go 1.19
here, and so does CPython's asyncio on its transports, _set_nodelay in
asyncio/base_events.py, while socket.create_connection sets no option), or the whole
request in one write: a buffer, or writev()/sendmsg() with both pieces (one segment,
nothing left to hold back, one packet fewer), or TCP_CORK around the writes.
TCP_QUICKACK on the server is no lasting fix: the kernel enters and leaves quick-ACK
mode again by its own rules (man 7 tcp).""",
    "tcplab experiment nagle; tcplab experiment nagle --link veth --delay 10",
    (Figures("nagle", "tcplab experiment nagle", "2026-11-30",
             "on loopback, with Nagle's algorithm a request took 44.0 ms (median of the 39 "
             "after the first) against 0.03 ms with TCP_NODELAY and 0.02 ms with one "
             "sendmsg(); the server's delayed-ACK timer fired 39 times; the connection's first"
             " request took 0.07 ms; across veth (delay 10 ms each way), with Nagle's "
             "algorithm a request took 84.2 ms (median of the 19 after the first) against 20.4"
             " ms with TCP_NODELAY and 20.4 ms with one sendmsg(); the server's delayed-ACK "
             "timer fired 19 times; the connection's first request took 42.8 ms",
             this_run=_nagle,
             context="(3 full runs as root: on loopback 44.0 ms each time against 0.02 to "
             "0.03 ms, the first request 0.06 to 0.6 ms; across veth 84.0 to 84.2 ms against "
             "20.4 to 20.5 ms, the first 40.7 to 42.8 ms; and 2 as an ordinary user, one "
             "beside a test run: on loopback 44.0 ms against 0.02 to 0.05 ms; across veth 86 "
             "and 100 ms against 22 to 38 ms, the delay line slower under that load)"),),
))

#: The recorded figures (as root, so with the tracepoint). Three full runs as root on
#: 2026-11-30 (two before the probe case was added): the same counts each time, the
#: 1 s gaps 1.00 to 1.03 s, the 4 s gap 4.03 to 4.23 s, the error at 19.36 to 19.54 s.
RETRANSMIT_RECORDED = (
    "with tcp_syn_retries = 3, 8 SYNs left 1.01, 1.02, 1.03, 1.02, 1.02, 2.02, 4.23 s apart "
    "and connect() failed with ETIMEDOUT after 19.54 s (the rule: 19 s); a segment lost in "
    "mid-burst was sent again after 41 ms at an RTT of 41 ms (TCPFastRetrans 1); the last "
    "of two lost last segments was sent again after 127 ms at an RTT of 41 ms "
    "(TCPFastRetrans 1, TCPLossProbes 1); a lost last segment (and its probe) was sent "
    "again after 285 ms, 533 ms at an RTT of 41 ms (TCPLossProbes 1, TCPTimeouts 1); "
    "tcp:tcp_retransmit_skb fired 12 times for 12 retransmitted packets")

_add(Lesson(
    "retransmit", "Retransmissions: SYN backoff, fast retransmit, the tail loss probe and the RTO",
    """A SYN that gets no answer is sent again by the retransmission timer
(tcp_retransmit_timer in net/ipv4/tcp_timer.c). Its first timeout is
TCP_TIMEOUT_INIT, 1 s. Since Linux 6.5 the timeout is not doubled while the
connection has had no more timeouts than net.ipv4.tcp_syn_linear_timeouts
(default 4; the test is `tp->total_rto > sysctl_tcp_syn_linear_timeouts`, on 6.5
and 6.6 icsk_backoff): so the SYNs leave 1, 1, 1, 1, 1 s apart, then 2, 4, 8 s.
connect() fails with ETIMEDOUT ("Connection timed out") at the first timeout
where tcp_write_timeout finds either tcp_syn_retries + tcp_syn_linear_timeouts
SYNs resent (`max_retransmits`), or (2^(tcp_syn_retries + 1) - 1) x 1 s gone
since the first SYN (retransmits_timed_out with tcp_model_timeout and
tcp_timeout_init as its base). With the defaults (tcp_syn_retries 6) that rule
gives 11 SYNs and the error after 131 s (computed by tcplab's syn_schedule, not
measured). Timers fire late, never early: the timer wheel rounds a timeout up to
its level's granularity, at most an eighth of it (kernel/time/timer.c), so a 1 s
gap measures about 1.02 s.

A lost data segment in the middle of a flight is found by the ACKs of the
segments after it: with SACK (on by default) each such ACK names what arrived,
and once three segments above the hole are SACKed (tp->reordering, 3)
RACK's reordering window drops to zero (tcp_rack_reo_wnd in
net/ipv4/tcp_recovery.c) and the hole is marked lost and sent again at once,
about one round trip after it first left; tcp_xmit_retransmit_queue
(net/ipv4/tcp_output.c) counts it as TcpExt TCPFastRetrans.

A lost last segment has no later segments to report it. Linux's tail loss probe
(net.ipv4.tcp_early_retrans = 3, the default; tcp_schedule_loss_probe in
net/ipv4/tcp_output.c) arms a probe 2 x srtt ahead (after a send, and again on
each ACK), plus TCP_RTO_MIN (200 ms) when only one segment is unacknowledged (to
allow for a delayed ACK), and never later than the RTO; the probe
(tcp_send_loss_probe) resends the last segment and counts TcpExt TCPLossProbes.
With the last two segments lost, two are still out when the ACKs of the rest come
back: the probe leaves 2 x srtt after them (measured: 127 ms after the last
segment's first copy at a 41 ms RTT, one round trip for those ACKs and two more),
its SACK shows the other one lost, which is resent at once (TCPFastRetrans), and
no timeout fires. With one lost last segment the probe waits about as long as an
RTO would (measured: 285 ms after the first copy). If the probe is lost too, the retransmission
timer fires: its timeout is srtt + rttvar, and rttvar is in effect never below
TCP_RTO_MIN (200 ms; tcp_rtt_estimator and __tcp_set_rto in
net/ipv4/tcp_input.c; TCP_INFO gave an RTO of 244 ms at an srtt of 41 ms), so an
RTO is at least 200 ms plus a round trip; it counts TcpExt TCPTimeouts, and each
copy counts Tcp RetransSegs. The experiment drops the last segment AND its probe
(an nftables quota in the server's namespace), the honest way to make the RTO
show while tcp_early_retrans keeps its default.

Each retransmission fires the tcp:tcp_retransmit_skb tracepoint (root:
tracefs), with the socket's ports, state and what the transmit returned, as the
copy is handed down (in the recorded run 2 to 22 us after the capture saw it).""",
    "tcplab experiment retransmit",
    (Figures("retransmit", "tcplab experiment retransmit", "2026-11-30",
             RETRANSMIT_RECORDED, _retransmit),),
))

_add(Lesson(
    "c100k", "C100k: 100,000 connections on two cores, and the walls before the machine's",
    """One process holds at most as many connections as it may have file descriptors:
each connection is one fd, and socket() and accept() take the lowest free one below
the soft RLIMIT_NOFILE or fail with EMFILE (fs/file.c, get_unused_fd_flags passes
rlimit(RLIMIT_NOFILE) to alloc_fd). A process may raise its soft limit up to its hard
limit, but raising the hard limit needs CAP_SYS_RESOURCE, and nobody may set it above
fs.nr_open, root included (kernel/sys.c, do_prlimit: the fs.nr_open test comes first
and returns EPERM, then `new_rlim->rlim_max > rlim->rlim_max &&
!capable(CAP_SYS_RESOURCE)`). So past the hard limit a server needs more processes,
not a bigger one: `tcplab server --workers K` forks K, and the client spreads its
connections over several processes (traffic/spread.py).

One source address stops at the port range toward one destination. A connection is
unique by its 4-tuple, so toward one server address and port a client address has
one ephemeral range to choose from (net.ipv4.ip_local_port_range, 28,232 ports by
default), and connect() fails with EADDRNOTAVAIL once all are taken. connect() picks
the port in __inet_hash_connect (net/ipv4/inet_hashtables.c): from an offset hashed
from the source address and the destination (inet_sk_port_offset) plus a random
per-boot table, it tries every second port, "In first pass we try ports of @low
parity. inet_csk_get_port() does the opposite choice.", and scans the other parity
only once that half is exhausted (other_parity_scan). Past the first half, every
connect() walks all of it before it finds a free port: measured on this machine for
100,000 connections to six Go servers, 6 sources of 16,667 connections each cost the
client 22.8 s of system time, 12 sources of 8,334 each 6.1 s. The client therefore
gives each source address at most 40 % of the range (80 % of the half scanned first;
traffic/spread.py, SOURCE_FILL), and on loopback every 127.x.y.z is lo's, so each
client process binds its own (IP_BIND_ADDRESS_NO_PORT leaves the port to connect()).

SO_REUSEPORT against one shared listener. With SO_REUSEPORT each worker has its own
listener on the port, with its own accept queue; for each SYN the kernel hashes the
4-tuple (inet_lookup_reuseport, net/ipv4/inet_hashtables.c: inet_ehashfn of both
addresses and ports) and picks one listener of the group: reuseport_select_sock
(net/core/sock_reuseport.c) runs a BPF program if one is attached, else
reuseport_select_sock_by_hash takes reciprocal_scale(hash, num_socks), and prefers a
listener whose SO_INCOMING_CPU is the CPU handling the SYN only once some listener of
the group has set that option (tcplab's do not). So each worker gets a binomial share:
about N/K, with a coefficient of variation of sqrt((K-1)/N). With one listener shared
by every worker there is one accept queue, and every worker's epoll instance watches
that one socket without EPOLLEXCLUSIVE (fs/eventpoll.c, ep_ptable_queue_proc:
add_wait_queue, not add_wait_queue_exclusive): a new connection wakes them all, the
first to run accepts what is queued, and the others find nothing. Which one runs
first is the scheduler's choice, not a hash: the shares are uneven. At 100,000 the
busiest workers fill up to their fd limit, their accept() fails with EMFILE and backs
off (traffic/accept.py), and the others take the rest: the histogram is then shaped by
the fd limit more than by the wake-ups (in every shared run measured here, 2 or 3 of
the 6 workers stopped at 19,985 of 20,000 fds, and none of the 100,000 failed).

What a socket costs the kernel (the ledger, observe/slab.py, from /proc/slabinfo as
root): each held TCP socket is a struct tcp_sock from the TCP slab cache, a socket and
its inode together (sock_inode_cache), a struct file (filp) and a dentry for it
(net/socket.c, sock_alloc_file); in an epoll set, an epitem, a wait-queue entry and
an ep_head (fs/eventpoll.c, ep_insert); a connect()ed socket's port, its bind buckets
(__inet_hash_connect). A connection is two sockets when both ends are on the machine,
as here. An idle socket holds no buffer pages (4,000 idle loopback sockets moved
/proc/net/sockstat's TCP mem by 0 here: observe/limits.py). User space adds what each
model keeps per connection: the epoll model its socket object and any bytes not yet
sent back (traffic/echo_epoll.py), asyncio and uvloop a transport and a protocol
object (traffic/echo_asyncio.py), the threads model a thread with its stack
(traffic/echo_threads.py).

Threads stop at kernel.pid_max. Every thread is a task with its own id, and alloc_pid
(kernel/pid.c) allocates a number in the task's pid namespace and in each parent
namespace up to the root, each below that namespace's pid_max, failing with EAGAIN
when none is free: so the root namespace's kernel.pid_max bounds every task of the
machine, whichever namespace it runs in. A thread-per-connection server at 100,000
connections would need 100,000 of them; the experiment's ladder stops before the next
rung would take more than half of the pids left, since the machine is shared.""",
    "tcplab experiment c100k; tcplab server --workers 6 & tcplab multiplex --connections "
    "100000 --processes 9",
    (
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             'uvloop with SO_REUSEPORT held 100,000 of 100,000 connections open and echoing '
             'at once on 6 server and 9 client processes under a hard fd limit of 20,000 a '
             'process; toward 100,000 connections fds per process is hit first (19,936 a '
             'process), then ports per destination (28,232 a source address), and the first '
             'machine-wide wall allows 287,901',
             _c100k_walls, context="as root"),
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             '9 client processes, one source address each, opened at most 11,112 connections'
             ' each toward the server: 39% of the 28,232 ports of the range (32768-60999)',
             _c100k_sources, context="as root"),
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             'SO_REUSEPORT: 16,460 to 16,756 a worker (CV 0.006, a uniform hash expects '
             '0.0071); one shared listener: 2.1x between the busiest and the idlest (CV '
             '0.25), 3 of 6 workers stopped at 19,985, at the fd limit of 20,000 a process',
             _c100k_spread, context="as root"),
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             "with 100,000 connections held (200,000 sockets), the kernel's slab caches held"
             ' 3,943 B a socket, 7,886 B a connection: TCP 2,367 B (measured), '
             'sock_inode_cache 832 B (measured), filp 192 B (measured), dentry 192 B '
             "(estimated), epoll's entries 208 B, a connect()ed port's bind buckets 128 B "
             "and the security modules' file blob 24 B a socket (these from merged caches, "
             'mostly estimated)',
             _c100k_ledger, context="as root"),
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             'server user memory per connection at 100,000: uvloop 1,471 B with '
             'SO_REUSEPORT, uvloop 1,519 B with one shared listener, epoll 299 B, asyncio '
             '1,894 B; threads 32,527 B at 2,500 (2,506 threads), 32,576 B at 5,000 (5,006 '
             'threads), 33,285 B at 10,000 (10,006 threads)',
             _c100k_models, context="as root"),
     Figures("c100k", "tcplab experiment c100k", "2026-12-01",
             'the thread-per-connection ladder ran 2,500, 5,000, 10,000 connections; its '
             'last rung held 10,000 of 10,000 on 10,006 threads, and it stopped there: '
             '20,000 connections would be 20,000 threads, and kernel.pid_max is 32,768 for '
             'the whole machine with 86 tasks running: this experiment takes at most half of'
             ' the 32,682 left',
             _c100k_threads, context="as root"),
    ),
))

#: Which lessons each experiment's section of the report may show.
FOR_EXPERIMENT: dict[str, tuple[str, ...]] = {
    "echo": ("handshake", "nagle"),  # small round trips, and what can stall them
    "port-bomb": ("port-range", "ports", "reset"),
    "fd-leak": ("fd-limit", "keepalive", "syn-queue"),  # its accept queue fills too
    "half-close": ("close-wait", "time-wait", "orphans", "restart"),
    "multiplex": ("netpoll", "c100k"),  # c100k runs on its own: its lesson goes here too
    "handshake": ("handshake", "reset", "retransmit"), "restart": ("restart",), "reset": ("reset",),
    "syn-queue": ("syn-queue",),
    "keepalive": ("keepalive",), "ports": ("ports",), "orphans": ("orphans",),
    "nagle": ("nagle",),
    "retransmit": ("retransmit",),
    "c100k": ("c100k",),
}


def placement(experiments: list[str]) -> dict[str, list[str]]:
    """Each lesson once on a page: experiment -> the topics its section shows.

    A lesson goes to the section of its own experiment (the keepalive lesson to
    the keepalive section, not fd-leak's) when that ran, else to the first
    experiment that both lists it and measures one of its figures (the handshake
    lesson to the handshake section, not echo's), else to the first section that
    lists it.
    """
    out: dict[str, list[str]] = {name: [] for name in experiments}
    for topic, lesson in LESSONS.items():
        listing = [e for e in experiments if topic in FOR_EXPERIMENT.get(e, ())]
        measuring = [e for e in listing if e in {f.experiment for f in lesson.figures}]
        own = [e for e in measuring if e == topic]
        if listing:
            out[(own or measuring or listing)[0]].append(topic)
    for name, topics in out.items():  # in FOR_EXPERIMENT's order within a section
        topics.sort(key=FOR_EXPERIMENT.get(name, ()).index)
    return out


# --- the lesson's figures, for a run or for none ----------------------------------------------

@dataclass(frozen=True, slots=True)
class Quote:
    """One figure as a page shows it: from this run, or recorded elsewhere and saying so."""

    experiment: str
    #: "run": built from this run's Result; "missing": this run did not measure it (no
    #: number); "recorded": a recorded run's figure, with its date and command.
    kind: str
    text: str  # a full sentence


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def recorded_text(fig: Figures) -> str:
    """The recorded figure with where, when and how: for explain and docs/lessons.md."""
    return _sentence(f"{fig.provenance()[:1].upper()}{fig.provenance()[1:]}: {fig.recorded}")


def quotes(lesson: Lesson, run: Mapping[str, AnyResult]) -> list[Quote]:
    """The lesson's figures for a page about ``run`` (experiment name -> Result).

    A figure whose experiment ran here is built from this run's Result. When that
    Result lacks it (the experiment was skipped or failed, or ran without the option
    that measures it) the quote says so and quotes no number. A recorded figure
    appears only where the page has nothing it could contradict: for an experiment
    that was not part of the run, and for figures no experiment measures; it always
    says where, when and with which command it was measured.
    """
    out: list[Quote] = []
    elsewhere = f"'tcplab explain {lesson.topic}' quotes a recorded run"
    for fig in lesson.figures:
        r = run.get(fig.experiment) if fig.experiment else None
        if r is None:
            text = f"{fig.provenance()}: {fig.recorded}"
            if fig.experiment:
                text = f"the {fig.experiment} experiment was not part of this run; {text}"
            out.append(Quote(fig.experiment, "recorded", _sentence(text)))
            continue
        measured = fig.sentence(r)
        if measured is not None:
            text = f"Measured in this run by the {fig.experiment} experiment: {measured}"
        elif r.skipped:
            text = (f"the {fig.experiment} experiment was skipped in this run, so this was not "
                    "measured")
        elif r.facts is None and not r.variants:
            text = (f"the {fig.experiment} experiment failed in this run, so this was not "
                    "measured")
        else:
            text = (f"this run's {fig.experiment} experiment did not measure this; "
                    f"`{fig.command}` does")
        if measured is None:
            text += f" ({elsewhere})"
        quote = Quote(fig.experiment, "missing" if measured is None else "run", _sentence(text))
        if quote not in out:  # two figures of one failed experiment: one note
            out.append(quote)
    return out


def markdown() -> str:
    out = ["# Lessons", "",
           "Generated by `tcplab explain --markdown`. Each lesson names the experiments that",
           f"show it and the figures one run of each measured ({MACHINE}), with the date and",
           "the command that reproduces them; `tcplab experiment all --report DIR` quotes",
           "the figures of your own run instead. Corrections say where the original lab's",
           "notes differ from Linux.", ""]
    for lesson in LESSONS.values():
        out += [f"## {lesson.title}", "", lesson.text.strip(), ""]
        for fig in lesson.figures:
            out += [recorded_text(fig), ""]
        out += [f"Shown by: `{lesson.shown_by}`", ""]
        if lesson.correction:
            out += [f"**Correction.** {lesson.correction}", ""]
    return "\n".join(out)
