"""Top-down partitioning (`--method tdpart`): exact window sequences, batching, garbled windows, the
journal, and a property both methods must have.

`ScriptedBackend` (from test_listwise) is a test double replaying answers the test chooses;
`QrelsOracleBackend` is a test double that ranks by the qrels (the one relevant passage first), a
perfect judge no real model is. Real-model runs are in test_tdpart_model.py.
"""

import json
import re

import pytest
from test_listwise import ScriptedBackend, request, reverse

from reasonrank.backends.base import Generation
from reasonrank.journal import Journal
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers import METHODS, ListwiseReranker, TopDownPartitionReranker
from reasonrank.types import Candidate, Query, Request


def make(backend, **kw):
    return TopDownPartitionReranker(backend, PromptRenderer(None, max_passage_tokens=None), **kw)


def windows(result):
    return [[d.split("-d")[1] for d in t.docids] for t in result.traces]


def test_exact_window_sequence_of_a_small_case(tmp_path):
    backend = ScriptedBackend(reverse)
    with Journal(tmp_path / "t.jsonl") as journal:
        result = make(backend, top_k=10, window=4, k=2, journal=journal).rerank("x", request("q", 10).candidates)
    # first window reversed: 3 2 1 0, pivot 2 (rank k=2); partitions of 3 with the pivot first;
    # everything beat the pivot, so those above it (3 6 5 4 9 8 7) are partitioned again, pivot 5.
    assert windows(result) == [
        ["0", "1", "2", "3"],
        ["2", "4", "5", "6"], ["2", "7", "8", "9"],
        ["3", "6", "5", "4"],
        ["5", "9", "8", "7"],
        ["4", "7", "8", "9"],
    ]
    assert backend.batches == [1, 2, 1, 1, 1]  # the two independent partition windows went together
    assert result.docids == [f"q-d{i}" for i in (9, 8, 7, 4, 5, 6, 3, 2, 1, 0)]
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()[1:]]
    assert all(r["start"] is None and r["end"] is None for r in rows)  # no positions: tdpart's windows are not contiguous
    assert [(r["method"], r["role"]) for r in rows] == [
        ("tdpart", "first"), ("tdpart", "partition"), ("tdpart", "partition"),
        ("tdpart", "recursion"), ("tdpart", "partition"), ("tdpart", "recursion")]


def star_first(n, user):
    """Passages whose text is STAR first, the rest in input order (identity when there is none)."""
    passages = re.findall(r"^\[(\d+)\] (.*)$", user, flags=re.M)
    stars = [int(i) for i, text in passages if text == "STAR"]
    order = stars + [i for i in range(1, n + 1) if i not in stars]
    return "<think>x</think><answer>" + " > ".join(f"[{i}]" for i in order) + "</answer>"


def test_a_short_last_partition_is_held_back_for_the_final_window():
    backend = ScriptedBackend(star_first)
    cands = [Candidate(c.docid, c.score, "STAR" if i == 7 else c.text) for i, c in enumerate(request("q", 11).candidates)]
    result = make(backend, top_k=11, window=5, k=2).rerank("x", cands)
    # first window, pivot d1; one partition of 4 + the pivot where d7 beats it; d9 and d10 (a short
    # partition) are held back and ranked with those above the pivot and the pivot itself
    assert windows(result) == [["0", "1", "2", "3", "4"], ["1", "5", "6", "7", "8"], ["0", "7", "1", "9", "10"]]
    assert [t.role for t in result.traces] == ["first", "partition", "recursion"]
    # the final window's losers to the pivot (9, 10) stay after the partitions' losers
    assert result.docids == [f"q-d{i}" for i in (7, 0, 1, 2, 3, 4, 5, 6, 8, 9, 10)]


def test_list_no_longer_than_the_window_is_one_window_and_the_tail_keeps_its_order():
    backend = ScriptedBackend(reverse)
    result = make(backend, top_k=5, window=20).rerank("x", request("q", 8).candidates)
    assert windows(result) == [["0", "1", "2", "3", "4"]]
    assert result.docids == [f"q-d{i}" for i in (4, 3, 2, 1, 0, 5, 6, 7)]


def test_garbled_windows_keep_input_order_put_competitors_below_the_pivot_and_are_counted():
    backend = ScriptedBackend(lambda n, _: "I cannot rank these.")
    reranker = make(backend)
    results = reranker.rerank_batch([request("a", 100), request("b", 100)])
    assert [r.docids for r in results] == [[f"{q}-d{i}" for i in range(100)] for q in "ab"]
    # per query 1 first window, 4 partitions of 19 + the pivot, and the final window (the 9 above the
    # pivot, the pivot, the 4 held back); the first windows of both queries are one batch, then all
    # eight partitions, then both final windows
    assert backend.batches == [2, 8, 2]
    assert reranker.stats.windows == 12 and dict(reranker.stats.status) == {"no_answer": 12}
    assert all(t.docids[0] == f"{q}-d9" for q, r in zip("ab", results) for t in r.traces[1:5])  # pivot first
    assert all(t.docids == [f"{q}-d{i}" for i in (*range(10), 96, 97, 98, 99)] for q, r in zip("ab", results)
               for t in r.traces[5:])


def test_backend_errors_are_counted_and_change_nothing():
    backend = ScriptedBackend(lambda n, _: Generation("", error="HTTP 500 after 4 retries"))
    reranker = make(backend, top_k=30)
    result = reranker.rerank("x", request("q", 30).candidates)
    assert result.docids == [f"q-d{i}" for i in range(30)]
    assert reranker.stats.status["backend_error"] == 2


def test_call_counts_at_depth_100_best_and_worst_case():
    sliding = ScriptedBackend(reverse)
    ListwiseReranker(sliding, PromptRenderer(None, max_passage_tokens=None)).rerank("x", request("q", 100).candidates)
    assert sum(sliding.batches) == 9
    # nothing beats the pivot (a first-stage order the model agrees with): 1 + 4 + the final window
    agree = ScriptedBackend(star_first)
    make(agree).rerank("x", request("q", 100).candidates)
    assert agree.batches == [1, 4, 1]
    # up to 6 passages beating the pivot cost nothing more: they fit in the final window (9 + 6 + 1 + 4)
    six = ScriptedBackend(star_first)
    stars = {25, 40, 41, 60, 77, 95}
    result = make(six).rerank("x", [Candidate(c.docid, c.score, "STAR" if i in stars else c.text)
                                    for i, c in enumerate(request("q", 100).candidates)])
    assert six.batches == [1, 4, 1] and set(result.docids[:6]) == {f"q-d{i}" for i in stars}
    # reversal is the worst case: every newcomer beats every pivot, each recursion settles only 11
    # (27 windows in 16 sequential steps)
    worst = ScriptedBackend(reverse)
    result = make(worst).rerank("x", request("q", 100).candidates)
    assert sum(worst.batches) == 27 and sorted(result.docids) == sorted(f"q-d{i}" for i in range(100))


def test_killed_run_resumes_from_the_journal(tmp_path):
    path = tmp_path / "t.jsonl"
    reqs = [request("a", 100), request("b", 40)]
    with Journal(path) as journal:
        expected = make(ScriptedBackend(reverse), journal=journal).rerank_batch(reqs)
    header, *lines = path.read_text().splitlines()
    assert json.loads(lines[0])["method"] == "tdpart"
    # a kill: the first 4 windows written, the 5th half written
    path.write_text("\n".join([header, *lines[:4]]) + "\n" + lines[4][: len(lines[4]) // 2])
    again = ScriptedBackend(reverse)
    journal = Journal(path)
    assert journal.corrupt_lines == 1
    reranker = make(again, journal=journal)
    resumed = reranker.rerank_batch(reqs)
    journal.close()
    assert [r.docids for r in resumed] == [r.docids for r in expected]
    assert reranker.stats.resumed_windows == 4 and sum(again.batches) == len(lines) - 4
    none = ScriptedBackend(reverse)
    make(none, journal=Journal(path)).rerank_batch(reqs)
    assert none.batches == []


def test_bad_k_fails_before_running():
    with pytest.raises(ValueError):
        make(ScriptedBackend(reverse), window=10, k=10)


# -- property: one relevant passage anywhere in the top 100 reaches the top 10 ---------------------

class QrelsOracleBackend(ScriptedBackend):
    """Test double that ranks by the qrels: the passage marked relevant first, the rest in input order."""

    model = "qrels-oracle-test-double"

    def __init__(self):
        super().__init__(self._rank)

    @staticmethod
    def _rank(n, user):
        passages = re.findall(r"^\[(\d+)\] (.*)$", user, flags=re.M)
        relevant = [int(i) for i, text in passages if "RELEVANT" in text]
        order = relevant + [i for i in range(1, n + 1) if i not in relevant]
        return "<think>qrels</think><answer>" + " > ".join(f"[{i}]" for i in order) + "</answer>"


def one_relevant(position):
    cands = [Candidate(f"d{i}", float(100 - i), "RELEVANT passage" if i == position else f"passage {i}") for i in range(100)]
    return Request(Query("q", "query"), cands)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_single_relevant_passage_at_any_position_reaches_the_top_10(method):
    reranker = METHODS[method](QrelsOracleBackend(), PromptRenderer(None, max_passage_tokens=None))
    results = reranker.rerank_batch([one_relevant(p) for p in range(100)])
    ranks = {p: r.docids.index(f"d{p}") for p, r in enumerate(results)}
    assert all(rank < 10 for rank in ranks.values()), {p: r for p, r in ranks.items() if r >= 10}
    assert all(sorted(r.docids) == sorted(f"d{i}" for i in range(100)) for r in results)  # nothing lost or doubled
