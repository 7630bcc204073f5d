"""The TCP state table, as the kernel numbers it and netstat names it.

Numbers from ``include/net/tcp_states.h``. ``NEW_SYN_RECV`` (12) is the
request socket of a half-open connection since Linux 4.4; ss and netstat
both show it as SYN_RECV, and so do we.

Who holds each state, and why it matters in the lab:

=============  ===============================================================
ESTABLISHED    both sides: data flows
SYN_SENT       the client, after connect(), until the SYN-ACK arrives
SYN_RECV       the server, after the SYN, until the final ACK
FIN_WAIT1      the active closer: FIN sent, not yet acknowledged
FIN_WAIT2      the active closer: FIN acknowledged, waiting for the peer's FIN
               (the peer's bug when it lasts: it never calls close())
TIME_WAIT      the active closer, after both FINs: 60 s (TCP_TIMEWAIT_LEN)
CLOSE          no connection (a socket that was reset, or never connected)
CLOSE_WAIT     the passive closer: FIN received, waiting for *our* close()
               (our bug when it lasts: the fd leak)
LAST_ACK       the passive closer after close(): its FIN not yet acknowledged
LISTEN         a server's listening socket
CLOSING        both sides closed at once: FINs crossed
=============  ===============================================================
"""

from __future__ import annotations

ESTABLISHED = 1
SYN_SENT = 2
SYN_RECV = 3
FIN_WAIT1 = 4
FIN_WAIT2 = 5
TIME_WAIT = 6
CLOSE = 7
CLOSE_WAIT = 8
LAST_ACK = 9
LISTEN = 10
CLOSING = 11
NEW_SYN_RECV = 12

#: Index = kernel state number; value = the name netstat prints.
NAMES: tuple[str, ...] = (
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "SYN_RECV",  # NEW_SYN_RECV
)

#: The states a user sees, in the kernel's order; JSON lists all of them, zero included.
STATE_NAMES: tuple[str, ...] = NAMES[1:12]

#: Every state bit, for the sock_diag request's ``idiag_states`` mask.
ALL_STATES_MASK = sum(1 << s for s in range(1, NEW_SYN_RECV + 1))

_BY_NAME = {name: number for number, name in enumerate(NAMES) if number and number < 12}
_ALIASES = {"FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2", "SYN_RECEIVED": "SYN_RECV",
            "ESTAB": "ESTABLISHED", "CLOSED": "CLOSE"}


def name(state: int) -> str:
    """netstat's name for a kernel state number."""
    return NAMES[state] if 0 < state < len(NAMES) else f"UNKNOWN({state})"


def parse(text: str) -> int:
    """A state number from a name: netstat's (TIME_WAIT), ss's (time-wait), or an alias."""
    key = text.strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _BY_NAME:
        raise ValueError(f"unknown TCP state {text!r}; one of: {', '.join(STATE_NAMES)}")
    return _BY_NAME[key]


def mask(states: list[int] | tuple[int, ...]) -> int:
    """The ``idiag_states`` bitmask for these states (SYN_RECV includes NEW_SYN_RECV)."""
    bits = 0
    for s in states:
        bits |= 1 << s
        if s == SYN_RECV:
            bits |= 1 << NEW_SYN_RECV
    return bits


def fold(counts: list[int]) -> dict[str, int]:
    """Per-number counts (index = state) to ``{netstat name: count}`` for every state."""
    out = dict.fromkeys(STATE_NAMES, 0)
    for number, count in enumerate(counts):
        if count and 0 < number < len(NAMES):
            out[NAMES[number]] += count
    return out
