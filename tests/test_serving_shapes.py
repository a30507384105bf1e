"""The rerank API shapes besides Cohere's (reasonrank.serving.shapes), each called by a real client library from the
registry where one exists: text-embeddings-inference's `/rerank` by LlamaIndex's TEI postprocessor
(llama-index-postprocessor-tei-rerank), Jina's `/v1/rerank` by Haystack's JinaRanker (jina-haystack), vLLM's
`/rerank`, `/v1/rerank`, `/v2/rerank` and `/score` with vLLM's own request and response classes (vLLM has no client
library: its docs post JSON; its protocol module is what its server validates with) and its documented example
requests, next to the Cohere SDK v1 and v2.

The server is the real app under uvicorn in a thread, over a scripted backend (a test double) that answers every
window in reverse, so each order checked is not the input order; the embedded model is exercised end to end in
tests/test_serving.py."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no usage reports from the Haystack clients

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from doubles import DoubleBackend  # noqa: E402

from reasonrank.backends.base import Generation  # noqa: E402
from reasonrank.prompts import PromptRenderer  # noqa: E402
from reasonrank.scoring import score_order  # noqa: E402
from reasonrank.serving import ServeConfig, create_app  # noqa: E402
from reasonrank.spec import RerankerSpec, build  # noqa: E402

KEY = "shape-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "What is the capital of France?"
DOCS = ["Berlin is in Germany.", "The Seine flows through Paris.", "Paris is the capital of France."]
REVERSED = [2, 1, 0]  # the scripted engine reverses the one window of three documents
USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}  # what the engine reported for that window


class Reverser(DoubleBackend):
    """Test double: answers every window with its passages reversed; 20 prompt and 7 completion tokens a window."""

    name, model = "scripted", "scripted-model"

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            n = max(int(x) for x in re.findall(r"^\[(\d+)\]", p.messages[-1]["content"], re.MULTILINE))
            answer = " > ".join(f"[{i}]" for i in range(n, 0, -1))
            out.append(Generation(text=f"<think>reversed</think><answer>{answer}</answer>", prompt_tokens=20,
                                  completion_tokens=7, finish_reason="stop"))
        return out


@contextmanager
def serve(spec: RerankerSpec = RerankerSpec(window=4, step=2, max_new_tokens=16, max_passage_tokens=32), **config):
    factory = lambda: build(spec, backend=Reverser(), renderer=PromptRenderer(None, max_passage_tokens=32))  # noqa: E731
    app = create_app(factory, ServeConfig(served_model_name="scripted", api_keys=[KEY], max_documents=5, **config))
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def base():
    with serve() as url:
        yield url


def post(base: str, path: str, body, headers=AUTH):
    kw = {"content": body, "headers": {**headers, "Content-Type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body, "headers": headers}
    return httpx.post(base + path, timeout=30, **kw)


# -- text-embeddings-inference ------------------------------------------------------------------------------

def test_tei_rerank_with_llama_index_tei_client(base):
    pytest.importorskip("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    client = TextEmbeddingInference(base_url=base, top_n=2, auth_token=f"Bearer {KEY}")
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.1) for i, t in enumerate(DOCS)]
    out = client.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == ["n2", "n1"] and [n.score for n in out] == [1.0, 0.5]


def test_tei_rerank_as_documented(base):
    r = post(base, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": False, "return_text": True, "truncate": True,
                               "truncation_direction": "Right"})
    assert r.status_code == 200, r.text
    assert r.json() == [{"index": i, "text": DOCS[i], "score": s} for i, s in zip(REVERSED, [1.0, 0.5, 1 / 3])]
    # token usage in TEI's own header (and reasonrank's split of it)
    assert (r.headers["x-compute-tokens"], r.headers["x-prompt-tokens"], r.headers["x-completion-tokens"]) == ("27", "20", "7")
    plain = post(base, "/rerank", {"query": QUERY, "texts": DOCS}).json()
    assert [x["index"] for x in plain] == REVERSED and all(set(x) == {"index", "score"} for x in plain)


# -- Jina ------------------------------------------------------------------------------------------------------

def test_jina_rerank_with_haystacks_jina_ranker(base):
    pytest.importorskip("haystack_integrations.components.rankers.jina")
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(model="scripted", api_key=Secret.from_token(KEY), base_url=base + "/v1/rerank", top_k=2)
    out = ranker.run(query=QUERY, documents=[Document(content=t, id=f"d{i}") for i, t in enumerate(DOCS)])
    assert [d.id for d in out["documents"]] == ["d2", "d1"] and [d.score for d in out["documents"]] == [1.0, 0.5]
    assert out["meta"] == {"model": "scripted", "usage": USAGE}  # the client reads Jina's model and usage


def test_jina_rerank_as_documented(base):
    # Jina's docs: documents as strings or {"text"} objects, top_n, return_documents (default true)
    body = {"model": "scripted", "query": QUERY, "documents": [{"text": t} for t in DOCS], "top_n": 2}
    r = post(base, "/v1/rerank", body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert [x["index"] for x in got["results"]] == [2, 1] and got["usage"] == USAGE and got["model"] == "scripted"
    assert [x["document"] for x in got["results"]] == [{"text": DOCS[2]}, {"text": DOCS[1]}]
    declined = post(base, "/v1/rerank", {**body, "return_documents": False}).json()
    assert all(set(x) == {"index", "relevance_score"} for x in declined["results"])


def test_one_plain_body_on_v1_is_read_by_every_client(base):
    """{model, query, documents: [str], top_n}: what Cohere's, Jina's and vLLM's clients all send to /v1/rerank.
    The answer parses as each API's response."""
    cohere = pytest.importorskip("cohere")
    body = {"model": "scripted", "query": QUERY, "documents": DOCS, "top_n": 3}
    got = post(base, "/v1/rerank", body).json()
    as_cohere = cohere.RerankResponse.model_validate(got)
    assert [x.index for x in as_cohere.results] == REVERSED and as_cohere.meta.billed_units.input_tokens == 20
    assert as_cohere.results[0].document.text == DOCS[2]
    from haystack import Document
    from haystack_integrations.components.rankers.jina import JinaRanker

    as_jina = JinaRanker._parse_response(got, [Document(content=t) for t in DOCS], None, None)
    assert [d.content for d in as_jina["documents"]] == [DOCS[i] for i in REVERSED]
    rerank_response = _vllm().RerankResponse
    assert [x.index for x in rerank_response.model_validate(got).results] == REVERSED


# -- vLLM ------------------------------------------------------------------------------------------------------

def _vllm():
    return pytest.importorskip("vllm.entrypoints.pooling.scoring.protocol")


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_vllm_rerank_with_vllms_request_and_response_classes(base, path):
    protocol = _vllm()
    request = protocol.RerankRequest(model="scripted", query=QUERY, documents=DOCS, top_n=2)
    r = post(base, path, request.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    response = protocol.RerankResponse.model_validate(r.json())
    assert [x.index for x in response.results] == [2, 1] and [x.relevance_score for x in response.results] == [1.0, 0.5]
    assert [x.document.text for x in response.results] == [DOCS[2], DOCS[1]] and response.model == "scripted"
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (20, 27)


def test_vllm_score_with_vllms_classes_and_documented_requests(base):
    protocol = _vllm()
    request = protocol.ScoreQueriesDocumentsRequest(model="scripted", queries=QUERY, documents=DOCS)
    r = post(base, "/score", request.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    response = protocol.ScoreResponse.model_validate(r.json())
    assert [(x.index, x.score) for x in response.data] == [(0, 1 / 3), (1, 0.5), (2, 1.0)]  # the documents' order
    assert response.usage.prompt_tokens == 20 and response.usage.total_tokens == 27
    # vLLM's docs: text_1/text_2 (a query repeated per document is one query), data_1/data_2, the old /v1/score
    for path, body in [("/score", {"model": "scripted", "text_1": QUERY, "text_2": DOCS}),
                       ("/v1/score", {"model": "scripted", "text_1": [QUERY] * 3, "text_2": DOCS}),
                       ("/score", {"model": "scripted", "data_1": QUERY, "data_2": DOCS}),
                       ("/score", {"model": "scripted", "queries": QUERY, "items": DOCS})]:
        got = protocol.ScoreResponse.model_validate(post(base, path, body).json())
        assert [x.score for x in got.data] == [1 / 3, 0.5, 1.0], (path, body)


def test_vllm_documented_rerank_bodies(base):
    protocol = _vllm()
    # vLLM's docs' rerank example; a single string, multimodal text parts and top_n 0 (all) are vLLM's too
    for path, body in [("/rerank", {"model": "scripted", "query": QUERY, "documents": DOCS}),
                       ("/v2/rerank", {"model": "scripted", "query": QUERY, "documents": DOCS, "top_n": 0}),
                       ("/v1/rerank", {"query": QUERY, "documents": [{"content": [{"type": "text", "text": t}]} for t in DOCS]})]:
        got = protocol.RerankResponse.model_validate(post(base, path, body).json())
        assert [x.index for x in got.results] == REVERSED, (path, body)
    one = protocol.RerankResponse.model_validate(post(base, "/rerank", {"query": QUERY, "documents": DOCS[0]}).json())
    assert [(x.index, x.document.text) for x in one.results] == [(0, DOCS[0])] and one.usage.total_tokens == 0


# -- Cohere, next to them ----------------------------------------------------------------------------------

def test_cohere_sdk_v1_and_v2_next_to_the_other_shapes(base):
    cohere = pytest.importorskip("cohere")
    v1 = cohere.Client(api_key=KEY, base_url=base, timeout=30).rerank(model="scripted", query=QUERY, documents=DOCS, top_n=2)
    assert [x.index for x in v1.results] == [2, 1] and v1.meta.billed_units.output_tokens == 7
    v2 = cohere.ClientV2(api_key=KEY, base_url=base, timeout=30).rerank(model="scripted", query=QUERY, documents=DOCS)
    assert [x.index for x in v2.results] == REVERSED and v2.meta.tokens.input_tokens == 20


# -- scores a pipeline can use ------------------------------------------------------------------------------

FIRST_STAGE = [3.0, 2.5, 0.0]
BLENDED = score_order(REVERSED, FIRST_STAGE, score_mode="blend")  # [(1, ...), (2, 0.6), (0, 0.4)]


def test_first_stage_scores_and_score_mode_per_request_in_every_shape_that_carries_them(base):
    scored_docs = [{"text": t, "score": s} for t, s in zip(DOCS, FIRST_STAGE)]
    assert [i for i, _ in BLENDED] == [1, 2, 0]  # not the reranked order: the blend shows
    for path, body, key in [("/v1/rerank", {"query": QUERY, "documents": scored_docs}, "relevance_score"),
                            ("/v2/rerank", {"model": "scripted", "query": QUERY, "documents": scored_docs}, "relevance_score"),
                            ("/rerank", {"query": QUERY, "documents": scored_docs, "request_id": "x"}, "relevance_score")]:
        got = post(base, path, {**body, "score_mode": "blend"}).json()["results"]
        assert [(x["index"], x[key]) for x in got] == [(i, pytest.approx(s)) for i, s in BLENDED], path
        ranked = post(base, path, body).json()["results"]  # the served spec's mode: rank
        assert [(x["index"], x[key]) for x in ranked] == [(2, 1.0), (1, 0.5), (0, 1 / 3)], path
    # without first-stage scores the input order stands for them (TEI's texts carry none)
    tei = post(base, "/rerank", {"query": QUERY, "texts": DOCS, "score_mode": "blend", "blend_weight": 0.6}).json()
    assert [(x["index"], x["score"]) for x in tei] == [(i, pytest.approx(s)) for i, s in score_order(REVERSED, score_mode="blend")]
    # a threshold, applied after scoring, before top_n counts
    got = post(base, "/v1/rerank", {"query": QUERY, "documents": scored_docs, "score_mode": "blend", "min_score": 0.5,
                                    "return_documents": False}).json()["results"]
    assert [x["index"] for x in got] == [1, 2]
    assert [x["index"] for x in post(base, "/score", {"queries": QUERY, "documents": DOCS, "min_score": 0.5}).json()["data"]] == [1, 2]


def test_a_served_blend_spec_scores_every_shape_alike():
    with serve(RerankerSpec(window=4, step=2, max_new_tokens=16, max_passage_tokens=32, score_mode="blend", blend_weight=0.8)) as url:
        expected = score_order(REVERSED, None, score_mode="blend", blend_weight=0.8)
        tei = [(x["index"], x["score"]) for x in post(url, "/rerank", {"query": QUERY, "texts": DOCS}).json()]
        cohere = [(x["index"], x["relevance_score"]) for x in post(url, "/v2/rerank", {"model": "scripted", "query": QUERY,
                                                                                       "documents": DOCS}).json()["results"]]
        score = {x["index"]: x["score"] for x in post(url, "/score", {"queries": QUERY, "documents": DOCS}).json()["data"]}
        assert tei == cohere == expected and score == dict(expected)


# -- bad input: each API's own error shape, 4xx --------------------------------------------------------------

def tei_error(kind):
    return lambda b: set(b) == {"error", "error_type"} and b["error_type"] == kind


def vllm_error(code):
    return lambda b: set(b) == {"error"} and b["error"]["code"] == code and {"message", "type", "param"} <= set(b["error"])


def union_error(code):  # Cohere's message/type/code, Jina's detail, vLLM's error object
    return lambda b: b["code"] == code and b["detail"] == b["message"] == b["error"]["message"]


BAD = [
    ("/rerank", {"query": QUERY, "texts": []}, 400, tei_error("empty")),
    ("/rerank", {"query": QUERY}, 422, tei_error("validation")),
    ("/rerank", {"query": QUERY, "texts": "one"}, 422, tei_error("validation")),
    ("/rerank", {"query": QUERY, "texts": ["a", 3]}, 422, tei_error("validation")),
    ("/rerank", {"query": QUERY, "texts": ["a"], "return_text": "yes"}, 422, tei_error("validation")),
    ("/rerank", {"query": QUERY, "texts": ["a"] * 6}, 413, tei_error("validation")),
    ("/rerank", {"query": "", "texts": ["a"]}, 400, tei_error("empty")),
    ("/rerank", b"{not json", 422, tei_error("validation")),
    ("/rerank", {"query": QUERY, "documents": []}, 400, vllm_error(400)),
    ("/rerank", {"query": QUERY, "documents": ["a"], "top_n": -1}, 400, vllm_error(400)),
    ("/v2/rerank", {"model": "nope", "query": QUERY, "documents": ["a"], "request_id": "r"}, 404, vllm_error(404)),
    ("/v1/rerank", {"query": QUERY, "documents": [{"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     vllm_error(400)),
    ("/score", {"queries": ["a", "b"], "documents": ["x", "y"]}, 400, vllm_error(400)),
    ("/score", {"queries": QUERY}, 400, vllm_error(400)),
    ("/score", {"queries": QUERY, "documents": []}, 400, vllm_error(400)),
    ("/v1/rerank", {"query": QUERY, "documents": [{"image": "https://x/y.png"}]}, 400, lambda b: set(b) == {"detail"}),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, union_error(400)),
    ("/v1/rerank", {"query": QUERY, "documents": [{"text": "a", "score": 1.0}, {"text": "b"}]}, 400, union_error(400)),
    ("/v1/rerank", {"query": QUERY, "documents": [{"text": "a", "score": "high"}]}, 400, union_error(400)),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "score_mode": "probability"}, 400, union_error(400)),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "blend_weight": 2}, 400, union_error(400)),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"]}, 400, union_error(400)),  # Cohere v2 requires model
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "rank_fields": "x"}, 400,
     lambda b: set(b) == {"message", "type", "code"}),  # Cohere's own
]


@pytest.mark.parametrize("path,body,status,shape", BAD, ids=[f"{p}-{i}" for i, (p, *_rest) in enumerate(BAD)])
def test_bad_input_gets_the_apis_own_error_shape(base, path, body, status, shape):
    r = post(base, path, body)
    assert r.status_code == status, r.text
    assert shape(r.json()), r.json()


def test_auth_errors_in_each_shape(base):
    r = post(base, "/rerank", {"query": QUERY, "texts": DOCS}, headers={})
    assert r.status_code == 401 and tei_error("unauthorized")(r.json()) and r.headers["www-authenticate"] == "Bearer"
    r = post(base, "/score", {"queries": QUERY, "documents": DOCS}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and vllm_error(401)(r.json())
    assert post(base, "/v1/rerank", {"query": QUERY, "documents": DOCS}, headers={}).json()["detail"].startswith("missing API key")
