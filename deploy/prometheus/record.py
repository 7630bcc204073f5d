"""Record the input series of alerts_test.yml from real runs (issue 15).

As root, from the checkout (its virtual environment has tcplab installed)::

    .venv/bin/python deploy/prometheus/record.py [--out deploy/prometheus/alerts_test.yml]

Two runs, each in a private network namespace of its own (tcplab's Sandbox: a
new network namespace; nothing runs in, or is written to, the host's):

* fd-leak: tests/leaky_server.py (a server written without tcplab) with
  LEAK=true and a soft fd limit of 128 never closes what its peers closed:
  CLOSE_WAIT and fds climb to the limit, accept() fails with EMFILE, the accept
  queue fills and the kernel drops SYNs (ListenOverflows); then it is killed.
* port-bomb: ``tcplab bomb`` against the same server without LEAK, with
  ip_local_port_range narrowed to 1,000 ports and tcp_tw_reuse = 0 inside the
  namespace: the client's TIME_WAIT sockets fill the range toward
  127.0.0.1:8080 until connect() fails with EADDRNOTAVAIL; then TIME_WAIT (60 s)
  runs out.

After each step ``tcplab exporter --netns PID`` (PID: the namespace's holder),
on 127.0.0.1, is scraped once; the series the rules read are written as
promtool input series, one scrape per minute of test time (the rules' ``for:``
durations are minutes, a run's steps seconds apart), with the ``instance`` and
``job`` labels a Prometheus scrape adds. Which alerts must fire at which minute
is worked out here from the recorded values, the thresholds and ``for:``
durations of alerts.yml (read from it), independently of Prometheus: promtool
then checks the rules against it. The expected annotations are alerts.yml's
templates filled in here; only the template forms used there are understood.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from tcplab.experiments.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LEAKY = ROOT / "tests" / "leaky_server.py"
PORT = 8080
#: The series alerts.yml reads; everything else in a scrape is left out.
SERIES = ("tcplab_process_close_wait_sockets", "tcplab_process_open_fds",
          "tcplab_process_max_fds", "tcplab_ephemeral_ports_used",
          "tcplab_ephemeral_port_range_size", "tcplab_tcp_listen_overflows_total",
          "tcplab_tcp_listen_drops_total")

Key = tuple[str, tuple[tuple[str, str], ...]]  # (name, sorted labels)


@dataclass
class Recording:
    name: str
    instance: str = ""
    scrapes: list[dict[Key, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened before each scrape


# -- the runs ----------------------------------------------------------------------------

CLIENT = f"""
import socket, sys, time
PORT = {PORT}
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "echo":  # one at a time: connect, one echo, close first
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", PORT), timeout=5) as c:
            c.sendall(b"x"); c.recv(1)
else:  # all at once; whatever is not answered within 3 s is closed unanswered
    socks = []
    for _ in range(n):
        s = socket.socket(); s.setblocking(False); s.connect_ex(("127.0.0.1", PORT))
        socks.append(s)
    time.sleep(3)
    for s in socks:
        s.close()
"""


@contextmanager
def exporter(holder: int) -> Iterator[str]:
    """``tcplab exporter --netns HOLDER`` on 127.0.0.1 (host:port), stopped afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "tcplab", "exporter", "--netns", str(holder),
                             "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://(127\.0\.0\.1:\d+)/metrics", line)
        if not m:
            _, err = proc.communicate()
            raise SystemExit(f"the exporter did not start: {line!r} {err!r}")
        yield m.group(1)
    finally:
        proc.kill()
        proc.communicate()


def scrape(rec: Recording, note: str) -> None:
    with urllib.request.urlopen(f"http://{rec.instance}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    got: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in SERIES:
                labels = {**s.labels, "instance": rec.instance, "job": "tcplab"}
                got[(s.name, tuple(sorted(labels.items())))] = s.value
    # what the kernel counted since the last scrape, in the note, from the scrape itself
    if rec.scrapes:
        for name, what in (("tcplab_tcp_listen_overflows_total", "ListenOverflows"),):
            now = sum(v for (n, _), v in got.items() if n == name)
            grown = now - sum(v for (n, _), v in rec.scrapes[-1].items() if n == name)
            if grown > 0:
                note += f" (TcpExt {what} +{grown:.0f})"
    rec.scrapes.append(got)
    rec.notes.append(note)
    print(f"  {rec.name} {len(rec.scrapes) - 1}m: {note}", file=sys.stderr)


def start_server(sb: Sandbox, leak: bool, log: IO[bytes], fd_limit: int | None = None
                 ) -> subprocess.Popen[bytes]:
    """tests/leaky_server.py on PORT inside the sandbox; its stderr (one "accept: Too
    many open files" line per EMFILE) goes to ``log``."""
    env = {**os.environ, "LEAK": "true" if leak else ""}
    server: subprocess.Popen[bytes] = sb.popen(
        [sys.executable, str(LEAKY), str(PORT)], fd_limit=fd_limit, env=env,
        stdout=subprocess.PIPE, stderr=log)
    assert server.stdout is not None
    if server.stdout.readline() != f"listening {PORT}\n".encode():
        raise SystemExit("tests/leaky_server.py did not start")
    return server


def emfile_lines(log: IO[bytes]) -> int:
    # pread: the server writes through the same open file, at the shared offset
    return os.pread(log.fileno(), 1 << 24, 0).count(b"accept: Too many open files")


def client(sb: Sandbox, mode: str, n: int) -> None:
    r = sb.run([sys.executable, "-c", CLIENT, mode, str(n)], stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"the {mode} client failed: {r.stderr.decode(errors='replace')}")


def run_fd_leak() -> Recording:
    rec = Recording("fd-leak")
    with Sandbox({}) as sb, tempfile.TemporaryFile() as log:
        assert sb.holder is not None
        server = start_server(sb, leak=True, log=log, fd_limit=128)
        with exporter(sb.holder.pid) as rec.instance:
            scrape(rec, f"leaky_server.py (LEAK=true, soft fd limit 128, pid {server.pid}) "
                   "listening, no client yet")
            for n, total in ((60, 60), (50, 110)):
                client(sb, "echo", n)
                scrape(rec, f"{n} more clients connected, got their echo and closed "
                       f"({total} so far): their sockets stay in CLOSE_WAIT")
            client(sb, "flood", 150)
            scrape(rec, "150 clients at once, closed after 3 s: fds reach the limit, "
                   f"accept() failed with EMFILE ({emfile_lines(log)} times so far), the "
                   "accept queue fills and the listener drops SYNs and handshake ACKs")
            for _ in range(8):
                time.sleep(1)
                # ListenOverflows may still grow: with the accept queue full, the
                # handshake's last ACK is dropped without a word (tcp_check_req,
                # net/ipv4/tcp_minisocks.c, tcp_abort_on_overflow 0); the request's
                # timer resends the SYN-ACK (up to tcp_synack_retries) and the
                # client's ACK overflows again.
                scrape(rec, "no new client: the leak stays")
            server.kill()
            server.wait()
            for _ in range(2):
                scrape(rec, "the leaking server killed: its sockets are gone")
    return rec


def run_port_bomb() -> Recording:
    rec = Recording("port-bomb")
    low, high = 40000, 40999
    sysctls = {"net.ipv4.ip_local_port_range": f"{low} {high}", "net.ipv4.tcp_tw_reuse": 0}
    with Sandbox(sysctls) as sb, tempfile.TemporaryFile() as log:
        assert sb.holder is not None
        start_server(sb, leak=False, log=log)
        with exporter(sb.holder.pid) as rec.instance:
            scrape(rec, f"leaky_server.py (closes) listening; ip_local_port_range {low} {high}, "
                   "tcp_tw_reuse 0: no client yet")
            last = 0.0
            for n in (300, 550, 300):
                r = sb.run(sb.tcplab("bomb", "--port", str(PORT), "--count", str(n),
                                     "--workers", "16", "--json"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
                last = time.monotonic()
                body = json.loads(r.stdout or b"{}")
                first = (body.get("first_error") or {}).get("name")
                scrape(rec, f"tcplab bomb --count {n}: {body.get('ok')} connections made, "
                       "each closed by the client first, its port held in TIME_WAIT"
                       + (f"; then connect() failed with {first}" if first else ""))
            for _ in range(6):
                time.sleep(1)
                scrape(rec, "nothing new: TIME_WAIT holds the ports")
            # TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN, include/net/tcp.h)
            time.sleep(max(0.0, last + 62 - time.monotonic()))
            for _ in range(2):
                scrape(rec, "60 s after the last bomb: TIME_WAIT is over")
    return rec


# -- what must fire: from the recorded values and alerts.yml ------------------------------

@dataclass(frozen=True)
class Rule:
    alert: str
    severity: str
    threshold: float
    for_minutes: int
    annotations: dict[str, str]


def rules(text: str) -> list[Rule]:
    """alerts.yml's rules: name, severity, threshold (the last ``>= X`` of the
    expression) and ``for:``; the annotations of the first rule of each name
    (its second rule reuses them by a YAML alias)."""
    out = []
    annotations: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n      - alert: ", text)[1:]:
        alert = block.split("\n", 1)[0].strip()
        severity = re.search(r"severity: (\w+)", block)
        assert severity, block
        found = re.findall(r">= ([\d.]+)", block)
        for_m = re.search(r"\n        for: (\d+)m", block)
        if alert not in annotations:
            annotations[alert] = folded(block)
        out.append(Rule(alert, severity.group(1), float(found[-1]) if found else 0.0,
                        int(for_m.group(1)) if for_m else 0, annotations[alert]))
    return out


def folded(block: str) -> dict[str, str]:
    """The ``>-`` folded annotations of a rule block: lines joined by spaces."""
    out = {}
    for m in re.finditer(r"^ {10}(\w+): >-\n((?: {12}.*\n?)+)", block, re.M):
        out[m.group(1)] = " ".join(line.strip() for line in m.group(2).splitlines())
    return out


def render(template: str, labels: dict[str, str], value: float) -> str:
    """Prometheus's template expansion, for the forms alerts.yml uses only."""
    def cond(m: re.Match[str]) -> str:
        return m.group(2) if labels.get(m.group(1)) else ""

    text = re.sub(r"\{\{ if \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}", cond, template)
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    # humanizePercentage: fmt.Sprintf("%.4g%%", v*100) (Prometheus template/template.go);
    # $value: Go's %v of a float64, the shortest form that reads back the same.
    text = text.replace("{{ $value | humanizePercentage }}", "%.4g%%" % (value * 100))
    text = text.replace("{{ $value }}", f"{value:.17g}" if value != int(value)
                        else str(int(value)))
    assert "{{" not in text, f"a template form render() does not know: {text}"
    return text


Conditions = dict[tuple[tuple[str, str], ...], float]  # labels -> the expression's value


def by_labels(scrape: dict[Key, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in scrape.items() if n == name}


def values_at(alert: str, rec: Recording, k: int) -> Conditions:
    """The alert expression's value per label set at minute ``k`` (before the
    threshold), as PromQL computes it from the recorded series."""
    s = rec.scrapes[k]
    if alert == "TcplabCloseWaitLeak":
        return by_labels(s, "tcplab_process_close_wait_sockets")
    if alert == "TcplabFdExhaustion":
        limit = by_labels(s, "tcplab_process_max_fds")
        return {lab: v / limit[lab] for lab, v in by_labels(s, "tcplab_process_open_fds").items()
                if limit.get(lab, 0) > 0}
    if alert == "TcplabEphemeralPortExhaustion":
        size = {lab: v for lab, v in by_labels(s, "tcplab_ephemeral_port_range_size").items()}
        out = {}
        for lab, v in by_labels(s, "tcplab_ephemeral_ports_used").items():
            rest = tuple(kv for kv in lab if kv[0] not in ("src", "dst", "dport"))
            out[lab] = v / size[rest]
        return out
    raise AssertionError(alert)


def grew(rec: Recording, k: int, samples: int) -> set[tuple[tuple[str, str], ...]] | None:
    """Label sets whose ListenOverflows or ListenDrops grew over the last ``samples``
    scrapes up to minute ``k``."""
    out = set()
    for name in ("tcplab_tcp_listen_overflows_total", "tcplab_tcp_listen_drops_total"):
        window = [by_labels(rec.scrapes[j], name) for j in range(max(0, k - samples + 1), k + 1)]
        for lab in window[-1]:
            seen = [w[lab] for w in window if lab in w]
            if len(seen) >= 2 and any(b > a for a, b in itertools.pairwise(seen)):
                out.add(lab)
    return out


def firing(rule: Rule, rec: Recording, k: int) -> list[tuple[dict[str, str], float]] | None:
    """The alerts of ``rule`` firing at minute ``k`` (labels, value); None when it
    cannot be said for sure (increase()'s window edge)."""
    if rule.alert == "TcplabListenOverflow":
        # increase(...[5m]): the samples of [k-5m, k], 5 or 6 of them at 1m apart
        # depending on whether the window's start is included: said only when both agree.
        five, six = grew(rec, k, 5), grew(rec, k, 6)
        if five != six:
            return None
        assert five is not None
        return [({**dict(lab), "severity": rule.severity}, 0.0) for lab in sorted(five)]
    out = []
    for lab, v in values_at(rule.alert, rec, k).items():
        # held at every minute from k - for to k (promtool evaluates every minute)
        held = all(values_at(rule.alert, rec, j).get(lab, 0.0) >= rule.threshold
                   for j in range(k - rule.for_minutes, k + 1)) if k >= rule.for_minutes else False
        if held:
            out.append(({**dict(lab), "severity": rule.severity}, v))
    return sorted(out, key=lambda a: sorted(a[0].items()))


# -- the promtool test file ---------------------------------------------------------------

def number(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def values_text(seq: list[float | None]) -> str:
    """promtool's input notation: ``_`` no sample, ``stale`` the staleness marker a
    scrape writes when a series disappears, ``VxN`` V repeated N more times."""
    out: list[str] = []
    i = 0
    while i < len(seq):
        v = seq[i]
        if v is None:
            out.append("stale" if i > 0 and seq[i - 1] is not None else "_")
            i += 1
            continue
        j = i
        while j + 1 < len(seq) and seq[j + 1] == v:
            j += 1
        out.append(number(v) if j == i else f"{number(v)}x{j - i}")
        i = j + 1
    return " ".join(out)


def series_text(key: Key) -> str:
    name, labels = key
    return name + "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in labels) + "}"


def test_text(rec: Recording, all_rules: list[Rule]) -> str:
    keys = sorted({key for s in rec.scrapes for key in s})
    lines = [f"  # {rec.name}: one scrape after each step, laid 1m apart:"]
    lines += [f"  #   {k}m: {note}" for k, note in enumerate(rec.notes)]
    lines += ["  - interval: 1m", "    input_series:"]
    for key in keys:
        lines += [f"      - series: {json.dumps(series_text(key))}",
                  f"        values: {json.dumps(values_text([s.get(key) for s in rec.scrapes]))}"]
    lines.append("    alert_rule_test:")
    names = sorted({r.alert for r in all_rules})
    for k in checked_minutes(rec, all_rules):
        for alert in names:
            expected: list[tuple[dict[str, str], float]] = []
            sure = True
            for rule in (r for r in all_rules if r.alert == alert):
                got = firing(rule, rec, k)
                if got is None:
                    sure = False
                    break
                expected += [(lab, v) for lab, v in got]
            if not sure:
                continue
            lines += [f"      - eval_time: {k}m", f"        alertname: {alert}"]
            if not expected:
                lines.append("        exp_alerts: []  # must not fire")
                continue
            lines.append("        exp_alerts:")
            annotations = next(r.annotations for r in all_rules if r.alert == alert)
            for lab, v in expected:
                # Prometheus drops a label whose value is empty (container="" for none)
                shown = {k: v for k, v in lab.items() if v}
                lines.append(f"          - exp_labels: {json.dumps(shown, sort_keys=True)}")
                lines.append("            exp_annotations:")
                for name, template in sorted(annotations.items()):
                    lines.append(f"              {name}: {json.dumps(render(template, lab, v))}")
    return "\n".join(lines)


def checked_minutes(rec: Recording, all_rules: list[Rule]) -> list[int]:
    """Minute 0 (nothing yet: nothing fires), the last (the cause gone), and for each
    rule the minute it starts firing, the one before (pending: not yet) and the
    first minute it is resolved again."""
    last = len(rec.scrapes) - 1
    minutes = {0, last}
    for rule in all_rules:
        started = False
        for k in range(last + 1):
            now = firing(rule, rec, k)
            if now and not started:
                minutes |= {k - 1, k}
                started = True
            elif started and now == []:
                minutes.add(k)
                break
    return sorted(m for m in minutes if 0 <= m <= last)


def save(recordings: list[Recording], when: str, path: Path) -> None:
    path.write_text(json.dumps({
        "when": when, "kernel": platform.release(),
        "runs": [{"name": r.name, "instance": r.instance, "notes": r.notes,
                  "scrapes": [[[n, dict(lab), v] for (n, lab), v in sorted(s.items())]
                              for s in r.scrapes]} for r in recordings]}, indent=1) + "\n")


def load(path: Path) -> tuple[list[Recording], str, str]:
    body = json.loads(path.read_text())
    runs = [Recording(r["name"], r["instance"],
                      [{(n, tuple(sorted(lab.items()))): v for n, lab, v in s}
                       for s in r["scrapes"]], r["notes"]) for r in body["runs"]]
    return runs, body["when"], body["kernel"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "alerts_test.yml")
    ap.add_argument("--recorded", type=Path, default=HERE / "recorded.json",
                    help="where the scrapes are kept (default: recorded.json beside this)")
    ap.add_argument("--again", action="store_true",
                    help="no new run: write --out again from --recorded (after an edit "
                    "of alerts.yml's thresholds or annotations)")
    args = ap.parse_args(argv)
    all_rules = rules((HERE / "alerts.yml").read_text())
    if args.again:
        recordings, when, kernel = load(args.recorded)
    else:
        if os.geteuid() != 0:
            print("record.py: run as root: the exporter looks into the runs' namespaces "
                  "(--netns)", file=sys.stderr)
            return 2
        recordings = [run_fd_leak(), run_port_bomb()]
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        kernel = platform.release()
        save(recordings, when, args.recorded)
    head = [
        "# promtool test rules alerts_test.yml: the rules of alerts.yml on series recorded",
        f"# from real runs on {when} (Linux {kernel}) by",
        "#     .venv/bin/python deploy/prometheus/record.py",
        "# (as root; see its docstring; the scrapes are kept in recorded.json, and",
        "# `record.py --again` writes this file again from them). Do not edit: run it",
        "# again. The expected alerts were worked out by record.py from the recorded",
        "# values and alerts.yml's thresholds and for: durations.",
        "rule_files:",
        "  - alerts.yml",
        "evaluation_interval: 1m",
        "tests:",
    ]
    body = "\n\n".join(test_text(rec, all_rules) for rec in recordings)
    args.out.write_text("\n".join(head) + "\n" + body + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
