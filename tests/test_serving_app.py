"""The rerank app built from a reranker factory (`create_app(factory, config)`), served by a real uvicorn
in a thread on a loopback port, over a scripted backend: deterministic rankings, timing-controlled
cancellation, model failures and the in-flight limit, in a few seconds. The embedded model is
exercised end to end in test_serving.py."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from doubles import DoubleBackend

from reasonrank.backends.base import Generation, SamplingParams
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers.listwise import ListwiseReranker
from reasonrank.serving import ServeConfig, create_app
from reasonrank.spec import RerankerSpec, build
from reasonrank.types import Candidate


class ScriptedBackend(DoubleBackend):
    """Test double: ranks every window in reverse input order, after `delay` seconds; `fail` makes every item an error."""

    name, model = "scripted", "scripted-model"

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay, self.fail = delay, fail
        self.prompts = 0
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        self.prompts += len(prompts)
        time.sleep(self.delay)
        if self.fail:
            return [Generation(text="", error="scripted failure") for _ in prompts]
        out = []
        for p in prompts:
            n = max(int(x) for x in re.findall(r"^\[(\d+)\]", p.messages[-1]["content"], re.MULTILINE))
            answer = " > ".join(f"[{i}]" for i in range(n, 0, -1))
            out.append(Generation(text=f"<think>reversed</think><answer>{answer}</answer>", prompt_tokens=20,
                                  completion_tokens=7, finish_reason="stop"))
        return out


SPEC = RerankerSpec(window=4, step=2, max_new_tokens=16, max_passage_tokens=32)


def built(backend, spec=SPEC):
    """The factory of a reranker built as every face builds one, on the test double."""
    return lambda: build(spec, backend=backend, renderer=PromptRenderer(None, max_passage_tokens=32))


def by_hand(backend):
    """The factory of a reranker constructed directly (no spec): the service serves its settings."""
    return lambda: ListwiseReranker(backend, PromptRenderer(None, max_passage_tokens=32), window=4, step=2,
                                    params=SamplingParams(max_new_tokens=16))


@contextmanager
def serve(backend: ScriptedBackend, factory=None, **config):
    app = create_app((factory or built)(backend), ServeConfig(served_model_name="scripted", **config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("factory", [built, by_hand])
def test_factory_app_ranks_with_its_reranker(factory):
    backend = ScriptedBackend()
    with serve(backend, factory) as (base, _app):
        r = httpx.post(base + "/v2/rerank", json={"model": "scripted", "query": "q", "documents": ["a", "b", "c"],
                                                  "return_reasoning": True}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body["results"]] == [2, 1, 0]  # the scripted model reverses the window
        assert [x["relevance_score"] for x in body["results"]] == [1.0, 0.5, 1 / 3]
        assert body["meta"]["tokens"] == {"input_tokens": 20, "output_tokens": 7}
        assert "warnings" not in body["meta"] and body["reasoning"][0]["status"] == "ok"
        # one document: nothing to order, no model call
        calls = backend.calls
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["only"]}, timeout=30)
        # a body Cohere's, Jina's and vLLM's clients all send: documents back unless declined (serving.shapes)
        assert r.json()["results"] == [{"index": 0, "relevance_score": 1.0, "document": {"text": "only"}}] and backend.calls == calls
        # 6 documents, window 4, step 2: (2,6) reversed gives 0 1 5 4 3 2, then (0,4) reversed gives 4 5 1 0 3 2
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": list("abcdef"), "return_reasoning": True}, timeout=30)
        assert [(w["start"], w["end"]) for w in r.json()["reasoning"]] == [(2, 6), (0, 4)]
        assert [x["index"] for x in r.json()["results"]] == [4, 5, 1, 0, 3, 2]


def test_disconnect_stops_further_windows():
    backend = ScriptedBackend(delay=0.4)
    with serve(backend) as (base, _app):
        body = json.dumps({"query": "q", "documents": [f"d{i}" for i in range(12)]}).encode()  # five windows
        sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)  # inside the first window
        sock.close()
        time.sleep(2.5)  # time enough for all five windows, had they been run
        assert backend.prompts == 1
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert "reasonrank_cancelled_requests_total 1.0" in metrics
        assert httpx.get(base + "/health", timeout=10).json()["in_flight"] == 0


def test_model_failure_is_a_500_and_the_server_stays_up():
    backend = ScriptedBackend(fail=True)
    with serve(backend) as (base, _app):
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)
        assert r.status_code == 500
        assert r.json()["message"] == "the model failed on every window: scripted failure"
        backend.fail = False
        assert httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30).status_code == 200


def test_requests_over_the_in_flight_limit_get_503():
    backend = ScriptedBackend(delay=1.0)
    with serve(backend, max_in_flight=1) as (base, _app):
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)))
        t.start()
        while httpx.get(base + "/health", timeout=10).json()["in_flight"] == 0:
            time.sleep(0.02)
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)
        assert r.status_code == 503 and "server busy" in r.json()["message"]
        t.join(30)
        assert box["r"].status_code == 200


def test_a_tdpart_spec_is_served_as_tdpart():
    """The service builds each request's reranker from the served spec: tdpart windows (roles, no positions) and
    tdpart's order, the one the same spec gives in-process, not the sliding window's."""
    spec = RerankerSpec(method="tdpart", window=4, pivot=2, max_new_tokens=16, max_passage_tokens=32)
    backend = ScriptedBackend()
    texts = [f"passage {i}" for i in range(9)]
    expected = build(spec, backend=ScriptedBackend(), renderer=PromptRenderer(None, max_passage_tokens=32)).rerank(
        "q", [Candidate(str(i), 0.0, t) for i, t in enumerate(texts)])
    sliding = build(SPEC, backend=ScriptedBackend(), renderer=PromptRenderer(None, max_passage_tokens=32)).rerank(
        "q", [Candidate(str(i), 0.0, t) for i, t in enumerate(texts)])
    assert expected.docids != sliding.docids  # the methods disagree on this list: the test can tell them apart
    with serve(backend, lambda b: built(b, spec)) as (base, app):
        r = httpx.post(base + "/v2/rerank", json={"model": "scripted", "query": "q", "documents": texts,
                                                  "return_reasoning": True}, timeout=30)
        assert r.status_code == 200, r.text
        assert app.state.service.spec.method == "tdpart" and app.state.service.spec.pivot == 2
    body = r.json()
    assert [str(x["index"]) for x in body["results"]] == expected.docids
    windows = body["reasoning"]
    assert {w["method"] for w in windows} == {"tdpart"} and windows[0]["role"] == "first"
    assert all(w["start"] is None and w["end"] is None for w in windows)
    assert len(windows) == len(expected.traces)
