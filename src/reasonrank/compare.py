"""Run several rerankers on the same queries and candidates and print one table.

    from reasonrank.compare import compare, FirstStage
    table = compare({"bm25": FirstStage(), "listwise": lw, "pointwise": pw}, requests, qrels)
    print(table.to_markdown())

    reasonrank compare ../shared/data/scifact --queries 20 --depth 20      # the typer command below
    reasonrank compare -o table.md                                         # scifact from the data folder

Columns, per reranker:

* nDCG@10, Recall@10 (ir-measures), over the compared queries. The run is built from each result's
  list order (scores n, n-1, …), not from the reranker's own scores, so equal scores are evaluated
  in the order the reranker chose (trec_eval would break them by doc id);
* s/query: wall seconds of `rerank_batch` per query, measured here (the first stage is not included
  in any row; model loading neither);
* x ref: s/query divided by the reference reranker's s/query. The reference is the listwise reasoning
  reranker: by default the first `ListwiseReranker` whose prompt asks for `<think>`/`<answer>` tags
  (mode reasonrank or qwen3); pass `reference=` to choose another;
* prompt tok/query, gen tok/query, calls/query: what the reranker reports. Listwise: one call per
  window, the window prompt's tokens and the generated tokens. Pointwise: see
  `reasonrank.rerankers.pointwise` (two requests per pair: reasoning, then a one-token judgement).
  Bi-encoder: encoder forward passes and encoder input tokens (no generation);
* parse fail: the share of units whose model output could not be used. Listwise: windows with status
  no_answer, truncated or backend_error (the window kept its input order; a *repaired* answer counts
  as parsed); pointwise: pairs that fell back to score 0.5. "-" where nothing is parsed.

`interleave=n` runs the rerankers in turn on chunks of n queries (every reranker on chunk 1, then on
chunk 2, …), so a machine whose load changes during the run slows all of them alike; batching across
queries is then limited to the chunk.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from reasonrank.evaluation import evaluate
from reasonrank.spec import RerankerSpec, spec_options
from reasonrank.types import Request, Result

DEFAULT_MEASURES = ("nDCG@10", "Recall@10")
LISTWISE_FAILURES = ("no_answer", "truncated", "paper_fallback", "backend_error")
RERANKER_NAMES = ("bm25", "biencoder", "rankgpt", "listwise", "pointwise")


class FirstStage:
    """The identity reranker: the first-stage list as it came (the BM25 row of a comparison)."""

    name = "first-stage"

    def rerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        return [Result(r.query, list(r.candidates)) for r in requests]


def usage(reranker: Any) -> dict | None:
    """Cumulative counters of a reranker: prompt_tokens, completion_tokens, calls, failures, units
    (windows or pairs), parses (whether failures mean anything). None when it reports nothing."""
    from reasonrank.rerankers.listwise import ListwiseReranker

    if isinstance(reranker, ListwiseReranker):
        s = reranker.stats
        return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                "calls": s.windows - s.resumed_windows, "failures": sum(s.status.get(k, 0) for k in LISTWISE_FAILURES),
                "units": s.windows, "parses": True}
    stats = getattr(reranker, "stats", None)
    if stats is not None and callable(getattr(stats, "usage", None)):
        out = dict(stats.usage())
        out.setdefault("parses", type(reranker).__name__ != "BiEncoderReranker")
        return out
    return None


def is_reasoning_listwise(reranker: Any) -> bool:
    from reasonrank.rerankers.listwise import ListwiseReranker

    return isinstance(reranker, ListwiseReranker) and bool(reranker.renderer.require_tags)


def run_from_order(results: Sequence[Result]) -> dict[str, dict[str, float]]:
    """A run whose scores follow each result's list order (n for the first, down to 1)."""
    run = {}
    for r in results:
        n = len(r.candidates)
        run[r.query.qid] = {c.docid: float(n - i) for i, c in enumerate(r.candidates)}
    return run


@dataclass
class Row:
    name: str
    metrics: dict[str, float]
    seconds_per_query: float
    ratio: float | None  # seconds per query / the reference's
    prompt_tokens_per_query: float | None
    completion_tokens_per_query: float | None
    calls_per_query: float | None
    parse_failure_rate: float | None
    queries: int
    seconds: float
    units: int = 0
    failures: int = 0
    stats: dict = field(default_factory=dict)  # the reranker's own stats, when it has to_dict()


@dataclass
class ComparisonTable:
    rows: list[Row]
    reference: str | None
    measures: tuple[str, ...]
    queries: int

    @property
    def columns(self) -> list[str]:
        ref = f"x {self.reference}" if self.reference else "x ref"
        return ["reranker", *self.measures, "s/query", ref, "prompt tok/query", "gen tok/query", "calls/query", "parse fail"]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def cells(self) -> list[list[str]]:
        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        out = []
        for r in self.rows:
            out.append([r.name, *[f"{r.metrics[m]:.4f}" for m in self.measures], f"{r.seconds_per_query:.3f}",
                        num(r.ratio, ".3f"), num(r.prompt_tokens_per_query, ".1f"), num(r.completion_tokens_per_query, ".1f"),
                        num(r.calls_per_query, ".2f"), "-" if r.parse_failure_rate is None else f"{100 * r.parse_failure_rate:.1f}%"])
        return out

    def to_markdown(self) -> str:
        cols = self.columns
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in self.cells()]
        return "\n".join(lines)

    def to_text(self) -> str:
        rows = [self.columns] + self.cells()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

        def fmt(r):
            return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

        return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])

    def to_dict(self) -> dict:
        return {"reference": self.reference, "measures": list(self.measures), "queries": self.queries,
                "columns": self.columns, "rows": [asdict(r) for r in self.rows]}

    def __str__(self) -> str:
        return self.to_text()


def _delta(after: dict | None, before: dict | None) -> dict | None:
    if after is None:
        return None
    before = before or {}
    return {k: (v - before.get(k, 0) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in after.items()}


def compare(
    rerankers: Mapping[str, Any],
    requests: Sequence[Request],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    reference: str | None = "auto",
    measures: Sequence[str] = DEFAULT_MEASURES,
    interleave: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ComparisonTable:
    """Run every reranker (anything with `rerank_batch(requests) -> results`) on the same requests
    and tabulate quality and cost. `reference`: a name in `rerankers`, "auto" (the first listwise
    reasoning reranker, if any) or None (no ratio column values)."""
    names = list(rerankers)
    if not names:
        raise ValueError("no rerankers to compare")
    if reference == "auto":
        reference = next((n for n in names if is_reasoning_listwise(rerankers[n])), None)
    elif reference is not None and reference not in rerankers:
        raise KeyError(f"reference {reference!r} is not one of {names}")
    requests = list(requests)
    chunk = interleave or max(len(requests), 1)
    results: dict[str, list[Result]] = {n: [] for n in names}
    seconds = dict.fromkeys(names, 0.0)
    before = {n: usage(rerankers[n]) for n in names}
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        for n in names:
            t0 = time.perf_counter()
            out = rerankers[n].rerank_batch(part)
            seconds[n] += time.perf_counter() - t0
            if len(out) != len(part):
                raise RuntimeError(f"{n}: {len(out)} results for {len(part)} requests")
            results[n].extend(out)
            if log:
                log(f"{n}: {start + len(part)}/{len(requests)} queries, {seconds[n]:.1f}s")
    q = max(len(requests), 1)
    # only the compared queries' judgements: evaluate() fails on judged queries absent from the run
    wanted = {r.query.qid for r in requests}
    qrels = {qid: d for qid, d in qrels.items() if qid in wanted}
    rows = []
    for n in names:
        ev = evaluate(run_from_order(results[n]), qrels, list(measures))
        u = _delta(usage(rerankers[n]), before[n])
        stats = getattr(rerankers[n], "stats", None)
        def per(key: str, u=u) -> float | None:
            return u[key] / q if u else None

        parse = None
        if u and u.get("parses"):
            parse = u["failures"] / u["units"] if u["units"] else 0.0
        rows.append(Row(
            name=n, metrics={m: ev.aggregate[m] for m in measures}, seconds_per_query=seconds[n] / q, ratio=None,
            prompt_tokens_per_query=per("prompt_tokens"), completion_tokens_per_query=per("completion_tokens"),
            calls_per_query=per("calls"), parse_failure_rate=parse, queries=len(requests), seconds=seconds[n],
            units=u["units"] if u else 0, failures=u["failures"] if u else 0,
            stats=stats.to_dict() if stats is not None and callable(getattr(stats, "to_dict", None)) else {},
        ))
    if reference is not None:
        ref = next(r for r in rows if r.name == reference)
        for r in rows:
            r.ratio = r.seconds_per_query / ref.seconds_per_query if ref.seconds_per_query > 0 else None
    return ComparisonTable(rows, reference, tuple(measures), len(requests))


# -- building the standard line-up -------------------------------------------------------------------

def sample_queries(collection, n: int | None, seed: int = 0) -> list:
    """A fixed sample of judged queries: `n` drawn with random.Random(seed) from the judged queries
    sorted by id, returned in id order; all of them when n is None or too large."""
    qrels = collection.qrels()
    judged = sorted((q for q in collection.queries() if qrels.get(q.qid)), key=lambda q: q.qid)
    if n is None or n >= len(judged):
        return judged
    picked = random.Random(seed).sample(judged, n)
    return sorted(picked, key=lambda q: q.qid)


def bm25_requests(collection, queries, depth: int) -> list[Request]:
    from reasonrank.rerankers import requests_from_run
    from reasonrank.retrieval import BM25Index

    run = BM25Index.for_collection(collection).search(queries, k=depth, show_progress=False)
    return requests_from_run(collection, run, [q.qid for q in queries], depth=depth)


def build_rerankers(
    names: Sequence[str],
    *,
    model: str | None = None,
    backend: str | None = None,
    top_k: int = 100,
    max_passage_tokens: int | None = None,
    collection: str | None = None,
    listwise_max_new_tokens: int = 512,
    rankgpt_max_new_tokens: int = 120,
    pointwise_think_tokens: int = 128,
    biencoder_model: str | None = None,
    threads: int | None = None,
    n_ctx: int | None = None,
    spec: RerankerSpec | None = None,
) -> dict[str, Any]:
    """The standard line-up, in the order asked: bm25 (FirstStage), biencoder, rankgpt and listwise (the
    sliding window with prompt modes rankgpt and reasonrank), pointwise (Rank1-style).

    The LLM rerankers are specs built on one loaded engine (`build(spec, backend=engine)`): the engine is
    `spec`'s (its model, backend, backend options, adapter and tokenizer), else `model`/`backend` with
    `threads`/`n_ctx` as backend options. The passage cut is `max_passage_tokens`, else the rule of the
    `collection` named (100 tokens for BEIR), else 512."""
    from reasonrank.spec import RerankerSpec, build, load_backend

    unknown = [n for n in names if n not in RERANKER_NAMES]
    if unknown:
        raise ValueError(f"unknown reranker(s) {unknown}; choose from {', '.join(RERANKER_NAMES)}")
    engine_options = {k: v for k, v in (("n_threads", threads), ("n_ctx", n_ctx)) if v}
    if spec is None:
        spec = RerankerSpec.from_options(model, backend, **engine_options)
    elif model is not None or backend is not None:
        raise ValueError("pass either spec= or model and backend, not both")
    elif engine_options:
        spec = spec.replace(backend_options={**spec.backend_options, **engine_options})
    base = spec.replace(method="sliding", top_k=top_k, max_passage_tokens=max_passage_tokens, journal=None, progress=False)
    specs = {
        "rankgpt": base.replace(mode="rankgpt", max_new_tokens=rankgpt_max_new_tokens),
        "listwise": base.replace(mode="reasonrank", max_new_tokens=listwise_max_new_tokens),
        "pointwise": base.replace(method="pointwise", mode=None, max_new_tokens=pointwise_think_tokens),
    }
    engine = load_backend(base) if any(n in specs for n in names) else None
    out: dict[str, Any] = {}
    for n in names:
        if n == "bm25":
            out[n] = FirstStage()
        elif n == "biencoder":
            from reasonrank.rerankers.biencoder import BiEncoderReranker

            out[n] = BiEncoderReranker(biencoder_model, top_k=top_k, n_threads=base.backend_options.get("n_threads"))
        else:
            out[n] = build(specs[n], backend=engine, collection=collection)
    return out


# -- CLI -----------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help="Compare rerankers on the same queries and candidates.")


def _plot(table, output: Path) -> str:
    """nDCG@10 against seconds per query beside the table (an SVG, linked from the Markdown); the
    table is still written when the report extra (matplotlib) is missing."""
    from reasonrank.errors import MissingExtra

    try:
        from reasonrank.report.plots import compare_plot

        svg = output.with_suffix(".svg")
        svg.write_text(compare_plot(table.rows), encoding="utf-8")
    except MissingExtra as exc:
        typer.echo(f"no plot: {exc}", err=True)
        return ""
    return f"\n\n![nDCG@10 against seconds per query]({svg.name})"


# the spec fields compare sets itself, per reranker (the engine's fields stay options: model, backend, adapter, ...);
# it evaluates each method's listwise order, so the scoring settings (score_mode, ...) are not its options either
NOT_COMPARE_OPTIONS = ("method", "mode", "top_k", "window", "step", "passes", "pivot", "max_new_tokens", "journal",
                       "journal_policy", "progress", "score_mode", "blend_weight", "min_score",
                       "reasoning_budget", "answer_budget", "effort")  # its per-reranker budgets (--listwise-max-new-tokens, ...)


def default_collection() -> str:
    from reasonrank.paths import data_dir

    return str(data_dir() / "scifact")


@app.command("compare")
@spec_options(exclude=NOT_COMPARE_OPTIONS)
def compare_command(
    spec: RerankerSpec,
    collection: str | None = typer.Argument(None, help="A collection directory (BEIR layout; default: scifact in the data "
                                                        "folder, $REASONRANK_DATA or ../shared/data)."),
    collection_option: str | None = typer.Option(None, "--collection", "-c", help="The collection, as an option (as other commands take it)."),
    rerankers: str = typer.Option(",".join(RERANKER_NAMES), help=f"Comma-separated, from: {', '.join(RERANKER_NAMES)}."),
    queries: int | None = typer.Option(20, help="Judged queries sampled (fixed seed); 0 = all."),
    seed: int = typer.Option(0, help="Seed of the query sample."),
    depth: int = typer.Option(20, help="BM25 candidates per query, all reranked."),
    listwise_max_new_tokens: int = typer.Option(512, help="Generation budget of the listwise reasoning reranker."),
    rankgpt_max_new_tokens: int = typer.Option(120, help="Generation budget of the RankGPT listwise reranker."),
    pointwise_think_tokens: int = typer.Option(128, help="Reasoning budget per (query, passage) pair."),
    biencoder_model: str | None = typer.Option(None, help="sentence-transformers model (default all-MiniLM-L6-v2, offline)."),
    reference: str = typer.Option("auto", help="Row the s/query ratio is taken against ('auto': listwise reasoning)."),
    interleave: int = typer.Option(1, help="Queries per turn: every reranker runs a chunk before the next chunk."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Also write the Markdown table here (and the full record as .json beside it)."),
):
    """Run the chosen rerankers on the same BM25 candidates and print one table (LLM rerankers: one engine,
    the --model/--backend given; passages cut by the collection's rule unless --max-passage-tokens)."""
    from reasonrank.errors import ReasonRankError
    from reasonrank.io import load_collection

    if collection and collection_option and collection != collection_option:
        raise ReasonRankError(f"two collections given: {collection} and --collection {collection_option}")
    names = [n.strip() for n in rerankers.split(",") if n.strip()]
    coll = load_collection(collection or collection_option or default_collection())
    qs = sample_queries(coll, queries or None, seed)
    requests = bm25_requests(coll, qs, depth)
    try:
        line_up = build_rerankers(names, spec=spec, top_k=depth, max_passage_tokens=spec.max_passage_tokens, collection=coll.name,
                                  listwise_max_new_tokens=listwise_max_new_tokens, rankgpt_max_new_tokens=rankgpt_max_new_tokens,
                                  pointwise_think_tokens=pointwise_think_tokens, biencoder_model=biencoder_model)
    except ValueError as exc:
        raise ReasonRankError(str(exc)) from None
    table = compare(line_up, requests, coll.qrels(), reference=None if reference == "none" else reference,
                    interleave=interleave or None, log=lambda m: typer.echo(m, err=True))
    typer.echo(table.to_text())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table.to_markdown() + _plot(table, output) + "\n", encoding="utf-8")
        output.with_suffix(".json").write_text(json.dumps(table.to_dict(), indent=2), encoding="utf-8")


__all__ = ["ComparisonTable", "FirstStage", "Row", "app", "bm25_requests", "build_rerankers", "compare", "run_from_order",
           "sample_queries", "usage"]
