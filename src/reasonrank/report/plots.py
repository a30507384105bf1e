"""Static plots as inline SVG strings, drawn with matplotlib.

Why matplotlib: it is a well-kept library that needs nothing online and writes plain SVG, so a
plot costs a few kilobytes of markup in the report and no script at all. A JavaScript plotting
library (Plotly ~3.5 MB, Vega ~0.8 MB minified) would have to be inlined into every report to
work from file:// without a network, for plots that need no interaction beyond a link. Text stays
text (`svg.fonttype: none`, not glyph outlines) and coordinates are rounded, which keeps each plot
small. The per-window movement plots are not drawn here: there are hundreds per run and they are
drawn by the report's own script when a query is opened (see html.py).
"""

from __future__ import annotations

import io
import re
from typing import Any, Iterable, Sequence
from urllib.parse import quote

GOOD, BAD, NEUTRAL, INK = "#1a7f37", "#cf222e", "#8c959f", "#24292f"
_NUMBER = re.compile(r"-?\d+\.\d{2,}")
_ATTRIBUTE = re.compile(r'="([^"]*)"')
_ID = re.compile(r' id="([^"]*)"')
_REFERENCE = re.compile(r'#([^\s")]+)')


def _require():
    from reasonrank.errors import require

    require("matplotlib", "report", "The HTML report's plots")
    from matplotlib.figure import Figure

    return Figure


def _round(match: re.Match) -> str:
    return f"{float(match.group(0)):.1f}".rstrip("0").rstrip(".")


def _compact(svg: str) -> str:
    """The <svg> element only, with coordinates to 0.1 px (invisible on screen, a third of the
    bytes), no metadata, and no document-wide `*{…}` style rule (inline SVG styles leak into the page)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<style[^>]*>.*?</style>\s*", "", svg, flags=re.S)
    svg = re.sub(r"font-family: [^;\"]*;? ?", "", svg)  # a 150-byte font stack on every label: the page's CSS sets it once
    svg = _ATTRIBUTE.sub(lambda m: '="' + " ".join(_NUMBER.sub(_round, m.group(1)).split()) + '"', svg)
    # matplotlib names every group (figure_1, axes_1, …): the same ids in each plot of one page
    used = set(_REFERENCE.findall(svg))
    svg = _ID.sub(lambda m: m.group(0) if m.group(1) in used else "", svg)
    return re.sub(r">\s+<", "><", svg).strip()


def _svg(fig, name: str) -> str:
    import matplotlib

    buf = io.StringIO()
    # hashsalt: stable ids across runs, and distinct ones for each plot inlined in the same page
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"reasonrank-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    # one font for every label, inherited (a standalone .svg file, as `compare` writes, has no page CSS)
    style = 'style="font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'
    return _compact(buf.getvalue()).replace("<svg ", f'<svg class="plot" data-plot="{name}" {style} ', 1)


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8, colors=INK)
    ax.grid(axis="y", color="#d0d7de", linewidth=0.5)
    ax.set_axisbelow(True)


def delta_plot(deltas: Sequence[tuple[str, float]], measure: str = "nDCG@10") -> str:
    """Per-query change of `measure` (x100), one bar per query, sorted; each bar links to its query."""
    Figure = _require()
    items = sorted(deltas, key=lambda kv: (kv[1], kv[0]))
    fig = Figure(figsize=(7.2, 2.4))
    ax = fig.add_subplot()
    values = [100 * v for _, v in items]
    colors = [GOOD if v > 1e-9 else BAD if v < -1e-9 else NEUTRAL for v in values]
    bars = ax.bar(range(len(items)), [v if abs(v) > 1e-9 else 0.0 for v in values], color=colors, width=0.8)
    for bar, (qid, _) in zip(bars, items):
        bar.set_url(f"#q={quote(qid, safe='')}")  # a click opens the query; SVG links need no script
    if not any(abs(v) > 1e-9 for v in values):
        ax.set_ylim(-1, 1)
        ax.text(0.5, 0.6, "no query changed", transform=ax.transAxes, ha="center", fontsize=9, color=INK)
    ax.axhline(0, color=INK, linewidth=0.6)
    ax.set_xticks([] if len(items) > 25 else range(len(items)), [] if len(items) > 25 else [q for q, _ in items],
                  rotation=90 if len(items) > 8 else 0)
    ax.set_xlabel(f"{len(items)} queries, sorted by change (click a bar to open its query)", fontsize=8, color=INK)
    ax.set_ylabel(f"\u0394 {measure} (\u00d7100)", fontsize=8, color=INK)
    _style(ax)
    return _svg(fig, "delta")


def histograms(series: dict[str, Iterable[float]]) -> str:
    """One small histogram per named series (prompt tokens, generated tokens, seconds per window)."""
    Figure = _require()
    fig = Figure(figsize=(7.2, 1.9))
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (name, values) in zip(axes, series.items()):
        values = list(values)
        ax.hist(values, bins=min(20, max(1, len(set(values)))), color="#0969da", edgecolor="white", linewidth=0.4)
        ax.set_xlabel(name, fontsize=8, color=INK)
        _style(ax)
    axes[0].set_ylabel("windows", fontsize=8, color=INK)
    fig.subplots_adjust(wspace=0.35)
    return _svg(fig, "histograms")


def _field(row: Any, name: str):
    return row.get(name) if isinstance(row, dict) else getattr(row, name)


def compare_plot(rows: Sequence[Any], measure: str = "nDCG@10") -> str:
    """`measure` (x100) against seconds per query, one labelled point per reranker of a
    `reasonrank compare` table (its Rows, or the dicts of `ComparisonTable.to_dict()["rows"]`)."""
    Figure = _require()
    fig = Figure(figsize=(5.6, 3.4))
    ax = fig.add_subplot()
    points = [(str(_field(r, "name")), float(_field(r, "seconds_per_query")), 100 * float(_field(r, "metrics")[measure]))
              for r in rows]
    positive = [s for _, s, _ in points if s > 0]
    # A first stage takes microseconds, a reasoning reranker minutes: a log axis shows both, with
    # a first stage that measured 0 s drawn at a floor a decade below the fastest other one.
    log = bool(positive) and max(positive) / min(positive) > 20
    floor = min(positive) / 10 if positive else 0.0
    for name, seconds, value in points:
        label = f"{name} (< {floor:.2g} s)" if log and seconds <= 0 else name
        seconds = max(seconds, floor) if log else seconds
        ax.scatter([seconds], [value], s=28, color="#0969da", zorder=3)
        ax.annotate(label, (seconds, value), xytext=(5, 4), textcoords="offset points", fontsize=8, color=INK)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per query" + (" (log scale)" if ax.get_xscale() == "log" else ""), fontsize=8, color=INK)
    ax.set_ylabel(f"{measure} (\u00d7100)", fontsize=8, color=INK)
    ax.margins(x=0.15, y=0.15)
    _style(ax)
    ax.grid(axis="x", color="#d0d7de", linewidth=0.5)
    return _svg(fig, "compare")
