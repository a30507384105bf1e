"""A real run to report on: BM25 top-6 of three SciFact test queries, the first two reranked by the
embedded model through the real CLI (`rerank --traces`), with the small settings of
test_rerank_model.py. Made once per session (~1 min on 2 cores) and shared by the report tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _data import SCIFACT, needs_data
from conftest import qwen_gguf_path

ARGS = ["--top-k", "6", "--window", "4", "--step", "2", "--max-new-tokens", "24", "--max-passage-tokens", "30", "--threads", "1"]

needs_model = [pytest.mark.model, needs_data,
               pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled (run scripts/setup.sh)")]


@dataclass(frozen=True)
class RealRun:
    root: Path
    first_stage: Path  # BM25 top-6 of three queries
    reranked: Path     # the rerank command's output: the first two queries
    traces: Path       # its window journal


_made: list[RealRun] = []  # the session's run, once made (tmp_path_factory is not hashable: no functools.cache)


def real_run(tmp_path_factory) -> RealRun:
    if not _made:
        _made.append(_make(tmp_path_factory))
    return _made[0]


def _make(tmp_path_factory) -> RealRun:
    from reasonrank.io import load_collection, write_run
    from reasonrank.retrieval import BM25Index

    root = tmp_path_factory.mktemp("report-run")
    coll = load_collection(SCIFACT)
    queries = list(coll.queries())[:3]
    first_stage = root / "bm25.trec"
    write_run(first_stage, BM25Index.for_collection(coll, cache=root).search(queries, k=6, show_progress=False))
    run = RealRun(root, first_stage, root / "reranked.trec", root / "traces.jsonl")
    proc = subprocess.run([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(SCIFACT), "-r", str(first_stage),
                           "-o", str(run.reranked), "--traces", str(run.traces), "-n", "2", *ARGS],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return run


def journal_lines(path: Path) -> list[dict]:
    """The window lines of a journal, as dicts (its first line, the engine header, left out)."""
    import json

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "reasonrank_journal" not in r]


def report_cli(*args: str) -> subprocess.CompletedProcess:
    """`reasonrank report …` as a user runs it (python -m reasonrank.report until cli.py mounts it)."""
    return subprocess.run([sys.executable, "-m", "reasonrank.report", *args], capture_output=True, text=True, timeout=300)
