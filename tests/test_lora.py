"""LoRA adapters at inference: the hf backend through PEFT (run here on a tiny model with an adapter
from our own trainer) and the vLLM backend's arguments (vLLM isn't installed: a stand-in module)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from _data import SCIFACT, needs_data

from reasonrank.backends.base import Prompt, SamplingParams
from reasonrank.errors import ReasonRankError


# --- hf backend + PEFT, real ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, qwen_tokenizer):
    """A tiny model, a LoRA adapter trained on it for 2 steps by train_sft, and the merged model."""
    pytest.importorskip("trl", reason="the train extra (trl) is not installed")
    pytest.importorskip("peft", reason="the train extra (peft) is not installed")
    if not SCIFACT.exists():
        pytest.skip(f"real data not available: {SCIFACT}")
    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer
    from reasonrank.training import build_tiny_model, train_sft
    from reasonrank.training.data import write_rows
    from reasonrank.training.qrels_data import collection_rows

    root = tmp_path_factory.mktemp("lora")
    renderer = PromptRenderer(qwen_tokenizer, mode="reasonrank", max_passage_tokens=12)
    _, sft, _ = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=2, window=3)
    tiny = build_tiny_model(root / "tiny", tokenizer=qwen_tokenizer)
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


# --- vLLM backend: argument building with a test double -------------------------------------------

class FakeVLLMTokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(range(len(text.split())))


class FakeVLLMLLM:
    """Records what VLLMBackend hands vllm.LLM and LLM.generate; generates nothing real."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        FakeVLLMLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeVLLMTokenizer()

    def generate(self, inputs, sampling, use_tqdm=False, lora_request=None):
        self.calls.append({"inputs": inputs, "lora_request": lora_request})
        done = types.SimpleNamespace(text="[1] > [2]", token_ids=[1, 2], finish_reason="stop")
        return [types.SimpleNamespace(prompt_token_ids=i["prompt_token_ids"], outputs=[done]) for i in inputs]


class FakeVLLMLoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


@pytest.fixture
def fake_vllm(monkeypatch):
    """Stand-in `vllm` and `vllm.lora.request` modules with the names VLLMBackend uses."""
    FakeVLLMLLM.instances = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeVLLMLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora_pkg = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeVLLMLoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora_pkg), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


def _adapter(tmp_path, **cfg):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    return d


def test_vllm_backend_passes_a_lora_request_per_call(fake_vllm, tmp_path):
    from reasonrank.backends.vllm import VLLMBackend

    adapter = _adapter(tmp_path, r=32, lora_alpha=32, rank_pattern={"q_proj": 48})
    backend = VLLMBackend("some/model", lora=str(adapter), max_model_len=4096)
    (llm,) = FakeVLLMLLM.instances
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_loras"] == 1
    assert llm.kwargs["max_lora_rank"] == 64  # rank_pattern's 48, rounded up to a rank vLLM accepts
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    for _ in range(2):
        out = backend.generate([Prompt(messages=[], text="a b c"), Prompt(messages=[], text="d e")], params)
        assert [g.text for g in out] == ["[1] > [2]"] * 2
    assert len(llm.calls) == 2
    for call in llm.calls:
        req = call["lora_request"]
        assert isinstance(req, FakeVLLMLoRARequest)
        assert (req.lora_int_id, req.lora_path) == (1, str(adapter))


def test_vllm_backend_without_lora_sends_no_request_and_refuses_a_bare_enable_lora(fake_vllm):
    from reasonrank.backends.vllm import VLLMBackend

    backend = VLLMBackend("some/model")
    backend.generate([Prompt(messages=[], text="x")], SamplingParams(temperature=0.0, max_new_tokens=4))
    (llm,) = FakeVLLMLLM.instances
    assert "enable_lora" not in llm.kwargs and llm.calls[0]["lora_request"] is None
    with pytest.raises(ReasonRankError, match="base model"):
        VLLMBackend("some/model", enable_lora=True)


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
