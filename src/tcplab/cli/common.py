"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

#: Values of an environment switch that mean "on" (the original lab's LEAK=true).
TRUTHY = frozenset({"1", "true", "yes", "on"})


def parent() -> argparse.ArgumentParser:
    """Options every command takes, wherever they stand on the line."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the Python traceback when something fails",
    )
    return p


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--json", action="store_true", help=f"print {what} as JSON on stdout (notes go to stderr)"
    )


def int_range(low: int, high: int | None = None, what: str = "a whole number") -> Callable[
    [str], int
]:
    """An argparse type: an integer from ``low`` to ``high`` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            # "30000 is not a whole number from 10 to 28232": not "... number (10 to
            # 28232)", which read as if 30000 were no whole number
            bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is not {what} {bounds}")
        return value

    return parse


port = int_range(0, 65535, "a port")
positive_int = int_range(1)
non_negative_int = int_range(0)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 seconds")
    return value


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


def add_netns(p: argparse.ArgumentParser, all_netns: bool = False) -> None:
    g = p.add_mutually_exclusive_group() if all_netns else p
    g.add_argument(
        "--netns", metavar="NAME|PATH|PID",
        help="look inside another network namespace: a name from 'ip netns', a path "
        "such as /proc/PID/ns/net, a pid, or net:[INODE] as doctor prints it (needs root)",
    )
    if all_netns:
        g.add_argument(
            "--all-netns", action="store_true",
            help="every network namespace on the node (each container's, each 'ip netns'): "
            "found by the namespaces of /proc/*/ns/net, of nsfs mounts (/run/netns, "
            "Docker's, CNI's) and, where every fd is walked anyway (doctor, exporter, "
            "sockets --all-procs), of open namespace fds; each read by its own sock_diag "
            "socket opened inside it; says how many were examined and which could not "
            "be, and why (needs root for others' namespaces)")


def add_interval(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument(
        "--interval", type=seconds, default=default, metavar="SECONDS",
        help=f"seconds between samples with --watch (default {default:g})",
    )
    p.add_argument(
        "--samples", type=positive_int, metavar="N",
        help="with --watch, stop after N samples (for scripts)",
    )


def note_unexamined(failed: list[tuple[Any, str]], unreadable: int,
                    examined: int | None = None) -> None:
    """What --all-netns looked at and could not, on stderr: how many namespaces were
    examined, each one that was not with why, and the processes whose namespace was
    unreadable."""
    import os

    from tcplab.cli.output import note
    from tcplab.words import plural

    if examined is not None:
        note(f"tcplab: {plural(examined, 'network namespace')} examined"
             + (f", {len(failed)} not" if failed else ""))

    for ns, why in failed:
        note(f"tcplab: net:[{ns.inode}]" + (f" (pid {ns.pid})" if ns.pid else "")
             + f" not examined: {why}")
    if unreadable:
        why = ("another user's: run as root to see every namespace" if os.geteuid()
               else "permission denied even to root: in a user namespace of their own")
        note(f"tcplab: the namespace of {plural(unreadable, 'process')} could not be looked "
             f"at ({why})")


def netns_json(examined: int, failed: list[tuple[Any, str]], unreadable: int
               ) -> dict[str, Any]:
    """The keys every --all-netns JSON body has: how many namespaces were examined,
    each one that was not (its inode, a pid in it, why), and how many processes'
    namespaces could not be looked at."""
    return {"examined": examined,
            "not_examined": [{"netns": ns.inode, "netns_name": ns.name, "pid": ns.pid,
                              "why": why} for ns, why in failed],
            "unreadable_processes": unreadable}


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1), for --listen."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    return host.strip("[]") or "127.0.0.1", port(port_text)


def where(host: str, port_number: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port_number}" if ":" in host else f"{host}:{port_number}"
