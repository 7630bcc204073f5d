"""close() with unread data sends RST, not FIN: ``tcplab experiment reset``.

A choreography (``python -m tcplab.agents.reset``) runs in a sandbox: three
connections on which the client sends 5 bytes and the server closes, after
reading them (FIN), without reading them (RST: tcp_close in net/ipv4/tcp.c),
and after reading them with SO_LINGER {1, 0} (RST too). Each is a ``Close``
record: the server's unread bytes at close(), both sockets' states after it,
the namespace's RST and abort counters over it, and the client's next read
(its bytes, or the errno and the kernel's text).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from tcplab.agents.reset import CASES, DATA, Close
from tcplab.errors import errno_name
from tcplab.experiments import result as base
from tcplab.experiments.choreography import records_on
from tcplab.experiments.link import LOOPBACK, LinkSpec
from tcplab.experiments.result import Event, Progress, say_nothing


@dataclass(frozen=True, slots=True)
class RunWith:
    sent_bytes: int  # what the client sent before the server's close()


@dataclass(frozen=True, slots=True)
class Facts:
    closes: tuple[Close, ...]  # read-first, unread, linger0


@dataclass(frozen=True, slots=True)
class Result(base.Result[RunWith, Facts, None]):
    """The reset experiment's result: one Close per case, no variants."""


def read_words(c: Close) -> str:
    """What the client's next read returned, as a person reads it (also prose's)."""
    if c.read_errno is not None:
        return f"[Errno {c.read_errno}] {errno_name(c.read_errno)}: {c.read_error}"
    return "EOF (0 bytes)" if c.read_bytes == 0 else f"{c.read_bytes} bytes"


def run(quick: bool = False, progress: Progress = say_nothing,
        link: LinkSpec = LOOPBACK) -> Result:
    settle = 0.05 + link.rtt_s  # the close, then its answer, crossed
    closes, used = records_on(link, "reset", ["--settle", f"{settle:g}"], Close,
                              "the reset choreography")
    events = []
    for c in closes:
        line = (f"{c.case}: {c.unread_bytes} B unread at close(); {c.out_rsts} RST sent; "
                f"server {c.server_after}, client {c.client_after}; the client's read: "
                f"{read_words(c)}")
        events.append(Event(c.t, line))
        progress(f"  {line}")
    return Result(experiment="reset", ok=judge(closes), settings=RunWith(sent_bytes=len(DATA)),
                  facts=Facts(closes=closes), events=tuple(events), link=used)


def by_case(closes: Sequence[Close]) -> dict[str, Close]:
    return {c.case: c for c in closes}


def fin(c: Close | None) -> bool:
    """A polite close: no RST, the server in FIN_WAIT2, the client at EOF in CLOSE_WAIT."""
    return (c is not None and c.out_rsts == 0 and c.read_bytes == 0
            and c.server_after == "FIN_WAIT2" and c.client_after == "CLOSE_WAIT")


def reset(c: Close | None) -> bool:
    """An abort: a RST sent, both sockets gone, the client's read ECONNRESET."""
    return (c is not None and c.out_rsts >= 1 and c.read_errno == errno.ECONNRESET
            and c.server_after == "gone" and c.client_after == "gone")


def judge(closes: Sequence[Close]) -> bool:
    """Shown: read first, close() sent a FIN; with the bytes unread in the server's
    receive buffer it sent a RST (TCPAbortOnClose) and the client's read got
    ECONNRESET; SO_LINGER 0 did the same without unread data (TCPAbortOnData)."""
    by = by_case(closes)
    unread, linger = by.get("unread"), by.get("linger0")
    return (set(by) == set(CASES) and fin(by["read-first"])
            and reset(unread) and unread is not None and unread.unread_bytes == len(DATA)
            and unread.abort_on_close == 1
            and reset(linger) and linger is not None and linger.unread_bytes == 0
            and linger.abort_on_data == 1)
