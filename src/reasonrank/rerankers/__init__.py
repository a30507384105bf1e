"""Rerankers: requests in, results out. `Reranker(...)` builds one from a `reasonrank.spec.RerankerSpec`."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from reasonrank.errors import UnknownIdError
from reasonrank.rerankers.listwise import ListwiseReranker, RunStats
from reasonrank.rerankers.tdpart import TopDownPartitionReranker
from reasonrank.types import Candidate, Query, Request, Result

METHODS = {"sliding": ListwiseReranker, "tdpart": TopDownPartitionReranker}  # the listwise methods (spec.build)


def Reranker(model: str | None = None, backend: str | None = None, **options):
    """A reasoning reranker: `build(RerankerSpec.from_options(model, backend, **options))`.

    With no model, the embedded Qwen2.5-Coder-0.5B GGUF on llama.cpp. `model` is a friendly name
    (`reasonrank model list`), a local path (GGUF file or HF directory) or a hub id; `backend` is
    llamacpp, hf, vllm or openai (guessed from the model when omitted). Options named like a
    `reasonrank.spec.RerankerSpec` field set it (`method="tdpart"`, `top_k=40`, `journal="x.jsonl"`,
    `max_new_tokens=...`); any other goes to the backend's constructor (`n_threads=2`, `base_url=...`).

    Over HTTP (openai), a known tokenizer (`tokenizer=`, the registry's for a friendly name, or else the
    server's own tokenize endpoints: vLLM, SGLang, llama.cpp) makes the prompt the exact text rendered
    here, sent to the completions endpoint with no server template, passages cut in model tokens. A
    server that can tokenize but not template (llama-cpp-python) gets chat messages with passages cut
    in its tokens; one with no tokenizer at all gets chat messages (the run summary says which).
    """
    from reasonrank.spec import RerankerSpec, build

    return build(RerankerSpec.from_options(model, backend, **options))


def requests_from_run(collection, run: Mapping[str, Mapping[str, float]], qids: Iterable[str] | None = None, depth: int | None = None) -> list[Request]:
    """Requests for the queries of a run, with passage texts looked up in the collection.

    Fails on a run doc id the collection does not hold, naming it: a silently missing passage would
    shift every window. Without `qids` the run's queries the collection lacks are skipped, but a run
    sharing none with it fails: it is a run of another collection, not an empty one."""
    queries = collection.query_dict()
    wanted = list(qids) if qids is not None else [q for q in run if q in queries]
    unknown = [q for q in wanted if q not in queries] if wanted else list(run)
    if unknown:
        raise UnknownIdError(_unknown_queries(collection, unknown))
    requests = []
    for qid in wanted:
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])[:depth]
        requests.append(Request(queries[qid], _candidates(collection, ranked)))
    return requests


def iter_requests(collection, run_path, qids: Iterable[str] | None = None, limit: int | None = None,
                  depth: int | None = None) -> Iterator[Request]:
    """requests_from_run's requests, streamed from a run file: each query is read, looked up and
    yielded in turn, so memory holds one query's candidates whatever the size of the run or corpus.
    The collection's queries are held in a dict (queries are small next to documents); the run must
    list each query's lines together (`reasonrank.io.trec.iter_run_queries`).

    Requests come in run order. `qids` keeps only those queries, all of which must be the
    collection's; those the run lacks come last, with no candidates (as requests_from_run gives
    them). `limit` yields only the first N (the CLI's `--queries N`); those must all be the
    collection's, the first unknown one failing. With neither, the run's queries the collection lacks
    are skipped, and a run sharing none with it fails once read through."""
    from reasonrank.io.trec import iter_run_queries

    if limit is not None and limit <= 0:
        return
    queries = collection.query_dict()
    wanted = dict.fromkeys(qids) if qids is not None else None  # ordered, and O(1) to test and drop
    unknown = [q for q in wanted or () if q not in queries]
    if unknown:
        raise UnknownIdError(_unknown_queries(collection, unknown))
    skipped: list[str] = []  # the first few unknown ones, for the error when none is known
    yielded = 0
    for qid, ranked in iter_run_queries(run_path):
        if wanted is not None:
            if qid not in wanted:
                continue
            del wanted[qid]  # what is left at the end is what the run lacks
        if qid not in queries:
            if limit is not None:
                raise UnknownIdError(_unknown_queries(collection, [qid]))
            if len(skipped) < 5:
                skipped.append(qid)
            continue
        yield Request(queries[qid], _candidates(collection, ranked[:depth]))
        yielded += 1
        if yielded == limit:
            return
    if wanted is None and not yielded:
        raise UnknownIdError(_unknown_queries(collection, skipped))
    for qid in wanted or ():
        yield Request(queries[qid], [])
        yielded += 1
        if yielded == limit:
            return


def _unknown_queries(collection, qids: list[str]) -> str:
    return f"{collection.name}: run has unknown query ids {qids[:5]} (is it a run of another collection?)"


def _candidates(collection, ranked: list[tuple[str, float]]) -> list[Candidate]:
    """A query's ranked (docid, score) pairs as candidates, the passages found in one batched lookup."""
    try:
        docs = collection.docs_by_ids(d for d, _ in ranked)
    except KeyError as exc:
        raise UnknownIdError(f"{exc.args[0]} in the run (is it a run of another collection?)") from None
    return [docs[d].to_candidate(s) for d, s in ranked]


def results_to_run(results: Iterable[Result]) -> dict[str, dict[str, float]]:
    """A TREC-style run from results; candidates beyond the reranked depth keep their order below."""
    return {r.query.qid: {c.docid: c.score for c in r.candidates} for r in results}


__all__ = ["Candidate", "ListwiseReranker", "METHODS", "TopDownPartitionReranker", "Query", "Reranker", "Request", "Result", "RunStats", "iter_requests", "requests_from_run", "results_to_run"]
