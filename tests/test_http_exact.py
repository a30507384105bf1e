"""Byte-exact prompts and greedy decoding over HTTP (issues #13 and #14): the same rendered prompt,
sent to a real llama.cpp server on loopback, costs the same tokens and gives the same output as the
in-process engine; servers are told every sampling field they would otherwise default; a strict server
that refuses them gets the request again without them, once, and the run summary says so."""

from __future__ import annotations


import pytest

from reasonrank.backends.base import Prompt, SamplingParams
from reasonrank.backends.openai_compat import OpenAIBackend, pinned_fields, server_kind
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers import METHODS, Reranker
from reasonrank.types import Candidate, Query, Request
from servers import JSONHandler, LoopbackHTTPServer, TEST_THREADS, embedded_gguf, embedded_tokenizer, llama_cpp_server, shared_llama_backend


def test_pins_are_each_servers_own_names():
    assert server_kind({"data": [{"id": "m", "owned_by": "vllm"}]}) == "vllm"
    assert server_kind({"data": [{"id": "m", "owned_by": "me"}]}) == "llama-cpp-python"
    assert server_kind({"data": [{"id": "m", "owned_by": "llamacpp"}]}) == "llama.cpp"
    assert server_kind({"object": "list"}) == server_kind({"data": [{"owned_by": "openai"}]}) == "unknown"
    assert pinned_fields("vllm", raw_prompt=True) == {"repetition_penalty": 1.0, "top_k": -1, "min_p": 0.0,
                                                      "add_special_tokens": False}
    assert pinned_fields("vllm", raw_prompt=False) == {"repetition_penalty": 1.0, "top_k": -1, "min_p": 0.0}
    assert pinned_fields("llama-cpp-python", raw_prompt=True) == {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


class StrictServer(LoopbackHTTPServer):
    """A loopback server that, like OpenAI's API, answers 400 to any body field it does not know."""

    KNOWN = {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop"}

    def __init__(self):
        self.bodies: list[dict] = []
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": "gpt-x", "owned_by": "openai"}]})

            def do_POST(self):
                body = self.read_json()
                server.bodies.append(body)
                unknown = sorted(set(body) - StrictServer.KNOWN)
                if unknown:
                    return self.send_json(400, {"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                                          "type": "invalid_request_error"}})
                usage = {"prompt_tokens": 5, "completion_tokens": 2}
                self.send_json(200, {"choices": [{"message": {"content": "[1] > [2]"}, "finish_reason": "stop"}], "usage": usage})

        super().__init__(Handler)


def test_a_strict_server_gets_the_request_again_without_the_pins_once_and_it_is_remembered():
    with StrictServer() as server:
        backend = OpenAIBackend("gpt-x", server.base_url, max_retries=0, backoff_base_s=0.01)
        prompts = [Prompt([{"role": "user", "content": f"q{i}"}]) for i in range(3)]
        first = backend.generate(prompts[:1], SamplingParams(max_new_tokens=8))
        rest = backend.generate(prompts[1:], SamplingParams(max_new_tokens=8))
        bodies = list(server.bodies)
    assert all(not g.error and g.text == "[1] > [2]" for g in first + rest)
    assert len(bodies) == 4  # refused once, then never sent the pins again
    assert {"repetition_penalty", "repeat_penalty", "top_k", "min_p"} <= set(bodies[0])
    assert all(set(b) <= StrictServer.KNOWN for b in bodies[1:])
    assert backend.stats["dropped_fields"] == {server.base_url: ["min_p", "repeat_penalty", "repetition_penalty", "top_k"]}
    assert backend.stats["retries"] == 0 and backend.stats["failures"] == 0


def test_the_run_summary_names_the_prompt_format_and_dropped_fields():
    with StrictServer() as server:
        reranker = Reranker("gpt-x", "openai", base_urls=[server.base_url], max_passage_tokens=20, window=2, step=1,
                            top_k=2, max_new_tokens=8, max_retries=0)
        reranker.rerank("q", [Candidate("a", text="alpha"), Candidate("b", text="beta")])
    stats = reranker.stats.to_dict()
    assert stats["prompt_format"] == "messages"  # no tokenizer known for gpt-x: chat fallback, said so
    assert stats["dropped_fields"] == {server.base_url: ["min_p", "repeat_penalty", "repetition_penalty", "top_k"]}


# -- a real llama.cpp server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_server():
    gguf = embedded_gguf()
    if gguf is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    with llama_cpp_server(gguf, n_ctx=4096, n_threads=TEST_THREADS) as base_url:
        yield base_url


def _request() -> Request:
    from _data import SCIFACT

    if not SCIFACT.exists():
        texts = [("Tides", "The moon's gravity pulls the oceans toward it."), ("Sun", "The sun also raises smaller tides.")] * 3
        return Request(Query("t", "what causes tides?"), [Candidate(f"d{i}", 0.0, t, h) for i, (h, t) in enumerate(texts)])
    from reasonrank.io import load_collection

    coll = load_collection(SCIFACT)
    query = next(iter(coll.queries()))
    docs = [doc for _, doc in zip(range(6), coll.docs())]
    return Request(query, [d.to_candidate(0.0) for d in docs])


@pytest.mark.model
def test_greedy_output_over_http_is_byte_identical_to_in_process(llama_server):
    """A prompt that invites repetition: llama.cpp's default repeat_penalty 1.1 and min_p 0.05 would
    change it, so identical bytes show the pins reached the server."""
    tok = embedded_tokenizer()
    messages = [{"role": "user", "content": "Repeat the word 'tide' twenty times, separated by spaces."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    params = SamplingParams(max_new_tokens=48)
    backend = OpenAIBackend("qwen", llama_server, use_completions=True, max_retries=1)
    (remote,) = backend.generate([Prompt(messages, text)], params)
    (local,) = shared_llama_backend().generate([Prompt(messages, text)], params)
    assert not remote.error, remote.error
    assert backend.stats["server_kind"] == {llama_server: "llama-cpp-python"} and backend.stats["dropped_fields"] == {}
    assert remote.text.encode() == local.text.encode()
    assert (remote.prompt_tokens, remote.completion_tokens) == (local.prompt_tokens, local.completion_tokens)


@pytest.mark.model
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_window_over_http_has_the_in_process_prompt_tokens_and_output(llama_server, method):
    request = _request()
    sliding = {"step": 2} if method == "sliding" else {}  # tdpart takes no step
    options = dict(max_passage_tokens=30, top_k=6, window=4, max_new_tokens=24, **sliding)
    http = Reranker("embedded", "openai", base_urls=[llama_server], method=method, max_retries=1, **options)
    assert http.stats.prompt_format == "text" and http.backend.use_completions  # registry name -> its tokenizer
    local = METHODS[method](shared_llama_backend(), PromptRenderer(embedded_tokenizer(), max_passage_tokens=30),
                            top_k=6, window=4, params=http.params, **sliding)
    remote_result, local_result = http.rerank_batch([request])[0], local.rerank_batch([request])[0]
    assert len(remote_result.traces) == len(local_result.traces) >= 2
    for r, lo in zip(remote_result.traces, local_result.traces):
        assert r.prompt == lo.prompt  # byte-exact prompt, passages cut in model tokens
        assert r.prompt_tokens == lo.prompt_tokens == shared_llama_backend().count_tokens(lo.prompt)  # ±0
        assert r.raw_output == lo.raw_output and r.permutation == lo.permutation
    assert remote_result.docids == local_result.docids
