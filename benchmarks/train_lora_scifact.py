"""LoRA SFT of the embedded Qwen2.5-Coder-0.5B-Instruct on SciFact windows, before vs after.

    .venv/bin/python benchmarks/train_lora_scifact.py [--samples 300] [--test-queries 50] [--out runs/lora-scifact]

What it does, on the CPU, with no network:
1. GGUF → plain fp32 weights (once, kept beside the GGUF as `<file>.hf/`).
2. Training windows: the first `--samples` judged SciFact *train* queries, BM25 top `--window`
   candidates, prompts from the real PromptRenderer (reasonrank mode). Targets come from the
   qrels, NOT from a teacher: relevant passages first (BM25 order), the rest in BM25 order, and
   a one-line templated "reasoning" naming the relevant passages. A training window with no
   relevant passage in its BM25 top gets one swapped in at a seeded random position.
3. LoRA SFT (r = alpha = --lora-r, all linear layers, loss on the answer only) via
   reasonrank.training.train_sft, merged into a plain model directory.
4. Held-out: the first `--test-queries` judged SciFact *test* queries, BM25 top `--window`
   as-is. The base and the trained model each rerank every window once (greedy, batched); reported:
   format-valid rate (think/answer tags), complete-permutation rate, mean multi-view reward
   (reasonrank.reward, ground truth = qrels order), and nDCG@10 of the reranked windows against
   the test qrels (an unusable reply keeps BM25 order, as the reranker does), next to BM25's.
Wall times of each phase and the command line go into `<out>/report.json`.

Measured (a reduced run; 2 shared CPU cores, load average ~5 from other jobs, 2026-11-27):

    .venv/bin/python benchmarks/train_lora_scifact.py --samples 32 --test-queries 16 --window 4 \\
        --max-passage-tokens 24 --max-new-tokens 64 --lr 3e-4 --batch-size 8 --out /tmp/rr/bench-reduced

    16 held-out test windows (13 hold a relevant passage)   before    after (32 steps, LoRA r=16)
    format-valid rate                                          0.19     1.00
    complete-permutation rate                                  0.19     1.00
    mean reward                                               -0.67     0.78
    nDCG@10 of the reranked windows                            0.552    0.554   (BM25 window order: 0.718)
    train loss 0.65 (step 5) -> 0.03 (step 32); wall: eval before 578 s, train 1584 s, eval after 306 s,
    total 41 min (GGUF conversion was cached; it takes ~80 s the first time).

32 templated windows teach the output format, not relevance: the trained model answers in the
right format every time but ranks no better than the base model and worse than BM25. The full
default run (300 windows, 50 test queries) is ~5x longer on this machine and was not run.
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

DATA = Path(os.environ.get("REASONRANK_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def generate(model_dir: str, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[tuple[str, str]]:
    """Greedy replies (text, finish_reason) from a plain HF model dir, batched with left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i: i + batch_size]
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            stopped = any(t in eos for t in row)
            out.append((tok.decode(row, skip_special_tokens=True), "stop" if stopped else "length"))
        print(f"  generated {len(out)}/{len(prompts)}", file=sys.stderr, flush=True)
    return out


def score(windows, replies, qrels) -> dict:
    from reasonrank.evaluation import evaluate
    from reasonrank.parsing import parse_ranking
    from reasonrank.reward import FORMAT, answer_ids, ranking_reward
    from reasonrank.training.qrels_data import qrels_permutation

    run, rewards, valid, complete = {}, [], 0, 0
    for w, (text, finish) in zip(windows, replies):
        docids = [c.docid for c in w["candidates"]]
        truth = [p + 1 for p in qrels_permutation(docids, w["relevant"])]
        rewards.append(ranking_reward(text, truth, docids, w["relevant"]))
        if FORMAT.search(text):
            valid += 1
            ids = answer_ids(text)
            complete += sorted(ids) == list(range(1, len(docids) + 1))
        order = [docids[p] for p in parse_ranking(text, len(docids), finish).permutation]
        run[w["query"].qid] = {d: float(len(order) - i) for i, d in enumerate(order)}
    n = len(windows)
    judged = {q: qrels[q] for q in run}
    return {"format_valid_rate": valid / n, "complete_permutation_rate": complete / n, "mean_reward": sum(rewards) / n,
            "nDCG@10": evaluate(run, judged, ["nDCG@10"]).aggregate["nDCG@10"]}


def bm25_ndcg(windows, qrels) -> float:
    from reasonrank.evaluation import evaluate

    run = {w["query"].qid: {c.docid: float(len(w["candidates"]) - i) for i, c in enumerate(w["candidates"])} for w in windows}
    return evaluate(run, {q: qrels[q] for q in run}, ["nDCG@10"]).aggregate["nDCG@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="training windows (SciFact train queries)")
    parser.add_argument("--test-queries", type=int, default=50, help="held-out SciFact test queries")
    parser.add_argument("--window", type=int, default=5, help="passages per window")
    parser.add_argument("--max-passage-tokens", type=int, default=40)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="generation batch")
    parser.add_argument("--model", default=None, help="GGUF or model dir (default: the embedded Qwen2.5-Coder-0.5B GGUF)")
    parser.add_argument("--out", type=Path, default=Path("runs/lora-scifact"))
    parser.add_argument("--resume", action="store_true", help="resume training from the last checkpoint in --out")
    args = parser.parse_args()

    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer
    from reasonrank.tokenizer import load_tokenizer
    from reasonrank.training import resolve_model, train_sft, write_rows
    from reasonrank.training.models import default_gguf
    from reasonrank.training.qrels_data import collection_rows

    started = time.perf_counter()
    times: dict[str, float] = {}
    report: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only",
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "targets": "qrels-derived (relevant first, BM25 order otherwise) with a templated one-line reasoning; "
                               "not teacher-distilled ReasonRank data"}
    args.out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    gguf = Path(args.model) if args.model else default_gguf()
    base_dir = resolve_model(gguf)
    times["gguf_to_plain_weights"] = time.perf_counter() - t

    t = time.perf_counter()
    tok = load_tokenizer(str(gguf)) if str(gguf).endswith(".gguf") else load_tokenizer(base_dir)
    renderer = PromptRenderer(tok, mode="reasonrank", max_passage_tokens=args.max_passage_tokens)
    train_coll = load_collection(DATA / "scifact", split="train")
    _, sft_rows, rl_rows = collection_rows(train_coll, renderer, args.samples, window=args.window, ensure_relevant=True)
    test_coll = load_collection(DATA / "scifact", split="test")
    test_windows, _, _ = collection_rows(test_coll, renderer, args.test_queries, window=args.window, ensure_relevant=False)
    sft_path = write_rows(args.out / "sft.jsonl", sft_rows)
    write_rows(args.out / "rl.jsonl", rl_rows)
    prompts = [renderer.render(w["query"].text, w["candidates"]).text for w in test_windows]
    qrels = test_coll.qrels()
    with_relevant = sum(bool(set(w["relevant"]) & {c.docid for c in w["candidates"]}) for w in test_windows)
    report["data"] = {"train_windows": len(sft_rows), "test_windows": len(test_windows),
                      "test_windows_with_a_relevant_passage": with_relevant,
                      "bm25_window_nDCG@10": bm25_ndcg(test_windows, qrels)}
    times["data"] = time.perf_counter() - t
    print(json.dumps(report["data"]), file=sys.stderr)

    t = time.perf_counter()
    print("before: generating", file=sys.stderr)
    report["before"] = score(test_windows, generate(base_dir, prompts, args.max_new_tokens, args.batch_size), qrels)
    times["eval_before"] = time.perf_counter() - t
    print(json.dumps(report["before"]), file=sys.stderr)

    t = time.perf_counter()
    result = train_sft(base_dir, sft_path, args.out / "model", preset="cpu-tiny", resume_from_checkpoint=True if args.resume else None,
                       overrides={"lora": {"r": args.lora_r, "lora_alpha": args.lora_r, "lora_dropout": 0.0,
                                           "target_modules": "all-linear"},
                                  "max_steps": -1, "num_train_epochs": args.epochs, "learning_rate": args.lr,
                                  "per_device_train_batch_size": 1, "save_steps": 50, "logging_steps": 5})
    times["train"] = time.perf_counter() - t
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    mean_loss = next((h["train_loss"] for h in result.log_history if "train_loss" in h), None)
    report["train"] = {"steps": result.global_step, "mean_train_loss": mean_loss, "first_logged_loss": losses[0] if losses else None,
                       "last_logged_loss": losses[-1] if losses else None, "model_dir": str(result.model_dir),
                       "max_tokens": result.data.max_tokens}

    t = time.perf_counter()
    print("after: generating", file=sys.stderr)
    replies = generate(str(result.model_dir), prompts, args.max_new_tokens, args.batch_size)
    report["after"] = score(test_windows, replies, qrels)
    report["after_example_reply"] = replies[0][0][:300] if replies else ""
    times["eval_after"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - started
    report["seconds"] = {k: round(v, 1) for k, v in times.items()}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
