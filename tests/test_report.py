"""``tcplab experiment all --report DIR`` as a user gets it, and ``tcplab explain``.

The session's one ``experiment all --quick --report DIR --json`` run (the
``experiment_all`` fixture of tests/conftest.py) feeds the checks of its JSON
lines, results.json and index.html, which is then opened in a real headless
browser: Debian's chromium driven by its chromedriver through selenium
(.ci/run installs both when run as root and they are missing; without them
that test skips and says why). The page must load from file:// with no
console error and draw every chart. The text summary of ``all``, the exit
status of an experiment that did not show its fact and the lessons of
``tcplab explain`` (docs/lessons.md is generated from them) are checked too.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments.link import LinkUsed
from tcplab.experiments.result import Result, result_type
from tcplab.records import to_json
from tcplab.report import html
from tcplab.report.lessons import LESSONS, Figures, quotes
from tcplab.report.terminal import result_lines, settings_text, summary_lines
from tcplab.words import plural
from tests.helpers import ExperimentAll, ReportPage, headless_chromium, run_tcplab

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("echo", "port-bomb", "fd-leak", "half-close", "restart", "reset", "syn-queue",
               "multiplex", "handshake", "keepalive", "ports", "orphans", "nagle",
               "retransmit")
#: The experiments whose section has a chart (one each) when they ran.
CHARTED = ("port-bomb", "fd-leak", "multiplex", "handshake")
TOPICS = ("time-wait", "port-range", "close-wait", "fd-limit", "handshake", "netpoll",
          "restart", "reset", "syn-queue", "keepalive", "ports", "orphans", "nagle",
               "retransmit", "c100k")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The flags that run Debian's chromium here, as root too, without reaching the network.

def stderr_of(r: subprocess.CompletedProcess[bytes]) -> str:
    return r.stderr.decode(errors="replace")[-4000:]


# --- the session's `experiment all --quick --report DIR --json` ------------------------------

@dataclass(frozen=True)
class ReportRun:
    proc: subprocess.CompletedProcess[bytes]
    directory: Path


@pytest.fixture(scope="module")
def report_run(experiment_all: ExperimentAll) -> ReportRun:
    # The session's one `experiment all --quick --json --report DIR` (tests/conftest.py).
    return ReportRun(experiment_all.proc, experiment_all.report)


def results_of(run: ReportRun) -> list[dict[str, Any]]:
    """The run's JSON lines, after checking it exited 0 and printed only those."""
    r = run.proc
    assert r.returncode == 0, f"exit {r.returncode}: {stderr_of(r)}"
    lines = r.stdout.decode().splitlines()
    bodies = []
    for line in lines:
        body = json.loads(line)  # stdout carries JSON only
        assert isinstance(body, dict), line
        bodies.append(body)
    return bodies


def charts_expected(results: list[dict[str, Any]]) -> dict[str, int]:
    """Inline SVG charts per experiment section: one for each charted experiment that ran."""
    return {b["experiment"]: int(b["experiment"] in CHARTED and b["skipped"] is None)
            for b in results}


@pytest.mark.privileged
def test_json_lines_one_per_experiment(report_run: ReportRun) -> None:
    results = results_of(report_run)
    assert [b["experiment"] for b in results] == list(EXPERIMENTS)
    for b in results:
        assert b["schema"] == 1, b["experiment"]
        if b["skipped"] is None:
            assert b["ok"] is True, f"{b['experiment']} did not show its fact: {b['fact']}"
            assert b["fact"].strip(), b["experiment"]
        else:  # handshake as an ordinary user: skipped, with the reason and the fix
            assert b["ok"] is False, b["experiment"]
            assert isinstance(b["skipped"], str) and b["skipped"].strip(), b["experiment"]
    if os.geteuid() != 0:
        handshake = results[EXPERIMENTS.index("handshake")]
        assert handshake["skipped"], "handshake needs root (tracefs, AF_PACKET)"


@pytest.mark.privileged
def test_results_json_equals_the_json_lines(report_run: ReportRun) -> None:
    results = results_of(report_run)
    saved = json.loads((report_run.directory / "results.json").read_text())
    assert saved == results


@pytest.mark.privileged
def test_index_html_is_self_contained_with_every_chart(report_run: ReportRun) -> None:
    results = results_of(report_run)
    index = report_run.directory / "index.html"
    assert index.is_file(), f"no {index}"
    text = index.read_text()
    page = ReportPage()
    page.feed(text)
    page.close()

    # Self-contained: nothing to fetch, no script.
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)""", text, re.I)
    assert remote == [], f"network references in {index}"
    assert re.search(r"<script\b", text, re.I) is None and page.scripts == 0
    # Other files: only each experiment's replay page beside it (issue 16), there,
    # and fetching nothing either.
    others = [r for r in page.refs if not r.startswith(("#", "data:"))]
    assert [r for r in others if not re.fullmatch(r"replay-[a-z-]+\.html", r)] == [], \
        "references to other files"
    for r in others:
        replay = (report_run.directory / r).read_text()
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", replay) == [], r
    css = "\n".join(page.styles)
    assert re.search(r"@import|url\((?!\s*['\"]?(?:#|data:))", css) is None, css[:500]
    # Every in-page reference (summary links, SVG glyphs, clip paths) resolves.
    # matplotlib's SVGs repeat ids (figure_1, glyphs like DejaVuSans-30) once inline
    # together; a repeated id that something refers to must at least be the same
    # definition each time, or the browser's first match would draw the wrong thing.
    targets = {r[1:] for r in page.refs if r.startswith("#")}
    targets |= set(re.findall(r"url\(#([^)\s]+)\)", text))
    assert sorted(targets - set(page.ids)) == [], "references to missing ids"
    definitions: defaultdict[str, set[str]] = defaultdict(set)
    for m in re.finditer(r"""<[a-zA-Z][^>]*?\bid=["']([^"']+)["'][^>]*>""", text):
        if m.group(1) in targets:
            definitions[m.group(1)].add(m.group(0))
    assert {k: v for k, v in definitions.items() if len(v) > 1} == {}

    # One section per experiment, in order, and the charts inline in theirs.
    assert page.sections == list(EXPERIMENTS)
    expected = charts_expected(results)
    assert {s: page.charts[s] for s in EXPERIMENTS} == expected
    assert page.svgs == sum(expected.values())  # no stray SVG outside a figure.chart
    for name in ("port-bomb", "fd-leak", "multiplex"):
        assert expected[name] == 1, f"{name} was skipped: no chart"
    for b in results:  # each section's heading says what the JSON says
        status, cls = (("skipped", "skip") if b["skipped"] else
                       ("shown", "ok") if b["ok"] else ("NOT shown", "fail"))
        assert f'<span class="{cls}">({status})</span>' in text, b["experiment"]


# --- the page in headless chromium ----------------------------------------------------------

def ink(png: bytes) -> tuple[float, int]:
    """(share of non-white pixels, distinct colours) of a PNG image."""
    import matplotlib.image
    import numpy as np

    rgb = (matplotlib.image.imread(io.BytesIO(png))[..., :3] * 255).round().astype(np.int32)
    drawn = float((rgb < 230).any(axis=-1).mean())
    colours = len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))
    return drawn, colours


@pytest.mark.privileged
def test_report_in_headless_chromium(report_run: ReportRun, tmp_path: Path) -> None:
    results = results_of(report_run)
    index = report_run.directory / "index.html"
    assert index.is_file(), f"no {index}"
    expected = charts_expected(results)
    shot = tmp_path / "report.png"
    with headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(index.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        assert driver.current_url.startswith("file://")
        # The whole page in one screenshot: the window as tall as the document.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 200, 16_000))
        assert driver.save_screenshot(str(shot)), f"no screenshot at {shot}"
        seen = f"(screenshot: {shot})"
        png = shot.read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 20_000, seen
        drawn, _ = ink(png)
        assert drawn > 0.02, f"the page looks blank {seen}"

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], f"console errors loading {index.as_uri()} {seen}"
        assert driver.title == "tcplab report", seen

        for name in EXPERIMENTS:
            figures = driver.find_elements(By.CSS_SELECTOR, f"section#{name} figure.chart")
            assert len(figures) == expected[name], f"{name}: charts {seen}"
            for figure in figures:
                svgs = figure.find_elements(By.TAG_NAME, "svg")
                assert len(svgs) == 1, f"{name}: <svg> in its figure {seen}"
                svg = svgs[0]
                assert svg.is_displayed(), f"{name}: chart not displayed {seen}"
                rect = svg.rect
                assert rect["width"] > 100 and rect["height"] > 100, f"{name}: {rect} {seen}"
                # Drawn, not an empty box: lines, bars, text in several colours.
                drawn, colours = ink(svg.screenshot_as_png)
                assert drawn > 0.01 and colours > 8, \
                    f"{name}: chart looks empty ({drawn:.1%} drawn, {colours} colours) {seen}"
        assert len(driver.find_elements(By.CSS_SELECTOR, "figure.chart")) == sum(
            expected.values()), seen

        # The console is really read: an error of our own shows up as SEVERE.
        driver.execute_script("console.error('tcplab-test: the console is read')")
        ours = [e for e in driver.get_log("browser") if "tcplab-test" in e["message"]]
        assert [e["level"] for e in ours] == ["SEVERE"], "browser console log not captured"


# --- the text summary, and an experiment that did not show its fact -------------------------

@pytest.mark.privileged
def test_text_summary_lists_every_experiment(report_run: ReportRun) -> None:
    # The text `all` prints (cli/experiment.py: each block, then the summary), made from
    # the session's run: a text-mode `all` of its own cost 20-50 s of the suite.
    results = html.read_results(results_of(report_run))
    assert [json.loads(json.dumps(to_json(r))) for r in results] == [
        {k: v for k, v in b.items() if k != "schema"} for b in results_of(report_run)]
    lines = [line for r in results for line in result_lines(r)] + summary_lines(results)
    n = len(EXPERIMENTS)
    assert lines[-n - 1] == "summary" and lines[-n - 2] == "", lines[-n - 3:]
    for name, line in zip(EXPERIMENTS, lines[-n:], strict=True):
        m = re.fullmatch(rf"  \[(ok  |skip)\] {re.escape(name)} +(\S.*)", line)
        assert m is not None, f"summary line of {name}: {line!r}"
        # The summary repeats what the experiment's own block concluded.
        header = next((i for i, x in enumerate(lines)
                       if re.fullmatch(rf"experiment {re.escape(name)}: (shown|skipped)", x)),
                      None)
        assert header is not None, f"no block 'experiment {name}: shown|skipped'"
        conclusion = next((x for x in lines[header:] if x.startswith("  => ")), None)
        assert conclusion == f"  => {m.group(2)}", name
        assert (m.group(1) == "skip") == lines[header].endswith("skipped"), name
    assert "all experiments took" in report_run.proc.stderr.decode()


#: A server that accepts and closes at once, the request unread (so with RST): no
#: echo, the client never closes first, no TIME_WAIT piles up, the ports come back at
#: once, and `fresh` cannot show EADDRNOTAVAIL. Measured: every connection ends in EOF
#: or ECONNRESET, TIME_WAIT peak 0.
NOT_AN_ECHO_SERVER = """\
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=128)
while True:
    s.accept()[0].close()
"""


def port_bomb_fresh(*args: str) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    r = run_tcplab("experiment", "port-bomb", "--variant", "fresh", "--json", *args,
                   timeout=180)
    if r.returncode in (4, 8):  # privilege missing, not supported: no namespace here
        pytest.skip(f"port-bomb cannot run here: {stderr_of(r).strip()}")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, f"exit {r.returncode}: {lines} {stderr_of(r)}"
    body: dict[str, Any] = json.loads(lines[0])
    return r, body


@pytest.mark.privileged
def test_experiment_that_shows_its_fact_exits_0() -> None:
    r, body = port_bomb_fresh("--ports", "10")
    assert r.returncode == 0, stderr_of(r)
    assert body["ok"] is True and body["skipped"] is None
    [fresh] = body["variants"]
    assert fresh["shown"] is True and fresh["first_error"]["name"] == "EADDRNOTAVAIL"
    assert "did not show its fact" not in r.stderr.decode()


@pytest.mark.privileged
def test_experiment_that_does_not_show_its_fact_exits_1_naming_it() -> None:
    server = f"{shlex.quote(sys.executable)} -c {shlex.quote(NOT_AN_ECHO_SERVER)} {{port}}"
    # 100 ports: more than the bomb's 32 connections in flight, so connect() never runs
    # out while they are open (with 10 it sometimes does, before any connection ends).
    r, body = port_bomb_fresh("--ports", "100", "--server-cmd", server)
    assert body["ok"] is False and body["skipped"] is None, body["fact"]
    [fresh] = body["variants"]
    assert fresh["shown"] is False
    assert fresh["ok"] == 0 and fresh["failed"] == 300  # not one echo came back
    assert fresh["first_error"]["name"] in ("EOF", "ECONNRESET"), fresh["first_error"]
    assert fresh["time_wait_peak"] < 0.9 * fresh["port_range"]
    assert r.returncode == 1
    assert "tcplab: experiment port-bomb did not show its fact" in r.stderr.decode()


# --- tcplab explain -------------------------------------------------------------------------

@pytest.mark.pure
def test_explain_lists_the_topics() -> None:
    r = run_tcplab("explain")
    assert r.returncode == 0, stderr_of(r)
    lines = r.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == list(TOPICS)
    assert all(len(line.split()) > 1 for line in lines)  # each with its title


@pytest.mark.pure
@pytest.mark.parametrize("topic", TOPICS)
def test_explain_each_topic(topic: str) -> None:
    r = run_tcplab("explain", topic)
    assert r.returncode == 0, stderr_of(r)
    lines = r.stdout.decode().splitlines()
    assert lines[1] == "=" * len(lines[0])
    assert lines[-1].startswith("Shown by: tcplab ")
    # No run to quote: every figure says where, when and with which command.
    text = " ".join(r.stdout.decode().split())
    figures = LESSONS[topic].figures
    assert figures, topic
    for fig in figures:
        assert f"Measured on Linux 6.18, 2 cores, on {fig.when}, with `{fig.command}`" in text
        assert " ".join(fig.recorded.split()) in text
    assert text.count("Measured on ") == len(figures)
    assert "Measured here" not in text and "measured in this run" not in text.lower()
@pytest.mark.pure
def test_explain_time_wait_says_60_s_and_corrects_the_notes() -> None:
    r = run_tcplab("explain", "time-wait")
    assert r.returncode == 0, stderr_of(r)
    text = " ".join(r.stdout.decode().split())  # the paragraphs are wrapped at 78 columns
    assert "TIME_WAIT: the active closer waits 60 s" in text
    # 60 s, not "exactly": the timer wheel fires it up to about 2 s late (issue 13).
    assert "keeps it there for 60 seconds (TCP_TIMEWAIT_LEN in include/net/tcp.h)" in text
    assert "up to about 2 s late" in text
    # After close(), FIN_WAIT2 is already a minisocket; TIME_WAIT comes with the peer's FIN.
    assert "a small 'minisocket' in FIN_WAIT2" in text
    assert ("Correction: The original notes say TIME_WAIT lasts '60-120 s' (2MSL). "
            "On Linux it is 60 s, a constant (TCP_TIMEWAIT_LEN), not twice an MSL") in text
    assert "tcp_fin_timeout does not shorten TIME_WAIT" in text


AGENT_FIGURE = "unshare -Urn python3 -m tcplab.agents."  # a figure an agent alone measures


@pytest.mark.pure
@pytest.mark.parametrize(("topic", "says"), [
    ("keepalive", ("TCP_KEEPALIVE_TIME, TCP_KEEPALIVE_INTVL and TCP_KEEPALIVE_PROBES",
                   "7200 s", "75 s", "9 unanswered probes", "TCP_USER_TIMEOUT", "RFC 5482",
                   "ETIMEDOUT, \"Connection timed out\"", "defaultTCPKeepAlive",
                   "15 + 9 x 15 = 150 s")),
    ("ports", ("see", "IP_BIND_ADDRESS_NO_PORT", "IP_LOCAL_PORT_RANGE (Linux 6.3)",
               "ip_local_reserved_ports", "__inet_hash_connect", "inet_csk_find_open_port")),
    ("orphans", ("FIN_WAIT2 minisocket", "'ss -s' prints as \"timewait\"", "tcp_max_orphans",
                 "tcp_orphan_retries", "too many orphaned sockets", "tcp_fin_timeout")),
    ("c100k", ("CAP_SYS_RESOURCE", "fs.nr_open", "do_prlimit", "__inet_hash_connect",
               "\"In first pass we try ports of @low parity. inet_csk_get_port() does the "
               "opposite choice.\"", "22.8 s", "6.1 s", "reuseport_select_sock_by_hash",
               "ep_ptable_queue_proc", "sock_inode_cache", "alloc_pid", "kernel.pid_max")),
    ("nagle", ("tcp_nagle_check and tcp_minshall_check", "__tcp_ack_snd_check",
               "TCP_ATO_MIN = HZ/25", "tcp_in_quickack_mode", "tcp_pingpong_thresh",
               "DelayedACKs", "TCP_NODELAY", "TCP_CORK", "two round trips")),
])
def test_explain_new_lessons_name_their_sources_and_figures(topic: str,
                                                            says: tuple[str, ...]) -> None:
    r = run_tcplab("explain", topic)
    assert r.returncode == 0, stderr_of(r)
    text = " ".join(r.stdout.decode().split())
    for words in says:
        if words == "see":  # ports links the lesson it builds on instead of repeating it
            assert "'tcplab explain port-range'" in text
            continue
        assert words in text, words
    # Each names a figure measured by its own experiment, with the command.
    assert f"with `tcplab experiment {topic}`" in text
    assert text.split("Shown by: ")[1].startswith(f"tcplab experiment {topic}")


@pytest.mark.pure
def test_explain_markdown_is_docs_lessons_md() -> None:
    r = run_tcplab("explain", "--markdown")
    assert r.returncode == 0, stderr_of(r)
    docs = (ROOT / "docs" / "lessons.md").read_text()
    assert r.stdout.decode() == docs, \
        "docs/lessons.md is stale: regenerate it with tcplab explain --markdown"


# --- lessons: this run's figures, or none; recorded ones say where and when ------------------

#: The runs the lessons' recorded figures come from: ``tcplab experiment NAME --json``
#: with full counts (fd-leak-keepalive: ``fd-leak --keepalive``; port-bomb-pool-too-small:
#: ``port-bomb --variant pool --variant pool-too-small``; port-bomb-real-link:
#: ``port-bomb --variant real-link``), on Linux 6.18 with 2
#: cores on 2026-11-30, timelines dropped.
LESSON_RUNS = ROOT / "tests" / "data" / "lessons"


def recorded_run(fig: Figures) -> Result:
    if fig.experiment == "c100k":  # its one recorded run (tests/test_c100k_report.py)
        return html.read_results([json.loads((ROOT / "tests" / "data" /
                                              "c100k-100000.json").read_text())])[0]
    name = fig.experiment + ("-keepalive" if "--keepalive" in fig.command else "") + (
        "-pool-too-small" if "pool-too-small" in fig.command else "") + (
        "-real-link" if "real-link" in fig.command else "")
    [r] = html.read_results([json.loads((LESSON_RUNS / f"{name}.json").read_text())])
    return r


@pytest.mark.pure
def test_recorded_figures_are_what_their_runs_measured() -> None:
    by_experiment = 0
    for lesson in LESSONS.values():
        for fig in lesson.figures:
            assert re.fullmatch(r"20\d\d-\d\d-\d\d", fig.when), fig
            # An agent's figure is reproduced in a namespace of its own (issue 13's lessons).
            assert fig.command.startswith(("tcplab ", "ss ", AGENT_FIGURE)), fig
            if fig.experiment:  # the sentence this_run builds from that run's JSON
                assert fig.sentence(recorded_run(fig)) == fig.recorded, (lesson.topic, fig)
                by_experiment += 1
    assert by_experiment == 28


#: Keys of the recorded JSON that their records do not keep: each bomb run's own
#: "schema" (the envelope of `tcplab bomb --json`'s line, not a field of BombResult),
#: and two figures of a threads rule that was since replaced (issue 11).
DROPPED = {".variants[].runs[].schema", ".facts.threads.reference_peer_throughput_share",
           ".facts.threads.reference_peer_p99_factor"}


def lost_keys(before: Any, after: Any, path: str = "") -> set[str]:
    """Keys of ``before`` missing from ``after``, anywhere; a value that differs fails."""
    if isinstance(before, dict):
        assert isinstance(after, dict), path
        lost = {f"{path}.{k}" for k in before if k not in after}
        for k in before.keys() & after.keys():
            lost |= lost_keys(before[k], after[k], f"{path}.{k}")
        return lost
    if isinstance(before, list):
        assert isinstance(after, list) and len(after) == len(before), path
        return set().union(*(lost_keys(b, a, f"{path}[]") for b, a in zip(before, after,
                                                                              strict=True)))
    assert before == after, (path, before, after)
    return set()


@pytest.mark.pure
@pytest.mark.parametrize("path", sorted([*LESSON_RUNS.glob("*.json"),
                                         *(ROOT / "tests" / "data").glob("multiplex_*.json")]),
                         ids=lambda p: p.stem)
def test_recorded_results_round_trip_through_their_records(path: Path) -> None:
    # Each recorded `experiment NAME --json` decodes into its experiment's own Result
    # (typed settings, facts, variants), and to_json gives the same object back: every
    # value equal, no key lost but the DROPPED ones, and decoding that gives the record.
    body = json.loads(path.read_text())
    [r] = html.read_results([body])
    assert type(r) is result_type(body["experiment"]) and type(r) is not Result
    again = json.loads(json.dumps(to_json(r)))
    assert lost_keys({k: v for k, v in body.items() if k != "schema"}, again) <= DROPPED
    assert html.read_results([again]) == [r]


def no_digits(text: str) -> bool:
    return re.search(r"\d", text) is None


@pytest.mark.pure
def test_a_lesson_quotes_this_run_or_says_it_did_not_measure() -> None:
    fd_leak = recorded_run(LESSONS["fd-limit"].figures[0])
    skipped = Result("half-close", ok=False, fact="", skipped="needs a namespace (fix: ...)")
    q = quotes(LESSONS["close-wait"], {"fd-leak": fd_leak, "half-close": skipped})
    # (fd-leak's Go rounds ran in the recorded run: go-drop's and go-keep's are quoted.)
    assert [x.kind for x in q] == ["missing", "run", "run", "run", "missing", "recorded"]
    assert q[0].text == ("The half-close experiment was skipped in this run, so this was not "
                         "measured ('tcplab explain close-wait' quotes a recorded run).")
    assert q[1].text == (f"Measured in this run by the fd-leak experiment: "
                         f"{LESSONS['close-wait'].figures[1].sentence(fd_leak)}.")
    assert q[4].text.startswith("This run's fd-leak experiment did not measure this; "
                                "`tcplab experiment fd-leak --keepalive 2` does")
    assert q[5].text.startswith("Measured on Linux 6.18, 2 cores, on 2026-11-30, with `ss -s`")
    assert no_digits(q[0].text) and no_digits(
        q[4].text.replace("explain close-wait", "").replace("--keepalive 2", ""))

    failed = Result("multiplex", ok=False, fact="failed to run: RuntimeError: boom")
    [m] = quotes(LESSONS["netpoll"], {"multiplex": failed})
    assert m.kind == "missing" and no_digits(m.text), m.text
    assert m.text.startswith("The multiplex experiment failed in this run")

    [h] = quotes(LESSONS["handshake"], {})  # `experiment echo --report`: no handshake
    assert h.kind == "recorded"
    assert h.text.startswith("The handshake experiment was not part of this run; measured on "
                             "Linux 6.18, 2 cores, on 2026-11-30, with `tcplab experiment "
                             "handshake`: 15 packets")


# --- small real runs, their reports, and one page of them all ---------------------------------

#: Small real runs of four experiments (about 20 s in all), each with --json --report.
SMALL_RUNS: dict[str, tuple[str, ...]] = {
    "echo": ("--quick",),
    "port-bomb": ("--variant", "fresh", "--ports", "10"),
    "half-close": ("--quick",),
    "multiplex": ("--quick", "--connections", "10"),
}


@dataclass(frozen=True)
class SmallRuns:
    bodies: dict[str, dict[str, Any]]  # experiment -> its JSON line
    reports: dict[str, Path]  # experiment -> its own --report DIR
    page: Path  # one page of the four results, a skipped and a failed one (see below)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> SmallRuns:
    base = tmp_path_factory.mktemp("small")
    bodies, reports = {}, {}
    for name, args in SMALL_RUNS.items():
        reports[name] = base / name
        r = run_tcplab("experiment", name, *args, "--json", "--report", str(base / name),
                       timeout=300)
        if r.returncode in (4, 8):
            pytest.skip(f"{name} cannot run here: {stderr_of(r).strip()}")
        lines = r.stdout.decode().splitlines()
        assert len(lines) == 1, f"{name}: exit {r.returncode} {lines} {stderr_of(r)}"
        bodies[name] = json.loads(lines[0])
    # One page as `experiment all` writes it, from the four real results, plus the two
    # Results the CLI makes when an experiment cannot run (handshake without root) or
    # raises (here fd-leak: a failure that cannot be caused on purpose).
    results = html.read_results(list(bodies.values()))
    results.append(Result("fd-leak", ok=False,
                          fact="failed to run: RuntimeError: the client flood failed"))
    results.append(Result("handshake", ok=False, fact="",
                          skipped="the handshake experiment needs tracefs (fix: run as root)"))
    page = Path(html.write(results, str(base / "all"), list(bodies.values()),
                           command="tcplab experiment all (tests/test_report.py)"))
    return SmallRuns(bodies, reports, page)


class _Text(HTMLParser):
    """The text a reader sees (style sheets left out), and each lesson box's paragraphs
    with their class."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.boxes: dict[str, list[tuple[str, str]]] = {}  # title -> [(class, text)]
        self.run_with: dict[str, str] = {}  # section -> its "Run with:" line
        self.links: dict[str, str] = {}  # section -> its "Link:" line
        self._skip = 0
        self._box: str | None = None
        self._section = ""
        self._depth = 0
        self._tag: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "section":
            self._section = a.get("id", "")
        if tag == "div" and "lesson" in a.get("class", "").split():
            self._box = ""
        self._tag.append((tag, a.get("class", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1
        if tag == "div" and self._box is not None:
            self._box = None
        if self._tag:
            self._tag.pop()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        tag, cls = self._tag[-1] if self._tag else ("", "")
        if tag == "p" and cls == "meta" and data.startswith("Run with: "):
            self.run_with[self._section] = data
        if tag == "p" and cls == "meta" and data.startswith("Link: "):
            self.links[self._section] = data
        if self._box is not None:
            if tag == "h3":
                self._box = data
                self.boxes[data] = []
            elif tag == "p" and self._box:
                self.boxes[self._box].append((cls, data))


def page_text(path: Path) -> _Text:
    parser = _Text()
    parser.feed(path.read_text())
    parser.close()
    return parser


#: What Python's own notation looks like in text: a dict, tuple or list repr, bytes,
#: None/True/False, a dataclass repr. "[Errno 99]" and "('tcplab states')" are words.
REPR = re.compile(r"\{'[^']*': |\('[^']*', |\['[^']*'[,\]]|\[-?\d[\d.]*(, |\])|\bb'|\bb\"|"
                  r"\bNone\b|\bTrue\b|\bFalse\b|\b[A-Z]\w+\(\w+=|\{\}|\[\]")


@pytest.mark.pure
def test_repr_pattern_finds_python_notation() -> None:
    for python in ("{'ladder': [100, 1000]}", "('fresh', 'pool')", "['threads', 'epoll']",
                   "[100, 1000]", "[5]", "b'still here'", "None", "RoundTrips(host=", "{}"):
        assert REPR.search(python), python
    for words in ("[Errno 99] EADDRNOTAVAIL", "count per state ('tcplab states')",
                  "[S.] SYN-ACK", "ports 1,000 · variants fresh, pool"):
        assert REPR.search(words) is None, words


@pytest.mark.privileged
def test_reports_and_terminal_text_have_no_python_repr(small_runs: SmallRuns) -> None:
    pages = [small_runs.page] + [d / "index.html" for d in small_runs.reports.values()]
    for page in pages:
        text = "\n".join(page_text(page).text)
        found = sorted({m.group(0) for m in REPR.finditer(text)})
        assert found == [], f"{page}: {found}"
    results = html.read_results(list(small_runs.bodies.values()))
    lines = [line for r in results for line in result_lines(r)] + summary_lines(results)
    found = sorted({m.group(0) for line in lines for m in REPR.finditer(line)})
    assert found == [], found


@pytest.mark.privileged
def test_run_with_lines_read_as_settings(small_runs: SmallRuns) -> None:
    seen = page_text(small_runs.page).run_with
    for name, body in small_runs.bodies.items():
        assert seen[name] == f"Run with: {settings_text(body['settings'])}", name
    assert "ports 10 · " in seen["port-bomb"]
    assert seen["echo"].startswith("Run with: server model ")
    assert seen["half-close"] == "Run with: pause between steps 0.3 s"
    # The link each two-ended experiment ran on, as its record says it.
    links = page_text(small_runs.page).links
    for name, body in small_runs.bodies.items():
        if body.get("link"):
            assert links[name] == f"Link: {LinkUsed(**body['link']).words()}", name
    assert links["echo"] == "Link: loopback (one namespace, lo)"


def box_text(boxes: dict[str, list[tuple[str, str]]], topic: str, kind: str) -> str:
    return " ".join(t for cls, t in boxes[LESSONS[topic].title] if cls == kind)


@pytest.mark.privileged
def test_lesson_boxes_quote_this_run(small_runs: SmallRuns) -> None:
    page = page_text(small_runs.page)
    text = " ".join(page.text)
    b = small_runs.bodies
    # Each lesson once, in the section of the experiment that measures it.
    assert sorted(page.boxes) == sorted(lesson.title for lesson in LESSONS.values())
    # No recorded figure of an experiment that is on the page (unless this run measured
    # the very same: half-close's states are words, not numbers).
    run = {r.experiment: r for r in html.read_results(list(b.values()))}
    for lesson in LESSONS.values():
        for fig in lesson.figures:
            if fig.experiment in run and fig.sentence(run[fig.experiment]) != fig.recorded:
                assert fig.recorded not in text, (lesson.topic, fig.recorded)

    # netpoll: this run's 10 connections, its threads row, none of the recorded 10,000.
    mux = box_text(page.boxes, "netpoll", "run")
    threads = next(v for v in b["multiplex"]["variants"] if v["model"] == "threads")
    assert mux.startswith("Measured in this run by the multiplex experiment: at 10 connections")
    assert f"thread per connection at 10 connections: {plural(threads['threads'], 'thread')}" \
        in mux
    assert f"{threads['echoes_per_s']:,.0f} echoes/s" in mux
    assert "10,000" not in mux and "8,733" not in mux

    # port-range: the fresh variant's own first error.
    bomb = box_text(page.boxes, "port-range", "run")
    [fresh] = b["port-bomb"]["variants"]
    e = fresh["first_error"]
    assert f"with a {fresh['port_range']:,}-port range" in bomb
    if e["errno"] == 99:
        assert f"after {plural(e['after_ok'], 'connection')} in {e['at_s']:.2f} s" in bomb
    # Variants that did not run are not quoted; their recorded figure is not either.
    assert "pooled" not in bomb and "127.0.0.2" not in bomb
    assert box_text(page.boxes, "port-range", "missing").startswith(
        "This run's port-bomb experiment did not measure this; `tcplab experiment port-bomb` "
        "does")

    # time-wait: the half-close run's own timer readings.
    left = [s["client"]["timer_left_s"] for s in b["half-close"]["facts"]["steps"]
            if s["client"] and s["client"]["state"] == "TIME_WAIT"]
    assert f"in TIME_WAIT with {left[0]:.1f} s left, and {left[-1]:.1f} s left" in \
        box_text(page.boxes, "time-wait", "run")

    # fd-leak failed, handshake skipped: said so, no number quoted as this run's.
    for topic, why in (("fd-limit", "failed in this run"),
                       ("handshake", "was skipped in this run")):
        missing = box_text(page.boxes, topic, "missing")
        assert why in missing and no_digits(missing), missing
        assert box_text(page.boxes, topic, "run") == ""
        assert box_text(page.boxes, topic, "recorded") == ""


@pytest.mark.privileged
def test_small_report_in_headless_chromium(small_runs: SmallRuns, tmp_path: Path) -> None:
    shot = tmp_path / "lessons.png"
    with headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(small_runs.page.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 200, 16_000))
        assert driver.save_screenshot(str(shot)), f"no screenshot at {shot}"
        seen = f"(screenshot: {shot})"
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == [], seen
        visible = driver.execute_script("return document.body.innerText")
        found = sorted({m.group(0) for m in REPR.finditer(visible)})
        assert found == [], f"Python notation on the page: {found} {seen}"
        boxes = driver.find_elements(By.CSS_SELECTOR, "div.lesson")
        assert len(boxes) == len(LESSONS), seen
        for box in boxes:
            assert box.is_displayed(), seen
            rect = box.rect
            assert rect["width"] > 300 and rect["height"] > 100, f"{rect} {seen}"
        quoted = driver.find_elements(By.CSS_SELECTOR, "div.lesson p.run")
        assert quoted and all(q.is_displayed() and q.text.startswith("Measured in this run by ")
                              for q in quoted), seen
