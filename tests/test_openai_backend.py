"""OpenAIBackend against real local HTTP servers: a scripted faulty one, and llama.cpp's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from reasonrank.backends.base import Generation, Prompt, SamplingParams
from reasonrank.backends.openai_compat import OpenAIBackend, auto_timeout, read_api_key, split_reasoning
from servers import FaultServer, embedded_gguf, embedded_tokenizer, free_port, llama_cpp_server, shared_llama_backend


def _prompt(case: str) -> Prompt:
    return Prompt(messages=[{"role": "user", "content": f"rank these case={case} please"}],
                  text=f"<|im_start|>user\nrank these case={case} please<|im_end|>\n<|im_start|>assistant\n")


def _fast(base_urls, **kw) -> OpenAIBackend:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("max_retries", 3)
    return OpenAIBackend("fake", base_urls, backoff_base_s=0.01, backoff_max_s=0.05, **kw)


# -- faults -----------------------------------------------------------------------------------------

SCRIPTS = {
    "ok": ["ok"],
    "e500": ["500", "ok"],
    "e503x2": ["503", "503", "ok"],
    "e429": ["429", "ok"],
    "hang": ["hang", "ok"],
    "truncated": ["truncated", "ok"],
    "invalid": ["invalid", "ok"],
    "nochoices": ["nochoices", "ok"],
    "mixed": ["500", "hang", "invalid", "ok"],
    "dead": ["500"],  # never recovers
    "bad400": ["400", "ok"],  # client error: not retried
    "reasoning": ["reasoning"],
    "think": ["think"],
}
EXPECTED_ATTEMPTS = {"ok": 1, "e500": 2, "e503x2": 3, "e429": 2, "hang": 2, "truncated": 2, "invalid": 2,
                     "nochoices": 2, "mixed": 4, "dead": 4, "bad400": 1, "reasoning": 1, "think": 1}


def test_fault_batch_retries_only_failed_requests_and_counts_exactly():
    with FaultServer(SCRIPTS, hang_s=2.0) as server:
        backend = _fast(server.base_url, concurrency=4, api_key="sk-test-secret-123")
        cases = list(SCRIPTS)
        gens = backend.generate([_prompt(c) for c in cases], SamplingParams(max_new_tokens=3172))
        hits = dict(server.hits)
        auth = {headers.get("Authorization") for _, _, headers in server.requests}

    assert len(gens) == len(cases)
    assert hits == EXPECTED_ATTEMPTS  # each request was sent exactly as often as its faults demand
    for case, gen in zip(cases, gens):
        assert gen.retries == EXPECTED_ATTEMPTS[case] - 1, case
        if case in ("dead", "bad400"):
            assert gen.error and gen.text == "", case
        else:
            assert not gen.error, (case, gen.error)
            assert gen.prompt_tokens == 11 and gen.completion_tokens == 7 and gen.finish_reason == "stop"
    by_case = dict(zip(cases, gens))
    assert "HTTP 500" in by_case["dead"].error and "4 attempt" in by_case["dead"].error
    assert "HTTP 400" in by_case["bad400"].error
    assert by_case["e500"].text == "answer for e500"
    # reasoning returned separately, and inline <think>, both end up split; full_text re-inlines
    assert by_case["reasoning"].reasoning == "because 2 is better" and by_case["reasoning"].text == "[2] > [1]"
    assert by_case["reasoning"].full_text == "<think>because 2 is better</think>[2] > [1]"
    assert by_case["think"].reasoning == "step by step" and by_case["think"].text == "\n[1] > [2]"
    assert by_case["think"].full_text == "<think>step by step</think>\n[1] > [2]"

    stats = backend.stats
    assert stats["requests"] == sum(EXPECTED_ATTEMPTS.values())
    assert stats["retries"] == sum(v - 1 for v in EXPECTED_ATTEMPTS.values())
    assert stats["failures"] == 2
    assert stats["completion_tokens"] == 7 * (len(cases) - 2)
    # the key reached the server but is nowhere in what the backend shows
    assert auth == {"Bearer sk-test-secret-123"}
    assert "sk-test" not in repr(backend) and all("sk-test" not in g.error for g in gens)


def test_hang_is_cut_by_the_timeout_and_retried():
    with FaultServer({"hang": ["hang", "hang", "ok"]}, hang_s=3.0) as server:
        backend = _fast(server.base_url, timeout=0.4)
        (gen,) = backend.generate([_prompt("hang")], SamplingParams(max_new_tokens=16))
        hits = server.hits["hang"]
    # a hang answers "late" after 3 s: the third attempt's answer proves both hangs were cut by the timeout
    assert not gen.error and gen.retries == 2 and hits == 3
    assert "late" not in gen.text


def test_completions_mode_sends_the_exact_prompt_text():
    with FaultServer({"ok": ["ok"]}) as server:
        backend = _fast(server.base_url, use_completions=True, extra_body={"repeat_penalty": 1.0})
        prompts = [_prompt("ok"), Prompt(messages=[{"role": "user", "content": "case=ok only messages"}])]
        gens = backend.generate(prompts, SamplingParams(max_new_tokens=5, stop=["</answer>"]))
        reqs = list(server.requests)
    assert all(not g.error for g in gens)
    paths = sorted(path for path, _, _ in reqs)
    assert paths == ["/v1/chat/completions", "/v1/completions"]  # no text -> chat endpoint
    body = next(b for p, b, _ in reqs if p == "/v1/completions")
    assert body["prompt"] == prompts[0].text and "messages" not in body
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0 and body["stop"] == ["</answer>"]
    assert body["repeat_penalty"] == 1.0 and body["model"] == "fake"
    # an unknown server gets every pinned sampling field, and a rendered prompt no added special tokens
    assert body["repetition_penalty"] == 1.0 and body["top_k"] == -1 and body["min_p"] == 0.0
    assert body["add_special_tokens"] is False
    chat = next(b for p, b, _ in reqs if p == "/v1/chat/completions")
    assert "add_special_tokens" not in chat and chat["repetition_penalty"] == 1.0


def test_several_base_urls_are_balanced_and_a_dead_one_is_routed_around():
    with FaultServer({}) as a, FaultServer({}) as b:
        backend = _fast([a.base_url, b.base_url], concurrency=4)
        gens = backend.generate([_prompt("ok") for _ in range(12)], SamplingParams(max_new_tokens=8))
        assert all(not g.error for g in gens)
        assert a.hits["ok"] + b.hits["ok"] == 12
        assert min(a.hits["ok"], b.hits["ok"]) >= 4  # spread, not all on one
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    with FaultServer({}) as live:
        backend = _fast([dead, live.base_url], concurrency=2, max_retries=2)
        gens = backend.generate([_prompt("ok") for _ in range(6)], SamplingParams(max_new_tokens=8))
        assert all(not g.error for g in gens)
        assert live.hits["ok"] == 6
        # every request that went to the dead URL first was retried once, on the live one
        assert backend.stats["retries"] == backend.stats["per_url"][dead] > 0
        assert sum(g.retries for g in gens) == backend.stats["retries"]


def test_agenerate_and_generate_inside_a_running_loop():
    with FaultServer({"e500": ["500", "ok"]}) as server:
        backend = _fast(server.base_url, concurrency=2)

        async def main():
            first = await backend.agenerate([_prompt("ok"), _prompt("e500")], SamplingParams(max_new_tokens=8))
            second = await asyncio.gather(*(backend.agenerate([_prompt("ok")], SamplingParams(max_new_tokens=8))
                                            for _ in range(3)))
            # the sync API still works when called from a coroutine (it uses a helper thread)
            third = backend.generate([_prompt("ok")], SamplingParams(max_new_tokens=8))
            await backend.aclose()
            return first, second, third

        first, second, third = asyncio.run(main())
    assert [g.retries for g in first] == [0, 1]
    assert all(not g[0].error for g in second) and not third[0].error
    assert backend.stats["requests"] == 7


def test_generate_from_a_worker_thread():
    with FaultServer({}) as server:
        backend = _fast(server.base_url)
        out: list[Generation] = []
        t = threading.Thread(target=lambda: out.extend(backend.generate([_prompt("ok")], SamplingParams(max_new_tokens=4))))
        t.start()
        t.join(10)
    assert len(out) == 1 and out[0].text == "answer for ok"


# -- timeout sizing ---------------------------------------------------------------------------------

def test_default_timeout_is_sized_from_the_token_budget():
    # ReasonRank's budget (3,072 reasoning + 100 answer tokens): at 5 tok/s, plus 60 s for the prompt
    assert auto_timeout(3172) == pytest.approx(60 + 3172 / 5)
    one = OpenAIBackend("m", "http://127.0.0.1:1/v1", concurrency=1)
    assert one.request_timeout(3172) >= 600  # far above the ~100-200 s a CPU server needs for 3,172 tokens
    assert one.request_timeout(10) == 120  # the floor
    # a serial server (1 slot) with 8 requests queued on it: the last waits behind the other 7
    assert OpenAIBackend("m", "http://127.0.0.1:1/v1", concurrency=8).request_timeout(3172) == pytest.approx(8 * (60 + 3172 / 5))
    # two URLs share the queue; a batching server (vLLM) is not a queue
    assert OpenAIBackend("m", ["http://a/v1", "http://b/v1"], concurrency=8).request_timeout(3172) == pytest.approx(4 * (60 + 3172 / 5))
    assert OpenAIBackend("m", "http://a/v1", concurrency=8, server_slots=None).request_timeout(3172) == pytest.approx(60 + 3172 / 5)
    assert OpenAIBackend("m", "http://a/v1", timeout=42).request_timeout(3172) == 42
    # what the server is seen to do can only lengthen it: 0.5 s/token observed -> 2 x 0.5 x 3172
    one._observe(seconds=32.0, completion_tokens=64)
    assert one.request_timeout(3172) == pytest.approx(2 * 0.5 * 3172)
    one._observe(seconds=1.0, completion_tokens=100)  # a fast answer does not shorten it
    one._observe(seconds=100.0, completion_tokens=3)  # too short to measure a rate: ignored
    assert one.request_timeout(3172) == pytest.approx(2 * 0.5 * 3172)


# -- small pieces -----------------------------------------------------------------------------------

def test_split_reasoning_and_api_key_sources(tmp_path, monkeypatch):
    assert split_reasoning("<think>a</think>b") == ("a", "b")
    assert split_reasoning("a</think>b") == ("a", "b")  # template opened the block
    assert split_reasoning("<think>cut by the budget") == ("", "<think>cut by the budget")
    assert split_reasoning("plain") == ("", "plain")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY_FILE", raising=False)
    assert read_api_key() is None
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    assert read_api_key() == "sk-from-file"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert read_api_key() == "sk-env"
    assert read_api_key("sk-arg") == "sk-arg"


# -- a real llama.cpp OpenAI-compatible server ------------------------------------------------------

@pytest.fixture(scope="module")
def llama_server():
    gguf = embedded_gguf()
    if gguf is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    with llama_cpp_server(gguf, n_ctx=4096) as base_url:
        yield base_url


MESSAGES = [{"role": "user", "content": "Which number is larger, 3 or 7? Answer with the number only."}]


@pytest.mark.model
def test_real_llama_server_chat_endpoint(llama_server):
    backend = OpenAIBackend("qwen", llama_server, concurrency=2, max_retries=1, extra_body={"repeat_penalty": 1.0})
    gens = backend.generate([Prompt(MESSAGES), Prompt(MESSAGES)], SamplingParams(max_new_tokens=16))
    for g in gens:
        assert not g.error, g.error
        assert g.text.strip() and g.prompt_tokens > 10 and 0 < g.completion_tokens <= 16
        assert g.finish_reason in ("stop", "length")
    assert gens[0].text == gens[1].text  # greedy
    assert backend.stats["requests"] == 2 and backend.stats["retries"] == 0
    (cut,) = backend.generate([Prompt(MESSAGES)], SamplingParams(max_new_tokens=1))
    assert cut.finish_reason == "length" and cut.completion_tokens == 1


@pytest.mark.model
def test_real_llama_server_timeout_covers_its_measured_speed(llama_server):
    """The timeout for ReasonRank's 3,172-token budget exceeds what this server, on this CPU, takes."""
    backend = OpenAIBackend("qwen", llama_server, concurrency=1, extra_body={"repeat_penalty": 1.0})
    static = backend.request_timeout(3172)
    assert static >= 600
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    (gen,) = backend.generate([Prompt(story)], SamplingParams(max_new_tokens=32))
    assert not gen.error and gen.completion_tokens == 32 and gen.finish_reason == "length"
    projected = gen.seconds / gen.completion_tokens * 3172  # prompt time included: errs long
    assert backend.request_timeout(3172) >= max(static, 2 * projected * 0.99)


@pytest.mark.model
def test_real_llama_server_completions_endpoint_matches_local_llama(llama_server):
    tok = embedded_tokenizer()
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    backend = OpenAIBackend("qwen", llama_server, use_completions=True, max_retries=1,
                            extra_body={"repeat_penalty": 1.0})
    (remote,) = backend.generate([Prompt(MESSAGES, text)], SamplingParams(max_new_tokens=12))
    assert not remote.error, remote.error
    assert remote.text.strip() and remote.completion_tokens > 0
    # same exact prompt, same greedy decoding, same weights: the local engine agrees
    (local,) = shared_llama_backend().generate([Prompt(MESSAGES, text)], SamplingParams(max_new_tokens=12))
    assert remote.prompt_tokens == local.prompt_tokens
    assert remote.text == local.text
