"""Re-record the kernel output that tests/test_sock_diag.py decodes.

    python tests/data/record.py

It re-runs itself in a private network namespace (``unshare -n`` as root,
``unshare -Urn`` otherwise), so the dumps hold the scenario's sockets and
nothing else, brings ``lo`` up, builds the lab's states on loopback
(:class:`Lab`), and saves at one moment (``ss`` before and after must agree):

=====================  ======================================================
lab_inet.bin           all-states NETLINK_SOCK_DIAG dump, AF_INET: every
lab_inet6.bin          datagram recv() returned, concatenated (AF_INET6)
lab_inet[6]_port.bin   the same dumps with the kernel's port filter (bytecode
                       "sport = P or dport = P") on the lab's port P
lab_tcp.txt            /proc/net/tcp and /proc/net/tcp6 of the same moment
lab_tcp6.txt
timewait_inet.bin      an AF_INET all-states dump with a few hundred TIME_WAIT
                       sockets more: it spans several datagrams
error_einval.bin       the kernel's reply to a request for family 99
                       (NLMSG_ERROR, -EINVAL)
done_enoent.bin        the reply to a request for IP protocol 200, which has
                       no diag handler: the dump ends in NLMSG_DONE carrying
                       -ENOENT (how netlink reports an error inside a dump)
limits.txt             /proc/self/limits
recorded.json          what ss -Htan counted per state (whole namespace,
                       port P, port Q, and -4 for the TIME_WAIT dump), the
                       ports, datagram sizes, getrlimit values, the kernel
=====================  ======================================================

:class:`Lab` and the ``ss`` helpers are also used by tests/test_observe.py,
on the host's loopback.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tcplab.kernel import sock_diag, tcp_states

DATA = Path(__file__).resolve().parent

#: ss's state names (ss -tan) -> netstat's (tcp_states.STATE_NAMES).
SS_NAMES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
#: States a connection passes through in a moment; a settled table has none on our ports.
TRANSIENT = ("SYN_RECV", "FIN_WAIT1", "LAST_ACK", "CLOSING")


# -- ss ------------------------------------------------------------------------------------


def ss_rows(port: int = 0, *args: str) -> list[tuple[str, str, int, str, int]]:
    """``ss -Htan [ARGS] '( sport = :P or dport = :P )'`` as (state, local, lport, peer, pport)."""
    cmd = ["ss", "-Htan", *args]
    if port:
        cmd.append(f"( sport = :{port} or dport = :{port} )")
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    rows = []
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        local, _, lport = f[3].rpartition(":")
        peer, _, pport = f[4].rpartition(":")
        rows.append((SS_NAMES[f[0]], local.strip("[]"), int(lport) if lport != "*" else 0,
                     peer.strip("[]"), int(pport) if pport != "*" else 0))
    return rows


def ss_counts(port: int = 0, *args: str) -> dict[str, int]:
    """What ss counts per state (netstat names, every state, zero included)."""
    counts = dict.fromkeys(tcp_states.STATE_NAMES, 0)
    for row in ss_rows(port, *args):
        counts[row[0]] += 1
    return counts


# -- the lab's states on loopback ----------------------------------------------------------


def _listener(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s


class Lab:
    """Every state the lab produces, on one port P, from real sockets.

    The listener on 127.0.0.1:P was made with ``listen(0)``: it accepts its
    connections one at a time. On P:

    * 2 accepted connections: 4 ESTABLISHED (client and server end);
    * 3 connections the client closed first, then the server: 3 TIME_WAIT
      (the client's ends, dport P);
    * 2 connections the client closed and the server never does: 2
      CLOSE_WAIT (the server's ends, sport P) and 2 FIN_WAIT2 (the clients'
      orphaned ends, held by the kernel);
    * 1 connection left in the accept queue: 2 ESTABLISHED. The queue of a
      ``listen(0)`` socket is then full, and the kernel drops new SYNs, so
    * 2 non-blocking connects stay in SYN_SENT;
    * with ``ipv6``: a listener on [::1]:P, one accepted connection (2
      ESTABLISHED) and one closed by both (1 TIME_WAIT).

    A second listener on 127.0.0.1:Q (``listen(0)``) holds one queued
    connection and one SYN_SENT: the sockets of another port.
    """

    def __init__(self, ipv6: bool = True) -> None:
        self.ipv6 = ipv6
        self.socks: list[socket.socket] = []
        self.port = 0
        self.syn_port = 0
        self.expected: dict[int, dict[str, int]] = {}

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()

    def _keep(self, *socks: socket.socket) -> None:
        self.socks.extend(socks)

    def _pair(self, lst: socket.socket) -> tuple[socket.socket, socket.socket]:
        c = socket.socket(lst.family, socket.SOCK_STREAM)
        self._keep(c)
        c.settimeout(10)
        c.connect(lst.getsockname()[:2])
        lst.settimeout(10)
        s, _ = lst.accept()
        self._keep(s)
        s.settimeout(10)
        return c, s

    def _time_wait(self, lst: socket.socket) -> None:
        c, s = self._pair(lst)
        c.close()  # the client's FIN first...
        if s.recv(1) != b"":
            raise RuntimeError("expected EOF")
        s.close()  # ...then the server's: TIME_WAIT lands on the client

    def _syn_sent(self, lst: socket.socket) -> None:
        c = socket.socket(lst.family, socket.SOCK_STREAM)
        self._keep(c)
        c.setblocking(False)
        code = c.connect_ex(lst.getsockname()[:2])
        if code != errno.EINPROGRESS:
            raise RuntimeError(f"non-blocking connect: {os.strerror(code)}")

    def _fill_queue(self, lst: socket.socket) -> None:
        c = socket.socket(lst.family, socket.SOCK_STREAM)
        self._keep(c)
        c.settimeout(10)
        c.connect(lst.getsockname()[:2])  # completed by the kernel, never accepted

    def build(self) -> Lab:
        lst = _listener("127.0.0.1", 0, 0)
        self._keep(lst)
        p = self.port = lst.getsockname()[1]
        lst6 = None
        if self.ipv6:
            lst6 = _listener("::1", p, 0)
            self._keep(lst6)
        for _ in range(2):
            self._pair(lst)
        for _ in range(3):
            self._time_wait(lst)
        for _ in range(2):
            c, _s = self._pair(lst)
            c.close()  # the server end stays open: CLOSE_WAIT, and FIN_WAIT2 here
        if lst6 is not None:
            self._pair(lst6)
            self._time_wait(lst6)
        self._fill_queue(lst)
        for _ in range(2):
            self._syn_sent(lst)

        other = _listener("127.0.0.1", 0, 0)
        self._keep(other)
        q = self.syn_port = other.getsockname()[1]
        self._fill_queue(other)
        self._syn_sent(other)

        v6 = lst6 is not None
        self.expected = {
            p: {**dict.fromkeys(tcp_states.STATE_NAMES, 0), "LISTEN": 1 + v6,
                "ESTABLISHED": 4 + 2 + 2 * v6, "TIME_WAIT": 3 + v6, "CLOSE_WAIT": 2,
                "FIN_WAIT2": 2, "SYN_SENT": 2},
            q: {**dict.fromkeys(tcp_states.STATE_NAMES, 0), "LISTEN": 1, "ESTABLISHED": 2,
                "SYN_SENT": 1},
        }
        return self

    def settled(self, exact: bool) -> bool:
        """ss shows every expected socket on both ports and nothing in passing.

        ``exact``: no other socket either (in a namespace of our own); on a
        shared host an earlier connection may still linger on a reused port.
        """
        for port, want in self.expected.items():
            got = ss_counts(port)
            if any(got[s] for s in TRANSIENT):
                return False
            if exact and got != want:
                return False
            if any(got[s] < n for s, n in want.items()):
                return False
        return True

    def wait_settled(self, exact: bool, limit: float = 15.0) -> None:
        """Poll until :meth:`settled` (the limit is a hang guard)."""
        deadline = time.monotonic() + limit
        while not self.settled(exact):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the lab's sockets did not settle: want {self.expected}, ss shows "
                    f"{ {p: ss_counts(p) for p in self.expected} }")
            time.sleep(0.05)


# -- netlink, raw ---------------------------------------------------------------------------


def _ends_dump(datagram: bytes) -> bool:
    off = 0
    while off + sock_diag.HDR_LEN <= len(datagram):
        length, mtype = struct.unpack_from("=IH", datagram, off)
        if mtype in (sock_diag.NLMSG_DONE, sock_diag.NLMSG_ERROR) or length < 16:
            return True
        off += (length + 3) & ~3
    return False


def raw_dump(request: bytes) -> list[bytes]:
    """Send one request on NETLINK_SOCK_DIAG; every datagram of the reply, as recv() gave it."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, sock_diag.NETLINK_SOCK_DIAG) as s:
        s.settimeout(10)
        s.send(request)
        buf = bytearray(64 * 1024)
        out = []
        while True:
            n = s.recv_into(buf, 0, socket.MSG_TRUNC)
            if n > len(buf):
                raise RuntimeError(f"datagram of {n} bytes truncated")
            out.append(bytes(buf[:n]))
            if _ends_dump(out[-1]):
                return out


def dump(family: int, port: int = 0) -> list[bytes]:
    return raw_dump(sock_diag.build_request(family, tcp_states.ALL_STATES_MASK, port))


# -- recording -------------------------------------------------------------------------------


def link_up(name: str = "lo") -> None:
    """``ip link set lo up``: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", name.encode(), flags | 0x1))


def _moment(lab: Lab) -> dict[str, object]:
    """ss, the dumps and /proc/net/tcp{,6}, taken while ss stays the same."""
    p = lab.port
    for _ in range(10):
        before = (ss_counts(), ss_counts(p), ss_counts(lab.syn_port))
        snap: dict[str, object] = {
            "lab_inet.bin": dump(socket.AF_INET),
            "lab_inet6.bin": dump(socket.AF_INET6),
            "lab_inet_port.bin": dump(socket.AF_INET, port=p),
            "lab_inet6_port.bin": dump(socket.AF_INET6, port=p),
            "lab_tcp.txt": Path("/proc/net/tcp").read_text(),
            "lab_tcp6.txt": Path("/proc/net/tcp6").read_text(),
        }
        if before == (ss_counts(), ss_counts(p), ss_counts(lab.syn_port)):
            snap["ss"], snap["ss_port"], snap["ss_syn_port"] = before
            return snap
    raise RuntimeError("the socket table kept changing")


def record() -> None:
    link_up("lo")
    meta: dict[str, object] = {
        "kernel": platform.release(),
        "recorded_in": "unshare -n" if os.geteuid() == 0 else "unshare -Urn",
        "uid": os.geteuid(),
        "byteorder": sys.byteorder,  # /proc/net/tcp prints addresses in host order
    }
    datagrams: dict[str, list[int]] = {}

    def save(name: str, value: object) -> None:
        if isinstance(value, list):
            datagrams[name] = [len(d) for d in value]
            (DATA / name).write_bytes(b"".join(value))
        else:
            (DATA / name).write_text(str(value))

    with Lab(ipv6=True).build() as lab:
        lab.wait_settled(exact=True)
        snap = _moment(lab)
        for key in ("ss", "ss_port", "ss_syn_port"):
            meta[key] = snap.pop(key)
        for name, value in snap.items():
            save(name, value)
        meta["port"], meta["syn_port"] = lab.port, lab.syn_port
        meta["expected"] = {str(k): v for k, v in lab.expected.items()}

        # A few hundred TIME_WAIT sockets more, then one AF_INET dump: several datagrams.
        tw = _listener("127.0.0.1", 0, 512)
        meta["timewait_port"] = tw.getsockname()[1]
        with tw:
            for _ in range(450):
                lab._time_wait(tw)
        for _ in range(100):
            if not any(ss_counts(0, "-4")[s] for s in TRANSIENT):
                break
            time.sleep(0.05)
        for _ in range(10):
            before = ss_counts(0, "-4")
            tw_dump = dump(socket.AF_INET)
            if before == ss_counts(0, "-4"):
                break
        else:
            raise RuntimeError("the socket table kept changing")
        if len(tw_dump) < 3:
            raise RuntimeError(f"wanted several datagrams, got {len(tw_dump)}")
        save("timewait_inet.bin", tw_dump)
        meta["ss4_timewait"] = before

    # Two errors, as the kernel words them.
    req = bytearray(sock_diag.build_request(socket.AF_INET, tcp_states.ALL_STATES_MASK))
    bad_family, bad_proto = bytearray(req), bytearray(req)
    bad_family[sock_diag.HDR_LEN] = 99
    bad_proto[sock_diag.HDR_LEN + 1] = 200
    save("error_einval.bin", raw_dump(bytes(bad_family)))
    save("done_enoent.bin", raw_dump(bytes(bad_proto)))

    save("limits.txt", Path("/proc/self/limits").read_text())
    meta["rlimits"] = {
        name: [resource.getrlimit(getattr(resource, res))[0],
               resource.getrlimit(getattr(resource, res))[1]]
        for name, res in (("Max open files", "RLIMIT_NOFILE"),
                          ("Max file size", "RLIMIT_FSIZE"),
                          ("Max stack size", "RLIMIT_STACK"))
    }
    meta["datagrams"] = datagrams
    (DATA / "recorded.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"recorded into {DATA}: ports {meta['port']}, {meta['syn_port']}; "
          f"timewait datagrams {datagrams['timewait_inet.bin']}")


def main() -> int:
    if sys.argv[1:2] != ["--inside"]:
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-Urn"]
        os.execvp(unshare[0], [*unshare, sys.executable, str(Path(__file__).resolve()),
                               "--inside"])
    record()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
