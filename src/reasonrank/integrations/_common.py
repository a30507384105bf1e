"""What the adapters share: building (or taking) the reranker, and reranking a list of texts with the HTTP
service's checks and scores.

Every adapter builds its reranker as every face does, `reasonrank.spec.build(spec)`, from `spec=` or from
the Python faces' `(model, backend, **options)` (`RerankerSpec.from_options`). No lock and no per-call copy
here: a backend guards itself (its declared concurrency), a reranker is safe to call from several threads,
and a reranker without a journal file keeps nothing in memory."""

from __future__ import annotations

from typing import Any, Sequence

from reasonrank.scoring import score_ranking
from reasonrank.types import Candidate
from reasonrank.validation import InvalidInput, check_rerank_input, type_name


def build_reranker(model: str | None, backend: str | None, reranker: Any | None, options: dict[str, Any], *,
                   spec: Any | None = None, journal: bool = True):
    """`reranker` as given (one loaded model shared by several adapters), else `build(spec)`, where the spec
    is `spec` or `RerankerSpec.from_options(model, backend, **options)` (options named like a spec field set
    it, the others go to the backend: `n_threads=1`, `base_urls=[...]`).

    `journal=False` for the adapters that rerank one request at a time: a journal file is refused (before
    a model loads), as a per-call reranking is no run to resume."""
    from reasonrank.spec import RerankerSpec, build

    if reranker is not None and (spec is not None or model is not None or backend is not None or options):
        raise ValueError("pass either reranker= or what to build one from (spec=, or the model, backend and options), not both")
    if spec is not None and (model is not None or backend is not None or options):
        raise ValueError("pass either spec= or the model, backend and options, not both")
    if reranker is None:
        spec = spec if spec is not None else RerankerSpec.from_options(model, backend, **options)
        if not journal:
            check_adapter_spec(spec)
        return build(spec)
    if not journal:
        _refuse_journal(journal_path(reranker))
    return reranker


def check_adapter_spec(spec) -> None:
    """A spec an adapter that reranks one request at a time can take: one without a journal file."""
    _refuse_journal(spec.journal)


def _refuse_journal(path) -> None:
    if path is not None:
        raise ValueError(f"this adapter reranks one request at a time and keeps no journal file; "
                         f"build the reranker without journal= (got {path})")


def journal_path(reranker) -> str | None:
    """The journal file a reranker writes, if any: its spec's (built rerankers), else its journal's."""
    spec = getattr(reranker, "spec", None)
    if spec is not None:
        return spec.journal
    journal = getattr(reranker, "journal", None)
    path = getattr(journal, "path", None)
    return str(path) if path is not None else None


def _candidates(query: Any, texts: Sequence[Any], top_n: Any, scores: Sequence[Any] | None) -> tuple[int, list[Candidate]]:
    n = check_rerank_input(query, texts, top_n)
    check_first_stage(scores, len(texts))
    # positions as ids: texts carry none
    return n, [Candidate(str(i), 0.0, text) for i, text in enumerate(texts)]


def check_first_stage(scores: Sequence[Any] | None, n: int) -> None:
    """First-stage scores, one number per document, or None; else InvalidInput."""
    if scores is None:
        return
    if len(scores) != n:
        raise InvalidInput(f"{len(scores)} first-stage scores for {n} documents: give one per document, or none")
    for i, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidInput(f"scores[{i}] must be a number, got {type_name(value)}")


def first_stage(values: Sequence[Any]) -> list[float] | None:
    """The first stage's scores when every document has one (a node's, a Document's score), else None: the input
    order then stands for the first stage (reasonrank.scoring)."""
    return [float(v) for v in values] if values and all(v is not None for v in values) else None


def _ranked(reranker, result, n: int, scores: Sequence[float] | None) -> list[tuple[int, float]]:
    # the scores every face reports, from the reranker's spec (score_mode, blend_weight, min_score): reasonrank.scoring
    return score_ranking(reranker.spec, [int(c.docid) for c in result.candidates], scores)[:n]


def rerank_texts(reranker, query: Any, texts: Sequence[Any], top_n: Any = None,
                 scores: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """(index into `texts`, score) best first, `top_n` of them (None: all). `scores`: the first stage's score of
    each text (None: their order stands for it). Bad input raises reasonrank.validation.InvalidInput; the scores
    are the HTTP service's (reasonrank.scoring: 1 / (rank + 1), or the spec's blend; `min_score` drops some)."""
    n, candidates = _candidates(query, texts, top_n, scores)
    return _ranked(reranker, reranker.rerank(query, candidates), n, scores)


async def arerank_texts(reranker, query: Any, texts: Sequence[Any], top_n: Any = None,
                        scores: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """`rerank_texts` for async callers: `reranker.arerank` (the reranking runs in a worker thread, so the
    event loop stays free)."""
    n, candidates = _candidates(query, texts, top_n, scores)
    return _ranked(reranker, await reranker.arerank(query, candidates), n, scores)
