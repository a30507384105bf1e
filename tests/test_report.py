"""The run report's model and command on a real run of the embedded model (tests/_report_run.py):
the journal replayed gives the reranked run, measures are evaluate()'s, the file is self-contained,
and inputs that do not belong together fail naming the file (or are counted and shown)."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import pytest
from _data import SCIFACT
from _report_run import journal_lines, needs_model, real_run, report_cli

from reasonrank.errors import FormatError, ReasonRankError, UnknownIdError
from reasonrank.evaluation import evaluate
from reasonrank.io import load_collection, read_run
from reasonrank.io.trec import ranked
from reasonrank.report import build_report, read_journal, read_traces, write_report
from reasonrank.report.data import initial_order_from_windows

pytestmark = needs_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def scifact():
    return load_collection(SCIFACT)


@pytest.fixture(scope="module")
def report(run, scifact):
    return build_report(run.traces, scifact, first_stage=run.first_stage)


def order(run_for_query):
    return [d for d, _ in ranked(run_for_query)]


def test_replaying_the_journal_gives_the_reranked_run(run, report):
    reranked = read_run(run.reranked)
    assert [q["qid"] for q in report.queries] == list(reranked)  # the two reranked queries, not the third
    for q in report.queries:
        assert [d for d, _ in q["final"]] == order(reranked[q["qid"]])[:6]
        assert [(w["start"], w["end"]) for w in q["windows"]] == [(2, 6), (0, 4)]
    assert report.summary["windows"] == 4 and sum(report.summary["status"].values()) == 4
    assert not report.warnings


def test_the_engine_that_wrote_the_journal_is_in_the_settings(run, report):
    header, windows, bad = read_journal(run.traces)
    assert header["reasonrank_journal"] == 2 and len(windows) == 4 and not bad  # the header is no bad line
    rows = dict(report.settings)
    assert rows["engine id"] == header["engine_id"] and "backend: llamacpp" in rows["engine"]
    assert rows["method"] == "sliding (read from the journal)" and rows["window"] == "4 (read from the journal)"


def test_measures_are_evaluates_on_the_runs(run, report, scifact):
    reranked = read_run(run.reranked)
    first = read_run(run.first_stage)
    before = evaluate({q: first[q] for q in reranked}, scifact.qrels(), ["nDCG@10", "Recall@10", "MRR@10"])
    after = evaluate(reranked, scifact.qrels(), ["nDCG@10", "Recall@10", "MRR@10"])
    assert report.summary["before"] == before.aggregate and report.summary["after"] == after.aggregate
    for q in report.queries:
        assert q["after"] == after.per_query[q["qid"]]


def test_without_the_first_stage_run_its_top_k_is_read_back_from_the_windows(run, scifact):
    traces, _ = read_traces(run.traces)
    first = read_run(run.first_stage)
    for qid in ("1", "3"):
        assert initial_order_from_windows([t for t in traces if t.qid == qid]) == order(first[qid])
    rebuilt = build_report(run.traces, scifact)
    assert rebuilt.summary["after"] == build_report(run.traces, scifact, first_stage=run.first_stage).summary["after"]


def test_cli_writes_one_self_contained_file(run, tmp_path):
    out = tmp_path / "r.html"
    proc = report_cli("--traces", str(run.traces), "-c", str(SCIFACT), "-r", str(run.first_stage), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "file://" in proc.stdout
    page = out.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    markup = page.replace(block.group(0), "")  # the data may quote URLs (a passage citing a web site): never fetched
    assert "<link" not in markup and not re.search(r"<(script|img|iframe)[^>]+src=", markup)
    # the only URLs left are XML namespace names, which are never fetched either
    assert set(re.findall(r"https?://[^\s\"'<>)]+", markup)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    data = json.loads(block.group(1))
    assert len(data["queries"]) == 2 and data["docs"]


def test_half_written_and_garbage_lines_are_counted_and_shown(run, scifact, tmp_path):
    journal = tmp_path / "traces.jsonl"
    header, *lines = run.traces.read_text().splitlines()
    journal.write_text("\n".join([header, "not json", *lines, lines[-1][:40]]) + "\n")
    report = build_report(journal, scifact, first_stage=run.first_stage)
    last = len(lines) + 3  # the header, the garbage line, the windows, the half-written line
    assert report.summary["bad_line_count"] == 2 and report.summary["bad_lines"] == [2, last]
    assert any("2 line(s)" in w and f"line 2, {last}" in w for w in report.warnings)
    assert report.summary["after"] == build_report(run.traces, scifact, first_stage=run.first_stage).summary["after"]


def test_a_file_that_is_not_a_journal_fails_naming_it(run, tmp_path):
    with pytest.raises(FormatError, match=re.escape(str(run.first_stage)) + ":1: no window trace"):
        read_traces(run.first_stage)
    proc = report_cli("--traces", str(run.first_stage), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "error:" in proc.stderr and "bm25.trec:1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.html").exists()


def test_a_journal_of_another_run_fails_naming_both_files(run, scifact, tmp_path):
    other = tmp_path / "other.trec"
    other.write_text("42 Q0 4983 1 1.0 bm25\n")
    message = f"{re.escape(str(run.traces))}: none of its 2 queries .* is in {re.escape(str(other))}"
    with pytest.raises(ReasonRankError, match=message):
        build_report(run.traces, scifact, first_stage=other)
    proc = report_cli("--traces", str(run.traces), "-c", str(SCIFACT), "-r", str(other), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "is the journal from another run?" in proc.stderr and "Traceback" not in proc.stderr


def test_query_ids_the_collection_lacks_fail_naming_the_journal(run, tmp_path):
    journal = tmp_path / "traces.jsonl"
    journal.write_text("".join(json.dumps({**row, "qid": "q-" + row["qid"]}) + "\n" for row in journal_lines(run.traces)))
    with pytest.raises(UnknownIdError, match=f"{re.escape(str(journal))}: query id.*'q-1'.* not in the collection scifact"):
        build_report(journal, str(SCIFACT))


def test_windows_of_another_list_are_skipped_and_counted(run, scifact, tmp_path):
    journal = tmp_path / "traces.jsonl"
    rows = journal_lines(run.traces)
    stale = {**rows[0], "docids": rows[0]["docids"][::-1], "prompt_hash": "stale"}  # recorded for another order
    del stale["output_docids"]
    header = run.traces.read_text().splitlines()[0]
    journal.write_text(header + "\n" + "".join(json.dumps(r) + "\n" for r in [stale, *rows]))
    report = build_report(journal, scifact, first_stage=run.first_stage)
    assert sum(q["skipped"] for q in report.queries) == 1 and any("1 window(s) did not fit" in w for w in report.warnings)
    assert [d for d, _ in report.queries[0]["final"]] == order(read_run(run.reranked)[rows[0]["qid"]])[:6]


def test_a_reranked_run_that_disagrees_with_the_journal_is_shown_and_flagged(run, scifact, tmp_path):
    reranked = read_run(run.reranked)
    qid = next(iter(reranked))
    reversed_run = {**reranked, qid: {d: float(i) for i, d in enumerate(order(reranked[qid]))}}
    report = build_report(run.traces, scifact, first_stage=run.first_stage, reranked=reversed_run)
    flagged = [q for q in report.queries if q["differs"]]
    assert [q["qid"] for q in flagged] == [qid] and any("ordered differently" in w for w in report.warnings)
    assert [d for d, _ in flagged[0]["final"]] == order(reversed_run[qid])[:6]


def test_in_memory_results_and_reranker_settings(run, scifact, tmp_path):
    """What `rerank --report` calls: traces from the Results (resumed here from the journal, so the
    model only loads) and the settings read off the reranker."""
    from reasonrank.report import run_settings
    from reasonrank.rerankers import Reranker, requests_from_run, results_to_run

    first = read_run(run.first_stage)
    requests = requests_from_run(scifact, first, ["1", "3"])
    with Reranker(None, "llamacpp", max_passage_tokens=30, top_k=6, window=4, step=2, max_new_tokens=24,
                  journal=str(run.traces), n_threads=1) as reranker:
        results = reranker.rerank_batch(requests)
        settings = run_settings(reranker, command=["reasonrank", "rerank", "-c", "scifact dir"])
    assert reranker.stats.resumed_windows == 4
    assert settings["window"] == 4 and settings["mode"] == "reasonrank" and settings["backend"] == "llamacpp"
    assert settings["command"] == "reasonrank rerank -c 'scifact dir'" and settings["model"].endswith(".gguf")
    out = write_report([t for r in results for t in r.traces], tmp_path / "r.html", collection=scifact, first_stage=first,
                       reranked=results_to_run(results), settings=settings)
    page = out.read_text(encoding="utf-8")
    assert "reasonrank rerank -c &#39;scifact dir&#39;" in page or "reasonrank rerank -c 'scifact dir'" in page


def test_plots_are_small_inline_svg(report):
    from reasonrank.compare import Row
    from reasonrank.report.plots import compare_plot, delta_plot

    delta = delta_plot([(q["qid"], q["after"]["nDCG@10"] - q["before"]["nDCG@10"]) for q in report.queries])
    assert delta.startswith("<svg") and 'href="#q=1"' in delta and 'href="#q=3"' in delta and len(delta) < 20_000
    common = dict(ratio=None, prompt_tokens_per_query=None, completion_tokens_per_query=None, calls_per_query=None,
                  parse_failure_rate=None, queries=2)
    rows = [Row(name="bm25", metrics={"nDCG@10": 0.5}, seconds_per_query=0.0, seconds=0.0, **common),
            Row(name="biencoder", metrics={"nDCG@10": 0.4}, seconds_per_query=0.05, seconds=0.1, **common),
            Row(name="listwise", metrics={"nDCG@10": 0.25}, seconds_per_query=14.0, seconds=28.0, **common)]
    svg = compare_plot(rows)
    # a first stage measured at 0 s still shows on the log axis, at a floor it names
    assert svg.startswith("<svg") and ">bm25 (&lt; 0.005 s)<" in svg and ">listwise<" in svg and "log scale" in svg
    assert compare_plot([{"name": "x", "seconds_per_query": 1.0, "metrics": {"nDCG@10": 0.3}}]).startswith("<svg")
    for plot in (delta, svg):  # well-formed XML: `compare` writes its plot as a standalone .svg file
        assert ElementTree.fromstring(plot).tag == "{http://www.w3.org/2000/svg}svg"
