"""compare(): the table's columns, metrics from list order, the seconds-per-query ratio to the
listwise reasoning reranker, token/call/parse-failure columns; the CLI on real SciFact with BM25."""

from __future__ import annotations

import json
import re
import time

import pytest

from _data import DATA, SCIFACT, needs_data
from doubles import DoubleBackend
from reasonrank.backends.base import Generation
from reasonrank.compare import FirstStage, app, compare, run_from_order
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers.listwise import ListwiseReranker
from reasonrank.types import Candidate, Query, Request, Result


class SleepyListwiseBackend(DoubleBackend):
    """Test double: every window takes `delay` seconds; query q1 gets a garbled answer, others a reversal."""

    name = "scripted"
    model = "scripted"

    def __init__(self, delay):
        self.delay = delay

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            time.sleep(self.delay)
            user = next(m["content"] for m in p.messages if m["role"] == "user")  # a forced answer ends on the assistant's
            n = int(re.search(r"I will provide you with (\d+) passages", user).group(1))
            if "query one" in user:
                text = "<think>never closed"
                finish = "length"
            else:
                text = "<think>x</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>"
                finish = "stop"
            out.append(Generation(text, prompt_tokens=40, completion_tokens=6, finish_reason=finish))
        return out


class Stats:
    def __init__(self):
        self.n = 0

    def usage(self):
        return {"prompt_tokens": 10 * self.n, "completion_tokens": 3 * self.n, "calls": 2 * self.n, "failures": self.n // 2,
                "units": self.n, "parses": True}


class SlowReverse:
    """Reverses each list, sleeping `delay` per query, with fixed per-query counters."""

    def __init__(self, delay):
        self.delay, self.stats = delay, Stats()

    def rerank_batch(self, requests):
        time.sleep(self.delay * len(requests))
        self.stats.n += len(requests)
        return [Result(r.query, list(reversed(r.candidates))) for r in requests]


class EqualScores:
    """Returns the list as given, every score equal (so only list order can tell them apart)."""

    def rerank_batch(self, requests):
        return [Result(r.query, [Candidate(c.docid, 0.5, c.text) for c in r.candidates]) for r in requests]


def requests():
    return [
        Request(Query("q1", "query one"), [Candidate("z", 2, "t"), Candidate("a", 1, "t")]),
        Request(Query("q2", "query two"), [Candidate("b", 2, "t"), Candidate("y", 1, "t")]),
    ]


QRELS = {"q1": {"a": 1}, "q2": {"y": 1}, "q3": {"x": 1}}  # q3 is judged but not compared


def test_compare_table_columns_metrics_and_ratio():
    # keep: q1's cut window stays a parse failure (force would add a forced answer's call; test_reasoning_budget.py)
    listwise = ListwiseReranker(SleepyListwiseBackend(0.05), PromptRenderer(None, mode="reasonrank"), top_k=20, window=20, step=10,
                                on_truncation="keep")
    table = compare({"bm25": FirstStage(), "listwise": listwise, "slow": SlowReverse(0.1), "ties": EqualScores()},
                    requests(), QRELS)
    assert table.reference == "listwise"  # found: the ListwiseReranker with a reasoning (tagged) prompt
    assert table.columns == ["reranker", "nDCG@10", "Recall@10", "s/query", "x listwise", "prompt tok/query", "gen tok/query",
                             "calls/query", "parse fail"]
    bm25, lw, slow, ties = (table.row(n) for n in ("bm25", "listwise", "slow", "ties"))
    # relevant doc second for both queries under BM25; listwise fixed q2 only (q1's answer was garbled)
    assert bm25.metrics["nDCG@10"] == pytest.approx(1 / 1.5849625, abs=1e-6)
    assert lw.metrics["nDCG@10"] == pytest.approx((1 / 1.5849625 + 1) / 2, abs=1e-6)
    assert slow.metrics["nDCG@10"] == pytest.approx(1.0) and slow.metrics["Recall@10"] == 1.0
    assert ties.metrics["nDCG@10"] == bm25.metrics["nDCG@10"]  # evaluated in list order, not by doc id
    # ratio: each row's seconds per query over the listwise reranker's
    assert lw.ratio == 1.0
    for r in (bm25, slow, ties):
        assert r.ratio == pytest.approx(r.seconds_per_query / lw.seconds_per_query)
    assert lw.seconds_per_query >= 0.05 and slow.seconds_per_query >= 0.1
    assert 1.0 < slow.ratio < 2.5
    # counters per query; the listwise parse failure is the garbled window
    assert (lw.prompt_tokens_per_query, lw.completion_tokens_per_query, lw.calls_per_query) == (40, 6, 1)
    assert lw.parse_failure_rate == 0.5 and lw.failures == 1 and lw.units == 2
    assert (slow.prompt_tokens_per_query, slow.completion_tokens_per_query, slow.calls_per_query, slow.parse_failure_rate) == (10, 3, 2, 0.5)
    assert bm25.prompt_tokens_per_query is None and bm25.parse_failure_rate is None
    md = table.to_markdown().splitlines()
    assert md[0] == "| " + " | ".join(table.columns) + " |" and len(md) == 2 + 4
    assert md[3].startswith("| listwise |") and "| 1.000 |" in md[3] and "50.0%" in md[3]
    assert "x listwise" in table.to_text().splitlines()[0]
    json.dumps(table.to_dict())


def test_reference_choice_and_interleave():
    slow, fast = SlowReverse(0.02), SlowReverse(0.0)
    order, inner = [], fast.rerank_batch

    def counted(reqs):
        order.append(len(reqs))
        return inner(reqs)

    fast.rerank_batch = counted
    table = compare({"slow": slow, "fast": fast}, requests(), QRELS, reference="slow", interleave=1)
    assert order == [1, 1] and table.row("slow").ratio == 1.0 and table.row("fast").ratio < 0.5
    assert compare({"a": FirstStage()}, requests(), QRELS).row("a").ratio is None  # no listwise reasoning row
    with pytest.raises(KeyError):
        compare({"a": FirstStage()}, requests(), QRELS, reference="b")


def test_run_from_order():
    res = [Result(Query("q", ""), [Candidate("b", 0.5), Candidate("a", 0.5), Candidate("c", 0.9)])]
    assert run_from_order(res) == {"q": {"b": 3.0, "a": 2.0, "c": 1.0}}


@needs_data
def test_cli_bm25_on_scifact(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "t.md"
    result = CliRunner().invoke(app, [str(SCIFACT), "--rerankers", "bm25", "--queries", "3", "--depth", "10", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "nDCG@10" in result.output and out.read_text().startswith("| reranker | nDCG@10 | Recall@10 |")
    assert json.loads(out.with_suffix(".json").read_text())["queries"] == 3
    # the plot of nDCG@10 against seconds per query, one mark per reranker, linked from the table
    assert out.read_text().rstrip().endswith("![nDCG@10 against seconds per query](t.svg)")
    svg = out.with_suffix(".svg").read_text()
    assert svg.lstrip().startswith("<svg") and "bm25" in svg


@needs_data
def test_cli_compare_without_a_collection_uses_scifact(tmp_path, monkeypatch):
    """`reasonrank compare -o table.md`, as the README writes it, failed with "Missing argument 'collection'"."""
    from typer.testing import CliRunner

    from reasonrank.cli import app as cli

    monkeypatch.setenv("REASONRANK_DATA", str(DATA))
    out = tmp_path / "table.md"
    result = CliRunner().invoke(cli, ["compare", "--rerankers", "bm25", "--queries", "2", "--depth", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["queries"] == 2
    result = CliRunner().invoke(cli, ["compare", "-c", str(SCIFACT), "--rerankers", "bm25", "--queries", "2", "--depth", "5"])
    assert result.exit_code == 0, result.output


@pytest.mark.model
def test_build_rerankers_are_specs_on_one_engine():
    """rankgpt and listwise are the sliding window's specs with prompt modes rankgpt and reasonrank, pointwise the
    pointwise method's, all built on one loaded engine; the passage cut is the collection's rule (100 for BEIR)."""
    from servers import TEST_THREADS, embedded_gguf

    from reasonrank.compare import build_rerankers
    from reasonrank.spec import RerankerSpec

    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    line_up = build_rerankers(["bm25", "rankgpt", "listwise", "pointwise"], top_k=10, collection="scifact",
                              spec=RerankerSpec(backend_options={"n_threads": TEST_THREADS, "n_ctx": 1024}))
    rankgpt, listwise, pointwise = line_up["rankgpt"], line_up["listwise"], line_up["pointwise"]
    try:
        assert isinstance(line_up["bm25"], FirstStage)
        assert rankgpt.backend is listwise.backend is pointwise.backend
        assert (rankgpt.spec.mode, rankgpt.spec.max_new_tokens, listwise.spec.mode, listwise.spec.max_new_tokens) == \
            ("rankgpt", 120, "reasonrank", 512)
        assert rankgpt.spec.max_passage_tokens == listwise.spec.max_passage_tokens == pointwise.spec.max_passage_tokens == 100
        assert listwise.renderer.max_passage_tokens == 100 and listwise.top_k == 10 and listwise.spec.window == 20
        assert pointwise.spec.method == "pointwise" and pointwise.think_tokens == 128 and pointwise.batch_size == 1
        assert build_rerankers(["listwise"], max_passage_tokens=30, spec=listwise.spec)["listwise"].renderer.max_passage_tokens == 30
    finally:
        listwise.backend.close()
