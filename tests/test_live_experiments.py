"""Issue 16: every experiment takes --live and --record, and the report embeds a
replay of each; the replay draws the counts the live run drew.

Real experiments (--quick, small), as root and as nobody (an unprivileged user
namespace: the same agent, by the same hook). What the recording holds is
checked against what the experiment itself reported (its 100 ms sampler's
TIME_WAIT and CLOSE_WAIT peaks, counted by another process): the live agent's
last count, written as each namespace goes, holds the plateau both see.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    NOBODY_ENV,
    USERS,
    Child,
    as_nobody,
    headless_chromium,
    needs_netns,
    one_json,
    run_as,
    run_tcplab,
    wait_for,
    ws_events,
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory nobody may write too (pytest's tmp_path is root's alone)."""
    import shutil

    where = Path(tempfile.mkdtemp(prefix="tcplab-live-", dir="/tmp"))
    where.chmod(0o777)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def recording(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def by_namespace(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The counts of each namespace followed, by its label (its meta event's)."""
    out: dict[str, list[dict[str, Any]]] = {}
    label = None
    for e in events:
        if e["kind"] == "meta":
            label = e["experiment"]
            out.setdefault(label, [])
        elif e["kind"] == "counts":
            assert label is not None, "counts before any meta"
            out[label].append(e)
    return out


def peak(counts: list[dict[str, Any]], state: str) -> int:
    return max(c["states"][state] for c in counts)


def embedded(page: Path) -> list[dict[str, Any]]:
    """The recording a replay page plays (report/live_page.py's RECORDED)."""
    m = re.search(r"const RECORDED = (.*);\n", page.read_text())
    assert m, f"no embedded recording in {page}"
    data: list[dict[str, Any]] = json.loads(m.group(1).replace("<\\/", "</"))
    return data


@pytest.mark.privileged
@needs_netns
@pytest.mark.parametrize("user", USERS)
def test_a_recorded_port_bomb_peaks_at_the_time_wait_it_reported(
        user: str, nobody_venv: Path | None, shared_tmp: Path) -> None:
    """Loopback (fresh) and a veth link (real-link: the agent at the server's end
    adds the client's): each namespace's TIME_WAIT peak in the recording is the
    variant's own; the report's replay page embeds the same counts."""
    rec, report = shared_tmp / "bomb.jsonl", shared_tmp / "report"
    b = one_json(run_as(user, nobody_venv, "experiment", "port-bomb", "--quick",
                        "--variant", "fresh", "--variant", "real-link", "--ports", "200",
                        "--record", str(rec), "--report", str(report),
                        "--live-interval", "0.2", "--json"))
    events = recording(rec)
    counts = by_namespace(events)
    ran = [v for v in b["variants"] if v["skip"] is None]
    assert ran and ran[0]["name"] == "fresh", b["variants"]
    for v in ran:
        label = f"port-bomb: {v['name']}"
        assert label in counts, (label, list(counts))
        assert v["time_wait_peak"] > 0, v
        assert peak(counts[label], "TIME_WAIT") == v["time_wait_peak"] + v["time_wait_before"]
    assert [e["text"] for e in events if e["kind"] == "event"][:2] == [
        "experiment port-bomb started", "port-bomb: fresh"]
    assert any("EADDRNOTAVAIL" in e.get("text", "") for e in events)  # the bomb's, verbatim
    # The report: a replay page per experiment, linked, with the recording's counts.
    index = (report / "index.html").read_text()
    assert 'href="replay-port-bomb.html"' in index  # opened on its own
    assert '<iframe class="replay" src="replay-port-bomb.html"' in index  # and embedded
    replayed = embedded(report / "replay-port-bomb.html")
    assert [e["states"] for e in replayed if e["kind"] == "counts"] == [
        e["states"] for e in events if e["kind"] == "counts"]
    assert replayed[0]["t"] == 0.0 and "http://" not in (
        report / "replay-port-bomb.html").read_text().replace("http://www.w3.org/2000/svg", "")


#: Another namespace's connections while an experiment runs (``unshare -n``): ports
#: 61000-62999 of its own (above the default range, 32768-60999), 10 connections
#: every 0.5 s until killed (at most 60 s: 1,200 ports).
NOISE = """
import socket, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("61000 62999")
ls = socket.socket(); ls.bind(("127.0.0.1", 8080)); ls.listen(128)
end = time.monotonic() + 60
while time.monotonic() < end:
    for _ in range(10):
        c = socket.create_connection(("127.0.0.1", 8080)); s, _ = ls.accept()
        c.close(); s.close()
    print("made 10", flush=True)
    time.sleep(0.5)
"""


@pytest.mark.privileged
@needs_netns
@pytest.mark.parametrize("user", USERS)
def test_live_serves_the_leak_filling_close_wait_while_it_runs(
        user: str, nobody_venv: Path | None, shared_tmp: Path) -> None:
    """--live: the page and its stream during the run (CLOSE_WAIT growing on the
    leaking server), the page held after it until Ctrl-C, which exits 0; the
    recording's CLOSE_WAIT peak is the one the experiment reported. As root the
    transitions come from the tracepoint, the experiment's own: every leaked
    connection took ESTABLISHED -> CLOSE_WAIT, and another namespace's
    connections made meanwhile (ports 61000-62999) are not there."""
    rec = shared_tmp / "leak.jsonl"
    noise = Child(["unshare", "-n", sys.executable, "-c", NOISE], start_new_session=True) \
        if user == "root" else None
    args = ["-m", "tcplab", "experiment", "fd-leak", "--quick", "--fd-limit", "64", "--live",
            "--listen", "127.0.0.1:0", "--record", str(rec), "--live-interval", "0.2", "--json"]
    if user == "nobody":
        assert nobody_venv is not None
        job = Child([str(nobody_venv / "bin" / "python"), *args], start_new_session=True,
                    preexec_fn=as_nobody, cwd="/tmp", env=NOBODY_ENV)
    else:
        job = Child([sys.executable, *args], start_new_session=True)
    try:
        said = job.wait_line(lambda x: "serving the live page on" in x)
        url = re.search(r"http://127\.0\.0\.1:\d+/", said).group(0)  # type: ignore[union-attr]
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert "tcplab experiment fd-leak" in resp.read().decode()
        seen = ws_events(url, lambda got: any(
            e["kind"] == "counts" and e["states"]["CLOSE_WAIT"] > 0 for e in got), 60)
        assert any(e["kind"] == "counts" and e["states"]["CLOSE_WAIT"] > 0 for e in seen), \
            "no count with CLOSE_WAIT in the stream"
        # Seen while the experiment ran: it had not said it was over.
        assert not any("the experiments are over" in x for x in job.err), job.err
        job.wait_line(lambda x: "the experiments are over" in x, guard=120)
        job.proc.send_signal(signal.SIGINT)
        rc = job.finish()
    finally:
        job.kill()  # the pipes closed; a SIGTERM first if the test failed before its end
        if noise is not None:
            noise.kill()
    assert rc == 0, job.err
    assert not any("Traceback" in x for x in job.err), job.err
    b = json.loads(job.out[0])
    want = b["facts"]["server_close_wait_peak"]
    assert want > 0, b["fact"]
    events = recording(rec)
    counts = [e for e in events if e["kind"] == "counts"]
    assert peak(counts, "CLOSE_WAIT") == want
    # what the stream sent is what the recording holds, from the start
    sent = [e for e in seen if e["kind"] == "counts"]
    assert sent == counts[:len(sent)]
    sources = {e["source"] for e in events if e["kind"] == "meta"}
    if user == "root":
        assert noise is not None and any(x.strip() == "made 10" for x in noise.out), noise.out
        assert sources == {"tracepoint"}, sources
        taken = sum(e["edges"].get("ESTABLISHED>CLOSE_WAIT", 0) for e in events
                    if e["kind"] == "edges")
        assert taken >= want, (taken, want)
        theirs = [e for e in events if e["kind"] == "transition"
                  and ({e["sport"], e["dport"]} & set(range(61000, 63000)))]
        assert theirs == [], theirs[:3]
    else:
        assert sources == {"poll"}, sources


@pytest.mark.privileged
@needs_netns
def test_the_report_s_replay_draws_the_recorded_counts_offline(tmp_path: Path) -> None:
    """In Chromium, from the file (no server, nothing fetched): the replay embedded in
    index.html, and the same page opened on its own, end on the run's last counts,
    state by state, as text."""
    report = tmp_path / "report"
    b = one_json(run_tcplab("experiment", "port-bomb", "--quick", "--variant", "fresh",
                            "--ports", "200", "--report", str(report), "--live-interval", "0.2",
                            "--json", timeout=300))
    page = report / "replay-port-bomb.html"
    counts = [e for e in embedded(page) if e["kind"] == "counts"]
    last = counts[-1]["states"]
    assert last["TIME_WAIT"] == b["variants"][0]["time_wait_peak"] > 0
    with headless_chromium(tmp_path) as driver:
        from selenium.common.exceptions import NoSuchElementException
        from selenium.webdriver.common.by import By

        def drawn() -> dict[str, int]:
            try:
                return {s: int(driver.find_element(By.ID, f"count-{s}").text.replace(",", ""))
                        for s in last}
            except NoSuchElementException:  # the lazy iframe has not loaded yet
                return {}

        # In the report: the port-bomb section's iframe, scrolled to (it loads lazily).
        driver.get((report / "index.html").as_uri())
        frame = driver.find_element(By.CSS_SELECTOR, "#port-bomb iframe.replay")
        driver.execute_script("arguments[0].scrollIntoView()", frame)
        driver.switch_to.frame(frame)
        wait_for(lambda: drawn() == last, f"the embedded replay's last counts {last}",
                 timeout=60)
        driver.switch_to.default_content()
        # On its own.
        driver.get(page.as_uri())
        wait_for(lambda: drawn() == last, f"the replay's last counts {last}", timeout=60)
        assert driver.find_element(By.ID, "svgcount-TIME_WAIT").text == str(last["TIME_WAIT"])
        errors = [x for x in driver.get_log("browser") if x["level"] == "SEVERE"]
        assert errors == []


@pytest.mark.loopback
def test_a_port_in_use_for_live_is_a_one_line_error() -> None:
    """--listen on a taken port: the error names it, before any experiment runs."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "tcplab", "experiment", "restart", "--live",
                            "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert str(port) in r.stderr and "running experiment" not in r.stderr, r.stderr
