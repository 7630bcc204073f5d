"""Finding and building the Go peers in bench/peers/ (shared by the benches).

Nothing is installed or downloaded: GOPROXY=off and GOTOOLCHAIN=local, the
binary goes into a temporary directory the caller removes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent / "peers"


class GoBuildError(Exception):
    pass


def find_go(requested: str | None) -> str | None:
    if requested:
        path = shutil.which(requested)
        if path is None:
            raise GoBuildError(f"--go {requested}: not found or not executable")
        return path
    return shutil.which("go")


def build(go: str, tmp: Path, name: str, target: str) -> dict[str, Any]:
    """``go build -o TMP/NAME TARGET`` in bench/peers: the binary, Go's version, the time."""
    env = dict(os.environ)
    env.pop("GOFLAGS", None)  # a user's -mod=vendor etc. would not apply to this module
    env.update({"GO111MODULE": "on", "GOPROXY": "off", "GOTOOLCHAIN": "local",
                "CGO_ENABLED": "0"})
    home = env.get("HOME", "")
    if not (home and os.path.isdir(home) and os.access(home, os.W_OK)):
        # No usable home: the default GOCACHE and GOPATH live under it.
        env["GOCACHE"] = str(tmp / "gocache")
        env["GOPATH"] = str(tmp / "gopath")
    binary = tmp / name
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60,
                             env=env, stdin=subprocess.DEVNULL)
    t0 = time.perf_counter()
    r = subprocess.run([go, "build", "-o", str(binary), target], cwd=PEERS,
                       capture_output=True, text=True, timeout=600, env=env,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise GoBuildError(f"go build {target} in {PEERS}: exit {r.returncode}\n"
                           f"{r.stderr.strip()}")
    return {"binary": str(binary), "version": version.stdout.strip(),
            "build_s": round(time.perf_counter() - t0, 2),
            "gocache": env.get("GOCACHE", "(default)")}


HOWTO_GO = ("install Go: apt-get install golang-go (Debian/Ubuntu), or https://go.dev/dl/, "
            "or pass --go PATH")


def prepare(requested: str | None, tmp: Path, name: str, target: str
            ) -> tuple[str | None, dict[str, Any]]:
    """Find go and build a peer: (its binary, or None when go is missing; facts to print).

    Without go, the Go rows of a bench are skipped with a note on stderr, not failed.
    """
    import sys

    go = find_go(requested)
    if go is None:
        print(f"note: go is not on PATH: the Go rows are skipped; to run them, {HOWTO_GO}",
              file=sys.stderr)
        return None, {"skipped": f"go is not on PATH; to run the Go rows, {HOWTO_GO}"}
    info = build(go, tmp, name, target)
    info["gomaxprocs"] = os.environ.get("GOMAXPROCS") or os.cpu_count()
    return info["binary"], info
