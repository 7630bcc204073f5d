"""A peer gone silent: keep-alive and TCP_USER_TIMEOUT (``python -m tcplab.agents.keepalive``).

Run inside a sandbox (or ``unshare -Urn``): it needs CAP_NET_ADMIN in its own
network namespace and the ``ip`` and ``nsenter`` tools. A peer that crashes or
loses its link sends nothing, not even a RST; loopback cannot show that (the
kernel answers for every local socket), so the agent builds a link that can go
silent (``PeerLink``): a veth pair (198.18.13.1 here, 198.18.13.2 there) to a
second network namespace held by a forked child, which listens on port 9000
and holds what it accepts. Setting the peer's end down makes the pair drop
every frame without a word: veth_close (drivers/net/veth.c) turns the local
end's carrier off, linkwatch_do_dev then gives it the noop qdisc
(dev_deactivate), whose noop_enqueue (net/sched/sch_generic.c) drops each frame,
counts it in the device's TX dropped and returns NET_XMIT_CN, which TCP takes
for sent (net_xmit_eval); checked here: a UDP socket with IP_RECVERR got no
ENOBUFS, "ip -s link" counted the drops. The local end's neighbour entry is
permanent, so no ARP failure turns into "No route to host".

Per case: the link up, one connection, its options, the peer's end down, then
the client's recv() blocks until the kernel gives up. One ``Silent`` per case,
with when (seconds after connect() returned), the errno and its text, and the
namespace's counters over the case (TcpExt TCPKeepAlive: probes sent; Tcp
RetransSegs; TcpExt TCPAbortOnTimeout).

* ``keepalive``: SO_KEEPALIVE with TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s,
  TCP_KEEPCNT 3 (tcp_keepalive_timer in net/ipv4/tcp_timer.c: the first probe
  after KEEPIDLE without a received segment, then one per KEEPINTVL; after
  KEEPCNT unanswered probes it sends a RST and fails the socket, tcp_write_err:
  ETIMEDOUT);
* ``keepalive+user-timeout``: the same with TCP_KEEPCNT 9 and TCP_USER_TIMEOUT
  2.5 s: the timer then gives up once 2.5 s passed without a received segment
  and at least one probe went unanswered, whatever KEEPCNT says;
* ``retransmit+user-timeout``: no keep-alive; 100 bytes sent after the link
  went down, TCP_USER_TIMEOUT 2 s: the retransmission timer gives up 2 s after
  the first unacknowledged send (tcp_write_timeout, retransmits_timed_out),
  not after the 924.6 s that tcp_retries2 (15) allows.
"""

from __future__ import annotations

import argparse
import errno as errnos
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType

from tcplab.agents.io import emit, require_private_netns
from tcplab.observe import nsutil, procfs

LOCAL_DEV, PEER_DEV = "tl0", "tl1"
LOCAL, PEER = "198.18.13.1", "198.18.13.2"
LOCAL_MAC, PEER_MAC = "02:00:c6:12:0d:01", "02:00:c6:12:0d:02"
PORT = 9000
GUARD_S = 30.0  # a case that has not failed by then is reported as it stands


def ip(*args: str, pid: int | None = None) -> None:
    """``ip ARGS`` here, or in process ``pid``'s network namespace (nsenter)."""
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid else []
    r = subprocess.run([*prefix, "ip", *args], capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise OSError(errnos.EIO, f"ip {' '.join(args)}: "
                      f"{r.stderr.decode(errors='replace').strip()}")


class PeerLink:
    """A veth pair to a peer namespace (a forked child) whose end can go down.

    The child listens on PEER:PORT and holds every connection it accepts until
    its control pipe closes; it dies with us (PR_SET_PDEATHSIG). Its namespace,
    and with it the veth pair, go away when it exits.
    """

    def __init__(self) -> None:
        self.pid = 0
        self._control = -1

    def __enter__(self) -> PeerLink:
        ip("link", "set", "lo", "up")  # already up in a sandbox; not under unshare -Urn
        ip("link", "add", LOCAL_DEV, "address", LOCAL_MAC, "type", "veth",
           "peer", "name", PEER_DEV, "address", PEER_MAC)
        ready_r, ready_w = os.pipe()
        control_r, control_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the peer: single-threaded, so unshare() is allowed
            os.close(ready_r)
            os.close(control_w)
            try:
                _peer(ready_w, control_r)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(control_r)
        self.pid, self._control = pid, control_w
        try:
            if os.read(ready_r, 1) != b"u":
                raise OSError(errnos.EIO, "the peer could not make its network namespace")
            ip("link", "set", PEER_DEV, "netns", str(pid))
            ip("addr", "add", f"{LOCAL}/24", "dev", LOCAL_DEV)
            ip("link", "set", LOCAL_DEV, "up")
            ip("link", "set", "lo", "up", pid=pid)
            ip("addr", "add", f"{PEER}/24", "dev", PEER_DEV, pid=pid)
            self.up()
            os.write(control_w, b"c")  # configured: the peer may bind its address
            if os.read(ready_r, 1) != b"l":
                raise OSError(errnos.EIO, "the peer did not listen")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        finally:
            os.close(ready_r)
        return self

    def up(self) -> None:
        ip("link", "set", PEER_DEV, "up", pid=self.pid)
        # Permanent: a neighbour that stops answering would otherwise fail after a few
        # seconds of ARP, and its ICMP "host unreachable" would end the connection with
        # EHOSTUNREACH, not the silence this agent wants (arp_error_report).
        ip("neigh", "replace", PEER, "lladdr", PEER_MAC, "dev", LOCAL_DEV, "nud", "permanent")
        ip("neigh", "replace", LOCAL, "lladdr", LOCAL_MAC, "dev", PEER_DEV, "nud",
           "permanent", pid=self.pid)

    def down(self) -> None:
        ip("link", "set", PEER_DEV, "down", pid=self.pid)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._control >= 0:
            os.close(self._control)  # the peer's cue to exit
            self._control = -1
        if self.pid:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


def _peer(ready: int, control: int) -> None:
    nsutil.die_with_parent(signal.SIGKILL)
    try:
        nsutil.unshare(nsutil.CLONE_NEWNET)
    except OSError:
        os.write(ready, b"x")
        return
    os.write(ready, b"u")
    if os.read(control, 1) != b"c":
        return
    ls = socket.socket()
    ls.bind((PEER, PORT))
    ls.listen()
    os.write(ready, b"l")
    held = []
    while True:
        readable = select.select([ls.fileno(), control], [], [])[0]
        if control in readable:
            return  # our parent closed the pipe (or died)
        held.append(ls.accept()[0])


@dataclass(frozen=True, slots=True)
class Silent:
    """One connection whose peer went silent, and how the kernel gave up on it."""

    case: str  # keepalive, keepalive+user-timeout or retransmit+user-timeout
    keepidle_s: int | None  # TCP_KEEPIDLE (None: keep-alive off)
    keepintvl_s: int | None  # TCP_KEEPINTVL
    keepcnt: int | None  # TCP_KEEPCNT
    user_timeout_ms: int | None  # TCP_USER_TIMEOUT (None: not set)
    sent_bytes: int  # sent after the peer went silent
    down_at_s: float  # when the peer's link went down, seconds after connect() returned
    error_at_s: float | None  # when the client's recv() failed (None: not within the guard)
    errno: int | None  # that recv()'s errno
    error: str | None  # its text
    keepalive_probes: int  # TcpExt TCPKeepAlive over the case
    retransmits: int  # Tcp RetransSegs over the case
    aborted_on_timeout: int  # TcpExt TCPAbortOnTimeout over the case
    t: float = 0.0  # when the case ended, seconds since the agent started


Case = tuple[int | None, int | None, int | None, int | None, int]
CASES: dict[str, Case] = {
    # case: (KEEPIDLE s, KEEPINTVL s, KEEPCNT, USER_TIMEOUT ms, bytes sent)
    "keepalive": (1, 1, 3, None, 0),
    "keepalive+user-timeout": (1, 1, 9, 2500, 0),
    "retransmit+user-timeout": (None, None, None, 2000, 100),
}
#: --quick: the same three verdicts about 3 s sooner (measured: 8 s against 11 s); a
#: user timeout of 1.5 s still ends the second case at the keep-alive timer's second
#: run (2 s), long before KEEPCNT 9 would (10 s).
QUICK: dict[str, Case] = {
    "keepalive": (1, 1, 2, None, 0),
    "keepalive+user-timeout": (1, 1, 9, 1500, 0),
    "retransmit+user-timeout": (None, None, None, 1000, 100),
}


def counters() -> dict[str, int]:
    snmp, ext = procfs.tcp_counters()
    return {"keepalive_probes": ext["TCPKeepAlive"], "retransmits": snmp["RetransSegs"],
            "aborted_on_timeout": ext["TCPAbortOnTimeout"]}


def one(link: PeerLink, case: str, quick: bool = False, started: float = 0.0) -> Silent:
    idle, intvl, cnt, user_ms, send = (QUICK if quick else CASES)[case]
    link.up()
    before = counters()
    c = socket.create_connection((PEER, PORT), timeout=5)
    t0 = time.monotonic()
    if idle is not None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl or 1)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt or 1)
    if user_ms is not None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_ms)
    time.sleep(0.3)
    link.down()
    down_at = time.monotonic() - t0
    if send:
        c.sendall(b"x" * send)
    c.settimeout(GUARD_S)
    at: float | None = None
    code: int | None = None
    try:
        c.recv(100)  # the peer sends nothing: this returns only with the kernel's verdict
        at = time.monotonic() - t0
    except OSError as e:  # ETIMEDOUT is a TimeoutError too; the guard's has no errno
        if e.errno is not None:
            at, code = time.monotonic() - t0, e.errno
    c.close()
    after = counters()
    return Silent(case, idle, intvl, cnt, user_ms, send, round(down_at, 3),
                  None if at is None else round(at, 3), code,
                  None if code is None else os.strerror(code),
                  **{k: after[k] - before[k] for k in after},
                  t=round(time.monotonic() - (started or t0), 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.keepalive",
                                description="Connections whose peer goes silent (a veth "
                                "link to a peer namespace, set down): keep-alive, and "
                                "TCP_USER_TIMEOUT with keep-alive and with retransmissions; "
                                "emit a Silent per case.")
    p.add_argument("cases", nargs="*", metavar="CASE",
                   help=f"the cases to run ({', '.join(CASES)}); all by default")
    p.add_argument("--quick", action="store_true",
                   help="shorter timers (KEEPCNT 2, user timeouts 1.5 s and 1 s)")
    args = p.parse_args(argv)
    for case in args.cases:
        if case not in CASES:
            p.error(f"unknown case {case!r} (choose from {', '.join(CASES)})")
    require_private_netns(p, "keepalive")  # before the veth pair
    started = time.monotonic()
    with PeerLink() as link:
        for case in args.cases or CASES:
            emit(one(link, case, args.quick, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
