"""close() with unread data, and SO_LINGER 0: ``python -m tcplab.agents.reset``.

Run inside a sandbox. Three connections to 127.0.0.1:8080; on each the client
sends 5 bytes, and the server closes in its own way:

* ``read-first``: the server reads the 5 bytes, then close(): a FIN (the
  control case);
* ``unread``: close() with the 5 bytes still unread in its receive buffer:
  tcp_close (net/ipv4/tcp.c) sends a RST instead of a FIN, "as outlined in
  RFC 2525, section 2.17, ... because data was lost", and counts
  TcpExt TCPAbortOnClose;
* ``linger0``: the server read the bytes, but set SO_LINGER {on, 0 s}: close()
  drops the connection with a RST too (the same function, after the unread
  check; counted as TCPAbortOnData).

After each close the agent reads both sockets' states from sock_diag, the
namespace's counters (/proc/net/snmp's Tcp OutRsts, /proc/net/netstat's
TcpExt; a new network namespace has its own), and what the client's next
recv() returned: the bytes, or the errno and its text. One ``Close`` per case.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from tcplab.agents.ends import Ends, add_arguments
from tcplab.agents.io import emit
from tcplab.kernel import tcp_states
from tcplab.observe import procfs

HOST, PORT = "127.0.0.1", 8080
DATA = b"hello"
CASES = ("read-first", "unread", "linger0")


@dataclass(frozen=True, slots=True)
class Close:
    """One connection closed by the server, and what each side saw."""

    t: float  # seconds since the agent started, at the server's close()
    case: str  # read-first, unread or linger0
    unread_bytes: int  # the server socket's Recv-Q just before close() (sock_diag)
    server_after: str  # the server's socket after close(): a state, or "gone"
    client_after: str  # the client's socket once the close arrived: a state, or "gone"
    read_bytes: int | None  # the client's next recv(): its length (0: EOF), None: an error
    read_errno: int | None  # that recv()'s errno
    read_error: str | None  # its text, as the kernel's strerror gives it
    out_rsts: int  # RSTs the namespace sent during the close (Tcp OutRsts)
    abort_on_close: int  # TcpExt TCPAbortOnClose during the close
    abort_on_data: int  # TcpExt TCPAbortOnData during the close


def counters() -> dict[str, int]:
    snmp, ext = procfs.tcp_counters()
    return {"out_rsts": snmp["OutRsts"], "abort_on_close": ext["TCPAbortOnClose"],
            "abort_on_data": ext["TCPAbortOnData"]}


def states(client_port: int, ends: Ends | None = None) -> tuple[str, str, int]:
    """(client's state, server's state, server's Recv-Q); "gone" for a socket not there.
    Each side read in its end's namespace (once on loopback: one namespace)."""
    ends = ends or Ends()
    found: dict[str, tuple[str, int]] = {}
    for role in ("client", "server") if ends.paths["client"] else ("client",):
        with ends.table(role) as table:
            socks = table.sockets(PORT)
        for s in socks:
            if s.state == tcp_states.LISTEN or client_port not in (s.sport, s.dport):
                continue  # the listener, or an earlier case's connection
            side = "client" if s.sport == client_port else "server"
            found[side] = (tcp_states.name(s.state), s.rqueue)
    client, server = found.get("client", ("gone", 0)), found.get("server", ("gone", 0))
    return client[0], server[0], server[1]


def one(ls: socket.socket, case: str, t0: float, host: str = HOST, ends: Ends | None = None,
        settle: float = 0.05) -> Close:
    ends = ends or Ends()
    client = ends.socket("client")
    client.settimeout(5)
    client.connect((host, PORT))
    server, _ = ls.accept()
    cport = client.getsockname()[1]
    client.sendall(DATA)
    deadline = time.monotonic() + 2.0  # bounded: the 5 bytes arrive within microseconds
    while states(cport, ends)[2] < len(DATA) and time.monotonic() < deadline:
        time.sleep(0.01)
    if case != "unread":
        server.recv(len(DATA))
    if case == "linger0":
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    unread = states(cport, ends)[2]
    before = counters()
    t = round(time.monotonic() - t0, 3)
    server.close()
    time.sleep(settle)  # the FIN or RST crosses loopback in microseconds (--settle)
    after = counters()
    client_after, server_after, _ = states(cport, ends)
    client.settimeout(5)
    try:
        got: int | None = len(client.recv(100))
        code = None
    except OSError as e:
        got, code = None, e.errno if e.errno is not None else errno.EIO
    client.close()
    return Close(t, case, unread, server_after, client_after, got, code,
                 None if code is None else os.strerror(code),
                 **{k: after[k] - before[k] for k in after})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.reset",
                                description="Close three connections with 5 bytes sent to the "
                                "server: read first, unread, SO_LINGER 0; emit a Close each.")
    p.add_argument("--host", default=HOST, help="the server's address")
    p.add_argument("--settle", type=float, default=0.05,
                   help="seconds after close() before the look (a link's one-way delay more)")
    add_arguments(p)
    args = p.parse_args(argv)
    ends = Ends.from_args(args)
    ls = ends.socket("server")
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((args.host, PORT))
    ls.listen()
    t0 = time.monotonic()
    for case in CASES:
        emit(one(ls, case, t0, args.host, ends, args.settle))
    ls.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
