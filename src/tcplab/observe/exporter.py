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


class TcplabCollector:
    def __init__(self, netns: str | None = None, doctor_interval: float = 0.0) -> None:
        self.netns = netns
        self.doctor_interval = doctor_interval

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with SocketTable(netns=self.netns) as table:
            socks = table.sockets()
        with entered(self.netns):
            low, _high = port_range()
        by_state: Counter[str] = Counter(tcp_states.name(s.state) for s in socks)
        states = GaugeMetricFamily("tcplab_tcp_sockets", "TCP sockets by state", labels=["state"])
        for name in tcp_states.STATE_NAMES:
            states.add_metric([name], by_state.get(name, 0))
        yield states

        listening = {s.sport for s in socks if s.state == tcp_states.LISTEN}
        per_port: Counter[tuple[str, str]] = Counter(
            (service_port(s.sport, s.dport, listening, low), tcp_states.name(s.state))
            for s in socks
        )
        ports = GaugeMetricFamily(
            "tcplab_tcp_sockets_by_port",
            "TCP sockets by service port and state (ephemeral ports folded into one value)",
            labels=["port", "state"],
        )
        for (port, state), n in sorted(per_port.items()):
            ports.add_metric([port, state], n)
        yield ports

        owners = OwnerMap().lookup(s.inode for s in socks)
        state_of = {s.inode: s.state for s in socks if s.inode}
        pids = sorted({o.pid for o in owners.values()})
        open_fds = GaugeMetricFamily("tcplab_process_open_fds",
                                     "fds open in processes holding TCP sockets",
                                     labels=["pid", "command"])
        max_fds = GaugeMetricFamily("tcplab_process_max_fds", "their soft fd limit",
                                    labels=["pid", "command"])
        close_wait = GaugeMetricFamily("tcplab_process_close_wait_sockets",
                                       "their sockets in CLOSE_WAIT", labels=["pid", "command"])
        for pid in pids:
            try:
                r = fd_report(pid, state_of)
            except OSError:
                continue
            labels = [str(pid), r.command]
            open_fds.add_metric(labels, r.fds)
            max_fds.add_metric(labels, r.soft)
            close_wait.add_metric(labels, r.tcp.get("CLOSE_WAIT", 0))
        yield open_fds
        yield max_fds
        yield close_wait

        d = diagnose(self.netns, Thresholds(interval=self.doctor_interval))
        findings = GaugeMetricFamily("tcplab_doctor_findings", "tcplab doctor findings",
                                     labels=["kind", "severity"])
        for (kind, severity), n in sorted(Counter((f.kind, f.severity)
                                                  for f in d.findings).items()):
            findings.add_metric([kind, severity], n)
        yield findings
        yield GaugeMetricFamily("tcplab_doctor_status",
                                "0 healthy, 1 warning, 2 critical", value=d.status)
