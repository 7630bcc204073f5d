"""The knobs behind the experiments: fd limits and TCP sysctls, with what they mean.

The sysctls are read with ``observe.procfs.sysctl`` while inside ``--netns``
(the net.* ones are per namespace; a read sees the reader's namespace).
"""

from __future__ import annotations

from dataclasses import dataclass

from tcplab.kernel.procfs import parse_port_range
from tcplab.observe.netns import entered
from tcplab.observe.process import own_fd_limit
from tcplab.observe.procfs import PROCFS_PATH, sysctl


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    value: str
    meaning: str


#: What each value lets connect() do (tcp_twsk_unique in net/ipv4/tcp_ipv4.c): only an
#: outgoing connect() reuses a TIME_WAIT port, and only when the connection had TCP
#: timestamps (with tcp_timestamps = 0 no port is reused: measured in issue 13).
TW_REUSE = {
    "0": "off: connect() never picks the port of a TIME_WAIT socket for a new "
         "connection (one bound to that port first, with SO_REUSEADDR, may still take the "
         "4-tuple over when it had TCP timestamps); the port bomb fails after the port "
         "range is used up",
    "1": "on: connect() may reuse a TIME_WAIT port after tcp_tw_reuse_delay (needs TCP "
         "timestamps)",
    "2": "loopback only (the default): connect() reuses the port of a TIME_WAIT socket after "
         "tcp_tw_reuse_delay when it has 127.0.0.0/8, ::1 or a v4-mapped loopback address at "
         "either end or is bound to lo (needs TCP timestamps), which is why the classic port "
         "bomb does not fail on a modern kernel",
}


def read_knobs(netns: str | None = None, root: str = PROCFS_PATH) -> list[Knob]:
    limit = own_fd_limit()
    knobs = [
        Knob("ulimit -n (soft)", str(limit.soft),
             "fds this shell's processes may open; accept() fails with EMFILE beyond it"),
        Knob("ulimit -Hn (hard)", str(limit.hard),
             "the most a process may raise its own soft limit to (Go raises to it since 1.19)"),
    ]
    fs_names = ("fs.nr_open", "fs.file-nr")
    with entered(netns):
        values = {name: sysctl(name, root) for name in (
            *fs_names, "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_max_tw_buckets", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
        )}
    if values["fs.nr_open"]:
        knobs.append(Knob("fs.nr_open", values["fs.nr_open"],
                          "the ceiling for any process's hard fd limit"))
    if values["fs.file-nr"]:
        used, _free, most = ([*values["fs.file-nr"].split(), "?", "?", "?"])[:3]
        knobs.append(Knob("fs.file-nr", values["fs.file-nr"],
                          f"open files system-wide: {used} of {most}; beyond it, ENFILE "
                          "(a process with CAP_SYS_ADMIN may exceed it)"))
    port_range = values["net.ipv4.ip_local_port_range"]
    if port_range:
        low, high = parse_port_range(port_range)
        knobs.append(Knob("net.ipv4.ip_local_port_range", port_range,
                          f"{high - low + 1:,} ephemeral ports per destination (address, port), "
                          "less ip_local_reserved_ports and ports held by bind() or listen(); "
                          "connect() fails with EADDRNOTAVAIL when all are taken"))
    reuse = values["net.ipv4.tcp_tw_reuse"]
    if reuse is not None:
        knobs.append(Knob("net.ipv4.tcp_tw_reuse", reuse, TW_REUSE.get(reuse, "")))
    if values["net.ipv4.tcp_tw_reuse_delay"] is not None:
        knobs.append(Knob("net.ipv4.tcp_tw_reuse_delay", values["net.ipv4.tcp_tw_reuse_delay"],
                          "ms a TIME_WAIT socket must age before tcp_tw_reuse may take its port"))
    rest = {
        "net.ipv4.tcp_fin_timeout": "seconds an orphaned FIN_WAIT2 socket lives (its process "
        "closed it); TIME_WAIT is fixed at 60 s (TCP_TIMEWAIT_LEN) and ignores this",
        "net.ipv4.tcp_max_tw_buckets": "TIME_WAIT (and orphaned FIN_WAIT2) minisockets the "
        "namespace may hold; beyond it a closing socket gets none and is destroyed at once, "
        "counted as TcpExt TCPTimeWaitOverflow in /proc/net/netstat (tcp_time_wait; "
        "nothing is logged)",
        "net.core.somaxconn": "the cap on any listen() backlog: connections the kernel has "
        "completed but the server has not accept()ed yet",
        "net.ipv4.tcp_max_syn_backlog": "matters only with tcp_syncookies = 0: then SYNs from "
        "peers not yet proven are dropped once SYN_RECV fills three quarters of it "
        "(tcp_conn_request); the listen() backlog caps the SYN queue either way, and with "
        "syncookies on (the default) cookies answer beyond it",
    }
    for name, meaning in rest.items():
        if values[name] is not None:
            knobs.append(Knob(name, values[name] or "", meaning))
    return knobs
