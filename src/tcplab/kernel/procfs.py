"""Pure parsers for the /proc files the observers read."""

from __future__ import annotations

from dataclasses import dataclass

UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class Limit:
    soft: int  # -1 for "unlimited"
    hard: int


def parse_limits(text: str, resource: str = "Max open files") -> Limit:
    """One row of /proc/PID/limits, e.g. ``Max open files  1024  524288  files``."""
    for line in text.splitlines():
        if line.startswith(resource):
            fields = line[len(resource):].split()
            if len(fields) < 2:
                break
            return Limit(_limit(fields[0]), _limit(fields[1]))
    raise ValueError(f"no {resource!r} row in limits")


def _limit(text: str) -> int:
    return UNLIMITED if text == "unlimited" else int(text)


def fd_kind(target: str) -> str:
    """What an fd is, from its /proc/PID/fd/N link target."""
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith("anon_inode:"):
        kind = target[len("anon_inode:"):].strip("[]")
        return {"eventpoll": "epoll"}.get(kind, kind)
    if target.startswith("/dev/"):
        return "device"
    if target.startswith("/"):
        return "file"
    return target.split(":", 1)[0] or "other"


def socket_inode(target: str) -> int:
    """The inode in ``socket:[12345]``, or 0 when the link is not a socket."""
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[8:-1])
    return 0


def status_field(text: str, field: str) -> str | None:
    """A field of /proc/PID/status, e.g. ``Threads``."""
    prefix = field + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat (and /proc/net/snmp): pairs of lines, names then values.

    ``{"TcpExt": {"ListenOverflows": 195, ...}, "IpExt": {...}}``.
    """
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, keys = names.partition(":")
        vprefix, _, vals = values.partition(":")
        if prefix != vprefix:
            raise ValueError(f"mismatched netstat lines {prefix!r} / {vprefix!r}")
        out[prefix] = {k: int(v) for k, v in zip(keys.split(), vals.split(), strict=True)}
    return out
