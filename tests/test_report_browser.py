"""The report in a real browser: Debian's chromium, headless, driven by Playwright, the file opened from
file:// with every network request refused. Each test saves a screenshot to a folder it prints.

scripts/test.sh installs chromium when it is missing; without it (or without playwright) these tests
skip with the reason in the summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from _data import SCIFACT
from _report_run import journal_lines, needs_model, real_run, report_cli

pytestmark = needs_model

CHROMIUM = os.environ.get("REASONRANK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox (we run as root in a container), no GPU, and nothing that phones home: the report must
# work with no network, so the browser is given none to use.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MEASURES = ["nDCG@10", "Recall@10", "MRR@10"]


def skip_loudly(reason: str):
    """Skip, and say so in the warnings summary that `pytest -q` prints (skip reasons need -rs)."""
    warnings.warn(f"SKIPPED THE REPORT'S BROWSER TESTS: {reason}", UserWarning, stacklevel=2)
    pytest.skip(f"SKIPPED THE REPORT'S BROWSER TESTS: {reason}")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        skip_loudly("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        skip_loudly(f"no chromium at {CHROMIUM} (scripts/test.sh installs it: apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def report(run):
    out = run.root / "report.html"
    proc = report_cli("--traces", str(run.traces), "-c", str(SCIFACT), "-r", str(run.first_stage), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return Path(os.environ.get("REASONRANK_SCREENSHOTS") or tmp_path_factory.mktemp("report-screenshots"))


@pytest.fixture(scope="module")
def journal(run):
    return journal_lines(run.traces)


class Page:
    """A browser tab that records console errors, page errors and any request that is not file://."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.route("**/*", self._route)
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready]")

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def shot(self, folder: Path, name: str, capsys) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        with capsys.disabled():
            print(f"\nscreenshot: {path}")
        return path


@pytest.fixture
def open_report(browser, report):
    pages = []

    def opener(fragment: str = "", path: Path | None = None) -> Page:
        pages.append(Page(browser, (path or report).resolve().as_uri() + fragment))
        return pages[-1]

    yield opener
    for p in pages:
        assert not p.errors, p.errors
        assert not p.requests, f"the report asked the network for {p.requests}"
        p.page.close()


def evaluate_cli(run_path: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "reasonrank.cli", "evaluate", str(run_path), "-c", str(SCIFACT),
                           "-m", ",".join(MEASURES), "--format", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return next(iter(json.loads(proc.stdout).values()))


def test_overview_figures_equal_reasonrank_evaluate(open_report, run, shots, capsys, tmp_path):
    from reasonrank.io import read_run, write_run

    reranked = read_run(run.reranked)
    first_stage = tmp_path / "first_stage.trec"  # the queries that were reranked, as `rerank` evaluates them
    write_run(first_stage, {q: d for q, d in read_run(run.first_stage).items() if q in reranked})
    expected = {"before": evaluate_cli(first_stage), "after": evaluate_cli(run.reranked)}
    page = open_report()
    page.shot(shots, "overview", capsys)
    for which, values in expected.items():
        for m in MEASURES:
            assert page.page.inner_text(f'#measures td[data-m="{m}"][data-run="{which}"]') == f"{100 * values[m]:.2f}"
    assert page.page.locator('svg.plot[data-plot="delta"] a').count() == len(reranked)  # one bar per query
    assert page.page.locator('svg.plot[data-plot="histograms"]').count() == 1


def test_a_status_count_lists_its_windows(open_report, journal, shots, capsys):
    page = open_report()
    status = journal[0]["status"]
    page.page.click(f'#status button[data-status="{status}"]')
    hits = page.page.locator("#status-windows li a")
    assert hits.count() == sum(1 for t in journal if t["status"] == status)
    page.shot(shots, "status", capsys)
    hits.first.click()
    page.page.wait_for_selector("#query-view")
    assert page.page.locator(".window.flash").count() == 1


def test_expanding_a_query_shows_its_windows_reasoning_and_answer(open_report, journal, shots, capsys):
    trace = journal[-1]  # the last window of the query: the top of its list
    page = open_report()
    page.page.click(f'#nav-list a[data-qid="{trace["qid"]}"]')
    view = page.page.locator("#query-view")
    assert view.get_attribute("data-qid") == trace["qid"]
    windows = [t for t in journal if t["qid"] == trace["qid"]]
    window = page.page.locator(f"#w{windows.index(trace)}")
    if trace["reasoning"]:
        window.locator("details.reasoning > summary").click()
        assert window.locator("details.reasoning .text").inner_text() == trace["reasoning"]
    else:  # the embedded 0.5B model writes no <think> block: the window says so
        empty = window.locator(".reasoning-empty")
        empty.wait_for(state="visible")  # the view may still be rendering after the click (hashchange)
        assert "no reasoning" in empty.inner_text()
    assert window.locator("pre.answer").inner_text() == trace["raw_output"]
    page.shot(shots, "query", capsys)


def test_passage_ids_in_the_models_text_link_to_the_passages(open_report, run, tmp_path, journal, shots, capsys):
    """Reasoning as a reasoning model writes it, in a real window of the run: `[n]` links to passage n,
    and markup in the model's text stays text."""
    from reasonrank.report import write_report

    rows = [dict(t) for t in journal]
    rows[-1]["reasoning"] = "Passage [2] answers the query; [1] is off topic. </script><b>not bold</b> [99] is no passage."
    rows[-1]["raw_output"] = f"<think>{rows[-1]['reasoning']}</think><answer>[2] > [1] > [3] > [4]</answer>"
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_report(traces, tmp_path / "report.html", collection=str(SCIFACT), first_stage=run.first_stage)
    qid = rows[-1]["qid"]
    index = [r for r in rows if r["qid"] == qid].index(rows[-1])
    page = open_report(f"#q={qid}&w={index}", path=path)
    window = page.page.locator(f"#w{index}")
    text = window.locator("details.reasoning .text")
    assert text.inner_text() == rows[-1]["reasoning"] and text.locator("b").count() == 0
    assert [a.inner_text() for a in text.locator("a.pid").all()] == ["[2]", "[1]"]  # not [99]: the window has 4 passages
    text.locator("a.pid").first.click()
    assert window.locator("li.flash").get_attribute("id") == f"w{index}-p2"
    assert window.locator("pre.answer").inner_text().endswith("<answer>[2] > [1] > [3] > [4]</answer>")
    page.shot(shots, "reasoning-links", capsys)


def test_the_movement_plot_has_one_mark_per_passage(open_report, journal, run, shots, capsys):
    from reasonrank.io import load_collection

    qrels = load_collection(SCIFACT).qrels()
    qid = journal[0]["qid"]
    windows = [t for t in journal if t["qid"] == qid]
    page = open_report(f"#q={qid}")
    for i, trace in enumerate(windows):
        marks = page.page.locator(f"#w{i}-mv g.mv")
        assert marks.count() == trace["end"] - trace["start"] == len(trace["docids"])
        assert [m.get_attribute("data-doc") for m in marks.all()] == trace["docids"]
        assert [int(m.get_attribute("data-grade")) for m in marks.all()] == [qrels[qid].get(d, 0) for d in trace["docids"]]
        # each mark ends where the permutation puts its passage: new position j holds old position perm[j]
        after = {src: j for j, src in enumerate(trace["permutation"])}
        n = len(trace["docids"])
        assert [m.get_attribute("data-before") for m in marks.all()] == [str(trace["start"] + k + 1) for k in range(n)]
        assert [m.get_attribute("data-after") for m in marks.all()] == [str(trace["start"] + after[k] + 1) for k in range(n)]
        assert [m.locator("text").last.text_content().split(" ")[0] for m in marks.all()] == \
            [m.get_attribute("data-after") for m in marks.all()]
    page.page.locator("#w0").screenshot(path=str(shots / "movement.png"))
    with capsys.disabled():
        print(f"\nscreenshot: {shots / 'movement.png'}")


def test_a_fragment_link_opens_that_query(open_report, journal, shots, capsys):
    qid = journal[-1]["qid"]
    page = open_report(f"#q={qid}")
    assert page.page.locator("#overview").is_hidden() and page.page.locator("#query").is_visible()
    assert page.page.locator("#query-view").get_attribute("data-qid") == qid
    assert page.page.locator("#nav-list a.current").get_attribute("data-qid") == qid
    page.shot(shots, "fragment", capsys)
    page.page.click("header a")  # back to the overview (hashchange is dispatched after the click returns: wait for it)
    page.page.wait_for_selector("#overview", state="visible")
    assert page.page.locator("#overview").is_visible() and page.page.locator("#query").is_hidden()


def test_queries_sort_and_filter_by_change_status_and_text(open_report, run, shots, capsys):
    from reasonrank.report import build_report

    model = build_report(run.traces, str(SCIFACT), first_stage=run.first_stage)
    change = {q["qid"]: q["after"]["nDCG@10"] - q["before"]["nDCG@10"] for q in model.queries}
    page = open_report()
    shown = lambda: [a.get_attribute("data-qid") for a in page.page.locator("#nav-list a").all()]  # noqa: E731
    assert shown() == [q["qid"] for q in model.queries]
    page.page.select_option("#nav-sort", "worst")
    assert [change[q] for q in shown()] == sorted(change.values())
    page.page.select_option("#nav-sort", "best")
    assert [change[q] for q in shown()] == sorted(change.values(), reverse=True)
    page.page.select_option("#nav-change", "down")
    assert shown() == [q for q in shown() if change[q] < 0] and set(shown()) == {q for q, d in change.items() if d < 0}
    page.page.select_option("#nav-change", "")
    status = next(iter(model.summary["status"]))
    page.page.select_option("#nav-status", status)
    assert set(shown()) == {q["qid"] for q in model.queries if status in q["status"]}
    page.page.select_option("#nav-status", "")
    first = model.queries[0]
    page.page.fill("#nav-search", first["text"][5:25].upper())
    assert shown() == [first["qid"]]
    assert page.page.inner_text("#nav-count") == f"1 of {len(model.queries)} queries"
    page.shot(shots, "filtered", capsys)


@pytest.mark.parametrize("judged", [True, False], ids=["qrels-file-only", "no-judgements"])
def test_a_report_without_the_collection_still_shows_every_window(open_report, run, journal, judged, tmp_path, shots, capsys):
    """`--qrels FILE` instead of a collection (no query texts, no passage titles), and no judgements at all."""
    from reasonrank.io import load_collection, write_qrels

    args = ["--traces", str(run.traces), "-r", str(run.first_stage), "--reranked", str(run.reranked),
            "-o", str(tmp_path / "r.html")]
    if judged:
        write_qrels(tmp_path / "qrels.txt", load_collection(SCIFACT).qrels())
        args += ["--qrels", str(tmp_path / "qrels.txt")]
    proc = report_cli(*args)
    assert proc.returncode == 0, proc.stderr
    page = open_report(f"#q={journal[0]['qid']}", path=tmp_path / "r.html")
    assert page.page.locator(".window").count() == sum(1 for t in journal if t["qid"] == journal[0]["qid"])
    assert page.page.locator("table.final tbody tr").count() == 6
    assert page.page.locator(".qmeasures").count() == (1 if judged else 0)
    page.page.click("header a")
    assert page.page.locator("#measures").count() == (1 if judged else 0)
    page.shot(shots, f"without-collection-{'qrels' if judged else 'nothing'}", capsys)


def test_a_tdpart_report_shows_each_windows_role_and_doc_ids(open_report, tmp_path, shots, capsys):
    """Top-down partitioning's windows have no positions: each shows its role, the doc ids it was given and
    those of its answer, and its movement plot goes from slot to slot; the query's plot from first-stage
    rank to the replayed final rank. The run: test_report_tdpart's test double, which reverses every window."""
    from test_report_tdpart import rerank

    results, _ = rerank(tmp_path / "traces.jsonl")
    path = tmp_path / "tdpart.html"
    proc = report_cli("--traces", str(tmp_path / "traces.jsonl"), "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    result = results[0]
    page = open_report(f"#q={result.query.qid}", path=path)
    windows = page.page.locator("#query-view .window")
    assert windows.count() == len(result.traces)
    for i, trace in enumerate(result.traces):
        window = page.page.locator(f"#w{i}")
        assert window.get_attribute("data-role") == trace.role
        # text_content: windows out of view are not rendered (content-visibility), so they have no inner text
        assert window.locator(".head .where").text_content() == f"{trace.role} window"
        assert window.locator('[data-ids="input"]').text_content().split() == trace.docids
        assert window.locator('[data-ids="output"]').text_content().split() == trace.output_docids
        marks = window.locator("g.mv").all()
        after = {src: j for j, src in enumerate(trace.permutation)}
        assert [m.get_attribute("data-doc") for m in marks] == trace.docids
        assert [m.get_attribute("data-after") for m in marks] == [str(after[k] + 1) for k in range(len(trace.docids))]
    ranks = page.page.locator("#q-mv g.mv").all()
    assert [m.get_attribute("data-doc") for m in ranks] == result.docids[:40]
    assert [int(m.get_attribute("data-after")) for m in ranks] == list(range(1, 41))
    assert [cell.text_content().strip() for cell in page.page.locator("table.final td.snippet").all()] == result.docids[:40]
    page.shot(shots, "tdpart", capsys)
    page.page.click("header a")
    page.page.wait_for_selector("#overview", state="visible")
    assert "top-down partitioning" in page.page.inner_text("#overview p.lead")


def test_a_forced_window_shows_its_status_and_forced_answer(open_report, tmp_path, shots, capsys, qwen_tokenizer):
    """A window cut in its reasoning and answered by a forced continuation (issue 21): its badge says forced, and
    the forced answer is shown below the raw answer with its tokens. The run: test_reasoning_budget's test double."""
    from test_reasoning_budget import Truncating, _build, _requests

    journal = tmp_path / "traces.jsonl"
    reranker = _build(Truncating(), qwen_tokenizer, reasoning_budget=8, answer_budget=20, journal=str(journal))
    (result,) = reranker.rerank_batch(_requests(1))
    reranker.close()
    path = tmp_path / "forced.html"
    proc = report_cli("--traces", str(journal), "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    page = open_report(f"#q={result.query.qid}", path=path)
    window = page.page.locator("#w0")
    assert window.locator(".head .badge").text_content() == "forced"
    forced = window.locator(".forced-answer")
    assert "Forced answer" in forced.text_content() and "[2] > [3] > [1]" in forced.text_content()
    assert "130 prompt + 9 generated tokens" in forced.text_content()
    page.shot(shots, "forced", capsys)
    page.page.click("header a")
    page.page.wait_for_selector("#overview", state="visible")
    assert "forced" in page.page.inner_text("#ov-status")
