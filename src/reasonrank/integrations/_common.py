"""What the adapters share: building (or taking) the reranker, one model call at a time per engine,
and reranking a list of texts with the HTTP service's checks and scores."""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any, Sequence

from reasonrank.journal import Journal
from reasonrank.rerankers import ListwiseReranker, Reranker
from reasonrank.serving.schema import relevance_score
from reasonrank.types import Candidate
from reasonrank.validation import check_rerank_input

_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def build_reranker(model: str | None, backend: str | None, reranker: ListwiseReranker | None,
                   options: dict[str, Any], *, journal: bool = True) -> ListwiseReranker:
    """`reranker` as given (one loaded model shared by several adapters), else `Reranker(model, backend, **options)`.

    `journal=False` for the adapters that rerank one request at a time: each request runs with its own
    in-memory journal (see per_request), so a journal file would silently stay empty; it is refused,
    before a model loads."""
    if reranker is not None and (model is not None or backend is not None or options):
        raise ValueError("pass either reranker= or the model, backend and options to build one, not both")
    given = reranker.journal if reranker is not None else options.get("journal")
    path = given.path if isinstance(given, Journal) else given
    if not journal and path is not None:
        raise ValueError(f"this adapter reranks one request at a time and keeps no journal file; "
                         f"build the reranker without journal= (got {path})")
    return reranker if reranker is not None else Reranker(model, backend, **options)


def engine_lock(reranker: ListwiseReranker) -> threading.Lock:
    """The lock of the reranker's engine. LangChain and LlamaIndex run async calls in worker threads and MCP
    runs tools in them, but an engine (llama.cpp above all) must not be entered by two threads at once."""
    with _locks_guard:
        return _locks.setdefault(reranker.backend, threading.Lock())


def per_request(reranker: ListwiseReranker) -> ListwiseReranker:
    """The reranker one request runs on: a shallow copy (same engine, settings and stats) with an empty
    journal. A reranker keeps every window it ran in its in-memory journal, which in a long-lived server or
    RAG app would grow without bound."""
    call = copy.copy(reranker)
    call.journal = Journal(None)
    return call


def rerank_texts(reranker: ListwiseReranker, query: Any, texts: Sequence[Any], top_n: Any = None) -> list[tuple[int, float]]:
    """(index into `texts`, relevance score) best first, `top_n` of them (None: all). Bad input raises
    reasonrank.validation.InvalidInput; scores are the HTTP service's, 1 / (rank + 1)."""
    n = check_rerank_input(query, texts, top_n)
    # positions as ids: texts carry none, and each request has its own journal (see per_request)
    candidates = [Candidate(str(i), 0.0, text) for i, text in enumerate(texts)]
    with engine_lock(reranker):
        result = per_request(reranker).rerank(query, candidates)
    return [(int(c.docid), relevance_score(rank)) for rank, c in enumerate(result.candidates[:n])]
