"""One BOS over HTTP (issue 19): a prompt rendered here by a chat template that writes the BOS, sent raw to
/completions of a llama.cpp-family server whose model adds a BOS itself, would reach the model with two
(llama-cpp-python and the llama.cpp server both tokenize a text prompt with the model's special tokens
added, and neither takes a field that turns that off). The OpenAI backend leaves the template's BOS text
out for such a server, so the model sees the tokens the in-process engine sees.

A real llama-cpp-python server on loopback, on a copy of the embedded GGUF whose metadata says
`tokenizer.ggml.add_bos_token = true` (the Qwen2.5 GGUF says false; its BOS is `<|endoftext|>`), and a
copy of the embedded tokenizer whose chat template begins with `{{ bos_token }}`. The copy (~491 MB) is
deleted when the module's tests end.
"""

from __future__ import annotations

import copy
import shutil

import pytest

from reasonrank.backends.base import Prompt, SamplingParams
from reasonrank.backends.openai_compat import OpenAIBackend
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers import METHODS
from servers import TEST_THREADS, embedded_gguf, embedded_tokenizer, llama_cpp_server

pytestmark = pytest.mark.model

BOS_ID = 151643  # Qwen2.5's bos_token_id, "<|endoftext|>"


@pytest.fixture(scope="module")
def bos_gguf(tmp_path_factory):
    source = embedded_gguf()
    if source is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    gguf = pytest.importorskip("gguf", reason="the gguf package rewrites the copy's metadata")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    path = tmp_path_factory.mktemp("bos") / "qwen-adds-bos.gguf"
    try:
        shutil.copyfile(source, path)
        reader = gguf.GGUFReader(path, "r+")
        field = reader.fields["tokenizer.ggml.add_bos_token"]
        assert field.contents() is False
        field.parts[field.data[0]][0] = True  # a bool in place: the file keeps its size and layout
        reader.data.flush()
        del reader, field
        assert gguf.GGUFReader(path).fields["tokenizer.ggml.add_bos_token"].contents() is True
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def engines(bos_gguf):
    """(the server's /v1 URL, an in-process LlamaCppBackend), both on the BOS-adding copy."""
    from reasonrank.backends.llamacpp import LlamaCppBackend

    local = LlamaCppBackend(bos_gguf, n_ctx=4096, n_threads=TEST_THREADS)
    try:
        with llama_cpp_server(bos_gguf, n_ctx=4096, n_threads=TEST_THREADS) as base_url:
            yield base_url, local
    finally:
        local.close()


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The embedded Qwen2.5 tokenizer with a chat template that begins with the BOS (as Llama 3's does)."""
    tok = copy.deepcopy(embedded_tokenizer())
    tok.chat_template = "{{- bos_token }}" + tok.chat_template
    return tok


def _prompt(tok, content: str) -> Prompt:
    messages = [{"role": "user", "content": content}]
    return Prompt(messages, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_server_would_see_two_bos_tokens(engines, bos_tokenizer):
    """The bug this guards against, on the real server: the raw prompt costs one token more than in-process."""
    import httpx

    base_url, local = engines
    prompt = _prompt(bos_tokenizer, "What causes tides?")
    assert prompt.text.startswith("<|endoftext|><|im_start|>")
    root = base_url.removesuffix("/v1")
    assert httpx.post(root + "/extras/tokenize", json={"input": ""}).json()["tokens"] == [BOS_ID]  # it adds a BOS
    served = httpx.post(root + "/extras/tokenize", json={"input": prompt.text}).json()["tokens"]
    assert served[:3] == [BOS_ID, BOS_ID, _ids(bos_tokenizer, "<|im_start|>")[0]]
    body = {"model": "m", "prompt": prompt.text, "max_tokens": 1, "temperature": 0.0}
    raw = httpx.post(base_url + "/completions", json=body, timeout=300).json()
    (in_process,) = local.generate([prompt], SamplingParams(max_new_tokens=1))
    assert in_process.prompt_tokens == len(_ids(bos_tokenizer, prompt.text))  # one BOS: the template's
    assert raw["usage"]["prompt_tokens"] == in_process.prompt_tokens + 1


def test_one_bos_over_http_same_tokens_and_output_as_in_process(engines, bos_tokenizer):
    base_url, local = engines
    prompts = [_prompt(bos_tokenizer, "Repeat the word 'tide' ten times."), _prompt(bos_tokenizer, "Name a planet.")]
    params = SamplingParams(max_new_tokens=16)
    backend = OpenAIBackend("qwen", base_url, use_completions=True, max_retries=1, concurrency=1)
    remote = backend.generate(prompts, params)
    in_process = local.generate(prompts, params)
    for r, lo, p in zip(remote, in_process, prompts):
        assert not r.error and not lo.error, (r.error, lo.error)
        assert r.prompt_tokens == lo.prompt_tokens == len(_ids(bos_tokenizer, p.text))
        assert r.text.encode() == lo.text.encode()
    assert backend.stats["server_kind"] == {base_url: "llama-cpp-python"}
    assert backend.stats["bos_stripped"] == 2
    assert backend._bos_text == {base_url: "<|endoftext|>"}  # found from the server's own tokens


def test_a_prompt_without_a_bos_is_sent_as_rendered(engines):
    """Qwen's own template writes no BOS: nothing is cut, and the server's BOS is the in-process engine's."""
    base_url, local = engines
    prompt = _prompt(embedded_tokenizer(), "Name a planet.")
    backend = OpenAIBackend("qwen", base_url, use_completions=True, max_retries=1)
    (remote,) = backend.generate([prompt], SamplingParams(max_new_tokens=1))
    (in_process,) = local.generate([prompt], SamplingParams(max_new_tokens=1))
    assert not remote.error, remote.error
    assert remote.prompt_tokens == in_process.prompt_tokens == len(_ids(embedded_tokenizer(), prompt.text)) + 1
    assert backend.stats["bos_stripped"] == 0


def test_every_window_of_a_rerank_has_the_in_process_prompt_tokens(engines, bos_tokenizer):
    from test_http_exact import _request

    base_url, local = engines
    request = _request()
    backend = OpenAIBackend("qwen", base_url, use_completions=True, max_retries=1, concurrency=1)
    params = SamplingParams(max_new_tokens=12)
    options = dict(top_k=6, window=4, step=2, params=params)
    renderer = PromptRenderer(bos_tokenizer, max_passage_tokens=30)
    remote = METHODS["sliding"](backend, renderer, **options).rerank_batch([request])[0]
    here = METHODS["sliding"](local, PromptRenderer(bos_tokenizer, max_passage_tokens=30), **options).rerank_batch([request])[0]
    assert len(remote.traces) == len(here.traces) >= 2
    for r, lo in zip(remote.traces, here.traces):
        assert r.prompt == lo.prompt and r.prompt.startswith("<|endoftext|>")
        assert r.prompt_tokens == lo.prompt_tokens == len(_ids(bos_tokenizer, lo.prompt))
        assert r.raw_output == lo.raw_output
    # every prompt sent lost its BOS: each window's, and each forced answer's continuation of it
    assert backend.stats["bos_stripped"] == len(remote.traces) + sum(1 for t in remote.traces if t.forced_prompt_tokens)
