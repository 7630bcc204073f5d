"""The facts of ``states``, ``fds`` and ``doctor`` as Prometheus metrics.

A custom collector reads the kernel at scrape time (no background loop, no
stale values). Series stay bounded on a busy machine: sockets are labelled
by their *service* port (the local port when it is one we listen on, the
remote port when it lies below the ephemeral range) and everything else is
folded into ``port="ephemeral"``; per-process series exist only for
processes that hold TCP sockets.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from tcplab.kernel import tcp_states
from tcplab.observe import procfs
from tcplab.observe.doctor import SEVERITY

#: The labels every series carries: the network namespace (its inode, as
#: `ls -l /proc/PID/ns/net` shows it) and its container, pod or unit ("" for none).
#: Bounded: one value per namespace on the node, not per connection or port.
WHERE = ["netns", "container"]
#: Per namespace, at most this many processes get tcplab_process_* series (those
#: with the most CLOSE_WAIT sockets, then the fullest fd tables) and this many
#: destinations tcplab_ephemeral_ports_used series (the busiest). A pid changes only
#: when its process restarts, a destination when the traffic does: the bounds hold
#: the series of one scrape to (20 + 10) per namespace, plus the per-state ones.
TOP_PROCESSES = 20
TOP_DESTINATIONS = 10


class TcplabCollector:
    """Reads the kernel at scrape time. Prometheus naming practice: base units
    (seconds), ``_total`` only on counters (the two TcpExt counters, which
    Prometheus rates itself), every other series a gauge of a count."""

    def __init__(self, netns: str | None = None, doctor_interval: float = 0.0,
                 all_netns: bool = False) -> None:
        self.netns = netns
        self.all_netns = all_netns

    def _namespaces(self, pinned: Iterable[str]) -> tuple[list[Any], int]:
        """The namespaces to read (observe.nodes.Namespace records), and how many
        processes' namespaces could not be looked at."""
        from tcplab.observe.netns import ns_path
        from tcplab.observe.nodes import Namespace, discover

        if self.all_netns:
            found = discover(pinned=pinned)
            return list(found.namespaces), found.unreadable
        # One walk of /proc: ours, or the one --netns names (as discover() describes
        # it: its pids, for the container label); a name that opens nothing is gone.
        path = ns_path(self.netns) if self.netns else "/proc/self/ns/net"
        st = os.stat(path)
        ident = f"{st.st_dev}:{st.st_ino}"
        found = discover(pinned=[path] if self.netns else [])
        unseen = found.unreadable
        for ns in found.namespaces:
            if ns.id == ident:
                return [ns], unseen
        return [Namespace(ident, st.st_ino, path, None, None, 0, False)], unseen

    def collect(self) -> Iterator[Any]:
        import time

        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from tcplab.errors import TcplabError
        from tcplab.observe.doctor import Thresholds, cgroup_words, check, look
        from tcplab.observe.nodes import pinned_open, why_word
        from tcplab.observe.owners import OwnerMap

        started = time.perf_counter()
        g = {name: GaugeMetricFamily(name, text, labels=[*labels, *WHERE])
             for name, text, labels in GAUGES}
        c = {name: CounterMetricFamily(name, text, labels=WHERE) for name, text in COUNTERS}
        findings = GaugeMetricFamily("tcplab_doctor_findings",
                                     "tcplab doctor's findings, by kind and severity",
                                     labels=["kind", "severity", *WHERE])
        unexamined = GaugeMetricFamily(
            "tcplab_netns_unexamined",
            "1 for each network namespace this scrape could not read; reason: gone, "
            "no_privilege or error", labels=["netns", "reason"])
        owners = OwnerMap()
        # One walk of the node's fds for every namespace of this scrape (and the
        # namespaces only a descriptor holds); lookups below never walk again.
        owners.scan()
        status = examined = 0
        try:
            namespaces, unseen = self._namespaces(owners.pinned.values())
        except (TcplabError, OSError) as exc:  # --netns names nothing (any more)
            namespaces, unseen = [], 0
            unexamined.add_metric([self.netns or "", why_word(exc)], 1)
        for ns in namespaces:
            where = [str(ns.inode), cgroup_words(ns.pid) or ""]
            try:
                with pinned_open(ns) as spec:
                    lk = look(spec, list(ns.pids))
                found = check(lk, owners, Thresholds(interval=0))
                self._series(lk, owners, where, g)
            except (TcplabError, OSError) as exc:
                # Gone since discover(), or not ours to enter: said, not hidden.
                unexamined.add_metric([where[0], why_word(exc)], 1)
                continue
            examined += 1
            for name, key in COUNTERS_FROM.items():
                if key in lk.counters:
                    c[name].add_metric(where, lk.counters[key])
            for (kind, severity), n in sorted(Counter((f.kind, f.severity)
                                                      for f in found).items()):
                findings.add_metric([kind, severity, *where], n)
            status = max([status, *(SEVERITY[f.severity] for f in found)])
        yield from g.values()
        yield from c.values()
        yield findings
        yield GaugeMetricFamily("tcplab_doctor_status",
                                "0 healthy, 1 warning, 2 critical: the worst finding on the node",
                                value=status)
        yield GaugeMetricFamily("tcplab_netns_examined",
                                "network namespaces this scrape read", value=examined)
        yield unexamined
        yield GaugeMetricFamily(
            "tcplab_netns_unreadable_processes",
            "processes whose network namespace could not be looked at (another user's "
            "without root, or in a user namespace of its own): not in these series",
            value=unseen)
        yield GaugeMetricFamily("tcplab_scrape_duration_seconds",
                                "seconds this scrape took to read the kernel",
                                value=time.perf_counter() - started)

    def _series(self, lk: Any, owners: Any, where: list[str], g: dict[str, Any]) -> None:
        socks = lk.sockets
        by_number: Counter[int] = Counter(s.state for s in socks)
        counts = tcp_states.fold([by_number.get(i, 0) for i in range(len(tcp_states.NAMES))])
        for name, n in counts.items():
            g["tcplab_tcp_sockets"].add_metric([name, *where], n)
        listening = {s.sport for s in socks if s.state == tcp_states.LISTEN}
        low = lk.low
        # The service port: the local port when we listen on it, else the remote port
        # when it lies below the ephemeral range or is one we listen on, else 0
        # ("ephemeral"). One comprehension over 56,800 sockets, not a call each.
        per_port: Counter[tuple[int, int]] = Counter([
            (s.sport if s.sport in listening
             else s.dport if (s.dport and s.dport < low) or s.dport in listening else 0,
             s.state) for s in socks])
        for (port, state), n in sorted(per_port.items()):
            g["tcplab_tcp_service_sockets"].add_metric(
                [str(port) if port else "ephemeral", tcp_states.name(state), *where], n)
        g["tcplab_ephemeral_port_range_size"].add_metric(where, lk.high - lk.low + 1)
        for (src, dst, dport), n in lk.per_dest.most_common(TOP_DESTINATIONS):
            g["tcplab_ephemeral_ports_used"].add_metric([src, dst, str(dport), *where], n)
        self._processes(socks, owners, where, g)

    def _processes(self, socks: list[Any], owners: Any, where: list[str],
                   g: dict[str, Any]) -> None:
        found = owners.lookup((s.inode for s in socks), rescan=False)
        close_wait: Counter[int] = Counter()
        commands: dict[int, str] = {}
        for s in socks:
            o = found.get(s.inode)
            if o is not None:
                commands[o.pid] = o.command
                if s.state == tcp_states.CLOSE_WAIT:
                    close_wait[o.pid] += 1
        rows = []
        for pid, command in commands.items():
            try:
                soft = procfs.fd_limit(pid).soft
                used = procfs.fds_in_use(pid)
            except procfs.ProcessError:
                continue
            rows.append((close_wait[pid], used / soft if soft > 0 else 0.0, pid, command,
                         used, soft))
        rows.sort(reverse=True)
        from tcplab.observe.doctor import cgroup_words

        for cw, _ratio, pid, command, used, soft in rows[:TOP_PROCESSES]:
            # The process's own container (in a pod, not the pause container's).
            labels = [str(pid), command, where[0], cgroup_words(pid) or where[1]]
            g["tcplab_process_open_fds"].add_metric(labels, used)
            g["tcplab_process_max_fds"].add_metric(labels, soft)
            g["tcplab_process_close_wait_sockets"].add_metric(labels, cw)


PROC = ["pid", "command"]
#: (name, help, labels before WHERE) of every gauge but the node-wide ones.
GAUGES = [
    ("tcplab_tcp_sockets", "TCP sockets by state", ["state"]),
    ("tcplab_tcp_service_sockets",
     "TCP sockets by service port and state (ephemeral ports folded into port=\"ephemeral\")",
     ["port", "state"]),
    ("tcplab_process_open_fds", "fds open in a process holding TCP sockets", PROC),
    ("tcplab_process_max_fds", "that process's soft fd limit (accept() fails with EMFILE "
     "there)", PROC),
    ("tcplab_process_close_wait_sockets", "that process's TCP sockets in CLOSE_WAIT", PROC),
    ("tcplab_ephemeral_port_range_size", "ports in net.ipv4.ip_local_port_range", []),
    ("tcplab_ephemeral_ports_used",
     "sockets (TIME_WAIT included) holding an ephemeral port toward one destination, per "
     "source address, destination address and port: connect() fails with EADDRNOTAVAIL "
     "when this reaches the range", ["src", "dst", "dport"]),
]
#: Counters: prometheus_client appends _total.
COUNTERS = [
    ("tcplab_tcp_listen_overflows",
     "TcpExt ListenOverflows: connections dropped because an accept queue was full"),
    ("tcplab_tcp_listen_drops", "TcpExt ListenDrops: SYNs or connections a listener dropped"),
]
COUNTERS_FROM = {"tcplab_tcp_listen_overflows": "ListenOverflows",
                 "tcplab_tcp_listen_drops": "ListenDrops"}
