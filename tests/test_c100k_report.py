"""Experiment c100k's words and pictures, from its two recorded results.

tests/data/c100k-100000.json is the default run as root (100,000 held on uvloop with
SO_REUSEPORT, then one shared listener, epoll, asyncio, and the threads ladder that
kernel.pid_max stops); tests/data/c100k-3000.json a small run with --process-fds 1024.
Nothing runs here: each record is decoded, worded, and rendered as the terminal and the
HTML report show it, and the checks are what a reader would check against the record.
"""

from __future__ import annotations

import html as std_html
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tcplab.experiments import c100k
from tcplab.experiments.result import decode
from tcplab.report import html
from tcplab.report.lessons import LESSONS, quotes
from tcplab.report.prose import c100k_spread_words, worded
from tcplab.report.terminal import result_lines
from tests.helpers import ReportPage, headless_chromium

DATA = Path(__file__).resolve().parent / "data"
RECORDS = ("c100k-100000.json", "c100k-3000.json")


def recorded(name: str) -> c100k.Result:
    r = decode(json.loads((DATA / name).read_text()))
    assert isinstance(r, c100k.Result)
    return r


def numbers(text: str) -> list[float]:
    """Every number in a text, commas dropped: '100,000 ... 11.8 s' -> [100000.0, 11.8]."""
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


@pytest.mark.pure
@pytest.mark.parametrize("name", RECORDS)
def test_the_fact_quotes_the_records_own_figures(name: str) -> None:
    r = recorded(name)
    f = r.facts
    assert f is not None and f.ledger is not None and f.ledger.bytes_per_connection
    fact = worded(r).fact
    assert not fact.startswith("NOT shown") and r.ok
    held, asked, seconds, servers, clients, user, kib, kernel = numbers(fact)[:8]
    assert (held, asked) == (r.held, f.connections)
    assert seconds == round(f.held_s or 0, 1)
    assert (servers, clients) == (f.workers, f.processes)
    assert user == round(r.rss_growth_per_conn or 0)
    assert kib * 1024 == f.max_rss_per_conn
    assert kernel == round(f.ledger.bytes_per_connection)
    assert "open and echoing at once" in fact and "server user memory per connection" in fact


@pytest.mark.pure
def test_a_run_that_did_not_show_it_says_each_problem_first() -> None:
    # The experiment's own problems are already words; the fact keeps every one, first.
    r = recorded("c100k-3000.json")
    assert r.facts is not None
    problems = ("it held 2,990 of 3,000", "10 failed")
    bad = replace(r, ok=False, held=2_990, failed=10,
                  facts=replace(r.facts, held=2_990, failed=10, problems=problems))
    fact = worded(bad).fact
    assert fact.startswith("NOT shown: it held 2,990 of 3,000; 10 failed; ")
    assert "held 2,990 of 3,000 connections" in fact and ", 10 failed" in fact
    lines = result_lines(bad)
    assert lines[0] == "experiment c100k: NOT SHOWN"
    assert "  not shown: it held 2,990 of 3,000" in lines and "  not shown: 10 failed" in lines


@pytest.mark.pure
@pytest.mark.parametrize("name", RECORDS)
def test_the_terminal_shows_every_row_bar_cache_and_limit(name: str) -> None:
    r = recorded(name)
    f = r.facts
    assert f is not None and f.ledger is not None and f.capacity is not None
    lines = result_lines(r)
    text = "\n".join(lines)
    assert lines[0] == "experiment c100k: shown"
    assert lines[-1] == f"  => {worded(r).fact}"
    # The default row first, then every other row with its own held figure.
    rows = [line.split() for line in lines
            if line.split()[:1] in (["uvloop"], ["epoll"], ["asyncio"], ["threads"])]
    assert rows[0][:7] == ["uvloop", "reuseport", str(f.workers), str(f.processes),
                           f"{f.connections:,}", f"{r.held:,}", f"{r.failed:,}"]
    for m in r.models:
        assert [m.model, m.listener, f"{m.asked:,}", f"{m.held:,}"] in [
            [x[0], x[1], x[4], x[5]] for x in rows], m.name
    # Every worker's bar, SO_REUSEPORT's and the shared listener's, with its own numbers.
    shared = next(m for m in r.models if m.listener == "shared")
    for b in [*r.workers, *shared.bars]:
        [line] = [x for x in lines if x.strip().startswith(f"pid {b.pid} ")]
        assert line.split()[2] == f"{b.held:,}" and f"(accepted {b.accepted:,})" in line
    assert text.index("SO_REUSEPORT (a listener per worker):") < text.index(
        "one shared listener:")
    assert c100k_spread_words(r) is not None
    # The ledger's TCP row: the tcp_sock's object size and how it was counted.
    [tcp] = [x.split() for x in lines if x.startswith("  TCP ")]
    row = next(x for x in f.ledger.rows if x.cache == "TCP")
    assert tcp[:3] == ["TCP", "TCP", f"{row.objsize:,}"] and tcp[-1] == "measured"
    assert tcp[6] == f"{row.bytes / f.ledger.sockets:,.0f}"
    # The limits, fewest connections first, the one hit first and the next marked.
    limits = [x for x in lines if any(x.startswith(f"  {c.name} ") for c in f.capacity.rows)]
    names = [next(c.name for c in f.capacity.rows if x.startswith(f"  {c.name} "))
             for x in limits]
    assert names == [c.name for c in sorted(f.capacity.rows, key=lambda c: c.allows)]
    first = next(x for x in limits if x.startswith(f"  {f.capacity.hit_first.name} "))
    assert first.endswith("hit first") and f"{f.capacity.hit_first.allows:,}" in first
    assert f.capacity.next is not None
    assert next(x for x in limits if x.startswith(f"  {f.capacity.next.name} ")).endswith(
        "next")


@pytest.mark.pure
def test_the_threads_ladders_stop_is_printed_in_its_own_words() -> None:
    r = recorded("c100k-100000.json")
    [last] = [m for m in r.models if m.stopped_because]
    assert last.model == "threads" and last.asked == 10_000
    text = " ".join(" ".join(result_lines(r)).split())
    assert f"threads stopped at 10,000: {last.stopped_because}" in text
    assert "kernel.pid_max is 32,768 for the whole machine" in text


@pytest.mark.pure
def test_the_spread_words_are_the_histograms_figures() -> None:
    r = recorded("c100k-100000.json")
    words = c100k_spread_words(r)
    assert words == ("SO_REUSEPORT: 16,460 to 16,756 a worker (CV 0.006, a uniform hash "
                     "expects 0.0071); one shared listener: 2.1x between the busiest and the "
                     "idlest (CV 0.25), 3 of 6 workers stopped at 19,985, at the fd limit of "
                     "20,000 a process")
    held = sorted(b.held for b in r.workers)
    assert (held[0], held[-1]) == (16_460, 16_756)


@pytest.mark.pure
@pytest.mark.parametrize("name", RECORDS)
def test_the_lesson_quotes_this_run(name: str) -> None:
    # The lesson box of a page about this run: every figure from this run's record.
    r = recorded(name)
    q = quotes(LESSONS["c100k"], {"c100k": r})
    assert [x.kind for x in q] == ["run"] * len(LESSONS["c100k"].figures)
    text = " ".join(x.text for x in q)
    assert f"held {r.held:,} of {r.facts.connections:,} connections" in text  # type: ignore[union-attr]
    assert f"{r.facts.processes} client processes, one source address each" in text  # type: ignore[union-attr]
    if name == "c100k-100000.json":  # the recorded figures are this very run's
        assert [x.text.split(": ", 1)[1] for x in q] == [
            f.recorded + "." for f in LESSONS["c100k"].figures]


def write_report(tmp_path: Path) -> Path:
    bodies = [json.loads((DATA / n).read_text()) for n in RECORDS]
    return Path(html.write(html.read_results(bodies), str(tmp_path / "report"), bodies,
                           command="tcplab experiment c100k (tests/test_c100k_report.py)"))


@pytest.mark.loopback
def test_the_html_has_the_histogram_chart_the_tables_and_nothing_to_fetch(
        tmp_path: Path) -> None:
    index = write_report(tmp_path)
    text = index.read_text()
    page = ReportPage()
    page.feed(text)
    page.close()
    # Both records have a section (one id twice: two runs of one experiment), each with
    # its accept-histogram chart, inline; nothing to fetch, no script.
    assert page.sections == ["c100k", "c100k"]
    assert page.charts["c100k"] == 2 and page.svgs == 2
    assert page.scripts == 0 and re.search(r"<script\b", text, re.I) is None
    assert re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I) == []
    assert [r for r in page.refs if not r.startswith(("#", "data:"))] == []
    big = recorded("c100k-100000.json")
    for b in big.workers:  # the chart's labels are the bars' own numbers
        assert f">{b.held:,}<" in text
    assert "<td>TCP</td><td>TCP</td><td>2,368 B</td>" in text
    assert '<tr class="mark"><td>fds per process</td><td>20,000</td><td>19,936</td>' in text
    assert std_html.escape(worded(big).fact) in text
    assert std_html.escape(f"threads stopped at 10,000: "
                            f"{big.models[-1].stopped_because}") in text


@pytest.mark.loopback
def test_the_html_report_opens_offline_in_headless_chromium(tmp_path: Path) -> None:
    index = write_report(tmp_path)
    with headless_chromium(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(index.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        charts = driver.find_elements(By.CSS_SELECTOR, "section#c100k figure.chart svg")
        assert len(charts) == 2
        for svg in charts:
            assert svg.is_displayed()
            assert svg.rect["width"] > 300 and svg.rect["height"] > 100, svg.rect
        visible = driver.execute_script("return document.body.innerText")
        assert "uvloop with SO_REUSEPORT held 100,000 of 100,000 connections" in visible


@pytest.mark.pure
def test_a_run_without_the_ledger_or_the_shared_listener_says_so() -> None:
    # As an ordinary user /proc/slabinfo is root's (observe/slab.py: rows empty, why_not
    # says why); with --listener reuseport there is no shared row. The record is the
    # real small one with those parts as such a run records them.
    r = recorded("c100k-3000.json")
    assert r.facts is not None and r.facts.ledger is not None
    why = ("cannot read /proc/slabinfo: permission denied (the file is mode 0400) (run as "
           "root for the kernel's per-cache figures)")
    ledger = replace(r.facts.ledger, rows=(), why_not=why, bytes_per_socket=None,
                     measured_bytes_per_socket=None, estimated_bytes_per_socket=None,
                     bytes_per_connection=None, slab_bytes_per_socket=None,
                     slab_bytes_per_connection=None)
    spreads = replace(r.facts.spreads, shared_cv=None, shared_max_min=None)  # type: ignore[arg-type]
    user = replace(r, facts=replace(r.facts, ledger=ledger, spreads=spreads),
                   models=[m for m in r.models if m.listener != "shared"])
    fact = worded(user).fact
    assert fact.endswith("the kernel's bytes per socket not read (cannot read "
                         "/proc/slabinfo: permission denied)")
    text = " ".join(" ".join(result_lines(user)).split())
    assert text.count(f"the kernel's slab caches were not read: {why}") == 1
    assert "one shared listener" not in text and "SO_REUSEPORT (a listener per worker)" in text
    assert c100k_spread_words(user) == "SO_REUSEPORT: 733 to 791 a worker (CV 0.032, a " \
        "uniform hash expects 0.032)"
    # The lesson quotes the rest of this run and says the ledger was not measured.
    q = quotes(LESSONS["c100k"], {"c100k": user})
    [missing] = [x for x in q if x.kind != "run"]
    assert missing.kind == "missing" and "did not measure this" in missing.text
    assert len(q) == len(LESSONS["c100k"].figures)
