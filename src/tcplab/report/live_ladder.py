"""The ladder of ``tcplab live``'s page: one connection, segment by segment.

A block of its own, appended to report/live_page.py's page by ``page()``: its
HTML, styles and script. The script reads the page's event log and clock (the
globals ``log``, ``clock`` and ``RECORDED`` of live_page's script) and wraps its
``add`` to see each event as it comes, so pause, slow motion and replay move the
ladder too. The events are observe/ladder.py's (``packet``, ``timer``, ``ladder``)
and observe/live.py's transitions.

Client and server are two vertical lines, each segment an arrow between them,
time going down one row per segment (a row's time is printed at its left: the
handshake takes microseconds on loopback, a retransmission hundreds of
milliseconds, so rows are not to scale). Type is 24 px for a projector.
"""

LADDER = r"""
<section id="ladder">
<h2>One connection: <select id="ladder-conn" aria-label="connection"></select></h2>
<div id="ladder-why"></div>
<div id="ladder-lost"></div>
<div id="ladder-none">Click a line in Transitions, or pick a connection above.</div>
<svg id="ladder-svg" viewBox="0 0 1100 100" role="img" aria-label="ladder of one connection">
</svg>
</section>
<style>
#ladder { margin-top: 0.6em; }
#ladder h2 { font-size: 26px; margin: 0.3em 0; }
#ladder-conn { font: 22px ui-monospace, monospace; max-width: 90vw; }
#ladder-why, #ladder-lost { font-size: 20px; color: #444; }
#ladder-none { font-size: 22px; color: #666; }
#transitions div { cursor: pointer; }
#transitions div:hover { background: #eef; }
svg#ladder-svg { width: min(96vw, 1400px); }
#ladder-svg text { font-size: 24px; font-family: system-ui, sans-serif; }
#ladder-svg .end { font-size: 26px; font-weight: bold; text-anchor: middle; }
#ladder-svg .life { stroke: #33415c; stroke-width: 4; }
#ladder-svg .seg { stroke: #1c5bbf; stroke-width: 3; marker-end: url(#ladder-arrow); }
#ladder-svg .seg.rst { stroke: #c92a2a; }
#ladder-svg .seg.again { stroke: #d9480f; stroke-dasharray: 10 6; }
#ladder-svg .seg-word { font-weight: bold; fill: #1c5bbf; text-anchor: middle; }
#ladder-svg .seg-word.rst { fill: #c92a2a; }
#ladder-svg .when { fill: #555; font-variant-numeric: tabular-nums; }
#ladder-svg .again-text { fill: #d9480f; font-weight: bold; }
#ladder-svg .state-text { fill: #2b8a3e; font-size: 22px; }
#ladder-svg .timer { fill: #862e9c; font-size: 28px; font-weight: bold;
  font-variant-numeric: tabular-nums; }
</style>
<script>
"use strict";
(() => {
  const NS = "http://www.w3.org/2000/svg", ROW = 58, TOP = 80, MAXROWS = 40;
  const XC = 330, XS = 900;  // the client's and the server's lines
  const conns = new Map();   // conn -> {packets, transitions, timers, seen}
  let port = 0, chosen = null, picked = false, drawn = "";

  function connKey(a, ap, b, bp) {
    const x = a + ":" + ap, y = b + ":" + bp;
    return x <= y ? x + " " + y : y + " " + x;
  }
  function conn(k) {
    let c = conns.get(k);
    if (!c) {
      c = {packets: [], transitions: [], timers: [], seen: new Set()};
      conns.set(k, c);
      // at most 200 kept, the oldest goes first: never the one on the ladder (a bomb
      // makes thousands; the chosen one was the oldest and the ladder drew nothing)
      if (conns.size > 200) {
        for (const old of conns.keys()) {
          if (old !== chosen && old !== k) { conns.delete(old); break; }
        }
      }
      listed(k);
    }
    return c;
  }
  // An event met before (a reconnected stream sends its history again): false.
  function fresh(c, ev) {
    const id = [ev.kind, ev.t, ev.sport, ev.seq, ev.flags, ev.old, ev.new].join("|");
    if (c.seen.has(id)) return false;
    c.seen.add(id);
    return true;
  }
  function take(ev) {
    if (ev.kind === "meta") {
      port = ev.port || 0;
      document.getElementById("ladder-why").textContent = ev.ladder || "";
    } else if (ev.kind === "packet") {
      const c = conn(ev.conn);
      if (c.packets.length < 2000 && fresh(c, ev)) c.packets.push(ev);
      if (!picked && chosen === null) choose(ev.conn);
    } else if (ev.kind === "transition" && ev.sport && ev.dport) {
      const k = connKey(ev.saddr, ev.sport, ev.daddr, ev.dport), c = conn(k);
      if (c.transitions.length < 200 && fresh(c, ev)) c.transitions.push(ev);
    } else if (ev.kind === "timer") {
      const c = conn(ev.conn);
      if (fresh(c, ev)) c.timers.push(ev);
    } else if (ev.kind === "ladder") {
      // observe/ladder.py's bounds at work: say so, the ladder may lack segments
      document.getElementById("ladder-lost").textContent = `At ${ev.t.toFixed(1)} s: ` +
        `${ev.skipped} segments of followed connections over the interval's bound, ` +
        `${ev.dropped} dropped by the kernel before they were read.`;
    }
  }
  function listed(k) {
    // newest first; options already there stay (an open list does not jump)
    const sel = document.getElementById("ladder-conn"), o = document.createElement("option");
    o.value = k; o.textContent = k.replace(" ", "  \u2194  ");
    sel.prepend(o);
    while (sel.options.length > 60) sel.lastChild.remove();
    sel.value = chosen === null ? "" : chosen;
  }
  function choose(k) {
    chosen = k; conn(k);
    document.getElementById("ladder-conn").value = k;
    drawn = "";
  }
  // The client: the end that sent the SYN, or whose socket left SYN_SENT; else the end
  // not on the chosen port.
  function ends(k, c) {
    const syn = c.packets.find(p => p.flags === "S");
    if (syn) return [syn.src + ":" + syn.sport, syn.dst + ":" + syn.dport];
    const sent = c.transitions.find(t => t.old === "SYN_SENT" || t.new === "SYN_SENT");
    if (sent) return [sent.saddr + ":" + sent.sport, sent.daddr + ":" + sent.dport];
    const [x, y] = k.split(" ");
    return y.endsWith(":" + port) || !x.endsWith(":" + port) ? [x, y] : [y, x];
  }
  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [a, v] of Object.entries(attrs)) e.setAttribute(a, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function ms(dt) {
    return dt < 0.001 ? (dt * 1000).toFixed(3) + " ms" : dt < 1 ? (dt * 1000).toFixed(1) + " ms"
      : dt.toFixed(3) + " s";
  }
  function draw() {
    const none = document.getElementById("ladder-none");
    const svg = document.getElementById("ladder-svg");
    if (chosen === null) { none.style.display = ""; svg.style.display = "none"; return; }
    const c = conns.get(chosen), now = typeof clock === "number" ? clock : 1e12;
    // The same 4-tuple used again (a SYN after a FIN or RST: tcp_tw_reuse on loopback)
    // is another connection: the ladder starts at its SYN.
    let from = -Infinity, closed = false;
    for (const p of c.packets) {
      if (p.t > now) break;
      if (p.flags === "S" && closed) { from = p.t; closed = false; }
      if (p.flags.includes("F") || p.flags.includes("R")) closed = true;
    }
    const seen = e => e.t >= from && e.t <= now;
    const rows = [...c.packets.filter(seen).map(p => ["p", p]),
                  ...c.transitions.filter(seen).map(t => ["s", t])]
      .sort((a, b) => a[1].t - b[1].t);
    const timers = c.timers.filter(seen);
    const key = chosen + "|" + from + "|" + rows.length + "|" + timers.length + "|" +
      (timers.length ? Math.floor(now * 10) : "");
    if (key === drawn) return;
    drawn = key;
    none.style.display = "none"; svg.style.display = "";
    const [client, server] = ends(chosen, c), x = {[client]: XC, [server]: XS};
    // a segment sent again gets a second line, under its arrow, for the gap
    const shown = rows.slice(-MAXROWS), tall = ([k, e]) => k === "p" && e.retrans_ms != null;
    const h = TOP + shown.reduce((n, r) => n + ROW + (tall(r) ? 34 : 0), 0) +
      (timers.length ? 90 : 30);
    svg.setAttribute("viewBox", `0 0 1100 ${h}`);
    const kids = [el("defs", {})];
    kids[0].innerHTML = '<marker id="ladder-arrow" viewBox="0 0 10 10" refX="9" refY="5" ' +
      'markerWidth="4" markerHeight="4" orient="auto-start-reverse">' +
      '<path d="M0,0 L10,5 L0,10 z" fill="#1c5bbf"/></marker>';
    kids.push(el("text", {class: "end", x: XC, y: 30}, "client " + client),
              el("text", {class: "end", x: XS, y: 30}, "server " + server),
              el("line", {class: "life", x1: XC, y1: 45, x2: XC, y2: h - 10}),
              el("line", {class: "life", x1: XS, y1: 45, x2: XS, y2: h - 10}));
    if (rows.length > shown.length)
      kids.push(el("text", {class: "when", x: 10, y: 66},
                   `(${rows.length - shown.length} earlier rows not shown)`));
    const t0 = rows.length ? rows[0][1].t : 0, isn = {};
    for (const [kind, p] of rows)
      if (kind === "p" && !(p.src + ":" + p.sport in isn)) isn[p.src + ":" + p.sport] = p.seq;
    let next = TOP;
    shown.forEach(([kind, e]) => {
      const y = next + 20;
      next += ROW + (tall([kind, e]) ? 34 : 0);
      kids.push(el("text", {class: "when", x: 10, y: y + 8}, "+" + ms(e.t - t0)));
      if (kind === "s") {
        const me = e.saddr + ":" + e.sport, xs = x[me] === undefined ? XC : x[me];
        // a socket's own change, written beside its line, inside the ladder
        kids.push(el("text", {class: "state-text", x: xs === XC ? XC + 12 : XS - 12, y: y + 8,
          "text-anchor": xs === XC ? "start" : "end"}, e.old + " \u2192 " + e.new));
        return;
      }
      const from = x[e.src + ":" + e.sport] === XS ? XS : XC, to = from === XC ? XS : XC;
      const cls = "seg" + (e.flags.includes("R") ? " rst" : "") +
        (e.retrans_ms != null ? " again" : "");
      kids.push(el("line", {class: cls, x1: from, y1: y - 8, x2: to, y2: y + 22}));
      const rel = ((e.seq - isn[e.src + ":" + e.sport]) >>> 0);
      const label = e.word + (e.len ? ` ${e.len} B` : "") + `  [${e.flags}]  seq ${rel}`;
      const t = el("text", {class: "seg-word" + (e.flags.includes("R") ? " rst" : ""),
        x: (XC + XS) / 2, y: y - 4}, label);
      t.dataset.word = e.word;
      kids.push(t);
      if (e.retrans_ms != null)
        kids.push(el("text", {class: "again-text", x: (XC + XS) / 2, y: y + 50,
                              "text-anchor": "middle"},
                     `sent again after ${e.retrans_ms} ms`));
    });
    timers.forEach((tm, i) => {
      const left = Math.max(0, tm.expires_ms / 1000 - (now - tm.t));
      const xs = x[tm.addr + ":" + tm.port] === XS ? XS : XC;
      // beside its socket's line, inside the ladder (as the transitions)
      const t = el("text", {class: "timer", id: i ? "" : "ladder-timewait",
        x: xs === XC ? XC + 12 : XS - 12, y: h - 40 - 34 * i,
        "text-anchor": xs === XC ? "start" : "end"},
        left > 0 ? `${tm.state}: ${left.toFixed(1)} s left` : `${tm.state} over`);
      kids.push(t);
    });
    svg.replaceChildren(...kids);
  }
  document.getElementById("ladder-conn").onchange = e => { picked = true; choose(e.target.value); };
  document.getElementById("transitions").addEventListener("click", e => {
    const m = /(\S+):(\d+) > (\S+):(\d+)/.exec(e.target.textContent || "");
    if (m) { picked = true; choose(connKey(m[1], m[2], m[3], m[4])); }
  });
  if (RECORDED !== null) {
    for (const ev of RECORDED) take(ev);
  } else {
    const inner = add;  // live_page's: every event of the stream passes through it
    add = ev => { take(ev); inner(ev); };
  }
  (function loop() { draw(); requestAnimationFrame(loop); })();
})();
</script>
"""
