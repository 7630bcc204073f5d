"""The page of ``tcplab live``: one HTML file, its script and styles inline.

Nothing is fetched at run time (a classroom may be offline): no CDN, no
library; the script is written here. It plays a list of events (the JSON lines
observe.live makes) on its own clock, so pause and slow motion work the same on
a live stream (a WebSocket, /events) and on a recording embedded in
the page (``tcplab live --replay FILE``, and the HTML report).

Type is sized for a projector: state names and counts are text in the page (a
screen reader, and a test, read them), not only pixels.
"""

from __future__ import annotations

import html
import json
from typing import Any

from tcplab.report.live_ladder import LADDER

#: (state, x, y) in the diagram's 1000 x 800 box: RFC 9293's figure, top to bottom.
LAYOUT = [
    ("CLOSE", 500, 50), ("LISTEN", 500, 160), ("SYN_RECV", 230, 270), ("SYN_SENT", 770, 270),
    ("ESTABLISHED", 500, 380), ("FIN_WAIT1", 230, 490), ("CLOSE_WAIT", 770, 490),
    ("FIN_WAIT2", 110, 610), ("CLOSING", 360, 610), ("LAST_ACK", 770, 610),
    ("TIME_WAIT", 230, 730),
]

#: The edges drawn: RFC 9293's (section 3.3.2, figure 5), and the kernel's own
#: that its tracepoint shows (FIN_WAIT2 -> CLOSE: the full socket dies as a
#: minisocket takes its place; -> CLOSE on a reset or an abort).
EDGES = [
    ("CLOSE", "LISTEN"), ("CLOSE", "SYN_SENT"), ("LISTEN", "SYN_RECV"),
    ("LISTEN", "CLOSE"), ("SYN_SENT", "SYN_RECV"), ("SYN_SENT", "ESTABLISHED"),
    ("SYN_SENT", "CLOSE"), ("SYN_RECV", "ESTABLISHED"), ("SYN_RECV", "FIN_WAIT1"),
    ("ESTABLISHED", "FIN_WAIT1"), ("ESTABLISHED", "CLOSE_WAIT"), ("ESTABLISHED", "CLOSE"),
    ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT1", "CLOSING"), ("FIN_WAIT1", "TIME_WAIT"),
    ("FIN_WAIT2", "TIME_WAIT"), ("FIN_WAIT2", "CLOSE"), ("CLOSING", "TIME_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"), ("CLOSE_WAIT", "CLOSE"), ("LAST_ACK", "CLOSE"),
    ("TIME_WAIT", "CLOSE"),
]


#: Edges drawn around the others, by two control points (a cubic curve): those
#: to CLOSE from the bottom of the figure go around its sides, as in RFC 9293's.
ROUTES = {
    "TIME_WAIT-CLOSE": [[20, 760], [20, 50]], "FIN_WAIT2-CLOSE": [[60, 560], [60, 80]],
    "LAST_ACK-CLOSE": [[985, 640], [985, 50]], "CLOSE_WAIT-CLOSE": [[930, 470], [930, 80]],
    "ESTABLISHED-CLOSE": [[650, 330], [650, 90]],
}


def page(title: str, events: list[dict[str, Any]] | None = None) -> str:
    """The page; with ``events`` it replays them (no server needed), without it
    follows /events."""
    data = "null" if events is None else json.dumps(events, separators=(",", ":"))
    # </script> inside the JSON would end the script element early.
    data = data.replace("</", "<\\/")
    boxes = "\n".join(
        f'<g class="state" id="state-{n}" transform="translate({x},{y})">'
        f'<rect x="-95" y="-34" width="190" height="68" rx="10"/>'
        f'<text class="name" y="-6">{n}</text>'
        f'<text class="count" y="26" id="svgcount-{n}">0</text></g>'
        for n, x, y in LAYOUT)
    return (TEMPLATE.replace("%TITLE%", html.escape(title))
            .replace("%BOXES%", boxes)
            .replace("%LAYOUT%", json.dumps({n: [x, y] for n, x, y in LAYOUT}))
            .replace("%EDGES%", json.dumps(EDGES))
            .replace("%ROUTES%", json.dumps(ROUTES))
            .replace("%STATES%", json.dumps([n for n, _, _ in LAYOUT]))
            .replace("%DATA%", data)
            .replace("</body></html>", LADDER + "</body></html>"))  # report/live_ladder.py's


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body { font: 22px/1.35 system-ui, sans-serif; margin: 0.6em 1em; background: #fff; color: #111; }
h1 { font-size: 30px; margin: 0 0 0.2em; }
#source { font-size: 18px; color: #444; max-width: 80em; cursor: pointer;
  /* two lines, so the diagram fits a projector's screen; a click shows it all */
  display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }
#source.open { display: block; }
#controls button, #controls select { font-size: 22px; margin-right: 0.4em; }
#clock { font-variant-numeric: tabular-nums; margin-left: 0.6em; }
#main { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
svg#diagram { width: 54vw; min-width: 600px; max-height: 88vh; }
.state rect { fill: #f4f6fb; stroke: #33415c; stroke-width: 3; }
.state.busy rect { fill: #dbe7ff; }
.state text { text-anchor: middle; font-size: 24px; }
.state text.count { font-size: 30px; font-weight: bold; font-variant-numeric: tabular-nums; }
.edge { stroke: #9aa5b8; stroke-width: 3; fill: none; marker-end: url(#arrow); }
.edge.lit { stroke: #d9480f; stroke-width: 8; }
.rate { font-size: 22px; font-weight: bold; fill: #d9480f; text-anchor: middle;
  paint-order: stroke; stroke: #fff; stroke-width: 6px; }  /* readable over an edge */
table#counts { border-collapse: collapse; font-size: 24px; }
table#counts td { padding: 0.1em 0.5em; }
table#counts td.n { text-align: right; font-variant-numeric: tabular-nums; font-weight: bold; }
svg.strip { width: 220px; height: 34px; vertical-align: middle; }
svg.strip polyline { fill: none; stroke: #33415c; stroke-width: 2; }
#strip-span { font-size: 18px; color: #444; }
#side { flex: 1 1 420px; min-width: 380px; }
#side h2 { font-size: 24px; margin: 0.5em 0 0.2em; }
#events, #transitions { font: 18px/1.3 ui-monospace, monospace; max-height: 10em; overflow: auto;
  white-space: nowrap; }
#events > * { white-space: normal; padding-left: 2em; text-indent: -2em; }  /* the errors whole */
</style></head>
<body>
<h1>%TITLE%</h1>
<div id="source" title="what this page sees and can miss (click for all of it)"
  onclick="this.classList.toggle('open')">connecting...</div>
<div id="controls">
  <button id="pause">Pause</button>
  <label>speed <select id="speed">
    <option value="1">1x</option><option value="0.5">0.5x</option>
    <option value="0.25">0.25x</option><option value="0.1">0.1x</option>
  </select></label>
  <button id="live">Back to now</button>
  <span id="clock">t = 0.0 s</span>
</div>
<div id="main">
<svg id="diagram" viewBox="0 0 1000 800" role="img" aria-label="TCP state diagram">
  <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="16"
    markerHeight="16" markerUnits="userSpaceOnUse" orient="auto-start-reverse">
    <path d="M0,0 L10,5 L0,10 z" fill="#666"/>
  </marker></defs>
  <g id="edges"></g>
  %BOXES%
  <g id="rates"></g>
</svg>
<div id="side">
  <table id="counts" aria-label="sockets per state"><tbody></tbody></table>
  <div id="strip-span"></div>
  <h2>Events</h2><div id="events" aria-live="polite"></div>
  <h2>Transitions</h2><div id="transitions"></div>
</div>
</div>
<script>
"use strict";
const LAYOUT = %LAYOUT%, EDGES = %EDGES%, STATES = %STATES%, ROUTES = %ROUTES%;
const RECORDED = %DATA%;
// seconds of history in the strip charts: three minutes live, a short replay whole
let WINDOW = 180;
const log = [];      // every event received, in order of t
let clock = 0, paused = false, speed = 1, following = true, shown = 0, lastFrame = null;
let latestCounts = null;
const litUntil = {}, edgeTimes = {};

function edgeId(a, b) { return "edge-" + a + "-" + b; }
function drawEdges() {
  const g = document.getElementById("edges"), rates = document.getElementById("rates");
  // a point on the border of the box at (x, y), toward (tx, ty)
  const border = (x, y, tx, ty) => {
    const dx = tx - x, dy = ty - y;
    const k = Math.min(100 / Math.abs(dx || 1e-9), 40 / Math.abs(dy || 1e-9));
    return [x + dx * k, y + dy * k];
  };
  for (const [a, b] of EDGES) {
    const [x1, y1] = LAYOUT[a], [x2, y2] = LAYOUT[b], route = ROUTES[a + "-" + b];
    const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    let mx, my;
    if (route) {
      const [[c1x, c1y], [c2x, c2y]] = route;
      const [sx, sy] = border(x1, y1, c1x, c1y), [ex, ey] = border(x2, y2, c2x, c2y);
      p.setAttribute("d", `M${sx},${sy} C${c1x},${c1y} ${c2x},${c2y} ${ex},${ey}`);
      mx = (c1x + c2x) / 2 + (c1x < 500 ? 28 : -28); my = (c1y + c2y) / 2;
    } else {
      const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1, bend = 24;
      const [sx, sy] = border(x1, y1, x2, y2), [ex, ey] = border(x2, y2, x1, y1);
      mx = (sx + ex) / 2 - dy / len * bend; my = (sy + ey) / 2 + dx / len * bend;
      p.setAttribute("d", `M${sx},${sy} Q${mx},${my} ${ex},${ey}`);
    }
    p.setAttribute("class", "edge"); p.id = edgeId(a, b);
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("class", "rate"); t.setAttribute("x", mx); t.setAttribute("y", my);
    t.id = "rate-" + a + "-" + b;
    g.appendChild(p); rates.appendChild(t);  // the rates over the boxes: never hidden
  }
}
function buildTable() {
  const body = document.querySelector("#counts tbody");
  for (const s of STATES) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${s}</td><td class="n" id="count-${s}">0</td>` +
      `<td><svg class="strip" viewBox="0 0 220 34" aria-hidden="true">` +
      `<polyline id="strip-${s}" points=""/></svg></td>`;
    body.appendChild(tr);
  }
}
let lastT = -1, lastCountsT = -1, firstCountsT = null;  // the oldest counts kept: strips
function add(ev) {
  if (ev.kind === "meta" && RECORDED === null) {
    // live: the newest meta is what is being shown now (the server sends it first)
    document.getElementById("source").textContent = ev.words;
    return;
  }
  // a reconnected WebSocket sends its history again: keep each event once
  if (ev.kind !== "meta" && (ev.t < lastT || (ev.kind === "counts" && ev.t === lastCountsT))) {
    return;
  }
  if (ev.kind !== "meta") lastT = ev.t;
  if (ev.kind === "counts") lastCountsT = ev.t;
  if (ev.kind === "counts" && firstCountsT === null) firstCountsT = ev.t;
  log.push(ev);
  if (log.length > 60000 && shown > 30000) {  // hours live: keep what the charts need
    log.splice(0, 30000); shown -= 30000;
    firstCountsT = (log.find(e => e.kind === "counts") || {t: null}).t;
  }
}
function render() {
  // counts: the last at or before the clock
  let counts = null;
  for (let i = shown; i < log.length && log[i].t <= clock; i++) {
    const ev = log[i]; shown = i + 1;
    if (ev.kind === "edges") {
      for (const [key, n] of Object.entries(ev.edges)) {
        const id = key.replace(">", "-");
        litUntil[id] = clock + 0.8;
        (edgeTimes[id] = edgeTimes[id] || []).push([ev.t, n]);
      }
    } else if (ev.kind === "transition") {
      const line = `${ev.t.toFixed(3)} s  ${ev.saddr}:${ev.sport} > ${ev.daddr}:${ev.dport}` +
        `  ${ev.old} -> ${ev.new}` + (ev.ms_in_old == null ? "" : ` (${ev.ms_in_old} ms)`);
      prepend("transitions", line, 30);
    } else if (ev.kind === "event") {
      prepend("events", `${ev.t.toFixed(3)} s  ${ev.text}`, 100);
    } else if (ev.kind === "counts") {
      counts = ev;
    } else if (ev.kind === "meta") {  // a replay: each part's words when it begins
      document.getElementById("source").textContent = ev.words;
    }
  }
  if (counts) { latestCounts = counts; showCounts(counts); }
  for (const [a, b] of EDGES) {
    const id = a + "-" + b, el = document.getElementById("edge-" + id);
    el.classList.toggle("lit", (litUntil[id] || 0) > clock);
    const recent = (edgeTimes[id] || []).filter(([t]) => t > clock - 5 && t <= clock);
    edgeTimes[id] = recent;
    const n = recent.reduce((sum, [, k]) => sum + k, 0);
    const rate = n / 5;  // over the last 5 s
    document.getElementById("rate-" + id).textContent =
      !n ? "" : (rate >= 10 ? Math.round(rate).toLocaleString("en") : rate.toFixed(1)) + "/s";
  }
  document.getElementById("clock").textContent = `t = ${clock.toFixed(1)} s` +
    (paused ? " (paused)" : speed !== 1 ? ` (${speed}x)` : "");
}
function prepend(id, text, keep) {
  const box = document.getElementById(id), div = document.createElement("div");
  div.textContent = text; box.prepend(div);
  while (box.childNodes.length > keep) box.lastChild.remove();
}
function showCounts(c) {
  for (const s of STATES) {
    const n = c.states[s] || 0;
    document.getElementById("count-" + s).textContent = n.toLocaleString("en");
    document.getElementById("svgcount-" + s).textContent = n.toLocaleString("en");
    document.getElementById("state-" + s).classList.toggle("busy", n > 0);
  }
  // the strips span what there is, up to WINDOW: a page opened 5 s ago fills them
  const first = firstCountsT === null ? c.t : firstCountsT;
  const span = Math.max(5, Math.min(WINDOW, c.t - first)), since = c.t - span, pts = {};
  for (const s of STATES) pts[s] = [];
  for (const ev of log) {
    if (ev.kind !== "counts" || ev.t < since || ev.t > c.t) continue;
    for (const s of STATES) pts[s].push([ev.t, ev.states[s] || 0]);
  }
  for (const s of STATES) {
    const max = Math.max(1, ...pts[s].map(p => p[1]));
    const xy = ([t, n]) =>
      `${((t - since) / span * 220).toFixed(1)},${(32 - n / max * 30).toFixed(1)}`;
    document.getElementById("strip-" + s).setAttribute("points", pts[s].map(xy).join(" "));
  }
  document.getElementById("strip-span").textContent =
    `Each strip: the last ${Math.round(span)} s, scaled to its own highest count.`;
}
function frame(now) {
  if (lastFrame !== null && !paused) {
    const newest = log.length ? log[log.length - 1].t : 0;
    clock += (now - lastFrame) / 1000 * speed;
    if (following && speed === 1 && RECORDED === null) clock = Math.max(clock, newest);
    if (RECORDED !== null) clock = Math.min(clock, newest);
  }
  lastFrame = now;
  render();
  requestAnimationFrame(frame);
}
document.getElementById("pause").onclick = e => {
  paused = !paused; e.target.textContent = paused ? "Resume" : "Pause";
  if (paused) following = false;
};
document.getElementById("speed").onchange = e => {
  speed = parseFloat(e.target.value); following = speed === 1;
};
document.getElementById("live").onclick = () => {
  following = true; paused = false; speed = 1; document.getElementById("speed").value = "1";
  document.getElementById("pause").textContent = "Pause";
  if (log.length) clock = log[log.length - 1].t;
};
drawEdges(); buildTable();
if (RECORDED !== null) {
  for (const ev of RECORDED) add(ev);
  following = false;
  WINDOW = Math.max(5, Math.min(180, lastT));
  const first = RECORDED.find(ev => ev.kind === "meta");
  if (first) document.getElementById("source").textContent = first.words;
} else {
  const connect = () => {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                             location.host + "/events");
    ws.onmessage = m => { for (const ev of JSON.parse(m.data)) add(ev); };
    ws.onclose = () => {
      document.getElementById("source").textContent += " (connection lost; retrying)";
      setTimeout(connect, 2000);
    };
  };
  connect();
}
requestAnimationFrame(frame);
</script>
</body></html>
"""
