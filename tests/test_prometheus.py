"""What deploy/ ships for Prometheus and Grafana (issue 15), checked by Prometheus's own tools.

- ``promtool check rules`` on deploy/prometheus/alerts.yml; ``promtool test rules``
  on alerts_test.yml, whose input series deploy/prometheus/record.py recorded from
  real fd-leak and port-bomb runs (every alert must fire in it, and stay silent where
  the values are healthy), and which is exactly what record.py makes of its kept
  recording with the alerts.yml of now;
- ``promtool check metrics`` on a real scrape of ``tcplab exporter``;
- deploy/grafana/tcplab.json: Grafana is not packaged by Debian, so its structure is
  checked here: every panel has a target, every expression parses (promtool), every
  metric it names is in a real scrape;
- a real Prometheus server scraping a real ``tcplab exporter`` while
  tests/leaky_server.py (not tcplab's server) leaks CLOSE_WAIT sockets in another
  network namespace fires TcplabCloseWaitLeak, with the leak's pid, command and
  namespace, and the commands its annotation tells the on-call person to run work.

promtool and prometheus come with Debian's ``prometheus`` package (.ci/run installs
it as root); without them these tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Child, free_port, run_tcplab, tcplab, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "tcplab.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "no promtool on PATH: install Debian's prometheus package (.ci/run does, as root)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)


def promtool(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=input, capture_output=True, text=True,
                          timeout=120, cwd=DEPLOY / "prometheus")


def record_module() -> ModuleType:
    """deploy/prometheus/record.py (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("tcplab_deploy_record",
                                                  DEPLOY / "prometheus" / "record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextmanager
def exporter(*args: str) -> Iterator[str]:
    """``tcplab exporter --listen 127.0.0.1:0 ARGS``: its host:port; always stopped."""
    child = Child(tcplab("exporter", "--listen", "127.0.0.1:0", *args))
    try:
        line = child.wait_line(lambda s: "/metrics" in s, stream="out", guard=60)
        m = re.search(r"http://(127\.0\.0\.1:\d+)/metrics", line)
        assert m, line
        yield m.group(1)
    finally:
        child.kill()
        child.finish()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        assert resp.status == 200, url
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def scraped() -> str:
    """One real scrape of ``tcplab exporter`` (as root: every namespace on the node)."""
    with exporter() as where:
        return get(f"http://{where}/metrics")


# -- the alert rules -----------------------------------------------------------------------

@pytest.mark.loopback
@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


@pytest.mark.loopback
@needs_promtool
def test_the_example_scrape_config_passes_promtool_check() -> None:
    r = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    # the port it scrapes is the exporter's default
    assert "127.0.0.1:9309" in (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "(default 127.0.0.1:9309)" in run_tcplab("exporter", "--help").stdout.decode()


@pytest.mark.loopback
@needs_promtool
def test_alert_rules_pass_their_tests_on_recorded_series() -> None:
    r = promtool("test", "rules", str(ALERTS_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.pure
def test_the_rule_tests_were_recorded_and_cover_every_alert() -> None:
    """alerts_test.yml says where its numbers came from, has the fd-leak and the
    port-bomb run, and every alert of alerts.yml fires in it somewhere and is
    expected silent somewhere (healthy values, or not yet for long enough)."""
    text = ALERTS_TEST.read_text()
    assert re.search(r"# from real runs on \d{4}-\d\d-\d\d \d\d:\d\d UTC \(Linux ", text)
    assert ".venv/bin/python deploy/prometheus/record.py" in text
    assert "  # fd-leak: " in text and "  # port-bomb: " in text
    alerts = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert len(alerts) == 4
    for alert in sorted(alerts):
        cases = re.findall(rf"alertname: {alert}\n        exp_alerts:(.*)", text)
        assert "" in cases, f"{alert} never expected to fire"
        assert " []  # must not fire" in cases, f"{alert} never expected silent"


@pytest.mark.loopback
def test_the_rule_tests_are_what_record_py_makes_of_its_recording(tmp_path: Path) -> None:
    """alerts_test.yml is exactly what record.py writes from recorded.json and the
    alerts.yml of now: not edited by hand, and not left behind by an edit of a
    threshold, a for: or an annotation (``record.py --again`` after one)."""
    out = tmp_path / "alerts_test.yml"
    assert record_module().main(["--again", "--out", str(out)]) == 0
    assert out.read_text() == ALERTS_TEST.read_text(), "run deploy/prometheus/record.py --again"


@pytest.mark.pure
def test_record_writes_promtool_notation() -> None:
    record = record_module()
    # a series that appears, holds, and goes (the scrape after it writes a stale marker)
    assert record.values_text([None, 5, 60, 60, 60, None, None]) == "_ 5 60x2 stale _"
    labels = {"pid": "7", "command": "python", "netns": "4026532177", "container": "",
              "instance": "h:9309"}
    assert record.render(
        "pid {{ $labels.pid }} ({{ $labels.command }}) {{ $value }} in net:[{{ $labels.netns }}]"
        "{{ if $labels.container }} (container {{ $labels.container }}){{ end }} on "
        "{{ $labels.instance }}: {{ $value | humanizePercentage }}", labels, 1.0
    ) == "pid 7 (python) 1 in net:[4026532177] on h:9309: 100%"
    assert record.render("{{ $value | humanizePercentage }}", {}, 115 / 128) == "89.84%"


# -- a real scrape -------------------------------------------------------------------------

@pytest.mark.loopback
@needs_promtool
def test_a_real_scrape_passes_promtool_check_metrics(scraped: str) -> None:
    r = promtool("check", "metrics", input=scraped)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        r.returncode, r.stdout, r.stderr)


# -- the Grafana dashboard -----------------------------------------------------------------

def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every panel target and template variable query."""
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert m, var
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def as_promql(expr: str) -> str:
    """Grafana's variables replaced as Grafana would (a regex for the multi-value ones)."""
    return (expr.replace("$__rate_interval", "1m")
            .replace('"$instance"', '".+"').replace('"$netns"', '".+"')
            .replace('"$container"', '".*"'))


@pytest.mark.pure
def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["title"] and dash["uid"]
    ds_input = [i for i in dash["__inputs"] if i["type"] == "datasource"]
    assert [i["pluginId"] for i in ds_input] == ["prometheus"]
    ds = {"type": "prometheus", "uid": "${" + ds_input[0]["name"] + "}"}
    names = [v["name"] for v in dash["templating"]["list"]]
    assert {"netns", "container"} <= set(names), names
    assert all(v["datasource"] == ds for v in dash["templating"]["list"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids) > 5
    for p in dash["panels"]:
        assert p["targets"] and p["datasource"] == ds, p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"][
            "w"] <= 24, p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == ds and t["refId"], p["title"]
            # a panel on one namespace follows the variables
            if re.search(r"(?<!\w)netns(?!\w)", t["expr"]):
                assert 'netns=~"$netns"' in t["expr"], (p["title"], t["expr"])


@pytest.mark.loopback
@needs_promtool
def test_dashboard_expressions_parse_and_name_served_metrics(scraped: str, tmp_path: Path
                                                             ) -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    # Every expression parses: promtool checks a rules file of them (one recording rule each).
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:expr{i}\n        expr: {json.dumps(as_promql(e))}\n"
        for i, (_, e) in enumerate(exprs)))
    r = promtool("check", "rules", str(rules))
    assert r.returncode == 0, r.stdout + r.stderr
    # Every metric named is one the exporter serves (a family may have no sample now:
    # its HELP and TYPE lines are there all the same).
    served = set()
    for family in text_string_to_metric_families(scraped):
        served.add(family.name)
        served |= {s.name for s in family.samples}
    named = {(title, m) for title, e in exprs for m in re.findall(r"\btcplab_\w+", e)}
    assert {m for _, m in named} >= {"tcplab_process_close_wait_sockets",
                                     "tcplab_ephemeral_ports_used"}
    missing = sorted((title, m) for title, m in named if m not in served)
    assert not missing, missing


# -- a real Prometheus ---------------------------------------------------------------------

def prometheus_config(tmp: Path, target: str) -> Path:
    """A Prometheus of our own: the shipped alerts.yml with every ``for:`` cut to 2 s
    (the shipped ones are minutes), evaluated every second, scraping ``target``."""
    alerts = re.sub(r"(\n\s+for: )\d+m\n", r"\g<1>2s\n", ALERTS.read_text())
    assert alerts.count("for: 2s") == 6, "every for: of alerts.yml cut"
    (tmp / "alerts.yml").write_text(alerts)
    config = tmp / "prometheus.yml"
    # A scrape reads every namespace on the node (0.2 to 2 s on this loaded 2-core
    # machine, with the other tests' namespaces): the timeout leaves room.
    config.write_text(
        "global:\n  scrape_interval: 10s\n  scrape_timeout: 10s\n  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n  - job_name: tcplab\n"
        f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n")
    return config


@contextmanager
def prometheus(config: Path) -> Iterator[str]:
    """The prometheus server on a free port of 127.0.0.1, its data in the temp dir
    (nothing of the package's service: not its port 9090, not /var/lib/prometheus)."""
    assert PROMETHEUS is not None
    where = f"127.0.0.1:{free_port()}"
    child = Child([PROMETHEUS, f"--config.file={config}",
                   f"--storage.tsdb.path={config.parent / 'data'}",
                   f"--web.listen-address={where}"], cwd=config.parent)
    try:
        child.wait_line(lambda s: "Server is ready to receive web requests" in s, guard=60)
        yield where
    finally:
        child.kill()
        child.finish()


def firing(where: str, alertname: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"http://{where}/api/v1/alerts"))
    assert body["status"] == "success"
    return [a for a in body["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="another namespace's sockets need root")
@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMTOOL.replace("promtool", "prometheus"))
def test_a_real_prometheus_fires_the_close_wait_alert_for_another_namespace() -> None:
    from tcplab.experiments.sandbox import Sandbox
    from tcplab.observe.doctor import cgroup_words

    record = record_module()
    leaks = 120  # the rule's threshold is 100 (doctor's)
    with Sandbox({}) as sb, tempfile.TemporaryDirectory() as tmp, \
            tempfile.TemporaryFile() as log:
        leak = record.start_server(sb, leak=True, log=log)
        record.client(sb, "echo", leaks)
        pid = str(leak.pid)
        inode = str(os.stat(f"/proc/{pid}/ns/net").st_ino)
        assert inode != str(os.stat("/proc/self/ns/net").st_ino)
        with exporter() as target, prometheus(prometheus_config(Path(tmp), target)) as where:
            alerts = wait_for(lambda: [a for a in firing(where, "TcplabCloseWaitLeak")
                                       if a["labels"].get("pid") == pid],
                              "TcplabCloseWaitLeak firing for the leak", timeout=120)
        assert len(alerts) == 1, alerts
        labels, annotations = alerts[0]["labels"], alerts[0]["annotations"]
        command = Path(f"/proc/{pid}/comm").read_text().strip()
        assert labels["command"] == command and labels["netns"] == inode, labels
        assert labels["severity"] == "warning" and labels["job"] == "tcplab"
        # Prometheus drops an empty label: "container" is there only when it has one
        assert labels.get("container", "") == (cgroup_words(int(pid)) or ""), labels
        assert float(alerts[0]["value"]) == leaks
        assert annotations["summary"].startswith(
            f"pid {pid} ({command}) holds {leaks} sockets in CLOSE_WAIT in net:[{inode}]")
        # What it tells the on-call person to run works, and shows the leak.
        commands = re.findall(r"`(tcplab [^`]+)`", annotations["description"])
        assert len(commands) == 3, annotations["description"]
        for line in commands:
            r = run_tcplab(*shlex.split(line)[1:])
            out = r.stdout.decode()
            assert r.returncode in (0, 1, 2), (line, r.returncode, r.stderr)
            if line.startswith("tcplab sockets"):
                assert r.returncode == 0 and out.count("CLOSE_WAIT") == leaks, (line, out)
            else:
                assert pid in out, (line, out)
        leak.stdout.close()
