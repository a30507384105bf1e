"""`reasonrank mcp` (`pip install 'reasonrank[mcp]'`): the reranker and the evaluator as Model Context
Protocol tools, served with the official `mcp` SDK.

    reasonrank mcp                                                # stdio: what MCP hosts and agents launch
    reasonrank mcp --transport streamable-http --port 8001        # http://127.0.0.1:8001/mcp
    reasonrank mcp --method tdpart -m reasonrank-7b -b vllm       # any reranker setting, as `rerank` takes it

The reranker is `build(spec)` of the spec the options give (`reasonrank.spec.spec_options`: the same flags
as every command that reranks, less --traces: a tool call keeps no journal). Nothing here writes to stdout,
which the stdio transport owns; logs go to stderr.

Tools:

* `rerank(query, documents, top_n, scores)`: the documents' indices best first with a relevance score (as every
  face scores, reasonrank.scoring: 1 / (rank + 1), or --score-mode blend with the optional first-stage `scores`)
  and the text;
* the rerank tool's reasoning_budget, answer_budget, effort, thinking and on_truncation set those spec fields for
  one call (the reranker is rebuilt on the same engine, `reasonrank.spec.rebuild`);
* `evaluate(run, qrels, measures)`: IR measures of a run, as `reasonrank evaluate` computes them. Run and
  qrels come inline, as JSON objects or as the text of a file (TREC run; TREC, BEIR TSV or R2MED qrels),
  never as paths: a server reachable over HTTP must not read its own files for a caller.

Bad input comes back as a tool error (`isError: true` with the message of the core API); a failure nobody
foresaw too (the SDK logs its traceback on stderr). The server keeps running either way.

The model loads in the background: the server answers at once (an MCP host gives a server only so long to
start, and a 7B model on a GPU takes minutes to load), `evaluate` works meanwhile and `rerank` waits for it.

No `from __future__ import annotations` here: the SDK reads the tools' annotations at runtime, and those
name pydantic types imported only when the server is built (the CLI must import this module without mcp).
"""

import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from enum import Enum
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Annotated, Callable, Dict, List, Optional, Union

import typer

from reasonrank.errors import FormatError, ReasonRankError, require
from reasonrank.spec import RerankerSpec, spec_options

# what a tool call cannot honour: it reranks one request at a time (no journal file), and shows no bar
NOT_SERVED = ("journal", "journal_policy", "progress")

log = logging.getLogger("reasonrank.mcp")

INSTRUCTIONS = ("Rerank passages by their relevance to a query with a listwise reasoning model (ReasonRank), and "
                "evaluate rankings against relevance judgements with IR measures (nDCG@10, Recall@100, MRR@10, MAP).")


class BackgroundModel:
    """A reranker built in a background thread; `get()` waits for it and raises what its loading raised
    (so each `rerank` call reports a failed load as a tool error)."""

    def __init__(self, build: Callable[[], object]):
        self._future: Future = Future()
        threading.Thread(target=self._load, args=(build,), name="reasonrank-model", daemon=True).start()

    def _load(self, build: Callable[[], object]) -> None:
        started = time.perf_counter()
        try:
            reranker = build()
        except BaseException as exc:  # noqa: BLE001 - handed to every rerank call instead
            log.error("the model failed to load, rerank will answer with this error: %s", exc)
            self._future.set_exception(exc)
            return
        log.info("model loaded in %.1f s", time.perf_counter() - started)
        self._future.set_result(reranker)

    def get(self):
        return self._future.result()

    def close(self) -> None:
        if self._future.done() and self._future.exception() is None:
            self._future.result().close()


def build_server(reranker, name: str = "reasonrank", top_k: int | None = None):
    """An `mcp.server.MCPServer` with the tools `rerank` (on `reranker`: a built reranker or a BackgroundModel
    building one) and `evaluate`. `top_k` (default: the reranker's) is only told in the tool's description."""
    sdk = require("mcp.server.mcpserver", "mcp", "The MCP server")
    server = sdk.MCPServer(name, instructions=INSTRUCTIONS)
    if top_k is None and not isinstance(reranker, BackgroundModel):
        top_k = getattr(reranker, "top_k", None)
    _add_rerank_tool(server, reranker.get if isinstance(reranker, BackgroundModel) else lambda: reranker, top_k)
    _add_evaluate_tool(server)
    return server


@contextlib.contextmanager
def _as_tool_error():
    """Errors a caller can act on become the SDK's ToolError: their message reaches the caller as is (anything
    else reaches it only as 'Error executing tool')."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except ReasonRankError as exc:  # InvalidInput, FormatError, an unknown measure, ...
        raise ToolError(str(exc)) from exc


def _add_rerank_tool(server, reranker: Callable[[], object], top_k: int | None) -> None:
    from mcp.types import ToolAnnotations
    from pydantic import BaseModel, Field

    from reasonrank.integrations._common import rerank_texts
    from reasonrank.spec import rebuild

    class Hit(BaseModel):
        index: int = Field(description="Position of the document in the documents sent.")
        relevance_score: float = Field(description="The server's --score-mode: rank (default) 1 / (rank + 1), 1.0 for the "
                                                   "best, decreasing down the list; blend mixes in the first stage's score.")
        document: str

    class Ranking(BaseModel):
        results: List[Hit] = Field(description="The documents best first, top_n of them.")

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False))
    def rerank(
        query: Annotated[str, Field(description="What the documents should answer.")],
        documents: Annotated[List[str], Field(description="Passage texts, none blank, in first-stage order (best first); "
                                                          f"beyond the server's --top-k ({top_k or 100}) they keep their order.")],
        top_n: Annotated[Optional[int], Field(description="How many results to return (at least 1; default: all).")] = None,
        reasoning_budget: Annotated[Optional[int], Field(
            description="Reasoning tokens per window for this call (default: the server's; smaller is faster).")] = None,
        answer_budget: Annotated[Optional[int], Field(
            description="Answer tokens per window, and a forced answer's budget (default: the server's, 100).")] = None,
        effort: Annotated[Optional[str], Field(
            description="A reasoning budget preset instead of reasoning_budget: low (256), medium (1024) or high (3072).")] = None,
        thinking: Annotated[Optional[bool], Field(
            description="false: reasoning off, for models whose chat template has the switch (Qwen3's enable_thinking).")] = None,
        on_truncation: Annotated[Optional[str], Field(
            description="A window whose reasoning the budget cut: force (an answer forced after the cut reasoning), keep "
                        "(its order kept) or paper (ReasonRank's own reading of the reply).")] = None,
        scores: Annotated[Optional[List[float]], Field(
            description="The first stage's score of each document (optional; with the server's --score-mode blend they are "
                        "mixed with the rerank position; without them the documents' order stands for the first stage).")] = None,
    ) -> Ranking:
        """Rerank documents by relevance to the query with a listwise reasoning model: it reads windows of
        passages, reasons, and orders them."""
        with _as_tool_error():
            ranked = rerank_texts(rebuild(reranker(), reasoning_budget=reasoning_budget, answer_budget=answer_budget,
                                          effort=effort, thinking=thinking, on_truncation=on_truncation), query, documents, top_n, scores)
        return Ranking(results=[Hit(index=i, relevance_score=score, document=documents[i]) for i, score in ranked])


def _add_evaluate_tool(server) -> None:
    from mcp.types import ToolAnnotations
    from pydantic import BaseModel, Field

    from reasonrank.evaluation import DEFAULT_MEASURES, evaluate as run_evaluation
    from reasonrank.io import read_qrels, read_run

    class Evaluation(BaseModel):
        aggregate: Dict[str, float] = Field(description="Each measure averaged over the evaluated queries (0 to 1).")
        evaluated_queries: int
        judged_queries: int
        missing_queries: List[str] = Field(description="Judged queries the run has no results for (not averaged).")
        per_query: Dict[str, Dict[str, float]]

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False))
    def evaluate(
        run: Annotated[Union[Dict[str, Dict[str, float]], str], Field(
            description="The ranking: {qid: {docid: score}} (higher is better), or the text of a TREC run file "
                        "(lines 'qid Q0 docid rank score tag').")],
        qrels: Annotated[Union[Dict[str, Dict[str, int]], str], Field(
            description="Relevance judgements: {qid: {docid: grade}}, or the text of a qrels file "
                        "(TREC 'qid 0 docid grade', BEIR TSV, or R2MED JSON lines).")],
        measures: Annotated[Optional[List[str]], Field(
            description=f"ir-measures names such as nDCG@10, Recall@100, MRR@10, MAP (default: {', '.join(DEFAULT_MEASURES)}).")] = None,
    ) -> Evaluation:
        """Evaluate a ranking against relevance judgements, as `reasonrank evaluate` does."""
        with _as_tool_error():
            result = run_evaluation(_inline(run, "run", read_run), _inline(qrels, "qrels", read_qrels),
                                    measures or DEFAULT_MEASURES)
        return Evaluation(**result.to_dict())


def _inline(value: Union[dict, str], name: str, reader: Callable[[Path], dict]) -> dict:
    """A mapping as given, or file text read by the CLI's own reader; errors name `name` and the line."""
    if isinstance(value, dict):
        return value
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(value, encoding="utf-8")
        try:
            return reader(path)
        except FormatError as exc:
            raise FormatError(name, exc.line, exc.problem) from None


# -- the command ---------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help="Serve rerank and evaluate as MCP tools.")


class Transport(str, Enum):
    stdio = "stdio"
    streamable_http = "streamable-http"


@app.command("mcp")
@spec_options(exclude=NOT_SERVED)
def mcp_command(
    spec: RerankerSpec,
    transport: Transport = typer.Option(Transport.stdio, help="stdio (launched by an MCP host) or streamable-http."),
    host: str = typer.Option("127.0.0.1", help="streamable-http: address to listen on."),
    port: int = typer.Option(8000, help="streamable-http: port to listen on (the endpoint is /mcp)."),
):
    """Serve the tools rerank and evaluate over the Model Context Protocol (the model loads meanwhile)."""
    from reasonrank.spec import build

    require("mcp.server.mcpserver", "mcp", "The MCP server")  # before a model starts loading
    loading = BackgroundModel(lambda: build(spec))
    server = build_server(loading, top_k=spec.top_k)
    try:
        if transport is Transport.stdio:
            server.run("stdio")
        else:
            server.run("streamable-http", host=host, port=port)
    finally:
        loading.close()

