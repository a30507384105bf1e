"""BM25 (bm25s + PyStemmer) on BEIR SciFact: index time, queries/second, quality.

    .venv/bin/python benchmarks/bm25_scifact.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from reasonrank.evaluation import evaluate, format_table
from reasonrank.io import load_collection
from reasonrank.retrieval import BM25Index

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    coll = load_collection(DATA / "scifact")
    docs = list(coll.docs())
    queries = list(coll.queries())
    index_times, search_times = [], []
    for _ in range(args.repeats):
        index = BM25Index.build(docs)
        index_times.append(index.index_seconds)
        start = time.perf_counter()
        run = index.search(queries, k=100, show_progress=False)
        search_times.append(time.perf_counter() - start)
    agg = evaluate(run, coll.qrels(), ["nDCG@10", "Recall@100"]).aggregate
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"docs {len(docs)}, queries {len(queries)}, best of {args.repeats}")
    print(f"{'index seconds':<22}{min(index_times):>10.2f}")
    print(f"{'index docs/s':<22}{len(docs) / min(index_times):>10.0f}")
    print(f"{'search seconds (k=100)':<22}{min(search_times):>10.3f}")
    print(f"{'queries/s':<22}{len(queries) / min(search_times):>10.0f}")
    print(format_table({"bm25 scifact/test": agg}, ["nDCG@10", "Recall@100"]))


if __name__ == "__main__":
    main()
