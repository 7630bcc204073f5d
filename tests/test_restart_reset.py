"""``tcplab experiment restart`` and ``tcplab experiment reset``, as a user runs them.

Each runs for real in a private network namespace (as root, or as an ordinary
user in a user+net namespace); the checks are what a user reads: the errno and
its text, the TIME_WAIT count, the states, and "shown".
"""

from __future__ import annotations

import pytest

from tests.helpers import one_json, run_tcplab


@pytest.mark.privileged
def test_restart_bind_fails_with_eaddrinuse_without_so_reuseaddr() -> None:
    b = one_json(run_tcplab("experiment", "restart", "--json", timeout=120))
    assert b["experiment"] == "restart" and b["ok"] is True and b["skipped"] is None, b["fact"]
    binds = b["facts"]["binds"]
    n = b["settings"]["connections"]
    # The old server (with SO_REUSEADDR) left one TIME_WAIT per connection on its port.
    with_old = [x for x in binds if x["old_reuseaddr"]]
    assert [x["time_wait"] for x in with_old] == [n, n]
    plain, reuse = with_old
    assert (plain["listening"], plain["errno"], plain["error"]) == (
        False, 98, "Address already in use")
    assert (reuse["listening"], reuse["errno"]) == (True, None)
    # An old server without it: the new one's SO_REUSEADDR does not help.
    late = [x for x in binds if not x["old_reuseaddr"] and x["new_reuseaddr"]]
    assert [(x["listening"], x["error"]) for x in late] == [(False, "Address already in use")]
    assert "bind() without SO_REUSEADDR failed with [Errno 98] EADDRINUSE: Address already " \
        "in use" in b["fact"]
    assert f"with {n} TIME_WAIT sockets on port 8080" in b["fact"]


@pytest.mark.privileged
def test_restart_text_has_the_table() -> None:
    r = run_tcplab("experiment", "restart", "--quick", timeout=120)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment restart: shown\n"), text
    assert "old server       new bind()       TIME_WAIT on port  bind()" in text
    assert "EADDRINUSE: Address already in use" in text
    assert "3 on 8080" in text  # --quick: 3 connections


@pytest.mark.privileged
def test_reset_unread_data_gives_econnreset() -> None:
    b = one_json(run_tcplab("experiment", "reset", "--json", timeout=120))
    assert b["experiment"] == "reset" and b["ok"] is True and b["skipped"] is None, b["fact"]
    by = {c["case"]: c for c in b["facts"]["closes"]}
    assert list(by) == ["read-first", "unread", "linger0"]
    # Read first: a FIN; the client reads EOF and sits in CLOSE_WAIT.
    first = by["read-first"]
    assert (first["read_bytes"], first["read_errno"], first["out_rsts"]) == (0, None, 0)
    assert (first["server_after"], first["client_after"]) == ("FIN_WAIT2", "CLOSE_WAIT")
    # Unread data, and SO_LINGER 0: a RST, and the client's read fails.
    for case in ("unread", "linger0"):
        c = by[case]
        assert (c["read_errno"], c["read_error"]) == (104, "Connection reset by peer"), case
        assert c["out_rsts"] == 1 and c["server_after"] == c["client_after"] == "gone", case
    assert by["unread"]["unread_bytes"] == b["settings"]["sent_bytes"] == 5
    assert by["unread"]["abort_on_close"] == 1 and by["linger0"]["abort_on_data"] == 1
    assert "[Errno 104] ECONNRESET: Connection reset by peer" in b["fact"]


@pytest.mark.privileged
def test_reset_text_has_the_table() -> None:
    r = run_tcplab("experiment", "reset", timeout=120)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert text.startswith("experiment reset: shown\n"), text
    rows = [line.split() for line in text.splitlines()]
    assert ["unread", "5", "B", "1", "gone", "gone", "[Errno", "104]", "ECONNRESET:",
            "Connection", "reset", "by", "peer"] in rows
    assert ["read-first", "0", "B", "0", "FIN_WAIT2", "CLOSE_WAIT", "EOF", "(0", "bytes)"] in rows
