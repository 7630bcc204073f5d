"""Re-record the tracefs output that tests/test_trace.py parses.

    sudo python tests/data/record_trace.py

Needs root. It re-runs itself under ``unshare --mount --net``: tracefs is
mounted in that private mount namespace (the host's mounts do not change),
and the scenario runs on the private namespace's own loopback. It uses
nothing from tcplab: the recording must not depend on the code it tests.

A trace instance (``instances/record_trace-PID``, removed at the end) gets
``sock:inet_sock_set_state``, ``tcp:tcp_receive_reset`` and
``tcp:tcp_destroy_sock`` filtered on the port P (``sport == P || dport ==
P``), ``tcp:tcp_send_reset`` (its format has no port field), and the
syscalls socket, bind, listen, accept4, connect, shutdown and close of the
scenario's process (``common_pid == PID``), with ``trace_clock`` mono, as
``tcplab trace --syscalls`` sets it up. The scenario (:data:`SCENARIO`, one
process, a pause between steps):

1. a listener on 127.0.0.1:P; a second bind() to P fails (EADDRINUSE);
2. one connection: handshake, one echo, the client closes first, the server
   after (the active and the passive close);
3. IPv6 on [::1]:P: a non-blocking connect() (EINPROGRESS), then the client's
   shutdown(SHUT_WR) and, at once, close() (FIN_WAIT1 -> FIN_WAIT1);
4. a connection the client closes with SO_LINGER 0 (an RST each way: sent
   and received);
5. the listener closed, a connect() to P is refused (ECONNREFUSED).

Tracepoints are global: ``tcp:tcp_send_reset``, which cannot be filtered on
a port, also records the RSTs other programs on the machine send meanwhile
(the recorded file has some, from the host's loopback), as ``tcplab trace``
sees them before its own port check.

Saved:

=======================  ====================================================
trace_pipe.txt           every line trace_pipe gave, as it gave them (default
                         trace options: irq-info on, record-tgid off)
trace_pipe_tgid.txt      step 5 again with options/record-tgid on and
                         options/irq-info off (the other line layout)
trace_pipe.json          the port, the scenario's pid and what it saw
                         (errnos, its client ports), the kernel
=======================  ====================================================
"""

from __future__ import annotations

import json
import os
import platform
import random
import select
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent
TRACEFS = "/sys/kernel/tracing"
SYSCALLS = ("socket", "bind", "listen", "accept4", "connect", "shutdown", "close")
PORT_EVENTS = ("sock/inet_sock_set_state", "tcp/tcp_receive_reset", "tcp/tcp_destroy_sock")

SCENARIO = r"""
import json, os, select, socket, struct, sys, time
P, PAUSE, STEPS = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
seen = {"pid": os.getpid()}
print("ready", flush=True)
sys.stdin.readline()

def listener(host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, P))
    s.listen(8)
    return s

if STEPS == "all":
    lst = listener("127.0.0.1")
    other = socket.socket()
    try:
        other.bind(("127.0.0.1", P))
    except OSError as exc:
        seen["bind_errno"] = exc.errno
    other.close()
    time.sleep(PAUSE)

    c = socket.socket()
    c.connect(("127.0.0.1", P))
    s, _ = lst.accept()
    seen["graceful_client_port"] = c.getsockname()[1]
    time.sleep(PAUSE)
    c.sendall(b"hello")
    s.sendall(s.recv(5))
    c.recv(5)
    time.sleep(PAUSE)
    c.close()
    time.sleep(PAUSE)
    s.close()
    time.sleep(PAUSE)

    l6 = listener("::1")
    c6 = socket.socket(socket.AF_INET6)
    c6.setblocking(False)
    seen["connect6_errno"] = c6.connect_ex(("::1", P))
    select.select([], [c6], [], 5)
    c6.setblocking(True)
    s6, _ = l6.accept()
    seen["v6_client_port"] = c6.getsockname()[1]
    time.sleep(PAUSE)
    c6.shutdown(socket.SHUT_WR)
    c6.close()
    s6.recv(1)
    time.sleep(PAUSE)
    s6.close()
    l6.close()
    time.sleep(PAUSE)

    c = socket.socket()
    c.connect(("127.0.0.1", P))
    s, _ = lst.accept()
    seen["reset_client_port"] = c.getsockname()[1]
    time.sleep(PAUSE)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    time.sleep(PAUSE)
    s.close()
    lst.close()
    time.sleep(PAUSE)

c = socket.socket()
seen["refused_errno"] = c.connect_ex(("127.0.0.1", P))
c.close()
print(json.dumps(seen), flush=True)
"""


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read_pipe(fd: int, until: subprocess.Popen[str]) -> bytes:
    """Everything trace_pipe gives until the scenario has exited and 0.5 s are quiet."""
    data = b""
    quiet_since = None
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        chunk = b""
        if ready:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                pass
        data += chunk
        if until.poll() is None or chunk:
            quiet_since = None
            continue
        quiet_since = quiet_since or time.monotonic()
        if time.monotonic() - quiet_since > 0.5:
            return data


def run_scenario(inst: str, port: int, steps: str) -> tuple[bytes, dict[str, object]]:
    child = subprocess.Popen([sys.executable, "-c", SCENARIO, str(port), "0.1", steps],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"  # started: its start-up closes are not traced
        pids = f"common_pid == {child.pid}"
        for call in SYSCALLS:
            for kind in ("sys_enter_", "sys_exit_"):
                base = f"{inst}/events/syscalls/{kind}{call}"
                write(f"{base}/filter", pids)
                write(f"{base}/enable", "1")
        write(f"{inst}/tracing_on", "1")
        fd = os.open(f"{inst}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            raw = read_pipe(fd, child)
        finally:
            os.close(fd)
        write(f"{inst}/tracing_on", "0")
        seen = json.loads(child.stdout.read())
    finally:
        child.kill()
        child.wait()
    return raw, seen


def record() -> None:
    if not os.path.isdir(f"{TRACEFS}/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = random.randint(20000, 29999)  # below the ephemeral range: only the scenario's
    inst = f"{TRACEFS}/instances/record_trace-{os.getpid()}"
    os.mkdir(inst)
    try:
        write(f"{inst}/tracing_on", "0")
        write(f"{inst}/trace_clock", "mono")
        for ev in PORT_EVENTS:
            write(f"{inst}/events/{ev}/filter", f"sport == {port} || dport == {port}")
            write(f"{inst}/events/{ev}/enable", "1")
        write(f"{inst}/events/tcp/tcp_send_reset/enable", "1")
        raw, seen = run_scenario(inst, port, "all")
        write(f"{inst}/options/record-tgid", "1")
        write(f"{inst}/options/irq-info", "0")
        raw_tgid, seen_tgid = run_scenario(inst, port, "refused")
    finally:
        write(f"{inst}/tracing_on", "0")
        for _ in range(50):
            try:
                os.rmdir(inst)
                break
            except OSError:
                time.sleep(0.05)
    (DATA / "trace_pipe.txt").write_bytes(raw)
    (DATA / "trace_pipe_tgid.txt").write_bytes(raw_tgid)
    meta = {
        "port": port,
        "scenario": seen,
        "tgid_scenario": seen_tgid,
        "kernel": platform.release(),
        "trace_clock": "mono",
        "recorded_by": "tests/data/record_trace.py",
    }
    (DATA / "trace_pipe.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = len(raw.splitlines()), len(raw_tgid.splitlines())
    print(f"{lines[0]} + {lines[1]} lines, port {port}: {seen}")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("record_trace.py needs root (tracefs)")
    if sys.argv[1:] != ["--inside"]:
        os.execvp("unshare", ["unshare", "--mount", "--net", "--propagation", "private",
                              sys.executable, __file__, "--inside"])
    record()


if __name__ == "__main__":
    main()
