"""The report replays every method's windows by doc id and shows the run's own final order.

The runs are real reranks (`reasonrank.spec.build`, the reranker's own window loop, plan and journal)
whose engine is `ReversingTestDouble`, a test double standing in for a model: it answers every window
with the reversed order `[n] > ... > [1]`, so every window moves passages and a replay that skips or
misplaces one ends in another order. The issue's case: 2 queries, top-40, tdpart, where the report
used to skip 8 of 10 windows, show another top document and warn that the journal was another run's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from reasonrank.backends.base import Capabilities, Generation
from reasonrank.io import write_run
from reasonrank.prompts import PromptRenderer
from reasonrank.report import build_report, read_journal, run_settings, write_report
from reasonrank.report.data import initial_order_tdpart
from reasonrank.rerankers import results_to_run
from reasonrank.spec import RerankerSpec, build
from reasonrank.types import Candidate, Query, Request

WINDOW = re.compile(r"I will provide you with (\d+) passages")


class ReversingTestDouble:
    """Test double for a backend: answers each window `[n] > ... > [1]` inside <answer> tags; the windows
    listed in `fail` (by call number, from 1) come back failed, as from a server that is down."""

    name = "reversing-test-double"
    model = "reversing-test-double"
    capabilities = Capabilities()

    def __init__(self, fail: set[int] = frozenset()):
        self.fail, self.calls = set(fail), 0

    def generate(self, prompts, params):
        out = []
        for prompt in prompts:
            self.calls += 1
            if self.calls in self.fail:
                out.append(Generation("", error="connection refused"))
                continue
            n = int(WINDOW.search(prompt.messages[-1]["content"]).group(1))
            answer = "<think>reversed</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>"
            out.append(Generation(answer, prompt_tokens=50 * n, completion_tokens=4 * n, finish_reason="stop", seconds=0.01))
        return out

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:
        pass


def requests(n: int = 50) -> list[Request]:
    """Two queries of n candidates (a first stage deeper than the top-k reranked)."""
    return [Request(Query(q, f"query {q}"), [Candidate(f"{q}-d{i:02d}", float(n - i), f"passage {i} of {q}") for i in range(n)])
            for q in ("q1", "q2")]


def rerank(journal, backend=None, **spec):
    """A real rerank through build(spec) on the test double; (results, reranker)."""
    spec = RerankerSpec(**{"method": "tdpart", "top_k": 40, "window": 10, "pivot": 3, "journal": str(journal), **spec})
    reranker = build(spec, backend=backend or ReversingTestDouble(), renderer=PromptRenderer(None, max_passage_tokens=None))
    with reranker:
        results = reranker.rerank_batch(requests())
    return results, reranker


def first_stage_run():
    return {r.query.qid: {c.docid: c.score for c in r.candidates} for r in requests()}


def final(query_json) -> list[str]:
    return [d for d, _ in query_json["final"]]


@pytest.fixture(scope="module")
def tdpart(tmp_path_factory):
    journal = tmp_path_factory.mktemp("tdpart") / "traces.jsonl"
    results, reranker = rerank(journal)
    return journal, results, reranker


def test_the_report_of_a_tdpart_run_shows_every_window_and_the_runs_final_order(tdpart):
    journal, results, _ = tdpart
    for given in ({}, {"first_stage": first_stage_run()}):
        report = build_report(journal, **given)
        assert [q["qid"] for q in report.queries] == ["q1", "q2"]
        for q, result in zip(report.queries, results):
            initial = [c.docid for c in requests()[0 if q["qid"] == "q1" else 1].candidates]
            assert result.docids[:40] != initial[:40] and result.docids[0] != initial[0]  # the answers moved passages
            assert q["method"] == "tdpart" and q["depth"] == 40
            assert final(q) == result.docids[:40]  # the run's own order, its top document included
            assert len(q["windows"]) == len(result.traces) > 2  # every window, none skipped
            assert [(w["role"], w["docids"]) for w in q["windows"]] == [(t.role, t.docids) for t in result.traces]
            assert all(w["start"] is None and w["end"] is None for w in q["windows"])
            assert q["skipped"] == 0 and q["missing"] == 0 and not q["differs"]
        assert report.summary["windows"] == sum(len(r.traces) for r in results)
        assert report.warnings == ["no relevance judgements (give a collection or qrels): measures and grades are not shown"]


def test_the_reranked_run_agrees_and_no_window_is_taken_for_another_runs(tdpart, tmp_path):
    """The issue's symptom: with the run's output given, the report warned that the journal was another run's."""
    journal, results, _ = tdpart
    write_run(tmp_path / "bm25.trec", first_stage_run())
    write_run(tmp_path / "reranked.trec", results_to_run(results))
    report = build_report(journal, first_stage=tmp_path / "bm25.trec", reranked=tmp_path / "reranked.trec")
    assert not any("another run" in w or "did not fit" in w or "differently" in w for w in report.warnings), report.warnings
    assert [final(q) for q in report.queries] == [r.docids[:40] for r in results]


def test_settings_are_read_back_from_the_windows_and_the_engine_from_the_header(tdpart):
    journal, results, reranker = tdpart
    header, windows, bad = read_journal(journal)
    assert header["reasonrank_journal"] == 2 and not bad and len(windows) == sum(len(r.traces) for r in results)
    rows = dict(build_report(journal).settings)
    assert rows["method"].startswith("tdpart") and rows["top-k reranked"].startswith("40")
    assert rows["window"].startswith("10") and rows["pivot (the rank tdpart settles)"].startswith("3")
    assert rows["engine id"] == header["engine_id"] == reranker.journal.engine_id
    assert "backend: reversing-test-double" in rows["engine"]
    assert "step" not in rows and "passes" not in rows
    # the initial order read back from the windows is the first stage's top 40
    for result, request in zip(results, requests()):
        assert initial_order_tdpart(result.traces) == [c.docid for c in request.candidates[:40]]


def test_rerank_report_in_memory_gives_the_same_report(tdpart, tmp_path):
    """What `rerank --method tdpart --report` does: the Results' windows and the reranker's settings."""
    journal, results, reranker = tdpart
    settings = run_settings(reranker, command=["reasonrank", "rerank", "--method", "tdpart"])
    assert settings["method"] == "tdpart" and settings["pivot"] == 3 and "step" not in settings
    page = write_report([t for r in results for t in r.traces], tmp_path / "r.html", first_stage=first_stage_run(),
                        reranked=results_to_run(results), settings=settings)
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                page.read_text(encoding="utf-8"), re.S).group(1))
    assert [final(q) for q in data["queries"]] == [r.docids[:40] for r in results]
    assert [len(q["windows"]) for q in data["queries"]] == [len(r.traces) for r in results]
    assert not any("another run" in w or "did not fit" in w or "differently" in w for w in data["warnings"])
    assert dict(data["settings"])["engine id"] == reranker.journal.engine_id
    assert "top-down partitioning" in page.read_text(encoding="utf-8")


def test_the_report_command_on_a_tdpart_journal(tdpart, tmp_path):
    journal, results, _ = tdpart
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "reasonrank.report", "--traces", str(journal), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                out.read_text(encoding="utf-8"), re.S).group(1))
    assert [final(q)[0] for q in data["queries"]] == [r.docids[0] for r in results]


def old_tdpart_line(row: dict) -> dict:
    """A window as the previous version journaled tdpart: positions 0..n, recursion in pass_index, no output ids."""
    row = {k: v for k, v in row.items() if k != "output_docids"}
    return {**row, "start": 0, "end": len(row["docids"]), "pass_index": int(row["role"] == "recursion")}


def old_sliding_line(row: dict) -> dict:
    """A sliding window as journals before this version wrote it: no method, role or output ids."""
    return {k: v for k, v in row.items() if k not in ("method", "role", "output_docids")}


def test_journals_of_the_previous_version_still_read(tdpart, tmp_path):
    journal, results, _ = tdpart
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    old = tmp_path / "old-tdpart.jsonl"
    old.write_text("".join(json.dumps(old_tdpart_line(r)) + "\n" for r in rows))
    report = build_report(old)
    assert [final(q) for q in report.queries] == [r.docids[:40] for r in results]
    assert [len(q["windows"]) for q in report.queries] == [len(r.traces) for r in results]
    assert ("engine", "not recorded (a journal older than engine headers)") in report.settings

    sliding = tmp_path / "sliding.jsonl"
    slid, _ = rerank(sliding, method="sliding", pivot=None, window=10, step=5)
    old = tmp_path / "old-sliding.jsonl"
    rows = [json.loads(line) for line in sliding.read_text().splitlines()[1:]]
    old.write_text("".join(json.dumps(old_sliding_line(r)) + "\n" for r in rows))
    for path in (sliding, old):
        report = build_report(path)
        assert [final(q) for q in report.queries] == [r.docids[:40] for r in slid]
        assert [[(w["start"], w["end"]) for w in q["windows"]] for q in report.queries] == \
            [[(t.start, t.end) for t in r.traces] for r in slid]
        assert report.summary["methods"] == {"sliding": 2} and not report.queries[0]["skipped"]


@pytest.mark.parametrize("method", ["tdpart", "sliding"])
def test_failed_windows_asked_again_replay_as_the_rerun(method, tmp_path):
    """A run while the server was down for some windows, then the rerun that asked them again: the
    report shows the rerun's order, and each failed answer marked, before the answer that replaced it."""
    journal = tmp_path / "traces.jsonl"
    options = {"method": method, **({"pivot": None, "step": 5} if method == "sliding" else {})}
    first, _ = rerank(journal, ReversingTestDouble(fail={2, 5}), **options)
    assert sum(t.status == "backend_error" for r in first for t in r.traces) == 2
    assert [final(q) for q in build_report(journal).queries] == [r.docids[:40] for r in first]
    again, reranker = rerank(journal, **options)
    assert reranker.stats.retried_windows == 2 and again != first
    report = build_report(journal)
    assert [final(q) for q in report.queries] == [r.docids[:40] for r in again]
    retried = [w for q in report.queries for w in q["windows"] if w.get("retried")]
    assert len(retried) == 2 and all(w["status"] == "backend_error" for w in retried)
    for q in report.queries:
        for i, w in enumerate(q["windows"]):
            if w.get("retried"):  # the answer that replaced it comes next: the same passages, answered
                assert q["windows"][i + 1]["docids"] == w["docids"] and q["windows"][i + 1]["status"] != "backend_error"
    assert not any("differently" in w for w in report.warnings)


def test_a_journal_the_run_did_not_finish_is_replayed_as_far_as_it_goes(tdpart, tmp_path):
    journal, results, _ = tdpart
    lines = journal.read_text().splitlines()
    cut = tmp_path / "killed.jsonl"
    cut.write_text("\n".join(lines[:-3]) + "\n")
    report = build_report(cut, first_stage=first_stage_run())
    # every window it wrote is shown; those it did not reach count as answered in their input order
    assert report.summary["windows"] == len(lines) - 4 and not any(q["skipped"] for q in report.queries)
    assert sum(q["missing"] for q in report.queries) >= 1 and any("not in the journal" in w for w in report.warnings)
