"""The Go server of fd-leak's Go rounds (``tcplab/peers/goleak.go``), built at run time.

``build()`` finds ``go`` on PATH and builds the source shipped in the package
into a per-user cache, keyed by the hash of the source and of ``go version``,
so the build (about 1 s here with a warm Go cache, a few more from a cold one)
happens once per user and Go, not per run:

* the cache is ``$XDG_CACHE_HOME/tcplab/go`` or ``~/.cache/tcplab/go``; a user
  without a writable home (nobody's is /nonexistent) gets
  ``$TMPDIR/tcplab-go-UID``, made 0700 and refused unless it is a directory of
  that user's that nobody else may write;
* Go's own build cache and module path (GOCACHE, GOPATH) are set inside it, so
  nothing else of the user's is written; GOPROXY=off and GOTOOLCHAIN=local
  (Go 1.21 on) so nothing is downloaded; GOFLAGS and the user's go env file
  (GOENV=off) are left out, since they are for the user's own modules;
* the source is built as its own module (a go.mod written beside a copy of it),
  and the binary renamed into place, so two runs building at once both end
  with a whole binary.

Without ``go`` the Go rounds are skipped with the reason; a build that fails is
a skip too, with go's own first error line (``GoUnavailable``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tcplab.interrupts import deferred, spawn

SOURCE = Path(__file__).resolve().parent.parent / "peers" / "goleak.go"
#: The module the copy is built as; ``go 1.16``: goleak.go calls nothing Go 1.16 lacks
#: (net, os/signal, sync/atomic, encoding/json), and newer Go accepts the line without
#: fetching a toolchain (it fetches one only for a go line above its own version).
GO_MOD = "module tcplab/goleak\n\ngo 1.16\n"
HOWTO = "install Go (apt-get install golang-go, or https://go.dev/dl/) and put go on PATH"
BUILD_TIMEOUT_S = 300.0


class GoUnavailable(Exception):
    """Why the Go server cannot run here (go missing, the cache unusable, the build
    failed): the Go rounds are skipped with this as the reason."""


@dataclass(frozen=True, slots=True)
class Built:
    binary: str
    go_version: str  # ``go version``'s words: "go1.19.8 linux/amd64"
    cached: bool  # the binary was already in the cache
    build_s: float  # 0 when cached


def cache_dir() -> Path:
    """This user's cache for the Go server (created; see the module's docstring)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    home = os.environ.get("HOME", "")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    elif home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        base = Path(home) / ".cache"
    else:
        return _private_tmp()
    where = base / "tcplab" / "go"
    try:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise GoUnavailable(f"cannot create the Go build cache {where}: {e.strerror}") from None
    return where


def _private_tmp() -> Path:
    where = Path(tempfile.gettempdir()) / f"tcplab-go-{os.geteuid()}"
    try:
        where.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise GoUnavailable(f"cannot create the Go build cache {where}: {e.strerror}") from None
    st = os.lstat(where)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & 0o022):
        raise GoUnavailable(f"{where} is not a private directory of this user (uid "
                            f"{os.geteuid()}): the Go server is not built or run from it")
    return where


def go_env(cache: Path | None) -> dict[str, str]:
    """The environment of a go command that builds a module of ours: the user's GO*
    variables and go env file left out (they are for the user's own modules), nothing
    downloaded (GOPROXY=off, GOTOOLCHAIN=local), no cgo; Go's build cache and module
    path (GOCACHE, GOPATH) inside ``cache``, or Go's defaults under HOME with None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update({"GO111MODULE": "on", "GOPROXY": "off", "GOTOOLCHAIN": "local",
                "GOENV": "off", "GOWORK": "off", "CGO_ENABLED": "0"})
    if cache is not None:
        env.update({"GOCACHE": str(cache / "gocache"), "GOPATH": str(cache / "gopath")})
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float
         ) -> subprocess.CompletedProcess[str]:
    """A go command in a process group of its own (the terminal's Ctrl-C goes to us);
    on any way out, the group (go and the compiler and linker it started) is killed
    by its id and go reaped."""
    with deferred():
        proc = spawn(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GoUnavailable(f"{' '.join(args[:2])} took more than {timeout:.0f} s") from None
    finally:
        with deferred():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def go_version(go: str, cwd: Path, env: dict[str, str]) -> str:
    """``go version``'s words: "go1.19.8 linux/amd64"."""
    r = _run([go, "version"], cwd, env, 60)
    if r.returncode != 0:
        raise GoUnavailable(f"'go version' exited {r.returncode}: {_first_line(r.stderr)}")
    return r.stdout.strip().removeprefix("go version ")


def go_build(go: str, cwd: Path, target: str, output: Path, env: dict[str, str],
             timeout: float = BUILD_TIMEOUT_S) -> float:
    """``go build -o OUTPUT TARGET`` in ``cwd`` (a module's directory) with ``env``
    (go_env); the seconds it took. GoUnavailable, with go's first error line, when it
    fails. Used here and by bench/harness.py's build_go."""
    started = time.monotonic()
    r = _run([go, "build", "-o", str(output), target], cwd, env, timeout)
    if r.returncode != 0:
        raise GoUnavailable(f"go build {target} in {cwd} exited {r.returncode}: "
                            f"{_first_line(r.stderr)}")
    return round(time.monotonic() - started, 2)


def build() -> Built:
    """The Go server's binary, built now or found in the cache; GoUnavailable when
    it cannot be."""
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable(f"go is not on PATH; to run the Go rounds, {HOWTO}")
    cache = cache_dir()
    env = go_env(cache)
    words = go_version(go, cache, env)
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + b"\0" + words.encode() + b"\0" + GO_MOD.encode()).hexdigest()
    binary = cache / f"goleak-{key[:16]}"
    if os.access(binary, os.X_OK):
        return Built(str(binary), words, cached=True, build_s=0.0)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        (work / "go.mod").write_text(GO_MOD)
        (work / "goleak.go").write_bytes(source)
        took = go_build(go, work, ".", work / "goleak", env)
        os.replace(work / "goleak", binary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Built(str(binary), words, cached=False, build_s=took)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith("#")]
    return lines[0] if lines else "no output"
