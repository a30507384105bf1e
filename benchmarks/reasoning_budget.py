"""Reasoning on a budget (issue 21): what a tight reasoning budget does to the windows under
`--on-truncation keep`, `paper` and `force`, and what the forced answers cost, on the embedded model.

    .venv/bin/python benchmarks/reasoning_budget.py [--queries 6] [--budgets 16,32,64,128] [--threads 1]

Every (budget, policy) runs the real reranker (`build(RerankerSpec(...))`, sliding, top-10 of BM25 on
SciFact, one window of 10 per query) on one shared llama.cpp engine; the runs take turns query by query, so
llama.cpp's KV cache holds each query's prompt across its runs (the first run of a query pays its prompt,
the others and the forced answers reuse it), and a change of machine load hits every setting alike.

Same first part for every setting. llama.cpp's output depends slightly on how a prompt's tokens were
batched (a prompt evaluated whole and one whose last token is replayed on a cached prefix can differ in a
late greedy token), so before each setting's run the query's prompt is put in the KV cache followed by one
extra token (`<|im_end|>`): every setting then reuses the same cached prompt and replays its last token,
and the first parts of keep, paper and force are token for token the same (checked: `first parts identical`).
That prompt evaluation is paid once per query and reported apart from the table.

The prompt. The embedded Qwen2.5-Coder-0.5B-Instruct is not a reasoning model: under the ReasonRank prompt
as rendered it answers at once (`[] > [1] > ... > [10]`, ~42 tokens), which no reasoning budget with the
paper's 100-token answer budget ever cuts (`--prompt as-rendered` shows it). So the main table opens the
think block in the prompt (`--prompt think-open`: the rendered prompt ends in `<think>\\n`, as
DeepSeek-R1-style reasoning templates end): the model then writes 50-150 tokens of prose about the
passages before it stops, which a budget can cut. Its prose carries no `<think>` tag of its own, so the
parser reads an uncut reply as an untagged answer (repaired when it names a passage, else no_answer) and a
cut one as truncated.

`--efforts` adds the --effort presets (low/medium/high: 256/1024/3072 reasoning tokens) under force, to
measure what each costs on this model. Writes benchmarks/results/reasoning_budget.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from reasonrank.compare import bm25_requests, sample_queries
from reasonrank.evaluation import evaluate
from reasonrank.io import load_collection
from reasonrank.parsing import MODEL_ORDER
from reasonrank.rerankers import results_to_run
from reasonrank.spec import EFFORT_BUDGETS, RerankerSpec, build

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REASONRANK_DATA") or ROOT.parent / "shared" / "data")
POLICIES = ("keep", "paper", "force")


class OpenThink:
    """The embedded model's tokenizer whose chat template ends the generation prompt with `<think>\\n`."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def apply_chat_template(self, *args, **kwargs):
        return self._tokenizer.apply_chat_template(*args, **kwargs) + "<think>\n"


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--budgets", default="16,32,64,128")
    parser.add_argument("--answer-budget", type=int, default=100)
    parser.add_argument("--prompt", choices=("think-open", "as-rendered"), default="think-open")
    parser.add_argument("--efforts", action="store_true", help="Also run --effort low/medium/high under force.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--machine-note", default="")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "reasoning_budget.md")
    args = parser.parse_args()

    from reasonrank.backends.llamacpp import LlamaCppBackend
    from reasonrank.backends.models import embedded_path
    from reasonrank.prompts import PromptRenderer
    from reasonrank.tokenizer import load_tokenizer

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    started, load_start = time.perf_counter(), load()
    coll = load_collection(DATA / "scifact")
    queries = sample_queries(coll, args.queries, args.seed)
    requests = bm25_requests(coll, queries, args.depth)
    first_stage = {r.query.qid: {c.docid: c.score for c in r.candidates} for r in requests}
    engine = LlamaCppBackend(embedded_path(), n_ctx=8192, n_threads=args.threads)  # effort high: ~1.2k prompt + 3,172
    tokenizer = load_tokenizer(str(embedded_path()))
    renderer = PromptRenderer(OpenThink(tokenizer) if args.prompt == "think-open" else tokenizer, "reasonrank",
                              max_passage_tokens=100)
    settings = [(f"reasoning {b}", dict(reasoning_budget=b), policy) for b in map(int, args.budgets.split(","))
                for policy in POLICIES]
    if args.efforts:
        settings += [(f"effort {e} ({EFFORT_BUDGETS[e]})", dict(effort=e), "force") for e in EFFORT_BUDGETS]
    rerankers = {(name, policy): build(RerankerSpec(top_k=args.depth, window=args.depth, answer_budget=args.answer_budget,
                                                    on_truncation=policy, mode="reasonrank", **fields),
                                       backend=engine, renderer=renderer)
                 for name, fields, policy in settings}
    results = {key: [] for key in rerankers}
    prompt_seconds = 0.0
    from reasonrank.backends.base import SamplingParams
    from reasonrank.types import Prompt

    for n, request in enumerate(requests, 1):
        rendered = renderer.render(request.query.text, request.candidates[:args.depth])
        warm = Prompt(rendered.messages, rendered.text + "<|im_end|>")  # the prompt and one token more (see above)
        for i, (key, reranker) in enumerate(rerankers.items()):
            t0 = time.perf_counter()
            (gen,) = engine.generate([warm], SamplingParams(max_new_tokens=1))
            assert not gen.error, gen.error
            if i == 0:
                prompt_seconds += time.perf_counter() - t0
            results[key] += reranker.rerank_batch([request])
        print(f"[{time.perf_counter() - started:6.0f}s load {load()}] query {n}/{len(requests)} ({request.query.qid})", flush=True)

    by_budget: dict[str, set] = {}
    for (name, policy), rs in results.items():
        by_budget.setdefault(name, set()).add(tuple(t.raw_output for r in rs for t in r.traces))
    identical = all(len(v) == 1 for v in by_budget.values())
    qrels = coll.qrels()
    before = evaluate({q: first_stage[q] for q in first_stage}, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    rows, record = [], []
    for (name, policy), reranker in rerankers.items():
        s = reranker.stats.to_dict()
        status = Counter(s["parse_status"])
        windows = s["windows"]
        model = sum(status[k] for k in MODEL_ORDER)
        first_tokens = s["completion_tokens_per_query"] * s["queries"] - s["forced_completion_tokens"]
        first_seconds = sum(t.seconds for r in results[(name, policy)] for t in r.traces)
        ndcg = evaluate(results_to_run(results[(name, policy)]), qrels, ["nDCG@10"]).aggregate["nDCG@10"]
        rows.append(f"| {name} | {policy} | {windows} | {100 * model / windows:.0f}% | "
                    + " | ".join(str(status.get(k, 0)) for k in ("ok", "repaired", "forced", "truncated", "no_answer", "paper_fallback", "backend_error"))
                    + f" | {first_tokens / windows:.0f} | {first_seconds / windows:.1f} | "
                    + (f"{s['forced_calls']} | {s['forced_completion_tokens'] / max(s['forced_calls'], 1):.0f} | "
                       f"{s['forced_seconds'] / max(s['forced_calls'], 1):.2f} | "
                       f"{100 * s['forced_seconds'] / max(first_seconds, 1e-9):.0f}% |" if policy == "force" else "- | - | - | - |")
                    + f" {100 * ndcg:.2f} |")
        record.append({"setting": name, "policy": policy, "stats": s, "first_part_seconds": first_seconds, "ndcg@10": ndcg})
    total = time.perf_counter() - started
    table = "\n".join([
        "| budget | on_truncation | windows | model order | ok | repaired | forced | truncated | no_answer | paper_fallback | "
        "backend_error | gen. tokens/window (first part) | s/window (first part) | forced answers | tokens/forced answer | "
        "s/forced answer | forced s / first-part s | nDCG@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])
    print(table)
    md = [
        f"# Reasoning budget on the embedded model (SciFact, BM25 top-{args.depth}, {len(requests)} queries)", "",
        "Command (from the repository root, venv active):", "", "```", command, "```", "",
        "## Setup", "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, shared with other jobs; "
        f"load averages 1/5/15 min at the start {load_start}, at the end {load()}" + (f"; {args.machine_note}" if args.machine_note else ""),
        f"- embedded Qwen2.5-Coder-0.5B-Instruct Q4_K_M on llama.cpp, n_threads={args.threads}, greedy; ReasonRank prompt "
        f"(mode reasonrank), prompt {args.prompt}" + (" (the rendered prompt ends in `<think>\\n`: see the module docstring)" if args.prompt == "think-open" else ""),
        f"- sliding window of {args.depth} over BM25 top-{args.depth} (one window per query), passages cut to 100 tokens; "
        f"queries drawn with random.Random({args.seed}): {', '.join(q.qid for q in queries)}",
        f"- budgets: the first call may generate reasoning budget + answer budget ({args.answer_budget}) tokens; "
        f"a forced answer at most {args.answer_budget}",
        f"- every setting on one engine, taking turns query by query; each query's prompt evaluated once "
        f"({prompt_seconds / len(requests):.1f} s a query, not in the table); first parts identical across keep, paper and force "
        f"at each budget: {'yes' if identical else 'NO'}; total wall time {total / 60:.1f} min", "",
        "## Results", "", table, "",
        f"BM25 nDCG@10 on these queries: {100 * before:.2f}. `model order`: windows whose order the model made as an answer "
        "(ok, repaired, forced); the others fell back (truncated and no_answer keep the window's order, paper_fallback "
        "takes the numbers of the whole reply in first-mention order). `first part`: the window's own call; the forced "
        "answer is a second call on the same sequence, its prompt the first part's prompt plus the reasoning cut at its "
        "last complete sentence plus `</think>\\n<answer>` (llama.cpp reuses the KV cache of the common prefix).", "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(md), encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps({"command": command, "settings": vars(args) | {"output": str(args.output)},
                                                            "qids": [q.qid for q in queries], "bm25_ndcg@10": before,
                                                            "prompt_seconds_per_query": prompt_seconds / len(requests),
                                                            "first_parts_identical": identical,
                                                            "rows": record, "total_seconds": total}, indent=2, default=str))
    print(f"wrote {args.output}")
    for reranker in rerankers.values():
        reranker.journal.close()
    engine.close()


if __name__ == "__main__":
    main()
