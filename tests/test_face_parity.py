"""Face parity: one spec gives one ranking through every face that builds a reranker.

The faces: the CLI (`reasonrank rerank`, a subprocess, on a tiny collection written here), the HTTP service
(`create_app(ServeConfig(spec))` under FastAPI's TestClient), MCP (`reasonrank mcp` over stdio with the SDK's
own client, the same flags as the CLI), and the PyTerrier, LangChain and LlamaIndex adapters (`spec=`). The
reference is the Python API, `build(spec).rerank(...)`.

Two engines:

* the embedded Qwen2.5-Coder-0.5B on llama.cpp (one thread, 32 new tokens, windows of 4 over 6 passages: two
  windows). That model mostly keeps its input order, so agreeing on it proves little on its own;
* a stand-in OpenAI-compatible server on loopback (`StandInServer`, a test double) that answers every window
  with its passages reversed, through `-b openai --base-url`: the ranking is then not the first-stage order
  (checked), so parity means each face really ran the spec's windows in the spec's order; it also counts the
  model calls each face made (two windows each, nothing served from a cache). The stand-in runs the sliding
  window and tdpart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import TEST_THREADS, JSONHandler, LoopbackHTTPServer, embedded_gguf

from reasonrank.spec import RerankerSpec, build
from reasonrank.types import Candidate

QUERY = "What is the capital of France?"
DOCS = {  # first-stage order; no titles, so every face shows the model the same passage text
    "d1": "Berlin is the capital and largest city of Germany.",
    "d2": "The Seine is a river that flows through Paris.",
    "d3": "Paris is the capital and most populous city of France.",
    "d4": "Lyon is a city in France known for its cuisine.",
    "d5": "Madrid is the capital of Spain.",
    "d6": "France is a country in Western Europe.",
}
DOCIDS = list(DOCS)
TEXTS = list(DOCS.values())


# -- the stand-in engine ------------------------------------------------------------------------------------

class StandInServer(LoopbackHTTPServer):
    """Test double of an OpenAI-compatible server: every completion answers its window's passages in reverse
    order (`[n] > ... > [1]`). It names no server kind in GET /models, so clients send chat messages and ask it
    for no tokenizer. `calls` counts completions."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": "stand-in", "object": "model", "owned_by": "test-double"}]})

            def do_POST(self):
                body = self.read_json()
                chat = self.path.endswith("/chat/completions")
                text = body["messages"][-1]["content"] if chat else body["prompt"]
                n = max(int(x) for x in re.findall(r"^\[(\d+)\]", text, re.MULTILINE))
                answer = "<think>reversed</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>"
                with server.lock:
                    server.calls += 1
                choice = {"index": 0, "finish_reason": "stop",
                          **({"message": {"role": "assistant", "content": answer}} if chat else {"text": answer})}
                self.send_json(200, {"id": "x", "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                                     "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}})

        super().__init__(Handler)


# -- the engines and their specs ------------------------------------------------------------------------

@dataclass
class Engine:
    spec: RerankerSpec
    args: list[str]  # the same spec as the CLI's flags (rerank and mcp take the same ones)
    server: StandInServer | None = None
    env: dict = field(default_factory=dict)


SMALL = dict(window=4, step=2, max_new_tokens=32, max_passage_tokens=30)
SMALL_ARGS = ["--window", "4", "--step", "2", "--max-new-tokens", "32", "--max-passage-tokens", "30"]


@pytest.fixture(scope="module")
def stand_in():
    with StandInServer() as server:
        yield server


def embedded() -> Engine:
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp")
    spec = RerankerSpec(**SMALL, backend_options={"n_threads": TEST_THREADS, "n_ctx": 2048})
    return Engine(spec, [*SMALL_ARGS, "--threads", str(TEST_THREADS), "--n-ctx", "2048"])


def served(server: StandInServer, method: str) -> Engine:
    pytest.importorskip("httpx")
    settings = dict(SMALL) if method == "sliding" else {**{k: v for k, v in SMALL.items() if k != "step"}, "pivot": 2}
    spec = RerankerSpec(model="stand-in", backend="openai", method=method, backend_options={"base_urls": [server.base_url]},
                        **settings)
    args = ["-m", "stand-in", "-b", "openai", "--base-url", server.base_url, "--method", method, *SMALL_ARGS]
    if method == "tdpart":
        args = [a for a in args if a not in ("--step", "2")] + ["--pivot", "2"]
    return Engine(spec, args, server, {"OPENAI_API_KEY": "unused"})


# -- the faces: each returns the docids best first ------------------------------------------------------

def reference(engine: Engine, tmp_path: Path) -> list[str]:
    with build(engine.spec) as reranker:
        return reranker.rerank(QUERY, [Candidate(d, 0.0, t) for d, t in DOCS.items()]).docids


def cli(engine: Engine, tmp_path: Path) -> list[str]:
    first_stage = {d: float(len(DOCS) - i) for i, d in enumerate(DOCS)}
    return [d for d, _ in scored_cli(engine, tmp_path, first_stage)]


def service(engine: Engine, tmp_path: Path) -> list[str]:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from reasonrank.serving import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(engine.spec))) as client:  # the lifespan builds the engine
        r = client.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "return_reasoning": True})
    assert r.status_code == 200, r.text
    assert {w["method"] for w in r.json()["reasoning"]} == {engine.spec.method}
    return [DOCIDS[x["index"]] for x in r.json()["results"]]


def mcp(engine: Engine, tmp_path: Path) -> list[str]:
    pytest.importorskip("mcp")
    from mcp import Client, StdioServerParameters

    # the SDK starts servers with a minimal environment: what the model's location needs must be passed
    env = {k: os.environ[k] for k in ("REASONRANK_CACHE", "REASONRANK_DATA", "HF_HUB_OFFLINE", "HOME", "XDG_CACHE_HOME") if k in os.environ}
    params = StdioServerParameters(command=sys.executable, args=["-m", "reasonrank.cli", "mcp", *engine.args],
                                   env={**env, **engine.env})

    async def session():
        async with Client(params, read_timeout_seconds=600) as client:
            return await client.call_tool("rerank", {"query": QUERY, "documents": TEXTS})

    result = asyncio.run(session())
    assert not result.is_error, result.content
    return [DOCIDS[hit["index"]] for hit in result.structured_content["results"]]


def pyterrier(engine: Engine, tmp_path: Path) -> list[str]:
    pytest.importorskip("pyterrier")
    import pandas as pd

    from reasonrank.integrations.pyterrier import ReasonRankReranker

    frame = pd.DataFrame({"qid": "q1", "query": QUERY, "docno": DOCIDS, "text": TEXTS,
                          "score": [float(len(DOCS) - i) for i in range(len(DOCS))]})
    transformer = ReasonRankReranker(spec=engine.spec)
    try:
        out = transformer(frame)
    finally:
        transformer.reranker.close()
    return list(out.sort_values("rank").docno)


def langchain(engine: Engine, tmp_path: Path) -> list[str]:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from reasonrank.integrations.langchain import ReasonRankCompressor

    compressor = ReasonRankCompressor(spec=engine.spec, top_n=None)
    try:
        found = compressor.compress_documents([Document(page_content=t, id=d) for d, t in DOCS.items()], QUERY)
    finally:
        compressor.reranker.close()
    return [d.id for d in found]


def llama_index(engine: Engine, tmp_path: Path) -> list[str]:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from reasonrank.integrations.llama_index import ReasonRankPostprocessor

    postprocessor = ReasonRankPostprocessor(spec=engine.spec, top_n=None)
    try:
        nodes = [NodeWithScore(node=TextNode(text=t, id_=d), score=1.0) for d, t in DOCS.items()]
        out = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    finally:
        postprocessor.reranker.close()
    return [n.node.node_id for n in out]


FACES = {"cli": cli, "service": service, "mcp": mcp, "pyterrier": pyterrier, "langchain": langchain, "llama_index": llama_index}


def rankings(engine: Engine, tmp_path: Path) -> tuple[list[str], dict[str, list[str]], dict[str, int]]:
    """(the reference ranking, each face's, each face's model calls on the stand-in)."""
    calls = {}
    before = engine.server.calls if engine.server else 0
    expected = reference(engine, tmp_path)
    calls["reference"] = (engine.server.calls - before) if engine.server else None
    out = {}
    for name, face in FACES.items():
        before = engine.server.calls if engine.server else 0
        out[name] = face(engine, tmp_path / name)
        calls[name] = (engine.server.calls - before) if engine.server else None
    return expected, out, calls


@pytest.mark.model
def test_the_embedded_model_ranks_alike_through_every_face(tmp_path):
    engine = embedded()
    expected, found, _ = rankings(engine, tmp_path)
    assert sorted(expected) == sorted(DOCIDS)
    assert found == {name: expected for name in FACES}


@pytest.mark.parametrize("method,windows", [("sliding", 2), ("tdpart", 3)])
def test_a_reversing_engine_ranks_alike_through_every_face(stand_in, tmp_path, method, windows):
    engine = served(stand_in, method)
    expected, found, calls = rankings(engine, tmp_path)
    assert expected != DOCIDS and sorted(expected) == sorted(DOCIDS)  # not the first-stage order: parity means something
    if method == "tdpart":  # nor the sliding window's: a face that ran another method would show
        assert expected != reference(served(stand_in, "sliding"), tmp_path)
    assert found == {name: expected for name in FACES}
    # every face asked the engine for each window of its own (nothing answered from a cache or journal)
    assert calls == dict.fromkeys(["reference", *FACES], windows)


# -- scores: score_mode rank and blend (and min_score) give the same numbers on every face ---------------------------
#
# Each face below returns [(docid, score)] best first for the same input: the query, the six passages and, where the face
# can carry them, the same first-stage scores (the CLI's run file, a document's `score` in the service's Cohere, Jina and
# vLLM shapes, MCP's `scores`, the PyTerrier frame's `score`, LangChain's metadata, LlamaIndex's and Haystack's scores).
# The reference is the Python API with reasonrank.scoring.score_results. On the reversing stand-in, so the reranked
# order is not the first stage's and the blend reorders it (checked).

FIRST_STAGE = {"d1": 9.0, "d2": 8.5, "d3": 4.0, "d4": 3.5, "d5": 1.0, "d6": 0.0}  # not linear in the position: the blend reads them
SCORED_DOCS = [{"text": t, "score": FIRST_STAGE[d]} for d, t in DOCS.items()]


def scoring_engine(server: StandInServer, score_mode: str, min_score: float | None) -> Engine:
    engine = served(server, "sliding")
    engine.spec = engine.spec.replace(score_mode=score_mode, min_score=min_score)
    engine.args = [*engine.args, "--score-mode", score_mode, *(["--min-score", str(min_score)] if min_score is not None else [])]
    return engine


def scored_reference(engine: Engine, first_stage: dict | None) -> list[tuple[str, float]]:
    from reasonrank.scoring import score_results
    from reasonrank.types import Query, Request

    request = Request(Query("q1", QUERY), [Candidate(d, (first_stage or {}).get(d, 0.0), t) for d, t in DOCS.items()])
    with build(engine.spec) as reranker:
        (result,) = score_results(reranker.spec, [request], [reranker.rerank(QUERY, request.candidates)],
                                  first_stage=first_stage is not None)
    return [(c.docid, c.score) for c in result.candidates]


def scored_cli(engine: Engine, tmp_path: Path, first_stage: dict) -> list[tuple[str, float]]:
    from reasonrank.io import read_run

    coll = tmp_path / "tiny"
    (coll / "qrels").mkdir(parents=True, exist_ok=True)
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in DOCS.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": QUERY}) + "\n")
    (coll / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    run = tmp_path / "first.trec"
    run.write_text("".join(f"q1 Q0 {d} {i + 1} {first_stage[d]} first\n" for i, d in enumerate(DOCS)))
    out = tmp_path / "reranked.trec"
    proc = subprocess.run([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(coll), "-r", str(run), "-o", str(out),
                           *engine.args], capture_output=True, text=True, timeout=600, env={**os.environ, **engine.env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = read_run(out)["q1"]
    return sorted(scores.items(), key=lambda kv: -kv[1])


def scored_service(engine: Engine, with_scores: bool) -> dict[str, list[tuple[str, float]]]:
    """Every rerank shape of the service on one app: Cohere v1 and v2, Jina (/v1/rerank), vLLM (/rerank, /score), TEI."""
    from fastapi.testclient import TestClient

    from reasonrank.serving import ServeConfig, create_app

    docs = SCORED_DOCS if with_scores else TEXTS
    out = {}
    with TestClient(create_app(ServeConfig(engine.spec))) as client:
        def results(path, body, key="results", score="relevance_score"):
            r = client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            items = r.json() if key is None else r.json()[key]
            return [(DOCIDS[x["index"]], x[score]) for x in items]

        out["cohere_v1"] = results("/v1/rerank", {"query": QUERY, "documents": docs, "return_reasoning": True})
        out["cohere_v2"] = results("/v2/rerank", {"model": "stand-in", "query": QUERY, "documents": docs, "return_reasoning": True})
        out["jina"] = results("/v1/rerank", {"model": "stand-in", "query": QUERY, "documents": docs, "top_n": 6})
        out["vllm"] = results("/rerank", {"model": "stand-in", "query": QUERY, "documents": docs, "top_n": 0})
        if not with_scores:  # these shapes carry no first-stage score: the input order stands for it
            out["tei"] = results("/rerank", {"query": QUERY, "texts": TEXTS}, key=None, score="score")
            by_index = results("/score", {"model": "stand-in", "queries": QUERY, "documents": TEXTS}, key="data", score="score")
            out["vllm_score"] = sorted(by_index, key=lambda kv: -kv[1])
    return out


def scored_mcp(engine: Engine, scores: list[float] | None) -> list[tuple[str, float]]:
    from mcp import Client, StdioServerParameters

    env = {k: os.environ[k] for k in ("REASONRANK_CACHE", "REASONRANK_DATA", "HF_HUB_OFFLINE", "HOME", "XDG_CACHE_HOME") if k in os.environ}
    params = StdioServerParameters(command=sys.executable, args=["-m", "reasonrank.cli", "mcp", *engine.args], env={**env, **engine.env})

    async def session():
        async with Client(params, read_timeout_seconds=600) as client:
            return await client.call_tool("rerank", {"query": QUERY, "documents": TEXTS, **({"scores": scores} if scores else {})})

    result = asyncio.run(session())
    assert not result.is_error, result.content
    return [(DOCIDS[hit["index"]], hit["relevance_score"]) for hit in result.structured_content["results"]]


def scored_adapters(engine: Engine, first_stage: dict | None) -> dict[str, list[tuple[str, float]]]:
    import pandas as pd
    from haystack import Document as HaystackDocument
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from reasonrank.integrations.haystack import ReasonRankRanker
    from reasonrank.integrations.langchain import ReasonRankCompressor
    from reasonrank.integrations.llama_index import ReasonRankPostprocessor
    from reasonrank.integrations.pyterrier import ReasonRankReranker

    score = (lambda d: first_stage[d]) if first_stage else (lambda d: None)
    out = {}
    frame = pd.DataFrame({"qid": "q1", "query": QUERY, "docno": DOCIDS, "text": TEXTS,
                          **({"score": [first_stage[d] for d in DOCIDS]} if first_stage else {})})
    with build(engine.spec) as reranker:  # one engine for the four adapters (reranker=), as a user may share one
        ranked = ReasonRankReranker(reranker=reranker)(frame)
        out["pyterrier"] = [(d, s) for d, s in zip(ranked.sort_values("rank").docno, ranked.sort_values("rank").score)]
        compressor = ReasonRankCompressor(reranker=reranker, top_n=None, first_stage_key="score" if first_stage else None)
        docs = [Document(page_content=t, id=d, metadata={"score": first_stage[d]} if first_stage else {}) for d, t in DOCS.items()]
        out["langchain"] = [(d.id, d.metadata["relevance_score"]) for d in compressor.compress_documents(docs, QUERY)]
        postprocessor = ReasonRankPostprocessor(reranker=reranker, top_n=None)
        nodes = [NodeWithScore(node=TextNode(text=t, id_=d), score=score(d)) for d, t in DOCS.items()]
        out["llama_index"] = [(n.node.node_id, n.score) for n in postprocessor.postprocess_nodes(nodes, query_str=QUERY)]
        found = ReasonRankRanker(reranker=reranker, top_k=None).run(
            query=QUERY, documents=[HaystackDocument(id=d, content=t, score=score(d)) for d, t in DOCS.items()])["documents"]
        out["haystack"] = [(d.id, d.score) for d in found]
    return out


def _close(found: dict, expected: list[tuple[str, float]]) -> dict:
    """Each face's ranking, with the scores that match the reference's (to the run file's 6 decimals) replaced by it."""
    return {name: [(d, s) for d, s in got] == [(d, pytest.approx(s, abs=1e-6)) for d, s in expected] or got
            for name, got in found.items()}


@pytest.mark.parametrize("score_mode,min_score", [("rank", None), ("blend", None), ("blend", 0.45)])
def test_score_modes_give_the_same_results_on_every_face(stand_in, tmp_path, score_mode, min_score):
    for module in ("fastapi", "mcp", "pyterrier", "langchain_core", "llama_index.core", "haystack"):
        pytest.importorskip(module)
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    engine = scoring_engine(stand_in, score_mode, min_score)
    expected = scored_reference(engine, FIRST_STAGE)
    ranked = scored_reference(scoring_engine(stand_in, "rank", None), FIRST_STAGE)
    if score_mode == "blend":  # the blend re-sorts the reranked order: agreeing on it means each face blended
        assert [d for d, _ in expected] != [d for d, _ in ranked][:len(expected)]
    if min_score is not None:
        assert 0 < len(expected) < len(DOCS) and all(s >= min_score for _, s in expected)
    found = {"cli": scored_cli(engine, tmp_path / "cli", FIRST_STAGE), **scored_service(engine, with_scores=True),
             "mcp": scored_mcp(engine, [FIRST_STAGE[d] for d in DOCIDS]), **scored_adapters(engine, FIRST_STAGE)}
    assert _close(found, expected) == dict.fromkeys(found, True)


def test_without_first_stage_scores_every_face_blends_with_the_input_order(stand_in, tmp_path):
    """Shapes and faces that carry no first-stage score (TEI's texts, vLLM's strings and /score, MCP without `scores`,
    LangChain without a metadata key, nodes and Documents without a score) take the input order for the first stage;
    the CLI's run file always has scores: linear ones (6 .. 1) normalise to the same."""
    for module in ("fastapi", "mcp", "pyterrier", "langchain_core", "llama_index.core", "haystack"):
        pytest.importorskip(module)
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    engine = scoring_engine(stand_in, "blend", None)
    expected = scored_reference(engine, None)
    assert expected == scored_reference(engine, {d: float(len(DOCS) - i) for i, d in enumerate(DOCS)})
    found = {"cli": scored_cli(engine, tmp_path / "cli", {d: float(len(DOCS) - i) for i, d in enumerate(DOCS)}),
             **scored_service(engine, with_scores=False), "mcp": scored_mcp(engine, None), **scored_adapters(engine, None)}
    assert set(found) >= {"tei", "vllm_score", "jina", "vllm", "langchain", "haystack"}
    assert _close(found, expected) == dict.fromkeys(found, True)
