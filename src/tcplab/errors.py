"""A small taxonomy of errors, each carrying a hint for the user.

OS errors are translated once, at the boundary where they happen (binding a
port, connecting, raising a limit), into one of these. The CLI maps each class
to an exit status and prints ``tcplab: <message>`` and ``hint: <hint>``; the
traceback appears only with ``--debug``. Nothing below ``cli/`` prints.
"""

from __future__ import annotations

import errno as _errno
import os


class TcplabError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(TcplabError):
    """The command line asked for something impossible or contradictory."""

    exit_code = 2


class ConnectFailed(TcplabError):
    """A connection could not be made: refused, timed out, unreachable."""

    exit_code = 3


class PrivilegeError(TcplabError):
    """The operation needs a privilege this process does not have."""

    exit_code = 4


class AddressInUse(TcplabError):
    """``bind()`` failed with EADDRINUSE; the message names the holder if found."""

    exit_code = 5


class VerifyFailed(TcplabError):
    """An echo came back different from what was sent."""

    exit_code = 6


class ResourceLimit(TcplabError):
    """A kernel or process limit stands in the way (fd limit, port range)."""

    exit_code = 7


class NotSupported(TcplabError):
    """The platform lacks something tcplab needs (Linux, a kernel feature)."""

    exit_code = 8


#: Exit status for Ctrl-C, as shells report a process killed by SIGINT.
EXIT_INTERRUPTED = 130


def describe_oserror(exc: OSError) -> str:
    """``[Errno 99] Cannot assign requested address``: the errno and the kernel's text."""
    if exc.errno is None:
        return str(exc)
    return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"


def errno_name(code: int | None) -> str:
    """``EADDRNOTAVAIL`` for 99; ``E?`` when the number is unknown."""
    if code is None:
        return "E?"
    return _errno.errorcode.get(code, f"E{code}")
