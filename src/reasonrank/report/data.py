"""The report model: what a run did, assembled from its window journal, runs, qrels and collection.

Each query's windows are replayed by its method: the sliding window's at their positions (each window's
doc ids must be what the list holds there), top-down partitioning's (`tdpart`, whose windows have no
positions) by running the reranker's own plan with the journal answering each window by its doc ids,
which gives the run's final order exactly.

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
from reasonrank.journal import FAILED
from reasonrank.types import WindowTrace
from reasonrank.windows import apply_permutation, passes_schedule

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

METHODS = ("sliding", "tdpart")  # the listwise methods whose windows the report replays


def _size(trace: WindowTrace) -> int:
    """How many passages the window held: its doc ids, else (a journal older than doc ids) its positions."""
    if trace.docids:
        return len(trace.docids)
    if trace.start is not None and trace.end is not None:
        return trace.end - trace.start
    return 0


def _valid(trace: WindowTrace) -> bool:
    """A window the report can replay: a permutation of its passages, and for the sliding window positions
    that agree with its doc ids. tdpart's windows are not contiguous: they are replayed by doc id alone."""
    size = _size(trace)
    if trace.method not in METHODS or size == 0 or sorted(trace.permutation) != list(range(size)):
        return False
    if trace.method == "tdpart":
        return bool(trace.docids)
    return trace.start is not None and trace.end is not None and 0 <= trace.start < trace.end and trace.end - trace.start == size


def read_journal(path: str | Path) -> tuple[dict[str, Any] | None, list[WindowTrace], list[int]]:
    """(header, windows, numbers of the lines that are not windows) of a journal, windows in file order.

    The header (the engine that wrote the file) is None for a journal older than headers. A killed run
    leaves a half-written last line, so bad lines (and windows no run could have written: a permutation
    that is not one) are counted rather than fatal; a file with no window at all is not a journal, and
    fails naming it."""
    from reasonrank.journal import read_windows

    header, windows, bad = read_windows(path)
    invalid = [i for i, t in enumerate(windows) if not _valid(t)]
    if invalid:
        lines = _window_lines(path, header is not None, set(bad))
        bad = sorted([*bad, *(lines[i] for i in invalid)])
        drop = set(invalid)
        windows = [t for i, t in enumerate(windows) if i not in drop]
    if not windows and header is not None and not bad:
        raise FormatError(path, None, "a journal with no window yet: its run recorded none")
    if not windows:
        problem = f"no window trace in {len(bad)} line(s)" if bad else "empty file"
        raise FormatError(path, bad[0] if bad else None, f"{problem}: expected the JSONL journal written by `rerank --traces`")
    return header, windows, bad


def _window_lines(path, has_header: bool, bad: set[int]) -> list[int]:
    """The line number of each window read_windows returned, in order (it skips blank, bad and header lines)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [n for n, line in enumerate(fh, 1) if line.strip() and n not in bad and not (has_header and n == 1)]


def read_traces(path: str | Path) -> tuple[list[WindowTrace], list[int]]:
    """The journal's windows in file order, and the numbers of the lines that are not windows (see read_journal)."""
    _, windows, bad = read_journal(path)
    return windows, bad


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

@dataclass
class Shown:
    """A window as the report shows it: its record, the doc ids it saw, and its place in the replay."""

    trace: WindowTrace
    docids: list[str]  # input order: recorded, or (a journal older than doc ids) read off the replayed list
    method: str = "sliding"  # the method that asked for it in the replay (the record may be another's: they share answers)
    pass_index: int = 0  # sliding: the sweep and positions the replay applied it at; tdpart: no positions
    start: int | None = None
    end: int | None = None
    role: str = ""  # tdpart: first, partition or recursion, as the replay asked for it
    retried: bool = False  # a failed answer the run asked again (the answer used is shown after it)


def initial_order_from_windows(traces: list[WindowTrace]) -> list[str]:
    """The first-stage top-k a query's sliding windows started from, when no first-stage run is given.

    Pass 0 slides from the bottom up and each window recorded its input docids, so the positions a
    window covers below the previous window's start are still in first-stage order."""
    first_pass = sorted((t for t in traces if t.pass_index == 0 and t.docids and t.end is not None), key=lambda t: -t.end)
    if not first_pass:
        return []
    size = max(t.end for t in first_pass)
    order: list[str | None] = [None] * size
    for t in first_pass:
        for pos in range(t.start, t.end):
            if order[pos] is None:
                order[pos] = t.docids[pos - t.start]
    return [d for d in order if d is not None]


def replay(initial: list[str], traces: Iterable[WindowTrace]) -> tuple[list[str], list[Shown], int]:
    """Apply sliding windows in journal order at their positions: (final order, windows applied, windows
    skipped). A window is skipped when it was recorded for another list (its docids differ from what
    the list holds at its positions): windows of an earlier run with other settings, appended to the
    same journal, would otherwise reorder the wrong passages. Used where replay_sliding cannot be: the
    windows belong to more than one schedule, or record no doc ids (journals of older versions)."""
    order, shown, skipped = list(initial), [], 0
    for t in traces:
        if t.end > len(order) or (t.docids and order[t.start:t.end] != t.docids):
            skipped += 1
            continue
        shown.append(Shown(t, t.docids or order[t.start:t.end], "sliding", t.pass_index, t.start, t.end))  # doc ids read
        order = apply_permutation(order, t.start, t.end, t.permutation)  # off the list for journals without them
    return order, shown, skipped


def sliding_shape(traces: list[WindowTrace]) -> tuple[int, int, int, int] | None:
    """(top_k, window, step, passes) of a query's sliding windows, read back from their positions; None
    when some window records no doc ids or does not belong to that one schedule (runs with other
    settings appended to the same journal)."""
    mine = [t for t in traces if t.method == "sliding"]
    if not mine or any(not t.docids for t in mine):
        return None
    top_k, window = max(t.end for t in mine), max(t.end - t.start for t in mine)
    steps = Counter()
    for p in {t.pass_index for t in mine}:
        ends = sorted({t.end for t in mine if t.pass_index == p}, reverse=True)
        steps.update(a - b for a, b in zip(ends, ends[1:]))
    step, passes = steps.most_common(1)[0][0] if steps else window, max(t.pass_index for t in mine) + 1
    try:
        schedule = set(passes_schedule(top_k, window, step, passes))
    except ValueError:
        return None
    if any((t.pass_index, t.start, t.end) not in schedule for t in mine):
        return None
    return top_k, window, step, passes


# tdpart: its windows are not contiguous, so it is replayed by doc id, running the reranker's own plan
# (reasonrank.rerankers.tdpart.partition_plan) with the journal answering each window it asks for.

def tdpart_shape(traces: list[WindowTrace]) -> tuple[int, int, int] | None:
    """(index of the query's first window, window size, k) read back from its tdpart windows: the window
    is the first window's size; k is the pivot's rank in the first window's answer, the pivot being the
    first partition window's first passage (or, when every candidate past the first window was held
    back for the final window, as many as lead that window from the first one). None without a first window."""
    at = next((i for i, t in enumerate(traces) if t.method == "tdpart" and t.role == "first" and t.docids), None)
    if at is None:
        return None
    first = traces[at]
    out, seen = first.output_docids, set(first.docids)
    later = [t for t in traces[at + 1:] if t.method == "tdpart" and t.docids]
    for t in later:
        if t.role == "partition" and t.docids[0] in seen:
            return at, len(first.docids), out.index(t.docids[0]) + 1
    for t in later:
        if t.role == "recursion":
            lead = next((j for j, d in enumerate(t.docids) if d not in seen), len(t.docids))
            if 0 < lead < len(first.docids):
                return at, len(first.docids), lead
    return at, len(first.docids), max(1, min(10, len(first.docids) // 2))  # one window: k changes nothing


def initial_order_tdpart(traces: list[WindowTrace]) -> list[str]:
    """The first-stage top-k a query's tdpart windows started from, when no first-stage run is given: the
    first window's doc ids, then the partitions' (each after the pivot it repeats), then those first seen
    in a recursion window (held back for the final window), in journal order."""
    shape = tdpart_shape(traces)
    if shape is None:
        return []
    order: dict[str, None] = {}
    for t in traces[shape[0]:]:
        if t.method == "tdpart":
            order.update(dict.fromkeys(t.docids))
    return list(order)


def _answers(traces: list[WindowTrace]) -> dict[tuple[str, ...], list[WindowTrace]]:
    """Every recorded answer per window (its input doc ids), in journal order. A window's answer depends on
    its prompt alone, so any method's record of the same window answers it, as the run's journal did."""
    out: dict[tuple[str, ...], list[WindowTrace]] = defaultdict(list)
    for t in traces:
        if t.docids:
            out[tuple(t.docids)].append(t)
    return out


def _answer(records: list[WindowTrace]) -> WindowTrace:
    """The answer the run used: the last that did not fail (a failed window is asked again, never reused),
    else the last failure (the run kept that window's input order)."""
    return next((t for t in reversed(records) if t.status not in FAILED), records[-1])


def _answered(answers, docids: list[str], shown: list[Shown], used: set[int], where: dict) -> WindowTrace | None:
    """The journal's answer to a window the replay asks for (None: not recorded), after showing the failed
    answers the run asked again; `where` says where the replay asked for it (Shown's fields)."""
    records = answers.get(tuple(docids))
    if not records:
        return None
    answer = _answer(records)
    for t in records[:records.index(answer)]:  # failures the run asked again, shown before the answer it used
        if t.status in FAILED and id(t) not in used:
            shown.append(Shown(t, docids, retried=True, **where))
            used.add(id(t))
    shown.append(Shown(answer, docids, **where))
    used.add(id(answer))
    return answer


def replay_sliding(initial: list[str], traces: list[WindowTrace], shape: tuple[int, int, int, int]
                   ) -> tuple[list[str], list[Shown], list[WindowTrace], int]:
    """Replay a query's sliding windows by doc id: the run's own schedule (`shape`, see sliding_shape) over
    `initial`, each window answered as the run's journal answered it (the last answer to the same doc ids
    that did not fail, whichever method recorded it). (final order, windows shown, journal windows not
    used, windows the run needed that the journal lacks: taken as keeping their input order.)"""
    top_k, window, step, passes = shape
    answers, shown, used, missing = _answers(traces), [], set(), 0
    order = list(initial)
    for p, start, end in passes_schedule(min(top_k, len(order)), window, step, passes):
        docids = order[start:end]
        answer = _answered(answers, docids, shown, used, {"method": "sliding", "pass_index": p, "start": start, "end": end})
        if answer is None:
            missing += 1
            continue
        order = apply_permutation(order, start, end, answer.permutation)
    return order, shown, [t for t in traces if id(t) not in used], missing


def replay_tdpart(initial: list[str], traces: list[WindowTrace], top_k: int | None = None
                  ) -> tuple[list[str], list[Shown], list[WindowTrace], int, int]:
    """Replay a query's tdpart windows: (final order, windows shown in the order the run asked for them,
    journal windows the replay did not use, windows the run needed that the journal lacks, how many
    passages were reranked).

    `initial` is the first-stage order; its top `top_k` (default: as deep as the windows reach) were
    reranked and the rest keep their place below. A window the journal lacks (a run killed before it)
    is taken as answered in its input order, as a failed window is."""
    from reasonrank.rerankers.tdpart import partition_plan
    from reasonrank.types import Candidate

    shape = tdpart_shape(traces)
    if shape is None:
        return list(initial), [], list(traces), 0, 0
    _, window, k = shape
    if top_k is None:
        rank = {d: i for i, d in enumerate(initial)}
        reached = [rank[d] for t in traces[shape[0]:] if t.method == "tdpart" for d in t.docids if d in rank]
        top_k = max(reached, default=-1) + 1
    answers, shown, used, missing = _answers(traces), [], set(), 0
    plan = partition_plan([Candidate(d) for d in initial[:top_k]], k, window)
    try:
        asked = next(plan)
        while True:
            replies = []
            for role, candidates in asked:
                docids = [c.docid for c in candidates]
                answer = _answered(answers, docids, shown, used, {"method": "tdpart", "role": role})
                if answer is None:
                    missing += 1
                    answer = WindowTrace("", 0, None, None, "", permutation=list(range(len(docids))), docids=docids)
                replies.append(answer)
            asked = plan.send(replies)
    except StopIteration as stop:
        final = [c.docid for c in stop.value] + list(initial[top_k:])
    unused = [t for t in traces if id(t) not in used]
    return final, shown, unused, missing, min(top_k, len(initial))


def infer_settings(traces: list[WindowTrace]) -> dict[str, Any]:
    """The method and its settings, read back from the windows (for a journal, when the caller gives none)."""
    methods = Counter(t.method for t in traces)
    if len(methods) > 1:
        return {"method": " and ".join(f"{m} ({n} windows)" for m, n in methods.items())}
    if "tdpart" in methods:
        by_qid: dict[str, list[WindowTrace]] = defaultdict(list)
        for t in traces:
            by_qid[t.qid].append(t)
        shapes = [s for s in map(tdpart_shape, by_qid.values()) if s is not None]
        out: dict[str, Any] = {"method": "tdpart", "top_k": max(len(initial_order_tdpart(ts)) for ts in by_qid.values())}
        if shapes:
            out["window"] = max(w for _, w, _ in shapes)
            ks = Counter(k for _, _, k in shapes)
            out["pivot"] = ks.most_common(1)[0][0]
        return out
    first = sorted({(t.start, t.end) for t in traces if t.pass_index == 0}, key=lambda w: -w[1])
    ends = [e for _, e in first]
    steps = Counter(a - b for a, b in zip(ends, ends[1:]))
    return {"method": "sliding", "top_k": max(t.end for t in traces), "window": max(t.end - t.start for t in traces),
            "step": steps.most_common(1)[0][0] if steps else max(t.end - t.start for t in traces),
            "passes": max(t.pass_index for t in traces) + 1}


# -- assembling --------------------------------------------------------------------------------------

def _window_json(w: Shown) -> dict[str, Any]:
    """One window for the browser. The raw output repeats the reasoning verbatim; it is cut out of
    the answer shown (and not stored twice), which halves the file of a reasoning model's run."""
    t = w.trace
    answer = t.raw_output
    if t.reasoning and t.reasoning in answer:
        answer = answer.replace(t.reasoning, "\u2026", 1)
    out = {"method": w.method, "pass": w.pass_index, "start": w.start, "end": w.end, "status": t.status or "unknown",
           "pt": t.prompt_tokens, "ct": t.completion_tokens, "sec": round(t.seconds, 3), "hash": t.prompt_hash,
           "docids": w.docids, "perm": t.permutation, "reasoning": t.reasoning, "answer": answer}
    if t.forced_prefix:  # on_truncation force: the forced second part of a window its budget cut
        out["forced"] = {"prefix": t.forced_prefix, "answer": t.forced_answer, "pt": t.forced_prompt_tokens,
                         "ct": t.forced_completion_tokens, "sec": round(t.forced_seconds, 3), "error": t.forced_error}
    if w.role:  # tdpart: no positions, a role
        out["role"] = w.role
    if w.retried:  # a failed answer the run asked again
        out["retried"] = True
    if t.method != w.method:  # the answer was recorded by another method's window with the same passages
        out["shared"] = t.method
    return out


def _ordered(run_for_query: Mapping[str, float]) -> list[str]:
    return [d for d, _ in ranked(run_for_query)]


def _scores(order: list[str]) -> dict[str, float]:
    """Rank-derived scores (n … 1), as the reranker writes its runs."""
    return {d: float(len(order) - i) for i, d in enumerate(order)}


@dataclass
class _Query:
    qid: str
    method: str
    initial: list[str]
    windows: list[Shown]
    final: list[str]
    before: Mapping[str, float]  # the runs evaluated: the files' own scores when given (ties then break as
    after: Mapping[str, float]   # `reasonrank evaluate` breaks them), else rank-derived ones
    depth: int  # how deep the windows reranked
    skipped: int = 0  # journal windows of this query the replay did not use
    missing: int = 0  # windows the run asked for that the journal lacks (tdpart)
    differs: bool = False  # the reranked run given disagrees with the journal's replay


def _initial(qid: str, method: str, traces: list[WindowTrace], first_stage, traces_name: str) -> list[str]:
    if first_stage is not None:
        return _ordered(first_stage[qid])
    initial = initial_order_tdpart(traces) if method == "tdpart" else initial_order_from_windows(traces)
    if not initial:
        why = ("include no first window (role first)" if method == "tdpart"
               else "do not record their doc ids (a journal of an older version)")
        raise ReasonRankError(f"{traces_name}: the {method} windows of query {qid!r} {why}: give the first-stage run it reranked")
    return initial


def _replay_query(qid: str, traces: list[WindowTrace], first_stage, traces_name: str) -> _Query:
    """One query's windows replayed by the method of its last window (the run that wrote last). Windows
    the replay does not use (of another method or another run's list) are counted as skipped."""
    method = traces[-1].method
    if method == "tdpart":
        initial = _initial(qid, method, traces, first_stage, traces_name)
        final, shown, unused, missing, depth = replay_tdpart(initial, traces)
        skipped = len(unused)
    else:
        mine = [t for t in traces if t.method == method]
        initial = _initial(qid, method, mine, first_stage, traces_name)
        shape = sliding_shape(mine)
        if shape is not None:  # one schedule: replayed by doc id, as the run resumed it
            final, shown, unused, missing = replay_sliding(initial, traces, shape)
            skipped, depth = len(unused), min(shape[0], len(initial))
        else:  # runs with other settings in one journal, or no doc ids: each window where it fits
            final, shown, skipped = replay(initial, mine)
            skipped += len(traces) - len(mine)
            depth, missing = max((w.end for w in shown), default=min(len(final), 10)), 0
    before = first_stage[qid] if first_stage is not None else _scores(initial)
    return _Query(qid, method, initial, shown, final, before, _scores(final), depth, skipped, missing)


def _queries(by_qid, first_stage, reranked, warnings, traces_name: str) -> list[_Query]:
    out = []
    for qid, traces in by_qid.items():
        q = _replay_query(qid, traces, first_stage, traces_name)
        if reranked is not None:
            replayed = q.final
            q.final, q.after = _ordered(reranked[qid]), reranked[qid]
            q.differs = q.final[:q.depth] != replayed[:q.depth]
        out.append(q)
    skipped = sum(q.skipped for q in out)
    if skipped:
        warnings.append(f"{skipped} window(s) did not fit the list they claim to rerank (recorded for another run's "
                        "list: an earlier run appended to the same journal, with other settings or a window the later "
                        "run asked again); skipped")
    missing = [q for q in out if q.missing]
    if missing:
        warnings.append(f"{sum(q.missing for q in missing)} window(s) that the run of {len(missing)} query(ies) "
                        f"({', '.join(q.qid for q in missing[:5])}) needed are not in the journal (a run killed before "
                        "them?); each was taken as keeping its input order")
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
    depth = q.depth or min(len(q.final), 10)
    first_rank = {d: i + 1 for i, d in enumerate(q.initial)}
    judged = qrels.get(q.qid, {}) if qrels else {}
    windows = [w.trace for w in q.windows]
    out = {
        "qid": q.qid, "text": text, "method": q.method, "depth": depth,
        "windows": [_window_json(w) for w in q.windows], "status": dict(Counter(t.status or "unknown" for t in windows)),
        "final": [[d, first_rank.get(d)] for d in q.final[:depth]],
        "rel": {d: g for d, g in judged.items() if g > 0},
        "excluded": sorted(set(excluded.get(q.qid, ())) & set(q.final[:depth])) if excluded else [],
        # a window's forced answer (a second call) included
        "seconds": round(sum(t.seconds + t.forced_seconds for t in windows), 3),
        "pt": sum(t.prompt_tokens + t.forced_prompt_tokens for t in windows),
        "ct": sum(t.completion_tokens + t.forced_completion_tokens for t in windows),
        "skipped": q.skipped, "missing": q.missing, "differs": q.differs,
    }
    if ev is not None:
        for key in ("before", "after"):
            out[key] = ev[key].per_query.get(q.qid)
    return out


SETTING_LABELS = {"model": "model", "backend": "backend", "engine": "engine", "engine_id": "engine id", "method": "method",
                  "mode": "prompt mode", "top_k": "top-k reranked", "window": "window", "step": "step", "passes": "passes",
                  "pivot": "pivot (the rank tdpart settles)", "max_new_tokens": "generation budget (tokens)",
                  "reasoning_budget": "reasoning budget (tokens)", "answer_budget": "answer budget (tokens; a forced answer's too)",
                  "on_truncation": "a window cut in its reasoning (on_truncation)",
                  "max_passage_tokens": "passage budget (tokens)", "finished": "run finished", "command": "command",
                  "journal": "journal"}


def engine_text(engine: Mapping[str, Any]) -> str:
    """An engine identity (the journal header's) on one line: `backend: llamacpp; model: {...}; ...`."""
    def value(v) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)

    return "; ".join(f"{k}: {value(v)}" for k, v in engine.items())


def _settings_rows(settings: Mapping[str, Any] | None, inferred: dict[str, Any], journal: str | None,
                   when: str | None, header: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """(label, value) rows: what the caller knows, else what the journal tells (marked as such)."""
    given = {k: v for k, v in (settings or {}).items() if v not in (None, "", {})}
    values = {**{k: f"{v} (read from the journal)" for k, v in inferred.items()}, **given}
    if header is not None:  # the engine that wrote the journal: its own record, not an inference
        values.setdefault("engine", header.get("engine") or {})
        values.setdefault("engine_id", header.get("engine_id"))
    elif journal:
        values.setdefault("engine", "not recorded (a journal older than engine headers)")
    if isinstance(values.get("engine"), Mapping):
        values["engine"] = engine_text(values["engine"]) or "(empty)"
    if journal:
        values.setdefault("journal", journal)
    if when:
        values.setdefault("finished", when)
    rows = [(label, str(values[key])) for key, label in SETTING_LABELS.items() if values.get(key) not in (None, "")]
    return rows + [(str(k), str(v)) for k, v in given.items() if k not in SETTING_LABELS]


def _summary(queries: list[_Query], ev, all_windows: list[WindowTrace], bad_lines: list[int]) -> dict[str, Any]:
    shown = [w for q in queries for w in q.windows]
    summary: dict[str, Any] = {
        "queries": len(queries), "windows": len(shown),
        "methods": dict(Counter(q.method for q in queries)),
        "status": dict(Counter(w.trace.status or "unknown" for w in shown)),
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
        header, all_traces, bad = read_journal(traces)
        mtime = datetime.fromtimestamp(os.path.getmtime(traces)).astimezone().isoformat(timespec="seconds")
        when = f"{mtime} (journal last written)"
    else:
        traces_name, journal, when, header = "the run's windows", None, None, None
        given = list(traces)
        all_traces, bad = [t for t in given if _valid(t)], []
        if not all_traces:
            raise ReasonRankError("no window to report: the run reranked nothing (no query had candidates)")
        if len(all_traces) < len(given):
            warnings.append(f"{len(given) - len(all_traces)} window(s) with an impossible permutation (or of a method "
                            "without windows) were skipped")
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
    rows = _settings_rows(settings, infer_settings(all_traces), journal, when, header)
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
