"""Where the shared real data lives: ../shared/data beside the repository (REASONRANK_DATA overrides)."""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SCIFACT = DATA / "scifact"
BRIGHT = DATA / "bright"

needs_data = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl.gz").exists(), reason=f"shared data not found at {DATA}")


def bright_run(task: str) -> Path:
    return BRIGHT / "runs" / f"{task}.reasonir_gpt4cot_top100.trec.gz"
