"""The only place that writes to stdout and stderr.

With ``--json``, stdout carries JSON only (one object, or one per line for
streams), each with ``"schema": 1``; notes, progress and warnings go to
stderr. Lines are flushed as they are written, also into a pipe or a file.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

SCHEMA = 1


def setup_streams() -> None:
    """Line-buffer stdout and stderr even when they are not terminals, so a
    log redirected to a file shows each line as it happens."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):
                pass


def to_jsonable(obj: Any) -> Any:
    """Records (frozen dataclasses, or anything with ``asdict()``) become dicts,
    also inside lists and dicts. dataclasses is imported only when one comes."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        import dataclasses

        return dataclasses.asdict(obj)
    if hasattr(obj, "asdict"):
        return obj.asdict()
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def emit_json(obj: Any, atomic: bool = False, **extra: Any) -> None:
    """One JSON object on one stdout line: ``{"schema": 1, ...}``; ``atomic``: see write_line."""
    body = {"schema": SCHEMA, **extra, **to_jsonable(obj)}
    import json  # only for --json: `tcplab states` starts without it

    write_line(json.dumps(body, separators=(", ", ": ")), atomic)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_line(line: str, atomic: bool = False) -> None:
    """One stdout line. ``atomic``: in a single write() when it fits in PIPE_BUF,
    for processes that share one stdout (``tcplab server --workers``): pipe(7)
    makes such a write atomic, so two workers' lines never interleave."""
    if atomic:
        import os
        import select

        data = (line + "\n").encode()
        if len(data) <= select.PIPE_BUF:
            sys.stdout.flush()
            os.write(sys.stdout.fileno(), data)
            return
    out(line)


def note(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
