"""Where an experiment's two ends run: ``--link loopback`` or ``--link veth``.

``loopback`` (the default) is one private network namespace (a Sandbox): client
and server share ``lo``, 127.0.0.1, an MTU of 65,536 (MSS 32,741 on this kernel),
no round trip worth the name, no loss. ``veth`` is a temporary ``tcplab net``
(tcplab/net/control.py, ``temporary``): the client and the server in namespaces
of their own joined by a veth pair (198.18.0.0/15), through a router namespace
when the link is shaped (--delay, --jitter, --loss, --rate: the router holds
the delay line, the nftables loss rule and tbf), an MTU of 1,500 unless --mtu.

An experiment asks ``ends(spec, sysctls)`` for an ``Ends`` and starts its
children with ``Ends.client(...)`` / ``Ends.server(...)``; it connects to
``Ends.server_host``. Both kinds are taken down on every exit of the ``with``
(Ctrl-C included), with every child in them. ``Ends.used`` is the record the
result keeps: which link it ran on, its shaping and the mechanism of each knob,
so the report says what shaped the link.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tcplab.net.plan import Shaping

if TYPE_CHECKING:
    from tcplab.experiments.sandbox import Sandbox

LINKS = ("loopback", "veth")

#: Starts a child where it belongs (Sandbox.popen, or control.popen in a net's end).
Popen = Callable[..., "subprocess.Popen[Any]"]


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """What the user asked for: ``--link`` and the shaping options."""

    kind: str = "loopback"
    shaping: Shaping = field(default_factory=Shaping)

    @property
    def rtt_s(self) -> float:
        """The longest round trip the shaping asks for (delay and jitter, both ways):
        what a step waits on top of its loopback pause."""
        return 2 * (self.shaping.delay_ms + self.shaping.jitter_ms) / 1000

    def problem(self) -> str | None:
        """Why this cannot be run, in words (None: it can)."""
        from tcplab.net.plan import check_shaping

        if self.kind not in LINKS:
            return f"unknown link {self.kind!r} (choose from: {', '.join(LINKS)})"
        if self.kind == "loopback" and (self.shaping.shaped or self.shaping.mtu):
            return ("--delay, --jitter, --loss, --rate and --mtu shape a veth link: "
                    "add --link veth (loopback cannot be shaped)")
        return check_shaping(self.shaping)


#: The default of every experiment's ``link`` argument.
LOOPBACK = LinkSpec()


@dataclass(frozen=True, slots=True)
class LinkUsed:
    """The link an experiment ran on, as its result records it."""

    kind: str = "loopback"  # "loopback" | "veth"
    shaping: str = "unshaped"  # Shaping.words()
    mtu: int | None = None  # the veths' MTU (None: loopback's own)
    #: knob -> mechanism on this machine ("delay": "delay line (TUN)", "loss": "nftables", ...)
    mechanisms: dict[str, str] = field(default_factory=dict)
    client: str = "127.0.0.1"
    server: str = "127.0.0.1"
    client_interface: str = "lo"  # where a capture at the client's end listens
    server_interface: str = "lo"

    def words(self) -> str:
        if self.kind == "loopback":
            return "loopback (one namespace, lo)"
        how = ", ".join(f"{k} by {v}" for k, v in self.mechanisms.items())
        return (f"veth {self.client} -> {self.server}, {self.shaping}, MTU {self.mtu}"
                + (f" ({how})" if how else ""))


@dataclass
class Ends:
    """The two ends of one run: how to start a child at each, and where to connect."""

    used: LinkUsed
    client: Popen
    server: Popen
    #: Sets sysctls in a role's namespace and returns them as read back.
    set_sysctls: Callable[[str, Mapping[str, str]], dict[str, str | None]]
    #: role -> /proc/PID/ns/net of a process in it (veth only: a process that
    #: holds both sockets, as a choreography, enters each to make its socket).
    netns: dict[str, str] = field(default_factory=dict)
    #: loopback's Sandbox (what --server-cmd's ForeignServer needs); None on veth.
    sandbox: Sandbox | None = None

    def sysctls(self, role: str, names: Sequence[str]) -> dict[str, str | None]:
        """Sysctls as ``role``'s namespace has them (read by the sysctl agent in it;
        None: no such sysctl there)."""
        from tcplab.agents.io import command
        from tcplab.agents.sysctl import Sysctl
        from tcplab.errors import ExperimentFailed
        from tcplab.records import RecordError, from_json_line

        r = self.run(role, command("sysctl", *names), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
        try:
            read = [from_json_line(Sysctl, line) for line in r.stdout.splitlines()]
        except RecordError as e:
            raise ExperimentFailed(f"reading {', '.join(names)} at the {role}'s end: "
                                   f"{e}") from None
        return {x.name: x.value for x in read}

    def run(self, role: str, args: Sequence[str], timeout: float = 60, **kwargs: Any
            ) -> subprocess.CompletedProcess[Any]:
        """``args`` at ``role``'s end to the end, as subprocess.run."""
        proc = (self.client if role == "client" else self.server)(args, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def at(self, role: str) -> Place:
        """``role``'s end as a Sandbox is used: popen and run (ForeignServer's needs)."""
        return Place(self, role)

    def netns_args(self) -> list[str]:
        """``--client-netns PATH --server-netns PATH`` for an agent that makes both
        ends' sockets (nothing on loopback: one namespace)."""
        return [a for role, path in sorted(self.netns.items())
                for a in (f"--{role}-netns", path)]

    @property
    def kind(self) -> str:
        return self.used.kind

    @property
    def server_host(self) -> str:
        return self.used.server

    @property
    def client_host(self) -> str:
        return self.used.client


@contextlib.contextmanager
def ends(spec: LinkSpec, sysctls: Mapping[str, str | int] | None = None,
         prefix: str = "x") -> Iterator[Ends]:
    """Both ends for the length of a ``with``; ``sysctls`` are set in every namespace
    the experiment's sockets live in (on veth: the client's and the server's)."""
    from tcplab.errors import UsageError
    from tcplab.experiments.live_hook import following

    problem = spec.problem()
    if problem:
        raise UsageError(problem)
    values = {k: str(v) for k, v in (sysctls or {}).items()}
    if spec.kind == "loopback":
        from tcplab.experiments.sandbox import Sandbox

        with Sandbox(values) as sb:
            def loop_set(role: str, more: Mapping[str, str]) -> dict[str, str | None]:
                raise NotImplementedError("loopback's sysctls are set when it is made")

            e = Ends(LinkUsed(), sb.popen, sb.popen, loop_set, sandbox=sb)
            with following(e):  # experiment --live / --record (experiments/live_hook.py)
                yield e
        return
    from tcplab.net import control

    with control.temporary(spec.shaping, router=spec.shaping.shaped, prefix=prefix) as net:
        def at(role: str) -> Popen:
            def start(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
                return control.popen(net, role, list(args), **kwargs)
            return start

        def set_in(role: str, more: Mapping[str, str]) -> dict[str, str | None]:
            return control.set_sysctls(net, role, more)

        for role in ("client", "server"):
            if values:
                set_in(role, values)
        used = LinkUsed(kind="veth", shaping=net.shaping.words(), mtu=net.mtu,
                        mechanisms=dict(net.mechanisms), client=net.client.ipv4 or "",
                        server=net.server.ipv4 or "",
                        client_interface=net.client.interface or "",
                        server_interface=net.server.interface or "")
        e = Ends(used, at("client"), at("server"), set_in,
                 {role: f"/proc/{net.endpoint(role).pid}/ns/net"
                  for role in ("client", "server")})
        with following(e):
            yield e


@dataclass
class Place:
    """One end of an Ends with a Sandbox's ``popen`` and ``run``."""

    ends: Ends
    role: str

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        start = self.ends.client if self.role == "client" else self.ends.server
        return start(args, **kwargs)

    def run(self, args: Sequence[str], timeout: float = 60, **kwargs: Any
            ) -> subprocess.CompletedProcess[Any]:
        return self.ends.run(self.role, args, timeout, **kwargs)
