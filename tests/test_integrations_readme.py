"""The README's integration snippets ("## Use it from PyTerrier, LangChain, LlamaIndex and MCP"), run as
written with the real libraries and the embedded model. Only the settings shrink: every `Reranker` the
adapters build is one reranker with the tests' small settings (windows of 4, so top_k=4 makes one
window a query), the data path is the tests' and `reasonrank mcp` gets the same small settings."""

import os
import re
import sys
from pathlib import Path

import pytest
from _data import DATA
from _integrations import SMALL_ARGS, needs_model, small_reranker

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Use it from PyTerrier, LangChain, LlamaIndex and MCP"


def snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_one_snippet_per_integration():
    found = snippets()
    assert [next(lib for lib in ("pyterrier", "langchain", "llama_index", "mcp") if f"import {lib}" in s or f"from {lib}" in s)
            for s in found] == ["pyterrier", "langchain", "llama_index", "mcp"]


@pytest.fixture(scope="module")
def shared_reranker():
    with small_reranker(top_k=4) as reranker:
        yield reranker


def run(code: str, name: str) -> None:
    exec(compile(code, f"README.md ({name})", "exec"), {"__name__": "__readme__"})


@needs_model
@pytest.mark.parametrize("index,name", [(0, "pyterrier"), (1, "langchain"), (2, "llama_index")])
def test_library_snippet_runs(index, name, shared_reranker, monkeypatch, capsys):
    built = []

    def reranker(model=None, backend=None, **options):
        built.append((model, backend, options))
        return shared_reranker

    monkeypatch.setattr("reasonrank.integrations._common.Reranker", reranker)
    windows = shared_reranker.stats.windows
    run(snippets()[index].replace("../shared/data", str(DATA)), name)
    out = capsys.readouterr().out
    assert built and all(model is None and backend is None for model, backend, _ in built)  # the embedded model
    assert shared_reranker.stats.windows > windows  # the model ran
    if name == "pyterrier":
        assert "BM25 >> reasonrank" in out and "ndcg_cut_10" in out
    else:
        lines = out.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("1.0 ") and lines[1].startswith("0.5 ")


@needs_model
def test_mcp_snippet_runs(capfd):  # fd level: the SDK hands sys.stderr to the server process
    code = snippets()[3]
    assert 'command="reasonrank", args=["mcp"]' in code
    env = {k: os.environ[k] for k in ("REASONRANK_CACHE", "HF_HUB_OFFLINE") if k in os.environ}
    command = str(Path(sys.executable).with_name("reasonrank"))
    code = code.replace('command="reasonrank", args=["mcp"]', f"command={command!r}, args={['mcp', *SMALL_ARGS]!r}, env={env!r}")
    run(code, "mcp")
    out = capfd.readouterr().out
    assert out.startswith("{'results': [{'index': ") and "'relevance_score': 1.0" in out
