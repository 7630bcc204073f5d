"""``tcplab exporter``: serve the same facts to Prometheus."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tcplab.cli import common
from tcplab.cli.output import note, out

DESCRIPTION = """\
Serves, in the Prometheus text format at http://LISTEN/metrics, what the kernel
says at scrape time (no background loop, no stale values):

  tcplab_tcp_sockets{state}                TCP sockets by state
  tcplab_tcp_service_sockets{port,state}   by service port; ephemeral ports
                                           folded into port="ephemeral"
  tcplab_ephemeral_ports_used{src,dst,dport}  ports held toward a destination
                                           (TIME_WAIT included), the 10 busiest
  tcplab_ephemeral_port_range_size         what they run out against
  tcplab_process_open_fds / _max_fds / _close_wait_sockets{pid,command}
                                           processes holding TCP sockets (at
                                           most 20 per namespace)
  tcplab_tcp_listen_overflows_total / _drops_total   TcpExt counters
  tcplab_doctor_findings{kind,severity}, tcplab_doctor_status
  tcplab_netns_examined, tcplab_netns_unexamined{netns,reason},
  tcplab_scrape_duration_seconds

The others (all but tcplab_doctor_status, tcplab_netns_* and the duration)
are labelled netns (the namespace's inode) and container (its container, pod
or systemd unit, "" for none). As root every
network namespace on the node is read (--netns for one); otherwise ours.
deploy/prometheus has alert rules for these series, deploy/grafana a dashboard.

  scrape_configs:
    - job_name: tcplab
      static_configs: [{targets: ["HOST:9309"]}]
"""


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="serve socket, fd and doctor metrics to Prometheus",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=common.listen_address, default=("127.0.0.1", 9309),
                   metavar="HOST:PORT", help="where to serve /metrics (default 127.0.0.1:9309)")
    common.add_netns(p, all_netns=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    from tcplab.errors import ExitStatus
    from tcplab.observe.exporter import TcplabCollector
    from tcplab.traffic.server import bind_error

    # As root every namespace on the node, each series labelled with its namespace
    # and container; --netns one.
    every = args.all_netns or (args.netns is None and os.geteuid() == 0)
    REGISTRY.register(TcplabCollector(args.netns, all_netns=every))
    host, port = args.listen
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        # The same words as 'tcplab server' (the holder named, the privilege
        # explained), one helper for both.
        raise bind_error(exc, common.where(host, port), port,
                         free=f"--listen {common.where(host, 0)}") from None
    where = common.where(host, server.server_address[1])
    out(f"serving metrics on http://{where}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        note("stopped")
        server.shutdown()
        return ExitStatus.INTERRUPTED
