"""The record every experiment returns: its settings, facts, variants, timeline and verdict.

One generic ``Result[SettingsT, FactsT, VariantT]`` holds the fields every
experiment has, in the order ``--json`` has always printed them; each
experiment subclasses it with its own records (``port_bomb.Result`` is
``Result[port_bomb.RunWith, port_bomb.Facts, port_bomb.Variant]``). A generic
rather than six copies of the common fields: report/ and cli/ handle any
Result through the common fields (``experiment``, ``ok``, ``fact``,
``skipped``) and narrow to an experiment's own records with ``isinstance``;
a subclass, rather than an alias such as ``Result[A, B, C]``, because
dacite decodes a subclass's type arguments from its bases, and calling a
subscripted alias of a frozen, slotted dataclass fails (typing sets
``__orig_class__`` on the new instance, which the frozen ``__setattr__``
refuses with a TypeError on Python 3.11).

An experiment computes figures and verdicts (``ok``, a variant's ``shown``,
its shortfalls as an enum per reason); the sentences (``fact``, a variant's
``lesson``, ``why_not`` and ``skipped``) are report/prose.py's, which fills
them with ``worded()``. ``--json`` and results.json are the worded record as
``tcplab.records.to_json`` gives it, and ``decode()`` reads such an object
back into the experiment's own Result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from tcplab.experiments.link import LinkUsed

if TYPE_CHECKING:
    from tcplab.experiments.sampling import StateSampler

SettingsT = TypeVar("SettingsT")
FactsT = TypeVar("FactsT")
VariantT = TypeVar("VariantT")


class Progress(Protocol):
    """What an experiment says while it runs: a line, and for a line that states a
    verdict (a variant skipped, a round not shown) that variant's record, so cli/
    can word its reason with report/prose.py (experiments never word a reason)."""

    def __call__(self, line: str, verdict: Any = None, /) -> None: ...


def say_nothing(line: str, verdict: Any = None, /) -> None:
    """The Progress of a caller that does not listen."""


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # seconds since the experiment started
    what: str
    #: The variant whose verdict this event states ("fixed: skipped: ..."): its
    #: words are report/prose.py's, filled in by worded() like the variant's own.
    verdict_of: str | None = None


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One sample of the 100 ms sampler (agents/sampler.py's ``Sample``) as a timeline
    keeps it: the figures the charts and the report read, not the sampler's bookkeeping
    (its clock, the server's pid and limits, the backlog)."""

    t: float  # seconds since the experiment (or the variant) started
    states: dict[str, int]  # TCP state -> sockets on the port
    listen_queue: int | None = None  # LISTEN Recv-Q: the accept queue
    server_fds: int | None = None  # the server's fds in use (None: no server found)


def timeline_of(sampler: StateSampler) -> tuple[TimelineRow, ...]:
    """The sampler's rows so far as a timeline."""
    return tuple(TimelineRow(r.t, dict(r.states), r.listen_queue, r.server_fds)
                 for r in list(sampler.rows))


@dataclass(frozen=True, slots=True)
class Result(Generic[SettingsT, FactsT, VariantT]):
    experiment: str
    ok: bool  # the experiment showed what it set out to show
    fact: str = ""  # that fact in one sentence, with the measured figure (report/prose.py)
    #: What it ran with, as recorded (None: it did not get that far).
    settings: SettingsT | None = None
    facts: FactsT | None = None  # None: it did not get that far (skipped, failed)
    events: tuple[Event, ...] = ()  # what happened, in words, as it happened
    timeline: tuple[TimelineRow, ...] = ()  # the sampler's rows, where one ran for it
    variants: tuple[VariantT, ...] = ()  # sub-runs: port-bomb's variants, fd-leak's rounds, ...
    skipped: str | None = None  # why it could not run here, and what to do
    #: The link it ran on (experiments/link.py); None: it has one end, in one namespace.
    link: LinkUsed | None = None


#: experiment name -> the module that defines its Result.
MODULES = {"echo": "echo", "port-bomb": "port_bomb", "fd-leak": "fd_leak",
           "half-close": "half_close", "restart": "restart", "reset": "reset",
           "syn-queue": "syn_queue", "multiplex": "multiplex", "handshake": "handshake",
           "keepalive": "keepalive", "ports": "ports", "orphans": "orphans",
           "nagle": "nagle", "retransmit": "retransmit", "c100k": "c100k"}


def result_type(experiment: str) -> type[Result[Any, Any, Any]]:
    """The Result subclass of an experiment (imported when first asked for)."""
    import importlib

    if experiment not in MODULES:
        return Result
    module = importlib.import_module(f"tcplab.experiments.{MODULES[experiment]}")
    cls: type[Result[Any, Any, Any]] = module.Result
    return cls


def decode(body: Mapping[str, Any]) -> Result[Any, Any, Any]:
    """An object of ``--json`` or results.json back into the experiment's own Result."""
    from tcplab.records import from_json

    return from_json(result_type(str(body.get("experiment"))), body)
