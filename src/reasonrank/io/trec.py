"""TREC run and qrels files (plain or .gz), streamed line by line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping

from reasonrank.errors import FormatError
from reasonrank.io.common import lines, open_text

Run = dict[str, dict[str, float]]  # qid -> docid -> score, each query in file order
Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance


def iter_run(path: str | Path) -> Iterator[tuple[str, str, float]]:
    """Yield (qid, docid, score) from a `qid Q0 docid rank score tag` file."""
    seen = False
    for lineno, line in lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise FormatError(path, lineno, f"a run line needs 6 fields (qid Q0 docid rank score tag), found {len(parts)}")
        qid, _, docid, rank, score, _ = parts
        try:
            int(rank)
        except ValueError:
            raise FormatError(path, lineno, f"rank {rank!r} is not an integer") from None
        try:
            value = float(score)
        except ValueError:
            raise FormatError(path, lineno, f"score {score!r} is not a number") from None
        if math.isnan(value):
            raise FormatError(path, lineno, "score is NaN")
        seen = True
        yield qid, docid, value
    if not seen:
        raise FormatError(path, None, "empty file: no run lines")


def read_run(path: str | Path) -> Run:
    run: Run = {}
    for qid, docid, score in iter_run(path):
        run.setdefault(qid, {})[docid] = score
    return run


def ranked(run_for_query: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's (docid, score) pairs best first; ties keep file order."""
    return sorted(run_for_query.items(), key=lambda kv: -kv[1])


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "reasonrank") -> None:
    with open_text(path, "wt") as fh:
        for qid, docs in run.items():
            for rank, (docid, score) in enumerate(ranked(docs), 1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def iter_qrels(path: str | Path) -> Iterator[tuple[str, str, int]]:
    """Yield (qid, docid, relevance) from TREC qrels (`qid iter docid rel`) or BEIR TSV (`qid docid rel`, header)."""
    seen = False
    for lineno, line in lines(path):
        parts = line.split()
        if not parts:
            continue
        if lineno == 1 and parts[0] in ("query-id", "query_id", "qid"):
            continue  # BEIR header
        if len(parts) == 4:
            qid, _, docid, rel = parts
        elif len(parts) == 3:
            qid, docid, rel = parts
        else:
            raise FormatError(
                path,
                lineno,
                f"a qrels line needs 4 fields (qid iter docid relevance) or 3 (qid docid relevance), found {len(parts)}",
            )
        try:
            value = int(float(rel))
        except ValueError:
            raise FormatError(path, lineno, f"relevance {rel!r} is not a number") from None
        seen = True
        yield qid, docid, value
    if not seen:
        raise FormatError(path, None, "empty file: no qrels lines")


def read_qrels(path: str | Path) -> Qrels:
    qrels: Qrels = {}
    for qid, docid, rel in iter_qrels(path):
        qrels.setdefault(qid, {})[docid] = rel
    return qrels


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    with open_text(path, "wt") as fh:
        for qid, docs in qrels.items():
            for docid, rel in docs.items():
                fh.write(f"{qid} 0 {docid} {rel}\n")
