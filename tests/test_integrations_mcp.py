"""The MCP server with the official SDK's own client: `reasonrank mcp` spawned over stdio on the embedded
model (tools, schemas, `Reranker.rerank`'s order, tool errors that leave the server running, evaluate),
over streamable HTTP, and a crash inside a tool on a scripted test double."""

import asyncio
import os
import subprocess
import sys

import pytest
from _integrations import SMALL_ARGS, needs_model, scifact_passages, scripted_reranker, small_reranker
from servers import free_port, stop_process

pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters  # noqa: E402

from reasonrank.evaluation import evaluate  # noqa: E402
from reasonrank.integrations.mcp import BackgroundModel, build_server  # noqa: E402
from reasonrank.types import Candidate  # noqa: E402

RUN_TEXT = "1 Q0 d1 1 3.0 bm25\n1 Q0 d2 2 2.0 bm25\n1 Q0 d3 3 1.0 bm25\n2 Q0 d9 1 1.0 bm25\n"
QRELS = {"1": {"d2": 1, "d3": 2}, "2": {"d9": 1}}


def server_env() -> dict:
    """The SDK starts servers with a minimal environment; the model's cache location must still reach it."""
    return {k: os.environ[k] for k in ("REASONRANK_CACHE", "REASONRANK_DATA", "HF_HUB_OFFLINE") if k in os.environ}


def cli(*args: str) -> list[str]:
    return ["-m", "reasonrank.cli", "mcp", *SMALL_ARGS, *args]


def error_text(result) -> str:
    assert result.is_error
    return result.content[0].text


@needs_model
def test_stdio_server_tools_errors_and_reranks_order():
    query, texts = scifact_passages(4)  # one window

    async def session():
        params = StdioServerParameters(command=sys.executable, args=cli(), env=server_env())
        async with Client(params, read_timeout_seconds=600) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"rerank", "evaluate"}
            schema = tools["rerank"].input_schema
            assert schema["required"] == ["query", "documents"] and schema["properties"]["documents"]["items"] == {"type": "string"}
            assert set(tools["evaluate"].input_schema["properties"]) == {"run", "qrels", "measures"}
            assert tools["rerank"].output_schema and tools["rerank"].annotations.read_only_hint

            errors = [error_text(await client.call_tool("rerank", args)) for args in (
                {"query": " ", "documents": ["a"]},
                {"query": "q", "documents": []},
                {"query": "q", "documents": ["a"], "top_n": 0},
                {"query": "q", "documents": ["a", ""]},
                {"query": "q", "documents": ["a", 7]},
                {"query": "q"},
            )]
            evaluated = await client.call_tool("evaluate", {"run": RUN_TEXT, "qrels": QRELS, "measures": ["nDCG@10", "MRR@10"]})
            bad_run = error_text(await client.call_tool("evaluate", {"run": "1 Q0 d1 1\n", "qrels": QRELS}))
            ranked = await client.call_tool("rerank", {"query": query, "documents": texts, "top_n": 3})
            return errors, evaluated, bad_run, ranked

    errors, evaluated, bad_run, ranked = asyncio.run(session())
    assert "'query' must not be empty" in errors[0]
    assert "'documents' must not be empty" in errors[1]
    assert "'top_n' must be at least 1, got 0" in errors[2]
    assert "documents[1] has no text" in errors[3]
    assert "documents.1" in errors[4] and "documents" in errors[5]  # the SDK's schema validation, still a tool error

    assert not evaluated.is_error
    expected = evaluate({"1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "2": {"d9": 1.0}}, QRELS, ["nDCG@10", "MRR@10"])
    assert evaluated.structured_content["aggregate"] == pytest.approx(expected.aggregate)
    assert evaluated.structured_content["per_query"]["1"] == pytest.approx(expected.per_query["1"])
    assert "run:1: a run line needs 6 fields" in bad_run

    # after all that, the server still reranks, in Reranker.rerank's order (same model and settings)
    assert not ranked.is_error
    results = ranked.structured_content["results"]
    with small_reranker() as reranker:
        core = reranker.rerank(query, [Candidate(str(i), 0.0, t) for i, t in enumerate(texts)]).docids
    assert [r["index"] for r in results] == [int(d) for d in core[:3]]
    assert [r["relevance_score"] for r in results] == [1.0, 0.5, 1 / 3]
    assert [r["document"] for r in results] == [texts[int(d)] for d in core[:3]]


@needs_model
def test_streamable_http_transport():
    port = free_port()
    proc = subprocess.Popen([sys.executable, *cli("--transport", "streamable-http", "--port", str(port))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    async def session():
        deadline = asyncio.get_running_loop().time() + 300
        while True:  # the model loads before the server listens
            assert proc.poll() is None, proc.stderr.read()
            try:
                async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                    names = [t.name for t in (await client.list_tools()).tools]
                    result = await client.call_tool("evaluate", {"run": {"1": {"d2": 1.0, "d1": 0.5}}, "qrels": QRELS,
                                                                 "measures": ["MRR@10"]})
                    return names, result
            except Exception:  # noqa: BLE001 - not listening yet
                assert asyncio.get_running_loop().time() < deadline, "the HTTP server did not come up"
                await asyncio.sleep(1)

    try:
        names, result = asyncio.run(session())
    finally:
        stop_process(proc)
    assert sorted(names) == ["evaluate", "rerank"]
    assert result.structured_content["aggregate"] == {"MRR@10": 1.0}


def test_a_crash_inside_a_tool_is_a_tool_error_and_the_server_goes_on():
    """In-memory session with the SDK's client; the scripted test double's first model call raises."""
    calls = []

    def answer(n, user):
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("the engine fell over")
        return " > ".join(f"[{i}]" for i in range(n, 0, -1))

    server = build_server(scripted_reranker(answer)[0])

    async def session():
        async with Client(server) as client:
            crashed = await client.call_tool("rerank", {"query": "q", "documents": ["a", "b"]})
            ok = await client.call_tool("rerank", {"query": "q", "documents": ["a", "b"], "top_n": 1})
            return crashed, ok

    crashed, ok = asyncio.run(session())
    assert error_text(crashed) == "Error executing tool rerank"  # the SDK withholds an unforeseen error's text
    assert ok.structured_content == {"results": [{"index": 1, "relevance_score": 1.0, "document": "b"}]}


def test_a_model_that_fails_to_load_is_a_tool_error_and_evaluate_still_works():
    from reasonrank.rerankers import Reranker

    server = build_server(BackgroundModel(lambda: Reranker("/no/such/model.gguf")))

    async def session():
        async with Client(server) as client:
            failed = await client.call_tool("rerank", {"query": "q", "documents": ["a", "b"]})
            evaluated = await client.call_tool("evaluate", {"run": RUN_TEXT, "qrels": QRELS, "measures": ["MRR@10"]})
            return failed, evaluated

    failed, evaluated = asyncio.run(session())
    assert "/no/such/model.gguf" in error_text(failed)
    assert evaluated.structured_content["aggregate"]["MRR@10"] == pytest.approx(0.75)


def test_without_the_extra_the_command_names_it():
    code = "import sys; sys.modules['mcp'] = None; sys.argv = ['reasonrank', 'mcp']; from reasonrank.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pip install 'reasonrank[mcp]'" in proc.stderr and "Traceback" not in proc.stderr


def test_no_import_circle_through_the_cli():
    """cli -> integrations.mcp -> serving.commands -> cli was a circle (issue 18): the MCP command builds from the
    spec and imports nothing of the service, and serving.commands imports nothing of the CLI (its standalone
    entry point, serving/__main__.py, does: nothing imports that). Imports inside functions count too."""
    import ast
    from pathlib import Path

    import reasonrank

    def imported(module: str) -> set[str]:
        path = Path(reasonrank.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                found.add(node.module)
        return found

    assert "reasonrank.spec" in imported("reasonrank.integrations.mcp")  # the walk sees what it should
    assert not {m for m in imported("reasonrank.integrations.mcp") if m.startswith("reasonrank.serving")}
    assert not {m for m in imported("reasonrank.serving.commands") if m == "reasonrank.cli" or m.startswith("reasonrank.integrations")}
