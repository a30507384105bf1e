"""Small SFT/RL sets built from a collection's qrels (for tests, smoke runs and the LoRA benchmark).

This is NOT ReasonRank's training data (teacher-distilled reasoning chains and rankings from the
synthesis stage). Here each window is a query's BM25 top candidates; the target ranking puts the
judged-relevant passages first (in BM25 order) and keeps the rest in BM25 order, and the
"reasoning" is a one-line template naming the relevant passages. Rows say so in `dataset`
(`<name>-qrels-template`). Prompts come from the real PromptRenderer, so they are the prompts the
reranker sends at inference.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Sequence

from reasonrank.parsing import format_permutation
from reasonrank.types import Candidate, Query


def qrels_permutation(docids: Sequence[str], relevant: Iterable[str]) -> list[int]:
    """0-based window positions: relevant passages first, each group in window order."""
    rel = set(relevant)
    return [i for i, d in enumerate(docids) if d in rel] + [i for i, d in enumerate(docids) if d not in rel]


def templated_reasoning(query: str, docids: Sequence[str], relevant: Iterable[str]) -> str:
    rel = set(relevant)
    hits = [f"[{i + 1}]" for i, d in enumerate(docids) if d in rel]
    if not hits:
        return "None of the passages addresses the query directly, so the passages keep their order."
    if len(hits) == 1:
        return f"Passage {hits[0]} addresses the query directly; the other passages are less relevant."
    which = ", ".join(hits[:-1]) + " and " + hits[-1]
    return f"Passages {which} address the query directly; the other passages are less relevant."


def completion_text(reasoning: str, perm: Sequence[int]) -> str:
    return f"<think>{reasoning}</think>\n<answer>{format_permutation(list(perm))}</answer>"


def build_windows(
    queries: Sequence[Query],
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    docs: Mapping[str, Any] | Any,
    window: int = 10,
    ensure_relevant: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One window per judged query: the BM25 top `window` candidates.

    With `ensure_relevant`, a window whose candidates hold no relevant passage gets one relevant
    passage swapped in at a random position (seeded) — training windows need a positive; leave it
    off for evaluation. `docs` maps docid → Document (or is a Collection: `.doc(docid)`).
    """
    rng = random.Random(seed)
    get = docs.doc if hasattr(docs, "doc") else docs.__getitem__
    out = []
    for q in queries:
        judged = {d for d, r in qrels.get(q.qid, {}).items() if r > 0}
        ranked = sorted(run.get(q.qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        if not judged or len(ranked) < window:
            continue
        docids = [d for d, _ in ranked[:window]]
        scores = dict(ranked)
        if ensure_relevant and not judged & set(docids):
            pos = rng.randrange(window)
            docids[pos] = sorted(judged)[0]
        cands = []
        for d in docids:
            doc = get(d)
            cands.append(Candidate(d, float(scores.get(d, 0.0)), doc.text, doc.title))
        out.append({"query": q, "candidates": cands, "relevant": sorted(judged)})
    return out


def sft_and_rl_rows(windows: Sequence[dict[str, Any]], renderer, dataset: str) -> tuple[list[dict], list[dict]]:
    """(SFT rows, RL rows) in the export formats of reasonrank.training.data."""
    sft, rl = [], []
    for w in windows:
        q: Query = w["query"]
        docids = [c.docid for c in w["candidates"]]
        perm = qrels_permutation(docids, w["relevant"])
        messages = renderer.messages(q.text, w["candidates"])
        reasoning = templated_reasoning(q.text, docids, w["relevant"])
        rid = f"{q.qid}"
        sft.append({"messages": messages + [{"role": "assistant", "content": completion_text(reasoning, perm)}],
                    "id": rid, "dataset": dataset})
        rl.append({"prompt": messages, "ground_truth": [p + 1 for p in perm], "initial_list": docids,
                   "relevant_docids": list(w["relevant"]), "id": rid, "dataset": dataset})
    return sft, rl


def collection_rows(collection, renderer, n_queries: int, window: int = 10, offset: int = 0,
                    ensure_relevant: bool = True, seed: int = 0, dataset: str | None = None):
    """(windows, SFT rows, RL rows) for judged queries `offset : offset + n_queries` of a collection,
    candidates from BM25 (the saved index is reused). Queries with fewer than `window` BM25 hits are
    skipped, so fewer rows may come back."""
    from reasonrank.retrieval.bm25 import BM25Index

    qrels = collection.qrels()
    queries = [q for q in collection.queries() if q.qid in qrels][offset: offset + n_queries]
    run = BM25Index.for_collection(collection).search(queries, k=window, show_progress=False)
    windows = build_windows(queries, run, qrels, collection, window, ensure_relevant, seed)
    name = dataset or f"{collection.name.replace('/', '-')}-qrels-template"
    sft, rl = sft_and_rl_rows(windows, renderer, name)
    return windows, sft, rl
