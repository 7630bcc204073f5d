"""Charts for the HTML report: matplotlib, rendered to inline SVG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcplab.experiments.c100k import Bar
    from tcplab.experiments.handshake import Arrow
    from tcplab.experiments.multiplex import Row
    from tcplab.experiments.port_bomb import Variant
    from tcplab.experiments.result import TimelineRow

COLORS = {"TIME_WAIT": "#d62728", "ESTABLISHED": "#1f77b4", "CLOSE_WAIT": "#9467bd",
          "FIN_WAIT2": "#ff7f0e", "fds": "#2ca02c", "queue": "#8c564b"}


def _figure(width: float = 8.0, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(True, alpha=0.3)
    return fig, ax


_charts_made = 0


def _svg(fig: Any) -> str:
    """Inline SVG with ids unique on the page: several charts share one document,
    and matplotlib names its clip paths and glyphs the same in every file."""
    import re

    import matplotlib.pyplot as plt

    global _charts_made
    _charts_made += 1
    prefix = f"c{_charts_made}-"
    buf = io.StringIO()
    fig.tight_layout()
    with plt.rc_context({"svg.fonttype": "none"}):  # text as <text>, not glyph paths
        fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prologue: the SVG is inline
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', text)
    return re.sub(r'(url\(#|href="#)([^")]+)', lambda m: f"{m[1]}{prefix}{m[2]}", text)


def port_bomb(variants: Sequence[Variant]) -> str:
    fig, ax = _figure()
    for v in variants:
        tl = v.timeline
        if not tl:
            continue
        ax.plot([s.t for s in tl], [s.states.get("TIME_WAIT", 0) for s in tl], label=v.name)
    ax.set_yscale("symlog", linthresh=10)  # 0 (linger0) and 14,000 (default-reuse) both show
    ax.set_xlabel("seconds since the variant started")
    ax.set_ylabel("sockets in TIME_WAIT")
    ax.set_title("TIME_WAIT per variant (port range narrowed to the figure in the table)")
    ax.legend(fontsize=8)
    return _svg(fig)


def fd_leak(timeline: Sequence[TimelineRow], fd_limit: int | None) -> str:
    fig, ax = _figure()
    t = [row.t for row in timeline]
    ax.plot(t, [g.server_fds or 0 for g in timeline], color=COLORS["fds"],
            label="server fds")
    ax.plot(t, [g.states.get("CLOSE_WAIT", 0) for g in timeline], color=COLORS["CLOSE_WAIT"],
            label="CLOSE_WAIT (server)")
    ax.plot(t, [g.states.get("FIN_WAIT2", 0) for g in timeline], color=COLORS["FIN_WAIT2"],
            label="FIN_WAIT2 (clients)")
    ax.plot(t, [g.listen_queue or 0 for g in timeline], color=COLORS["queue"],
            label="accept queue (LISTEN Recv-Q)")
    if fd_limit:
        ax.axhline(fd_limit, color="black", linestyle="--", linewidth=1,
                   label=f"fd limit ({fd_limit})")
    ax.set_xlabel("seconds")
    ax.set_ylabel("count")
    ax.set_title("The leak: fds to the limit, CLOSE_WAIT stays, FIN_WAIT2 expires")
    ax.legend(fontsize=8)
    return _svg(fig)


def multiplex(rows: Sequence[Row]) -> str:
    """The C10k table in one figure (the report has one chart per experiment):
    echoes/s and p99 against connections on top, where thread per connection
    collapses; RSS per connection and OS threads below. A collapsed row (most
    connections failed) is a red cross and a hatched bar, labelled: its figures
    come from the few that got through, and its p99 leaves out every
    connection still waiting."""
    import numpy as np

    _figure()  # selects the Agg backend
    import matplotlib.pyplot as plt

    plt.close("all")
    models = list(dict.fromkeys(r.model for r in rows))
    ladder = sorted({r.connections for r in rows})
    fig, ((eps, p99), (rss, threads)) = plt.subplots(2, 2, figsize=(10, 7.2))
    colors: dict[str, str] = {}
    for m in models:
        mine = sorted((r for r in rows if r.model == m), key=lambda r: r.connections)
        n = [r.connections for r in mine]
        line = eps.plot(n, [r.echoes_per_s for r in mine], marker="o", label=m)[0]
        colors[m] = line.get_color()
        p99.plot(n, [max(r.p99_us, 1.0) / 1000 for r in mine], marker="o", color=colors[m],
                 label=m)
        for r in mine:
            if not r.collapsed:
                continue
            at, y_eps, y_p99 = r.connections, r.echoes_per_s, max(r.p99_us, 1.0) / 1000
            for ax, y in ((eps, y_eps), (p99, y_p99)):
                ax.plot([at], [y], marker="X", markersize=11, color="#b00", linestyle="none")
            eps.annotate(f"{m}: {r.flag}", (at, y_eps), textcoords="offset points",
                         xytext=(-8, 16), ha="right", fontsize=7, color="#b00")
            p99.annotate(f"{m}: p99 of the {r.echoes:,} echoes that got through;\n"
                         f"{r.failed:,} connections still waiting are not in it",
                         (at, y_p99), textcoords="offset points", xytext=(-10, -30),
                         ha="right", fontsize=7, color="#b00")
    for ax, title in ((eps, "verified echoes per second"),
                      (p99, "round-trip p99 (ms, log scale)")):
        ax.set_xscale("log")
        ax.set_xticks(ladder, [f"{n:,}" for n in ladder])
        ax.minorticks_off()
        ax.set_title(title)
    eps.set_ylim(bottom=0)
    eps.yaxis.set_major_formatter(lambda y, _pos: f"{y:,.0f}")
    p99.set_yscale("log")
    eps.legend(fontsize=8)

    width = 0.8 / max(1, len(models))
    x = np.arange(len(ladder))
    for i, m in enumerate(models):
        by_n = {r.connections: r for r in rows if r.model == m}
        bars = rss.bar(x + i * width, [(by_n[k].rss_per_conn if k in by_n else 0) / 1024
                                       for k in ladder], width, label=m, color=colors[m])
        for bar, k in zip(bars, ladder, strict=True):
            if k in by_n and by_n[k].collapsed:  # not a clean measurement: say so on the bar
                bar.set_hatch("//")
                bar.set_alpha(0.5)
                rss.annotate("collapsed", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=7, color="#b00")
        threads.bar(x + i * width, [(by_n[k].threads or 0) if k in by_n else 0 for k in ladder],
                    width, label=m, color=colors[m])
    for ax, title in ((rss, "server RSS per connection (KiB)"),
                      (threads, "server OS threads (log scale)")):
        ax.set_xticks(x + width * (len(models) - 1) / 2, [f"{n:,}" for n in ladder])
        ax.set_title(title)
    threads.set_yscale("log")
    for ax in (eps, p99, rss, threads):
        ax.set_xlabel("concurrent connections")
        ax.grid(True, alpha=0.3)
    return _svg(fig)


def accept_histogram(panels: Sequence[tuple[str, Sequence[Bar]]],
                     expected: float | None = None) -> str:
    """Experiment c100k's accept histogram: connections each server worker held, one
    panel a listener kind side by side (SO_REUSEPORT, one shared listener), on one
    y scale; a dashed line at the even share (N / K)."""
    _figure()  # selects the Agg backend
    import matplotlib.pyplot as plt

    plt.close("all")
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(10, 3.8), sharey=True,
                             squeeze=False)
    colors = ("#1f77b4", "#ff7f0e")
    for i, (ax, (title, bars)) in enumerate(zip(axes[0], panels, strict=False)):
        held = [b.held for b in bars]
        x = list(range(1, len(bars) + 1))
        drawn = ax.bar(x, held, color=colors[i % len(colors)])
        for bar, n in zip(drawn, held, strict=True):
            ax.annotate(f"{n:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        if expected:
            ax.axhline(expected, color="black", linestyle="--", linewidth=1,
                       label=f"even share ({expected:,.0f})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, [f"{k}" for k in x])
        ax.set_xlabel("server worker")
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("connections held")
    axes[0][0].yaxis.set_major_formatter(lambda y, _pos: f"{y:,.0f}")
    return _svg(fig)


def sequence(seq: Sequence[Arrow]) -> str:
    """The handshake as a sequence diagram: client and server lines, one arrow a packet."""
    _figure()  # selects the Agg backend
    import matplotlib.pyplot as plt

    height = max(3.0, 0.32 * len(seq) + 1)
    plt.close("all")
    fig, ax = plt.subplots(figsize=(7, height))
    ax.set_xlim(0, 10)
    ax.set_ylim(len(seq) + 0.5, -0.8)
    ax.axis("off")
    for x, name in ((2, "client"), (8, "server")):
        ax.plot([x, x], [-0.3, len(seq) + 0.3], color="gray", linewidth=1)
        ax.text(x, -0.6, name, ha="center", fontsize=10, fontweight="bold")
    for i, p in enumerate(seq):
        a, b = (2, 8) if p.from_ == "client" else (8, 2)
        color = "#d62728" if "RST" in p.word else ("#1f77b4" if "SYN" in p.word else
                                                   ("#9467bd" if "FIN" in p.word else
                                                    "#555555"))
        ax.annotate("", xy=(b, i + 0.5), xytext=(a, i),
                    arrowprops={"arrowstyle": "->", "color": color})
        ax.text(5, i + 0.15, f"{p.word} [{p.flags}]", ha="center", fontsize=8,
                color=color)
        ax.text(0.1, i + 0.25, f"{p.t * 1000:.1f} ms", fontsize=7, color="gray")
    return _svg(fig)
