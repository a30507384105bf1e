"""TREC run files (plain or .gz), streamed line by line; qrels live in io/qrels.py."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

from reasonrank.errors import FormatError
from reasonrank.io.common import lines, open_text
from reasonrank.io.qrels import Qrels, check_id, iter_qrels, read_qrels, write_qrels

Run = dict[str, dict[str, float]]  # qid -> docid -> score, each query in file order

__all__ = ["Qrels", "Run", "iter_qrels", "iter_run", "run_writer", "iter_run_queries", "ranked", "read_qrels", "read_run", "write_qrels", "write_run"]


def split_run_line(path, lineno: int, line: str) -> tuple[str, str, str, str]:
    """(qid, docid, rank, score) of `qid Q0 docid rank score tag`.

    Real doc ids can hold spaces (BRIGHT stackoverflow: `.../Memory Management_1_0.txt`), so the id
    is whatever lies between the two leading and three trailing fields, inner spacing kept.
    """
    n = len(line.split())
    if n < 6:
        raise FormatError(path, lineno, f"a run line needs 6 fields (qid Q0 docid rank score tag), found {n}")
    qid, _, rest = line.split(maxsplit=2)
    docid, rank, score, _ = rest.rsplit(maxsplit=3)
    return qid, docid, rank, score


def parse_score(path, lineno: int, rank: str, score: str) -> float:
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
    return value


def _run_lines(path: str | Path) -> Iterator[tuple[int, str, str, float]]:
    """(line number, qid, docid, score) of each run line."""
    seen = False
    for lineno, line in lines(path):
        if not line.strip():
            continue
        qid, docid, rank, score = split_run_line(path, lineno, line)
        seen = True
        yield lineno, qid, docid, parse_score(path, lineno, rank, score)
    if not seen:
        raise FormatError(path, None, "empty file: no run lines")


def iter_run(path: str | Path) -> Iterator[tuple[str, str, float]]:
    """Yield (qid, docid, score) from a `qid Q0 docid rank score tag` file."""
    for _, qid, docid, score in _run_lines(path):
        yield qid, docid, score


def iter_run_queries(path: str | Path) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Yield (qid, its (docid, score) pairs best first) one query at a time, in file order.

    Reads the file once and holds one query's lines (and the ids of the queries done): a run of any
    size streams. The pairs are what `ranked(read_run(path)[qid])` gives (a repeated doc id keeps its
    first place and its last score). TREC runs list each query's lines together; a query that comes
    back after another began is refused, since streaming would split it in two."""
    done: set[str] = set()
    qid, docs = None, {}
    for lineno, q, docid, score in _run_lines(path):
        if q != qid:
            if qid is not None:
                done.add(qid)
                yield qid, ranked(docs)
            if q in done:
                raise FormatError(path, lineno, f"query {q!r} appears again after other queries: a run must list each "
                                  "query's lines together; sort it by query first, keeping each query's order "
                                  "(e.g. `sort -s -k1,1 run > sorted`)")
            qid, docs = q, {}
        docs[docid] = score
    if qid is not None:
        yield qid, ranked(docs)


def read_run(path: str | Path) -> Run:
    run: Run = {}
    for qid, docid, score in iter_run(path):
        run.setdefault(qid, {})[docid] = score
    return run


def ranked(run_for_query: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's (docid, score) pairs best first; ties keep file order."""
    return sorted(run_for_query.items(), key=lambda kv: -kv[1])


def check_run(path, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """Refuse, before a byte is written, what read_run could not give back."""
    check_id(path, "run tag", tag, inner_spaces=False)
    for qid, docs in run.items():
        check_id(path, "query id", str(qid), inner_spaces=False)
        for docid in docs:
            check_id(path, "doc id", str(docid))


@contextlib.contextmanager
def run_writer(path: str | Path, tag: str = "reasonrank") -> Iterator[Callable[[str, Mapping[str, float]], None]]:
    """`write(qid, {docid: score})` one query at a time, so a long run is never held whole. Written to
    `<path>.partial` and moved into place when the block ends without error: a run file that exists
    is complete (a killed run leaves only the .partial, which its rerun replaces)."""
    path = Path(path)
    check_id(path, "run tag", tag, inner_spaces=False)
    partial = path.with_name(path.name + ".partial" + (".gz" if path.suffix == ".gz" else ""))  # still gzip by name
    with open_text(partial, "wt") as fh:

        def write(qid: str, docs: Mapping[str, float]) -> None:
            check_run(path, {qid: docs}, tag)
            for rank, (docid, score) in enumerate(ranked(docs), 1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")

        yield write
    os.replace(partial, path)


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "reasonrank") -> None:
    check_run(path, run, tag)
    with open_text(path, "wt") as fh:
        for qid, docs in run.items():
            for rank, (docid, score) in enumerate(ranked(docs), 1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
