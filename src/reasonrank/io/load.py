"""Open a collection by the layout of its directory (BEIR, BRIGHT, R2MED) or from the BRIGHT hub."""

from __future__ import annotations

from pathlib import Path

from reasonrank.io import beir, bright, r2med
from reasonrank.io.collection import Collection, UnknownCollection

LAYOUTS = (
    "BEIR corpus.jsonl + queries.jsonl + qrels/<split>.tsv, BRIGHT examples/, "
    "or R2MED query.jsonl + qrels.jsonl (+ corpus.jsonl; also test_queries.jsonl + qrels.json)"
)


def load_collection(spec: str | Path, task: str | None = None, split: str = "test") -> Collection:
    """Open a collection from a directory (BEIR, BRIGHT or R2MED layout), or a BRIGHT hub task.

    `spec` is a directory; for BRIGHT it is the root holding `examples/` and `task` names the task.
    `bright` with a task and no such directory loads the task from the Hugging Face hub (online only).
    """
    path = Path(spec)
    if path.is_dir():
        if bright.is_bright_root(path):
            if not task:
                raise UnknownCollection(f"{path}: a BRIGHT directory needs a task, one of: {', '.join(bright.local_tasks(path))}")
            return bright.load(path, task)
        if beir.is_beir_dir(path):
            return beir.load(path, split)
        if r2med.is_r2med_dir(path):
            return r2med.load(path)
        raise UnknownCollection(f"{path}: not a collection directory (expected {LAYOUTS})")
    if str(spec).lower() in ("bright", "xlangai/bright") and task:
        return bright.load_from_hub(task)
    raise UnknownCollection(f"{spec}: no such collection directory")
