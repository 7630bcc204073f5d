"""``tcplab live``: the TCP state machine of one port, live in a browser."""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections import deque
from typing import IO, Any

from tcplab.cli import common
from tcplab.cli.output import note, out

DESCRIPTION = """\
Serves a page (http://127.0.0.1:9310/ by default) that shows the TCP state
machine of one port moving: the eleven states of RFC 9293 with the live count
of sockets in each, the edges lighting up as real transitions happen (with
their rate), a strip chart per state over the last three minutes, and the
events that matter as they happen: resets, and as root a process's first
connect() failing with EADDRNOTAVAIL and first accept() failing with EMFILE or
ENFILE, in the C library's words with its pid (then how many more each
interval; the syscalls' tracepoints carry no address, so these are on any port,
by a process of the namespace). Pause and slow motion work on the page;
everything shown can be recorded (--record) and replayed (--replay).

Counts come from the kernel's socket table (sock_diag) every --interval.
Transitions come from the sock:inet_sock_set_state tracepoint as root. It is one
for the whole machine, so the page keeps the namespace's own (--netns, else
this one's): a change made by a thread of the namespace, or of a connection
such a change was, or whose socket is in the namespace at the interval's end (by
its addresses and ports: another namespace's connection with the same four at
the same time would show too; the page says so). Without root they come from
sock_diag snapshots, which miss a state shorter than the interval (the page
says that too).

A ladder draws one connection picked on the page: its segments (SYN, SYN-ACK,
ACK, data, FIN, RST, a copy sent again with the gap), from tcplab's own packet
capture on lo (as root; of the first 3 new connections each interval), its
state transitions, and its TIME_WAIT countdown. Without root it draws the
transitions only, and the page says why.

The page fetches nothing from the network (no CDN): it works offline. It is
served on 127.0.0.1 unless --listen says otherwise; on another address anyone
who reaches it sees this host's sockets.
"""

EXAMPLES = """\
examples:
  tcplab live --port 8080                       then open http://127.0.0.1:9310/
  tcplab live --port 8080 --record bomb.jsonl   keep what the page shows
  tcplab live --replay bomb.jsonl               the same page, from the recording
"""

#: Seconds of history a page gets when it connects (its strip charts' window).
HISTORY_S = 200.0
#: Events a slow page may fall behind by before it is cut off (it reconnects).
CLIENT_QUEUE = 20_000


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, parents=[common.parent()],
                       help="the TCP state machine of a port, live in a browser (for a projector)",
                       description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=common.listen_address, default=("127.0.0.1", 9310),
                   metavar="HOST:PORT", help="where to serve the page (default 127.0.0.1:9310)")
    p.add_argument("--port", type=common.port, default=0,
                   help="the TCP port to show (local or remote; default: every port)")
    p.add_argument("--interval", type=common.seconds, default=0.5, metavar="SECONDS",
                   help="seconds between two counts (default 0.5)")
    p.add_argument("--record", type=argparse.FileType("w"), metavar="FILE",
                   help="write everything the page shows to FILE, one JSON object a line")
    p.add_argument("--replay", type=argparse.FileType("r"), metavar="FILE",
                   help="serve a page that replays FILE (a --record) instead of the kernel")
    p.add_argument("--duration", type=common.seconds, metavar="SECONDS",
                   help="stop after this many seconds (default: at Ctrl-C)")
    common.add_netns(p)
    p.set_defaults(func=run)


class Hub:
    """The events of the last HISTORY_S seconds, and one queue per open page.
    The sampler never waits for a page: a page that falls CLIENT_QUEUE events
    behind is cut off (its EventSource reconnects and gets the history again)."""

    def __init__(self) -> None:
        import asyncio

        self.meta: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque()
        self.clients: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def publish(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            if ev["kind"] == "meta":
                self.meta = ev
            else:
                self.history.append(ev)
        if self.history:
            newest = self.history[-1]["t"]
            while self.history and self.history[0]["t"] < newest - HISTORY_S:
                self.history.popleft()
        for q in list(self.clients):
            for ev in events:
                if q.full():
                    self.clients.discard(q)
                    q.put_nowait(None) if not q.full() else None
                    break
                q.put_nowait(ev)

    def close(self) -> None:
        """End every open stream (each gets None: its handler returns)."""
        for q in list(self.clients):
            if not q.full():
                q.put_nowait(None)
        self.clients.clear()

    def subscribe(self) -> tuple[list[dict[str, Any]], Any]:
        """What a new page gets first (meta and history), and its queue for what
        comes next: taken together, with no await between, so nothing falls
        between them."""
        import asyncio

        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(q)
        return ([self.meta] if self.meta else []) + list(self.history), q


def read_recording(f: IO[str]) -> list[dict[str, Any]]:
    """The events of a --record file; a line that is not one is a usage error naming it."""
    from tcplab.errors import UsageError

    events = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{f.name}, line {n}: not JSON ({exc.msg})",
                             hint="give a file that 'tcplab live --record' wrote") from None
        if not isinstance(ev, dict) or "kind" not in ev or "t" not in ev:
            raise UsageError(f"{f.name}, line {n}: not a tcplab live event",
                             hint="give a file that 'tcplab live --record' wrote")
        events.append(ev)
    return events


def run(args: argparse.Namespace) -> int:
    import asyncio

    from tcplab.errors import ExitStatus

    host, port = args.listen
    if host not in ("127.0.0.1", "::1", "localhost"):
        note(f"warning: serving on {host}: anyone who reaches it sees this host's TCP sockets")
    try:
        asyncio.run(_serve(args, host, port))
    except KeyboardInterrupt:
        note("stopped")
        return ExitStatus.INTERRUPTED
    return 0


async def _serve(args: argparse.Namespace, host: str, port: int) -> None:
    import asyncio

    replay = read_recording(args.replay) if args.replay else None
    title = "tcplab live" + (f": port {args.port}" if args.port else "")
    if replay is not None:
        meta = next((e for e in replay if e["kind"] == "meta"), None)
        title = f"tcplab live replay of {args.replay.name}" + (
            f": port {meta['port']}" if meta and meta.get("port") else "")
    hub = Hub()
    sock = bind(host, port)
    runner = await start(hub, title, replay, sock)
    stop = threading.Event()
    producer: threading.Thread | None = None
    source: Any = None
    try:
        if replay is None:
            from tcplab.observe.live import LiveSource

            source = LiveSource(args.port, args.netns, args.interval)
            loop = asyncio.get_running_loop()
            first = source.meta()
            hub.publish([first])
            _write(args.record, [first])
            producer = threading.Thread(target=_produce, daemon=True,
                                        args=(source, hub, loop, stop, args.record))
            producer.start()
        out(f"serving the page on {url(host, sock)} (Ctrl-C stops)")
        await asyncio.sleep(args.duration if args.duration else 10 ** 9)
    finally:
        stop.set()
        if producer is not None:
            producer.join(timeout=5 + args.interval)
        if source is not None:
            source.close()  # the trace instance is removed here
        if args.record:
            args.record.close()
        hub.close()
        await runner.cleanup()


def bind(host: str, port: int) -> Any:
    """Our own listening socket: its error names the port's holder, and port 0
    gives the one the kernel chose."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        from tcplab.traffic.server import bind_error

        raise bind_error(exc, common.where(host, port), port,
                         free=f"--listen {common.where(host, 0)}") from None
    return sock


def url(host: str, sock: Any) -> str:
    return f"http://{common.where(host, sock.getsockname()[1])}/"


async def start(hub: Hub, title: str, replay: list[dict[str, Any]] | None, sock: Any) -> Any:
    """Serve the page on ``sock`` (from bind): ``/`` and, live, ``/events`` (the
    hub's stream). Returns the aiohttp runner; its ``cleanup()`` stops it (after
    ``hub.close()``, which ends the open streams)."""
    import asyncio

    from aiohttp import web

    from tcplab.report.live_page import page

    app = web.Application()

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=page(title, replay), content_type="text/html")

    async def events(request: web.Request) -> web.StreamResponse:
        """A WebSocket (not server-sent events: a browser opens at most 6 HTTP/1.1
        connections to one host, and every page would hold one of them, so a 7th
        tab could not even load): each message a JSON list of events."""
        ws = web.WebSocketResponse(heartbeat=30)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="/events is the page's WebSocket: open / "
                                "in a browser\n")
        first, q = hub.subscribe()

        async def pump() -> None:
            await ws.send_str(json.dumps(first))
            while True:
                ev = await q.get()
                if ev is None:
                    break  # fell too far behind: cut off (the page reconnects)
                batch = [ev]
                while not q.empty() and len(batch) < 500:
                    nxt = q.get_nowait()
                    if nxt is None:
                        break
                    batch.append(nxt)
                await ws.send_str(json.dumps(batch))
            await ws.close()

        writer: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            writer = asyncio.create_task(pump())
            # Read what the page sends (nothing but the close handshake and pongs):
            # a close is seen at once, not at the next event.
            async for _msg in ws:
                pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.clients.discard(q)
            if writer is not None:
                writer.cancel()
            await ws.close()
        return ws

    app.router.add_get("/", index)
    if replay is None:
        app.router.add_get("/events", events)
    # shutdown_timeout: an open stream would hold cleanup() for aiohttp's 60 s default.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class PageThread:
    """The live page served from a thread of its own, for a command whose main
    thread runs something else (``experiment --live``): ``publish`` from any
    thread, ``close`` when done. Binding happens here, in the caller's thread, so a
    port in use is the caller's error."""

    def __init__(self, host: str, port: int, title: str) -> None:
        import asyncio

        self.hub = Hub()
        self.sock = bind(host, port)
        self.url = url(host, self.sock)
        self.loop = asyncio.new_event_loop()
        self._runner: Any = None
        self._failed: BaseException | None = None
        ready = threading.Event()

        def run() -> None:
            try:
                self._runner = self.loop.run_until_complete(
                    start(self.hub, title, None, self.sock))
            except BaseException as exc:  # said to the caller below
                self._failed = exc
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.hub.close()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="live page", daemon=True)
        self._thread.start()
        ready.wait()
        if self._failed is not None:
            self.sock.close()
            raise self._failed

    def publish(self, events: list[dict[str, Any]]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.hub.publish, events)
        except RuntimeError:
            pass  # the loop is closed: we are stopping

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass
            self._thread.join(timeout=5)
        self.sock.close()


def _produce(source: Any, hub: Hub, loop: Any, stop: threading.Event,
             record: IO[str] | None) -> None:
    """The sampler: its own thread and pace, whatever the pages do."""
    while not stop.is_set():
        events = source.step()
        _write(record, events)
        try:
            loop.call_soon_threadsafe(hub.publish, events)
        except RuntimeError:
            return  # the loop is closed: we are stopping


def _write(record: IO[str] | None, events: list[dict[str, Any]]) -> None:
    if record is not None:
        record.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        record.flush()


class ExperimentLive:
    """``experiment --live / --record``: the follower (experiments/live_hook.py) whose
    events go to the page (a PageThread), the record file and, for the report's
    replays, one list per experiment; the experiment's progress lines (the
    variant it starts, the bomb's first EADDRNOTAVAIL) are events too."""

    def __init__(self, live: bool, listen: tuple[str, int], record: IO[str] | None,
                 interval: float, title: str) -> None:
        from tcplab.experiments.live_hook import Follower

        self.page: PageThread | None = None
        if live:
            host, port = listen
            if host not in ("127.0.0.1", "::1", "localhost"):
                note(f"warning: serving on {host}: anyone who reaches it sees the "
                     "experiments' sockets")
            self.page = PageThread(host, port, title)
            note(f"serving the live page on {self.page.url}")
        self.record = record
        self.recordings: dict[str, list[dict[str, Any]]] = {}
        self._current: list[dict[str, Any]] | None = None
        # A page watched as root: transitions from the tracepoints (every edge, its
        # rate); machine-wide, so each agent reads every change on the machine and
        # keeps its namespaces': only for --live, not for a recording alone.
        self.follower = Follower(self._sink, interval, tracepoint=live and os.geteuid() == 0)

    def _sink(self, events: list[dict[str, Any]]) -> None:
        _write(self.record, events)
        if self.page is not None:
            self.page.publish(events)
        if self._current is not None:
            self._current.extend(events)

    def experiment(self, name: str, progress: Any) -> Any:
        """Events from now on are ``name``'s (its replay in the report); returns the
        experiment's progress callback, its lines made events too."""
        from tcplab.experiments import live_hook

        live_hook.install(self.follower)
        self.follower.label = name
        self._current = self.recordings.setdefault(name, [])
        self.follower.event(f"experiment {name} started")

        def both(line: str, verdict: object = None, /) -> None:
            progress(line, verdict)
            text = line.strip()
            if text.startswith(f"{name}: "):
                self.follower.label = text  # "port-bomb: fresh": the next namespace's name
            self.follower.event(text)
        return both

    def hold(self) -> None:
        """After the run, the page stays (pause, slow motion) until Ctrl-C."""
        if self.page is None:
            return
        import time

        try:  # the note inside: a Ctrl-C just after it is this one's
            note(f"the experiments are over; the page stays on {self.page.url} until Ctrl-C")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            note("page stopped")

    def close(self) -> None:
        from tcplab.experiments import live_hook

        live_hook.install(None)
        if self.page is not None:
            self.page.close()
        if self.record is not None:
            self.record.close()
