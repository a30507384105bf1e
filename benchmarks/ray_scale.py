r"""The streamed driver at scale: its peak memory and the windows/s it sustains when the model costs nothing.

    .venv/bin/python benchmarks/ray_scale.py [--docs 1000000] [--queries 2000,20000] [--top-k 100] \
        [--output benchmarks/results/ray_scale.md]
    .venv/bin/python benchmarks/ray_scale.py --docs 20000 --queries 200,2000   # a quick check

What runs is what `reasonrank rerank` runs (`reasonrank.runs.rerank_run`: the run file streamed a query
at a time, documents read from the on-disk SQLite store built once per corpus, `rerank_stream` with no
step barrier and at most `--active` queries held, results written as they finish, every window
journaled as the journal does it), with the real prompt renderer (the embedded model's tokenizer and chat
template, passages cut at the collection's 100 tokens, ftfy) and parser. Only the model is replaced:
`InstantStandIn` is a stand-in backend, NOT a model. It answers every window at once with a valid
reasoned answer in reverse input order (`<think>stand-in</think>\n<answer>[n] > ... > [1]</answer>`,
finish_reason "stop"), so the order changes and every window is parsed, applied and journaled as a real
one is; what is measured is the framework alone (a real model is thousands of times slower).

Data (built once, deterministic, under `--cache`, default `$REASONRANK_CACHE/bench/ray_scale` or
`~/.cache/reasonrank/bench/ray_scale`): a synthetic BEIR collection of `--docs` documents (60-100
words each from a fixed vocabulary of 4,096 pseudo-words), 20,000 queries (all judged: the BEIR loader
keeps judged queries only, so the qrels hold one line per query), and for each size a TREC run of
top-`--top-k` per query (doc ids drawn from the corpus, grouped by query). The doc store is built in a
process of its own first, and its build time reported apart from the reranking.

Per size, in a fresh process each (so its peak RSS is that size's alone):

* rerank: `build(RerankerSpec(top_k=100, journal=..., journal_policy="fresh"), backend=InstantStandIn(),
  renderer=...)` then `rerank_run`; RSS after setup (imports, tokenizer, reranker, collection, doc store
  opened), peak RSS (`ru_maxrss`), windows, wall seconds (rerank_run alone) and windows/s;
* resume: the same spec with journal_policy="resume" over the full journal: every window is answered
  from it (the stand-in is called for none); load s (the journal read, inside build), resume s
  (rerank_run) and windows/s, peak RSS.

Targets (issue 20): peak RSS at the largest size within 1.5x of the smallest, and at least 200 windows/s.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 20
VOCAB = 4096
N_QUERIES = 20_000
DATA_VERSION = 1  # bump when the generator changes: a new data folder


def default_cache() -> Path:
    from reasonrank.paths import cache_dir

    return cache_dir() / "bench" / "ray_scale"


# -- the stand-in backend ------------------------------------------------------------------------------

class InstantStandIn:
    """A stand-in backend, NOT a model: every window answered at once, in reverse input order, with a
    reasoned answer the parser accepts (`<think>stand-in</think>\\n<answer>[n] > ... > [1]</answer>`,
    finish_reason "stop"). The number of passages is read from the prompt's `[i] ` lines. It measures
    the framework around a model (rendering, parsing, journal, scheduling), not a model."""

    name = "instant-stand-in"
    model = "instant-stand-in (not a model)"
    prompt_format = "text"
    _ids = re.compile(r"^\[(\d+)\] ", re.M)

    def __init__(self, batch_size: int | None = None, concurrency: int = 1):
        from reasonrank.backends.base import Capabilities

        # default: any number of windows per call, one call at a time (a vLLM batch): the driver sends
        # every window ready in one call
        self.capabilities = Capabilities(batch_size=batch_size, concurrency=concurrency)
        self.calls = 0
        self.windows = 0

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:
        pass

    def generate(self, prompts, params):
        from reasonrank.backends.base import Generation

        self.calls += 1
        self.windows += len(prompts)
        out = []
        for p in prompts:
            n = len(self._ids.findall(p.messages[-1]["content"]))
            answer = " > ".join(f"[{i}]" for i in range(n, 0, -1))
            out.append(Generation(text=f"<think>stand-in</think>\n<answer>{answer}</answer>", prompt_tokens=0,
                                  completion_tokens=0, finish_reason="stop"))
        return out


# -- synthetic data -------------------------------------------------------------------------------------

def vocabulary() -> list[str]:
    rng = random.Random(SEED)
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "ch", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ae", "io", "ou"]
    codas = ["", "n", "s", "r", "l", "t", "x", "m"]
    words: set[str] = set()
    while len(words) < VOCAB:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def docid(i: int) -> str:
    return f"d{i:07d}"


def data_dir(cache: Path, docs: int) -> Path:
    return cache / f"v{DATA_VERSION}-docs{docs}-queries{N_QUERIES}"


def build_data(cache: Path, docs: int, sizes: list[int], top_k: int) -> tuple[Path, dict]:
    """The BEIR folder and one run file per size, written once (a `built.json` marks a finished folder)."""
    root = data_dir(cache, docs)
    marker = root / "built.json"
    info = json.loads(marker.read_text()) if marker.exists() else {}
    vocab = vocabulary()
    if not info:
        if root.exists():
            shutil.rmtree(root)  # a half-built folder from a killed run
        (root / "qrels").mkdir(parents=True)
        t0 = time.perf_counter()
        rng = random.Random(SEED)
        with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for i in range(docs):
                words = rng.choices(vocab, k=rng.randint(60, 100))
                title = " ".join(words[:3]).title()
                fh.write(json.dumps({"_id": docid(i), "title": title, "text": " ".join(words)}) + "\n")
        with open(root / "queries.jsonl", "w", encoding="utf-8") as fh, open(root / "qrels" / "test.tsv", "w") as qrels:
            qrels.write("query-id\tcorpus-id\tscore\n")
            for q in range(N_QUERIES):
                fh.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choices(vocab, k=rng.randint(6, 14)))}) + "\n")
                qrels.write(f"q{q}\t{docid(rng.randrange(docs))}\t1\n")  # one judgement a query: the loader keeps judged queries
        info = {"docs": docs, "queries": N_QUERIES, "seed": SEED, "corpus_s": time.perf_counter() - t0,
                "corpus_mb": (root / "corpus.jsonl").stat().st_size / 2**20, "runs": {}}
        marker.write_text(json.dumps(info, indent=1))
    for size in sizes:
        name = f"run-q{size}-k{top_k}.trec"
        if name in info["runs"]:
            continue
        if size > N_QUERIES:
            raise SystemExit(f"--queries {size}: the collection has {N_QUERIES} queries")
        rng = random.Random(SEED * 1000 + top_k)  # the same queries' candidates in every run: a small run is a prefix
        with open(root / (name + ".tmp"), "w") as fh:
            for q in range(size):
                for rank, d in enumerate(rng.sample(range(docs), min(top_k, docs)), 1):
                    fh.write(f"q{q} Q0 {docid(d)} {rank} {1000 - rank * 0.5:.1f} bm25\n")
        (root / (name + ".tmp")).replace(root / name)
        info["runs"][name] = size
        marker.write_text(json.dumps(info, indent=1))
    return root, info


# -- measuring, in a fresh process --------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    """CPU seconds of this process, every thread (user + system): the work, whatever else runs on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def store_worker(root: str) -> dict:
    """Open the collection's doc store, building it if absent; the build's seconds and peak RSS."""
    from reasonrank.io import load_collection
    from reasonrank.io.docstore import store_path

    coll = load_collection(root)
    path = store_path(coll.store_key)
    existed = path.exists()
    t0 = time.perf_counter()
    coll.docs_by_ids([docid(0)])
    seconds = time.perf_counter() - t0
    return {"built": not existed, "seconds": seconds, "peak_rss_mb": peak_mb(), "store_mb": path.stat().st_size / 2**20,
            "store": str(path)}


def rerank_worker(args: dict) -> dict:
    """One rerank (policy fresh) or resume (policy resume) of one run, measured."""
    t_start = time.perf_counter()
    from reasonrank.backends.models import embedded_path
    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer, load_template
    from reasonrank.runs import rerank_run
    from reasonrank.spec import RerankerSpec, build
    from reasonrank.tokenizer import load_tokenizer

    coll = load_collection(args["root"])
    coll.docs_by_ids([docid(0)])  # open the store (built before, in its own process)
    backend = InstantStandIn(args["batch_size"], args["concurrency"])
    spec = RerankerSpec(top_k=args["top_k"], journal=args["journal"], journal_policy=args["policy"])
    resolved = spec.resolved(coll.name)
    renderer = PromptRenderer(load_tokenizer(str(embedded_path())), mode=load_template("reasonrank"),
                              max_passage_tokens=resolved.max_passage_tokens or None)
    t0 = time.perf_counter()
    reranker = build(spec, backend=backend, renderer=renderer, collection=coll.name)
    load_s = time.perf_counter() - t0  # the journal's index is read here (resume)
    setup_rss, setup_s = rss_mb(), time.perf_counter() - t_start
    profiler = cProfile.Profile() if args["profile"] else None
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        stats = rerank_run(coll, args["run"], args["output"], active=args["active"], reranker=reranker)
    finally:
        if profiler:
            profiler.disable()
        reranker.close()
    wall = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    import reasonrank

    out = {"reasonrank": str(Path(reasonrank.__file__).parent), "cpu_s": cpu, "windows_per_cpu_s": stats.windows / cpu, "policy": args["policy"], "windows": stats.windows, "resumed": stats.resumed_windows, "queries": stats.queries,
           "backend_windows": backend.windows, "backend_calls": backend.calls, "status": dict(stats.status),
           "wall_s": wall, "windows_per_s": stats.windows / wall, "load_s": load_s, "setup_s": setup_s,
           "setup_rss_mb": setup_rss, "end_rss_mb": rss_mb(), "peak_rss_mb": peak_mb(),
           "journal_mb": Path(args["journal"]).stat().st_size / 2**20,
           "max_passage_tokens": resolved.max_passage_tokens, "window": resolved.window, "step": resolved.step}
    out["check"] = check_output(args["run"], args["output"], args["top_k"])
    if profiler:
        text = io.StringIO()
        st = pstats.Stats(profiler, stream=text)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(40)
        out["profile"] = text.getvalue()
    return out


def check_output(run: str, output: str, top_k: int) -> dict:
    """The output holds every query of the run with its candidates, reordered (the stand-in reverses)."""
    first, lines, moved = {}, 0, 0
    with open(run) as fh:
        for line in fh:
            q, _, d, rank, *_ = line.split()
            first.setdefault(q, {})[d] = int(rank)
    seen = set()
    with open(output) as fh:
        for line in fh:
            q, _, d, rank, *_ = line.split()
            lines += 1
            seen.add(q)
            moved += first[q][d] != int(rank)
    return {"queries": len(seen), "lines": lines, "run_lines": sum(len(v) for v in first.values()), "moved": moved}


def subprocess_json(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"worker failed: {argv}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_state() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    return done.stdout.strip() or "unknown"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="Documents in the synthetic corpus.")
    parser.add_argument("--queries", default="2000,20000", help="Run sizes (queries), comma-separated, smallest first.")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--active", type=int, default=256, help="Queries held at once (rerank_run's active; the CLI's --batch-size).")
    parser.add_argument("--batch-size", type=int, default=None, help="The stand-in's capabilities.batch_size (default: any).")
    parser.add_argument("--concurrency", type=int, default=1, help="The stand-in's capabilities.concurrency (calls in flight).")
    parser.add_argument("--cache", type=Path, default=None, help="Where the synthetic data lives (built once, reused).")
    parser.add_argument("--profile", default="", help="Sizes to also run under cProfile (extra runs, comma-separated).")
    parser.add_argument("--no-resume", action="store_true", help="Skip the resume runs (a quick comparison; not for the results).")
    parser.add_argument("--output", type=Path, help="Also write the results (markdown) here.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(store_worker(job["root"]) if job["kind"] == "store" else rerank_worker(job)))
        return

    sizes = [int(s) for s in args.queries.split(",")]
    cache = args.cache or default_cache()
    print(f"load average at start: {load()}", flush=True)
    t0 = time.perf_counter()
    root, info = build_data(cache, args.docs, sizes, args.top_k)
    print(f"data: {root} ({time.perf_counter() - t0:.0f} s this time)", flush=True)
    store = subprocess_json(["--worker", json.dumps({"kind": "store", "root": str(root)})])
    if store["built"]:
        info["store_build"] = {**store, "date": datetime.date.today().isoformat(), "load": load()}
        (root / "built.json").write_text(json.dumps(info, indent=1))
    build_info = info.get("store_build")
    print(f"doc store: {store['store']} ({store['store_mb']:.0f} MB); "
          + (f"built in {build_info['seconds']:.1f} s, peak RSS {build_info['peak_rss_mb']:.0f} MiB" if build_info else "built before this script recorded it")
          + ("" if store["built"] else " (earlier run; reused now)"), flush=True)

    rows, profiles = [], {}
    work = cache / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for size in sizes:
            base = {"kind": "rerank", "root": str(root), "run": str(root / f"run-q{size}-k{args.top_k}.trec"),
                    "top_k": args.top_k, "active": args.active, "batch_size": args.batch_size, "concurrency": args.concurrency,
                    "journal": f"{tmp}/journal-{size}.jsonl", "output": f"{tmp}/out-{size}.trec", "profile": False}
            before = load()
            fresh = subprocess_json(["--worker", json.dumps({**base, "policy": "fresh"})])
            mid = load()
            print(f"{size} queries: {fresh['windows']} windows in {fresh['wall_s']:.1f} s ({fresh['windows_per_s']:.0f}/s; "
                  f"{fresh['cpu_s']:.1f} CPU s, {fresh['windows_per_cpu_s']:.0f} windows per CPU s), "
                  f"peak RSS {fresh['peak_rss_mb']:.0f} MiB (after setup {fresh['setup_rss_mb']:.0f}); check {fresh['check']}; "
                  f"load {before} -> {mid}", flush=True)
            if args.no_resume:
                continue
            resumed = subprocess_json(["--worker", json.dumps({**base, "policy": "resume", "output": f"{tmp}/resumed-{size}.trec"})])
            after = load()
            print(f"{size} queries resumed: {resumed['resumed']}/{resumed['windows']} windows from the journal in "
                  f"{resumed['load_s']:.1f} + {resumed['wall_s']:.1f} s, stand-in called for {resumed['backend_windows']}; "
                  f"peak RSS {resumed['peak_rss_mb']:.0f} MiB; load {after}", flush=True)
            same = Path(base["output"]).read_bytes() == Path(f"{tmp}/resumed-{size}.trec").read_bytes()
            rows.append({"size": size, "fresh": fresh, "resume": resumed, "same_output": same, "load": [before, mid, after]})
            if str(size) in args.profile.split(","):
                prof = subprocess_json(["--worker", json.dumps({**base, "policy": "fresh", "profile": True,
                                                                "journal": f"{tmp}/journal-prof.jsonl", "output": f"{tmp}/out-prof.trec"})])
                profiles[size] = prof
                print(prof["profile"], flush=True)
            for f in Path(tmp).iterdir():
                f.unlink()

    if args.no_resume:
        return
    report = render(args, root, info, store, rows, profiles)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")


def render(args, root: Path, info: dict, store: dict, rows: list[dict], profiles: dict) -> str:
    small, large = rows[0], rows[-1]
    growth = large["fresh"]["peak_rss_mb"] / small["fresh"]["peak_rss_mb"]
    table = ["| queries | windows | rerank s | windows/s | CPU s | windows per CPU s | RSS after setup MiB | peak RSS MiB | peak vs smallest | journal MB | "
             "resume: load s | resume s | resume windows/s | resume peak RSS MiB | resumed output identical |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        f, s = r["fresh"], r["resume"]
        table.append(f"| {r['size']:,} | {f['windows']:,} | {f['wall_s']:.1f} | {f['windows_per_s']:.0f} | {f['cpu_s']:.1f} | "
                     f"{f['windows_per_cpu_s']:.0f} | {f['setup_rss_mb']:.0f} | "
                     f"{f['peak_rss_mb']:.0f} | {f['peak_rss_mb'] / small['fresh']['peak_rss_mb']:.2f}x | {f['journal_mb']:.0f} | "
                     f"{s['load_s']:.1f} | {s['wall_s']:.1f} | {s['windows']/ (s['wall_s'] + s['load_s']):.0f} | {s['peak_rss_mb']:.0f} | "
                     f"{'yes' if r['same_output'] else 'NO'} |")
    slowest = min(r["fresh"]["windows_per_s"] for r in rows)
    b = info.get("store_build")
    cmd = "`.venv/bin/python benchmarks/ray_scale.py --docs {} --queries {} --top-k {}{}{}`".format(
        args.docs, args.queries, args.top_k, f" --profile {args.profile}" if args.profile else "",
        f" --output {args.output}" if args.output else "")
    lines = [
        "# The streamed driver at scale (instant stand-in backend)", "",
        f"Command: {cmd}", "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} cores, no GPU, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}, "
        "shared with other agents' jobs. Load average (1, 5, 15 min) before / after each step: "
        + "; ".join(f"{r['size']:,} queries: {r['load'][0]} -> {r['load'][1]} (rerank) -> {r['load'][2]} (resume)" for r in rows) + ".", "",
        f"Code: the package imported from `{small['fresh']['reasonrank']}`; this repository at `{git_state()}` (git describe"
        + ("; PYTHONPATH=" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "") + ").", "",
        f"Data: {info['docs']:,} synthetic documents ({info['corpus_mb']:.0f} MB corpus.jsonl, 60-100 words from "
        f"{VOCAB:,} pseudo-words), {info['queries']:,} queries, top-{args.top_k} runs; `{root}`.", "",
        "Doc store (SQLite, built once per corpus, separate from the reranking): "
        + (f"built in {b['seconds']:.1f} s (peak RSS of the building process {b['peak_rss_mb']:.0f} MiB, load {b['load']}, {b['date']}), "
           if b else "") + f"{store['store_mb']:.0f} MB.", "",
        f"Reranker: sliding windows {small['fresh']['window']}/{small['fresh']['step']} over the top {args.top_k} "
        f"({small['fresh']['windows'] // max(small['fresh']['queries'], 1)} windows a query), passages cut at "
        f"{small['fresh']['max_passage_tokens']} tokens of the embedded model's tokenizer, every window journaled (written through, fsynced as reasonrank.journal does), "
        f"active {args.active} queries; the stand-in's capabilities: batch_size {args.batch_size or 'any'}, concurrency {args.concurrency}.", "",
        "\n".join(table), "",
        f"Peak RSS growth {rows[0]['size']:,} -> {rows[-1]['size']:,} queries: {growth:.2f}x "
        f"(target within 1.5x: {'met' if growth <= 1.5 else 'NOT met'}). "
        f"Slowest sustained rate: {slowest:.0f} windows/s (target at least 200: {'met' if slowest >= 200 else 'NOT met'}).", "",
        "Columns: `rerank s` is rerank_run's wall time (reading the run, doc store lookups, rendering, the stand-in, parsing, "
        "the journal, writing the output), setup excluded; `CPU s` is the CPU time the process spent in it (all threads, user + "
        "system): `windows per CPU s` is what the framework costs whatever else shares the machine; `RSS after setup` is the process after imports, tokenizer, reranker, "
        "collection and doc store, before the first query; `peak RSS` is `ru_maxrss` of the whole process; `resume` reruns the "
        "same command in a fresh process over the full journal (every window answered from it, the stand-in called for none): "
        "`load s` is reading the journal's index (in build), `resume s` is rerank_run, `resume windows/s` counts both; "
        "`resumed output identical` compares the resumed run file with the first one byte for byte.", "",
    ]
    checks = [f"{r['size']:,}: {r['fresh']['check']}" for r in rows]
    lines += ["Output checks (queries written, lines, lines whose rank moved; the stand-in reverses every window): "
              + "; ".join(checks) + ".", ""]
    for size, prof in profiles.items():
        lines += [f"## cProfile of the {size:,}-query rerank (a separate run; profiling slows it: {prof['wall_s']:.1f} s)", "",
                  "```", prof["profile"].strip(), "```", ""]
    lines += [__doc__.split("\n\n", 2)[2]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
