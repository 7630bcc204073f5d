"""The self-contained HTML report of ``tcplab experiment ... --report DIR``.

One index.html (inline CSS and SVG: nothing to fetch, no script) and
results.json with every experiment's result as ``--json`` prints it; with the
experiments' live recordings, a replay-NAME.html per experiment (the live page
with the recording embedded: its script is inline, nothing fetched either),
which index.html embeds in the experiment's section as an iframe.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tcplab.errors import errno_name
from tcplab.experiments import (
    c100k,
    fd_leak,
    handshake,
    keepalive,
    multiplex,
    port_bomb,
    ports,
    reset,
    restart,
    syn_queue,
)
from tcplab.experiments.result import Result, decode
from tcplab.report import charts
from tcplab.report.lessons import LESSONS, placement, quotes
from tcplab.report.prose import worded
from tcplab.report.terminal import (
    C100K_HEAD,
    NOT_RECORDED,
    c100k_bars,
    c100k_capacity_cells,
    c100k_capacity_summary,
    c100k_ledger_cells,
    c100k_ledger_total,
    c100k_model_cells,
    c100k_notes,
    multiplex_cells,
    multiplex_row_notes,
    result_lines,
    settings_text,
)
from tcplab.words import plural

AnyResult = Result[Any, Any, Any]

CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #666; } .ok { color: #2a7a2a; } .fail { color: #b00; } .skip { color: #886600; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
.lesson { background: #f3f7fb; padding: 0.6rem 0.9rem; border-left: 4px solid #1f77b4;
          margin: 1rem 0; }
.lesson .run { border-left: 3px solid #2a7a2a; padding-left: 0.5rem; }
.lesson .recorded { border-left: 3px solid #aaa; padding-left: 0.5rem; color: #555; }
.lesson .missing { border-left: 3px solid #886600; padding-left: 0.5rem; color: #555; }
iframe.replay { width: 100%; height: 42rem; border: 1px solid #ccc; }
tr.mark td { font-weight: bold; background: #fff6dd; }
"""


def _charts(r: AnyResult) -> list[tuple[str, str]]:
    """(caption, svg) pairs for one experiment."""
    out: list[tuple[str, str]] = []
    if isinstance(r, port_bomb.Result) and r.variants:
        out.append(("TIME_WAIT over time, per variant", charts.port_bomb(r.variants)))
    if isinstance(r, fd_leak.Result) and r.timeline:
        out.append(("The leaking server over time",
                    charts.fd_leak(r.timeline, r.facts.fd_limit if r.facts else None)))
    if isinstance(r, multiplex.Result) and r.variants:
        out.append(("The C10k table as charts: echoes/s and p99 per model against "
                    "connections (a red cross: a collapsed row, most connections failed), RSS "
                    "per connection and OS threads", charts.multiplex(r.variants)))
    if isinstance(r, c100k.Result) and r.facts is not None and r.workers:
        n, k = r.facts.connections, r.facts.workers
        out.append(("The accept histogram: connections each server worker held at the peak, "
                    "SO_REUSEPORT (a listener a worker, the kernel picks one by a hash of the "
                    "4-tuple) beside one listener shared by every worker (whoever wakes first "
                    "accepts)", charts.accept_histogram(c100k_bars(r), n / k if k else None)))
    if isinstance(r, handshake.Result) and r.facts is not None and r.facts.sequence:
        out.append(("The connection's packets as a sequence diagram",
                    charts.sequence(r.facts.sequence)))
    return out


def _errors(r: AnyResult) -> list[str]:
    """Errors seen, verbatim."""
    seen: list[str] = []
    if isinstance(r, port_bomb.Result):
        for v in r.variants:
            e = v.first_error
            if e:
                seen.append(f"{v.name}: [Errno {e.errno}] {e.name}: {e.message}")
    if isinstance(r, fd_leak.Result) and r.facts is not None and r.facts.emfile_log_line:
        seen.append(f"server log: {r.facts.emfile_log_line}")
    if isinstance(r, restart.Result) and r.facts is not None:
        seen += [f"bind() {'with' if b.new_reuseaddr else 'without'} SO_REUSEADDR: [Errno "
                 f"{b.errno}] {errno_name(b.errno)}: {b.error}" for b in r.facts.binds
                 if b.errno is not None]
    if isinstance(r, reset.Result) and r.facts is not None:
        seen += [f"{c.case}: the client's read: {reset.read_words(c)}"
                 for c in r.facts.closes if c.read_errno is not None]
    if isinstance(r, syn_queue.Result) and r.facts is not None:
        seen += [f"{p.round}, {p.phase}: the clients' recv(): "
                 f"{syn_queue.errors_words(p.errors)}" for p in r.facts.phases if p.errors]
    if isinstance(r, keepalive.Result) and r.facts is not None:
        seen += [f"{s.case}: recv(): [Errno {s.errno}] {errno_name(s.errno)}: {s.error}"
                 for s in r.facts.silences if s.errno is not None]
    if isinstance(r, ports.Result) and r.facts is not None:
        seen += [f"{p.case}{' to ' + p.destination if p.destination else ''}: {p.error}: "
                 f"{p.error.message}" for p in r.facts.cases if p.error]
    return seen


def _lesson_box(topic: str, run: Mapping[str, AnyResult]) -> str:
    """One lesson: its explanation, then its figures from this run (or, for an
    experiment that did not run here, from a recorded run, saying when and where)."""
    lesson = LESSONS[topic]
    paras = "".join(f"<p>{html.escape(' '.join(p.split()))}</p>"
                    for p in lesson.text.strip().split("\n\n"))
    figures = "".join(
        f'<p class="{q.kind}">{html.escape(q.text)}</p>'
        for q in quotes(lesson, run))
    fix = (f"<p><em>Correction to the original notes:</em> "
           f"{html.escape(lesson.correction)}</p>" if lesson.correction else "")
    return (f'<div class="lesson"><h3>{html.escape(lesson.title)}</h3>{paras}{figures}{fix}'
            "</div>")


def _multiplex(r: multiplex.Result) -> str:
    """The C10k table, a collapsed row marked, and every failure with what it means."""
    head = ("model", "connections", "threads", "epoll watches", "RSS/conn", "CPU/echo", "p99",
            "echoes/s", "all accepted", "failed")
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for v in r.variants:
        c = multiplex_cells(v)
        cells = (v.model, f"{v.connections:,}", f"{v.threads or 0:,}",
                 f"{v.epoll_watches or 0:,}", c["rss"], c["cpu"], c["p99"], c["eps"],
                 c["accepted"], c["failed"])
        cls = ' class="fail"' if v.collapsed else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells)
                    + "</tr>")
    rows.append("</table>")
    notes = [line for v in r.variants for line in multiplex_row_notes(v)]
    if notes:
        rows.append("<p>Failures seen, and what they mean:</p><ul>"
                    + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if r.facts is not None and r.facts.rules:
        rows.append(f'<p class="meta">Verdict: {html.escape(r.facts.rules)}.</p>')
    return "\n".join(rows)


def _table(rows: Sequence[Sequence[str]], marked: Sequence[bool] | None = None) -> str:
    """A header row and body rows as an HTML table; a marked row is shown as one."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in rows[0]) + "</tr>"]
    for i, row in enumerate(rows[1:]):
        cls = ' class="mark"' if marked is not None and marked[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>")
    return "".join(out) + "</table>"


def _c100k(r: c100k.Result) -> str:
    """Every row, the spread in words, the ledger, the limits and every note."""
    from tcplab.report.prose import c100k_spread_words

    f = r.facts
    assert f is not None
    parts = ["<h3>Every model at the largest N it held</h3>",
             _table([C100K_HEAD, *c100k_model_cells(r)[0:]]),
             '<p class="meta">The first row is the default model'
             + ("." if r.default is not None else
                f"; its record keeps held, failed, server memory and its workers "
                f"('{NOT_RECORDED}': not recorded).") + "</p>"]
    spread = c100k_spread_words(r)
    if spread:
        parts.append(f"<p>{html.escape(spread)}.</p>")
    workers = [("SO_REUSEPORT" if label.endswith("worker)") else "shared", b)
               for label, bars in c100k_bars(r) for b in bars]
    if workers:
        parts.append(_table([("listener", "worker pid", "held", "accepted", "RSS growth",
                              "CPU"), *[(kind, str(b.pid), f"{b.held:,}",
                                         "-" if b.accepted is None else f"{b.accepted:,}",
                                         f"{b.rss_growth / 2**20:,.1f} MiB", f"{b.cpu_s:.2f} s")
                                        for kind, b in workers]]))
    if f.ledger is not None:
        parts.append("<h3>The kernel's memory per socket (the ledger)</h3>")
        if f.ledger.rows:
            parts.append(_table(c100k_ledger_cells(f.ledger)))
        parts.append(f"<p>{html.escape(c100k_ledger_total(f.ledger))}.</p>")
    if f.capacity is not None:
        cells = c100k_capacity_cells(f.capacity)
        parts += ["<h3>The limits on this machine, fewest connections first</h3>",
                  _table(cells, [("hit first" in row[4] or row[4].startswith("next"))
                                 for row in cells[1:]]),
                  f"<p>{html.escape(c100k_capacity_summary(f.capacity))}.</p>",
                  "<ul>" + "".join(f"<li><strong>{html.escape(c.name)}</strong>: "
                                   f"{html.escape(c.note)}</li>" for c in f.capacity.rows)
                  + "</ul>"]
    notes = c100k_notes(r)
    if notes:
        parts.append("<p>Failures, notes and stops, all of them:</p><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)


def replay_events(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One experiment's part of a recording, its clock from 0 (its first event)
    for the replay page; everything else as recorded."""
    t0 = events[0]["t"] if events else 0.0
    return [{**e, "t": round(e["t"] - t0, 3)} for e in events]


def replay_file(experiment: str) -> str:
    """The replay page of one experiment, next to index.html."""
    return f"replay-{experiment}.html"


def _write_replay(directory: str, experiment: str, events: Sequence[Mapping[str, Any]]
                  ) -> str:
    """``replay-NAME.html``: the live page playing the experiment's recording, embedded
    (report/live_page.py: nothing fetched, it works offline from the file)."""
    from tcplab.report.live_page import page

    name = replay_file(experiment)
    with open(os.path.join(directory, name), "w") as f:
        f.write(page(f"tcplab experiment {experiment}: the replay", replay_events(events)))
    return name


def _section(r: AnyResult, index: int, run: Mapping[str, AnyResult], topics: list[str],
             replay: str | None = None) -> str:
    status, cls = (("skipped", "skip") if r.skipped else
                   ("shown", "ok") if r.ok else ("NOT shown", "fail"))
    parts = [f'<section id="{html.escape(r.experiment)}">',
             f"<h2>{index}. {html.escape(r.experiment)} "
             f'<span class="{cls}">({status})</span></h2>',
             f"<p><strong>{html.escape(r.skipped or r.fact)}</strong></p>"]
    run_with = "" if r.settings is None else settings_text(r.settings)
    if run_with:
        parts.append(f'<p class="meta">Run with: {html.escape(run_with)}</p>')
    if r.link is not None:
        parts.append(f'<p class="meta">Link: {html.escape(r.link.words())}</p>')
    if replay is not None:
        # The replay is embedded where it is read: an iframe of the page beside
        # index.html (its script stays there; this page has none), loaded when
        # scrolled to, and a link to open it on its own, full screen for a projector.
        src = html.escape(replay)
        parts.append(f'<p>The sockets of its namespaces as it ran, replayed (state diagram, '
                     f'counts, transitions; pause and slow motion; <a href="{src}">open it '
                     f'on its own</a>):</p><iframe class="replay" src="{src}" loading="lazy" '
                     f'title="{html.escape(r.experiment)}: the replay"></iframe>')
    for caption, svg in ([] if r.skipped else _charts(r)):
        parts.append(f'<figure class="chart">{svg}<figcaption>{html.escape(caption)}'
                     "</figcaption></figure>")
    if isinstance(r, multiplex.Result) and r.variants and not r.skipped:
        parts.append(_multiplex(r))
    if isinstance(r, c100k.Result) and r.facts is not None and not r.skipped:
        parts.append(_c100k(r))
    errors = _errors(r)
    if errors:
        parts.append("<p>Errors seen, verbatim:</p><pre>"
                     + html.escape("\n".join(errors)) + "</pre>")
    if not r.skipped:
        parts.append("<details><summary>The terminal report</summary><pre>"
                     + html.escape("\n".join(result_lines(r))) + "</pre></details>")
    for topic in topics:
        parts.append(_lesson_box(topic, run))
    parts.append("</section>")
    return "\n".join(parts)


def read_results(bodies: Sequence[Mapping[str, Any]]) -> list[AnyResult]:
    """results.json (or ``--json`` lines) back into each experiment's own Result."""
    return [decode(body) for body in bodies]


def write(results: Sequence[AnyResult], directory: str, bodies: list[dict[str, Any]],
          command: str | None = None,
          recordings: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> str:
    """``command``: the command line that made the results, shown under the title.
    ``bodies``: the results as ``--json`` printed them (results.json).
    ``recordings``: experiment -> its live events (cli/live.py's ExperimentLive),
    each written as a replay page that its section links to."""
    results = [worded(r) for r in results]
    os.makedirs(directory, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    cores = os.cpu_count()
    made = (f"<p class=meta>Made with <code>{html.escape(command)}</code></p>"
            if command else "")
    head = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>tcplab report</title><style>{CSS}</style></head><body>"
            f"<h1>tcplab report</h1><p class=meta>{html.escape(when)} on "
            f"{html.escape(platform.node())}, Linux {html.escape(platform.release())}"
            f"{', ' + plural(cores, 'core') if cores else ''}</p>{made}")
    summary = ["<table><tr><th>experiment</th><th>result</th><th>what it showed</th></tr>"]
    for r in results:
        mark = "skipped" if r.skipped else ("shown" if r.ok else "NOT shown")
        summary.append(f"<tr><td><a href='#{html.escape(r.experiment)}'>"
                       f"{html.escape(r.experiment)}</a></td><td>{mark}</td>"
                       f"<td>{html.escape(r.skipped or r.fact)}</td></tr>")
    summary.append("</table>")
    run = {r.experiment: r for r in results}
    where = placement([r.experiment for r in results])
    replays = {name: _write_replay(directory, name, events)
               for name, events in (recordings or {}).items() if events}
    body = "\n".join(_section(r, i, run, where[r.experiment], replays.get(r.experiment))
                      for i, r in enumerate(results, 1))
    path = os.path.join(directory, "index.html")
    with open(path, "w") as f:
        f.write(head + "\n".join(summary) + body + "</body></html>\n")
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump(bodies, f, indent=1)
    return path
