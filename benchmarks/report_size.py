"""Size and generation time of the HTML run report, from a demo-size run to a BRIGHT-size one.

    .venv/bin/python benchmarks/report_size.py [--journal runs/demo/traces.jsonl] [--queries 10,100] \
        [--reasoning-chars 12000] [--output benchmarks/results/report_size.md]

Rows:

* the real journal as it is (by default the demo's: 10 SciFact test queries, BM25 top-20, one window
  of 20 each, written by the embedded 0.5B model);
* synthetic runs of N SciFact test queries shaped like a BRIGHT task: BM25 top-100, windows of 20 with
  step 10 (9 per query), built from the real windows: each window's permutation, status, token counts,
  seconds and raw answer are those of a real window of the journal (cycled), applied to the list as
  the reranker would, so the journal replays like a real one. The 0.5B model writes no reasoning, so
  each window's reasoning is a stand-in of `--reasoning-chars` characters (12,000 ≈ 3,000 tokens, a
  long reasoning model's window) made of the window's own passage texts with their `[n]` ids.

The synthetic journals are written without prompts (as `Journal(keep_prompts=False)` does); a real
one holds each window's prompt too (a BRIGHT window of 20 passages of 512 tokens: ~40 kB), which the
report leaves out (it shows the prompt hash), so its size does not grow with them.

Columns: journal size; report size, and how much of it is the windows' reasoning text (the rest:
passage titles and snippets, answers, permutations, the page's script, style and plots); the time
to build and write the report (loading the collection's 5,183 documents for titles and snippets
included, as `reasonrank report` does); and, when Debian's chromium and playwright are there, the
time the page takes to open (until its script has rendered the overview) and to show the query with
the most text. Timings are of one run on a shared machine: indicative, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path

from reasonrank.io import load_collection
from reasonrank.io.trec import ranked
from reasonrank.report import write_report
from reasonrank.retrieval import BM25Index
from reasonrank.types import WindowTrace
from reasonrank.windows import apply_permutation, window_schedule

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REASONRANK_DATA") or ROOT.parent / "shared" / "data")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def stand_in_reasoning(coll, docids: list[str], chars: int) -> str:
    """Real text of the window's passages, `[n]`-labelled as a reasoning model cites them, cut to `chars`."""
    parts, total, n = [], 0, 0
    for n in itertools.cycle(range(len(docids))):
        doc = coll.doc(docids[n])
        part = f"Passage [{n + 1}] ({doc.title}): {doc.text}\n"
        parts.append(part)
        total += len(part)
        if total >= chars:
            break
    return "".join(parts)[:chars]


def synthetic_journal(coll, sources: list[WindowTrace], queries: int, chars: int, path: Path) -> tuple[Path, dict]:
    """A BRIGHT-shaped journal of `queries` SciFact queries: top-100, windows 20/10, real windows' outcomes."""
    size = len(sources[0].docids)
    chosen = [q for q in coll.queries() if coll.qrels().get(q.qid)][:queries]
    run = BM25Index.for_collection(coll).search(chosen, k=100, show_progress=False)
    outcomes = itertools.cycle(sources)
    with open(path, "w", encoding="utf-8") as fh:
        for q in chosen:
            order = [d for d, _ in ranked(run[q.qid])]
            for start, end in window_schedule(len(order), size, size // 2):
                src, docids = next(outcomes), order[start:end]
                trace = WindowTrace(q.qid, 0, start, end, f"synthetic-{q.qid}-{start}", "", src.raw_output,
                                    stand_in_reasoning(coll, docids, chars), src.permutation, src.status,
                                    src.prompt_tokens, src.completion_tokens, src.seconds, docids)
                fh.write(json.dumps(trace.to_dict(), ensure_ascii=False) + "\n")
                order = apply_permutation(order, start, end, src.permutation)
    return path, run


def browser_times(report: Path) -> tuple[float, float] | None:
    """(ms to open the page, ms to show its biggest query) in headless chromium, or None without one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path("/usr/bin/chromium").exists():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        t0 = time.perf_counter()
        page.goto(report.resolve().as_uri())
        page.wait_for_selector("body[data-ready]")
        opened = 1000 * (time.perf_counter() - t0)
        shown = page.evaluate("""() => {
            const data = JSON.parse(document.getElementById("report-data").textContent);
            const big = data.queries.reduce((a, q) => JSON.stringify(q).length > JSON.stringify(a).length ? q : a);
            const t0 = performance.now();
            location.hash = "#q=" + encodeURIComponent(big.qid);
            window.dispatchEvent(new HashChangeEvent("hashchange"));
            document.body.offsetHeight;  // force layout: the time until it could be painted
            return performance.now() - t0;
        }""")
        browser.close()
    return opened, shown


def measure(name: str, journal: Path, out: Path, coll, first_stage) -> dict:
    t0 = time.perf_counter()
    write_report(journal, out, collection=str(DATA / "scifact"), first_stage=first_stage)  # loads it, as the CLI does
    seconds = time.perf_counter() - t0
    lines = [line for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
    times = browser_times(out)
    rows = [json.loads(line) for line in lines]
    return {"run": name, "queries": len({r["qid"] for r in rows}), "windows": len(rows),
            "journal MB": journal.stat().st_size / 1e6, "report MB": out.stat().st_size / 1e6,
            "reasoning MB": sum(len(r["reasoning"].encode()) for r in rows) / 1e6, "build s": seconds,
            "open ms": times[0] if times else None, "query ms": times[1] if times else None}


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = {"journal MB": ".2f", "report MB": ".2f", "reasoning MB": ".2f", "build s": ".1f", "open ms": ".0f", "query ms": ".0f"}
    cells = [[("-" if r[c] is None else format(r[c], fmt.get(c, ""))) for c in cols] for r in rows]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|",
                      *("| " + " | ".join(c) + " |" for c in cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--journal", type=Path, default=ROOT / "runs" / "demo" / "traces.jsonl",
                    help="A real journal (windows of 20).")
    ap.add_argument("--queries", default="10,100", help="Sizes of the synthetic BRIGHT-shaped runs.")
    ap.add_argument("--reasoning-chars", type=int, default=12000)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "report_size")
    ap.add_argument("--output", type=Path, default=None, help="Also write the table and how it was made here (Markdown).")
    args = ap.parse_args()
    if not args.journal.exists():
        sys.exit(f"{args.journal}: no journal; run `bash scripts/demo.sh` first (or pass --journal)")
    args.work.mkdir(parents=True, exist_ok=True)
    coll = load_collection(DATA / "scifact")
    sources = [WindowTrace.from_dict(json.loads(line)) for line in args.journal.read_text().splitlines() if line.strip()]
    sources = [t for t in sources if len(t.docids) == max(len(s.docids) for s in sources)]
    rows = [measure(f"real: the demo's journal ({args.journal.name}), top-20, one window of 20", args.journal,
                    args.work / "real.html", coll, None)]
    for n in (int(x) for x in args.queries.split(",")):
        journal, run = synthetic_journal(coll, sources, n, args.reasoning_chars, args.work / f"synthetic-{n}.jsonl")
        rows.append(measure(f"synthetic, top-100, windows 20/10, {args.reasoning_chars:,}-char reasoning", journal,
                            args.work / f"synthetic-{n}.html", coll, run))
    text = table(rows)
    print(text)
    if args.output:
        command = shlex.join(["python", "benchmarks/report_size.py", *sys.argv[1:]])
        args.output.write_text(f"# HTML report size and generation time\n\nCommand: `{command}`\n\n"
                               f"Real windows from `{args.journal.name}` ({len(sources)} windows of {len(sources[0].docids)}); "
                               f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end.\n\n"
                               f"{text}\n\n{__doc__.split(chr(10) + chr(10), 2)[2]}", encoding="utf-8")


if __name__ == "__main__":
    main()
