"""R2MED task directories.

Native layout, as R2MED publishes each task: query.jsonl (`id`, `text`, maybe `doc_id`/answers),
corpus.jsonl (`id`, `text`), qrels.jsonl (`{"q_id", "p_id", "score"}` a line). Older copies use
test_queries.jsonl and qrels.json / qrels.txt; read_qrels tells all of these apart by content.
"""

from __future__ import annotations

from pathlib import Path

from reasonrank.io.beir import find, iter_docs
from reasonrank.io.collection import Collection
from reasonrank.io.common import field, read_jsonl
from reasonrank.io.docstore import files_key
from reasonrank.io.qrels import read_qrels
from reasonrank.types import Query

QUERY_FILES = ("query.jsonl", "test_queries.jsonl", "queries.jsonl")
QRELS_FILES = ("qrels.jsonl", "qrels.json", "qrels.txt", "qrels.tsv")


def _first(path: Path, names) -> Path | None:
    return next((p for p in (find(path, n) for n in names) if p is not None), None)


def is_r2med_dir(path: Path) -> bool:
    return _first(path, QUERY_FILES) is not None and _first(path, QRELS_FILES) is not None


def iter_queries(path: Path):
    for lineno, row in read_jsonl(path):
        qid = field(path, lineno, row, "_id", "id", "qid", "query_id")
        yield Query(str(qid), field(path, lineno, row, "text", "query", "question"))


def load(path: Path) -> Collection:
    queries_path, qrels_path = _first(path, QUERY_FILES), _first(path, QRELS_FILES)
    corpus = find(path, "corpus.jsonl")
    qrels = read_qrels(qrels_path)
    return Collection(
        name=f"r2med/{path.name}",
        load_queries=lambda: iter_queries(queries_path),
        load_docs=(lambda: iter_docs(corpus)) if corpus else None,
        load_qrels=lambda: qrels,
        source=str(path),
        store_key=files_key([corpus], "beir.iter_docs") if corpus else None,
    )
