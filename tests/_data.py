"""Where the shared real data lives: ../shared/data beside the repository (REASONRANK_DATA overrides)."""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SCIFACT = DATA / "scifact"
BRIGHT = DATA / "bright"
R2MED = DATA / "r2med"

needs_data = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl.gz").exists(), reason=f"shared data not found at {DATA}")
needs_r2med = pytest.mark.skipif(
    not all((R2MED / f).exists() for f in ("Biology-demo/qrels.jsonl", "IIYi-Clinical/qrels.jsonl", "runs")),
    reason=f"R2MED data not found at {R2MED}",
)


def bright_run(task: str) -> Path:
    return BRIGHT / "runs" / f"{task}.reasonir_gpt4cot_top100.trec.gz"


def r2med_run(task: str) -> Path:
    return R2MED / "runs" / f"{task}.e5-mistral-7b-instruct_top100.trec.gz"


def scifact_bm25_run(folder: Path, queries: int, k: int) -> Path:
    """BM25 top-k of the first `queries` SciFact queries, written to folder/bm25.trec (its index cached there)."""
    from reasonrank.io import load_collection, write_run
    from reasonrank.retrieval import BM25Index

    coll = load_collection(SCIFACT)
    path = folder / "bm25.trec"
    write_run(path, BM25Index.for_collection(coll, cache=folder).search(list(coll.queries())[:queries], k=k, show_progress=False))
    return path
