"""BEIR directories: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (each may be .gz)."""

from __future__ import annotations

from pathlib import Path

from reasonrank.errors import FormatError
from reasonrank.io.collection import Collection
from reasonrank.io.common import field, read_jsonl
from reasonrank.io.docstore import files_key
from reasonrank.io.qrels import read_qrels
from reasonrank.types import Document, Query


def find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def is_beir_dir(path: Path) -> bool:
    # qrels/ is what sets BEIR apart: an R2MED task may also ship corpus.jsonl and queries.jsonl
    has_files = find(path, "corpus.jsonl") is not None and find(path, "queries.jsonl") is not None
    return has_files and (path / "qrels").is_dir()


def iter_docs(path: Path):
    for lineno, row in read_jsonl(path):
        docid = field(path, lineno, row, "_id", "id", "docid", "doc_id")
        text = field(path, lineno, row, "text", "contents", "content")
        yield Document(str(docid), text or "", row.get("title") or "")


def iter_queries(path: Path):
    for lineno, row in read_jsonl(path):
        qid = field(path, lineno, row, "_id", "id", "qid", "query_id")
        yield Query(str(qid), field(path, lineno, row, "text", "query"))


def load(path: Path, split: str = "test") -> Collection:
    corpus, queries = find(path, "corpus.jsonl"), find(path, "queries.jsonl")
    qrels_path = find(path / "qrels", f"{split}.tsv")
    if qrels_path is None:
        available = sorted(p.name for p in (path / "qrels").glob("*.tsv*")) if (path / "qrels").is_dir() else []
        raise FormatError(path / "qrels" / f"{split}.tsv", None, f"no qrels for split {split!r} (available: {available or 'none'})")
    qrels = read_qrels(qrels_path)

    def judged_queries():
        return (q for q in iter_queries(queries) if q.qid in qrels)

    return Collection(
        name=f"{path.name}/{split}",
        load_queries=judged_queries,
        load_docs=lambda: iter_docs(corpus),
        load_qrels=lambda: qrels,
        source=str(path),
        store_key=files_key([corpus], "beir.iter_docs") if corpus else None,
    )
