"""The listwise reranker's window logic, batching, fallbacks and journal resume.

`ScriptedBackend` is a test double that replays answers chosen by the test: it exists to drive
exact permutations, garbled answers and failures through the real window/parse/journal code.
Real-model runs of the same code are in test_rerank_model.py.
"""

import json
import re

import pytest

from reasonrank.backends.base import Generation
from reasonrank.journal import Journal
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers.listwise import ListwiseReranker
from reasonrank.types import Candidate, Query, Request
from reasonrank.windows import window_schedule

from doubles import DoubleBackend
from reasonrank.backends.base import Capabilities


class ScriptedBackend(DoubleBackend):
    """Test double: answers each window with `answer(n, prompt_text)`; records batch sizes."""

    name = "scripted"
    model = "scripted-test-double"

    def __init__(self, answer):
        self.answer = answer
        self.batches = []

    def generate(self, prompts, params):
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            user = p.messages[-1]["content"]
            n = int(re.search(r"I will provide you with (\d+) passages", user).group(1))
            text = self.answer(n, user)
            if isinstance(text, Generation):
                out.append(text)
            else:
                out.append(Generation(text, prompt_tokens=100, completion_tokens=10, finish_reason="stop", seconds=0.0))
        return out


def reverse(n, _):
    return "<think>r</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>"


def request(qid, n):
    return Request(Query(qid, f"query {qid}"), [Candidate(f"{qid}-d{i}", float(n - i), f"text {i}") for i in range(n)])


def simulate(ids, k, window, step):
    ids = list(ids)
    for s, e in window_schedule(min(k, len(ids)), window, step):
        ids[s:e] = ids[s:e][::-1]
    return ids


def make(backend, **kw):
    return ListwiseReranker(backend, PromptRenderer(None, max_passage_tokens=None), **kw)


def test_reversal_matches_independent_simulation():
    backend = ScriptedBackend(reverse)
    result = make(backend).rerank(Query("q", "x"), request("q", 100).candidates)
    assert result.docids == simulate([f"q-d{i}" for i in range(100)], 100, 20, 10)
    assert len(result.traces) == 9
    assert [(t.start, t.end) for t in result.traces] == window_schedule(100)
    assert [c.score for c in result.candidates] == [float(100 - i) for i in range(100)]


def test_windows_of_many_queries_are_batched():
    backend = ScriptedBackend(reverse)
    reranker = make(backend)
    results = reranker.rerank_batch([request("a", 100), request("b", 25), request("c", 10)])
    # step 0: three queries; step 1: a and b; then a alone (9 windows in all for a)
    assert backend.batches == [3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert results[1].docids == simulate([f"b-d{i}" for i in range(25)], 25, 20, 10)
    assert results[2].docids == [f"c-d{i}" for i in range(9, -1, -1)]
    assert reranker.stats.windows == 12 and reranker.stats.queries == 3


def test_top_k_limits_reranking_and_tail_keeps_order():
    backend = ScriptedBackend(reverse)
    result = make(backend, top_k=20).rerank("x", request("q", 30).candidates)
    assert result.docids == [f"q-d{i}" for i in range(19, -1, -1)] + [f"q-d{i}" for i in range(20, 30)]


def test_passes_run_the_schedule_again():
    backend = ScriptedBackend(reverse)
    result = make(backend, top_k=20, passes=2).rerank("x", request("q", 20).candidates)
    assert result.docids == [f"q-d{i}" for i in range(20)]  # reversed twice
    assert [t.pass_index for t in result.traces] == [0, 1]


def test_garbled_and_failed_windows_keep_input_order_and_are_counted():
    answers = iter(["I cannot rank these.", Generation("", error="HTTP 500 after 4 retries")])
    backend = ScriptedBackend(lambda n, _: next(answers))
    reranker = make(backend, top_k=20, window=10, step=10)
    result = reranker.rerank("x", request("q", 20).candidates)
    assert result.docids == [f"q-d{i}" for i in range(20)]
    assert [t.status for t in result.traces] == ["no_answer", "backend_error"]
    assert dict(reranker.stats.status) == {"no_answer": 1, "backend_error": 1}


def test_repaired_answer_appends_missing_ids():
    backend = ScriptedBackend(lambda n, _: "<think>x</think><answer>[3] > [3] > [9] > [1]</answer>")
    result = make(backend, top_k=5, window=5, step=5).rerank("x", request("q", 5).candidates)
    assert result.docids == ["q-d2", "q-d0", "q-d1", "q-d3", "q-d4"]
    assert result.traces[0].status == "repaired"


def test_journal_resume_skips_finished_windows(tmp_path):
    path = tmp_path / "traces.jsonl"
    full_backend = ScriptedBackend(reverse)
    with Journal(path) as journal:
        expected = make(full_backend, journal=journal).rerank_batch([request("a", 100), request("b", 40)])
    header, *lines = path.read_text().splitlines()
    assert json.loads(header)["reasonrank_journal"] == 2
    assert len(lines) == 9 + 3
    # simulate a crash: keep the first 5 windows and half of the 6th line
    path.write_text("\n".join([header, *lines[:5]]) + "\n" + lines[5][: len(lines[5]) // 2])
    resumed_backend = ScriptedBackend(reverse)
    journal = Journal(path)
    assert journal.corrupt_lines == 1
    reranker = make(resumed_backend, journal=journal)
    resumed = reranker.rerank_batch([request("a", 100), request("b", 40)])
    journal.close()
    assert [r.docids for r in resumed] == [r.docids for r in expected]
    assert expected[0].docids[:3] != request("a", 100).candidates[:3]  # the answers are not the input order
    assert sum(resumed_backend.batches) == 12 - 5
    assert reranker.stats.resumed_windows == 5
    # a second rerun needs no model call at all
    again = ScriptedBackend(reverse)
    make(again, journal=Journal(path)).rerank_batch([request("a", 100), request("b", 40)])
    assert again.batches == []
    row = json.loads(path.read_text().splitlines()[1])
    assert {"prompt_hash", "raw_output", "reasoning", "permutation", "status", "prompt_tokens", "completion_tokens", "seconds",
            "docids", "output_docids", "method", "role"} <= set(row)
    assert row["output_docids"] == [row["docids"][p] for p in row["permutation"]]


def test_failed_windows_are_recorded_but_retried(tmp_path):
    from reasonrank.backends.base import Generation

    path = tmp_path / "traces.jsonl"
    down = ScriptedBackend(lambda n, _: Generation(text="", error="connection refused"))
    with Journal(path) as journal:
        reranker = make(down, journal=journal)
        failed = reranker.rerank_batch([request("a", 40)])
    assert reranker.stats.to_dict()["failed_windows"] == 3
    assert failed[0].docids == [c.docid for c in request("a", 40).candidates]
    up = ScriptedBackend(reverse)
    with Journal(path) as journal:
        reranker = make(up, journal=journal)
        result = reranker.rerank_batch([request("a", 40)])
    assert sum(up.batches) == 3  # nothing reused: the first window is asked again, and the later ones
    stats = reranker.stats.to_dict()  # see the order it produced, so their prompts are new
    assert (stats["retried_windows"], stats["resumed_windows"], stats["failed_windows"]) == (1, 0, 0)
    assert result[0].docids[0] == "a-d39"
    again = ScriptedBackend(reverse)
    with Journal(path) as journal:
        make(again, journal=journal).rerank_batch([request("a", 40)])
    assert again.batches == []  # now answered: resumed


def test_a_journal_of_another_engine_is_refused(tmp_path):
    from reasonrank.journal import JournalMismatch

    path = tmp_path / "traces.jsonl"
    with Journal(path, engine={"backend": "llamacpp", "model": "a.gguf"}) as journal:
        make(ScriptedBackend(reverse), journal=journal).rerank_batch([request("a", 20)])
    with pytest.raises(JournalMismatch, match=r"another engine.*backend: llamacpp -> hf"):
        Journal(path, engine={"backend": "hf", "model": "a.gguf"})
    with pytest.raises(JournalMismatch, match=r"lora: null -> "):
        Journal(path, engine={"backend": "llamacpp", "model": "a.gguf", "lora": {"dir": "v2"}})
    reused = ScriptedBackend(reverse)
    with Journal(path, engine={"backend": "hf", "model": "a.gguf"}, policy="reuse") as journal:
        make(reused, journal=journal).rerank_batch([request("a", 20)])
    assert reused.batches == []  # opted in: the old answers are used
    fresh = ScriptedBackend(reverse)
    with Journal(path, engine={"backend": "hf", "model": "a.gguf"}, policy="fresh") as journal:
        make(fresh, journal=journal).rerank_batch([request("a", 20)])
    assert fresh.batches == [1]
    assert json.loads(path.read_text().splitlines()[0])["engine"]["backend"] == "hf"


def test_a_journal_without_a_file_keeps_nothing():
    journal = Journal(None)
    reranker = make(ScriptedBackend(reverse), journal=journal)
    reranker.rerank_batch([request("a", 100)])
    assert journal.done == {} and journal.failed == set()


def test_bad_window_arguments_fail_before_running():
    with pytest.raises(ValueError):
        make(ScriptedBackend(reverse), window=10, step=20)


def test_one_at_a_time_engines_get_the_step_in_chunks(tmp_path):
    backend = ScriptedBackend(reverse)
    backend.capabilities = Capabilities(batch_size=2)  # as llama.cpp declares 1 and hf its batch size
    with Journal(tmp_path / "t.jsonl") as journal:
        results = make(backend, journal=journal).rerank_batch([request("a", 20), request("b", 20), request("c", 20)])
    assert backend.batches == [2, 1]
    assert [r.docids[0] for r in results] == ["a-d19", "b-d19", "c-d19"]
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1 + 3
