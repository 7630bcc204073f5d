"""``tcplab live``'s ladder (issue 16): one connection's segments and timers on the page.

Loopback, on a port the kernel chose for a listener made here. As root the
segments come from tcplab's own capture (AF_PACKET on lo); as an ordinary user
there are none and the page says why (then the ladder draws the connection's
transitions).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import accepting_listener, headless_chromium, wait_for, ws_events
from tests.helpers import tcplab_live as live


@contextmanager
def reading_server() -> Iterator[int]:
    """A listener that reads each connection to its end and then closes it: the
    client's FIN comes first, so the client's end is the one left in TIME_WAIT."""
    def read_to_end(c: socket.socket) -> None:
        c.settimeout(30)
        while c.recv(4096):
            pass

    with accepting_listener(read_to_end, backlog=16) as ls:
        yield ls.getsockname()[1]


def one_connection(port: int) -> int:
    """Connect, send 5 bytes, close first; the client's port."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    cport = c.getsockname()[1]
    c.sendall(b"hello")
    time.sleep(0.2)  # the data and its ACK apart from the FIN on the ladder
    c.close()
    return cport


def conn_key(port: int, cport: int) -> str:
    from tcplab.observe.ladder import conn_key

    return conn_key("127.0.0.1", cport, "127.0.0.1", port)


def ladder_words(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#ladder-svg .seg-word')]"
        ".map(e => e.dataset.word)"))


def ladder_text(driver: Any, selector: str) -> str:
    """The first ``selector``'s text in the ladder, read at once (the ladder is drawn
    anew as segments come: an element found before may be gone a moment later)."""
    return str(driver.execute_script(
        "const e = document.querySelector('#ladder-svg ' + arguments[0]);"
        "return e ? e.textContent : ''", selector))


def in_order(words: list[str], want: list[str]) -> bool:
    it = iter(words)
    return all(w in it for w in want)


def pick_from_transitions(driver: Any, cport: int) -> None:
    """Click the Transitions line of the client's socket (how a teacher picks one)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def click() -> bool:
        line = driver.execute_script(
            "return [...document.querySelectorAll('#transitions div')]"
            ".find(d => d.textContent.includes(arguments[0])) || null",
            f"127.0.0.1:{cport} > ")
        if line is None:
            return False
        try:
            line.click()
        except StaleElementReferenceException:  # the list moved under the pointer
            return False
        return True

    wait_for(click, f"a transition of port {cport} in the list, clicked")


def timewait_left(driver: Any) -> float:
    text = driver.execute_script(
        "const e = document.getElementById('ladder-timewait'); return e ? e.textContent : ''")
    m = re.match(r"TIME_WAIT: ([\d.]+) s left", text)
    return float(m.group(1)) if m else -1.0


# -- pure ----------------------------------------------------------------------------


def _pkt(sport: int, dport: int, flags: int, seq: int, length: int = 0) -> Any:
    from tcplab.kernel.packets import Packet

    return Packet(t=0.0, family=socket.AF_INET, src="127.0.0.1", sport=sport,
                  dst="127.0.0.1", dport=dport, flags=flags, seq=seq, ack=0, win=0,
                  length=length)


@pytest.mark.pure
def test_follower_follows_a_few_new_connections_an_interval_and_bounds_the_segments() -> None:
    from tcplab.kernel.packets import ACK, SYN
    from tcplab.observe.ladder import Follower

    f = Follower(follow=2, packets=5)
    got = [f.packet(_pkt(40000 + i, 80, SYN, 1), 0.1 * i) for i in range(4)]
    assert [g is not None for g in got] == [True, True, False, False]  # two new ones
    assert got[0] is not None and got[0]["conn"] == "127.0.0.1:40000 127.0.0.1:80"
    # the followed ones go on, the others stay out, up to 5 segments in the interval
    more = [f.packet(_pkt(40000, 80, ACK, 2), 1.0), f.packet(_pkt(40002, 80, ACK, 2), 1.0)]
    assert more[0] is not None and more[1] is None
    for _ in range(4):
        f.packet(_pkt(80, 40001, ACK, 9), 1.1)
    assert f.next_interval() == 2  # 5 sent (3 + 2), 2 counted as skipped
    assert f.packet(_pkt(40002, 80, ACK, 2), 2.0) is not None  # a new interval's quota


@pytest.mark.pure
def test_a_segment_sent_again_carries_the_gap_and_a_bare_ack_does_not() -> None:
    from tcplab.kernel.packets import ACK, PSH
    from tcplab.observe.ladder import Follower

    f = Follower()
    first = f.packet(_pkt(40000, 80, PSH | ACK, 100, 10), 1.0)
    again = f.packet(_pkt(40000, 80, PSH | ACK, 100, 10), 1.2034)
    ack1 = f.packet(_pkt(80, 40000, ACK, 7), 1.3)
    ack2 = f.packet(_pkt(80, 40000, ACK, 7), 1.4)
    assert first is not None and "retrans_ms" not in first
    assert again is not None and again["retrans_ms"] == 203.4
    assert ack1 is not None and ack2 is not None and "retrans_ms" not in ack2


@pytest.mark.pure
def test_the_same_four_tuple_again_is_a_new_connection() -> None:
    """A SYN on a followed 4-tuple after its FIN (tcp_tw_reuse takes a TIME_WAIT port
    again): its first data is no copy of the old one's, and its TIME_WAIT is looked for."""
    from tcplab.kernel.packets import ACK, FIN, PSH, SYN
    from tcplab.observe.ladder import Follower

    f = Follower()
    f.packet(_pkt(40000, 80, SYN, 1), 0.0)
    f.packet(_pkt(40000, 80, PSH | ACK, 2, 10), 0.1)
    f.packet(_pkt(40000, 80, FIN | ACK, 12), 0.2)
    assert [k for k, _ in f.want_timer()] == ["127.0.0.1:40000 127.0.0.1:80"]
    f.conns["127.0.0.1:40000 127.0.0.1:80"].timer_done = True
    assert not f.want_timer()
    f.packet(_pkt(40000, 80, SYN, 1), 1.0)
    again = f.packet(_pkt(40000, 80, PSH | ACK, 2, 10), 1.1)
    assert again is not None and "retrans_ms" not in again
    f.packet(_pkt(40000, 80, FIN | ACK, 12), 1.2)
    assert [k for k, _ in f.want_timer()] == ["127.0.0.1:40000 127.0.0.1:80"]


@pytest.mark.pure
def test_the_page_carries_the_ladder_block() -> None:
    from tcplab.report.live_page import page

    text = page("t", [{"kind": "meta", "t": 0.0, "port": 9, "ladder": "words"}])
    assert text.count('id="ladder-svg"') == 1 and text.rstrip().endswith("</body></html>")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")


# -- as root: packets ------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the ladder's packets need root (CAP_NET_RAW for tcplab's "
    "AF_PACKET capture); test_without_root_* checks the page's words then")


@pytest.mark.loopback
@needs_root
def test_the_kernel_passes_only_the_followed_connections_segments() -> None:
    """Once an interval's new connections are taken, the kernel's filter passes the
    followed ones' segments only, and never lo's outgoing copy: every frame read is
    one the ladder draws."""
    from tcplab.observe.ladder import FOLLOW, Ladder
    from tcplab.observe.sockets import SocketTable

    with reading_server() as port, SocketTable() as table:
        ladder = Ladder(port, None, time.monotonic(), table, capture=True)
        try:
            assert ladder.why_not is None, ladder.why_not
            followed = [one_connection(port) for _ in range(FOLLOW)]
            wait_for(lambda: len(ladder.follower.conns) == FOLLOW, "the followed connections")
            others = [one_connection(port) for _ in range(2)]
            last = [-1]

            def settled() -> bool:  # nothing more read in 0.5 s
                n, last[0] = last[0], ladder.frames_read
                time.sleep(0.5)
                return n == ladder.frames_read

            wait_for(settled, "the capture to settle")
            events = ladder.step([])
        finally:
            ladder.close()
    packets = [e for e in events if e["kind"] == "packet"]
    assert {e["conn"] for e in packets} == {conn_key(port, c) for c in followed}
    assert not [e for e in events if e["kind"] == "ladder"]  # nothing skipped, nothing dropped
    assert ladder.frames_read == len(packets), (ladder.frames_read, len(packets))
    for c in followed:  # each one whole
        words = [e["word"] for e in packets if e["conn"] == conn_key(port, c)]
        assert in_order(words, ["SYN", "SYN-ACK", "ACK", "data", "FIN", "FIN", "ACK"]), words
    assert not set(others) & {e["sport"] for e in packets}


@pytest.mark.loopback
@needs_root
def test_the_ladder_of_a_chosen_connection_in_chromium(tmp_path: Path) -> None:
    """SYN, SYN-ACK, ACK, data, FIN in that order for the 4-tuple picked on the
    page, the TIME_WAIT countdown going down; the recording replays the same ladder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rec = tmp_path / "live.jsonl"
    want = ["SYN", "SYN-ACK", "ACK", "data", "FIN"]
    with reading_server() as port, \
            live("--port", str(port), "--interval", "0.5", "--record", str(rec)) as (_, url), \
            headless_chromium(tmp_path) as driver:
        driver.get(url)
        wait_for(lambda: "captured on lo" in driver.find_element(By.ID, "ladder-why").text,
                 "the ladder's words")
        first = one_connection(port)
        cport = one_connection(port)  # the second one: picked, not just the first shown
        key = conn_key(port, cport)
        pick_from_transitions(driver, cport)
        wait_for(lambda: driver.execute_script(
            "return document.getElementById('ladder-conn').value") == key,
            "the picked connection")
        wait_for(lambda: in_order(ladder_words(driver), want),
                 f"{want} on the ladder (saw {ladder_words(driver)})")
        assert ladder_words(driver)[:4] == want[:4]
        assert ladder_text(driver, ".end") == f"client 127.0.0.1:{cport}"
        wait_for(lambda: timewait_left(driver) > 0, "the TIME_WAIT countdown")
        before = timewait_left(driver)
        # TCP_TIMEWAIT_LEN is 60 s (include/net/tcp.h)
        assert 0 < before <= 60
        time.sleep(1.5)
        after = timewait_left(driver)
        assert 0 < after < before, (before, after)
        driver.set_window_size(1280, 2000)  # the whole ladder in one picture
        driver.find_element(By.ID, "ladder").screenshot(str(tmp_path / "ladder-picked.png"))
        # the other connection is there too, with its own ladder
        Select(driver.find_element(By.ID, "ladder-conn")).select_by_value(conn_key(port, first))
        wait_for(lambda: in_order(ladder_words(driver), want), "the first connection's ladder")
        driver.execute_script("document.getElementById('ladder').scrollIntoView()")
        driver.save_screenshot(str(tmp_path / "ladder.png"))
    (tmp_path / "replay").mkdir()
    with live("--replay", str(rec)) as (_, url), headless_chromium(tmp_path / "replay") as driver:
        driver.get(url)
        Select(driver.find_element(By.ID, "ladder-conn")).select_by_value(key)
        wait_for(lambda: in_order(ladder_words(driver), want), "the replayed ladder")


# -- without root: transitions only, and the page says why ------------------------------


@pytest.mark.loopback
def test_without_root_the_ladder_draws_transitions_and_says_why(
        tmp_path: Path, nobody_venv: Path | None) -> None:
    """As nobody (root's tests) or as the ordinary user running them: no packets, the
    words say CAP_NET_RAW, and the picked connection's transitions are drawn."""
    from selenium.webdriver.common.by import By

    with reading_server() as port, \
            live("--port", str(port), "--interval", "0.2", venv=nobody_venv) as (_, url), \
            headless_chromium(tmp_path) as driver:
        driver.get(url)

        def why() -> str:
            return str(driver.find_element(By.ID, "ladder-why").text)

        wait_for(lambda: why(), "the ladder's words")
        assert why().startswith("The ladder shows a connection's state transitions only, "
                                "no packets: capturing packets needs CAP_NET_RAW"), why()
        assert driver.find_element(By.ID, "ladder-none").is_displayed()
        cport = one_connection(port)
        pick_from_transitions(driver, cport)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ladder-svg .state-text"),
                 "a transition on the ladder")
        assert not ladder_words(driver)
        assert f"127.0.0.1:{cport}" in driver.find_element(By.ID, "ladder-svg").text
        # More connections than the page keeps (200, the oldest dropped first): the
        # picked one stays on the ladder (it was the oldest: a port bomb's replay drew
        # nothing and threw a TypeError every tick).
        for _ in range(25):
            for _ in range(12):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            time.sleep(0.25)
        wait_for(lambda: len(conns_in(ws_events(url, lambda _: False, 1.0))) > 201,
                 "more than 201 connections' transitions sent to the page", timeout=30)
        time.sleep(0.5)  # a draw or two after the last of them
        assert f"127.0.0.1:{cport}" in driver.find_element(By.ID, "ladder-svg").text
        errors = [x for x in driver.get_log("browser") if x["level"] == "SEVERE"]
        assert errors == []


def conns_in(events: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """The connections whose transitions the page got."""
    return {(e["saddr"], e["sport"], e["daddr"], e["dport"]) for e in events
            if e["kind"] == "transition" and e.get("sport") and e.get("dport")}



#: Run inside the test's private namespace (nsenter): an nftables rule drops the first
#: copy of a segment tagged LOSTLOST on its way in (a quota of one packet's bytes:
#: net/netfilter/nft_quota.c stops matching once it is used up, as
#: agents/retransmit.py does), then one connection sends it and closes. Prints the
#: client's port.
LOSE_ONE = """
import os, socket, subprocess, sys
port, home = int(sys.argv[1]), sys.argv[2]
if os.readlink("/proc/self/ns/net") == home:
    sys.exit("refusing: the host's network namespace")
rules = ("table inet ladder {\\n chain input {\\n"
         "  type filter hook input priority 0; policy accept;\\n"
         f"  tcp dport {port} @ih,0,64 0x4c4f53544c4f5354 quota until 100 bytes drop\\n"
         " }\\n}\\n")
subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
ls = socket.socket()
ls.bind(("127.0.0.1", port))
ls.listen(1)
c = socket.create_connection(("127.0.0.1", port), timeout=10)
cport = c.getsockname()[1]
s, _ = ls.accept()
c.sendall(b"LOSTLOST" + b"x" * 8)
s.settimeout(10)
got = b""
while len(got) < 16:
    got += s.recv(100)
c.close(); s.close(); ls.close()
print(cport)
"""


@contextmanager
def private_netns() -> Iterator[str]:
    """A network namespace of our own (unshare -n), lo up; its holder's pid."""
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 600"],
                              stdin=subprocess.DEVNULL)
    try:
        pid = str(holder.pid)
        home = os.readlink("/proc/self/ns/net")
        wait_for(lambda: os.readlink(f"/proc/{pid}/ns/net") != home, "the new namespace")
        yield pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.privileged
@needs_root
@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("nsenter") is None,
                    reason="nft (nftables) and nsenter (util-linux) are needed to lose a segment")
def test_a_lost_segment_is_sent_again_on_the_ladder(tmp_path: Path) -> None:
    """In a namespace of its own (--netns: the capture is opened in there), nftables
    drops a data segment's first copy: the ladder draws it twice, the second with
    the gap since the first."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    port = 7777  # the namespace is ours: any port is free
    with private_netns() as pid, \
            live("--netns", pid, "--port", str(port), "--interval", "0.5") as (_, url), \
            headless_chromium(tmp_path) as driver:
        driver.get(url)
        wait_for(lambda: "captured on lo" in driver.find_element(By.ID, "ladder-why").text,
                 "the ladder's words")
        r = subprocess.run(["nsenter", "-t", pid, "-n", sys.executable, "-c", LOSE_ONE,
                            str(port), os.readlink("/proc/self/ns/net")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        key = conn_key(port, int(r.stdout))
        wait_for(lambda: driver.execute_script(
            "return [...document.getElementById('ladder-conn').options].map(o => o.value)"
        ).count(key), "the connection in the list")
        Select(driver.find_element(By.ID, "ladder-conn")).select_by_value(key)
        wait_for(lambda: ladder_words(driver).count("data") == 2,
                 f"the data segment twice (saw {ladder_words(driver)})")
        again = ladder_text(driver, ".again-text")
        m = re.fullmatch(r"sent again after ([\d.]+) ms", again)
        assert m and float(m.group(1)) > 0, again
        driver.set_window_size(1280, 2000)
        driver.find_element(By.ID, "ladder").screenshot(str(tmp_path / "retransmitted.png"))
