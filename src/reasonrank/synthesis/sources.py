"""Stage 1: queries and a corpus per domain, from the user's files.

A `SourceSpec` names a domain and where its data lives:

* a BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): the split's judged queries;
* a BRIGHT root (examples/<task>.jsonl[.gz] or parquet, documents/<task>...) with `task`: the
  examples rows; `gold_answer` becomes the reference answer, `excluded_ids` are kept out of the
  candidates;
* an R2MED task directory;
* a JSONL file of query rows (plain `{"id", "query", "answer"?}` or BRIGHT-style rows with
  `gold_answer`, `gold_ids`, `excluded_ids`) plus `corpus`, a JSONL corpus (`_id`/`id`/`docid`,
  `text`/`contents`/`content`, optional `title`).

Judged relevant ids, where the source has them (qrels, `gold_ids`), are carried along for
diagnostics only (how well the mined positives agree with them); mining never sees them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from reasonrank.errors import ReasonRankError
from reasonrank.io import Collection, load_collection
from reasonrank.io.common import field, read_jsonl
from reasonrank.types import Query

QUERY_ID_FIELDS = ("id", "_id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("query", "text", "question")
ANSWER_FIELDS = ("answer", "gold_answer", "reference_answer", "reference")
GOLD_FIELDS = ("gold_ids", "relevant_docids", "positive_ids")


@dataclass
class SourceSpec:
    domain: str  # the name kept on every record (the released data's `dataset`)
    path: str  # BEIR dir, BRIGHT root, R2MED dir, or a JSONL file of query rows
    corpus: str | None = None  # corpus JSONL, for a query-rows file
    task: str | None = None  # BRIGHT task
    split: str = "train"  # BEIR qrels split whose queries are used
    limit: int | None = None  # at most this many queries (file order)

    def __post_init__(self):
        from reasonrank.synthesis.store import check_domain

        check_domain(self.domain)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SourceSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ReasonRankError(f"source spec: unknown field(s) {sorted(unknown)} (known: {sorted(known)})")
        if not data.get("domain") or not data.get("path"):
            raise ReasonRankError(f"source spec needs 'domain' and 'path': {data}")
        return cls(**data)


@dataclass
class SourceQuery:
    domain: str
    qid: str
    query: str
    answer: str = ""
    gold: list[str] | None = None  # judged relevant ids, diagnostics only
    excluded: list[str] | None = None  # ids never to use as candidates (BRIGHT excluded_ids)


def _rows_collection(spec: SourceSpec) -> tuple[Collection, list[SourceQuery]]:
    path = Path(spec.path)
    if not spec.corpus:
        raise ReasonRankError(f"domain {spec.domain!r}: {path} is a query file; give its corpus JSONL (corpus=...)")
    from reasonrank.io.beir import iter_docs

    corpus = Path(spec.corpus)
    if not corpus.exists():
        raise FileNotFoundError(f"{corpus}: no such file")
    queries: list[SourceQuery] = []
    for lineno, row in read_jsonl(path):
        qid = str(field(path, lineno, row, *QUERY_ID_FIELDS))
        text = field(path, lineno, row, *QUERY_TEXT_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise ReasonRankError(f"{path}:{lineno}: empty query text")
        answer = field(path, lineno, row, *ANSWER_FIELDS, required=False) or ""
        gold = field(path, lineno, row, *GOLD_FIELDS, required=False)
        excluded = row.get("excluded_ids")
        queries.append(SourceQuery(spec.domain, qid, text, _text(answer), _ids(gold, path, lineno), _ids(excluded, path, lineno)))
    qrels = {q.qid: dict.fromkeys(q.gold, 1) for q in queries if q.gold}
    coll = Collection(
        name=f"synth-{spec.domain}",
        load_queries=lambda: iter(Query(q.qid, q.query) for q in queries),
        load_docs=lambda: iter_docs(corpus),
        load_qrels=lambda: qrels,
        load_excluded=lambda: {q.qid: set(q.excluded or ()) for q in queries},
        source=str(corpus),
    )
    return coll, queries


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def _ids(value: Any, path, lineno) -> list[str] | None:
    if value is None:
        return None
    from reasonrank.io.bright import id_list

    return id_list(value, path, lineno, "ids")


def _bright_queries(spec: SourceSpec, coll: Collection) -> list[SourceQuery]:
    from reasonrank.io import bright

    qrels, excluded = coll.qrels(), coll.excluded()
    out = []
    for path, lineno, row in bright.iter_rows(bright.split_files(Path(spec.path), "examples", spec.task)):
        qid = str(field(path, lineno, row, "id"))
        out.append(SourceQuery(spec.domain, qid, field(path, lineno, row, "query"), _text(row.get("gold_answer")),
                               sorted(qrels.get(qid, {})), sorted(excluded.get(qid, ()))))
    return out


def open_source(spec: SourceSpec) -> tuple[Collection, list[SourceQuery]]:
    """The domain's collection (documents, for retrieval and prompts) and its queries."""
    path = Path(spec.path)
    if path.is_file():
        coll, queries = _rows_collection(spec)
    elif path.is_dir():
        coll = load_collection(path, task=spec.task, split=spec.split)
        if (path / "examples").is_dir():
            queries = _bright_queries(spec, coll)
        else:
            qrels = coll.qrels()
            queries = [SourceQuery(spec.domain, q.qid, q.text, "", sorted(d for d, r in qrels.get(q.qid, {}).items() if r > 0))
                       for q in coll.queries()]
        if not coll.has_docs:
            raise ReasonRankError(f"domain {spec.domain!r}: {coll.source}: the corpus texts are needed for synthesis")
    else:
        raise FileNotFoundError(f"domain {spec.domain!r}: {path}: no such file or directory")
    seen: set[str] = set()
    unique = []
    for q in queries:
        if q.qid in seen:
            raise ReasonRankError(f"domain {spec.domain!r}: query id {q.qid!r} appears twice in {spec.path}")
        seen.add(q.qid)
        unique.append(q)
    if spec.limit is not None:
        unique = unique[: max(0, spec.limit)]
    return coll, unique


def iter_query_records(spec: SourceSpec) -> Iterator[dict[str, Any]]:
    from reasonrank.synthesis.store import sample_id

    _, queries = open_source(spec)
    for q in queries:
        yield {
            "id": sample_id(q.domain, q.qid),
            "dataset": q.domain,
            "qid": q.qid,
            "query": q.query,
            "answer": q.answer,
            "gold_docids": q.gold,
            "excluded_docids": q.excluded or [],
        }
