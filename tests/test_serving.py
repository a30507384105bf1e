"""The rerank service for real: `python -m reasonrank.serving` (uvicorn) in a subprocess on a loopback
port, with the embedded Qwen2.5-Coder-0.5B GGUF on llama.cpp, called over HTTP with httpx and with the
official `cohere` SDK.

Requests are tiny (2-12 short documents, 32 new tokens, window 4, step 2) so a window takes a few
seconds on 2 CPU cores. The embedded model is a smoke-test model: it often answers in a format the
parser cannot use (status no_answer, input order kept), so the tests check shapes, limits, batching
and cancellation, not ranking quality.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("llama_cpp")

from servers import embedded_gguf, free_port, stop_process, wait_for_server  # noqa: E402

pytestmark = pytest.mark.model

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_ARGS = [
    "--window", "4", "--step", "2", "--max-new-tokens", "32", "--max-passage-tokens", "32",
    "--n-ctx", "1024", "--threads", "1", "--max-batch", "8", "--batch-wait-ms", "20",
    "--max-documents", "12", "--max-document-chars", "400", "--max-query-chars", "200", "--max-body-bytes", "16000",
    "--alias", "rerank-v3.5", "--log-level", "warning",
    # one generate() prompt per window, which the batching assertions count: a window cut by the small budget
    # would add its forced answer's prompt (tests/test_budget_faces.py serves forced answers)
    "--on-truncation", "keep",
]
DOCS = ["Berlin is the capital of Germany.", "Paris is the capital of France.", "The Seine flows through Paris."]


@contextmanager
def run_server(tmp_path: Path, extra: list[str] = (), startup_timeout: float = 180.0):
    """Start the service in a subprocess; yield (base_url, process); SIGTERM it on exit."""
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (run scripts/setup.sh)")
    keyfile = tmp_path / "api-keys"
    keyfile.write_text(KEY + "\n")
    port = free_port()
    log = open(tmp_path / f"server-{port}.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "REASONRANK_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "reasonrank.serving", "--host", "127.0.0.1", "--port", str(port),
                             "--auth-key-file", str(keyfile), *SERVER_ARGS, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, base + "/health", startup_timeout, "server", log=tmp_path / f"server-{port}.log")
        yield base, proc
    finally:
        stop_process(proc, timeout=60)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("serve")) as (base, _proc):
        yield base


def metrics(base: str) -> dict[str, float]:
    """Prometheus samples by `name{labels}` (labels sorted), summed over nothing."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", headers=AUTH, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def post(base: str, body, version: int = 1, headers=AUTH, timeout: float = 300, **kw):
    return httpx.post(f"{base}/v{version}/rerank", json=body, headers=headers, timeout=timeout, **kw)


def test_health_and_models_are_served(server):
    health = httpx.get(server + "/health", timeout=10)  # open: no key needed
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model"] == "qwen2.5-coder-0.5b"
    models = httpx.get(server + "/v1/models", headers=AUTH, timeout=10).json()["data"][0]
    assert models["id"] == "qwen2.5-coder-0.5b" and "rerank-v3.5" in models["aliases"]
    assert httpx.get(server + "/metrics", timeout=10).status_code == 401  # metrics need the key when one is set


def test_v1_rerank_over_http(server):
    docs = [DOCS[0], {"text": DOCS[1], "id": "doc-fr"}, DOCS[2]]
    r = post(server, {"model": "qwen2.5-coder-0.5b", "query": "What is the capital of France?", "documents": docs,
                      "top_n": 2, "return_documents": True, "return_reasoning": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "results", "meta", "reasoning"}
    results = body["results"]
    assert len(results) == 2
    assert len({x["index"] for x in results}) == 2 and all(0 <= x["index"] < 3 for x in results)
    assert [x["relevance_score"] for x in results] == [1.0, 0.5]
    for x in results:  # documents echoed as sent; object fields kept
        assert x["document"] == (docs[x["index"]] if isinstance(docs[x["index"]], dict) else {"text": docs[x["index"]]})
    meta = body["meta"]
    assert meta["api_version"] == {"version": "1"}
    assert meta["billed_units"] == {"search_units": 1, **meta["tokens"]}  # the run's real token counts
    assert meta["tokens"]["input_tokens"] > 50 and meta["tokens"]["output_tokens"] > 0
    (window,) = body["reasoning"]  # 3 documents, window 4: one window
    assert (window["start"], window["end"], sorted(window["documents"])) == (0, 3, [0, 1, 2])
    assert window["status"] in {"ok", "repaired", "no_answer", "truncated"}
    assert window["raw_output"] and window["completion_tokens"] == meta["tokens"]["output_tokens"]
    assert sorted(window["permutation"]) == [0, 1, 2]
    # return_documents false, no return_reasoning: neither appears; top_n beyond the list returns all
    r = post(server, {"query": "capital of France", "documents": DOCS[:2], "top_n": 10, "return_documents": False})
    assert r.status_code == 200, r.text
    assert "reasoning" not in r.json() and all(set(x) == {"index", "relevance_score"} for x in r.json()["results"])
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1]


def test_v2_rerank_over_http(server):
    r = post(server, {"model": "rerank-v3.5", "query": "capital of France", "documents": DOCS[:2]}, version=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    assert sorted(x["index"] for x in body["results"]) == [0, 1]
    assert [x["relevance_score"] for x in body["results"]] == [1.0, 0.5]


def test_official_cohere_sdk_works_unchanged(server):
    cohere = pytest.importorskip("cohere")
    v1 = cohere.Client(api_key=KEY, base_url=server, timeout=300)
    resp = v1.rerank(model="rerank-v3.5", query="What is the capital of France?", documents=DOCS, top_n=2,
                     return_documents=True)
    assert len(resp.results) == 2
    assert resp.results[0].relevance_score == 1.0 and resp.results[1].relevance_score == 0.5
    assert resp.results[0].document.text == DOCS[resp.results[0].index]
    assert resp.meta.billed_units.search_units == 1 and resp.meta.api_version.version == "1"
    assert resp.meta.tokens.input_tokens > 0
    v2 = cohere.ClientV2(api_key=KEY, base_url=server, timeout=300)
    resp = v2.rerank(model="qwen2.5-coder-0.5b", query="What is the capital of France?", documents=DOCS[:2], top_n=1)
    assert len(resp.results) == 1 and resp.results[0].index in (0, 1) and resp.results[0].relevance_score == 1.0
    assert resp.meta.api_version.version == "2"
    with pytest.raises(cohere.errors.NotFoundError) as err:  # SDK error types map from our status codes
        v2.rerank(model="rerank-english-v2.0", query="q", documents=["a"])
    assert "not found" in err.value.body["message"]
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server).rerank(model="rerank-v3.5", query="q", documents=["a"])


def test_tei_jina_and_vllm_clients_on_the_embedded_model(server):
    """Each API shape's client (tests/test_serving_shapes.py has the details, on a scripted engine) against the real
    service: the same request in every shape is the same window, so every shape answers the same order with the same
    token counts."""
    import os

    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    pytest.importorskip("llama_index.postprocessor.tei_rerank")
    pytest.importorskip("haystack_integrations.components.rankers.jina")
    protocol = pytest.importorskip("vllm.entrypoints.pooling.scoring.protocol")
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    query = "What is the capital of France?"
    cohere = post(server, {"model": "rerank-v3.5", "query": query, "documents": DOCS, "return_reasoning": True}).json()
    order = [x["index"] for x in cohere["results"]]
    assert sorted(order) == [0, 1, 2] and cohere["meta"]["tokens"]["input_tokens"] > 50
    tokens = cohere["meta"]["tokens"]
    usage = {"prompt_tokens": tokens["input_tokens"], "completion_tokens": tokens["output_tokens"],
             "total_tokens": tokens["input_tokens"] + tokens["output_tokens"]}
    # TEI: LlamaIndex's text-embeddings-inference postprocessor
    tei = TextEmbeddingInference(base_url=server, top_n=3, auth_token=AUTH["Authorization"], timeout=300)
    nodes = tei.postprocess_nodes([NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(DOCS)], QueryBundle(query))
    assert [int(n.node.node_id) for n in nodes] == order and [n.score for n in nodes] == [1.0, 0.5, 1 / 3]
    r = httpx.post(server + "/rerank", json={"query": query, "texts": DOCS}, headers=AUTH, timeout=300)
    assert int(r.headers["x-compute-tokens"]) == usage["total_tokens"]
    # Jina: Haystack's JinaRanker builds the request and reads the answer (its run() posts with httpx's 5 s default
    # timeout, short for a CPU model under load: the transport here waits longer; run() itself is in test_serving_shapes)
    jina = JinaRanker(model="qwen2.5-coder-0.5b", api_key=Secret.from_token(KEY), base_url=server + "/v1/rerank")
    documents = [Document(content=t, id=str(i)) for i, t in enumerate(DOCS)]
    data, top_k, threshold = jina._prepare_request_data(query, documents)
    answer = httpx.post(jina.base_url, json=data, headers=jina._headers, timeout=300).json()
    out = jina._parse_response(answer, documents, top_k, threshold)
    assert [int(d.id) for d in out["documents"]] == order and out["meta"]["usage"] == usage
    # vLLM: its own request and response classes, /rerank and /score
    request = protocol.RerankRequest(model="qwen2.5-coder-0.5b", query=query, documents=DOCS)
    got = protocol.RerankResponse.model_validate(httpx.post(server + "/rerank", json=request.model_dump(mode="json"),
                                                            headers=AUTH, timeout=300).json())
    assert [x.index for x in got.results] == order and got.usage.total_tokens == usage["total_tokens"]
    score = protocol.ScoreResponse.model_validate(httpx.post(server + "/score", json={"queries": query, "documents": DOCS},
                                                             headers=AUTH, timeout=300).json())
    assert sorted(range(3), key=lambda i: -score.data[i].score) == order
    # bad input: each API's own error shape, 4xx
    r = httpx.post(server + "/rerank", json={"query": query, "texts": []}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and r.json() == {"error": "`texts` cannot be empty", "error_type": "empty"}
    r = httpx.post(server + "/rerank", json={"query": query, "texts": ["x"] * 13}, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error_type"] == "validation"
    r = httpx.post(server + "/score", json={"queries": ["a", "b"], "documents": DOCS[:2]}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = post(server, {"query": query, "documents": [{"image": "https://example.invalid/x.png"}]})
    assert r.status_code == 400 and set(r.json()) == {"detail"}


BAD = [
    # (body or raw bytes, version, headers, status, message fragment)
    ({"query": "", "documents": ["a"]}, 1, AUTH, 400, "'query' must not be empty"),
    ({"query": "   ", "documents": ["a"]}, 1, AUTH, 400, "'query' must not be empty"),
    ({"documents": ["a"]}, 1, AUTH, 400, "'query' is required"),
    ({"query": 5, "documents": ["a"]}, 1, AUTH, 400, "'query' must be a string, got integer"),
    ({"query": "q" * 201, "documents": ["a"]}, 1, AUTH, 400, "'query' is 201 characters; the limit is 200"),
    ({"query": "q", "documents": []}, 1, AUTH, 400, "'documents' must not be empty"),
    ({"query": "q"}, 1, AUTH, 400, "'documents' is required"),
    ({"query": "q", "documents": 5}, 1, AUTH, 400, "'documents' must be an array"),  # one string is vLLM's one document
    ({"query": "q", "documents": ["d"] * 13}, 1, AUTH, 400, "13 documents sent; the limit is 12 per request"),
    ({"query": "q", "documents": ["ok", "x" * 401]}, 1, AUTH, 400, "documents[1] is 401 characters; the limit is 400"),
    ({"query": "q", "documents": ["ok", 7]}, 1, AUTH, 400, "documents[1] must be a string or an object with a 'text' field, got integer"),
    ({"query": "q", "documents": [{"title": "no text"}]}, 1, AUTH, 400, "documents[0] has no 'text' field"),
    ({"query": "q", "documents": [{"text": ["x"]}]}, 1, AUTH, 400, "documents[0].text must be a string, got array"),
    ({"query": "q", "documents": ["a"], "top_n": -1}, 1, AUTH, 400, "'top_n' must be at least 1"),  # 0 is vLLM's "all"
    ({"query": "q", "documents": ["a"], "top_n": "2"}, 1, AUTH, 400, "'top_n' must be an integer, got string"),
    ({"query": "q", "documents": ["a"], "top_n": True}, 1, AUTH, 400, "'top_n' must be an integer, got boolean"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 1, AUTH, 400, "'return_documents' must be a boolean"),
    ({"query": "q", "documents": ["a"], "model": 3}, 1, AUTH, 400, "'model' must be a string"),
    ({"query": "q", "documents": ["a"], "model": "rerank-english-v2.0"}, 1, AUTH, 404, "model 'rerank-english-v2.0' not found; this server serves 'qwen2.5-coder-0.5b'"),
    ({"query": "q", "documents": ["a"]}, 2, AUTH, 400, "'model' is required"),
    (["not", "an", "object"], 1, AUTH, 400, "the request body must be a JSON object, got array"),
    (b"{not json", 1, AUTH, 400, "the request body is not valid JSON"),
    (b'{"query": "q", "documents": ["' + b"x" * 16100 + b'"]}', 1, AUTH, 413, "over the limit of 16000 bytes"),
    ({"query": "q", "documents": ["a"]}, 1, {}, 401, "missing API key"),
    ({"query": "q", "documents": ["a"]}, 2, {"Authorization": "Bearer nope"}, 401, "invalid API key"),
    ({"query": "q", "documents": ["a"]}, 1, {"Authorization": KEY}, 401, "missing API key"),
]


def test_bad_requests_get_clear_errors_and_the_server_stays_up(server):
    before = metrics(server)
    for body, version, headers, status, fragment in BAD:
        if isinstance(body, bytes):
            r = httpx.post(f"{server}/v{version}/rerank", content=body, headers={**headers, "Content-Type": "application/json"}, timeout=30)
        else:
            r = post(server, body, version, headers=headers, timeout=30)
        assert r.status_code == status, (body if not isinstance(body, bytes) else body[:60], r.text)
        err = r.json()
        assert fragment in err["message"], (fragment, err)
        assert err["code"] == status
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"

    # a body over the cap sent chunked (no Content-Length) is cut off while streaming
    def chunks():
        for _ in range(40):
            yield b" " * 1000

    r = httpx.post(f"{server}/v1/rerank", content=chunks(), headers=AUTH, timeout=30)
    assert r.status_code == 413 and "over the limit of 16000 bytes" in r.json()["message"]
    assert httpx.get(server + "/nope", timeout=10).status_code == 404
    assert httpx.get(server + "/v1/rerank", timeout=10).status_code == 405

    # still serving: a valid request after all of that succeeds
    r = post(server, {"model": "rerank-v3.5", "query": "capital of France", "documents": DOCS[:2]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    after = metrics(server)
    assert after['reasonrank_requests_total{code=400,endpoint=/v1/rerank}'] - before.get(
        'reasonrank_requests_total{code=400,endpoint=/v1/rerank}', 0) == sum(1 for b in BAD if b[3] == 400 and b[1] == 1)
    assert after['reasonrank_requests_total{code=404,endpoint=/v1/rerank}'] >= 1
    assert after['reasonrank_requests_total{code=401,endpoint=/v2/rerank}'] >= 1


def test_concurrent_requests_share_backend_batches(server):
    before = metrics(server)
    queries = ["capital of France", "capital of Germany", "river in Paris"]
    results = [None] * len(queries)

    def call(i):
        results[i] = post(server, {"model": "rerank-v3.5", "query": queries[i], "documents": DOCS})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert all(r is not None and r.status_code == 200 for r in results), [r and r.text for r in results]
    after = metrics(server)
    windows = after["reasonrank_backend_batch_size_sum"] - before["reasonrank_backend_batch_size_sum"]
    calls = after["reasonrank_backend_batches_total"] - before["reasonrank_backend_batches_total"]
    assert windows == 3  # one window per request ...
    assert calls < windows  # ... and fewer generate() calls than windows: requests shared a batch
    assert after['reasonrank_backend_batch_size_bucket{le=1.0}'] - before['reasonrank_backend_batch_size_bucket{le=1.0}'] < calls
    for name in ("reasonrank_request_duration_seconds_count{endpoint=/v1/rerank}", "reasonrank_prompt_tokens_total",
                 "reasonrank_completion_tokens_total", "reasonrank_parse_failures_total"):
        assert name in after
    assert sum(v for k, v in after.items() if k.startswith("reasonrank_windows_total")) >= 3


def test_client_disconnect_cancels_remaining_windows(server):
    # 12 documents, window 4, step 2: five windows. The client hangs up during the first one.
    body = json.dumps({"query": "capital of France", "documents": [f"Document number {i} about cities." for i in range(12)]}).encode()
    before = metrics(server)
    sock = socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])))
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 60
    while metrics(server)["reasonrank_backend_batch_size_sum"] == before["reasonrank_backend_batch_size_sum"] \
            and httpx.get(server + "/health", timeout=10).json()["in_flight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the first window is queued or running
    sock.close()
    deadline = time.monotonic() + 120
    while metrics(server)["reasonrank_cancelled_requests_total"] == before["reasonrank_cancelled_requests_total"]:
        assert time.monotonic() < deadline, "the cancellation was not noticed"
        time.sleep(0.2)
    # the window that was inside the model when the client left still finishes (it cannot be interrupted)
    while (health := httpx.get(server + "/health", timeout=10).json())["running_windows"] or health["queued_windows"]:
        assert time.monotonic() < deadline, "the batcher did not go idle"
        time.sleep(0.2)
    after = metrics(server)
    ran = after["reasonrank_backend_batch_size_sum"] - before["reasonrank_backend_batch_size_sum"]
    assert ran <= 2  # of five windows: the window in the model when the client left (at most one more raced it), not five
    assert httpx.get(server + "/health", timeout=10).json()["in_flight"] == 0
    time.sleep(2)
    assert metrics(server)["reasonrank_backend_batch_size_sum"] == after["reasonrank_backend_batch_size_sum"]  # nothing queued later


def test_graceful_shutdown_finishes_accepted_requests(tmp_path):
    with run_server(tmp_path) as (base, proc):
        box = {}

        def call():
            box["response"] = post(base, {"model": "rerank-v3.5", "query": "capital of France", "documents": DOCS})

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 60
        while httpx.get(base + "/health", timeout=10).json()["in_flight"] == 0:
            assert time.monotonic() < deadline and t.is_alive()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # while the request is being reranked
        t.join(300)
        assert box["response"].status_code == 200, box["response"].text
        assert len(box["response"].json()["results"]) == 3
        # uvicorn finishes its shutdown, then re-raises the captured SIGTERM: exit status 0 or -SIGTERM
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in (tmp_path / f"server-{base.rsplit(':', 1)[1]}.log").read_text()
        with pytest.raises(httpx.ConnectError):  # and it no longer accepts connections
            httpx.get(base + "/health", timeout=5)
