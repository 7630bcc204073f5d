"""fd-leak's Go rounds: a real Go server (tcplab/peers/goleak.go, built with the go on
PATH) in a private network namespace, as root and as an ordinary user.

go-drop: a handler that returns without Close(); the runtime's finalizer closes each
unreachable net.Conn at a later collection. go-keep: the connections kept in a slice;
Go's 15 s keep-alive clears CLOSE_WAIT, the fds stay. Skipped, with the reason, where
``go`` is not on PATH; the rounds' skips (go missing, --quick) are tested everywhere.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tcplab.errors import NotSupported
from tcplab.experiments import fd_leak, gopeer
from tcplab.experiments.fd_leak import GoFigures, Round, Short, Skip
from tcplab.report.prose import round_worded, worded
from tcplab.report.terminal import result_lines
from tests.helpers import as_nobody, tcplab

needs_go = pytest.mark.skipif(shutil.which("go") is None,
                              reason="go is not on PATH: the Go rounds are skipped "
                              "(install golang-go to run these tests)")


def marks() -> tuple[list[str], Any]:
    seen: list[str] = []

    def mark(what: str, verdict_of: str | None = None, verdict: Any = None) -> None:
        seen.append(what)
    return seen, mark


# --- skipped, with the reason -------------------------------------------------------------

@pytest.mark.loopback
def test_without_go_the_rounds_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no go here
    seen, mark = marks()
    rounds = fd_leak._go_rounds(fd_leak.Settings(), quick=False, progress=lambda *a: None,
                                mark=mark, origin=time.monotonic())
    assert [r.name for r in rounds] == ["go-drop", "go-keep"]
    for r in map(round_worded, rounds):
        assert r.skip is Skip.GO_UNAVAILABLE and r.shown is None and r.go is None
        assert r.skipped is not None and r.skipped.startswith("go is not on PATH; to run "
                                                              "the Go rounds, install Go")
    assert seen == ["go-drop: skipped (go-unavailable)", "go-keep: skipped (go-unavailable)"]
    # Asked for explicitly, a missing go is an error, not a quiet skip.
    with pytest.raises(NotSupported, match=r"^--go yes: go is not on PATH"):
        fd_leak._go_rounds(fd_leak.Settings(go="yes"), quick=False,
                           progress=lambda *a: None, mark=mark, origin=time.monotonic())


@pytest.mark.pure
def test_quick_leaves_the_go_rounds_out_unless_asked() -> None:
    seen, mark = marks()
    rounds = fd_leak._go_rounds(fd_leak.Settings(), quick=True, progress=lambda *a: None,
                                mark=mark, origin=time.monotonic())
    assert seen == ["go-drop: skipped (go-quick)", "go-keep: skipped (go-quick)"]
    [drop, keep] = map(round_worded, rounds)
    assert drop.skip is keep.skip is Skip.GO_QUICK
    assert drop.skipped == ("--quick leaves the Go rounds out (about 25 s: Go's keep-alive "
                            "waits 15 s); run without --quick, or with --go yes")


# --- the verdicts, from counts --------------------------------------------------------------

DROP_GO = GoFigures(go_version="go1.19.8 linux/amd64", build_s=0.0, cached=True, env="",
                    gomaxprocs=2, gcs=(0.4, 0.5, 4.5), connected=512, flood_s=1.1,
                    gcs_in_flood=2, quiet_s=3.0, fds_quiet=21, close_wait_quiet=13,
                    later_clients=128, later_gc_s=4.5, fell_s=4.6)
KEEP_GO = GoFigures(go_version="go1.19.8 linux/amd64", build_s=0.0, cached=True, env="",
                    gomaxprocs=2, connected=128, close_wait_held_s=15.3, close_wait_gone_s=16.2)


def judged(name: str, go: GoFigures, base: dict[str, Any], change: dict[str, Any]) -> Round:
    """The round with ``change`` applied to its figures (Round's or GoFigures'), judged."""
    go_change = {k: change.pop(k) for k in list(change) if k in GoFigures.__slots__}
    return fd_leak.judge_go(Round(name, go=replace(go, **go_change),  # type: ignore[arg-type]
                                  **{**base, **change}))


def drop_round(**change: Any) -> Round:
    return judged("go-drop", DROP_GO, {"fds_start": 8, "fds_peak": 60, "fds_after": 8,
                                       "alive": True}, change)


@pytest.mark.pure
def test_go_drop_is_shown_only_when_the_fds_fell_without_close() -> None:
    assert drop_round().shown is True
    # fds rose to half the connections or more: the collections did not keep up.
    assert drop_round(fds_peak=8 + 256).short == (Short.GO_FDS_CLIMBED,)
    assert drop_round(fds_peak=8 + 255).shown is True
    # Nothing waited for a later collection: "late" was not shown.
    assert drop_round(fds_quiet=8).short == (Short.NONE_LEFT,)
    # No collection after the later traffic; or fds not back at the start (+1).
    assert drop_round(later_gc_s=None, fell_s=None).short == (Short.NO_LATER_GC,)
    assert drop_round(fds_after=10, fell_s=None).short == (Short.NOT_HEALED,)
    assert drop_round(fds_after=9).shown is True
    assert drop_round(gcs=()).short == (Short.NO_GC,)
    assert drop_round(alive=False).short == (Short.DIED,)
    why = round_worded(drop_round(fds_after=10, fell_s=None)).why_not
    assert why == "fds 10 at the end, 8 at the start, after a collection at 4.5 s"


def keep_round(**change: Any) -> Round:
    return judged("go-keep", KEEP_GO, {"fds_start": 7, "fds_peak": 135, "fds_after": 135,
                                       "close_wait_peak": 128, "close_wait_after": 0,
                                       "alive": True}, change)


@pytest.mark.pure
def test_go_keep_is_shown_only_when_the_fds_stayed_and_close_wait_went_late() -> None:
    assert keep_round().shown is True
    assert keep_round(close_wait_held_s=9.9).short == (Short.LEFT_EARLY,)
    assert keep_round(close_wait_after=1).short == (Short.KEEP_CLOSE_WAIT_LEFT,)
    assert keep_round(fds_after=134).short == (Short.FDS_FELL,)
    assert keep_round(close_wait_peak=127).short == (Short.NO_CLOSE_WAIT,)
    assert round_worded(keep_round(close_wait_held_s=3.0)).why_not == (
        "CLOSE_WAIT fell after 3.0 s, before Go's 15 s keep-alive could act")


# --- the one Go builder (gopeer's; bench/harness.py's build_go uses it too) ----------------

BENCH_PEERS = Path(__file__).resolve().parent.parent / "bench" / "peers"


@pytest.mark.loopback
@needs_go
def test_go_build_builds_a_module_and_says_why_not(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    # The user's GO* settings are for their own modules: left out, whatever they say.
    monkeypatch.setenv("GOFLAGS", "-mod=vendor")
    monkeypatch.setenv("GOPROXY", "https://proxy.invalid")
    env = gopeer.go_env(tmp_path)
    assert "GOFLAGS" not in env and env["GOPROXY"] == "off" and env["GOENV"] == "off"
    assert env["GOCACHE"] == str(tmp_path / "gocache")
    assert "GOCACHE" not in gopeer.go_env(None)  # Go's default, under HOME
    go = shutil.which("go")
    assert go is not None
    assert gopeer.go_version(go, tmp_path, env).startswith("go1.")
    # bench's churn client (bench/peers, its own module), as bench's build_go builds it.
    took = gopeer.go_build(go, BENCH_PEERS, ".", tmp_path / "churn", env)
    assert took >= 0 and os.access(tmp_path / "churn", os.X_OK)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "go.mod").write_text(gopeer.GO_MOD)
    (broken / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    with pytest.raises(gopeer.GoUnavailable, match=r"^go build \. in .* exited [1-9]: "
                       r".*undefined: undefined"):
        gopeer.go_build(go, broken, ".", broken / "out", env)


# --- the real Go server, as root (or as the user running the tests) ------------------------

@pytest.fixture(scope="module")
def built() -> gopeer.Built:
    if shutil.which("go") is None:
        pytest.skip("go is not on PATH: the Go rounds are skipped")
    return gopeer.build()


@pytest.mark.privileged
@needs_go
def test_go_drop_heals_itself_late(built: gopeer.Built) -> None:
    s = fd_leak.Settings()
    seen, mark = marks()
    r = round_worded(fd_leak._go_drop(s, built, mark, time.monotonic()))
    g = r.go
    assert g is not None and r.fds_start is not None and r.fds_after is not None
    assert r.shown is True, (r.why_not, seen)
    assert r.flood is not None and g.connected == r.flood.echoed == s.clients
    # The server's own totals: every connection accepted, every handler returned, none
    # closed by the code (the handler has no Close()).
    assert g.accepted == g.returned_without_close == s.clients and g.kept == 0
    # The runtime collected during the flood (each 64 KiB buffer grows the heap), and
    # the finalizer closed the unreachable connections: the fds stayed far below 512.
    assert g.gcs_in_flood >= 1 and len(g.gcs) > g.gcs_in_flood
    assert r.fds_peak - r.fds_start < s.clients / 2 and r.emfile_line is None
    assert r.fd_limit == r.fd_limit_hard == s.fd_limit  # soft and hard: Go keeps it
    # After the flood, with nothing allocating, some waited in CLOSE_WAIT ...
    assert g.fds_quiet is not None and g.fds_quiet > r.fds_start
    assert 0 < g.close_wait_quiet <= g.fds_quiet - r.fds_start
    # ... until the later traffic's first collection; then the fds were back.
    assert g.later_gc_s is not None and g.later_gc_s > g.flood_s + g.quiet_s - 0.5
    # (a sample after the collection: equal at most, both rounded to the millisecond)
    assert g.fell_s is not None and g.fell_s >= g.later_gc_s
    assert r.fds_after <= r.fds_start + 1 and r.close_wait_after == 0
    assert g.env == fd_leak.GO_ENV_WORDS and "GODEBUG=gctrace=1" in (r.lesson or "")
    assert any(line.startswith("go-drop: no traffic for 3 s") for line in seen), seen


@pytest.mark.privileged
@needs_go
def test_go_keep_leaks_fds_while_keepalive_clears_close_wait(built: gopeer.Built) -> None:
    s = fd_leak.Settings()
    seen, mark = marks()
    r = round_worded(fd_leak._go_keep(s, built, mark, time.monotonic()))
    g = r.go
    assert g is not None and r.fds_start is not None and r.fds_after is not None
    assert r.shown is True, (r.why_not, seen)
    assert g.connected == 128 and g.accepted == g.kept == 128
    assert r.close_wait_peak == 128
    # No keep-alive probe before 15 s of silence after a client's FIN (the first FIN
    # left at the flood's start); all gone within the round's bound.
    assert g.close_wait_held_s is not None and g.close_wait_held_s >= fd_leak.KEEP_HELD_S
    assert g.close_wait_gone_s is not None and g.close_wait_gone_s <= fd_leak.KEEP_WAIT_S
    assert r.close_wait_after == 0
    # The fds stayed: one per connection, in the slice, never closed.
    assert r.fds_after == r.fds_peak >= r.fds_start + 128
    assert r.lesson is not None and "no collection can close them" in r.lesson


# --- as an ordinary user, through the CLI; and Ctrl-C ----------------------------------------

def unprivileged(venv: Path | None) -> tuple[list[str], dict[str, Any]]:
    """The argv prefix and Popen arguments of a run without privilege and without a
    home (nobody's is /nonexistent): as we are when we are not root; as nobody, through
    nobody's venv (conftest's ``nobody_venv``), when we are."""
    env = {**os.environ, "HOME": "/nonexistent"}
    env.pop("XDG_CACHE_HOME", None)
    if venv is None:
        return tcplab(), {"env": env}
    return ([str(venv / "bin" / "python"), "-m", "tcplab"],
            {"preexec_fn": as_nobody, "env": env, "cwd": "/tmp"})


@pytest.mark.privileged
@needs_go
def test_the_go_rounds_as_an_ordinary_user_without_a_home(nobody_venv: Path | None) -> None:
    argv, kw = unprivileged(nobody_venv)
    r = subprocess.run([*argv, "experiment", "fd-leak", "--go", "yes", "--json"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=300, **kw)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    [body] = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert body["ok"] is True and body["settings"]["go_rounds"] == "yes", (body["fact"], err)
    by = {v["name"]: v for v in body["variants"]}
    assert list(by) == ["leak", "fixed", "go-drop", "go-keep"]
    assert by["go-drop"]["shown"] is True and by["go-keep"]["shown"] is True, err
    assert "Go without Close(): fds peaked at" in body["fact"]
    # The binary was built (or found) in a cache this user owns, not in a home it lacks.
    uid = os.geteuid() if "preexec_fn" not in kw else pwd.getpwnam("nobody").pw_uid
    cache = Path(tempfile.gettempdir()) / f"tcplab-go-{uid}"  # where gopeer puts it
    assert any(cache.glob("goleak-*")), err
    assert cache.stat().st_uid == uid and cache.stat().st_mode & 0o077 == 0
    # The text a user reads: the Go lines and each round's sentence.
    from tcplab.experiments.result import decode

    text = "\n".join(result_lines(worded(decode(body))))
    assert "  Go, no Close() (drop)     fds " in text
    assert "  go-drop round: a Go handler returned without Close() for 512 connections" in text
    assert "  go-keep round: with the connections kept in a slice, " in text


def is_goleak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]).startswith(b"goleak-")
    except OSError:
        return False


def goleak_pids(parent: int) -> list[int]:
    """The Go servers (goleak-HASH) whose parent is ``parent``: the experiment starts
    them itself (Sandbox.popen), so another run's servers are never counted."""
    pids = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if ppid == parent and is_goleak(int(pid)):
            pids.append(int(pid))
    return pids


@pytest.mark.privileged
@needs_go
def test_ctrl_c_during_a_go_round_leaves_no_go_process() -> None:
    proc = subprocess.Popen(tcplab("experiment", "fd-leak", "--go", "yes", "--json"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stderr is not None
    lines = []
    try:
        for raw in proc.stderr:  # progress goes to stderr with --json
            lines.append(raw.decode(errors="replace"))
            if "go-drop: no traffic for" in lines[-1]:
                break  # the Go server is up, its flood done, waiting
        mine = set(goleak_pids(proc.pid))
        assert mine, "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        out = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + out.decode(errors="replace")
    # Gone, not merely re-parented: none of those pids is a Go server any more.
    assert not [p for p in mine if is_goleak(p)]
