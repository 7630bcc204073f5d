"""``tcplab live`` (issue 16): the page, its stream, a recording and its replay.

The live tests run in the test's own network namespace on a port the kernel
chose for a listener made here, so root and an ordinary user run them alike
(the tracepoint as root, sock_diag snapshots otherwise).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import accepting_listener as listener
from tests.helpers import headless_chromium, needs_netns, run_tcplab, wait_for, ws_events
from tests.helpers import tcplab_live as live


def ss_time_wait(port: int) -> int:
    r = subprocess.run(["ss", "-Htan", "state", "time-wait",
                        f"( sport = :{port} or dport = :{port} )"],
                       capture_output=True, text=True, check=True)
    return len(r.stdout.splitlines())


@contextmanager
def page_on_a_port(tmp_path: Path, interval: float) -> Iterator[tuple[int, Any]]:
    """A listener of ours, ``tcplab live`` on its port, and Chromium on the page once
    the page has its first event: (port, driver)."""
    from selenium.webdriver.common.by import By

    with listener() as ls:
        port = ls.getsockname()[1]
        with live("--port", str(port), "--interval", str(interval)) as (_, url), \
                headless_chromium(tmp_path) as driver:
            driver.get(url)
            wait_for(lambda: driver.find_element(By.ID, "source").text != "connecting...",
                     "the page's first event")
            yield port, driver


def bomb(port: int, n: int) -> None:
    """n short connections, closed; returns once every one is closed on both sides
    (only TIME_WAIT and the listener left on the port), so the count holds still."""
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.close()

    def settled() -> bool:
        r = subprocess.run(["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
                           capture_output=True, text=True, check=True)
        return all(line.split()[0] in ("TIME-WAIT", "LISTEN")
                   for line in r.stdout.splitlines())

    wait_for(settled, "every connection of the bomb closed")


def stream(url: str, want: int, seconds: float = 3.0) -> list[dict[str, Any]]:
    """The events the page's WebSocket gets in ``seconds`` (or until a count of
    ``want`` TIME_WAIT comes)."""
    return ws_events(url, lambda got: any(
        e["kind"] == "counts" and e["t"] > 0 and e["states"]["TIME_WAIT"] == want
        for e in got), seconds)


@pytest.mark.pure
def test_page_names_every_state_as_text_and_embeds_a_recording() -> None:
    from tcplab.kernel import tcp_states
    from tcplab.report.live_page import page

    events = [{"kind": "meta", "t": 0.0, "port": 9, "words": "recorded </script>"},
              {"kind": "counts", "t": 0.5, "states": {"TIME_WAIT": 3}, "total": 3}]
    text = page("t", events)
    for name in tcp_states.STATE_NAMES:
        assert f'id="state-{name}"' in text and f">{name}</text>" in text
    assert "</script>\"" not in text and "<\\/script>" in text  # cannot end the script early
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


@pytest.mark.loopback
def test_a_recording_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "counts", "t": 0}\nnot json\n')
    r = run_tcplab("live", "--replay", str(bad), "--listen", "127.0.0.1:0", "--duration", "1")
    assert r.returncode == 2, r.stderr
    assert "bad.jsonl, line 2: not JSON" in r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


@pytest.mark.loopback
def test_the_stream_counts_what_ss_counts_and_a_recording_replays_them(tmp_path: Path) -> None:
    """The page's WebSocket carries counts equal to ss's for the port; --record
    keeps them, and --replay serves a page that embeds the same counts."""
    import urllib.request

    rec = tmp_path / "live.jsonl"
    with listener() as ls:
        port = ls.getsockname()[1]
        with live("--port", str(port), "--interval", "0.2", "--record", str(rec)) as (_, url):
            bomb(port, 40)
            want = ss_time_wait(port)
            assert 0 < want <= 40
            got: list[dict[str, Any]] = []

            def seen() -> bool:
                got[:] = stream(url, want)
                return any(e["kind"] == "counts" and e["t"] > 0
                           and e["states"]["TIME_WAIT"] == want for e in got)

            wait_for(seen, f"a count of {want} TIME_WAIT in the stream")
            assert got[0]["kind"] == "meta" and got[0]["port"] == port
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    counts = [e for e in lines if e["kind"] == "counts"]
    assert counts and max(e["states"]["TIME_WAIT"] for e in counts) == want
    with live("--replay", str(rec)) as (_, url), \
            urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    embedded = json.loads(re.search(r"const RECORDED = (.*);\n", text).group(1)  # type: ignore[union-attr]
                          .replace("<\\/", "</"))
    assert [e for e in embedded if e["kind"] == "counts"] == counts


@pytest.mark.loopback
def test_the_page_in_chromium_shows_ss_s_count_after_a_bomb(tmp_path: Path) -> None:
    """Issue 16's Done-when: after a port bomb the page's TIME_WAIT count equals ss's;
    as root the edges carry their rate. How soon (within one refresh; a transition
    within 1 s) is measured by bench/live.py, not asserted here."""
    with page_on_a_port(tmp_path, 0.5) as (port, driver):
        from selenium.webdriver.common.by import By

        bomb(port, 120)
        # Each connection leaves one TIME_WAIT, on one side or the other; on
        # loopback tcp_tw_reuse = 2 lets a later connect() take over some.
        want = ss_time_wait(port)
        assert 0 < want <= 120

        def count() -> int:
            return int(driver.find_element(By.ID, "count-TIME_WAIT").text.replace(",", ""))

        wait_for(lambda: count() == want, f"the page's TIME_WAIT count to reach {want}")
        assert count() == ss_time_wait(port)
        # the text a screen reader reads, and the diagram's, agree
        assert driver.find_element(By.ID, "svgcount-TIME_WAIT").text == str(want)
        if os.geteuid() == 0:  # the tracepoint: every edge taken, with its rate
            rate = driver.find_element(By.ID, "rate-SYN_SENT-ESTABLISHED").text
            assert rate.endswith("/s") and float(rate[:-2].replace(",", "")) > 0, rate
        driver.save_screenshot(str(tmp_path / "live.png"))


@pytest.mark.loopback
def test_twenty_pages_do_not_slow_the_sampler(tmp_path: Path) -> None:
    """Issue 16's Done-when: 20 pages open at once (tabs of one real Chromium), and
    the sampler still counts every interval: the recording's counts come at the
    interval's pace, whatever the pages do (the hub never waits for a page)."""
    rec = tmp_path / "live.jsonl"
    with listener() as ls:
        port = ls.getsockname()[1]
        with live("--port", str(port), "--interval", "0.5", "--record", str(rec)) as (_, url), \
                headless_chromium(tmp_path) as driver:
            from selenium.webdriver.common.by import By

            for i in range(20):
                if i:
                    driver.switch_to.new_window("tab")
                driver.get(url)
            start = time.monotonic()
            for _ in range(8):  # traffic for the pages to draw, for about 8 s
                bomb(port, 20)
                time.sleep(0.8)
            for handle in driver.window_handles:  # every page is alive and counting
                driver.switch_to.window(handle)
                assert driver.find_element(By.ID, "count-LISTEN").text == "1"
            elapsed = time.monotonic() - start
    counts = [e["t"] for e in map(json.loads, rec.read_text().splitlines())
              if e["kind"] == "counts"]
    gaps = [b - a for a, b in itertools.pairwise(counts)]
    # About one count per interval over the run; each gap is one interval unless the
    # sampler fell behind, which it says by restarting its clock (observe.live).
    assert len(counts) >= elapsed / 0.5 * 0.8, (len(counts), elapsed)
    late = [g for g in gaps if g > 0.75]
    assert len(late) <= len(gaps) // 10, (late, gaps)


@pytest.mark.loopback
def test_a_connection_s_transition_shows_on_the_page(tmp_path: Path) -> None:
    """One connection made while the page is open shows in its Transitions list,
    by its own port, with the edge it took (how soon: bench/live.py measures it)."""
    with page_on_a_port(tmp_path, 0.25) as (port, driver):
        from selenium.webdriver.common.by import By

        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sport = c.getsockname()[1]

            def shown() -> bool:
                text = driver.find_element(By.ID, "transitions").text
                # As root (the tracepoint) SYN_SENT -> ESTABLISHED; from snapshots
                # the socket's first state seen, e.g. (new) -> CLOSE_WAIT once our
                # listener has closed its end.
                return any(f"127.0.0.1:{sport} > 127.0.0.1:{port}" in line
                           and " -> " in line for line in text.splitlines())

            wait_for(shown, f"the connection from port {sport} in the Transitions list")
        finally:
            c.close()


#: Run under ``unshare -n`` (a private network namespace: its own port range): ten
#: local ports, all held by connections, so the 11th and 12th connect() fail with
#: EADDRNOTAVAIL; then every file descriptor used up, so accept() fails with EMFILE.
#: Prints its pid and the errors as Python gives them.
EXHAUST = """
import os, resource, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40009")
print(os.getpid(), flush=True)
sys.stdin.readline()  # once the page follows this namespace
ls = socket.socket(); ls.bind(("127.0.0.1", 8080)); ls.listen(64)
held = [socket.create_connection(("127.0.0.1", 8080)) for _ in range(10)]
for _ in range(2):
    try:
        socket.create_connection(("127.0.0.1", 8080))
    except OSError as exc:
        print(exc, flush=True)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
fds = []
try:
    while True:
        fds.append(os.dup(0))
except OSError:
    pass
try:
    ls.accept()
except OSError as exc:
    print(exc, flush=True)
sys.stdin.read()  # until the test has read the page
"""


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="failed syscalls come from tracepoints, "
                    "which need root; as an ordinary user the page says they are not seen")
def test_the_first_eaddrnotavail_and_emfile_of_a_process_are_printed_verbatim() -> None:
    """As root: a process's first connect() EADDRNOTAVAIL and accept() EMFILE appear
    on the page (--netns: the process's namespace) as Python's own errors say them,
    with its pid; its second EADDRNOTAVAIL is counted, not printed again."""
    import shutil

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    child = subprocess.Popen(["unshare", "-n", sys.executable, "-c", EXHAUST],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None

    def texts(events: list[dict[str, Any]]) -> list[str]:
        return [e["text"] for e in events if e["kind"] == "event"]

    try:
        pid = int(child.stdout.readline())
        ours = f"(pid {pid}, python"

        def both(events: list[dict[str, Any]]) -> bool:
            got = [t for t in texts(events) if ours in t]
            return any(t.startswith("accept4() failed") for t in got) and any(
                t.startswith("connect() failed") for t in got)

        with live("--netns", str(pid), "--port", "8080", "--interval", "0.2") as (_, url):
            ws_events(url, lambda got: any(e["kind"] == "counts" for e in got), 10.0)
            child.stdin.write("go\n")
            child.stdin.flush()
            said = [child.stdout.readline().strip() for _ in range(3)]
            assert said == ["[Errno 99] Cannot assign requested address"] * 2 + [
                "[Errno 24] Too many open files"], said
            events = ws_events(url, both, 10.0)
    finally:
        child.communicate("", timeout=30)
    got = [t for t in texts(events) if ours in t]
    assert [t.split(" (pid")[0] for t in got] == [
        "connect() failed: [Errno 99] EADDRNOTAVAIL: Cannot assign requested address",
        "accept4() failed: [Errno 24] EMFILE: Too many open files"], got
    # Its second EADDRNOTAVAIL: counted, not printed; no other namespace's failures
    # (the page keeps the followed namespace's: another test's bomb fails meanwhile).
    more = [re.fullmatch(r"connect\(\) failed with EADDRNOTAVAIL ([\d,]+) more times? in "
                         r"0\.2 s", t) for t in texts(events)]
    assert sum(int(m.group(1)) for m in more if m) == 1, texts(events)
    meta = next(e for e in events if e["kind"] == "meta")
    assert "a failed connect() (EADDRNOTAVAIL) or accept() (EMFILE, ENFILE) of a process " \
        "in this namespace" in meta["words"]


@pytest.mark.loopback
def test_pause_slow_motion_and_back_to_now_on_a_replay(tmp_path: Path) -> None:
    """A recording of three bombs, replayed in Chromium: paused, the clock and the
    counts hold; at 0.25x the clock runs at a quarter of the wall clock (a ratio,
    not a time limit); "Back to now" shows the recording's last counts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rec = tmp_path / "live.jsonl"
    with listener() as ls:
        port = ls.getsockname()[1]
        with live("--port", str(port), "--interval", "0.2", "--record", str(rec)):
            for _ in range(3):
                bomb(port, 20)
                time.sleep(1.0)
    counts = [e for e in map(json.loads, rec.read_text().splitlines()) if e["kind"] == "counts"]
    last = counts[-1]
    assert last["states"]["TIME_WAIT"] > 0, last
    with live("--replay", str(rec)) as (_, url), headless_chromium(tmp_path) as driver:
        driver.get(url)
        driver.find_element(By.ID, "pause").click()

        def clock() -> float:
            text = driver.find_element(By.ID, "clock").text  # "t = 1.3 s (paused)"
            return float(text.split()[2])

        def tw() -> int:
            return int(driver.find_element(By.ID, "count-TIME_WAIT").text.replace(",", ""))

        held = (clock(), tw())
        assert driver.find_element(By.ID, "clock").text.endswith("(paused)")
        time.sleep(1.0)
        assert (clock(), tw()) == held
        Select(driver.find_element(By.ID, "speed")).select_by_value("0.25")
        driver.find_element(By.ID, "pause").click()  # Resume
        c0, w0 = clock(), time.monotonic()
        time.sleep(2.0)
        c1, w1 = clock(), time.monotonic()
        assert driver.find_element(By.ID, "clock").text.endswith("(0.25x)")
        assert 0 < c1 - c0 <= 0.5 * (w1 - w0), (c0, c1, w1 - w0)
        driver.find_element(By.ID, "live").click()
        wait_for(lambda: tw() == last["states"]["TIME_WAIT"], "the recording's last count")
        assert clock() == pytest.approx(last["t"], abs=0.05)
        assert [x for x in driver.get_log("browser") if x["level"] == "SEVERE"] == []


@pytest.mark.loopback
def test_another_address_than_loopback_is_served_with_a_warning() -> None:
    """127.0.0.1 says nothing; any other address warns that the page shows this
    host's sockets (127.0.0.2 here: another address, still only loopback)."""
    quiet = run_tcplab("live", "--listen", "127.0.0.1:0", "--duration", "0.5")
    assert quiet.returncode == 0 and b"warning" not in quiet.stderr, quiet.stderr
    warned = run_tcplab("live", "--listen", "127.0.0.2:0", "--duration", "0.5")
    assert warned.returncode == 0, warned.stderr
    assert ("warning: serving on 127.0.0.2: anyone who reaches it sees this host's TCP "
            "sockets") in warned.stderr.decode()


@pytest.mark.privileged
@needs_netns
def test_the_namespace_filter_keeps_its_threads_and_their_connections() -> None:
    """observe.live.NamespaceFilter on recorded tracepoint lines with real thread ids:
    this process's events are kept, and then that connection's from any thread;
    another namespace's process's (a child under unshare) and its connections not."""
    import dataclasses
    import shutil

    from tcplab.kernel.tracefs import parse_line
    from tcplab.observe.live import NamespaceFilter

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux)")
    args = ["-n"] if os.geteuid() == 0 else ["-Urn"]
    other = subprocess.Popen([unshare, *args, "sleep", "60"])
    try:
        wait_for(lambda: os.stat(f"/proc/{other.pid}/ns/net").st_ino
                 != os.stat("/proc/self/ns/net").st_ino, "the child in its namespace")
        line = ("python-1 [001] .N... 3893.310414: inet_sock_set_state: family=AF_INET "
                "protocol=IPPROTO_TCP sport={} dport=8080 saddr=127.0.0.1 daddr=127.0.0.1 "
                "saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate={} newstate={}")

        def ev(pid: int, sport: int, old: str, new: str) -> Any:
            e = parse_line(line.format(sport, old, new))
            return dataclasses.replace(e, pid=pid)

        keep = NamespaceFilter({os.stat("/proc/self/ns/net").st_ino})
        me, them, softirq = os.getpid(), other.pid, 0
        assert keep(ev(me, 40000, "TCP_SYN_SENT", "TCP_ESTABLISHED"))
        # the same connection, run by ksoftirqd or in another thread's context
        assert keep(ev(softirq, 40000, "TCP_FIN_WAIT1", "TCP_FIN_WAIT2"))
        assert keep(ev(them, 40000, "TCP_FIN_WAIT2", "TCP_CLOSE"))
        # another namespace's connection: not by its thread, not by a softirq, and not
        # when its softirq work ran in our thread's context (the trace line's "s")
        assert not keep(ev(them, 40001, "TCP_SYN_SENT", "TCP_ESTABLISHED"))
        assert not keep(ev(softirq, 40001, "TCP_FIN_WAIT1", "TCP_FIN_WAIT2"))
        in_softirq = dataclasses.replace(ev(me, 40005, "TCP_SYN_SENT", "TCP_ESTABLISHED"),
                                         flags=".Ns1.")
        assert in_softirq.in_interrupt and not keep(in_softirq)
        # connect()'s first event has no local port yet: kept, but it ties no connection
        assert keep(ev(me, 0, "TCP_CLOSE", "TCP_SYN_SENT"))
        assert not keep(ev(softirq, 0, "TCP_SYN_SENT", "TCP_CLOSE"))
        # An interval's events together: a handshake run by ksoftirqd is kept when the
        # close() of the same connection, later in the interval, ran in this process;
        # a connection no thread of ours touched, when its socket is here at the end
        # (its TIME_WAIT); another namespace's, neither.
        batch = [ev(softirq, 40002, "TCP_SYN_SENT", "TCP_ESTABLISHED"),
                 ev(me, 40002, "TCP_ESTABLISHED", "TCP_FIN_WAIT1"),
                 ev(softirq, 40003, "TCP_FIN_WAIT2", "TCP_CLOSE"),
                 ev(them, 40004, "TCP_SYN_SENT", "TCP_ESTABLISHED")]
        here = {(("127.0.0.1", 8080), ("127.0.0.1", 40003))}
        kept = keep.settle(batch, here)
        assert [(e.fields["sport"], e.pid) for e in kept] == [
            ("40002", softirq), ("40002", me), ("40003", softirq)]
    finally:
        other.kill()
        other.wait()


#: Another namespace's connections on the same port number (``unshare``): its own
#: listener and ports 61000-62999 (above the default range), 20 connections, then
#: "done" and it waits to be ended.
OTHER = """
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("61000 62999")
port = int(sys.argv[1])
ls = socket.socket(); ls.bind(("127.0.0.1", port)); ls.listen(64)
for _ in range(20):
    c = socket.create_connection(("127.0.0.1", port)); s, _ = ls.accept()
    c.close(); s.close()
print("done", flush=True)
sys.stdin.read()
"""


@pytest.mark.privileged
@needs_netns
def test_the_page_shows_its_namespace_only(tmp_path: Path) -> None:
    """tcplab live on a port of ours while another namespace makes connections on the
    same port number: ours are on the page, none of theirs (as root the tracepoint is
    the machine's and the page keeps this namespace's; otherwise sock_diag is
    per-namespace)."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux)")
    rec = tmp_path / "live.jsonl"
    with listener() as ls:
        port = ls.getsockname()[1]
        with live("--port", str(port), "--interval", "0.2", "--record", str(rec)) as (_, url):
            ws_events(url, lambda got: any(e["kind"] == "counts" for e in got), 10.0)
            other = subprocess.Popen([unshare, "-n" if os.geteuid() == 0 else "-Urn",
                                      sys.executable, "-c", OTHER, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert other.stdout is not None
                assert other.stdout.readline().strip() == "done"
                mine = []
                for _ in range(5):
                    c = socket.create_connection(("127.0.0.1", port), timeout=10)
                    mine.append(c.getsockname()[1])
                    time.sleep(0.25)  # each seen in a snapshot too, as an ordinary user
                    c.close()
                time.sleep(1.0)  # the interval's end: the page has them
            finally:
                other.communicate("", timeout=30)
    events = [json.loads(x) for x in rec.read_text().splitlines()]
    ports = {p for e in events if e["kind"] == "transition" for p in (e["sport"], e["dport"])}
    assert set(mine) <= ports, (mine, sorted(ports))
    assert not ports & set(range(61000, 63000)), sorted(ports & set(range(61000, 63000)))
