"""LangChain (`pip install 'reasonrank[langchain]'`): `ReasonRankCompressor`, a document compressor.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from reasonrank.integrations.langchain import ReasonRankCompressor

    retriever = ContextualCompressionRetriever(base_compressor=ReasonRankCompressor(top_n=3), base_retriever=...)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from reasonrank.errors import require

require("langchain_core", "langchain", "The LangChain integration")
from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from pydantic import PrivateAttr, field_validator  # noqa: E402  (langchain-core is built on pydantic 2)

from reasonrank.integrations._common import build_reranker, rerank_texts  # noqa: E402
from reasonrank.rerankers import ListwiseReranker  # noqa: E402
from reasonrank.validation import check_top_n  # noqa: E402

SCORE_KEY = "relevance_score"  # the metadata key of LangChain's CohereRerank, so code reading it works with either


class ReasonRankCompressor(BaseDocumentCompressor):
    """Reorder documents with the listwise reasoning model and keep the `top_n` best (None: all).

    Each document returned is a copy whose `metadata["relevance_score"]` is 1 / (rank + 1), the HTTP
    service's score: 1.0 for the best, decreasing down the list. Bad input (an empty query, no documents,
    a document without text, `top_n` below 1) raises `reasonrank.validation.InvalidInput`, a ValueError.
    `acompress_documents` (LangChain's default) runs the same reranking in a worker thread, so an event
    loop is never blocked; calls on one engine take turns.

    `ReasonRankCompressor(model=None, backend=None, top_n=3, **options)` builds `Reranker(model, backend,
    **options)`; `reranker=` takes one already built instead (one model for several adapters). Each
    call reranks with its own in-memory journal, so a reranker journaling to a file is refused.
    """

    top_n: Optional[int] = 3
    model: Optional[str] = None
    backend: Optional[str] = None
    _reranker: ListwiseReranker = PrivateAttr()

    def __init__(self, model: str | None = None, backend: str | None = None, *, top_n: int | None = 3,
                 reranker: ListwiseReranker | None = None, **reranker_options: Any):
        super().__init__(top_n=top_n, model=model, backend=backend)  # validates top_n before a model loads
        self._reranker = build_reranker(model, backend, reranker, reranker_options, journal=False)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, value: int | None) -> int | None:
        return check_top_n(value)

    @property
    def reranker(self) -> ListwiseReranker:
        return self._reranker

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None) -> Sequence[Document]:
        ranked = rerank_texts(self._reranker, query, [d.page_content for d in documents], self.top_n)
        return [_scored(documents[i], score) for i, score in ranked]


def _scored(doc: Document, score: float) -> Document:
    return doc.model_copy(update={"metadata": {**doc.metadata, SCORE_KEY: score}})
