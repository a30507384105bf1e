"""Listwise reranking speed of the embedded model on this machine (llama.cpp, CPU).

    .venv/bin/python benchmarks/rerank_embedded.py [--queries 3] [--top-k 20] [--max-new-tokens 256]

Prints seconds per window, prompt and generated tokens/s, and the framework's own overhead
(everything but the model call: rendering, parsing, journaling) as a share of wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from reasonrank.io import load_collection
from reasonrank.rerankers import Reranker, requests_from_run
from reasonrank.retrieval import BM25Index

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    coll = load_collection(DATA / "scifact")
    queries = list(coll.queries())[: args.queries]
    run = BM25Index.for_collection(coll).search(queries, k=args.top_k, show_progress=False)
    requests = requests_from_run(coll, run, [q.qid for q in queries], depth=args.top_k)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        reranker = Reranker(None, "llamacpp", max_passage_tokens=100, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                            journal=Path(tmp) / "traces.jsonl", **({"n_threads": args.threads} if args.threads else {}))
        load_seconds = time.perf_counter() - start
        results = reranker.rerank_batch(requests)
        reranker.close()
    # Prefill and decode speeds apart: the same prompt first with a 1-token budget (all prefill), then
    # with the full budget; llama-cpp-python reuses the cached prefix, so the second call is ~all decode.
    from reasonrank.backends.base import SamplingParams

    engine = reranker.backend.__class__(reranker.backend.model_path, n_threads=reranker.backend.n_threads)
    prompt = reranker.renderer.render(requests[0].query.text, requests[0].candidates[: args.top_k])
    t0 = time.perf_counter()
    pre = engine.generate([prompt], SamplingParams(max_new_tokens=1))[0]
    t1 = time.perf_counter()
    dec = engine.generate([prompt], SamplingParams(max_new_tokens=args.max_new_tokens))[0]
    t2 = time.perf_counter()
    engine.close()
    s = reranker.stats
    traces = [t for r in results for t in r.traces]
    prompt_s = sum(t.prompt_tokens for t in traces)
    gen = sum(t.completion_tokens for t in traces)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model: embedded Qwen2.5-Coder-0.5B Q4_K_M via llama.cpp")
    print(f"queries {len(requests)}, top-k {args.top_k}, windows {s.windows}, max new tokens {args.max_new_tokens}, model load {load_seconds:.1f}s")
    rows = [
        ("seconds per window", s.model_seconds / max(s.windows, 1)),
        ("prompt tokens per window", prompt_s / max(s.windows, 1)),
        ("generated tokens per window", gen / max(s.windows, 1)),
        ("tokens/s (prompt+generated)", (prompt_s + gen) / max(s.model_seconds, 1e-9)),
        ("generated tokens/s (incl. prefill)", gen / max(s.model_seconds, 1e-9)),
        ("prompt tokens/s (prefill alone)", pre.prompt_tokens / max(t1 - t0, 1e-9)),
        ("generated tokens/s (decode alone)", max(dec.completion_tokens - 1, 0) / max(t2 - t1, 1e-9)),
        ("wall seconds", s.wall_seconds),
        ("framework overhead share (%)", 100 * (s.wall_seconds - s.model_seconds) / max(s.wall_seconds, 1e-9)),
    ]
    for name, value in rows:
        print(f"{name:<38}{value:>12.3f}")
    print("parse status:", dict(s.status))


if __name__ == "__main__":
    main()
