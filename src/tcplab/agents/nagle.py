"""Write-write-read against a whole-request server: ``python -m tcplab.agents.nagle``.

Two roles, one per end of the link (experiments/nagle.py starts them):

- ``server --port P``: a listener; for each connection it reads requests of
  exactly HEADER + BODY bytes and answers each with REPLY bytes only once the
  whole request is in (as an HTTP server answers once the headers and the
  body have come). It sets nothing: its ACKs are the kernel's defaults. Its
  first line is an ``Accepting`` record; after each connection it emits a
  ``Served`` record: the requests served, this namespace's TcpExt
  ``DelayedACKs`` counter's rise over the connection (/proc/net/netstat,
  LINUX_MIB_DELAYEDACKS: counted in tcp_delack_timer_handler,
  net/ipv4/tcp_timer.c, each time the delayed-ACK timer sent an ACK) and the
  socket's ``tcpi_ato`` (TCP_INFO) at the end.
- ``client --host H --port P --requests N``: one connection per way of
  writing (``WAYS``), each making N requests: a small header write, a small
  body write, then a blocking read of the reply; one ``Exchange`` record per
  way, with the time of every request, in order.

Why the default way stalls (net/ipv4/tcp_output.c, tcp_nagle_check and
tcp_minshall_check): the header leaves at once (nothing is in flight), but the
body is a second sub-MSS segment while the first small one is unacknowledged,
so Nagle's algorithm holds it until the header's ACK comes. The server has
nothing to send yet (it waits for the body), so its ACK is a delayed one
(__tcp_ack_snd_check in net/ipv4/tcp_input.c) and leaves when the delayed-ACK
timer fires, at least TCP_ATO_MIN (HZ/25: 40 ms) later. experiments/nagle.py
says which rules decide it, and when they do not (the first requests of a
connection, in quick-ACK mode).
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass

from tcplab.agents.io import emit
from tcplab.kernel.tcp_info import SIZE, TcpInfo, parse_tcp_info

#: Request and reply sizes: small (well under any MSS), as an RPC's header and body.
HEADER = 16
BODY = 64
REPLY = 32

#: The ways the client writes a request, in the order it tries them.
#: nagle: two send()s, Nagle's algorithm on (the default);
#: nodelay: two send()s with TCP_NODELAY set (each leaves at once);
#: one-write: header and body in one sendmsg() (a gather write, as writev),
#:   Nagle on: one segment, so there is no second small one to hold back.
WAYS = ("nagle", "nodelay", "one-write")

#: How long any one blocking call may wait (a lost peer must not hang the run).
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Accepting:
    """The server's first line: it listens (the client may connect now)."""

    port: int
    #: net.ipv4.tcp_pingpong_thresh in the server's namespace (None: unreadable): the
    #: replies sent within ``ato`` of a receive after which its ACKs are delayed.
    pingpong_thresh: int | None = None


@dataclass(frozen=True, slots=True)
class Served:
    """One connection as the server saw it, when the client closed it."""

    requests: int  # whole requests answered
    delayed_acks: int  # rise of TcpExt DelayedACKs in the server's namespace meanwhile
    ato_us: int | None  # tcpi_ato at the end (TCP_INFO), None where it could not be read


@dataclass(frozen=True, slots=True)
class Exchange:
    """One connection of the client: N requests written one way."""

    way: str  # one of WAYS
    requests_us: tuple[int, ...]  # each request's time, write of the header to the whole reply
    rtt_us: int | None  # the client's smoothed RTT at the end (tcpi_rtt)


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The socket's TCP_INFO (kernel/tcp_info.py), None where it cannot be read."""
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, SIZE))
    except OSError:
        return None


def delayed_acks() -> int:
    """This namespace's TcpExt DelayedACKs (0 where /proc/net/netstat cannot be read)."""
    from tcplab.observe import procfs

    try:
        return procfs.tcp_counters()[1].get("DelayedACKs", 0)
    except (OSError, KeyError):
        return 0


def pingpong_thresh() -> int | None:
    """This namespace's net.ipv4.tcp_pingpong_thresh (None on a kernel without it)."""
    from tcplab.observe import procfs

    value = procfs.sysctl("net.ipv4.tcp_pingpong_thresh")
    return int(value) if value and value.isdigit() else None


def read_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes, or fewer only at EOF."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def serve(port: int, connections: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen()
    ls.settimeout(60)
    emit(Accepting(ls.getsockname()[1], pingpong_thresh()))
    reply = b"r" * REPLY
    for _ in range(connections):
        conn, _ = ls.accept()
        with conn:
            conn.settimeout(TIMEOUT_S)
            before = delayed_acks()
            served = 0
            while True:
                # Read up to the whole request: the header comes first and alone,
                # and the server waits for the body before it answers.
                if len(read_exactly(conn, HEADER + BODY)) < HEADER + BODY:
                    break
                conn.sendall(reply)
                served += 1
            info = tcp_info(conn)
            emit(Served(served, delayed_acks() - before, None if info is None else info.ato_us))
    ls.close()


def exchange(host: str, port: int, way: str, requests: int) -> Exchange:
    header, body = b"h" * HEADER, b"b" * BODY
    times: list[int] = []
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        if way == "nodelay":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            t0 = time.perf_counter_ns()
            if way == "one-write":
                sent = sock.sendmsg([header, body])
                if sent < HEADER + BODY:  # never for 80 bytes; finish it if it were
                    sock.sendall((header + body)[sent:])
            else:
                sock.sendall(header)
                sock.sendall(body)
            if len(read_exactly(sock, REPLY)) < REPLY:
                raise ConnectionError("the server closed the connection mid-request")
            times.append((time.perf_counter_ns() - t0) // 1000)
        info = tcp_info(sock)
    return Exchange(way, tuple(times), None if info is None else info.rtt_us)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcplab.agents.nagle",
                                description="Write-write-read requests against a server "
                                "that answers whole requests; one record per connection.")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--connections", type=int, default=len(WAYS),
                   help="connections to serve before it exits")
    c = sub.add_parser("client")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8080)
    c.add_argument("--requests", type=int, default=20)
    c.add_argument("--way", action="append", choices=WAYS,
                   help="only this way (repeatable; default: every one, in order)")
    a = p.parse_args(argv)
    if a.role == "server":
        serve(a.port, a.connections)
    else:
        for way in a.way or WAYS:
            emit(exchange(a.host, a.port, way, a.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
