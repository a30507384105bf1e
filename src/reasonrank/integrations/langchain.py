"""LangChain (`pip install 'reasonrank[langchain]'`): `ReasonRankCompressor`, a document compressor.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from reasonrank.integrations.langchain import ReasonRankCompressor

    retriever = ContextualCompressionRetriever(base_compressor=ReasonRankCompressor(top_n=3), base_retriever=...)
"""

from __future__ import annotations

from typing import Optional, Sequence

from reasonrank.errors import require

require("langchain_core", "langchain", "The LangChain integration")
from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402

from reasonrank.integrations._common import first_stage  # noqa: E402
from reasonrank.integrations._fields import RerankerFields  # noqa: E402

SCORE_KEY = "relevance_score"  # the metadata key of LangChain's CohereRerank, so code reading it works with either


class ReasonRankCompressor(RerankerFields, BaseDocumentCompressor):
    """Reorder documents with the listwise reasoning model and keep the `top_n` best (None: all).

    Each document returned is a copy whose `metadata["relevance_score"]` is the score every face reports
    (reasonrank.scoring): 1 / (rank + 1) by default, 1.0 for the best, decreasing down the list; with the spec's
    `score_mode="blend"` it mixes in the first stage's score, read from `metadata[first_stage_key]` when
    `first_stage_key` is set and every document has it (LangChain's Document has no score field), else the
    documents' order stands for the first stage. Bad input (an empty query, no documents,
    a document without text, `top_n` below 1) raises `reasonrank.validation.InvalidInput`, a ValueError.
    `acompress_documents` awaits the reranker's `arerank` (the reranking runs in a worker thread), so an
    event loop is never blocked; the engine takes concurrent calls as its backend allows.

    `ReasonRankCompressor(model=None, backend=None, top_n=3, **options)` builds
    `build(RerankerSpec.from_options(model, backend, **options))`; `spec=` builds a spec as given, and
    `reranker=` takes one already built (one model for several adapters). Each call is one request, no
    run to resume: a reranker journaling to a file is refused.
    """

    first_stage_key: Optional[str] = None

    def __init__(self, model: str | None = None, backend: str | None = None, *, first_stage_key: str | None = None, **kwargs):
        super().__init__(model, backend, **kwargs)
        self.first_stage_key = first_stage_key

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None) -> Sequence[Document]:
        ranked = self._rank(query, [d.page_content for d in documents], self._first_stage(documents))
        return [_scored(documents[i], score) for i, score in ranked]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        ranked = await self._arank(query, [d.page_content for d in documents], self._first_stage(documents))
        return [_scored(documents[i], score) for i, score in ranked]

    def _first_stage(self, documents: Sequence[Document]) -> list[float] | None:
        """The first stage's scores, `metadata[first_stage_key]` of every document (None: their order stands for them)."""
        if self.first_stage_key is None:
            return None
        return first_stage([d.metadata.get(self.first_stage_key) for d in documents])


def _scored(doc: Document, score: float) -> Document:
    return doc.model_copy(update={"metadata": {**doc.metadata, SCORE_KEY: score}})
