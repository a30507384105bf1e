"""Rerank a run file into a run file, streamed: the CLI's `rerank` as a Python function.

    stats = rerank_run("../shared/data/scifact", "bm25.trec", "reranked.trec", RerankerSpec(ray="local", replicas=2))

Queries are read from the run a bounded group at a time (`active`), their documents looked up in the
collection's on-disk store (built once per corpus), reranked without a step barrier, and written as
each finishes in run order; nothing grows with the number of queries or the corpus but the journal's
compact index (a permutation and a status per window). The output file appears when the run is
complete; with a journal (`spec.journal`) a killed run resumes.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

from reasonrank.types import Request, Result


def rerank_run(collection, run: str | Path, output: str | Path, spec=None, *, queries: int | None = None,
               active: int | None = 256, reranker=None, on_result: Callable[[Request, Result], None] | None = None):
    """Rerank `run` (a TREC file) over `collection` (a Collection or a path) into `output`; the reranker's
    RunStats. `reranker`: one already built (its engine is then the caller's to close), else `spec` is
    built and closed here. `on_result(request, result)` sees each result as it is written (its window
    records, for a report)."""
    from reasonrank.io import load_collection, run_writer
    from reasonrank.rerankers import iter_requests
    from reasonrank.scoring import score_results
    from reasonrank.spec import RerankerSpec, build

    coll = load_collection(collection) if isinstance(collection, (str, Path)) else collection
    own = reranker is None
    if own:
        reranker = build(spec or RerankerSpec(), collection=coll.name)
    try:
        with run_writer(output, tag="reasonrank") as write:
            total = _expected_windows(reranker, run, queries) if reranker.spec.progress else None
            for request, result in paired(iter_requests(coll, run, limit=queries), reranker, active, total):
                # the scores every face reports (reasonrank.scoring): the spec's score_mode over the run's first-stage scores
                (scored,) = score_results(reranker.spec, [request], [result])
                write(scored.query.qid, {c.docid: c.score for c in scored.candidates})
                if on_result is not None:
                    on_result(request, result)
    finally:
        if own:
            reranker.close()
    return reranker.stats


def _expected_windows(reranker, run, queries: int | None) -> int | None:
    """The windows the run will take, for the progress bar: one more pass over the run file (a query at a
    time). None where a method's windows depend on the answers (tdpart) or it has no windows (pointwise)."""
    import itertools

    from reasonrank.io import iter_run_queries

    count = getattr(reranker, "expected_windows", None)
    if count is None or count(reranker.spec.top_k) is None:
        return None
    return sum(count(len(ranked)) for _, ranked in itertools.islice(iter_run_queries(run), queries))


def paired(requests: Iterable[Request], reranker, active: int | None, total_windows: int | None = None) -> Iterator[tuple[Request, Result]]:
    """(request, result) pairs as `reranker.rerank_stream` finishes them, the requests read once."""
    held: deque[Request] = deque()

    def feed():
        for request in requests:
            held.append(request)
            yield request

    for result in reranker.rerank_stream(feed(), active=active, total_windows=total_windows):
        yield held.popleft(), result


__all__ = ["paired", "rerank_run"]
