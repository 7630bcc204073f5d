"""`tcplab net up | exec | show | down`: start a net's holder, enter a net, stop it.

Nothing here prints: cli/net.py words what these return, and errors are
TcplabErrors with a hint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcplab.errors import ExperimentFailed, NotSupported, PrivilegeError, UsageError
from tcplab.net import plan as P
from tcplab.net import registry
from tcplab.observe.nsutil import CLONE_NEWNET, CLONE_NEWUSER, setns

HOWTO_USERNS = (
    "run as root (sudo), or allow unprivileged user namespaces "
    "(sysctl user.max_user_namespaces > 0; kernel.unprivileged_userns_clone=1 where it exists)"
)


#: name -> the holder of a net made ``attached`` by this process (our child).
_attached: dict[str, subprocess.Popen[bytes]] = {}


def _agent(*args: str) -> list[str]:
    from tcplab.agents.io import command

    return command("netholder", *args)


def probe(user: bool | None = None, timeout: float = 30) -> P.Mechanisms:
    """What this kernel offers for shaping, tried in a throwaway namespace."""
    from tcplab.agents.io import command
    from tcplab.records import RecordError, from_json_line

    user = os.geteuid() != 0 if user is None else user
    args = command("netholder", "--probe", *(["--user"] if user else []))
    r = subprocess.run(args, capture_output=True, timeout=timeout, process_group=0)
    try:
        return from_json_line(P.Mechanisms, r.stdout.splitlines()[0] if r.stdout else b"")
    except (RecordError, IndexError, ValueError):
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise NotSupported(f"cannot try shaping in a namespace: {err[-1] if err else 'no output'}",
                           hint=HOWTO_USERNS) from None


def probe_words() -> tuple[bool, str, str | None]:
    """For `tcplab check`: (all knobs work, which mechanism does each, the fix)."""
    have = probe()
    delay = ("netem" if have.netem else "tcplab's delay line (TUN; no netem here)"
             if have.tun else "none (no netem, no TUN)")
    parts = [f"delay/jitter: {delay}",
             f"loss: {'nftables numgen' if have.nftables else 'none (no nft or nf_tables)'}",
             f"rate: {'tbf' if have.tbf else 'none (no tbf)'}"]
    fix = None
    if not have.nftables:
        fix = "install nftables (Debian: apt-get install nftables) for --loss"
    elif not (have.netem or have.tun):
        fix = "a kernel with CONFIG_NET_SCH_NETEM or CONFIG_TUN for --delay"
    return have.tbf and have.nftables and (have.netem or have.tun), "; ".join(parts), fix


def check_request(name: str, shaping: P.Shaping) -> None:
    for problem in (P.check_name(name), P.check_shaping(shaping)):
        if problem:
            raise UsageError(problem)


def up(name: str, shaping: P.Shaping, router: bool = False, timeout: float = 60,
       attached: bool = False) -> registry.Net:
    """Start the holder of net ``name`` and wait until it is ready and detached: it
    outlives us until `net down`. ``attached``: it stays our child and the kernel
    kills it when we die (PR_SET_PDEATHSIG), SIGKILL included: an experiment's net."""
    from tcplab.agents.netholder import Detached, Up
    from tcplab.interrupts import deferred
    from tcplab.records import RecordError, from_json_line

    check_request(name, shaping)
    directory = registry.state_dir()
    try:
        registry.ensure_dir(directory)
    except PermissionError as exc:
        raise PrivilegeError(f"cannot use {directory}: {exc}",
                             hint=f"remove {directory} or set XDG_RUNTIME_DIR") from None
    if registry.find(name, directory) is not None:
        raise UsageError(f"a net named {name!r} exists already",
                         hint=f"tcplab net down {name}, or choose another name")
    user = os.geteuid() != 0
    args = [name, "--dir", str(directory)]
    if user:
        args.append("--user")
    if router:
        args.append("--router")
    for flag, value in (("--delay", shaping.delay_ms), ("--jitter", shaping.jitter_ms),
                        ("--loss", shaping.loss_pct), ("--rate", shaping.rate_mbit),
                        ("--mtu", shaping.mtu)):
        if value:
            args += [flag, str(value)]
    with deferred():
        # A session of its own (setsid): it outlives this command and its terminal;
        # attached, a process group of its own: a terminal's Ctrl-C reaches only us,
        # and we take it down (temporary's finally).
        holder = subprocess.Popen(_agent(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=not attached,
                                  process_group=0 if attached else None)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        line = holder.stdout.readline()
        try:
            answer = from_json_line(Up, line)
        except RecordError:
            answer = Up()
        if not answer.ready or answer.net is None:
            _, err = holder.communicate(timeout=timeout)
            raise _explain(user, answer, err.decode(errors="replace"))
        holder.stdin.write(b"attach\n" if attached else b"detach\n")
        holder.stdin.flush()
        from_json_line(Detached, holder.stdout.readline())
    except BaseException:
        with contextlib.suppress(OSError):
            holder.kill()
        holder.wait()
        raise
    if attached:
        _attached[name] = holder  # reaped by down()
        return answer.net
    for stream in (holder.stdin, holder.stdout, holder.stderr):
        if stream is not None:
            stream.close()
    # The holder is not our child for long: it runs on in its own session, and
    # `net down` stops it by pid. Popen's object is dropped without a wait; the
    # zombie this leaves until we exit is reaped by init after.
    holder.returncode = 0
    return answer.net


def _explain(user: bool, answer: object, stderr: str) -> Exception:
    stage = getattr(answer, "error", None) or "start"
    code = getattr(answer, "errno", None)
    lines = stderr.strip().splitlines()
    message = getattr(answer, "message", None) or (lines[-1] if lines else "no output")
    if stage == "namespaces" and code in (errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EINVAL):
        tried = ("unshare(CLONE_NEWUSER | CLONE_NEWNET) as an ordinary user" if user
                 else "unshare(CLONE_NEWNET) as root")
        return PrivilegeError(f"cannot make the net's namespaces: {tried}: {message}",
                              hint=HOWTO_USERNS)
    if stage == "nft":
        return NotSupported(f"cannot add the loss rule: {message}",
                            hint="loss needs nf_tables with numgen and the nft command "
                            "(Debian: apt-get install nftables)")
    if stage == "TUN device":
        return NotSupported(f"cannot make the delay line's TUN device: {message}",
                            hint="--delay without netem needs /dev/net/tun (CONFIG_TUN); "
                            "or run without --delay/--jitter")
    if code in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"making the net failed at {stage}: {message}",
                              hint="run as root (sudo tcplab net up ...)")
    if code in (errno.ENOENT, errno.EOPNOTSUPP):
        return NotSupported(f"making the net failed at {stage}: {message}",
                            hint="this kernel lacks that feature; `tcplab check` says what it has")
    return ExperimentFailed(f"making the net failed at {stage}: {message}")


def get(name: str) -> registry.Net:
    net = registry.find(name)
    if net is None:
        live, _ = registry.nets()
        names = ", ".join(n.name for n in live) or "none"
        raise UsageError(f"no net named {name!r} (nets: {names})",
                         hint=f"tcplab net up {name} makes it; tcplab net show lists them")
    return net


def enter(net: registry.Net, role: str) -> None:
    """Move this (single-threaded) process into ``role``'s namespaces: the user
    namespace first when the net has one (setns(2) into a user namespace is refused
    to a multithreaded process), then the network namespace."""
    ep = net.endpoint(role)
    paths = ([(f"/proc/{ep.pid}/ns/user", CLONE_NEWUSER)] if net.user else [])
    paths.append((f"/proc/{ep.pid}/ns/net", CLONE_NEWNET))
    fds = []
    try:
        for path, kind in paths:
            try:
                fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), kind))
            except PermissionError:
                raise PrivilegeError(
                    f"cannot open {path}: net {net.name!r} belongs to uid {net.uid}",
                    hint="run as the user who made it (root for a net made with sudo)") from None
            except FileNotFoundError:
                raise UsageError(f"net {net.name!r} is going away (its {role} is gone)") from None
        for fd, kind in fds:
            try:
                setns(fd, kind)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EINVAL):
                    raise PrivilegeError(
                        f"entering net {net.name!r}'s {role} namespace: {exc.strerror}",
                        hint="net exec needs CAP_SYS_ADMIN over the net's namespaces: "
                        "run as the user who made it (root for a net made with sudo)") from None
                raise
    finally:
        for fd, _ in fds:
            os.close(fd)


def execute(name: str, role: str, argv: list[str]) -> None:
    """Become ``argv`` inside ``role``'s namespace of net ``name`` (exec: Ctrl-C,
    SIGKILL and the exit status are the command's own, and nothing of ours is left
    when it ends)."""
    import shutil

    net = get(name)
    if not argv:
        raise UsageError("no command to run", hint=f"tcplab net exec {name} {role} -- CMD ...")
    program = shutil.which(argv[0]) if "/" not in argv[0] else argv[0]
    if program is None or not os.access(program, os.X_OK):
        raise UsageError(f"command not found: {argv[0]}")
    env = dict(os.environ)
    env.update(net.environment(registry.state_path(net.name)))
    enter(net, role)
    # CPython ignores SIGPIPE and SIGXFSZ at start, and an ignored signal stays
    # ignored across execve(2): put them back, as subprocess does by default
    # (Lib/subprocess.py, restore_signals; Python/pylifecycle.c, _Py_RestoreSignals),
    # or a command writing into a closed pipe gets EPIPE instead of its SIGPIPE.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execve(program, argv, env)


@dataclass
class Down:
    net: registry.Net
    stopped: list[tuple[int, str]] = field(default_factory=list)  # (pid, command)
    left: list[int] = field(default_factory=list)  # pids still in its namespaces


def down(name: str, grace: float = 3.0) -> Down:
    """Stop every process in the net's namespaces, then its holder; wait until no
    process is left in them (so the namespaces, and everything in them, are gone)."""
    net = get(name)
    ends = [net.client, net.server] + ([net.router] if net.router else [])
    ours = {net.pid} | {e.pid for e in ends}
    # Hold each namespace open while we look into it, and only then check that the
    # net is still the one the state file names: a namespace held by an fd keeps its
    # inode number, so the processes listed below are the net's, not those of a new
    # namespace given a freed number (proc_alloc_inum) after its holder died.
    held: list[int] = []
    try:
        for e in ends:
            with contextlib.suppress(OSError):
                held.append(os.open(f"/proc/{e.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        if not registry.alive(net) or len(held) < len(ends):
            with contextlib.suppress(OSError):
                registry.state_path(name).unlink()
            return Down(net)  # gone by itself meanwhile: its pins swept what ran inside
        namespaces = {f"{st.st_dev}:{st.st_ino}" for st in map(os.fstat, held)}
        if namespaces != {e.netns for e in ends}:
            raise ExperimentFailed(f"net {name!r}'s processes are not in its namespaces",
                                   hint="its state file is not its own: remove it by hand")
        return _down(name, net, ends, ours, namespaces, grace)
    finally:
        for fd in held:
            os.close(fd)


def _down(name: str, net: registry.Net, ends: list[registry.Endpoint], ours: set[int],
          namespaces: set[str], grace: float) -> Down:
    from tcplab.observe.procfs import comm

    result = Down(net)
    # Who is in the namespaces now, with start times: once the namespaces are gone
    # their inode numbers go to the next new ones (fs/proc/generic.c,
    # proc_alloc_inum: the lowest free number of an IDA), so what is left is
    # counted among these processes only.
    inside = {pid: registry.start_time(pid) for pid in registry.pids_in(namespaces)}
    users = [pid for pid in inside if pid not in ours]
    for pid in users:
        with contextlib.suppress(Exception):
            result.stopped.append((pid, comm(pid)))
        _signal(pid, signal.SIGTERM)
    _wait_gone(users, grace, kill=True)
    _signal(net.pid, signal.SIGTERM)
    _wait_gone([net.pid], grace, kill=True)
    holder = _attached.pop(name, None)
    if holder is not None:  # our child: reap it, and close our ends of its pipes
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.communicate(timeout=grace)
    deadline = time.monotonic() + grace
    while True:
        result.left = [pid for pid in registry.pids_in(namespaces)
                       if pid in inside and registry.start_time(pid) == inside[pid]]
        if not result.left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        path = registry.state_path(name)
        if registry.read(path) is not None and not registry.alive(net):
            path.unlink()
    return result


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], grace: float, kill: bool) -> None:
    """Until none of ``pids`` exists (a zombie counts as gone); SIGKILL after ``grace``."""
    deadline = time.monotonic() + grace
    while True:
        live = [pid for pid in pids if _exists(pid)]
        if not live:
            return
        if time.monotonic() > deadline:
            if not kill:
                return
            for pid in live:
                _signal(pid, signal.SIGKILL)
            kill = False
            deadline = time.monotonic() + grace
        time.sleep(0.02)


def _exists(pid: int) -> bool:
    return registry.start_time(pid) is not None  # a zombie has left its namespaces


def popen(net: registry.Net, role: str, args: list[str], fd_limit: int | None = None,
          fd_hard: bool = False, **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``args`` inside ``role``'s namespace of ``net`` (what an experiment's
    ``--link veth`` needs, as Sandbox.popen on loopback): in a process group of its
    own, with the net's environment, killed by the kernel if we die
    (PR_SET_PDEATHSIG), with ``fd_limit`` as Sandbox.popen has it. The caller
    stops and reaps it (``down`` kills whatever is left in the net)."""
    from tcplab.interrupts import deferred, spawn
    from tcplab.observe.nsutil import die_with_parent, limit_fds

    env = dict(kwargs.pop("env", None) or os.environ)
    env.update(net.environment(registry.state_path(net.name)))
    kwargs.setdefault("stdin", subprocess.DEVNULL)

    def inside() -> None:
        die_with_parent(signal.SIGKILL)
        enter(net, role)
        if fd_limit is not None:
            limit_fds(fd_limit, fd_hard)

    # SIGINT and SIGTERM held while it forks: ``inside`` runs Python in the child
    # before exec, where a Ctrl-C to the process group would raise (interrupts.spawn).
    with deferred():
        return spawn(args, preexec_fn=inside, env=env, **kwargs)


def set_sysctls(net: registry.Net, role: str, values: Mapping[str, str],
                timeout: float = 30) -> dict[str, str | None]:
    """Write sysctls in ``role``'s namespace of ``net`` and read them back, by the
    sysctl agent inside it (``--set`` writes only in the namespace ``--netns``
    names, never its parent's)."""
    from tcplab.agents.io import command
    from tcplab.agents.sysctl import Sysctl
    from tcplab.records import RecordError, from_json_line

    ep = net.endpoint(role)
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    proc = popen(net, role, command("sysctl", *sets, "--netns", ep.netns, *values),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ExperimentFailed(f"setting sysctls in net {net.name!r}'s {role} "
                               f"did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ExperimentFailed(f"setting {', '.join(values)} in net {net.name!r}'s {role} "
                               f"failed: {lines[-1] if lines else proc.returncode}")
    try:
        read = [from_json_line(Sysctl, line) for line in out.splitlines()]
    except RecordError as e:
        raise ExperimentFailed(f"the sysctl agent wrote something else: {e}") from None
    return {r.name: r.value for r in read}


@contextlib.contextmanager
def temporary(shaping: P.Shaping, router: bool = False, prefix: str = "tmp"
              ) -> Iterator[registry.Net]:
    """A net for the length of a ``with``: made on entry, taken down on every exit
    (Ctrl-C included: the down runs with SIGINT and SIGTERM held)."""
    from tcplab.interrupts import deferred

    name = f"{prefix}-{os.getpid()}"[:24]
    net = up(name, shaping, router=router, attached=True)
    try:
        yield net
    finally:
        with deferred():
            down(name)


def show(directory: Path | None = None) -> tuple[list[registry.Net], list[str]]:
    return registry.nets(directory)
