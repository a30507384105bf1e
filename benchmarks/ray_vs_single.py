r"""The same rerank with the embedded model in one process and on 2 Ray replicas: what Ray costs on this machine.

    .venv/bin/python benchmarks/ray_vs_single.py [--queries 10] [--output benchmarks/results/ray_vs_single.md]

One job, run three times through the CLI, each in a fresh process with a fresh journal:

    reasonrank rerank -c ../shared/data/scifact --run <BM25 top-20> --queries 10 --top-k 20 --window 10 --step 5 \
        --max-new-tokens 32 --max-passage-tokens 96 --traces <new file> --journal-policy fresh  + one of
    * single, 2 threads:          --threads 2
    * Ray, 2 replicas x 1 thread: --ray local --replicas 2 --threads 1   (a local cluster started and stopped by the run)
    * single, 1 thread:           --threads 1   (reference: one replica's engine alone)

(3 windows a query, 30 windows; the embedded Qwen2.5-Coder-0.5B Q4_K_M on llama.cpp; the 32-token budget
cuts most windows, which then get a forced answer: a second call of at most 32 tokens on the cached prompt.)

Columns, per configuration:

* `process s`: the CLI's whole run (imports, model load, for Ray the cluster's start and stop, the rerank,
  evaluation) and `rerank s`: the rerank alone, the summary's seconds/query x queries (printed to 0.1 s a
  query, so +-0.5 s on 10 queries);
* `s/query` and `windows/s`: from `rerank s`;
* `engine s`: the sum over windows of the journal's `seconds` + `forced_seconds`, the time inside llama.cpp's
  generate where it ran (in the replica, for Ray);
* `not engine`: the share of `rerank s` the engines were not generating, per replica:
  (rerank s - engine s / replicas) / rerank s. In one process that is the driver's own work (rendering,
  parsing, the journal). Under Ray it adds everything Ray brings (a call's round trip to a replica, its
  queueing, pickling prompts and generations) and the replicas' idle time (the last windows, when
  fewer windows are ready than replicas): this is "Ray's share of wall time" here, its driver part being the
  same as in one process;
* `summary overhead`: the summary's "framework overhead" line as printed ((wall - time in generate) / wall,
  the time in generate measured in the driver); under Ray it sums the time of the driver's concurrent
  calls (2 per replica), so it is not a share of wall time there (negative, or near 0) and is shown for
  completeness only.

Target (issue 20): Ray 2 x 1 thread reaches at least 0.9x the windows/s of one process at 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REASONRANK_DATA") or ROOT.parent / "shared" / "data")
JOB = ["--top-k", "20", "--window", "10", "--step", "5", "--max-new-tokens", "32", "--max-passage-tokens", "96"]
CONFIGS = [
    ("single, 2 threads", 1, ["--threads", "2"]),
    ("Ray, 2 replicas x 1 thread", 2, ["--ray", "local", "--replicas", "2", "--threads", "1"]),
    ("single, 1 thread", 1, ["--threads", "1"]),
]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reasonrank.cli", *args]


def ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    found = [line.strip() for line in out if re.search(r"ray::|raylet|gcs_server|reasonrank\.backends\.replicas", line)]
    return [line if len(line) <= 100 else line[:97] + "..." for line in found]


def journal_numbers(path: Path) -> dict:
    engine = prompt = generated = 0.0
    windows = forced = 0
    status: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            if i == 0 and "reasonrank_journal" in row:
                continue
            windows += 1
            engine += row.get("seconds", 0.0) + row.get("forced_seconds", 0.0)
            prompt += row.get("prompt_tokens", 0) + row.get("forced_prompt_tokens", 0)
            generated += row.get("completion_tokens", 0) + row.get("forced_completion_tokens", 0)
            forced += bool(row.get("forced_prefix"))
            status[row["status"]] = status.get(row["status"], 0) + 1
    return {"windows": windows, "engine_s": engine, "prompt_tokens": prompt, "generated_tokens": generated, "forced": forced,
            "status": status}


def summary(stderr: str, stdout: str) -> str:
    """The run summary and evaluation as printed, without the progress bar's redraws."""
    lines = [part.strip() for line in stderr.splitlines() for part in line.split("\r")[-1:]]
    keep = [line for line in lines if line and not re.search(r"\d+%\|", line)]
    return "\n".join(keep + [line for line in stdout.splitlines() if line.strip()])


def git_state() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def run_config(name: str, replicas: int, flags: list[str], run: Path, queries: int, work: Path) -> dict:
    journal, output = work / f"journal-{replicas}-{flags[-1]}.jsonl", work / f"out-{replicas}-{flags[-1]}.trec"
    command = cli("rerank", "-c", str(DATA / "scifact"), "--run", str(run), "-o", str(output), "--queries", str(queries),
                  *JOB, "--traces", str(journal), "--journal-policy", "fresh", *flags)
    before = load()
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    process_s = time.perf_counter() - t0
    after = load()
    if done.returncode:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{name}: the rerank failed ({done.returncode})")
    text = done.stderr + "\n" + done.stdout  # the summary goes to stderr (the CLI's console), the evaluation table to stdout
    per_query = float(re.search(r"seconds/query ([0-9.]+)", text).group(1))
    overhead = float(re.search(r"framework overhead (-?[0-9.]+)%", text).group(1)) / 100
    windows = int(re.search(r"windows (\d+) \(", text).group(1))
    numbers = journal_numbers(journal)
    assert numbers["windows"] == windows, (numbers, windows)
    rerank_s = per_query * queries
    row = {"name": name, "replicas": replicas, "flags": " ".join(flags), "process_s": process_s, "rerank_s": rerank_s,
           "s_per_query": per_query, "windows": windows, "windows_per_s": windows / rerank_s,
           "not_engine": (rerank_s - numbers["engine_s"] / replicas) / rerank_s, "summary_overhead": overhead,
           "load_before": before, "load_after": after, "output": output.read_bytes(),
           "summary": summary(done.stderr, done.stdout), **numbers}
    print(f"{name}: {windows} windows, rerank {rerank_s:.1f} s ({row['windows_per_s']:.3f} windows/s), process {process_s:.1f} s, "
          f"engine {numbers['engine_s']:.1f} s, not engine {row['not_engine']:.1%}; load {before} -> {after}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--only", help="Comma-separated config numbers to run (1: single 2 threads, 2: Ray, 3: single 1 thread).")
    parser.add_argument("--output", type=Path, help="Also write the results (markdown) here.")
    args = parser.parse_args()
    start_load = load()
    print(f"load average at start: {start_load}", flush=True)
    leftover = ray_processes()
    if leftover:
        print("Ray processes already running (not ours):\n  " + "\n  ".join(leftover), flush=True)
    work = Path(tempfile.mkdtemp(prefix="ray_vs_single-"))
    try:
        run = work / "bm25-scifact-top20.trec"
        subprocess.run(cli("retrieve", "-c", str(DATA / "scifact"), "-o", str(run), "-k", "20", "--no-evaluate"), check=True,
                       cwd=ROOT, capture_output=True)
        chosen = [CONFIGS[int(i) - 1] for i in args.only.split(",")] if args.only else CONFIGS
        rows = [run_config(name, replicas, flags, run, args.queries, work) for name, replicas, flags in chosen]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    left = ray_processes()
    report = render(args, rows, start_load, leftover, left)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")


def render(args, rows: list[dict], start_load: str, leftover: list[str], left: list[str]) -> str:
    table = ["| configuration | windows | process s | rerank s | s/query | windows/s | engine s | not engine (Ray's share) | "
             "summary overhead | prompt tok | generated tok | forced | parse status | load before -> after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        status = ", ".join(f"{k} {v}" for k, v in sorted(r["status"].items()))
        table.append(f"| {r['name']} (`{r['flags']}`) | {r['windows']} | {r['process_s']:.1f} | {r['rerank_s']:.1f} | "
                     f"{r['s_per_query']:.1f} | {r['windows_per_s']:.3f} | {r['engine_s']:.1f} | {r['not_engine']:.1%} | "
                     f"{r['summary_overhead']:.1%} | {r['prompt_tokens']:,.0f} | {r['generated_tokens']:,.0f} | {r['forced']} | "
                     f"{status} | {r['load_before']} -> {r['load_after']} |")
    by = {r["name"]: r for r in rows}
    lines = ["# Ray replicas vs one process, the embedded model on this machine", "",
             f"Command: `.venv/bin/python benchmarks/ray_vs_single.py --queries {args.queries}"
             + (f" --only {args.only}" if args.only else "") + (f" --output {args.output}" if args.output else "") + "`", "",
             f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, no GPU, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}, shared "
             f"with other agents' jobs. Load average (1, 5, 15 min) at the start: {start_load}"
             + (" (above 1.5: other jobs were running; timings are indicative)" if float(start_load.split()[0]) > 1.5 else "")
             + "; per configuration in the table.", "",
             f"Code: `{git_state()}` (git describe; -dirty: uncommitted changes in the tree).", "",
             f"Job: SciFact, BM25 top-20, first {args.queries} queries, `{' '.join(JOB)}`, fresh journal each.", "",
             "\n".join(table), ""]
    single2, ray2 = by.get("single, 2 threads"), by.get("Ray, 2 replicas x 1 thread")
    if single2 and ray2:
        ratio = ray2["windows_per_s"] / single2["windows_per_s"]
        e2e = single2["process_s"] / ray2["process_s"]
        lines += [f"Ray 2 x 1 thread / single 2 threads, windows/s of the rerank: **{ratio:.2f}x** (target at least 0.9x: "
                  f"{'met' if ratio >= 0.9 else 'NOT met'}); of the whole process (model load and Ray's start included): {e2e:.2f}x.", ""]
    single1 = by.get("single, 1 thread")
    if single1 and ray2:
        same = single1["output"] == ray2["output"]
        lines += [f"Ray 2 x 1 thread vs single 1 thread: {ray2['windows_per_s'] / single1['windows_per_s']:.2f}x the windows/s; "
                  f"output run files byte-identical: {'yes' if same else 'NO'}.", ""]
    if single2 and single1:
        lines += [f"Single 2 threads vs 1 thread: {single2['windows_per_s'] / single1['windows_per_s']:.2f}x the windows/s "
                  f"(engine s per window {single2['engine_s'] / single2['windows']:.1f} vs {single1['engine_s'] / single1['windows']:.1f}).", ""]
    lines += ["Ray processes before the run (not ours): " + ("; ".join(leftover) if leftover else "none")
              + ". After: " + ("; ".join(left) if left else "none") + ".", ""]
    lines += ["<details><summary>run summaries as printed</summary>", ""]
    for r in rows:
        lines += [f"{r['name']}:", "", "```", r["summary"], "```", ""]
    lines += ["</details>", "", __doc__.split("\n\n", 2)[2]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
