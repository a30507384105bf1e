"""The published ReasonIR first-stage figures of the ReasonRank paper (Table 1), reproduced."""

import gzip

import pytest
from _data import BRIGHT, bright_run, needs_data

from reasonrank.evaluation import evaluate, format_table
from reasonrank.io import load_collection, read_run

PUBLISHED = {
    "biology": 43.49, "earth_science": 43.00, "economics": 32.65, "psychology": 39.57, "robotics": 20.82,
    "stackoverflow": 30.96, "sustainable_living": 27.34, "leetcode": 31.69, "pony": 19.55, "aops": 7.37,
    "theoremqa_questions": 33.93, "theoremqa_theorems": 36.68,
}

pytestmark = needs_data


@pytest.fixture(scope="module")
def ndcg_by_task():
    out = {}
    for task in PUBLISHED:
        coll = load_collection(BRIGHT, task=task)
        out[task] = evaluate(read_run(bright_run(task)), coll.qrels(), ["nDCG@10"], coll.excluded()).aggregate["nDCG@10"] * 100
    return out


@pytest.mark.parametrize("task", list(PUBLISHED))
def test_published_ndcg_reproduced(ndcg_by_task, task):
    assert ndcg_by_task[task] == pytest.approx(PUBLISHED[task], abs=0.01)


def test_published_average(ndcg_by_task):
    average = sum(ndcg_by_task.values()) / len(ndcg_by_task)
    assert round(average, 2) == 30.59


def _run_with_excluded_on_top(task, tmp_path):
    coll = load_collection(BRIGHT, task=task)
    run = read_run(bright_run(task))
    path = tmp_path / f"{task}.trec"
    injected = 0
    with open(path, "w") as fh:
        for qid, docs in run.items():
            bad = sorted(coll.excluded().get(qid, ()))
            injected += len(bad)
            ranked = bad + [d for d in docs if d not in bad]  # excluded ids first, then the real run
            for rank, docid in enumerate(ranked, 1):
                fh.write(f"{qid} Q0 {docid} {rank} {1000 - rank} poisoned\n")
    return coll, run, path, injected


@pytest.mark.parametrize("task", ["leetcode", "aops", "theoremqa_questions"])
def test_bright_protocol_removes_excluded_ids_before_cutoff(task, tmp_path):
    coll, run, path, injected = _run_with_excluded_on_top(task, tmp_path)
    assert injected > 0
    poisoned = read_run(path)
    before = evaluate(run, coll.qrels(), ["nDCG@10"], coll.excluded()).aggregate["nDCG@10"]
    protocol = evaluate(poisoned, coll.qrels(), ["nDCG@10"], coll.excluded()).aggregate["nDCG@10"]
    plain = evaluate(poisoned, coll.qrels(), ["nDCG@10"]).aggregate["nDCG@10"]
    assert protocol == before  # exactly: the protocol sees the same ranking as before
    assert plain < before - 0.01


def test_cli_evaluates_all_tasks_and_prints_average(capsys):
    from typer.testing import CliRunner

    from reasonrank.cli import app

    runs = [str(bright_run(t)) for t in PUBLISHED]
    result = CliRunner().invoke(app, ["evaluate", *runs, "-c", str(BRIGHT), "-m", "nDCG@10", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| average | 30.59 |" in result.output
    assert "| aops | 7.37 |" in result.output


def test_table_formats():
    rows = {"a": {"nDCG@10": 0.5}, "b": {"nDCG@10": 0.25}}
    text = format_table(rows, ["nDCG@10"])
    assert text.splitlines()[-1].split() == ["average", "37.50"]
    assert "| b | 25.00 |" in format_table(rows, ["nDCG@10"], "markdown")
    assert '"average"' in format_table(rows, ["nDCG@10"], "json")


def test_python_literal_lists_and_na_sentinel(tmp_path):
    ex = tmp_path / "examples"
    ex.mkdir()
    with gzip.open(ex / "pony.jsonl.gz", "wt") as fh:
        fh.write('{"id": "0", "query": "q", "gold_ids": "[\'d1\', \'d2\']", "excluded_ids": "[\'N/A\']"}\n')
        fh.write('{"id": "1", "query": "r", "gold_ids": ["d3"], "excluded_ids": ["d4"]}\n')
    coll = load_collection(tmp_path, task="pony")
    assert coll.qrels() == {"0": {"d1": 1, "d2": 1}, "1": {"d3": 1}}
    assert coll.excluded() == {"0": set(), "1": {"d4"}}
    assert not coll.has_docs


def test_missing_queries_are_listed_not_averaged():
    qrels = {"1": {"a": 1}, "2": {"b": 1}, "3": {"c": 1}}
    result = evaluate({"1": {"a": 2.0, "x": 1.0}, "2": {"x": 2.0, "b": 1.0}}, qrels, ["nDCG@10"])
    assert result.missing_queries == ["3"]
    assert set(result.per_query) == {"1", "2"}
    assert result.aggregate["nDCG@10"] == pytest.approx((1.0 + 1 / __import__("math").log2(3)) / 2)
