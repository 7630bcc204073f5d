"""The facts of ``states``, ``fds`` and ``doctor`` as Prometheus metrics.

A custom collector reads the kernel at scrape time (no background loop, no
stale values). Series stay bounded on a busy machine: sockets are labelled
by their *service* port (the local port when it is one we listen on, the
remote port when it lies below the ephemeral range) and everything else is
folded into ``port="ephemeral"``; per-process series exist only for
processes that hold TCP sockets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from tcplab.kernel import tcp_states
from tcplab.observe.doctor import Thresholds, diagnose, port_range
from tcplab.observe.fds import fd_report
from tcplab.observe.netns import entered
from tcplab.observe.owners import OwnerMap
from tcplab.observe.sockets import SocketTable


def service_port(sport: int, dport: int, listening: set[int], low: int) -> str:
    if sport in listening:
        return str(sport)
    if dport and dport < low:
        return str(dport)
    if dport in listening:
        return str(dport)
    return "ephemeral"


#: The labels every series carries: the network namespace (its inode, as
#: `ls -l /proc/PID/ns/net` shows it) and its container, pod or unit ("" for none).
#: Bounded: one value per namespace on the node, not per connection or port.
WHERE = ["netns", "container"]


class TcplabCollector:
    def __init__(self, netns: str | None = None, doctor_interval: float = 0.0,
                 all_netns: bool = False) -> None:
        self.netns = netns
        self.doctor_interval = doctor_interval
        self.all_netns = all_netns

    def _targets(self) -> list[tuple[str | None, list[str]]]:
        """(what to enter, its WHERE labels) for each namespace this scrape reads."""
        import os

        from tcplab.observe.doctor import cgroup_words
        from tcplab.observe.netns import ns_path
        from tcplab.observe.nodes import discover

        if self.all_netns:
            return [(ns.path, [str(ns.inode), cgroup_words(ns.pid) or ""])
                    for ns in discover().namespaces]
        path = ns_path(self.netns) if self.netns else "/proc/self/ns/net"
        pid = int(self.netns) if self.netns and self.netns.isdigit() else os.getpid()
        return [(self.netns, [str(os.stat(path).st_ino), cgroup_words(pid) or ""])]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from tcplab.errors import TcplabError

        states = GaugeMetricFamily("tcplab_tcp_sockets", "TCP sockets by state",
                                   labels=["state", *WHERE])
        ports = GaugeMetricFamily(
            "tcplab_tcp_sockets_by_port",
            "TCP sockets by service port and state (ephemeral ports folded into one value)",
            labels=["port", "state", *WHERE],
        )
        proc_labels = ["pid", "command", *WHERE]
        open_fds = GaugeMetricFamily("tcplab_process_open_fds",
                                     "fds open in processes holding TCP sockets",
                                     labels=proc_labels)
        max_fds = GaugeMetricFamily("tcplab_process_max_fds", "their soft fd limit",
                                    labels=proc_labels)
        close_wait = GaugeMetricFamily("tcplab_process_close_wait_sockets",
                                       "their sockets in CLOSE_WAIT", labels=proc_labels)
        findings = GaugeMetricFamily("tcplab_doctor_findings", "tcplab doctor findings",
                                     labels=["kind", "severity", *WHERE])
        status = 0
        for spec, where in self._targets():
            try:
                self._one(spec, where, states, ports, open_fds, max_fds, close_wait)
                d = diagnose(spec, Thresholds(interval=self.doctor_interval))
            except (TcplabError, OSError):
                continue  # gone since discover(), or not ours to enter: no series
            for (kind, severity), n in sorted(Counter((f.kind, f.severity)
                                                      for f in d.findings).items()):
                findings.add_metric([kind, severity, *where], n)
            status = max(status, d.status)
        yield from (states, ports, open_fds, max_fds, close_wait, findings)
        yield GaugeMetricFamily("tcplab_doctor_status",
                                "0 healthy, 1 warning, 2 critical", value=status)

    def _one(self, spec: str | None, where: list[str], states: Any, ports: Any,
             open_fds: Any, max_fds: Any, close_wait: Any) -> None:
        with SocketTable(netns=spec) as table:
            socks = table.sockets()
        with entered(spec):
            low, _high = port_range()
        by_state: Counter[str] = Counter(tcp_states.name(s.state) for s in socks)
        for name in tcp_states.STATE_NAMES:
            states.add_metric([name, *where], by_state.get(name, 0))
        listening = {s.sport for s in socks if s.state == tcp_states.LISTEN}
        per_port: Counter[tuple[str, str]] = Counter(
            (service_port(s.sport, s.dport, listening, low), tcp_states.name(s.state))
            for s in socks
        )
        for (port, state), n in sorted(per_port.items()):
            ports.add_metric([port, state, *where], n)
        owners = OwnerMap().lookup(s.inode for s in socks)
        state_of = {s.inode: s.state for s in socks if s.inode}
        for pid in sorted({o.pid for o in owners.values()}):
            try:
                r = fd_report(pid, state_of)
            except OSError:
                continue
            labels = [str(pid), r.command, *where]
            open_fds.add_metric(labels, r.fds)
            max_fds.add_metric(labels, r.soft)
            close_wait.add_metric(labels, r.tcp.get("CLOSE_WAIT", 0))
