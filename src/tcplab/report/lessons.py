"""The lab's lessons, in our words, each with the experiment that shows it and
the figure measured on this machine (Linux 6.18, 2 cores). ``tcplab explain
TOPIC`` prints one; the HTML report shows the one of each experiment;
docs/lessons.md is generated from the same text (``tcplab explain --markdown``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lesson:
    topic: str
    title: str
    text: str  # paragraphs separated by blank lines
    shown_by: str  # the command that demonstrates it
    correction: str = ""  # where the original lab's notes are wrong on Linux


LESSONS: dict[str, Lesson] = {}


def _add(lesson: Lesson) -> None:
    LESSONS[lesson.topic] = lesson


_add(Lesson(
    "time-wait", "TIME_WAIT: the active closer waits 60 s",
    """The side that closes first ends in TIME_WAIT, and Linux keeps it there for exactly
60 seconds (TCP_TIMEWAIT_LEN in include/net/tcp.h), whatever tcp_fin_timeout says.
It exists so that a late duplicate segment of this connection is not taken for part
of the next connection on the same 4-tuple, and so that a lost final ACK can be sent
again when the peer repeats its FIN.

A TIME_WAIT socket belongs to no process (ss and 'tcplab sockets' show no owner:
the kernel holds a small 'minisocket'), but it keeps its local port for that
destination. Measured here: 'tcplab sockets --state time-wait' counts down from
59.x s; 'tcplab experiment half-close' shows the client's TIME_WAIT at 59.0 s, then
57.0 s two seconds later.""",
    "tcplab experiment half-close; tcplab sockets --state time-wait",
    "The original notes say TIME_WAIT lasts '60-120 s' (2MSL). On Linux it is a "
    "fixed 60 s, not configurable, and tcp_fin_timeout does not shorten it: that "
    "sysctl only limits orphaned FIN_WAIT2 sockets.",
))

_add(Lesson(
    "port-range", "Ephemeral ports: per destination, and why the bomb fails (or not)",
    """connect() without bind() takes a local port from net.ipv4.ip_local_port_range
(32768-60999 by default: 28,232 ports). Ports are shared per destination: the same
port may serve connections to different (address, port) pairs, so the limit is
28,232 connections in TIME_WAIT or in use toward ONE destination. When they are all
taken, connect() fails with EADDRNOTAVAIL, "Cannot assign requested address".

Measured here ('tcplab experiment port-bomb', 1,000-port range, tcp_tw_reuse = 0):
connect() failed with [Errno 99] after 1,000 connections in 0.04 s, with exactly
1,000 sockets in TIME_WAIT; the same requests over 8 pooled connections: no failure,
TIME_WAIT 8. A second loopback address took 1,000 more connections with the same
ports. bind() before connect() makes a port exclusive and fails earlier, with
EADDRINUSE. SO_LINGER 0 avoids TIME_WAIT by sending RST: a hack, since it throws
away in-flight data and the peer sees ECONNRESET.

connect() also prefers ports of one parity and leaves the other to bind(): 20,000
connections with the default range left 14,116 even-port and 361 odd-port TIME_WAIT
sockets here.""",
    "tcplab experiment port-bomb; tcplab bomb; tcplab limits",
    "On a modern kernel the classic bomb against 127.0.0.1 does not fail: "
    "net.ipv4.tcp_tw_reuse defaults to 2, which lets loopback connections reuse a "
    "TIME_WAIT port once it is 1 s old (tcp_tw_reuse_delay). Measured: 40,000 "
    "connections into 28,232 ports, 0 failures. tcplab's experiment sets "
    "tcp_tw_reuse = 0 inside its own namespace to show the failure. The fix is still "
    "connection pooling.",
))

_add(Lesson(
    "close-wait", "CLOSE_WAIT and FIN_WAIT2: the half-closed trap",
    """When the peer closes, our socket moves to CLOSE_WAIT and stays there until OUR
application calls close(). A process with many CLOSE_WAIT sockets has a bug: some
path never closes (an error branch, a pool that loses connections). Each of those
sockets also keeps its file descriptor. The peer that closed first waits in
FIN_WAIT2 for our FIN; if it has closed its socket (orphaned), the kernel gives up
after tcp_fin_timeout (60 s by default); if it only shut down its write side, it
waits forever.

Measured here ('tcplab experiment fd-leak', tcp_fin_timeout = 5): 307 server sockets
in CLOSE_WAIT, 307 client sockets in FIN_WAIT2; 8 s later FIN_WAIT2 was 0 and
CLOSE_WAIT still 307. With SO_KEEPALIVE on the accepted sockets, the peer's RST
answers a probe and CLOSE_WAIT goes away, but the fds stay: the leak is in fds,
not TCP states. 'tcplab doctor' names the process: close_wait_leak.""",
    "tcplab experiment half-close; tcplab experiment fd-leak; tcplab doctor",
    "'ss -s' counts CLOSE_WAIT sockets as 'estab' on recent kernels (measured here: "
    "5 CLOSE_WAIT sockets, 'estab 5'), so a summary can hide the leak: count per "
    "state ('tcplab states').",
))

_add(Lesson(
    "fd-limit", "File descriptors: EMFILE, and who raises the limit",
    """Every socket is a file descriptor, and a process may hold at most its soft
RLIMIT_NOFILE ('ulimit -n'). Beyond it accept() fails with EMFILE, "Too many open
files". The kernel still completes handshakes into the listener's accept queue
(LISTEN Recv-Q grows to backlog + 1): those clients connect, then their reads hang;
once the queue is full, new SYNs are dropped and clients hang in SYN_SENT. There is
no "connection refused".

Measured here ('tcplab experiment fd-leak', limit 256, backlog 64): fds 256 of 256,
"accept: [Errno 24] Too many open files (256 of 256 fds in use); retrying in 5 ms",
accept queue 65, 242 clients echoed, 65 connected without an echo, 205 stuck
connecting. tcplab's server backs off 5 ms doubling to 1 s, as Go's net/http does,
and stays idle.""",
    "tcplab experiment fd-leak; tcplab fds PID; LEAK=true tcplab server --fd-limit 128",
    "Go, since 1.19, raises its own soft limit to the hard limit at start, so "
    "'ulimit -Sn 128' does not reproduce the leak with the Go original; a Python "
    "process keeps the limit it was given.",
))

_add(Lesson(
    "handshake", "The socket lifecycle and the 3-way handshake",
    """The server: socket(), bind(), listen(); the client: socket(), connect(). connect()
sends SYN (the client is SYN_SENT; its port is chosen at that moment, so the first
trace line shows sport=0); the server answers SYN-ACK from a request socket
(SYN_RECV); the client's ACK makes both ESTABLISHED, and only then does accept()
return a new fd. Closing: the first close() sends FIN (FIN_WAIT1), the peer's ACK
gives FIN_WAIT2 and the peer's state becomes CLOSE_WAIT; its close() sends FIN
(LAST_ACK), and the first closer answers and turns into a TIME_WAIT minisocket. An
RST close (SO_LINGER 0) skips all of that.

Measured here ('tcplab experiment handshake'): 15 packets (2 SYN, 2 SYN-ACK, 2 FIN,
1 RST), 18 state changes and 14 socket calls on one timeline; on loopback the whole
handshake takes about 0.05 ms (SYN_SENT lasted 0.02 to 0.08 ms in 'tcplab trace').""",
    "tcplab experiment handshake; sudo tcplab trace --port 8080; sudo tcplab capture",
    "The original notes watch 'tcpdump -i lo0': lo0 is macOS. On Linux the loopback "
    "interface is 'lo'.",
))

_add(Lesson(
    "netpoll", "Multiplexing: netpoll, epoll and the event loop",
    """Go's conn.Read() looks blocking, but underneath the runtime parks the goroutine
and registers the fd with epoll (netpoll); when data arrives, the goroutine is made
runnable again. A few OS threads (GOMAXPROCS) serve any number of connections.

Python spells the same machinery out: the selector (select.epoll) is netpoll; the
event loop is the scheduler; a coroutine awaiting a read is parked on a future
that the loop completes when epoll says the socket is readable. tcplab's 'epoll'
model is that loop written by hand; 'asyncio' and 'uvloop' are it in the stdlib and
in C.

Measured here ('tcplab experiment multiplex', 10,000 concurrent connections): epoll,
asyncio and uvloop each used 1 thread and 1 epoll instance watching 10,002-10,004
sockets, 0.3-1.8 KiB of RSS per connection, 6-9 us of server CPU per echo. Thread
per connection needed 9,959 threads and about 22 KiB per connection, and collapsed
to 242 echoes/s as 10,000 Python threads queued for the GIL.""",
    "tcplab experiment multiplex; tcplab multiplex --connections 10000",
))

#: Which lesson each experiment demonstrates, for the report.
FOR_EXPERIMENT = {
    "echo": "handshake", "port-bomb": "port-range", "fd-leak": "fd-limit",
    "half-close": "close-wait", "multiplex": "netpoll", "handshake": "handshake",
}


def markdown() -> str:
    out = ["# Lessons", "",
           "Generated by `tcplab explain --markdown`. Each claim names the experiment that",
           "shows it and the figure measured on this machine; corrections say where the",
           "original lab's notes differ from Linux.", ""]
    for lesson in LESSONS.values():
        out += [f"## {lesson.title}", "", lesson.text.strip(), "",
                f"Shown by: `{lesson.shown_by}`", ""]
        if lesson.correction:
            out += [f"**Correction.** {lesson.correction}", ""]
    return "\n".join(out)
