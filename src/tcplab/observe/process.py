"""This process's own fd facts, which the servers report: fds in use and the fd limit.

The limit comes from ``getrlimit`` (no /proc read needed for ourselves) as the
same ``Limit`` record ``/proc/PID/limits`` gives for any other process; the
count is ``observe.procfs.fds_in_use``, the one /proc reader.
"""

from __future__ import annotations

import resource

from tcplab.kernel.procfs import Limit
from tcplab.observe.procfs import fds_in_use

__all__ = ["Limit", "fds_in_use", "own_fd_limit"]


def own_fd_limit() -> Limit:
    """This process's RLIMIT_NOFILE (what ``ulimit -Sn`` / ``ulimit -Hn`` print)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Limit(soft, hard)
