"""The report model: what a run did, assembled from its window journal, runs, qrels and collection.

Everything here is plain data that `html.py` embeds as JSON; the browser builds each query's view
from it on demand. Inputs that do not belong together (a journal of another run, query ids the
collection lacks) fail with a ReasonRankError naming the file; damage a run can leave behind (a
half-written last line, windows of an earlier run appended to the same journal) is counted,
skipped and shown in the report.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from reasonrank.errors import FormatError, ReasonRankError, UnknownIdError
from reasonrank.io.trec import ranked
from reasonrank.journal import EXTRA_FIELDS
from reasonrank.types import WindowTrace
from reasonrank.windows import apply_permutation

MEASURES = ("nDCG@10", "Recall@10", "MRR@10")
SNIPPET_CHARS = 240  # enough to recognise a passage; the full text would dominate the file size

Run = Mapping[str, Mapping[str, float]]


@dataclass
class Report:
    """The whole report as JSON-ready parts (see `to_json`)."""

    title: str
    settings: list[tuple[str, str]]
    summary: dict[str, Any]
    queries: list[dict[str, Any]]
    docs: dict[str, list[str]]  # docid -> [title, snippet]
    warnings: list[str] = field(default_factory=list)
    measures: tuple[str, ...] = MEASURES

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "settings": self.settings, "summary": self.summary, "measures": list(self.measures),
                "warnings": self.warnings, "docs": self.docs, "queries": self.queries}


# -- reading -------------------------------------------------------------------------------------

def _valid(trace: WindowTrace) -> bool:
    size = trace.end - trace.start
    return (0 <= trace.start < trace.end and sorted(trace.permutation) == list(range(size))
            and (not trace.docids or len(trace.docids) == size))


def read_traces(path: str | Path) -> tuple[list[WindowTrace], list[int]]:
    """The journal's windows in file order, and the numbers of the lines that are not windows.

    A killed run leaves a half-written last line, so bad lines are counted rather than fatal; a file
    with no window at all is not a journal, and fails naming it."""
    traces, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for key in EXTRA_FIELDS:  # tdpart's method/role: not part of the window itself
                    row.pop(key, None)
                trace = WindowTrace.from_dict(row)
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                bad.append(lineno)
                continue
            if _valid(trace):
                traces.append(trace)
            else:
                bad.append(lineno)
    if not traces:
        problem = f"no window trace in {len(bad)} line(s)" if bad else "empty file"
        raise FormatError(path, bad[0] if bad else None, f"{problem}: expected the JSONL journal written by `rerank --traces`")
    return traces, bad


def _as_run(value, what: str) -> tuple[dict[str, dict[str, float]] | None, str]:
    """(run, where it came from) from a path or an in-memory run."""
    if value is None:
        return None, ""
    if isinstance(value, (str, Path)):
        from reasonrank.io import read_run

        return read_run(value), str(value)
    return {str(q): dict(d) for q, d in value.items()}, f"the {what} run given in memory"


def _as_qrels(qrels, collection) -> dict[str, dict[str, int]] | None:
    if isinstance(qrels, (str, Path)):
        from reasonrank.io import read_qrels

        return read_qrels(qrels)
    if qrels is not None:
        return {str(q): dict(d) for q, d in qrels.items()}
    if collection is not None:
        return collection.qrels() or None
    return None


def _as_collection(collection, task: str | None, split: str):
    if isinstance(collection, (str, Path)):
        from reasonrank.io import load_collection

        return load_collection(str(collection), task=task, split=split)
    return collection


# -- the journal's story of each query -----------------------------------------------------------------

def initial_order_from_windows(traces: list[WindowTrace]) -> list[str]:
    """The first-stage top-k a query's windows started from, when no first-stage run is given.

    Pass 0 slides from the bottom up and each window recorded its input docids, so the positions a
    window covers below the previous window's start are still in first-stage order."""
    first_pass = sorted((t for t in traces if t.pass_index == 0 and t.docids), key=lambda t: -t.end)
    if not first_pass:
        return []
    size = max(t.end for t in first_pass)
    order: list[str | None] = [None] * size
    for t in first_pass:
        for pos in range(t.start, t.end):
            if order[pos] is None:
                order[pos] = t.docids[pos - t.start]
    return [d for d in order if d is not None]


def replay(initial: list[str], traces: Iterable[WindowTrace]) -> tuple[list[str], list[WindowTrace], int]:
    """Apply the windows in journal order to the initial list: (final order, windows applied, windows
    skipped). A window is skipped when it was recorded for another list (its docids differ from what
    the list holds at its positions): windows of an earlier run with other settings, appended to the
    same journal, would otherwise reorder the wrong passages."""
    order, applied, skipped = list(initial), [], 0
    for t in traces:
        if t.end > len(order) or (t.docids and order[t.start:t.end] != t.docids):
            skipped += 1
            continue
        order = apply_permutation(order, t.start, t.end, t.permutation)
        applied.append(t)
    return order, applied, skipped


def infer_settings(traces: list[WindowTrace]) -> dict[str, int]:
    """Window, step, top-k and passes, read back from the windows (the journal records no settings)."""
    first = sorted({(t.start, t.end) for t in traces if t.pass_index == 0}, key=lambda w: -w[1])
    ends = [e for _, e in first]
    steps = Counter(a - b for a, b in zip(ends, ends[1:]))
    return {"top_k": max(t.end for t in traces), "window": max(t.end - t.start for t in traces),
            "step": steps.most_common(1)[0][0] if steps else max(t.end - t.start for t in traces),
            "passes": max(t.pass_index for t in traces) + 1}


# -- assembling --------------------------------------------------------------------------------------

def _window_json(t: WindowTrace, docids: list[str]) -> dict[str, Any]:
    """One window for the browser. The raw output repeats the reasoning verbatim; it is cut out of
    the answer shown (and not stored twice), which halves the file of a reasoning model's run."""
    answer = t.raw_output
    if t.reasoning and t.reasoning in answer:
        answer = answer.replace(t.reasoning, "\u2026", 1)
    return {"pass": t.pass_index, "start": t.start, "end": t.end, "status": t.status or "unknown",
            "pt": t.prompt_tokens, "ct": t.completion_tokens, "sec": round(t.seconds, 3), "hash": t.prompt_hash,
            "docids": docids, "perm": t.permutation, "reasoning": t.reasoning, "answer": answer}


def _ordered(run_for_query: Mapping[str, float]) -> list[str]:
    return [d for d, _ in ranked(run_for_query)]


def _scores(order: list[str]) -> dict[str, float]:
    """Rank-derived scores (n … 1), as the reranker writes its runs."""
    return {d: float(len(order) - i) for i, d in enumerate(order)}


@dataclass
class _Query:
    qid: str
    initial: list[str]
    windows: list[WindowTrace]
    final: list[str]
    before: Mapping[str, float]  # the runs evaluated: the files' own scores when given (ties then break as
    after: Mapping[str, float]   # `reasonrank evaluate` breaks them), else rank-derived ones
    skipped: int = 0
    differs: bool = False  # the reranked run given disagrees with the journal's replay


def _initial(qid: str, traces: list[WindowTrace], first_stage, traces_name: str) -> list[str]:
    if first_stage is not None:
        return _ordered(first_stage[qid])
    initial = initial_order_from_windows(traces)
    if not initial:
        raise ReasonRankError(f"{traces_name}: the windows of query {qid!r} do not record their doc ids (a journal "
                              "of an older version): give the first-stage run it reranked")
    return initial


def _queries(by_qid, first_stage, reranked, warnings, traces_name: str) -> list[_Query]:
    out = []
    for qid, traces in by_qid.items():
        initial = _initial(qid, traces, first_stage, traces_name)
        final, applied, skipped = replay(initial, traces)
        before = first_stage[qid] if first_stage is not None else _scores(initial)
        q = _Query(qid, initial, applied, final, before, _scores(final), skipped)
        if reranked is not None:
            q.final, q.after = _ordered(reranked[qid]), reranked[qid]
            depth = max((t.end for t in applied), default=0)
            q.differs = q.final[:depth] != final[:depth]
        out.append(q)
    skipped = sum(q.skipped for q in out)
    if skipped:
        warnings.append(f"{skipped} window(s) did not fit the list they claim to rerank (recorded for another run's "
                        "list, e.g. an earlier run with other settings appended to the same journal); skipped")
    differs = [q.qid for q in out if q.differs]
    if differs:
        warnings.append(f"{len(differs)} query(ies) ({', '.join(differs[:5])}) are ordered differently in the reranked "
                        "run than the journal's windows produce; the reranked run is shown and evaluated")
    return out


def _select(traces: list[WindowTrace], traces_name: str, first_stage, fs_name, reranked, rr_name, warnings):
    """The journal's windows per query, restricted to queries the runs know; fails when none match."""
    by_qid: dict[str, list[WindowTrace]] = defaultdict(list)
    for t in traces:
        by_qid[t.qid].append(t)
    for run, name in ((first_stage, fs_name), (reranked, rr_name)):
        if run is None:
            continue
        unknown = [q for q in by_qid if q not in run]
        if len(unknown) == len(by_qid):
            raise ReasonRankError(f"{traces_name}: none of its {len(by_qid)} queries ({', '.join(list(by_qid)[:5])}) is in "
                                  f"{name}: is the journal from another run?")
        if unknown:
            warnings.append(f"{len(unknown)} query(ies) of the journal are not in {name} and are left out: "
                            f"{', '.join(unknown[:5])}")
            for q in unknown:
                del by_qid[q]
    if reranked is not None:
        orphans = [q for q in reranked if q not in by_qid]
        if orphans:
            warnings.append(f"{len(orphans)} query(ies) of {rr_name} have no window in the journal and are left out")
    if first_stage is not None:  # the first-stage run's order, which is how the reranker met them
        rank = {q: i for i, q in enumerate(first_stage)}
        by_qid = dict(sorted(by_qid.items(), key=lambda kv: rank[kv[0]]))
    return by_qid


def _evaluate(queries: list[_Query], qrels, excluded) -> dict[str, Any] | None:
    if not qrels:
        return None
    from reasonrank.evaluation import evaluate

    before = evaluate({q.qid: q.before for q in queries}, qrels, list(MEASURES), excluded)
    after = evaluate({q.qid: q.after for q in queries}, qrels, list(MEASURES), excluded)
    return {"before": before, "after": after}


def _doc_table(collection, docids: set[str], source: str) -> dict[str, list[str]]:
    if collection is None or not collection.has_docs:
        return {}
    table = {}
    for d in sorted(docids):
        try:
            doc = collection.doc(d)
        except KeyError:
            raise UnknownIdError(f"{source}: doc id {d!r} is not in the collection {collection.name} "
                                 "(is the run or journal of another collection?)") from None
        text = " ".join(doc.text.split())
        table[d] = [doc.title, text[:SNIPPET_CHARS] + ("\u2026" if len(text) > SNIPPET_CHARS else "")]
    return table


def _query_json(q: _Query, text: str, qrels, excluded, ev) -> dict[str, Any]:
    depth = max((t.end for t in q.windows), default=min(len(q.final), 10))
    first_rank = {d: i + 1 for i, d in enumerate(q.initial)}
    judged = qrels.get(q.qid, {}) if qrels else {}
    status = Counter(t.status or "unknown" for t in q.windows)
    out = {
        "qid": q.qid, "text": text, "depth": depth, "windows": [], "status": dict(status),
        "final": [[d, first_rank.get(d)] for d in q.final[:depth]],
        "rel": {d: g for d, g in judged.items() if g > 0},
        "excluded": sorted(set(excluded.get(q.qid, ())) & set(q.final[:depth])) if excluded else [],
        "seconds": round(sum(t.seconds for t in q.windows), 3),
        "pt": sum(t.prompt_tokens for t in q.windows), "ct": sum(t.completion_tokens for t in q.windows),
        "skipped": q.skipped, "differs": q.differs,
    }
    order = list(q.initial)
    for t in q.windows:  # the docids each window saw, for journals written before windows recorded them
        out["windows"].append(_window_json(t, t.docids or order[t.start:t.end]))
        order = apply_permutation(order, t.start, t.end, t.permutation)
    if ev is not None:
        for key in ("before", "after"):
            out[key] = ev[key].per_query.get(q.qid)
    return out


SETTING_LABELS = {"model": "model", "backend": "backend", "mode": "prompt mode", "top_k": "top-k reranked",
                  "window": "window", "step": "step", "passes": "passes", "max_new_tokens": "generation budget (tokens)",
                  "max_passage_tokens": "passage budget (tokens)", "finished": "run finished", "command": "command",
                  "journal": "journal"}


def _settings_rows(settings: Mapping[str, Any] | None, inferred: dict[str, int], journal: str | None,
                   when: str | None) -> list[tuple[str, str]]:
    """(label, value) rows: what the caller knows, else what the windows tell (marked as such)."""
    given = {k: v for k, v in (settings or {}).items() if v not in (None, "")}
    values = {**{k: f"{v} (read from the journal)" for k, v in inferred.items()}, **given}
    if journal:
        values.setdefault("journal", journal)
    if when:
        values.setdefault("finished", when)
    rows = [(label, str(values[key])) for key, label in SETTING_LABELS.items() if key in values]
    return rows + [(str(k), str(v)) for k, v in given.items() if k not in SETTING_LABELS]


def _summary(queries: list[_Query], ev, all_windows: list[WindowTrace], bad_lines: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "queries": len(queries), "windows": sum(len(q.windows) for q in queries),
        "status": dict(Counter(t.status or "unknown" for q in queries for t in q.windows)),
        "bad_lines": bad_lines[:50], "bad_line_count": len(bad_lines), "journal_windows": len(all_windows),
    }
    if ev is not None:
        summary["before"], summary["after"] = ev["before"].aggregate, ev["after"].aggregate
        summary["judged"] = len(ev["after"].per_query)
    return summary


def build_report(
    traces,
    collection=None,
    qrels=None,
    first_stage=None,
    reranked=None,
    settings: Mapping[str, Any] | None = None,
    *,
    task: str | None = None,
    split: str = "test",
    title: str | None = None,
) -> Report:
    """Assemble the report. `traces`: a journal path or WindowTraces (e.g. each Result's `.traces`);
    `collection`: a path or a Collection (query texts, passages, qrels, BRIGHT's excluded ids);
    `qrels`: a path or mapping, used instead of the collection's; `first_stage`/`reranked`: run
    paths or mappings. Without `first_stage` the initial top-k is read back from the windows;
    without `reranked` the final order is the journal's windows replayed."""
    warnings: list[str] = []
    if isinstance(traces, (str, Path)):
        traces_name = journal = str(traces)
        all_traces, bad = read_traces(traces)
        mtime = datetime.fromtimestamp(os.path.getmtime(traces)).astimezone().isoformat(timespec="seconds")
        when = f"{mtime} (journal last written)"
    else:
        traces_name, journal, when = "the run's windows", None, None
        given = list(traces)
        all_traces, bad = [t for t in given if _valid(t)], []
        if not all_traces:
            raise ReasonRankError("no window to report: the run reranked nothing (no query had candidates)")
        if len(all_traces) < len(given):
            warnings.append(f"{len(given) - len(all_traces)} window(s) with an impossible permutation were skipped")
    if bad:
        warnings.append(f"{len(bad)} line(s) of {traces_name} are not window traces and were skipped "
                        f"(line {', '.join(map(str, bad[:10]))}{'…' if len(bad) > 10 else ''}); a killed run leaves a "
                        "half-written last line")
    collection = _as_collection(collection, task, split)
    fs, fs_name = _as_run(first_stage, "first-stage")
    rr, rr_name = _as_run(reranked, "reranked")
    by_qid = _select(all_traces, traces_name, fs, fs_name, rr, rr_name, warnings)
    texts = _query_texts(collection, by_qid, fs_name or traces_name)
    queries = _queries(by_qid, fs, rr, warnings, traces_name)
    judged = _as_qrels(qrels, collection)
    excluded = collection.excluded() if collection is not None else {}
    ev = _evaluate(queries, judged, excluded)
    if ev is None:
        warnings.append("no relevance judgements (give a collection or qrels): measures and grades are not shown")
    qjson = [_query_json(q, texts.get(q.qid, ""), judged, excluded, ev) for q in queries]
    docids = {d for q in qjson for d in [*(f[0] for f in q["final"]), *(d for w in q["windows"] for d in w["docids"])]}
    docs = _doc_table(collection, docids, fs_name or traces_name)
    rows = _settings_rows(settings, infer_settings(all_traces), journal, when)
    name = title or f"reasonrank report: {len(queries)} queries" + (f" of {collection.name}" if collection is not None else "")
    return Report(name, rows, _summary(queries, ev, all_traces, bad), qjson, docs, warnings)


def _query_texts(collection, by_qid, source: str) -> dict[str, str]:
    if collection is None:
        return {}
    texts = {q.qid: q.text for q in collection.queries()}
    unknown = [q for q in by_qid if q not in texts]
    if unknown:
        raise UnknownIdError(f"{source}: query id(s) {unknown[:5]} are not in the collection {collection.name} "
                             "(is it a run of another collection, or another --task/--split?)")
    return texts
