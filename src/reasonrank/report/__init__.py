"""The run report: one self-contained HTML file showing what a listwise reranking run (sliding or tdpart) did.

    from reasonrank.report import write_report
    write_report("runs/demo/traces.jsonl", "runs/demo/report.html", collection="../shared/data/scifact",
                 first_stage="bm25.trec")

Importing this package is cheap: matplotlib (the `report` extra) is loaded when a report is written.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

from reasonrank.report.data import MEASURES, Report, build_report, read_journal, read_traces


def write_report(
    traces,
    output: str | Path,
    collection=None,
    qrels=None,
    first_stage=None,
    reranked=None,
    settings: Mapping[str, Any] | None = None,
    *,
    task: str | None = None,
    split: str = "test",
    title: str | None = None,
) -> Path:
    """Write the HTML report of a run and return its path.

    traces: the journal (a path) or WindowTraces (every Result's `.traces`); collection: a path or a
    Collection (query texts, passages, qrels); qrels: a path or mapping instead of the collection's;
    first_stage, reranked: TREC run paths or {qid: {docid: score}} (first_stage defaults to the
    top-k read back from the journal, reranked to the journal's windows replayed); settings: what
    the journal does not record (see `run_settings`)."""
    from reasonrank.report.html import render_html

    report = build_report(traces, collection, qrels, first_stage, reranked, settings, task=task, split=split, title=title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_html(report), encoding="utf-8")
    return output


def run_settings(reranker, command: str | list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The settings of a listwise reranker (sliding or tdpart) for the report's overview: its spec, and the
    engine its journal keys windows by. `command`: the command line (a list is shell-quoted); default: this process's arguments."""
    from datetime import datetime

    if command is None:
        command = ["reasonrank", *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(command)
    backend, spec = reranker.backend, reranker.spec
    model = Path(str(backend.model))
    method_fields = ("pivot",) if spec.method == "tdpart" else ("step", "passes")
    out: dict[str, Any] = {
        "model": model.name if model.is_file() else str(backend.model), "backend": backend.name, "method": spec.method,
        "mode": reranker.renderer.mode, "top_k": spec.top_k, "window": spec.window, "max_new_tokens": spec.max_new_tokens,
        "reasoning_budget": spec.reasoning_budget, "answer_budget": spec.answer_budget, "on_truncation": spec.on_truncation,
        "max_passage_tokens": reranker.renderer.max_passage_tokens, **{k: getattr(spec, k) for k in method_fields},
    }
    if spec.lora:
        out["lora"] = spec.lora
    journal = reranker.journal
    if journal.engine:
        out.update(engine=dict(journal.engine), engine_id=journal.engine_id)
    out.update(finished=datetime.now().astimezone().isoformat(timespec="seconds"), command=command,
               journal=str(journal.path) if journal.path else None)
    return {**out, **extra}


__all__ = ["MEASURES", "Report", "build_report", "read_journal", "read_traces", "run_settings", "write_report"]
