"""BRIGHT as published: `examples` rows (gold_ids / excluded_ids) and, where a user has them, `documents`.

Layout of a local copy (any of these per split): `<root>/examples/<task>.jsonl[.gz]`,
`<root>/examples/<task>-*.parquet` (the hub's files), likewise `documents/` and `long_documents/`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterator

from reasonrank.errors import FormatError, require
from reasonrank.io.collection import Collection, UnknownCollection
from reasonrank.io.common import field, read_jsonl
from reasonrank.io.docstore import files_key
from reasonrank.types import Document, Query

TASKS = (
    "biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
    "sustainable_living", "leetcode", "pony", "aops", "theoremqa_questions", "theoremqa_theorems",
)
HUB_ID = "xlangai/BRIGHT"
NA = "N/A"


def id_list(value: Any, path, lineno: int, name: str) -> list[str]:
    """A list field as the dataset stores it: a list, or its Python-literal string; ['N/A'] means empty."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise FormatError(path, lineno, f"field {name!r} is neither a list nor a list literal: {value[:60]!r}") from None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise FormatError(path, lineno, f"field {name!r} should be a list of ids, got {type(value).__name__}")
    return [str(v) for v in value if str(v) != NA]


def split_files(root: Path, split: str, task: str) -> list[Path]:
    d = root / split
    for pattern in (f"{task}.jsonl", f"{task}.jsonl.gz"):
        if (d / pattern).exists():
            return [d / pattern]
    return sorted(d.glob(f"{task}-*.parquet"))


def iter_rows(files: list[Path]) -> Iterator[tuple[Path, int, dict]]:
    for path in files:
        if path.suffix == ".parquet":
            pq = require("pyarrow.parquet", "synth", "Reading BRIGHT parquet files")
            for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
                yield path, i, row
        else:
            for lineno, row in read_jsonl(path):
                yield path, lineno, row


def is_bright_root(path: Path) -> bool:
    return (path / "examples").is_dir()


def local_tasks(root: Path) -> list[str]:
    return [t for t in TASKS if split_files(root, "examples", t)]


def parse_examples(rows, long_context: bool = False):
    """(queries, qrels, excluded) from examples rows; qrels are gold ids with relevance 1."""
    queries, qrels, excluded = [], {}, {}
    gold_field = "gold_ids_long" if long_context else "gold_ids"
    for path, lineno, row in rows:
        qid = str(field(path, lineno, row, "id"))
        queries.append(Query(qid, field(path, lineno, row, "query")))
        gold = id_list(field(path, lineno, row, gold_field), path, lineno, gold_field)
        qrels[qid] = {d: 1 for d in gold}
        excluded[qid] = set(id_list(row.get("excluded_ids", []), path, lineno, "excluded_ids"))
    return queries, qrels, excluded


def _documents(rows) -> Iterator[Document]:
    for path, lineno, row in rows:
        yield Document(str(field(path, lineno, row, "id")), field(path, lineno, row, "content", "text"))


def load(root: Path, task: str, long_context: bool = False) -> Collection:
    files = split_files(root, "examples", task)
    if not files:
        raise UnknownCollection(f"{root}/examples: no file for task {task!r} (found: {', '.join(local_tasks(root)) or 'none'})")
    queries, qrels, excluded = parse_examples(iter_rows(files), long_context)
    doc_split = "long_documents" if long_context else "documents"
    doc_files = split_files(root, doc_split, task)
    return Collection(
        name=f"bright/{task}" + ("/long" if long_context else ""),
        load_queries=lambda: iter(queries),
        load_docs=(lambda: _documents(iter_rows(doc_files))) if doc_files else None,
        load_qrels=lambda: qrels,
        load_excluded=lambda: excluded,
        source=str(root) + ("" if doc_files else f" (no {doc_split}/{task} files)"),
        store_key=files_key(doc_files, "bright._documents") if doc_files else None,
    )


def load_from_hub(task: str, long_context: bool = False) -> Collection:
    """Online users only: stream a BRIGHT task from the hub with `datasets`."""
    if task not in TASKS:
        raise UnknownCollection(f"unknown BRIGHT task {task!r}; tasks: {', '.join(TASKS)}")
    datasets = require("datasets", "synth", "Loading BRIGHT from the Hugging Face hub")
    examples = datasets.load_dataset(HUB_ID, "examples", split=task)
    queries, qrels, excluded = parse_examples((HUB_ID, i, row) for i, row in enumerate(examples, 1))
    doc_config = "long_documents" if long_context else "documents"

    def docs():
        rows = datasets.load_dataset(HUB_ID, doc_config, split=task)
        return _documents((HUB_ID, i, row) for i, row in enumerate(rows, 1))

    return Collection(f"bright/{task}", lambda: iter(queries), docs, lambda: qrels, lambda: excluded, source=f"hub:{HUB_ID}")
