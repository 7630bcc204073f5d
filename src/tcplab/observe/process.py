"""Process facts the servers and the CLI need: fds in use and fd limits.

Every ``/proc`` path is built from one ``procfs`` root so tests can point it
elsewhere, as psutil does.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

PROCFS = "/proc"


def fds_in_use(pid: int | str = "self", procfs: str = PROCFS) -> int:
    """How many file descriptors ``pid`` has open.

    Since Linux 6.2, ``stat()`` on ``/proc/PID/fd`` reports the number of open
    fds in ``st_size`` (commit f1f1f2569901, "fs/proc: report open fds in
    st_size"): one syscall instead of reading the whole directory. Older kernels
    report 0 there, so fall back to counting the entries.
    """
    path = f"{procfs}/{pid}/fd"
    size = os.stat(path).st_size
    if size > 0:
        return size
    return len(os.listdir(path))


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int
    hard: int


def own_fd_limit() -> FdLimit:
    """This process's RLIMIT_NOFILE (what ``ulimit -Sn`` / ``ulimit -Hn`` print)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdLimit(soft, hard)
