"""A private network namespace for each experiment, and every child inside it.

``Sandbox`` starts a holder process (``tcplab.agents.nsholder``) that creates the
namespace: as root a new network namespace, as anyone else a user namespace
with a network namespace inside (unprivileged, where the kernel allows it).
Children are started inside with :meth:`Sandbox.popen`: after fork, before
exec, they setns(2) into the holder's user (if any) and network namespaces.
Everything of the experiment runs in children (server, load, state sampler),
so the unprivileged case needs nothing the parent cannot do.

On exit, normal or not (exception, Ctrl-C), every child we started is sent
SIGTERM, then SIGKILL, by its pid, and reaped; the holder's stdin is closed and
it exits; the namespace goes with its last process. Children and the holder
also carry PR_SET_PDEATHSIG, so a SIGKILLed parent leaves nothing either.
The host's own sysctls are never written: the holder writes them inside.

Ctrl-C (see tcplab/interrupts.py): the holder and every child run in a
process group of their own, so a terminal's SIGINT reaches only the
experiment's process, which closes the sandbox; starting a child (fork and
record its pid) and close() run with SIGINT and SIGTERM held, so neither is
cut in half, and __exit__ finishes a close() that an early signal stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from tcplab.agents.io import command
from tcplab.agents.nsholder import Answer
from tcplab.agents.sysctl import Sysctl
from tcplab.errors import NotSupported
from tcplab.interrupts import deferred, spawn
from tcplab.observe.nsutil import CLONE_NEWNET, CLONE_NEWUSER, die_with_parent, limit_fds, setns
from tcplab.records import RecordError, from_json_line

#: What an experiment needs to know about how a namespace could (not) be made.
HOWTO = (
    "run as root (sudo), or allow unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)"
)


class Sandbox:
    def __init__(self, sysctls: Mapping[str, str | int] | None = None,
                 user: bool | None = None) -> None:
        self.sysctls = {k: str(v) for k, v in (sysctls or {}).items()}
        self.user = os.geteuid() != 0 if user is None else user
        self.holder: subprocess.Popen[bytes] | None = None
        self.children: list[subprocess.Popen[Any]] = []
        self._ns_fds: list[tuple[int, int]] = []

    @property
    def kind(self) -> str:
        return "user+net namespace (unprivileged)" if self.user else "net namespace (root)"

    @property
    def netns_path(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except KeyboardInterrupt:
            # A signal that came just before close() held its signals: finish
            # the close (SIGINT is ignored from now on, see interrupts.install).
            self.close()
            raise

    def start(self) -> None:
        try:
            self._start()
        except BaseException:  # Ctrl-C included: __exit__ does not run when __enter__ fails
            self.close()
            raise

    def _start(self) -> None:
        args = ["--user"] if self.user else []
        for name, value in self.sysctls.items():
            args += ["--sysctl", f"{name}={value}"]
        with deferred():
            self.holder = spawn(
                command("nsholder", *args),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        try:
            answer = from_json_line(Answer, line)
        except RecordError:
            answer = Answer()  # no line: it died first (its stderr says why)
        if not answer.ready:
            err = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
            raise _explain(self.user, answer, err)
        pid = self.holder.pid
        with deferred():
            if self.user:
                self._ns_fds.append((os.open(f"/proc/{pid}/ns/user",
                                             os.O_RDONLY | os.O_CLOEXEC), CLONE_NEWUSER))
            self._ns_fds.append((os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC),
                                 CLONE_NEWNET))

    def _enter(self, fd_limit: int | None = None, fd_hard: bool = False) -> None:
        """Runs in the child between fork and exec."""
        die_with_parent(signal.SIGKILL)
        for fd, nstype in self._ns_fds:
            setns(fd, nstype)
        if fd_limit is not None:
            limit_fds(fd_limit, fd_hard)

    def popen(self, args: Sequence[str], fd_limit: int | None = None, fd_hard: bool = False,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace; it is killed and reaped on close().
        ``fd_limit`` sets its soft RLIMIT_NOFILE, as ``ulimit -Sn`` would; with
        ``fd_hard`` the hard limit too (``ulimit -n``), which only CAP_SYS_RESOURCE may
        raise (Go raises its soft limit up to it at start, not beyond)."""
        if self.holder is None:
            raise RuntimeError("sandbox not started")
        # Nothing of ours reads the terminal; a child in its own process
        # group that did would be stopped by SIGTTIN.
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        with deferred():  # the child is recorded (for close) as soon as it exists
            proc = spawn(args, preexec_fn=lambda: self._enter(fd_limit, fd_hard), **kwargs)
            self.children.append(proc)
        return proc

    def run(self, args: Sequence[str], timeout: float = 60, **kwargs: Any
            ) -> subprocess.CompletedProcess[Any]:
        proc = self.popen(args, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def sysctl(self, name: str) -> str | None:
        """A sysctl's value inside the namespace (``40000 40999``), None if it has none;
        read by a child inside (``tcplab.agents.sysctl``): the parent may not be able
        to enter the namespace."""
        r = self.run(command("sysctl", name), stdout=subprocess.PIPE)
        return from_json_line(Sysctl, r.stdout).value

    def tcplab(self, *args: str) -> list[str]:
        """The command line that runs ``tcplab ARGS`` with this Python."""
        from tcplab.agents.io import tcplab

        return tcplab(*args)

    def close(self, grace: float = 3.0) -> None:
        """Stop every child (SIGTERM, SIGKILL after ``grace`` s), then the holder.
        Idempotent, and never cut by SIGINT or SIGTERM (they are held until the end)."""
        with deferred():
            self._close(grace)

    def _close(self, grace: float) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        while self._ns_fds:
            os.close(self._ns_fds.pop()[0])
        if self.holder is not None:
            for stream in (self.holder.stdin, self.holder.stdout, self.holder.stderr):
                if stream is not None:
                    stream.close()
            try:
                self.holder.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()
            self.holder = None


def _explain(user: bool, answer: Answer, stderr: str) -> NotSupported:
    stage = answer.error or "start"
    lines = stderr.strip().splitlines()
    message = answer.message or (lines[-1] if lines else "no output")
    if stage.startswith("sysctl "):
        name = stage.split(" ", 1)[1]
        return NotSupported(
            f"the private network namespace refused {name}: {message}",
            hint="this kernel does not accept that value (or that sysctl) in a namespace",
        )
    tried = ("unshare(CLONE_NEWUSER | CLONE_NEWNET) as an ordinary user" if user
             else "unshare(CLONE_NEWNET) as root")
    return NotSupported(
        f"cannot make a private network namespace: {tried} failed at {stage}: {message}",
        hint=HOWTO,
    )
