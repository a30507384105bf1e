"""The scores every face returns, computed here once: the CLI's run file, the HTTP service's responses (every
API shape), MCP and every adapter call `score_order` (or `score_results`, its Result-level form) on the
reranker's final order, with the spec's `score_mode`, `blend_weight` and `min_score`.

A listwise reranker produces an ORDER, not scores: the model reads windows of passages and answers with a
permutation. What a face reports as a score is derived from that order (and, in `blend`, from the first
stage's scores):

* `rank` (the default): the document at 0-based position r of the reranked list scores 1 / (r + 1): 1.0 for
  the top, 0.5 for the second, strictly decreasing, so sorting by it gives the model's order. It says where the
  model put a document, nothing about how relevant it is: not a probability, not calibrated, not comparable
  across queries (the best of ten useless passages still scores 1.0).
* `blend`: a weighted mix of the rerank position and the first stage's score, GroupRank's recipe (0.6 of the
  reranker, 0.4 of the retriever by default):

      blend = w * (1 - r / (n - 1)) + (1 - w) * (s - min s) / (max s - min s)

  with w = `blend_weight`, r the reranked position among the n documents, s the first-stage score (min and max
  over the same n documents). Both sides are min-max normalised into [0, 1] (the top of each list is 1, the
  bottom 0; a single document, or first-stage scores all equal, count as 1). Results are re-sorted by the
  blended score (ties keep the reranked order). Where no first-stage scores are given (an API without a score
  field, a LangChain document without one), the input order stands for the first stage: s = 1 - i / (n - 1)
  for the document sent at position i. Blending lets a strong first-stage score hold a document the reranker
  put lower; the number is still a rank mix, not a probability.

`min_score` (default none) is a threshold applied after scoring: results scoring below it are dropped (an API's
`top_n` then counts what is left). In `rank` mode it keeps the top floor(1 / min_score) documents (0.2: five);
in `blend` mode it cuts on the mixed score.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

SCORE_MODES = ("rank", "blend")
DEFAULT_BLEND_WEIGHT = 0.6  # GroupRank: 0.6 reranker + 0.4 retriever


def check_scoring(score_mode: Any, blend_weight: Any, min_score: Any) -> None:
    """ValueError naming the setting when one is not valid (the spec and the API requests use it)."""
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
    if not _number(blend_weight) or not 0.0 <= blend_weight <= 1.0:
        raise ValueError(f"blend_weight must be a number between 0 and 1, got {blend_weight!r}")
    if min_score is not None and not _number(min_score):
        raise ValueError(f"min_score must be a number or null, got {min_score!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _normalised(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def _linear(n: int) -> list[float]:
    """1 for position 0 down to 0 for position n - 1 (1 for a single one)."""
    return [1.0 - i / (n - 1) for i in range(n)] if n > 1 else [1.0] * n


def score_order(order: Sequence[int], first_stage: Sequence[float] | None = None, *, score_mode: str = "rank",
                blend_weight: float = DEFAULT_BLEND_WEIGHT, min_score: float | None = None) -> list[tuple[int, float]]:
    """(input position, score) best first, for a reranked `order` (input positions, best first, all n of them).

    `first_stage`: the first stage's score of each input position (None: the input order stands for it). The
    list comes back re-sorted by score and without the results below `min_score`."""
    n = len(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}, got {list(order)}")
    if first_stage is not None and len(first_stage) != n:
        raise ValueError(f"{len(first_stage)} first-stage scores for {n} documents")
    check_scoring(score_mode, blend_weight, min_score)
    if score_mode == "rank":
        scored = [(index, 1.0 / (rank + 1)) for rank, index in enumerate(order)]
    else:
        first = _normalised([float(s) for s in first_stage]) if first_stage is not None else _linear(n)
        position = _linear(n)
        w = float(blend_weight)
        mixed = [(index, w * position[rank] + (1.0 - w) * first[index]) for rank, index in enumerate(order)]
        scored = sorted(mixed, key=lambda item: -item[1])  # stable: equal scores keep the reranked order
    if min_score is not None:
        scored = [(i, s) for i, s in scored if s >= min_score]
    return scored


def spec_scoring(spec) -> dict[str, Any]:
    """The scoring settings of a RerankerSpec (or anything with those attributes), as `score_order` takes them."""
    return {"score_mode": spec.score_mode, "blend_weight": spec.blend_weight, "min_score": spec.min_score}


def score_ranking(spec, order: Sequence[int], first_stage: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """`score_order` with the spec's scoring settings."""
    return score_order(order, first_stage, **spec_scoring(spec))


def score_results(spec, requests: Sequence, results: Sequence, first_stage: bool = True) -> list:
    """Results whose candidates carry the final scores, best first, those below the threshold dropped.

    `requests[i]` is what `results[i]` reranked: its candidates' input order, and (with `first_stage`) their
    `score` as the first stage's (a run file's scores on the CLI)."""
    from reasonrank.types import Candidate, Result

    out = []
    for request, result in zip(requests, results):
        position = {c.docid: i for i, c in enumerate(request.candidates)}
        by_position = {position[c.docid]: c for c in result.candidates}
        order = [position[c.docid] for c in result.candidates]
        first = [c.score for c in request.candidates] if first_stage else None
        ranked = score_ranking(spec, order, first)
        out.append(Result(result.query, [Candidate(by_position[i].docid, score, by_position[i].text, by_position[i].title)
                                         for i, score in ranked], result.traces))
    return out


def scoring_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring settings present in a mapping (an API request's extension fields)."""
    return {k: data[k] for k in ("score_mode", "blend_weight", "min_score") if k in data}


__all__ = ["DEFAULT_BLEND_WEIGHT", "SCORE_MODES", "check_scoring", "score_order", "score_ranking", "score_results",
           "scoring_fields", "spec_scoring"]
