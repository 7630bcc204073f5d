"""The agents' side of the contract: one JSON line per record, flushed at once;
and the command line that starts an agent, for the parent's side."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from tcplab.records import to_json


def emit(record: Any, stream: TextIO | None = None) -> None:
    """Write ``record`` as one JSON line and flush it (the parent reads as it comes)."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(to_json(record), separators=(",", ":")) + "\n")
    out.flush()


def command(agent: str, *args: str) -> list[str]:
    """``python -m tcplab.agents.AGENT ARGS`` with this interpreter: how a parent
    starts an agent (in a sandbox with ``Sandbox.popen``, or with ``interrupts.spawn``)."""
    return [sys.executable, "-m", f"tcplab.agents.{agent}", *args]
