"""R2MED task directories: test_queries.jsonl (or query.jsonl), qrels.json (or qrels.txt), corpus.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from reasonrank.errors import FormatError
from reasonrank.io.beir import find, iter_docs
from reasonrank.io.collection import Collection
from reasonrank.io.common import field, open_text, read_jsonl
from reasonrank.io.trec import read_qrels
from reasonrank.types import Query

QUERY_FILES = ("test_queries.jsonl", "query.jsonl", "queries.jsonl")
QRELS_FILES = ("qrels.json", "qrels.txt", "qrels.tsv")


def _first(path: Path, names) -> Path | None:
    return next((p for p in (find(path, n) for n in names) if p is not None), None)


def is_r2med_dir(path: Path) -> bool:
    return _first(path, QUERY_FILES) is not None and _first(path, QRELS_FILES) is not None


def read_json_qrels(path: Path) -> dict[str, dict[str, int]]:
    """`{qid: {docid: rel}}` or `{qid: [docid, ...]}`."""
    with open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise FormatError(path, exc.lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise FormatError(path, None, "qrels.json should map query ids to their relevant documents")
    qrels = {}
    for qid, docs in data.items():
        if isinstance(docs, dict):
            qrels[str(qid)] = {str(d): int(r) for d, r in docs.items()}
        elif isinstance(docs, list):
            qrels[str(qid)] = {str(d): 1 for d in docs}
        else:
            raise FormatError(path, None, f"query {qid!r}: expected an object or a list of doc ids")
    return qrels


def load(path: Path) -> Collection:
    queries_path, qrels_path = _first(path, QUERY_FILES), _first(path, QRELS_FILES)
    corpus = find(path, "corpus.jsonl")
    qrels = read_json_qrels(qrels_path) if qrels_path.name.startswith("qrels.json") else read_qrels(qrels_path)

    def queries():
        for lineno, row in read_jsonl(queries_path):
            qid = field(queries_path, lineno, row, "_id", "id", "qid", "query_id")
            yield Query(str(qid), field(queries_path, lineno, row, "text", "query", "question"))

    return Collection(
        name=f"r2med/{path.name}",
        load_queries=queries,
        load_docs=(lambda: iter_docs(corpus)) if corpus else None,
        load_qrels=lambda: qrels,
        source=str(path),
    )
