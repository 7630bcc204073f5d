"""A small taxonomy of errors, each carrying a hint for the user.

OS errors are translated once, at the boundary where they happen (binding a
port, connecting, raising a limit), into one of these. The CLI maps each class
to an exit status and prints ``tcplab: <message>`` and ``hint: <hint>``; the
traceback appears only with ``--debug``. Nothing below ``cli/`` prints to the
user (agents/ write records to their parent).
"""

from __future__ import annotations

import enum
import errno as _errno
import os


class ExitStatus(enum.IntEnum):
    """Every exit status tcplab returns, with its one-line meaning.

    The one source: the error classes below, ``cli/main.py``, the ``--help``
    epilog and the README's "Exit status" table all come from (or are checked
    against, tests/test_cli.py) this enum. ``tcplab doctor`` alone follows the
    monitoring-plugin convention instead (0 healthy, 1 warning, 2 critical,
    3 unknown), as Nagios-style checks are read by their status.
    """

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitStatus:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "success; for an experiment, its lesson was shown"
    ERROR = 1, "an error, or an experiment whose lesson was not shown"
    USAGE = 2, "the command line is wrong (unknown flag, bad value, contradiction)"
    CONNECT_FAILED = 3, "a connection could not be made (refused, timed out, unreachable)"
    PRIVILEGE = 4, "the operation needs a privilege this process lacks (root, CAP_NET_RAW)"
    ADDRESS_IN_USE = 5, "the address is in use (bind: EADDRINUSE); the holder is named"
    VERIFY_FAILED = 6, "an echo came back different from what was sent"
    LIMIT = 7, "a kernel or process limit is in the way (fd limit, port range)"
    NOT_SUPPORTED = 8, "not supported here (not Linux, a kernel feature missing)"
    EXPERIMENT_FAILED = 9, "an experiment could not run to its end: a process it started failed"
    INTERRUPTED = 130, "interrupted (Ctrl-C, SIGINT), as shells report 128 + 2"


class TcplabError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(TcplabError):
    """The command line asked for something impossible or contradictory."""

    exit_code = ExitStatus.USAGE


class ConnectFailed(TcplabError):
    """A connection could not be made: refused, timed out, unreachable."""

    exit_code = ExitStatus.CONNECT_FAILED


class PrivilegeError(TcplabError):
    """The operation needs a privilege this process does not have."""

    exit_code = ExitStatus.PRIVILEGE


class AddressInUse(TcplabError):
    """``bind()`` failed with EADDRINUSE; the message names the holder if found."""

    exit_code = ExitStatus.ADDRESS_IN_USE


class VerifyFailed(TcplabError):
    """An echo came back different from what was sent."""

    exit_code = ExitStatus.VERIFY_FAILED


class ResourceLimit(TcplabError):
    """A kernel or process limit stands in the way (fd limit, port range)."""

    exit_code = ExitStatus.LIMIT


class NotSupported(TcplabError):
    """The platform lacks something tcplab needs (Linux, a kernel feature)."""

    exit_code = ExitStatus.NOT_SUPPORTED


class ExperimentFailed(TcplabError):
    """An experiment could not run to its end: a server, load generator or
    choreography it started failed or wrote something else than its result.
    Said with that process's last words; distinct from an experiment that ran
    and did not show its fact (ERROR)."""

    exit_code = ExitStatus.EXPERIMENT_FAILED


class DoctorStatus(enum.IntEnum):
    """``tcplab doctor``'s statuses: the monitoring-plugin convention (Nagios,
    Icinga), so a check runner reads them as it reads any plugin's."""

    HEALTHY = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3  # a usage or privilege error: the check could not be made


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
