"""The record every experiment returns: facts, a timeline, and the one fact it showed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # seconds since the experiment started
    what: str


@dataclass(frozen=True, slots=True)
class Result:
    experiment: str
    ok: bool  # the experiment showed what it set out to show
    fact: str  # that fact in one sentence, with the measured figure
    settings: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # what happened, in words
    timeline: list[list[Any]] = field(default_factory=list)  # samples: [t, {...}]
    variants: list[dict[str, Any]] = field(default_factory=list)  # sub-runs, e.g. port-bomb's
    skipped: str | None = None  # why it could not run here, and what to do
