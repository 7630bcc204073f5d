"""``tcplab experiment keepalive``, ``ports`` and ``orphans``, as a user runs them.

Each runs for real in a private network namespace: as root, and as an
ordinary user (nobody, in a user+net namespace) through a venv made from
/usr/bin/python3 that nobody owns and that imports this checkout (the test
venv's interpreter lives where nobody cannot run it). The checks are what a
user reads: the errno and its text, the counts, the ports, and "shown". The
pure tests feed the recorded runs (tests/data/lessons) with one figure changed,
to see the verdict fall and the failure said.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tcplab.experiments import keepalive, orphans, ports
from tcplab.report import html
from tcplab.report.prose import worded
from tcplab.report.terminal import result_lines
from tests.helpers import USERS, one_json, run_as, userns_allowed
from tests.helpers import tcplab as tcplab_argv

ROOT = Path(__file__).resolve().parent.parent
LESSON_RUNS = ROOT / "tests" / "data" / "lessons"
GUARD = 300  # a hang guard for one experiment, not a time limit




# --- as a user runs them ----------------------------------------------------------------------

@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_keepalive_gives_up_on_a_silent_peer(user: str, nobody_venv: Path | None) -> None:
    b = one_json(run_as(user, nobody_venv, "experiment", "keepalive", "--quick", "--json"),
                 shown=True)
    assert b["link"]["kind"] == "loopback"
    check_silences(b)


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_keepalive_across_the_link(user: str, nobody_venv: Path | None) -> None:
    """The client at the net's client end, the peer at its server end, silenced by the
    nftables rules the agent adds there: the same counts and errno as on loopback."""
    b = one_json(run_as(user, nobody_venv, "experiment", "keepalive", "--quick", "--link",
                        "veth", "--json"), shown=True)
    assert b["link"]["kind"] == "veth" and b["link"]["server"].startswith("198.")
    check_silences(b)


#: Run inside ``unshare -Urn``: write a net's state file naming this namespace as the
#: server's end (argv: path, "absent" / "dead" / "elsewhere"), then exec the agent told
#: that its ends are here, as ``records_on`` runs it on a net.
FORGE = """
import json, os, sys
from tcplab.net import registry
from tcplab.net.plan import Shaping
from tcplab.records import to_json
path, how, agent = sys.argv[1:4]
here, pid = registry.ns_id("/proc/self/ns/net"), os.getpid()
start = registry.start_time(pid) + (1 if how == "dead" else 0)
server = registry.Endpoint("server", pid, "0:0" if how == "elsewhere" else here)
net = registry.Net("forged", pid, start, True, 0, registry.Endpoint("client", pid, here),
                   server, None, Shaping(), 1500)
with open(path, "w") as f:
    json.dump(to_json(net), f)
if how != "absent":
    os.environ[registry.ENV_STATE] = path
os.execv(sys.executable, [sys.executable, "-m", f"tcplab.agents.{agent}", "--client-netns",
         "/proc/self/ns/net", "--server-netns", "/proc/self/ns/net", "--host", "127.0.0.1"])
"""


@pytest.mark.privileged
@pytest.mark.parametrize("agent", ["keepalive", "orphans"])
@pytest.mark.parametrize("how", ["absent", "dead", "elsewhere"])
def test_across_a_link_the_agents_refuse_a_namespace_that_is_not_a_nets_end(
        agent: str, how: str, tmp_path: Path) -> None:
    """Told its ends are elsewhere, an agent adds nftables rules only in the server's
    namespace of a live tcplab net: with no net named, a net whose holder is gone, or a
    net whose server end is another namespace, it exits 2 before any change. (In a
    fresh user + network namespace: even a broken guard could change nothing outside.)"""
    import sys

    if not userns_allowed():
        pytest.skip("no unprivileged user namespaces here")
    tmp_path.chmod(0o755)
    r = subprocess.run(["unshare", "-Urn", sys.executable, "-c", FORGE,
                        str(tmp_path / "net.json"), how, agent],
                       capture_output=True, timeout=GUARD, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == b"", r
    assert b"this is not the server's namespace of a tcplab net" in r.stderr, r


def check_silences(b: dict[str, Any]) -> None:
    assert b["settings"] == {"quick": True}
    by = {s["case"]: s for s in b["facts"]["silences"]}
    assert list(by) == ["keepalive", "keepalive+user-timeout", "retransmit+user-timeout"]
    for s in by.values():  # the kernel's verdict on a silent peer, each time
        assert (s["errno"], s["error"], s["aborted_on_timeout"]) == (
            110, "Connection timed out", 1), s
    ka, ut, rt = by.values()
    # --quick: KEEPCNT 2 probes, then the error, not before 1 + 2 x 1 s (the agent's clock
    # starts after the SYN-ACK, late on a loaded machine: keepalive.EARLY_S).
    assert ka["keepalive_probes"] == ka["keepcnt"] == 2 and ka["error_at_s"] >= 2.7
    # The user timeout (1.5 s) ends it with fewer probes than KEEPCNT (9) allows.
    assert 1 <= ut["keepalive_probes"] < 9 and ut["error_at_s"] >= 1.2
    # Data in flight: no probe, retransmissions until the user timeout (1 s).
    assert rt["keepalive_probes"] == 0 and rt["retransmits"] >= 1
    assert rt["error_at_s"] >= rt["down_at_s"] + 0.7
    assert 'ETIMEDOUT ("Connection timed out")' in b["fact"]
    assert "TCP_USER_TIMEOUT 1.5 s ended it after" in b["fact"]


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_ports_parity_bind_and_ranges(user: str, nobody_venv: Path | None) -> None:
    b = one_json(run_as(user, nobody_venv, "experiment", "ports", "--json"), shown=True)
    by = {(p["case"], p["destination"]): p for p in b["facts"]["cases"]}
    assert sorted(by["connect", "127.0.0.1:8080"]["ports"]) == [40000, 40002, 40004, 40006,
                                                                40008]
    assert sorted(by["bind", ""]["ports"]) == [40001, 40003, 40005, 40007, 40009]
    btc = by["bind-then-connect", "127.0.0.2:8080"]
    # --json: the call, the errno's number and name, and its text, each a field.
    assert (btc["ports"], btc["error"]) == ([], {
        "call": "bind", "errno": 98, "name": "EADDRINUSE", "message": "Address already in use"})
    no_port = by["bind-address-no-port", "127.0.0.2:8080"]
    assert sorted(no_port["ports"]) == list(range(40000, 40010))
    assert no_port["error"] == {"call": "connect", "errno": 99, "name": "EADDRNOTAVAIL",
                                "message": "Cannot assign requested address"}
    assert sorted(by["socket-range", "127.0.0.1:8080"]["ports"]) == [40002, 40003, 40004, 40005]
    assert sorted(by["reserved", "127.0.0.1:8080"]["ports"]) == [40008, 40009]
    assert "the same ten ports served both destinations" in b["fact"]


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_ports_across_a_veth_link(user: str, nobody_venv: Path | None) -> None:
    """The clients in the net's client namespace (its range narrowed by the experiment),
    the listeners in the server's: the second destination is the server's port 8081."""
    b = one_json(run_as(user, nobody_venv, "experiment", "ports", "--link", "veth", "--json"),
                 shown=True)
    link = b["link"]
    assert link["kind"] == "veth" and link["server"].startswith("198.")
    one, two = f"{link['server']}:8080", f"{link['server']}:8081"
    by = {(p["case"], p["destination"]): p for p in b["facts"]["cases"]}
    assert sorted(by["connect", one]["ports"]) == [40000, 40002, 40004, 40006, 40008]
    assert sorted(by["bind", ""]["ports"]) == [40001, 40003, 40005, 40007, 40009]
    assert by["bind-then-connect", two]["ports"] == []
    assert by["bind-then-connect", two]["error"]["name"] == "EADDRINUSE"
    assert (sorted(by["bind-address-no-port", one]["ports"])
            == sorted(by["bind-address-no-port", two]["ports"]) == list(range(40000, 40010)))
    assert sorted(by["reserved", one]["ports"]) == [40008, 40009]
    assert f"toward {two} bind() failed with EADDRINUSE" in b["fact"]


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_orphans_fin_wait2_counted_as_tw(user: str, nobody_venv: Path | None) -> None:
    b = one_json(run_as(user, nobody_venv, "experiment", "orphans", "--quick", "--json"),
                 shown=True)
    assert b["link"]["kind"] == "loopback"
    check_looks(b)


@pytest.mark.privileged
@pytest.mark.parametrize("user", USERS)
def test_orphans_across_a_delayed_link(user: str, nobody_venv: Path | None) -> None:
    """Clients at the net's client end, servers at its server end, 50 ms each way; the
    sysctls set at the ends by the sysctl agent: the same looks as on loopback."""
    b = one_json(run_as(user, nobody_venv, "experiment", "orphans", "--quick", "--link",
                        "veth", "--delay", "50", "--json"), shown=True)
    assert b["link"]["kind"] == "veth" and b["link"]["shaping"] == "delay 50 ms each way"
    check_looks(b)


def check_looks(b: dict[str, Any]) -> None:
    assert b["settings"] == {"connections": 5, "tcp_fin_timeout": 3, "tcp_orphan_retries": 1}
    looks = b["facts"]["looks"]
    assert [(x["case"], x["states"], x["sockstat_tw"]) for x in looks] == [
        ("fin-wait2", {"CLOSE_WAIT": 5, "FIN_WAIT2": 5}, 5), ("fin-wait2", {"CLOSE_WAIT": 5}, 0),
        ("fin-wait1", {"ESTABLISHED": 5, "FIN_WAIT1": 5}, 0), ("fin-wait1", {}, 0),
        ("orphan-retries", {"FIN_WAIT1": 1}, 0), ("orphan-retries", {}, 0)]
    assert looks[1]["lived_s"] >= 3 - keepalive.EARLY_S  # tcp_fin_timeout 3 s (--quick too)
    assert looks[2]["sockstat_orphan"] >= 5  # the machine's count: ours and others'
    assert looks[5]["retransmits"] >= 1  # --quick: tcp_orphan_retries 1
    assert "5 FIN_WAIT2 minisockets and no TIME_WAIT, yet sockstat said tw 5" in b["fact"]


@pytest.mark.privileged
def test_text_has_the_tables() -> None:
    r = subprocess.run(tcplab_argv("experiment", "ports"), capture_output=True, timeout=GUARD,
                       stdin=subprocess.DEVNULL)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment ports: shown\n"), text
    rows = [line.split() for line in text.splitlines()]
    assert ["case", "toward", "ports", "then"] in rows
    assert ["bind-then-connect", "127.0.0.2:8080", "none", "bind:", "EADDRINUSE"] in rows
    r = subprocess.run(tcplab_argv("experiment", "orphans", "--quick"), capture_output=True,
                       timeout=GUARD, stdin=subprocess.DEVNULL)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment orphans: shown\n"), text
    rows = [line.split() for line in text.splitlines()]
    head = rows.index(["case", "states", "tw", "orphan", "after", "close()"])
    # The first look: 5 FIN_WAIT2 minisockets beside 5 CLOSE_WAIT, and sockstat's tw 5.
    assert rows[head + 1][:6] == ["fin-wait2", "CLOSE_WAIT", "5,", "FIN_WAIT2", "5", "5"]


# --- the verdicts: a recorded run with one figure changed ----------------------------------

def recorded(name: str) -> Any:
    [r] = html.read_results([json.loads((LESSON_RUNS / f"{name}.json").read_text())])
    assert r.ok and worded(r).fact, name
    return r


@pytest.mark.pure
def test_keepalive_not_shown_says_which_case() -> None:
    r = recorded("keepalive")
    silences = list(r.facts.silences)
    silences[0] = replace(silences[0], keepalive_probes=2)  # one probe short of KEEPCNT
    assert not keepalive.judge(silences)
    bad = worded(replace(r, ok=False, facts=keepalive.Facts(tuple(silences)), fact=""))
    assert bad.fact.startswith("expected ETIMEDOUT after KEEPCNT probes")
    assert "NOT shown: keepalive (keep-alive 1 s idle, 1 s interval, 3 probes): 2 probes" \
        in bad.fact
    assert bad.fact.count("NOT shown") == 1
    lines = result_lines(bad)
    assert lines[0] == "experiment keepalive: NOT SHOWN" and lines[-1].endswith(bad.fact)
    # Early (before KEEPIDLE + KEEPCNT x KEEPINTVL) is not shown either.
    early = [replace(silences[0], keepalive_probes=3, error_at_s=3.6), *silences[1:]]
    assert not keepalive.judge(early)


@pytest.mark.pure
def test_ports_not_shown_says_which_case() -> None:
    r = recorded("ports")
    cases = list(r.facts.cases)
    cases[0] = replace(cases[0], ports=[40000, 40001, 40002, 40004, 40006])  # an odd one
    assert not ports.judge(cases)
    bad = worded(replace(r, ok=False, facts=ports.Facts(tuple(cases)), fact=""))
    assert "saw: NOT shown: connect to 127.0.0.1:8080: 5 ports: 40000, 40001" in bad.fact
    assert bad.fact.count("NOT shown") == 1


@pytest.mark.pure
def test_orphans_not_shown_says_which_case() -> None:
    r = recorded("orphans")
    looks = list(r.facts.looks)
    looks[0] = replace(looks[0], sockstat_tw=0)  # tw not counting the minisockets
    assert not orphans.judge(looks, 3, 2)
    bad = worded(replace(r, ok=False, facts=orphans.Facts(tuple(looks)), fact=""))
    assert bad.fact.count("NOT shown") == 2  # both looks of fin-wait2
    assert "NOT shown: fin-wait2: the clients closed" in bad.fact
    # The minisockets gone before tcp_fin_timeout: not shown.
    early = [looks[0], replace(looks[1], lived_s=2.0), *looks[2:]]
    assert not orphans.judge(early, 3, 2) and orphans.judge(list(r.facts.looks), 3, 2)
    # An orphan retransmitting fewer times than tcp_orphan_retries allows: not shown.
    few = [*looks[:5], replace(looks[5], retransmits=1)]
    assert not orphans.judge([r.facts.looks[0], *few[1:]], 3, 2)



# --- Ctrl-C: nothing left, not even a zombie -----------------------------------------------

def session_processes(sid: int) -> dict[int, str]:
    """Every process of session ``sid``, zombies included (pid -> state and command): a
    process keeps its session when its parent dies and pid 1 (or a subreaper) adopts it."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            raw = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[3]) == sid:
            command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(name)] = f"{rest[0]} {command}"
    return found


def link_built(sid: int) -> bool:
    """The keepalive agent of session ``sid`` has its veth link (tl0 in its namespace)."""
    for pid, what in session_processes(sid).items():
        if "tcplab.agents.keepalive" in what:
            try:
                if " tl0:" in Path(f"/proc/{pid}/net/dev").read_text():
                    return True
            except OSError:
                pass
    return False


def sigint_at_default() -> None:
    """In the child, as a terminal job has it (pytest from a background job may have
    SIGINT ignored, and tcplab keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.privileged
@pytest.mark.parametrize("times", [1, 2])
def test_keepalive_interrupted_leaves_no_process_nor_zombie(times: int) -> None:
    """Ctrl-C (to the whole group, once or twice) while the agent's link is up: when
    tcplab has exited, its session has no process left, zombies included (the agent
    used to fork the peer, which outlived it as pid 1's zombie for seconds)."""
    proc = subprocess.Popen(tcplab_argv("experiment", "keepalive", "--quick"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=sigint_at_default)
    try:
        deadline = time.monotonic() + GUARD
        while not link_built(proc.pid):
            assert proc.poll() is None, "the run ended before its link was up"
            assert time.monotonic() < deadline, "no link within the guard"
            time.sleep(0.01)
        seen = session_processes(proc.pid)
        for i in range(times):
            if i:
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=GUARD)
        assert proc.returncode == 130, err.decode(errors="replace")
        left = session_processes(proc.pid)
        assert left == {}, (left, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
