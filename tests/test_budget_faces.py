"""Per-call reasoning budgets on every face (issue 21): the HTTP service (the official Cohere SDK with the extra
fields in its body, and raw httpx; a request over the server's cap is a 400 naming it), the MCP rerank tool and
an adapter's constructor, each reaching the engine.

The engine is `BudgetServer`, a test double of a vLLM server on loopback (it says `owned_by: vllm`, so the
client sends chat messages and asks for a continuation of the final assistant message): it records every
request body, cuts a reply whose `max_tokens` is under 50 mid-reasoning (finish_reason length), and answers a
continuation (`continue_final_message`) with the window reversed. So a per-call budget shows as the max_tokens
the engine received and as forced windows. The embedded model through the service is at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading

import pytest
from servers import JSONHandler, LoopbackHTTPServer, free_port, stop_process, wait_for_server

httpx = pytest.importorskip("httpx")

QUERY = "What is the capital of France?"
DOCS = ["Berlin is the capital of Germany.", "The Seine flows through Paris.", "Paris is the capital of France.",
        "Lyon is a city in France.", "Madrid is the capital of Spain.", "France is a country in Europe."]
CUT_BELOW = 50  # max_tokens under this: the reply is cut in its reasoning


class BudgetServer(LoopbackHTTPServer):
    """Test double of a vLLM OpenAI-compatible server (chat completions only); `bodies` records every request."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                if self.path.endswith("/models"):
                    self.send_json(200, {"object": "list", "data": [{"id": "stand-in", "object": "model", "owned_by": "vllm"}]})
                else:
                    self.send_json(404, {"error": "not found"})

            def do_POST(self):
                if not self.path.endswith("/chat/completions"):
                    self.send_json(404, {"error": "not found"})
                    return
                body = self.read_json()
                with server.lock:
                    server.bodies.append(body)
                user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                n = max(int(x) for x in re.findall(r"^\[(\d+)\]", user, re.MULTILINE))
                ranking = " > ".join(f"[{i}]" for i in range(n, 0, -1))
                if body.get("continue_final_message"):
                    text, finish, used = ranking + "</answer>", "stop", 3 * n
                elif body["max_tokens"] < CUT_BELOW:
                    text, finish, used = "<think>Passage [2] looks best. Passage [1] is", "length", body["max_tokens"]
                else:
                    text, finish, used = f"<think>fine</think><answer>{ranking}</answer>", "stop", 3 * n + 5
                self.send_json(200, {"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 60, "completion_tokens": used, "total_tokens": 60 + used}})

        super().__init__(Handler)

    def take(self) -> list[dict]:
        with self.lock:
            out, self.bodies = self.bodies, []
        return out


@pytest.fixture(scope="module")
def engine():
    with BudgetServer() as server:
        yield server


def spec_of(engine, **fields):
    from reasonrank.spec import RerankerSpec

    return RerankerSpec(model="stand-in", backend="openai", backend_options={"base_urls": [engine.base_url], "max_retries": 0},
                        window=4, step=2, max_passage_tokens=30, **fields)


def check_forced_calls(bodies: list[dict], reasoning: int, answer: int) -> None:
    """Two windows, each cut at reasoning + answer tokens, then continued for at most `answer`."""
    firsts = [b for b in bodies if not b.get("continue_final_message")]
    forced = [b for b in bodies if b.get("continue_final_message")]
    assert [b["max_tokens"] for b in firsts] == [reasoning + answer] * 2
    assert [b["max_tokens"] for b in forced] == [answer] * 2
    for b in forced:
        assert b["add_generation_prompt"] is False and b["messages"][-1]["role"] == "assistant"
        assert b["messages"][-1]["content"] == "<think>Passage [2] looks best.</think>\n<answer>"


# -- the HTTP service ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(engine, tmp_path_factory):
    """`python -m reasonrank.serving` on the stand-in, served reasoning budget 64: a request may ask for less."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**{k: v for k, v in os.environ.items() if k != "REASONRANK_API_KEY"}, "OPENAI_API_KEY": "unused"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reasonrank.serving", "-m", "stand-in", "-b", "openai",
                                 "--base-url", engine.base_url, "--window", "4", "--step", "2", "--max-passage-tokens", "30",
                                 "--reasoning-budget", "64", "--max-answer-budget", "200", "--backend-option", "max_retries=0",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, base + "/health", 120, "server", log=log)
        yield base
    finally:
        stop_process(proc)


def test_cohere_sdk_with_and_without_the_budget_fields(service, engine):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=service, timeout=120)
    engine.take()
    plain = client.rerank(model="stand-in", query=QUERY, documents=DOCS)  # a Cohere client as it is
    assert [b["max_tokens"] for b in engine.take()] == [164, 164]  # the served budget: 64 + 100
    assert [r.index for r in plain.results] == [4, 5, 1, 0, 3, 2]  # the stand-in reverses each window
    tight = client.rerank(model="stand-in", query=QUERY, documents=DOCS,
                          request_options={"additional_body_parameters": {"reasoning_budget": 8, "answer_budget": 8}})
    check_forced_calls(engine.take(), 8, 8)
    assert [r.index for r in tight.results] == [r.index for r in plain.results]  # forced answers: the windows reversed
    assert tight.meta.tokens.output_tokens == 2 * 16 + 2 * 12  # both parts of both windows


def test_raw_http_budget_fields_and_the_cap(service, engine):
    def post(**extra):
        return httpx.post(service + "/v2/rerank", json={"model": "stand-in", "query": QUERY, "documents": DOCS,
                                                         "return_reasoning": True, **extra}, timeout=120)

    engine.take()
    r = post(reasoning_budget=4, answer_budget=10, on_truncation="keep")
    assert r.status_code == 200, r.text
    assert {w["status"] for w in r.json()["reasoning"]} == {"truncated"} and len(engine.take()) == 2  # no forced call
    r = post(reasoning_budget=4, answer_budget=10)
    windows = r.json()["reasoning"]
    assert [w["status"] for w in windows] == ["forced", "forced"]
    assert windows[0]["forced"]["answer"] == "[4] > [3] > [2] > [1]</answer>" and windows[0]["forced"]["completion_tokens"] == 12
    check_forced_calls(engine.take(), 4, 10)
    r = post(thinking=False)
    assert r.status_code == 200 and all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in engine.take())
    # over the caps (reasoning: the served 64; answer: --max-answer-budget 200), or contradictory: 400, naming it
    for extra, message in (({"reasoning_budget": 65}, "reasoning_budget 65 is over this server's max_reasoning_budget of 64"),
                           ({"effort": "low"}, "reasoning_budget 256 (effort low) is over this server's max_reasoning_budget of 64"),
                           ({"answer_budget": 201}, "answer_budget 201 is over this server's max_answer_budget of 200"),
                           ({"effort": "low", "reasoning_budget": 8}, "contradicts reasoning_budget 8"),
                           ({"reasoning_budget": "8"}, "'reasoning_budget' must be an integer >= 0"),
                           ({"on_truncation": "drop"}, "'on_truncation' must be one of force, keep, paper"),
                           ({"thinking": "no"}, "'thinking' must be a boolean")):
        r = post(**extra)
        assert r.status_code == 400 and message in r.json()["message"], (extra, r.text)
    assert engine.take() == []  # refused before any model call
    # TEI's shape (its own body, rebuilt for the service) carries the budget fields too
    r = httpx.post(service + "/rerank", json={"query": QUERY, "texts": DOCS, "reasoning_budget": 4, "answer_budget": 10}, timeout=120)
    assert r.status_code == 200, r.text
    check_forced_calls(engine.take(), 4, 10)
    r = httpx.post(service + "/rerank", json={"query": QUERY, "texts": DOCS, "reasoning_budget": 65}, timeout=120)
    assert 400 <= r.status_code < 500 and "max_reasoning_budget of 64" in r.json()["error"], r.text


# -- MCP and an adapter ----------------------------------------------------------------------------------

def test_mcp_rerank_tool_takes_the_budget_fields(engine):
    pytest.importorskip("mcp")
    from mcp import Client

    from reasonrank.integrations.mcp import build_server
    from reasonrank.spec import build

    reranker = build(spec_of(engine, reasoning_budget=64))

    async def session():
        async with Client(build_server(reranker)) as client:
            schema = (await client.list_tools()).tools
            rerank = next(t for t in schema if t.name == "rerank").input_schema["properties"]
            assert {"reasoning_budget", "answer_budget", "effort", "thinking", "on_truncation"} <= set(rerank)
            tight = await client.call_tool("rerank", {"query": QUERY, "documents": DOCS, "reasoning_budget": 8, "answer_budget": 8})
            bodies = engine.take()
            plain = await client.call_tool("rerank", {"query": QUERY, "documents": DOCS})
            served = engine.take()
            bad = await client.call_tool("rerank", {"query": QUERY, "documents": DOCS, "effort": "low", "reasoning_budget": 8})
            return tight, bodies, plain, served, bad

    engine.take()
    tight, bodies, plain, served, bad = asyncio.run(session())
    assert not tight.is_error and not plain.is_error
    check_forced_calls(bodies, 8, 8)
    assert [b["max_tokens"] for b in served] == [164, 164]  # the next call is back on the server's budget
    assert bad.is_error and "contradicts reasoning_budget 8" in bad.content[0].text
    reranker.close()


def test_adapter_constructor_takes_the_budget_fields(engine):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from reasonrank.integrations.langchain import ReasonRankCompressor

    compressor = ReasonRankCompressor("stand-in", "openai", top_n=None, base_urls=[engine.base_url], max_retries=0, window=4,
                                      step=2, max_passage_tokens=30, reasoning_budget=8, answer_budget=8, on_truncation="force")
    spec = compressor.reranker.spec
    assert (spec.reasoning_budget, spec.answer_budget, spec.max_new_tokens, spec.on_truncation) == (8, 8, 16, "force")
    engine.take()
    found = compressor.compress_documents([Document(page_content=t) for t in DOCS], QUERY)
    check_forced_calls(engine.take(), 8, 8)
    assert [d.page_content for d in found][:2] == [DOCS[4], DOCS[5]]
    compressor.reranker.close()


# -- the embedded model through the service ----------------------------------------------------------------

@pytest.mark.model
def test_service_per_request_budget_forces_answers_on_the_embedded_model():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from servers import embedded_gguf, shared_llama_backend
    from test_forced_answer import QUERIES, TIGHT, requests

    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    from reasonrank.serving import ServeConfig, create_app
    from reasonrank.spec import RerankerSpec, build

    served = {k: v for k, v in TIGHT.items() if k not in ("reasoning_budget", "answer_budget", "top_k")}
    request = requests()[1]  # SciFact query 549 and its BM25 top-6
    app = create_app(lambda: build(RerankerSpec(**served), backend=shared_llama_backend()), ServeConfig())
    with TestClient(app) as client:
        r = client.post("/v1/rerank", json={"query": QUERIES["549"][0], "documents": [c.content for c in request.candidates],
                                            "return_reasoning": True, "reasoning_budget": 4, "answer_budget": 4})
        assert r.status_code == 200, r.text
        windows = r.json()["reasoning"]
        assert [w["status"] for w in windows] == ["forced", "forced"], windows
        assert all(w["completion_tokens"] == 8 and 0 < w["forced"]["completion_tokens"] <= 4 for w in windows)
        assert r.json()["meta"]["tokens"]["output_tokens"] == sum(8 + w["forced"]["completion_tokens"] for w in windows)
        over = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"], "reasoning_budget": 5000})
        assert over.status_code == 400 and "max_reasoning_budget of 3072" in over.json()["message"]
        no_switch = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"], "thinking": False})
        assert no_switch.status_code == 400 and "has no thinking switch" in no_switch.json()["message"]
