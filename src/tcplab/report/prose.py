"""Every sentence an experiment's result says, from its records: report/ owns the prose.

Experiments compute figures and verdicts: ``ok``, a variant's ``shown``, and why
not as data (``short``: an enum member per failed check; ``skip``: why a
variant did not run). This module words them, from the record's own figures:
the one-line ``fact``, each variant's ``lesson``, ``why_not`` and ``skipped``,
multiplex's ``flag`` per row and its ``rules``. ``worded()`` returns the record
with those filled in; ``--json``, results.json, the terminal and the HTML
report all come from that one worded record, so they cannot disagree.

A sentence says only what was measured: a claim the figures do not support is
not made (an error that did not happen is not named, a state that was not
sampled is not quoted; issue 11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from tcplab.agents.half_close import Step
from tcplab.agents.keepalive import Silent
from tcplab.agents.orphans import Look
from tcplab.agents.ports import RESERVED, SOCKET_RANGE, Ports
from tcplab.agents.reset import Close
from tcplab.agents.restart import Bind
from tcplab.agents.syn_queue import Phase
from tcplab.errors import errno_name
from tcplab.experiments import (
    c100k,
    echo,
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
from tcplab.experiments.result import Event, Result
from tcplab.observe.slab import Ledger
from tcplab.traffic.bomb import STALL_S
from tcplab.words import duration_us, plural

R = TypeVar("R", bound=Result[Any, Any, Any])


def worded(result: R) -> R:
    """The result with every sentence filled in from its figures and verdicts.

    A result without facts (the experiment was skipped or failed before it
    measured anything: the CLI made it from the error) keeps its own words.
    Wording twice gives the same record.
    """
    if result.facts is None:
        return result
    out: Any = result
    if isinstance(result, echo.Result):
        out = replace(result, fact=echo_result_fact(result))
    elif isinstance(result, port_bomb.Result):
        pool = result.settings.pool_size if result.settings else 0
        variants = tuple(bomb_worded(v, pool) for v in result.variants)
        out = replace(result, variants=variants, fact=port_bomb_fact(variants))
    elif isinstance(result, fd_leak.Result):
        rounds = tuple(round_worded(r) for r in result.variants)
        by = {r.name: r for r in rounds}
        leak, fixed = by.get("leak"), by.get("fixed")
        skipped = result.skipped
        if leak is not None and leak.skip is not None:
            # Without a leak there is nothing for this experiment to show.
            skipped = f"the leak round could not run against this server: {leak.skipped}"
        out = replace(result, variants=rounds, skipped=skipped,
                      events=tuple(verdict_event(e, by) for e in result.events),
                      fact=fd_leak_fact(leak, fixed, by.get("keepalive"),
                                        [r for r in rounds if r.name in fd_leak.GO_ROUNDS])
                      if leak is not None and fixed is not None else result.fact)
    elif isinstance(result, half_close.Result):
        out = replace(result, fact=half_close_fact(result.facts.steps))
    elif isinstance(result, restart.Result):
        out = replace(result, fact=restart_fact(
            result.facts.binds, result.settings.connections if result.settings else 0))
    elif isinstance(result, reset.Result):
        out = replace(result, fact=reset_fact(result.facts.closes))
    elif isinstance(result, syn_queue.Result):
        out = replace(result, fact=syn_queue_fact(
            result.facts.phases, result.settings.backlog if result.settings else 0))
    elif isinstance(result, multiplex.Result):
        rows = tuple(replace(v, flag=collapse_flag(v)) for v in result.variants)
        facts = replace(result.facts, rules=multiplex_rules(result.facts.collapse_at))
        out = replace(result, variants=rows, facts=facts, fact=multiplex_fact(rows, facts))
    elif isinstance(result, handshake.Result):
        out = replace(result, fact=handshake_fact(result.facts))
    elif isinstance(result, keepalive.Result):
        out = replace(result, fact=keepalive_fact(result.facts.silences))
    elif isinstance(result, ports.Result):
        out = replace(result, fact=ports_fact(result.facts.cases))
    elif isinstance(result, orphans.Result):
        s = result.settings
        out = replace(result, fact=orphans_fact(result.facts.looks, s.tcp_fin_timeout if s
                                                else 0, s.tcp_orphan_retries if s else 0))
    elif isinstance(result, nagle.Result):
        out = replace(result, fact=nagle_fact(result.facts.rounds))
    elif isinstance(result, retransmit.Result):
        out = replace(result, fact=retransmit_fact(result.facts, result.settings))
    elif isinstance(result, c100k.Result):
        out = replace(result, fact=c100k_fact(result))
    worded_result: R = out
    return worded_result


def verdict_event(e: Event, by: Mapping[str, fd_leak.Round]) -> Event:
    """An event that states a variant's verdict, with that verdict's words:
    ``fixed: skipped: not applicable: ...``, ``leak: NOT shown: ...``."""
    v = by.get(e.verdict_of) if e.verdict_of else None
    if v is None:
        return e
    if v.skipped:
        return replace(e, what=f"{e.verdict_of}: skipped: {v.skipped}")
    if v.shown is False and v.why_not:
        return replace(e, what=f"{e.verdict_of}: NOT shown: {v.why_not}")
    return e


# --- echo -------------------------------------------------------------------------------------

def echo_fact(small: int, large: int, p50_us: float, mib_per_s: float,
              stream: tuple[int, int, bool], client_bytes: int,
              server_bytes: int | None) -> str:
    """The echo experiment's fact: ``stream`` is (bytes sent, bytes back, identical).

    The "exactly the bytes sent" sentence is made only when echo.judge() holds; a
    failed claim is stated as it was seen.
    """
    sent, back, identical = stream
    if echo.judge(identical, client_bytes, server_bytes):
        p50 = f"{p50_us:.0f} us" if p50_us < 10_000 else duration_us(p50_us)
        return (f"{plural(small, 'small echo')} at p50 {p50}, "
                f"{plural(large, 'echo')} of 1 MiB at {mib_per_s:.0f} MiB/s; the server "
                f"echoed exactly the {client_bytes:,} bytes sent")
    seen = []
    if not identical:
        seen.append(f"the {sent:,} B stream came back different ({back:,} B, not identical)")
    if server_bytes is None:
        seen.append("the server reported no totals, so its count could not be checked")
    elif server_bytes != client_bytes:
        seen.append(f"the server counted {server_bytes:,} B echoed, the client sent "
                    f"{client_bytes:,} B")
    return "; ".join(seen)


def echo_result_fact(r: echo.Result) -> str:
    f, s = r.facts, r.settings
    assert f is not None and s is not None
    return echo_fact(s.small_count, s.large_count, f.small.rtt_p50_us, f.large.mib_per_s,
                     (f.stream_bytes, f.stream_back, f.stream_identical), f.client_bytes,
                     None if f.server_totals is None else f.server_totals.bytes_echoed)


# --- half-close -------------------------------------------------------------------------------

#: Short names of the choreography's steps, for a fact that lists what was seen.
STEP_NAMES = ("connected", "after shutdown(SHUT_WR)", "while the server still sent",
              "after the server's close()", "a second later")


def half_close_fact(steps: Sequence[Step]) -> str:
    """The fact in one sentence, from the states the steps sampled: the states of each
    step, and the TIME_WAIT time left as read."""
    if half_close.judge(steps):
        left = [(t, x) for t, x in half_close.time_wait_left(steps) if x is not None]
        (t1, x1), (t2, x2) = left[0], left[-1]
        return ("after shutdown(SHUT_WR) the client sat in FIN_WAIT2 and the server in "
                "CLOSE_WAIT until the server closed; then the client's socket was in "
                f"TIME_WAIT with {x1:.1f} s left, {x2:.1f} s left {t2 - t1:.1f} s later")
    seen = half_close.states(steps)
    saw = "; ".join(f"{name}: client {c}, server {v}"
                    for name, (c, v) in zip(STEP_NAMES, seen, strict=False))
    if half_close.time_wait_left(steps) and not half_close.counts_down(steps):
        saw += "; the TIME_WAIT timer did not count down between samples"
    return ("expected FIN_WAIT2 and CLOSE_WAIT after the half-close, then TIME_WAIT "
            f"counting down; saw {saw}")


# --- restart ----------------------------------------------------------------------------------

def bind_words(b: Bind) -> str:
    """``bind() without SO_REUSEADDR failed with [Errno 98] EADDRINUSE: Address already in
    use`` or ``... succeeded``."""
    how = f"bind() {'with' if b.new_reuseaddr else 'without'} SO_REUSEADDR"
    if b.listening:
        return f"{how} succeeded"
    return f"{how} failed with [Errno {b.errno}] {errno_name(b.errno)}: {b.error}"


def restart_fact(binds: Sequence[Bind], connections: int) -> str:
    """The fact from the bind() tries: what each gave, with the TIME_WAIT count then."""
    with_old = [b for b in binds if b.old_reuseaddr]
    without_old = [b for b in binds if not b.old_reuseaddr]
    parts = []
    if with_old:
        tw = with_old[0].time_wait
        parts.append(f"with {plural(tw, 'TIME_WAIT socket')} on port {with_old[0].port} after "
                     "the server (SO_REUSEADDR set) stopped, "
                     + " and ".join(bind_words(b) for b in with_old))
    if without_old:
        tw = without_old[0].time_wait
        parts.append(f"after a server without SO_REUSEADDR ({plural(tw, 'TIME_WAIT socket')} "
                     f"on port {without_old[0].port}), "
                     + " and ".join(bind_words(b) for b in without_old)
                     + (": its TIME_WAIT sockets keep the old server's flag"
                        if restart.refused(restart.find(binds, False, True)) else ""))
    text = "; ".join(parts) or "no bind() was tried"
    if restart.judge(binds, connections):
        return text
    return "expected EADDRINUSE without SO_REUSEADDR and success with it; saw: " + text


# --- reset ------------------------------------------------------------------------------------

def close_words(c: Close) -> str:
    """One case as seen: the packet the counters show, the states, the client's read."""
    sent = (f"{plural(c.out_rsts, 'RST')} sent" if c.out_rsts else "no RST (a FIN)")
    counters = [f"{name} {n}" for name, n in (("TCPAbortOnClose", c.abort_on_close),
                                              ("TCPAbortOnData", c.abort_on_data)) if n]
    return (f"{c.case}: {c.unread_bytes} B unread at close(), {sent}"
            + (f" ({', '.join(counters)})" if counters else "")
            + f"; server {c.server_after}, client {c.client_after}; the client's next read: "
            f"{reset.read_words(c)}")


def reset_fact(closes: Sequence[Close]) -> str:
    by = reset.by_case(closes)
    if reset.judge(closes):
        u, ln = by["unread"], by["linger0"]
        return (f"read first, close() sent a FIN (server FIN_WAIT2, client CLOSE_WAIT, its read "
                f"EOF); with {u.unread_bytes} B unread it sent a RST instead (TCPAbortOnClose "
                f"{u.abort_on_close}), both sockets were gone and the client's next read got "
                f"{reset.read_words(u)}; SO_LINGER 0 with nothing unread sent a RST too "
                f"(TCPAbortOnData {ln.abort_on_data}) and the same {reset.read_words(ln)}")
    return ("expected a FIN after reading, a RST and ECONNRESET with unread data and with "
            "SO_LINGER 0; saw: " + "; ".join(close_words(c) for c in closes))


# --- syn-queue --------------------------------------------------------------------------------

def syn_queue_fact(phases: Sequence[Phase], backlog: int) -> str:
    """The fact from the phases: the accept queue, the clients left stranded and the
    counters, the resets with tcp_abort_on_overflow = 1, and the SYN queue either way."""
    find = syn_queue.find
    cookies, abort = find(phases, "cookies", "acks"), find(phases, "abort", "acks")
    syn = find(phases, "cookies", "syn")
    if not syn_queue.judge(phases, backlog) or cookies is None or abort is None or syn is None:
        seen = "; ".join(f"{p.round}, {p.phase}: {syn_queue.phase_words(p)}" for p in phases)
        return (f"expected the accept queue to hold {backlog + 1} (backlog + 1), clients "
                "then left in SYN_SENT and ESTABLISHED without a server socket, "
                "ListenOverflows counting them, and resets with tcp_abort_on_overflow = 1; "
                f"saw: {seen or 'no phase'}")
    return "; ".join([accept_queue_words(cookies), syn_sent_words(syn), abort_words(abort),
                      *syn_queue_lengths(phases)])


# One source for each clause: the fact above and the lesson's this-run figures
# (report/lessons.py, _syn_queue) both word the phases with these.

def accept_queue_words(ph: Phase) -> str:
    """The accept queue at ``ph`` (the acks phase) and the clients left stranded."""
    return (f"with backlog {ph.backlog} the accept queue held {ph.accept_queue} and no more: "
            f"of {plural(ph.clients, 'client')} whose final ACK came late, "
            f"{syn_queue.stranded(ph)} were left ESTABLISHED with no full socket on the "
            f"server ({ph.established_request} with a request socket in SYN_RECV, "
            f"{ph.established_none} with none) and no error (ListenOverflows "
            f"{ph.counters['ListenOverflows']})")


def syn_sent_words(ph: Phase) -> str:
    """The clients that came once the accept queue was full (the syn phase)."""
    return (f"of {plural(ph.clients, 'client')} that came after, "
            f"{ph.client_states.get('SYN_SENT', 0)} sat in SYN_SENT, connect() neither done "
            f"nor refused (ListenOverflows {ph.counters['ListenOverflows']}, ListenDrops "
            f"{ph.counters['ListenDrops']})")


def abort_words(ph: Phase) -> str:
    """What the clients got with tcp_abort_on_overflow = 1 (the abort round's acks)."""
    got = (f"{plural(ph.errors[0].clients, 'client')} got "
           f"{errno_words(ph.errors[0].errno, ph)}" if len(ph.errors) == 1
           else f"the clients got {syn_queue.errors_words(ph.errors)}")
    return (f"with tcp_abort_on_overflow = 1, {got} (EmbryonicRsts "
            f"{ph.counters['EmbryonicRsts']})")


def errno_words(code: int, ph: Phase) -> str:
    """``[Errno 104] ECONNRESET: Connection reset by peer`` as the phase recorded it."""
    e = next((e for e in ph.errors if e.errno == code), None)
    return f"[Errno {code}] {errno_name(code)}" + (f": {e.error}" if e else "")


def syn_queue_lengths(phases: Sequence[Phase]) -> list[str]:
    """The SYN queue at the burst, with syncookies on and off (what happened to the rest)."""
    on, off = syn_queue.find(phases, "cookies", "burst"), syn_queue.find(phases, "no-cookies",
                                                                          "burst")
    if on is None or off is None:
        return []
    return [f"with tcp_max_syn_backlog {off.max_syn_backlog}, the SYN queue held "
            f"{plural(on.request_sockets, 'request socket')} with syncookies on "
            f"({plural(on.counters['SyncookiesSent'], 'SYN')} answered with a cookie) and "
            f"{off.request_sockets} with them off "
            f"({plural(off.client_states.get('SYN_SENT', 0), 'SYN')} dropped: those clients "
            "in SYN_SENT)"]


# --- handshake --------------------------------------------------------------------------------

def handshake_fact(f: handshake.Facts) -> str:
    return (f"{plural(f.packets, 'packet')} ({f.syn} SYN, {f.syn_ack} SYN-ACK, {f.fin} FIN, "
            f"{f.rst} RST), {plural(f.transitions, 'state change')} and "
            f"{plural(f.syscalls, 'socket call')} on one timeline")


# --- port-bomb --------------------------------------------------------------------------------

def bomb_worded(v: port_bomb.Variant, pool_size: int) -> port_bomb.Variant:
    return replace(v, skipped=bomb_skipped(v), lesson=bomb_lesson(v, pool_size),
                   why_not=bomb_why_not(v, pool_size))


def bomb_skipped(v: port_bomb.Variant) -> str | None:
    Skip = port_bomb.Skip
    if v.skip is None:
        return None
    if v.skip is Skip.NEEDS_CLOSE_FIRST:
        return ("needs a server that closes first (tcplab server --close-first); "
                "--server-cmd runs yours")
    if v.skip is Skip.SERVER_ON_LOOPBACK:
        return ("runs tcplab server in a net's server namespace; --server-cmd runs yours "
                "on loopback (across a link: tcplab net exec NAME server -- CMD)")
    if v.skip is Skip.NO_NET:
        return f"needs a tcplab net (two namespaces joined by a veth pair): {v.no_net}"
    if v.skip is Skip.LOOPBACK_LESSON:
        return ("its lesson is loopback's: tcp_tw_reuse = 2 reuses TIME_WAIT ports on "
                "loopback only (tcp_twsk_unique, net/ipv4/tcp_ipv4.c); across this link "
                "real-link shows the default failing")
    if v.skip is Skip.ONE_ADDRESS:
        return ("needs two server addresses; a net's server has one IPv4 address "
                "(run it on loopback: 127.0.0.1 and 127.0.0.2)")
    if v.skip is Skip.NOT_LISTENING_THERE:
        return (f"your server listens on {' and '.join(v.server_addresses or ())} port "
                f"{port_bomb.PORT} only, so nothing accepts on {v.absent_host}: start it on "
                "0.0.0.0 (every address) to run this variant")
    second = v.runs[-1]
    return (f"every connection to {second.host} was refused ({second.failed:,}): the "
            "server does not accept there")


def bomb_lesson(v: port_bomb.Variant, pool_size: int) -> str | None:
    """What a shown variant showed, from its own figures."""
    if not v.shown:
        return None
    ok, tw, rng = v.ok, v.time_wait_peak, v.port_range or 0
    ends = v.time_wait_end or port_bomb.TimeWaitEnd(0, 0)
    if v.name == "fresh":
        first = v.first_error
        assert first is not None
        later = ok - first.after_ok
        return (f"{tw:,} of the {rng:,} ports ended in TIME_WAIT "
                f"({ends.client_side:,} on the clients' side at the end), and "
                f"connect() failed with EADDRNOTAVAIL after {first.after_ok:,} "
                "ok" + (f"; {later:,} more, already under way then, finished "
                        f"after it ({ok:,} ok)" if later > 0 else ""))
    if v.name == "pool":
        return (f"{pool_size} reused connections carried all {ok:,} requests: "
                f"TIME_WAIT {tw:,} (only the pool's own close, at the end), "
                f"ESTABLISHED {v.established_peak} "
                + ("(the clients' end)" if v.link == "veth" else "(both ends)"))
    if v.name == "pool-too-small":
        return _pool_too_small_lesson(v, pool_size)
    if v.name == "default-reuse":
        return (f"with tcp_tw_reuse = 2, {ok:,} connections fit in {rng:,} ports "
                f"and TIME_WAIT peaked at {tw:,} ({tw / max(rng, 1):.0%} of "
                "the range): connect() takes ports of one parity first (bind() gets "
                "the others) and on loopback reuses a port once its TIME_WAIT is 1 s "
                "old (tcp_tw_reuse_delay), so against loopback the bomb does not fail on a "
                "default kernel (across a link it does: real-link)")
    if v.name == "real-link":
        first = v.first_error
        assert first is not None
        return (f"across a veth pair, under the kernel's default tcp_tw_reuse = "
                f"{v.tw_reuse}, connect() to {v.runs[0].host} failed with EADDRNOTAVAIL "
                f"after {first.after_ok:,} ok: {ok:,} connections and {v.failed:,} "
                f"failures in {rng:,} ports, {ends.client_side:,} of them in TIME_WAIT at "
                "the end; tcp_tw_reuse = 2 reuses a TIME_WAIT port only for loopback "
                "(tcp_twsk_unique in net/ipv4/tcp_ipv4.c), so on a real link the port "
                "bomb is alive")
    if v.name == "linger0":
        return (f"SO_LINGER 0 made close() send RST: {ok:,} connections, TIME_WAIT 0 "
                "and no failure; but a RST tells the server the connection failed "
                "(ECONNRESET), and any data still in flight is lost")
    if v.name == "server-closes":
        text = (f"the server closed first, so TIME_WAIT moved to it "
                f"({ends.server_side:,} on the server's side, {ends.client_side} on "
                f"the clients'), and {ok:,} clients never ran out of ports")
        if 0 < ends.server_side < ok:
            # One server-side TIME_WAIT per client port used, not per connection: a new
            # SYN with a higher sequence number or timestamp takes over a TIME_WAIT
            # 4-tuple (TCP_TW_SYN, tcp_timewait_state_process in net/ipv4/tcp_minisocks.c),
            # and connect() takes ports of one parity first (__inet_hash_connect in
            # net/ipv4/inet_hashtables.c), about half the range, reused as they free.
            half = 0.4 * rng <= ends.server_side <= 0.6 * rng
            text += (f"; {ends.server_side:,} and not {ok:,}: a client's new SYN from a "
                     "port the server still held in TIME_WAIT took that socket over "
                     "(TCP_TW_SYN in tcp_timewait_state_process)"
                     + (f", and connect() kept to ports of one parity, about half of the "
                        f"{rng:,}" if half else ""))
        return text
    one, other = v.runs[0], v.runs[1]  # two-destinations
    return (f"{one.host} ran out after {one.ok:,} connections, "
            f"yet {other.host} took {other.ok:,} more with the same "
            f"{rng:,} ports: ports are per destination")


def pool_too_small_figures(v: port_bomb.Variant, pool_size: int | None) -> str:
    """The pool-too-small variant's figures: one source for its lesson (below) and the
    lesson's this-run figures (report/lessons.py, _pool_too_small)."""
    cap = v.runs[0].max_idle if v.runs else None
    go = " (Go's http.Transport default per host)" if cap == 2 else ""
    text = (f"with {pool_size} requests at a time and at most {cap} connections kept "
            f"idle{go}, {v.opened:,} of {plural(v.ok + v.failed, 'request')} opened a new "
            f"connection and TIME_WAIT peaked at {v.time_wait_peak:,} of "
            f"{v.port_range or 0:,} ports")
    e = v.first_error
    if e is not None:
        text += (f"; connect() failed with {e.name} after {plural(e.after_ok, 'ok request')}"
                 f", {plural(v.failed, 'failure')} in all ({_errors_seen(v)})")
    return text


def _pool_too_small_lesson(v: port_bomb.Variant, pool_size: int) -> str:
    """The fix undone: the same requests, the same concurrency, an idle cap below it."""
    return (pool_too_small_figures(v, pool_size) + ": beyond the cap Go's tryPutIdleConn "
            "refuses a returned connection (errTooManyIdleHost, net/http/transport.go) and "
            "the client closes it, so its side goes to TIME_WAIT")


def _errors_seen(v: port_bomb.Variant) -> str:
    """Every failure the variant's runs counted, by name: "1,250 EADDRNOTAVAIL"."""
    seen: dict[str, int] = {}
    for r in v.runs:
        for name, n in r.errors.items():
            seen[name] = seen.get(name, 0) + n
    return ", ".join(f"{n:,} {name}" for name, n in seen.items()) or "no failure"


def bomb_why_not(v: port_bomb.Variant, pool_size: int) -> str | None:
    """Which measured figure fell short, one clause per failed check."""
    if not v.short:
        return None
    Short = port_bomb.Short
    rng = v.port_range or 0
    ends = v.time_wait_end or port_bomb.TimeWaitEnd(0, 0)

    def words(why: port_bomb.Short) -> str:
        if why is Short.FIRST_ERROR_OTHER:
            return f"the first error was {v.first_error.name if v.first_error else '?'}, " \
                   "not EADDRNOTAVAIL"
        if why is Short.NEVER_FAILED:
            return "connect() never failed"
        if why is Short.TIME_WAIT_SHORT:
            return f"TIME_WAIT peaked at {v.time_wait_peak:,} of {rng:,} ports"
        if why is Short.FAILED:
            what = "requests" if v.name == "pool" else "connections"
            return f"{v.failed:,} {what} failed"
        if why is Short.HUNG:
            return (f"{v.stalled:,} connections hung (waiting {STALL_S:g} s or more when the "
                    f"time bound stopped the bomb; {v.unanswered:,} in all sent a request and "
                    "got no echo)")
        if why is Short.OTHER_ERRORS:
            return f"failures other than EADDRNOTAVAIL: {_errors_seen(v)}"
        if why is Short.REUSED:
            return (f"only {v.opened:,} of {v.ok + v.failed:,} requests opened a new "
                    "connection")
        if why is Short.TIME_WAIT_LOW:
            return (f"TIME_WAIT peaked at {v.time_wait_peak:,}, with {v.opened:,} "
                    f"connections opened and {rng:,} ports")
        if why is Short.TIME_WAIT_OVER_POOL:
            return f"TIME_WAIT {v.time_wait_peak:,} with a pool of {pool_size}"
        if why is Short.NOT_MORE_THAN_RANGE:
            return f"{v.ok:,} connections, not more than the {rng:,} ports"
        if why is Short.TIME_WAIT_LEFT:
            return f"TIME_WAIT {v.time_wait_peak:,}"
        if why is Short.NO_SERVER_TIME_WAIT:
            return "no TIME_WAIT on the server's side"
        if why is Short.CLIENT_TIME_WAIT:
            return f"{ends.client_side:,} TIME_WAIT on the clients' side"
        if why is Short.NOT_DEFAULT_REUSE:
            return f"the client's tcp_tw_reuse was {v.tw_reuse}, not the default 2"
        if why is Short.FIRST_NOT_OUT:
            return f"{v.runs[0].host} did not run out of ports"
        return f"{v.runs[1].host} took {v.runs[1].ok:,} connections of {rng:,} ports"

    return "; ".join(words(why) for why in v.short)


def port_bomb_fact(variants: Sequence[port_bomb.Variant]) -> str:
    """One sentence from what the (worded) variants measured; nothing they did not see."""
    by = {v.name: v for v in variants}
    parts = []
    fresh = by.get("fresh")
    if fresh and fresh.skip is None:
        e = fresh.first_error
        if e and e.errno == 99:
            later = fresh.ok - e.after_ok
            parts.append(f"connect() failed with {e.name} after {e.after_ok:,} "
                         f"connections in {e.at_s:.2f} s"
                         + (f" ({later:,} more, under way then, finished after it)"
                            if later > 0 else "")
                         + f", with {fresh.time_wait_peak:,} of {fresh.port_range or 0:,} "
                         "ports in TIME_WAIT")
        elif e:
            parts.append(f"fresh: the first error was {e.name} ({e.message}) after "
                         f"{e.after_ok:,} connections, not port exhaustion")
        else:
            parts.append(f"fresh: {fresh.ok:,} connections and no error: the ports never "
                         "ran out")
    pool = by.get("pool")
    if pool and pool.skip is None:
        parts.append(f"pooled: {pool.failed:,} failures, TIME_WAIT {pool.time_wait_peak:,}")
    small = by.get("pool-too-small")
    if small and small.skip is None:
        cap = small.runs[0].max_idle if small.runs else None
        parts.append(f"pooled with at most {cap} idle: {small.opened:,} new connections, "
                     f"TIME_WAIT {small.time_wait_peak:,}, {_errors_seen(small)}")
    reuse = by.get("default-reuse")
    if reuse and reuse.skip is None:
        parts.append(f"kernel defaults (tcp_tw_reuse=2): {reuse.ok:,} connections, "
                     f"{reuse.failed:,} failures")
    real = by.get("real-link")
    if real and real.skip is None:
        parts.append(f"the same defaults across a veth link: {real.ok:,} connections, "
                     f"{real.failed:,} failures, {_errors_seen(real)}")
    missed = [f"{v.name} ({v.why_not})" for v in variants if v.skip is None and not v.shown]
    if missed:
        parts.append("NOT shown: " + "; ".join(missed))
    skipped = [f"{v.name} ({v.skipped})" for v in variants if v.skip is not None]
    if skipped:
        parts.append("skipped: " + "; ".join(skipped))
    return "; ".join(parts) or "no variant ran"


def verdict_words(verdict: object) -> str | None:
    """The reason of a verdict an experiment reports while it runs (its Progress):
    why a variant or round was skipped, or which figure fell short."""
    if isinstance(verdict, port_bomb.Variant):
        return bomb_skipped(verdict)
    if isinstance(verdict, fd_leak.Round):
        return round_skipped(verdict) or round_why_not(verdict)
    return None


# --- fd-leak ----------------------------------------------------------------------------------

def round_worded(r: fd_leak.Round) -> fd_leak.Round:
    return replace(r, skipped=round_skipped(r), lesson=round_lesson(r),
                   why_not=round_why_not(r))


def _fds(r: fd_leak.Round) -> str:
    return f"fds {r.fds_start} -> {r.fds_after}"


def round_skipped(r: fd_leak.Round) -> str | None:
    Skip = fd_leak.Skip
    if r.skip is None:
        return None
    if r.skip is Skip.GO_QUICK:
        return ("--quick leaves the Go rounds out (about 25 s: Go's keep-alive waits 15 s); "
                "run without --quick, or with --go yes")
    if r.skip is Skip.GO_UNAVAILABLE:
        return r.go_skip or "go is not available"
    if r.skip is Skip.NEEDS_KEEPALIVE:
        return ("needs tcplab server --keepalive (SO_KEEPALIVE on accepted sockets); "
                "--server-cmd runs yours")
    cw = r.close_wait_persisting
    if r.skip is Skip.LEAKED_WITHOUT_LEAK:
        return (f"not applicable: the server leaked without LEAK=true "
                f"({cw} sockets stayed in CLOSE_WAIT, {_fds(r)})")
    return (f"the server closed its connections even with LEAK=true (CLOSE_WAIT "
            f"peak {r.close_wait_peak}, {cw} at the end; {_fds(r)}): it has no leak switch")


def round_lesson(r: fd_leak.Round) -> str | None:
    """What a shown round showed, from its own figures."""
    if not r.shown:
        return None
    limit = r.fd_limit or 0
    cw, cw_peak = r.close_wait_persisting, r.close_wait_peak
    if r.name == "fixed":
        return (f"a server that closes: CLOSE_WAIT {cw} once it had closed (a peak "
                f"of {cw_peak} while the clients closed), {_fds(r)}")
    if r.name in fd_leak.GO_ROUNDS:
        return go_round_lesson(r)
    if r.name == "keepalive":
        return (f"with SO_KEEPALIVE, CLOSE_WAIT fell from {cw_peak} to "
                f"{r.close_wait_after} (the never-accepted ones) once the probes found "
                f"the peers gone, but the fds stayed at {r.fds_after} of {limit}: the "
                "leak is in fds, not TCP states")
    return (f"fds climbed to {r.fds_peak} of {limit}"
            + (", accept() failed with EMFILE" if r.emfile_line else
               " (no 'too many open files' in its output)")
            + (f", the accept queue filled ({r.queue_peak}: backlog {r.backlog} + 1)"
               if r.backlog and r.queue_peak > r.backlog else
               f", the accept queue held up to {r.queue_peak} (backlog {r.backlog})")
            + f"; {cw} sockets stayed in "
            f"CLOSE_WAIT while the clients' FIN_WAIT2 ({r.fin_wait2_peak}) expired")


def round_why_not(r: fd_leak.Round) -> str | None:
    """Which measured figure fell short, one clause per failed check."""
    if not r.short:
        return None
    Short = fd_leak.Short
    limit = r.fd_limit or 0
    cw, cw_peak = r.close_wait_persisting, r.close_wait_peak
    words = {
        Short.DIED: "the server died",
        Short.FDS_SHORT: f"fds peaked at {r.fds_peak} of its limit of {limit}"
        + (f" (set to {r.fd_limit_set}: the server changed it)"
           if limit != r.fd_limit_set else ""),
        Short.NO_EMFILE_LINE: "no 'Too many open files' in its log",
        Short.NO_CLOSE_WAIT: "no socket in CLOSE_WAIT",
        Short.CLOSE_WAIT_OVER_QUEUE: f"CLOSE_WAIT {r.close_wait_after} at the end, more than "
        f"the {r.queue_peak} never accepted",
        Short.CLOSE_WAIT_STAYED: f"CLOSE_WAIT stayed at {cw_peak}",
        Short.FDS_FELL: f"fds fell to {r.fds_after}",
        Short.NONE_STAYED: f"no socket stayed in CLOSE_WAIT (peak {cw_peak})",
        Short.CLOSED_AFTER_ALL: f"CLOSE_WAIT fell from {cw_peak} to {cw}: the server closed "
        "them after all" + (" (Go, for one, closes an unreachable net.Conn from a GC "
                            "finalizer)" if r.foreign else ""),
        Short.NO_FIN_WAIT2: "no client socket in FIN_WAIT2",
        Short.FIN_WAIT2_STAYED: f"{r.fin_wait2_after} client sockets still in FIN_WAIT2 at "
        "the end",
        Short.LEFT_CLOSE_WAIT: f"{cw} sockets stayed in CLOSE_WAIT after the server closed, "
        f"{_fds(r)}",
        **(go_why_not(r) if r.go is not None else {}),
    }
    return "; ".join(words[why] for why in r.short)


def go_drop_figures(v: fd_leak.Round) -> str:
    """go-drop's figures: one source for its round's lesson (go_round_lesson) and the
    lesson's this-run figures (report/lessons.py)."""
    g = v.go
    assert g is not None
    text = (f"a Go handler returned without Close() for "
            f"{plural(g.connected, 'connection')}: the server's fds went from {v.fds_start} to "
            f"a peak of {v.fds_peak} ({plural(g.gcs_in_flood, 'collection')} during the "
            f"flood) and were {g.fds_quiet} after {g.quiet_s:.0f} s without traffic "
            f"({g.close_wait_quiet} in CLOSE_WAIT)")
    if g.later_gc_s is None:
        return text + (f"; {plural(g.later_clients, 'later client')} caused no collection, "
                       f"and the fds were {v.fds_after} at the end")
    return text + (f"; {plural(g.later_clients, 'later client')} made the runtime collect "
                   f"{g.later_gc_s:.1f} s after the flood began, and the fds were "
                   f"{v.fds_after} at the end ({g.go_version.split()[0]}, GODEBUG=gctrace=1, "
                   "GOGC 100)")


def go_keep_figures(v: fd_leak.Round) -> str:
    """go-keep's figures: one source, as go_drop_figures."""
    g = v.go
    assert g is not None
    held = (f"until {g.close_wait_held_s:.1f} s after the flood began"
            if g.close_wait_held_s is not None else "at no sample")
    gone = (f"none at {g.close_wait_gone_s:.1f} s" if g.close_wait_gone_s is not None
            else f"{v.close_wait_after} at the end")
    return (f"with the connections kept in a slice, {plural(v.close_wait_peak, 'socket')} "
            f"sat in CLOSE_WAIT {held}, {gone}, and the fds stayed at {v.fds_after} (from "
            f"{v.fds_start})")


def go_round_lesson(r: fd_leak.Round) -> str:
    """What a shown Go round showed: its figures, then what they mean (go-drop, go-keep)."""
    if r.name == "go-drop":
        return (go_drop_figures(r) + ": the finalizer on each unreachable net.Conn's netFD "
                "closes it at a collection, and with no traffic nothing allocated, so none "
                "ran until the later clients: the leak heals itself, late")
    return (go_keep_figures(r) + f": Go's {fd_leak.GO_KEEPALIVE_S} s keep-alive found the "
            "peers gone and ended CLOSE_WAIT, but the leak is in fds, and no collection can "
            "close them")


def go_why_not(r: fd_leak.Round) -> dict[fd_leak.Short, str]:
    """The Go rounds' own reasons, worded from their figures."""
    Short = fd_leak.Short
    g = r.go
    assert g is not None
    return {
        Short.NO_GC: "the runtime printed no collection (GODEBUG=gctrace=1)",
        Short.GO_FDS_CLIMBED: f"fds climbed from {r.fds_start} to {r.fds_peak} for "
        f"{plural(g.connected, 'connection')}: the collections did not keep up",
        Short.NONE_LEFT: f"no fd waited for a later collection (fds {g.fds_quiet} after the "
        f"quiet {g.quiet_s:.0f} s, {r.fds_start} at the start)",
        Short.NO_LATER_GC: f"no collection ran after {plural(g.later_clients, 'later client')}",
        Short.NOT_HEALED: f"fds {r.fds_after} at the end, {r.fds_start} at the start, after a "
        f"collection at {g.later_gc_s} s",
        Short.NO_CLOSE_WAIT: f"CLOSE_WAIT peaked at {r.close_wait_peak} for "
        f"{plural(g.connected, 'connected client')}",
        Short.LEFT_EARLY: f"CLOSE_WAIT fell after {g.close_wait_held_s} s, before Go's "
        f"{fd_leak.GO_KEEPALIVE_S} s keep-alive could act",
        Short.KEEP_CLOSE_WAIT_LEFT: f"{r.close_wait_after} still in CLOSE_WAIT "
        f"{fd_leak.KEEP_WAIT_S:.0f} s after the flood began",
        Short.FDS_FELL: f"fds fell to {r.fds_after} (from a peak of {r.fds_peak})",
    }


def fd_leak_fact(leak: fd_leak.Round, fixed: fd_leak.Round,
                 kept: fd_leak.Round | None, go_rounds: Sequence[fd_leak.Round] = ()) -> str:
    """The summary sentence, clause by clause from what was measured (worded rounds)."""
    parts = []
    if leak.skip is not None:
        parts.append(f"the leak round was skipped: {leak.skipped}")
    else:
        limit, peak = leak.fd_limit, leak.fds_peak
        if limit and peak >= limit - 2:
            clause = f"the leaking server's fds hit its limit of {limit} ({peak} in use)"
        else:
            clause = f"the leaking server's fds peaked at {peak} of its limit of {limit}"
        if leak.emfile_line:
            clause += ", accept() failed with EMFILE"
        elif limit and peak >= limit - 2:
            clause += " (its output shows no 'too many open files' line)"
        parts.append(clause)
        cw, cw_peak = leak.close_wait_persisting, leak.close_wait_peak
        fw_peak, fw_after = leak.fin_wait2_peak, leak.fin_wait2_after
        if cw and cw >= 0.95 * cw_peak and fw_peak and not fw_after:
            parts.append(f"{cw} sockets sat in CLOSE_WAIT and stayed after the clients' "
                         f"FIN_WAIT2 ({fw_peak}) expired")
        elif cw_peak:
            parts.append(f"CLOSE_WAIT peaked at {cw_peak} and {cw} stayed"
                         + (f" (the server closed {cw_peak - cw} after all)"
                            if cw < 0.95 * cw_peak else "")
                         + f"; the clients' FIN_WAIT2: {fw_peak} at the peak, {fw_after} at "
                         "the end")
        else:
            parts.append("no socket was in CLOSE_WAIT")
    if fixed.skip is not None:
        parts.append(f"the fix round was skipped: {fixed.skipped}")
    else:
        parts.append(f"a server that closes: CLOSE_WAIT {fixed.close_wait_persisting} once "
                     f"it had closed (a peak of {fixed.close_wait_peak} while clients "
                     "closed)")
    if kept is not None and kept.skip is None:
        parts.append(f"with SO_KEEPALIVE: CLOSE_WAIT {kept.close_wait_after}, fds still "
                     f"{kept.fds_after}")
    reasons = {r.skipped for r in go_rounds if r.skip is not None}
    if go_rounds and len(reasons) == 1 and all(r.skip is not None for r in go_rounds):
        parts.append(f"the Go rounds were skipped: {reasons.pop()}")
    else:
        parts += [go_fact(r) for r in go_rounds]
    return "; ".join(parts)


def go_fact(r: fd_leak.Round) -> str:
    """A Go round's clause of the summary (a worded round)."""
    g = r.go
    if r.skip is not None or g is None:
        return f"{r.name} skipped: {r.skipped}"
    if not r.shown:
        return f"{r.name} NOT shown: {r.why_not}"
    if r.name == "go-drop":
        return (f"Go without Close(): fds peaked at {r.fds_peak} for "
                f"{plural(g.connected, 'connection')} and fell back to {r.fds_after} at a "
                "later collection (the finalizer)")
    return (f"Go keeping its connections: CLOSE_WAIT {r.close_wait_peak} gone by "
            f"{g.close_wait_gone_s:.0f} s (keep-alive), fds still {r.fds_after}")


# --- multiplex --------------------------------------------------------------------------------

def failure_words(failures: Mapping[str, int], n: int) -> str:
    """``9,980 of 10,000 timed out`` or ``12 of 100 failed (timeout x10, EOF x2)``."""
    total = sum(failures.values())
    if set(failures) == {"timeout"}:
        return f"{total:,} of {n:,} timed out"
    kinds = ", ".join(f"{k} x{v:,}" for k, v in failures.items())
    return f"{total:,} of {n:,} failed ({kinds})"


def collapse_flag(row: multiplex.Row) -> str | None:
    """A collapsed row's flag: what failed, never a figure as a measurement."""
    if not row.collapsed:
        return None
    return f"collapsed: {failure_words(row.failures, row.connections)}"


def multiplex_rules(collapse_at: int) -> str:
    """The verdict's rules, with the thresholds experiments/multiplex.py judges by."""
    m = multiplex
    return (f"shown: every event-loop model held every N on 1 thread with 0 failures, "
            f"and, when the ladder reaches {collapse_at:,}, threads collapsed at the "
            f"largest N: at least {m.MOSTLY_FAILED:.0%} of its connections failed, or its "
            f"echoes/s fell below {m.COLLAPSE_RATIO:.0%} of its echoes/s at the "
            f"reference N, or it served at most {m.PEER_THROUGHPUT_SHARE:.0%} of the "
            f"slowest event loop's echoes/s with a p99 at least {m.PEER_P99_FACTOR:g}x "
            "the event loops' worst; or, short of that, it fell behind every event "
            f"loop: at least {m.BEHIND_CPU_FACTOR:g}x their worst CPU per echo, "
            f"{m.BEHIND_RSS_FACTOR:g}x their RSS per connection, and a worse p99")


def _threads(n: int | None) -> str:
    return "? threads" if n is None else plural(n, "thread")


def _ms(us: float) -> str:
    return duration_us(us, ms_digits=0)


def _loop_problem(p: multiplex.Problem, by: Mapping[tuple[str, int], multiplex.Row]) -> str:
    n = p.connections
    r = by.get((p.model, n))
    if p.kind is multiplex.Trouble.NO_ROW or r is None:
        return f"no row at {n:,}"
    if p.kind is multiplex.Trouble.FAILED:
        return f"at {n:,}: {failure_words(r.failures, n)}"
    if p.kind is multiplex.Trouble.NOT_ALL_OPEN:
        return f"at {n:,}: {r.connected:,} of {n:,} open"
    return f"at {n:,}: {_threads(r.threads)}"


_LOOP_TROUBLES = (multiplex.Trouble.NO_ROW, multiplex.Trouble.FAILED,
                  multiplex.Trouble.NOT_ALL_OPEN, multiplex.Trouble.THREADS)


def multiplex_fact(rows: Sequence[multiplex.Row], f: multiplex.Facts) -> str:
    """The fact in one line, from the rows and the verdict's figures and problems."""
    Trouble = multiplex.Trouble
    big, ref, collapse_at = f.largest, f.reference, f.collapse_at
    by = {(r.model, r.connections): r for r in rows}
    loops = multiplex.loops_of(rows)
    held = f.loops_held
    parts: list[str] = []

    # 1. the event loops: every N, 1 thread, 0 failures
    if loops and all(held.get(m, False) for m in loops):
        best = min(loops, key=lambda m: by[(m, big)].cpu_us_per_echo or 1e9)
        b = by[(best, big)]
        eps = ", ".join(f"{m} {by[(m, big)].echoes_per_s:,.0f}" for m in loops)
        parts.append(
            f"{', '.join(loops)} each held {big:,} connections on 1 thread with 0 failures "
            f"({best}: 1 epoll instance watching {b.epoll_watches or 0:,} sockets, "
            f"{b.rss_per_conn:,.0f} B RSS per connection; echoes/s {eps})")

    # 2. threads: collapsed at the largest N, measured against the reference N
    c = multiplex.compare(rows, big, ref, held)
    figures = ""
    if c is not None:
        t, tref = c.t, c.tref
        against = ""
        if tref is not None:
            against = (f" against {tref.echoes_per_s:,.0f} at {ref:,}"
                       + (f" ({c.ratio:.1%})" if c.ratio is not None else "")
                       + f", p99 {_ms(t.p99_us)}"
                       + (" for those that got through" if t.failed else "")
                       + f" against {_ms(tref.p99_us)}")
        accepted = ""
        if t.accepted_s is not None:
            accepted = f", all accepted {t.accepted_s:.1f} s after the first connect"
        elif t.unaccepted:
            accepted = f", {t.unaccepted:,} not accepted by the end"
        peer = ""
        if c.peer_share is not None and c.peer_p99 is not None and c.worst_p99:
            peer = (f"; against the event loops at {big:,}: "
                    f"{c.peer_share:.0%} of the slowest one's echoes/s, "
                    f"{c.peer_p99:,.0f}x their worst p99 ({_ms(c.worst_p99)})")
        figures = (f"{t.echoes_per_s:,.0f} echoes/s{against}{peer}; "
                   f"{_threads(t.threads)}{accepted}")
        if c.collapsed:
            what = failure_words(t.failures, big) if t.failed else "0 failed"
            if t.timed_out:
                what += f" (still waiting for an echo after {f.timeout:g} s: the GIL convoy)"
            served = (f", {t.served:,} got any echo"
                      if t.served is not None and t.served < big else "")
            parts.append(f"threads collapsed at {big:,}: {what}{served}, {figures}")
        elif c.fell_behind and big >= collapse_at:
            assert c.cpu_x is not None and c.rss_x is not None
            parts.append(f"threads fell behind at {big:,} without collapsing this time "
                         f"({t.failed:,} failed): {figures}; it spent {c.cpu_x:,.1f}x the "
                         f"event loops' worst CPU per echo and {c.rss_x:,.0f}x their RSS per "
                         "connection")
        elif big < collapse_at:
            parts.append(f"threads: {figures}, {t.failed:,} failed at {big:,}; "
                         f"the collapse needs {collapse_at:,} connections (not judged here: "
                         "run without --quick)")

    # 3. every failure seen, in any row the parts above do not already describe
    described = {("threads", big)} if c is not None else set()
    others = [f"{r.name}: {failure_words(r.failures, r.connections)}" for r in rows
              if r.failed and (r.model, r.connections) not in described
              and not (r.model in held and not held[r.model])]
    if others:
        parts.append("also failed: " + "; ".join(others))

    # Why not shown, in the verdict's order: the event loops, then threads.
    problems: list[str] = []
    grouped: dict[str, list[str]] = {}
    for p in f.problems:
        if p.kind in _LOOP_TROUBLES:
            if p.model not in grouped:
                grouped[p.model] = []
                problems.append(p.model)  # its place; the words come below
            grouped[p.model].append(_loop_problem(p, by))
        elif p.kind is Trouble.NO_LOOP:
            problems.append("no event-loop model ran (epoll, asyncio or uvloop)")
        elif p.kind is Trouble.THREADS_HELD_UP and c is not None:
            problems.append(f"threads neither collapsed nor fell behind at {big:,}: "
                            f"{figures}; {c.t.failed:,} failed")
        elif p.kind is Trouble.THREADS_MISSING:
            problems.append("the threads model did not run: its collapse is half the lesson")
    problems = [f"{x} did not hold: {'; '.join(grouped[x])}" if x in grouped else x
                for x in problems]
    return "; ".join(([f"NOT shown: {'; '.join(problems)}"] if problems else []) + parts)


# --- c100k -------------------------------------------------------------------------------------

def c100k_shared(r: c100k.Result) -> c100k.ModelRow | None:
    """The default model's row with one shared listener (the histogram's comparison)."""
    return next((m for m in r.models if m.model == c100k.DEFAULT_MODEL
                 and m.listener == "shared"), None)


def c100k_cpu_us(bars: Sequence[c100k.Bar], held: int) -> float | None:
    """Server CPU per connection from the workers' bars: the same sum the row's
    ``cpu_us_per_conn`` is (traffic/spread.py), for the default row, whose record
    keeps only its bars."""
    if not bars or not held:
        return None
    return round(sum(b.cpu_s for b in bars) / held * 1e6, 2)


def c100k_kernel_words(ledger: Ledger | None) -> str | None:
    """``the kernel 7,886 B per connection (3,943 B a socket: 3,407 measured, 536
    estimated)``, or None when /proc/slabinfo was not read."""
    if ledger is None or ledger.bytes_per_connection is None or not ledger.rows:
        return None
    text = f"the kernel {ledger.bytes_per_connection:,.0f} B per connection"
    if ledger.bytes_per_socket is not None:
        text += f" ({ledger.bytes_per_socket:,.0f} B a socket"
        if ledger.measured_bytes_per_socket is not None:
            text += f": {ledger.measured_bytes_per_socket:,.0f} measured"
            if ledger.estimated_bytes_per_socket:
                text += f", {ledger.estimated_bytes_per_socket:,.0f} estimated"
        text += ")"
    return text


def c100k_spread_words(r: c100k.Result) -> str | None:
    """SO_REUSEPORT's spread over the workers against one shared listener's:
    ``SO_REUSEPORT: 16,460 to 16,756 a worker (CV 0.006, a uniform hash expects
    0.007); one shared listener: 2.1x between the busiest and the idlest (CV 0.25)``."""
    f = r.facts
    sp = f.spreads if f is not None else None
    if sp is None:
        return None
    parts = []
    held = [b.held for b in r.workers]
    if held:
        text = f"SO_REUSEPORT: {min(held):,} to {max(held):,} a worker"
        figures = []
        if sp.reuseport_cv is not None:
            figures.append(f"CV {sp.reuseport_cv:.2g}")
        if sp.expected_cv is not None:
            figures.append(f"a uniform hash expects {sp.expected_cv:.2g}")
        parts.append(text + (f" ({', '.join(figures)})" if figures else ""))
    shared = c100k_shared(r)
    if shared is not None and shared.bars:
        sh = [b.held for b in shared.bars]
        text = "one shared listener: "
        if sp.shared_max_min is not None:
            text += f"{sp.shared_max_min:.1f}x between the busiest and the idlest"
        else:
            text += f"{min(sh):,} to {max(sh):,} a worker"
        if sp.shared_cv is not None:
            text += f" (CV {sp.shared_cv:.2g})"
        fds = r.settings.process_fds if r.settings is not None else 0
        full = [n for n in sh if fds and n >= fds - c100k.SERVER_SPARE]
        if full:
            # A worker at its fd limit accepts no more (EMFILE): the spread would have
            # been wider still without the limit, and the others took the rest.
            text += (f", {len(full)} of {len(sh)} workers stopped at {max(full):,}, at the "
                     f"fd limit of {fds:,} a process")
        parts.append(text)
    return "; ".join(parts) or None


def c100k_stopped_words(row: c100k.ModelRow) -> str | None:
    """Why a model went no further (the threads ladder's last rung), in words."""
    if row.stopped_because is None:
        return None
    return f"{row.model} stopped at {row.asked:,}: {row.stopped_because}"


def c100k_fact(r: c100k.Result) -> str:
    """The fact in one sentence, from the default row's own figures; when not shown,
    each problem first, as the experiment worded it."""
    f = r.facts
    assert f is not None
    n = f.connections
    parts = []
    if r.held or r.failed:
        text = (f"{c100k.DEFAULT_MODEL} with SO_REUSEPORT held {r.held:,} of {n:,} connections "
                "open and echoing at once")
        if f.held_s is not None:
            text += f" in {f.held_s:.1f} s"
        text += (f" on {f.workers:,} server and "
                 f"{plural(f.processes, 'client process', 'client processes')}")
        if r.failed:
            text += f", {r.failed:,} failed"
        parts.append(text)
        if r.rss_growth_per_conn is not None:
            parts.append(f"{r.rss_growth_per_conn:,.0f} B of server user memory per connection "
                         f"(bound {f.max_rss_per_conn / 1024:g} KiB)")
        kernel = c100k_kernel_words(f.ledger)
        if kernel is not None:
            parts.append(kernel)
        elif f.ledger is not None and f.ledger.why_not:
            # Its first clause; the whole reason, with the hint, is with the ledger.
            why = f.ledger.why_not.split(" (")[0]
            parts.append(f"the kernel's bytes per socket not read ({why})")
    text = ", ".join(parts)
    if f.problems:
        return f"NOT shown: {'; '.join(f.problems)}" + (f"; {text}" if text else "")
    return text


# --- keepalive, ports, orphans -----------------------------------------------------------------

def silent_words(s: Silent) -> str:
    """One keepalive case as seen: its options, the counters, how recv() ended."""
    if s.keepidle_s is None:
        how = f"no keep-alive, {s.sent_bytes} B sent into the silence"
    else:
        how = (f"keep-alive {s.keepidle_s} s idle, {s.keepintvl_s} s interval, "
               f"{plural(s.keepcnt or 0, 'probe')}")
    if s.user_timeout_ms is not None:
        how += f", TCP_USER_TIMEOUT {s.user_timeout_ms / 1000:g} s"
    return (f"{s.case} ({how}): {plural(s.keepalive_probes, 'probe')} sent, "
            f"{plural(s.retransmits, 'retransmission')}, recv() "
            + ("failed with " if s.errno is not None else "had ")
            + keepalive.error_words(s))


def keepalive_fact(silences: Sequence[Silent]) -> str:
    by = keepalive.by_case(silences)
    if keepalive.judge(silences):
        ka, ut, rt = (by[c] for c in ("keepalive", "keepalive+user-timeout",
                                      "retransmit+user-timeout"))
        return (f"a peer gone silent was given up after {plural(ka.keepalive_probes, 'probe')}"
                f" ({ka.keepidle_s} s idle, {ka.keepintvl_s} s apart): ETIMEDOUT "
                f"(\"{ka.error}\") at {ka.error_at_s:.1f} s; TCP_USER_TIMEOUT "
                f"{(ut.user_timeout_ms or 0) / 1000:g} s ended it after "
                f"{plural(ut.keepalive_probes, 'probe')} of {ut.keepcnt}, at "
                f"{ut.error_at_s:.1f} s; with data in flight no probe went out and "
                f"TCP_USER_TIMEOUT {(rt.user_timeout_ms or 0) / 1000:g} s ended "
                f"{plural(rt.retransmits, 'retransmission')} at {rt.error_at_s:.1f} s")
    return ("expected ETIMEDOUT after KEEPCNT probes, sooner with TCP_USER_TIMEOUT, and "
            "after retransmissions with data in flight; saw: "
            + ("; ".join(("" if keepalive.case_shown(s) else "NOT shown: ") + silent_words(s)
                         for s in silences) or "no case"))


def ports_fact(cases: Sequence[Ports]) -> str:
    by = ports.by_case(cases)
    if ports.judge(cases):
        lo, hi = SOCKET_RANGE
        btc = by["bind-then-connect", ports.FIRST]
        one, two = ports.destinations(cases)
        return (f"in a ten-port range, connect() took the {len(ports.EVEN)} ports at even "
                f"offsets and bind() to port 0 the {len(ports.ODD)} odd ones; bind() then "
                f"connect() used all {len(btc.ports)} toward {one}, and toward "
                f"{two} bind() failed with "
                f"{btc.error.name if btc.error else '?'}; with "
                f"IP_BIND_ADDRESS_NO_PORT the same ten ports served "
                f"both destinations; IP_LOCAL_PORT_RANGE {lo}-{hi} gave those 4 ports; "
                f"ip_local_reserved_ports {RESERVED} left "
                f"{len(by['reserved', ports.FIRST].ports)}")
    return ("expected even ports for connect(), odd for bind(), bind() costing ports for "
            "every destination unless IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE and "
            "reserved ports obeyed; saw: "
            + "; ".join(("" if ports.case_shown(p, k) else "NOT shown: ")
                        + f"{p.case}{' to ' + p.destination if p.destination else ''}: "
                        + ports.ports_words(p)
                        for k, p in by.items() if k in ports.EXPECTED)
            + "".join(f"; {k[0]}{' to ' + k[1] if k[1] else ''}: missing"
                      for k in ports.EXPECTED if k not in by))


def orphans_fact(looks: Sequence[Look], fin_timeout: int, orphan_retries: int) -> str:
    if orphans.judge(looks, fin_timeout, orphan_retries):
        w2 = orphans.pair(looks, "fin-wait2")
        w1 = orphans.pair(looks, "fin-wait1")
        rt = orphans.pair(looks, "orphan-retries")
        assert w2 is not None and w1 is not None and rt is not None
        return (f"{w2[0].states['FIN_WAIT2']} FIN_WAIT2 minisockets and no TIME_WAIT, yet "
                f"sockstat said tw {w2[0].sockstat_tw}; they were gone "
                f"{w2[1].lived_s:.1f} s after close() (tcp_fin_timeout {fin_timeout} s) "
                f"while CLOSE_WAIT stayed {w2[1].states['CLOSE_WAIT']}; "
                f"{w1[0].states['FIN_WAIT1']} orphans in FIN_WAIT1 behind unsent data "
                f"(sockstat orphan {w1[0].sockstat_orphan}, the machine's count); an orphan "
                f"whose peer went silent was gone {rt[1].lived_s:.1f} s after close(), after "
                f"{plural(rt[1].retransmits or 0, 'retransmission')} "
                f"(tcp_orphan_retries {orphan_retries})")
    shown = {"fin-wait2": orphans.fin_wait2_shown(looks, fin_timeout),
             "fin-wait1": orphans.fin_wait1_shown(looks),
             "orphan-retries": orphans.orphan_retries_shown(looks, orphan_retries)}
    return ("expected FIN_WAIT2 minisockets counted as sockstat tw and gone after "
            "tcp_fin_timeout, FIN_WAIT1 orphans, and an orphan given up after "
            "tcp_orphan_retries; saw: "
            + ("; ".join(("" if shown.get(x.case) else "NOT shown: ") + orphans.look_words(x)
                         for x in looks) or "nothing"))


# --- nagle ------------------------------------------------------------------------------------

def nagle_ms(us: float) -> str:
    """``0.02 ms``, ``44.0 ms``: two decimals below 10 ms, where the fixes' figures are."""
    return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.1f} ms"


def nagle_round_words(r: nagle.Round) -> str:
    """One link's figures: each way's median after the first request, the first, and the
    server's delayed ACKs."""
    if r.skip is not None:
        return f"{r.link.words()}: not measured: {r.skip}"
    if r.error is not None:
        return f"{r.link.words()}: failed: {r.error}"
    ws = nagle.by_way(r)
    parts = []
    if "nagle" in ws:
        w = ws["nagle"]
        parts.append(f"with Nagle's algorithm a request took {nagle_ms(w.steady_us)} (median "
                     f"of {plural(len(w.requests_us) - 1, 'request')} after the first; "
                     f"slowest {nagle_ms(w.max_us)}), the first {nagle_ms(w.first_us)}; the "
                     f"server's delayed-ACK timer fired {plural(w.delayed_acks, 'time')} "
                     "(TcpExt DelayedACKs)"
                     + (f", its ato {nagle_ms(w.server_ato_us)}" if w.server_ato_us else ""))
    for key, how in (("nodelay", "with TCP_NODELAY"),
                     ("one-write", "with header and body in one sendmsg()")):
        if key in ws:
            x = ws[key]
            parts.append(f"{how} {nagle_ms(x.steady_us)} (the first {nagle_ms(x.first_us)}, "
                         f"{plural(x.delayed_acks, 'delayed ACK')})")
    return f"{r.link.words()}: " + "; ".join(parts)


#: What each of nagle.shortfalls' codes means, in words.
NAGLE_SHORT = {
    "missing": "a way of writing was not measured",
    "failed": "the round failed",
    "no-stall:nodelay": f"Nagle's requests were not {nagle.STALL_MS:g} ms slower than "
                        "TCP_NODELAY's",
    "no-stall:one-write": f"Nagle's requests were not {nagle.STALL_MS:g} ms slower than one "
                          "sendmsg()'s",
    "first-delayed": "the server's delayed-ACK timer fired for the first request too "
                     "(quick-ACK mode answers a connection's first data at once)",
    "few-delayed-acks": "the server's delayed-ACK timer fired for fewer than half the "
                        "requests after the first",
}


def nagle_fact(rounds: Sequence[nagle.Round]) -> str:
    """The stall and its fixes on each link; every check that failed, said."""
    words = [nagle_round_words(r) for r in rounds]
    if nagle.judge(rounds):
        first = rounds[0]
        stall = nagle.stall_us(first)
        text = "; ".join(words)
        if stall is not None:
            why = ("for the server's delayed ACK" if first.link.kind == "loopback" else
                   "for the server's delayed ACK (40 ms) and one more round trip (the "
                   "body leaves only once that ACK has crossed back)")
            text = (f"Nagle's algorithm made each write-write-read request wait "
                    f"{nagle_ms(stall)} longer than the faster fix, {why}; " + text)
        return text
    problems = [f"{r.link.words()}: " + ", ".join(NAGLE_SHORT.get(c, c)
                                                   for c in nagle.shortfalls(r))
                for r in rounds if r.skip is None and not r.shown]
    if rounds and rounds[0].skip is not None:
        problems.insert(0, f"the link given was not measured: {rounds[0].skip}")
    return ("expected each request of a write-write-read client to wait for the server's "
            "delayed ACK with Nagle's algorithm, not with TCP_NODELAY or one sendmsg(), and "
            "the first request not to; NOT shown: " + "; ".join(problems)
            + "; saw: " + "; ".join(words))


# --- retransmit -------------------------------------------------------------------------------

def syn_words(s: retransmit.SynFacts) -> str:
    gaps = ", ".join(f"{b - a:.2f}" for a, b in zip(s.sent, s.sent[1:], strict=False))
    model = ", ".join(f"{b - a:g}" for a, b in zip(s.model, s.model[1:], strict=False))
    error = (f"[Errno {s.errno}] {errno_name(s.errno)}: {s.error}" if s.errno is not None
             else "no error (it connected)")
    return (f"{plural(len(s.sent), 'SYN')} to a black-holed server (tcp_syn_retries "
            f"{s.syn_retries}, tcp_syn_linear_timeouts {s.linear_timeouts}), {gaps} s apart "
            f"(the kernel's rule: {model}), then connect() failed after "
            f"{s.failed_after:.2f} s (rule: {s.model_failed_after:g}) with {error}")


def case_words(c: retransmit.CaseFacts) -> str:
    times = ", ".join(f"{t * 1000:.0f}" for t in c.copies[1:]) or "never"
    counters = ", ".join(f"{name} {n}" for name, n in (
        ("TCPFastRetrans", c.fast_retrans), ("TCPLossProbes", c.loss_probes),
        ("TCPTimeouts", c.timeouts)) if n) or "no retransmission counted"
    what = {"middle": "a segment lost in the middle of a burst",
            "probe": "the burst's last two segments lost, the last one",
            "tail": "the burst's last segment, lost twice"}.get(c.name, c.name)
    ambiguous = ""
    if c.name == "probe" and retransmit.probe_ambiguous(c):
        ambiguous = (f"; the probe's SACK came back in {c.resent_sack_ms:.1f} ms, sooner than "
                     f"the handshake's {c.handshake_ms:.1f} ms, so RACK could not tell it from "
                     "a SACK of the first copy and ignored it (tcp_rack_advance, "
                     "net/ipv4/tcp_recovery.c, tcp_input.c in the newest kernels): the "
                     "other lost segment waited for the retransmission timer")
    return (f"{what}: sent again after {times} ms (RTT {c.rtt_ms:.0f} ms"
            + (f", {plural(c.dupacks, 'ACK')} with SACK first" if c.dupacks else "")
            + f"; {counters}){ambiguous}")


def retransmit_fact(f: retransmit.Facts, s: retransmit.RunWith | None) -> str:
    parts = []
    if f.syn is not None:
        parts.append(("" if retransmit.syn_shown(f.syn) else "NOT shown: ") + syn_words(f.syn))
    middle, tail = retransmit.by_name(f, "middle"), retransmit.by_name(f, "tail")
    probe = retransmit.by_name(f, "probe")
    for c, shown in ((middle, retransmit.fast_shown(middle)),
                     (probe, retransmit.probe_shown(probe)),
                     (tail, retransmit.rto_shown(tail, middle))):
        if c is not None:
            parts.append(("" if shown else "NOT shown: ") + case_words(c))
    for c in f.earlier:  # each try that did not show it, before the one above
        parts.append(f"an earlier try, NOT shown, so run again: {case_words(c)}")
    if f.traced is not None:
        parts.append(("" if retransmit.trace_shown(f) else "NOT shown: ")
                     + f"tcp:tcp_retransmit_skb fired {plural(f.traced, 'time')} for "
                     f"{plural(f.retransmitted_packets, 'retransmitted packet')} captured")
    else:
        parts.append(f"tracepoint not traced: {f.trace_skipped}")
    if s is not None and s.link_note:
        parts.append(s.link_note)
    text = "; ".join(parts) or "nothing was measured"
    if retransmit.judge(f):
        return text
    return ("expected SYNs at the kernel's times then ETIMEDOUT, a fast retransmit within "
            "about a round trip, a loss probe within three and no timeout, and a timeout at "
            "least 200 ms after a lost probe; saw: " + text)
