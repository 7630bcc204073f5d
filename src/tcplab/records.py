"""Records to JSON and back: the one serialisation of every typed result.

Experiments, agents (the child processes) and reports pass frozen dataclasses;
``--json``, ``results.json`` and a child's JSON lines are those records as
``dataclasses.asdict`` gives them, so a table and its JSON cannot disagree.
``from_json`` turns such an object back into the record it came from (nested
records, lists, tuples and optional fields included) with dacite, checking the
types as it goes: a child that wrote something else fails here, by field name,
not later as a KeyError in the report. Keys the record does not know are
ignored (an older reader of a newer writer). Enum fields are written as their
values (a StrEnum is a str) and read back into the enum; a field named after
a Python keyword with a trailing underscore (``from_``, PEP 8's habit) is the
keyword itself in JSON (``"from"``).

Like errors.py and words.py this module sits outside the layers: kernel/ to
cli/ may all use it. dataclasses and dacite are imported when first needed, so
counting paths that never build a record do not pay for them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping

T = TypeVar("T")


class RecordError(ValueError):
    """A JSON object that is not the record it should be (field named)."""


def _key(name: str) -> str:
    """A field's JSON key: ``from_`` -> ``from`` (a keyword cannot be a field name)."""
    import keyword

    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_key(k): v for k, v in pairs}


def to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict (``dataclasses.asdict``)."""
    import dataclasses

    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"not a record: {type(record).__name__}")
    return dataclasses.asdict(record, dict_factory=_object)


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """The record of type ``cls`` that ``to_json`` (or a child) made ``data`` from."""
    import enum

    import dacite

    try:
        return dacite.from_dict(cls, dict(data), config=dacite.Config(
            cast=[tuple, enum.Enum], strict=False, convert_key=_key))
    except dacite.DaciteError as e:
        raise RecordError(f"{cls.__name__}: {e}") from None


def from_json_line(cls: type[T], line: str | bytes) -> T:
    """One JSON line (as an agent writes it) back into its record."""
    try:
        data = json.loads(line)
    except ValueError as e:
        raise RecordError(f"{cls.__name__}: not JSON ({e}): {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    return from_json(cls, data)
