"""One self-contained HTML file: the report's data as JSON, its script, its style and its plots inline.

Nothing is fetched (no CDN, no font, no network), so the file works opened from file://, mailed,
or attached to an issue. The overview's static plots are matplotlib SVGs (plots.py); everything
that depends on which query is open is built by static/report.js from the JSON on demand.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from importlib import resources

from reasonrank.report.data import Report
from reasonrank.report.plots import delta_plot, histograms

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="reasonrank report">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header><h1>{title}</h1><a href="#">Overview</a><span class="note">written {written}</span></header>
<noscript><p class="warnings">This report needs JavaScript to show the queries (the plots below still work).</p></noscript>
<div id="layout">
<nav aria-label="queries"><div class="controls" id="nav-controls"></div><ol id="nav-list"></ol></nav>
<main>
<section id="overview">
<h2>What the reranker did</h2>
<p class="lead">A first-stage retriever ranked candidate passages for each query. The reranker (an LLM) then read them
in <b>windows</b> of a few passages{how}; for each window it wrote its <b>reasoning</b> and an <b>answer</b>, a new order such
as <code>[3] &gt; [1] &gt; [2]</code>, where <code>[n]</code> is the n-th passage of the window. The journal of that run is
shown here window by window. Pick a query on the left, or a bar of the plot below.</p>
<div id="ov-missing"></div><div id="ov-warnings"></div>
<div class="grid2 halves"><div><h3>Quality before and after</h3><div id="ov-measures"></div></div>
<div><h3>Parse status of the windows</h3><div id="ov-status"></div></div></div>
<h3>Change of {measure} per query</h3>
<div id="plot-delta">{delta}</div>
<h3>Settings</h3>
<div id="ov-settings"></div>
<h3>Cost per window</h3>
<div id="plot-histograms">{histograms}</div>
</section>
<section id="query" hidden></section>
</main>
</div>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def _static(name: str) -> str:
    return resources.files("reasonrank.report").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(data) -> str:
    """JSON that cannot end its <script> element early: every `<` is written as \\u003c (still the
    same JSON), so a `</script>` in a model's reasoning stays text."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _plots(report: Report) -> tuple[str, str]:
    """The overview's plots; without matplotlib a note in their place, so that a long `rerank --report`
    on a machine without the `report` extra still ends with a report (its tables and queries are all there)."""
    from reasonrank.errors import MissingExtra

    try:
        return _draw(report)
    except MissingExtra as exc:
        report.warnings.append(f"no plots: {exc}")
        note = f'<p class="note">{html.escape(str(exc))}</p>'
        return note, note


def _draw(report: Report) -> tuple[str, str]:
    measure = report.measures[0]
    judged = [q for q in report.queries if q.get("before") and q.get("after")]
    deltas = [(q["qid"], q["after"][measure] - q["before"][measure]) for q in judged]
    delta = delta_plot(deltas, measure) if deltas else '<p class="note">No judged query: nothing to plot.</p>'
    windows = [w for q in report.queries for w in q["windows"]]
    hist = histograms({"prompt tokens per window": [w["pt"] for w in windows],
                       "generated tokens per window": [w["ct"] for w in windows],
                       "seconds per window": [w["sec"] for w in windows]}) if windows else ""
    return delta, hist


METHOD_LEAD = {
    "sliding": "sliding window: overlapping windows, from the bottom of the list up",
    "tdpart": "top-down partitioning: the top window first, then every other passage in windows led by the passage "
              "the top window put at rank k (the pivot), then again those that beat the pivot",
}


def _how(report: Report) -> str:
    """How the run's method went through the list, for the overview's first paragraph."""
    methods = [m for m in report.summary.get("methods", {}) if m in METHOD_LEAD]
    if not methods:
        return ""
    return " (" + "; ".join(METHOD_LEAD[m] for m in methods) + ")"


def render_html(report: Report) -> str:
    delta, hist = _plots(report)
    return PAGE.format(how=html.escape(_how(report)),
        title=html.escape(report.title), css=_static("report.css"), js=_static("report.js"),
        written=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), measure=html.escape(report.measures[0]),
        delta=delta, histograms=hist, data=_json_for_script(report.to_json()),
    )
