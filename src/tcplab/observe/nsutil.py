"""unshare(2), setns(2) and prctl(2) for Python 3.11 (os.unshare/os.setns are 3.12+)."""

from __future__ import annotations

import os
from typing import Any

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1

_libc: Any = None


def _lib() -> Any:
    """libc, loaded once (call it early in a process whose later calls are watched)."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            # glibc's soname: no ldconfig child, which find_library forks (and which a
            # traced process would show as a burst of open/close calls).
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def _check(result: int) -> None:
    if result != 0:
        import ctypes

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def unshare(flags: int) -> None:
    fn = getattr(os, "unshare", None)
    if fn is not None:
        fn(flags)
        return
    _check(_lib().unshare(flags))


def setns(fd: int, nstype: int) -> None:
    fn = getattr(os, "setns", None)
    if fn is not None:
        fn(fd, nstype)
        return
    _check(_lib().setns(fd, nstype))


def die_with_parent(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG): the kernel sends ``signum`` when our parent exits."""
    _check(_lib().prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0))


MS_REC = 0x4000
MS_PRIVATE = 1 << 18
CLONE_NEWNS = 0x00020000


def limit_fds(soft: int, hard_too: bool = False) -> None:
    """Set RLIMIT_NOFILE as ``ulimit -Sn SOFT`` (``ulimit -n SOFT`` with ``hard_too``:
    only CAP_SYS_RESOURCE may raise it again), never above the present hard limit."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, soft if hard_too else hard))


def mount(source: str, target: str, fstype: str | None, flags: int = 0) -> None:
    lib = _lib()
    _check(lib.mount(source.encode(), target.encode(),
                     fstype.encode() if fstype else None, flags, None))


def private_tracefs(target: str = "/sys/kernel/tracing") -> None:
    """Mount tracefs at ``target`` in a new, private mount namespace of this process,
    so the host's mounts do not change (``unshare -m`` plus ``mount --make-rprivate /``)."""
    unshare(CLONE_NEWNS)
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("nodev", target, "tracefs")
