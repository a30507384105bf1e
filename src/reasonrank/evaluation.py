"""Evaluation on ir-measures (pytrec_eval underneath); the BRIGHT protocol; tables.

Measures are values, as in ir_measures: `nDCG@10`, `R@100`, `RR@10`, `AP`. The common spellings
`Recall@k`, `MRR@k` and `MAP` are accepted and reported under the name the user wrote. Names of one
measure (`MAP` and `AP`) are computed once and reported under each name; a name given twice, once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from statistics import mean
from typing import Iterable, Mapping, Sequence

import ir_measures

from reasonrank.errors import ReasonRankError

DEFAULT_MEASURES = ("nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP")
ALIASES = [(re.compile(r"^Recall@(\d+)$"), r"R@\1"), (re.compile(r"^MRR@(\d+)$"), r"RR@\1"), (re.compile(r"^MRR$"), "RR"), (re.compile(r"^MAP(@\d+)?$"), r"AP\1")]


def parse_measure(name: str):
    canonical = name
    for pattern, repl in ALIASES:
        canonical = pattern.sub(repl, canonical)
    try:
        return ir_measures.parse_measure(canonical)
    except (ValueError, NameError, SyntaxError, TypeError) as exc:
        raise ReasonRankError(f"unknown measure {name!r} (examples: nDCG@10, Recall@100, MRR@10, MAP)") from exc


def remove_excluded(run: Mapping[str, Mapping[str, float]], excluded: Mapping[str, Iterable[str]]) -> dict[str, dict[str, float]]:
    """BRIGHT protocol: drop each query's excluded ids from the run before any cut-off is applied."""
    out = {}
    for qid, docs in run.items():
        drop = set(excluded.get(qid, ()))
        out[qid] = {d: s for d, s in docs.items() if d not in drop} if drop else dict(docs)
    return out


@dataclass
class Evaluation:
    measures: list[str]
    per_query: dict[str, dict[str, float]]
    aggregate: dict[str, float]
    judged_queries: int
    missing_queries: list[str] = field(default_factory=list)  # judged, but absent from the run

    def to_dict(self) -> dict:
        return {
            "aggregate": self.aggregate,
            "evaluated_queries": len(self.per_query),
            "judged_queries": self.judged_queries,
            "missing_queries": self.missing_queries,
            "per_query": self.per_query,
        }


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = DEFAULT_MEASURES,
    excluded: Mapping[str, Iterable[str]] | None = None,
) -> Evaluation:
    """Score a run. Queries judged but missing from the run are listed, and (as trec_eval does)
    averaged over only the evaluated queries; unjudged queries in the run are ignored."""
    if excluded:
        run = remove_excluded(run, excluded)
    measures = list(dict.fromkeys(measures))  # a name given twice is one column
    parsed = {name: parse_measure(name) for name in measures}
    names_of: dict = {}  # measure -> every name it was asked by (MAP and AP are one measure)
    for name, m in parsed.items():
        names_of.setdefault(m, []).append(name)
    qrels = {q: dict(d) for q, d in qrels.items() if d}
    run = {q: dict(d) for q, d in run.items() if q in qrels and d}
    per_query: dict[str, dict[str, float]] = {q: {} for q in run}
    # ir-measures scores judged queries absent from the run as 0; we report them as missing instead
    for metric in ir_measures.iter_calc(list(names_of), {q: qrels[q] for q in run}, run):
        for name in names_of[metric.measure]:
            per_query[metric.query_id][name] = float(metric.value)
    aggregate = {name: mean(pq[name] for pq in per_query.values()) if per_query else 0.0 for name in measures}
    missing = sorted(set(qrels) - set(run))
    return Evaluation(measures, per_query, aggregate, len(qrels), missing)


def format_table(rows: Mapping[str, Mapping[str, float]], measures: Sequence[str], fmt: str = "text", scale: float = 100.0, average: bool = True) -> str:
    """One row per task (or run) and their average; values x100 by default, as papers report them."""
    rows = dict(rows)
    if average and len(rows) > 1:
        rows["average"] = {m: mean(r[m] for r in rows.values()) for m in measures}
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cells = [[name] + [f"{r[m] * scale:.2f}" for m in measures] for name, r in rows.items()]
    header = ["task"] + list(measures)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(measures)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header] + cells) for i in range(len(header))]
    def line(row):
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(c) for c in cells])
