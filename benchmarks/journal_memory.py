"""The driver's memory for a journal it resumes from, at BRIGHT scale and beyond.

    .venv/bin/python benchmarks/journal_memory.py [--windows 10000,30000] [--output benchmarks/results/journal_memory.md]

For each size, a journal of N windows is written by the real reranker (ListwiseReranker, sliding windows
20/10 over a top-100, 9 windows a query) driven by an instant stand-in backend (named as such: it answers
every window in reverse order at once, since what is measured is the journal, not a model). Each window
carries what a real one does: its prompt (20 passages of ~480 characters: ~11 kB), a 4,000-character
reasoning and answer, doc ids and permutation.

Then, in a fresh process each, a rerun resumes from it, and we measure:

* `journal MB (tracemalloc)`: what the Journal object holds after loading the file (Python's allocator,
  exact): the key, a doc-id digest, the permutation and the status of each window;
* `RSS growth MB`: the process's resident memory after loading minus before (what `top` would show);
* `full records MB`: what the same file takes held as WindowTrace objects (prompt, reasoning, answer),
  i.e. what the journal kept in memory before it became compact, for comparison;
* `load s` and `resume s`: reading the file, and the whole rerun (every window replayed from the journal,
  no backend call; the requests' own passages are in memory too, and not counted above).

The target (issue 18): a 10,000-window journal resumes with the driver's memory for it under 50 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOWS_PER_QUERY = 9
PASSAGE_CHARS = 480
REASONING_CHARS = 4000


def requests(n_queries: int):
    from reasonrank.types import Candidate, Query, Request

    words = ("statin", "ldl", "cohort", "trial", "receptor", "kinase", "dose", "placebo", "survival", "biopsy")
    out = []
    for q in range(n_queries):
        cands = []
        for d in range(100):
            text = (f"passage {q}-{d}: " + " ".join(words[(q * 7 + d * 3 + i) % len(words)] for i in range(PASSAGE_CHARS // 7)))[:PASSAGE_CHARS]
            cands.append(Candidate(f"doc-{q}-{d}", 100.0 - d, text))
        out.append(Request(Query(f"q{q}", f"query {q} about statins and ldl"), cands))
    return out


class InstantReverse:
    """Stand-in backend (not a model): every window answered at once, in reverse order, with a long reasoning."""

    name = "instant-reverse-stand-in"
    model = "instant-reverse-stand-in"
    prompt_format = "text"

    def __init__(self):
        from reasonrank.backends.base import Capabilities

        self.capabilities = Capabilities()
        self.calls = 0

    def fingerprint(self):
        return {"backend": self.name}

    def close(self):
        pass

    def generate(self, prompts, params):
        import re

        from reasonrank.backends.base import Generation

        self.calls += len(prompts)
        out = []
        for p in prompts:
            n = len(re.findall(r"^\[(\d+)\] ", p.messages[-1]["content"], flags=re.M))
            reasoning = ("passage [3] discusses the query's population while [7] does not; " * 80)[:REASONING_CHARS]
            answer = " > ".join(f"[{i}]" for i in range(n, 0, -1))
            out.append(Generation(text=f"<think>{reasoning}</think><answer>{answer}</answer>", prompt_tokens=2900,
                                  completion_tokens=1050, finish_reason="stop"))
        return out


def reranker(journal):
    from reasonrank.journal import Journal
    from reasonrank.prompts import PromptRenderer
    from reasonrank.rerankers.listwise import ListwiseReranker

    backend = InstantReverse()
    renderer = PromptRenderer(None, max_passage_tokens=None)
    return ListwiseReranker(backend, renderer, top_k=100, window=20, step=10,
                            journal=Journal(journal, engine={"backend": backend.name})), backend


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, n_queries: int) -> dict:
    """Run in a fresh process: load the journal, then resume the whole run from it."""
    import gc
    import tracemalloc

    from reasonrank.journal import Journal, read_windows

    reqs = requests(n_queries)
    gc.collect()
    before = rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    journal = Journal(path, engine={"backend": InstantReverse.name})
    load_s = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    after = rss_mb()
    journal.close()
    rr, backend = reranker(path)
    t0 = time.perf_counter()
    rr.rerank_batch(reqs)
    resume_s = time.perf_counter() - t0
    assert backend.calls == 0 and rr.stats.resumed_windows == n_queries * WINDOWS_PER_QUERY
    del rr
    gc.collect()
    tracemalloc.start()
    _, windows, _ = read_windows(path)
    full = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    return {"windows": len(windows), "held_mb": held, "rss_growth_mb": after - before, "full_mb": full, "load_s": load_s,
            "resume_s": resume_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", default="10000,30000", help="Journal sizes (windows), comma-separated.")
    parser.add_argument("--output", type=Path, help="Also write the table (markdown) here.")
    parser.add_argument("--measure", nargs=2, metavar=("JOURNAL", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.windows.split(",")):
            n_queries = -(-size // WINDOWS_PER_QUERY)
            path = Path(tmp) / f"journal-{size}.jsonl"
            t0 = time.perf_counter()
            rr, _ = reranker(path)
            rr.rerank_batch(requests(n_queries))
            rr.journal.close()
            write_s = time.perf_counter() - t0
            done = subprocess.run([sys.executable, __file__, "--measure", str(path), str(n_queries)], capture_output=True, text=True,
                                  check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row.update(file_mb=path.stat().st_size / 2**20, write_s=write_s)
            rows.append(row)
            path.unlink()
    lines = ["| windows | file MB | journal MB (tracemalloc) | RSS growth MB | full records MB | load s | resume s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['windows']:,} | {r['file_mb']:.0f} | {r['held_mb']:.1f} | {r['rss_growth_mb']:.1f} | {r['full_mb']:.0f} | "
              f"{r['load_s']:.1f} | {r['resume_s']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.output:
        load = os.getloadavg()[0]
        args.output.write_text(
            "# Journal memory when resuming\n\nCommand: `.venv/bin/python benchmarks/journal_memory.py --windows "
            f"{args.windows} --output {args.output}`\n\nMachine: {os.cpu_count()} CPUs, load average {load:.2f} at the end.\n\n"
            f"{table}\n\nTarget: under 50 MB for 10,000 windows.\n\n" + __doc__.split("\n\n", 2)[2], encoding="utf-8")


if __name__ == "__main__":
    main()
