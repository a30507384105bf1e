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
    from reasonrank.io import read_run

    coll = tmp_path / "tiny"
    (coll / "qrels").mkdir(parents=True, exist_ok=True)
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in DOCS.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": QUERY}) + "\n")
    (coll / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    run = tmp_path / "first.trec"
    run.write_text("".join(f"q1 Q0 {d} {i + 1} {len(DOCS) - i}.0 first\n" for i, d in enumerate(DOCS)))
    out = tmp_path / "reranked.trec"
    proc = subprocess.run([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(coll), "-r", str(run), "-o", str(out),
                           *engine.args], capture_output=True, text=True, timeout=600, env={**os.environ, **engine.env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = read_run(out)["q1"]
    return sorted(scores, key=lambda d: -scores[d])


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
