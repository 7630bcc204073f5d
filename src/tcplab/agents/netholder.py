"""The process that is a net: ``python -m tcplab.agents.netholder NAME --dir DIR
[--user] [--router] [--delay MS] [--jitter MS] [--loss PCT] [--rate MBIT] [--mtu N]``,
or ``--probe`` to say what this kernel has for shaping.

Started by ``tcplab net up`` (tcplab/net/control.py) as a fresh, single-threaded
interpreter in a session of its own. It:

1. makes the namespaces: its own becomes the router's (with ``--user`` inside a
   new user namespace, root inside and our uid outside), then the client's and
   the server's, each held by a "pin", a forked child that sits in it (so each
   has a /proc/PID/ns/net that `net exec` and ``--netns PID`` can enter);
2. builds the links and the shaping (tcplab/net/build.py), chosen by
   tcplab/net/plan.py from what the kernel has (netem is tried, not assumed);
3. writes DIR/NAME.json (a ``registry.Net``) and emits ``Up``;
4. waits for one line on stdin: ``detach`` (the parent saw ``Up``) makes it
   independent of its parent (no PR_SET_PDEATHSIG, stdio on /dev/null) and it
   emits ``Detached``; ``attach`` (an experiment's ``--link veth``) keeps
   PR_SET_PDEATHSIG, so the net dies with the experiment even by SIGKILL; end of
   file instead (the parent died first) tears it down;
5. runs the delay line if there is one, until SIGTERM, SIGINT or SIGHUP; then
   removes DIR/NAME.json and exits. Its pins die with it (PR_SET_PDEATHSIG), and
   the namespaces go with their last process, and with them every veth, qdisc,
   nftables table and route of the net.

Before ``detach`` it carries PR_SET_PDEATHSIG, so a `net up` killed half-way
leaves nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tcplab.agents.io import emit
from tcplab.net import plan as P
from tcplab.net import registry
from tcplab.observe.nsutil import CLONE_NEWNET, die_with_parent, setns, unshare


@dataclass(frozen=True, slots=True)
class Up:
    """The holder's first line: the net it made, or the stage that failed."""

    ready: bool = False
    net: registry.Net | None = None
    error: str | None = None
    errno: int | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Detached:
    pid: int
    attached: bool = False  # "attach": it still dies with its parent


def pin(fd: int, role: str, keep: int, keep_w: int) -> int:
    """Fork a child that sits in namespace ``fd`` until the holder is gone: until
    ``keep`` (a pipe the holder writes nothing to) reads end of file, or the kernel
    sends it SIGTERM because the holder died (PR_SET_PDEATHSIG, even by SIGKILL).
    Either way it then kills every process left in its namespace (a server started
    with `net exec`), so no namespace outlives the net.

    The holder's death brings both at once. The SIGTERM handler only wakes the
    wait (set_wakeup_fd): one that raised could fire inside the ``finally`` and
    skip the sweep, which left a `net exec` command running in an orphaned
    namespace once in about twenty runs of test_net's SIGKILL test."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        os.close(keep_w)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        signal.set_wakeup_fd(wake_w)
        die_with_parent(signal.SIGTERM)
        if os.getppid() != 1:  # else the holder is gone already: sweep and leave
            with open("/proc/self/comm", "w") as f:
                f.write(f"tcplab-{role}")
            setns(fd, CLONE_NEWNET)
            _wait_for_end(keep, wake_r)
    except BaseException:
        code = 1
    finally:
        _sweep()
    os._exit(code)


def _wait_for_end(keep: int, wake: int) -> None:
    """Until ``keep`` reads end of file or a signal wrote to ``wake``."""
    import select

    while True:
        try:
            ready, _, _ = select.select([keep, wake], [], [])
        except InterruptedError:
            continue
        if wake in ready or not os.read(keep, 1):
            return


def _sweep(rounds: int = 50) -> None:
    """SIGKILL every other process in this namespace (those we may signal), again
    until a look finds none: a process that forked or entered (`net exec` between
    its setns and our listing) during a round is caught by the next. Bounded:
    ``rounds`` looks, 20 ms apart."""
    try:
        here = registry.ns_id("/proc/self/ns/net")
    except OSError:
        return
    me = os.getpid()
    for _ in range(rounds):
        others = [pid for pid in registry.pids_in({here}) if pid != me]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _stop_flag() -> tuple[list[bool], int]:
    """SIGTERM, SIGINT and SIGHUP set the flag and wake the loop (set_wakeup_fd)."""
    flag = [False]
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def handler(signum: int, frame: object) -> None:
        flag[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.set_wakeup_fd(w)
    return flag, r


def probe(user: bool) -> P.Mechanisms:
    from tcplab.net import build as B
    from tcplab.net.delayline import open_tun

    if user:
        B.enter_user_namespace()
    else:
        unshare(CLONE_NEWNET)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    b = B.Builder(B.Namespaces(home, home, home))
    try:
        nft = False
        if B.nft_command():
            try:
                B.nft_apply(P.nft_loss_ruleset("tcplab_probe", 1.0))
                nft = True
            except B.Failed:
                pass
        tun = False
        try:
            os.close(open_tun("probe0"))
            tun = True
        except OSError:
            pass
        return P.Mechanisms(netem=b.has_netem(), tbf=b.has_tbf(), nftables=nft, tun=tun)
    finally:
        b.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.netholder",
                                description="Make and hold a net (client, server, router "
                                "namespaces); emit Up once it is ready, hold it until SIGTERM.")
    p.add_argument("name", nargs="?")
    p.add_argument("--dir", type=Path, help="where NAME.json is written")
    p.add_argument("--user", action="store_true", help="inside a new user namespace")
    p.add_argument("--router", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--mtu", type=int, default=None)
    p.add_argument("--probe", action="store_true",
                   help="emit the Mechanisms this kernel has for shaping, and exit")
    args = p.parse_args(argv)
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    if args.probe:
        emit(probe(args.user))
        return 0
    if not args.name or args.dir is None:
        p.error("NAME and --dir are needed")
    shaping = P.Shaping(args.delay, args.jitter, args.loss, args.rate, args.mtu)
    return hold(args.name, args.dir, shaping, args.user, args.router)


def hold(name: str, directory: Path, shaping: P.Shaping, user: bool, router: bool) -> int:
    from tcplab.net import build as B

    path = registry.state_path(name, directory)
    uid = os.getuid()  # ours outside; 0 once inside the user namespace
    keep_r, keep_w = os.pipe2(os.O_CLOEXEC)
    pins: list[int] = []
    stage = "namespaces"
    try:
        if user:
            B.enter_user_namespace()
        else:
            unshare(CLONE_NEWNET)
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        ns = B.Namespaces(home, B.new_netns(home), B.new_netns(home))
        stage = "pins"
        # Forked before pyroute2 is imported and before any thread could exist.
        pins = [pin(ns.client, "client", keep_r, keep_w),
                pin(ns.server, "server", keep_r, keep_w)]
        os.close(keep_r)
        stage = "netlink"
        b = B.Builder(ns)
        have = P.Mechanisms(netem=b.has_netem(), tbf=True, nftables=True, tun=True)
        plan = P.plan(name, shaping, have, router)
        tun_fd = None
        if plan.delay_line:
            stage = "TUN device"
            from tcplab.net.delayline import open_tun

            tun_fd = open_tun(P.DELAY_IF)
        B.build(b, plan, P.DELAY_IF if tun_fd is not None else None)
        if plan.nft_loss:
            B.nft_apply(P.nft_loss_ruleset(B.NFT_TABLE, shaping.loss_pct))
        b.close()
        start = registry.start_time(os.getpid())
        assert start is not None
        net = registry.Net(
            name=name, pid=os.getpid(), start=start, user=user, uid=uid,
            client=_endpoint(plan.client, pins[0], ns.client),
            server=_endpoint(plan.server, pins[1], ns.server),
            router=(registry.Endpoint("router", os.getpid(), _fd_ns(home))
                    if plan.router else None),
            shaping=shaping, mtu=plan.mtu, mechanisms=plan.mechanisms, queue=plan.queue)
        for fd in (ns.client, ns.server):
            os.close(fd)  # the pins hold them now
        stage = "state file"
        registry.write(net, path)
    except B.Failed as exc:
        emit(Up(error=exc.stage, errno=exc.errno, message=exc.message))
        return 1
    except OSError as exc:
        emit(Up(error=stage, errno=exc.errno, message=exc.strerror or str(exc)))
        return 1
    flag, wake = _stop_flag()
    try:
        emit(Up(ready=True, net=net))
        word = sys.stdin.readline().strip()
        if word not in ("detach", "attach") or flag[0]:
            return 0
        if word == "detach":
            die_with_parent(0)  # prctl(PR_SET_PDEATHSIG, 0): we outlive `net up` now
            emit(Detached(os.getpid()))
            _quiet_stdio()
        else:  # an experiment's net: it ends with the experiment (PR_SET_PDEATHSIG),
            # by SIGTERM now that the flag's handler is in place, so that the finally
            # below removes the state file even when the experiment was SIGKILLed.
            die_with_parent(signal.SIGTERM)
            if os.getppid() == 1:
                return 0  # the experiment died before the switch
            emit(Detached(os.getpid(), attached=True))
            _quiet_stdio()  # nobody reads our pipes now: a full one must not block us
        if tun_fd is not None:
            from tcplab.net.delayline import DelayLine

            # The delay line is a process on a shared CPU: ahead of the experiment's own
            # processes where we may (root outside a user namespace; CAP_SYS_NICE),
            # so that a loaded machine delays its packets less (bench/results.md).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, -10)

            DelayLine(tun_fd, shaping.delay_ms / 1000, shaping.jitter_ms / 1000).run(
                wake, lambda: flag[0])
        else:
            while not flag[0]:
                _wait(wake)
        return 0
    finally:
        own = registry.read(path)
        if own is not None and own.pid == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(keep_w)  # the pins read end of file and exit
        for pid in pins:
            _reap(pid)


def _wait(fd: int) -> None:
    """Until a signal wrote to the wakeup fd."""
    import select

    select.select([fd], [], [], None)
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 512)


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
            continue
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _quiet_stdio() -> None:
    """After detach nobody reads our stdout, and stdin is the parent's pipe."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _fd_ns(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def _endpoint(side: P.Side, pid: int, fd: int) -> registry.Endpoint:
    return registry.Endpoint(side.role, pid, _fd_ns(fd), side.ipv4, side.ipv6, side.interface)


if __name__ == "__main__":
    raise SystemExit(main())
