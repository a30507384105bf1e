"""`reasonrank report`: the HTML report of a run, from its window journal (a thin layer over write_report)."""

from __future__ import annotations

from pathlib import Path

import typer

from reasonrank.errors import ReasonRankError

app = typer.Typer(add_completion=False, help="Write the HTML report of a reranking run.")


@app.command("report")
def report_command(
    traces: Path = typer.Option(..., "--traces", help="The window journal of the run (rerank --traces)."),
    output: Path = typer.Option(..., "--output", "-o", help="HTML file to write."),
    collection: str | None = typer.Option(None, "--collection", "-c", help="Collection: query texts, passages, qrels."),
    run: Path | None = typer.Option(None, "--run", "-r", help="The first-stage run that was reranked "
                                    "(default: its top-k read back from the journal)."),
    reranked: Path | None = typer.Option(None, help="The reranked run (default: the journal's windows replayed)."),
    qrels: Path | None = typer.Option(None, help="A qrels file instead of (or over) the collection's."),
    task: str | None = typer.Option(None, "--task", "-t", help="BRIGHT task."),
    split: str = typer.Option("test", help="BEIR qrels split."),
    title: str | None = typer.Option(None, help="Title of the report."),
):
    """Write one self-contained HTML file: settings, measures before and after, every window's reasoning and moves."""
    from reasonrank.report import write_report

    if not traces.is_file():
        raise ReasonRankError(f"{traces}: no such journal (write one with rerank --traces)")
    path = write_report(traces, output, collection=collection, qrels=qrels, first_stage=run, reranked=reranked,
                        task=task, split=split, title=title)
    typer.echo(f"report: {path} (open {path.resolve().as_uri()} in a browser)")
