"""The child processes tcplab runs, as one contract (see docs/architecture.md, "Agents").

Every program an experiment starts as ``python -m tcplab.agents.NAME`` lives
here: it reads its settings from argv, does one job inside the sandbox, and
writes typed records (frozen dataclasses) as JSON lines on stdout through
``agents.io.emit``; the parent decodes each line back into the same record
with ``tcplab.records.from_json_line``. Nothing else below ``cli/`` writes to
stdout.
"""
