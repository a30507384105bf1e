"""End to end against a real OpenAI-compatible server: llama.cpp's (`python -m llama_cpp.server`) on
loopback, serving the embedded Qwen2.5-0.5B GGUF as the teacher, on real SciFact training queries.

The 0.5B teacher is weak (it tends to copy the prompt's example answer, and writes no <think>
block), so nothing here asserts that its labels are good. The tests assert what the pipeline must
guarantee whatever the teacher says: the filter counts it reports are exactly those recomputed from
its labels, the exports (at alpha=0, so whatever parsed is exported) validate against their schemas
and render with the model's chat template, and a rerun sends nothing. Budgets are tiny (2 queries,
4-passage windows, 25-token passages, 32/48 new tokens): about a minute on 2 busy CPU cores.
"""

from __future__ import annotations

import json
import time

import ir_measures
import pytest

from _data import SCIFACT, needs_data
from reasonrank.synthesis import SourceSpec, SynthesisConfig, Teacher, TeacherConfig, run_all, run_export
from reasonrank.synthesis.store import StageFile
from servers import llama_cpp_server
from test_synthesis import check_exports

pytestmark = [pytest.mark.model, needs_data]

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
CONFIG = SynthesisConfig(k=10, mine_depth=4, mine_chunk=4, window=4, mine_max_tokens=32, label_max_tokens=48,
                         passage_tokens=25)


def _gguf():
    from reasonrank.paths import cache_dir

    return cache_dir() / "models" / GGUF_NAME


@pytest.fixture(scope="module")
def llama_server():
    """`python -m llama_cpp.server` with the embedded GGUF on a free loopback port; its /v1 URL."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python's server extra is not installed")
    gguf = _gguf()
    if not gguf.exists():
        pytest.skip(f"embedded model not assembled: {gguf} is missing (run scripts/setup.sh)")
    with llama_cpp_server(gguf, n_ctx=4096, startup_timeout=120, alias="teacher") as base:
        yield base


def _teacher(url, run):
    config = TeacherConfig(model="teacher", base_urls=[url], api_key_env="", concurrency=1, max_retries=1,
                           temperature=0.0, top_p=1.0)
    return Teacher.for_run(config, run)


@pytest.fixture(scope="module")
def synth_run(llama_server, tmp_path_factory, qwen_tokenizer):
    run = tmp_path_factory.mktemp("synth-llamacpp") / "run"
    teacher = _teacher(llama_server, run)
    started = time.perf_counter()
    summary = run_all(run, [SourceSpec("scifact", str(SCIFACT), split="train", limit=2)], teacher, CONFIG,
                      tokenizer=qwen_tokenizer)
    return run, summary, teacher, time.perf_counter() - started


def _ndcg10(final, relevant):
    """nDCG@10 straight from ir-measures, independent of the pipeline's own helper."""
    if not relevant:
        return 0.0
    run = {"q": {d: float(len(final) - i) for i, d in enumerate(final)}}
    return ir_measures.calc_aggregate([ir_measures.nDCG @ 10], {"q": dict.fromkeys(relevant, 1)}, run)[ir_measures.nDCG @ 10]


def test_run_reports_exact_filter_counts(synth_run):
    run, summary, teacher, seconds = synth_run
    dom = summary["domains"]["scifact"]
    assert dom["queries"] == 2 and dom["with_candidates"] == 2
    assert sum(dom["mined"].values()) == 2
    assert teacher.stats.failures == 0 and teacher.stats.http_requests == teacher.stats.sent > 0
    labels = list(StageFile(run / "labels.jsonl").load().values())
    ok = [r for r in labels if r["status"] == "ok"]
    parse_failed = [r for r in labels if r["status"] == "parse_failed"]
    assert dom["before_filter"] == len(ok)
    expected_rate = len(parse_failed) / (len(ok) + len(parse_failed)) if ok or parse_failed else None
    assert dom["label_parse_failure_rate"] == expected_rate
    # alpha 0.4 with reasoning required (run_all's defaults), recomputed independently
    expected_kept = sum(1 for r in ok if _ndcg10(r["final_list"], r["relevant_docids"]) >= 0.4 and r["reasoning"].strip())
    assert summary["filter"]["alpha"] == 0.4
    assert summary["filter"]["domains"].get("scifact", {"after": 0})["after"] == expected_kept == dom["after_filter"]
    for r in ok:  # the sample is what the teacher was sent and answered
        assert len(r["initial_list"]) == 4 and sorted(r["final_list"]) == sorted(r["initial_list"])
        assert r["messages"][1]["content"].startswith("I will provide you with 4 passages")
        assert set(r["relevant_docids"]) <= set(r["initial_list"])
    assert summary["tokens"]["prompt"] > 0 and summary["total_seconds"] > 0
    print(f"\n0.5B teacher on SciFact: {json.dumps(dom)}; {seconds:.0f} s")


def test_exports_validate(synth_run, qwen_tokenizer):
    run, summary, _, _ = synth_run
    manifest = run_export(run, alpha=0.0, require_reasoning=False)
    parsed = summary["domains"]["scifact"]["before_filter"]
    assert manifest["samples"] == parsed
    assert parsed >= 1, "the teacher produced no readable ranking at all; nothing to validate"
    check_exports(run / "export", expect=parsed, tokenizer=qwen_tokenizer)


def test_rerun_sends_nothing(synth_run, llama_server, qwen_tokenizer):
    run, _, _, _ = synth_run
    teacher = _teacher(llama_server, run)
    run_all(run, [], teacher, CONFIG, tokenizer=qwen_tokenizer)
    assert teacher.stats.http_requests == 0 and teacher.stats.sent == 0
