"""Haystack (`pip install 'reasonrank[haystack]'`): `ReasonRankRanker`, a ranker component.

    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from reasonrank.integrations.haystack import ReasonRankRanker

    store = InMemoryDocumentStore()
    store.write_documents([Document(content="Paris is the capital of France."), ...])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=20))
    pipeline.add_component("ranker", ReasonRankRanker(top_k=5))
    pipeline.connect("retriever.documents", "ranker.documents")
    result = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
    result["ranker"]["documents"]          # best first, each with its score in Document.score
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from reasonrank.errors import require

require("haystack", "haystack", "The Haystack integration")
from haystack import Document, component, default_from_dict, default_to_dict  # noqa: E402

from reasonrank.integrations._common import arerank_texts, check_adapter_spec, first_stage, rerank_texts  # noqa: E402
from reasonrank.spec import RerankerSpec  # noqa: E402
from reasonrank.validation import check_top_n  # noqa: E402


@component
class ReasonRankRanker:
    """Rerank Haystack Documents with the listwise reasoning model: Haystack's ranker interface, `run(query,
    documents, top_k)` -> `{"documents": [...]}`, the `top_k` best first.

    Each Document returned is a copy whose `score` is the score every face reports (reasonrank.scoring): with the
    spec's `score_mode="rank"` (the default) 1 / (rank + 1), 1.0 for the best; with `"blend"` a mix of the rerank
    position and the incoming `Document.score` (a retriever's, when every document has one; else their order
    stands for the first stage), re-sorted by it. The spec's `min_score` drops documents below it. The model reads
    each Document's `content`; one without text is refused (`reasonrank.validation.InvalidInput`, a ValueError).

    `ReasonRankRanker(model=None, backend=None, top_k=10, **options)` describes
    `RerankerSpec.from_options(model, backend, **options)` (method, window, max_new_tokens, n_threads, ...);
    `spec=` gives a spec (or its dict) as is. The model loads in `warm_up()` (a Pipeline calls it before its
    first run; `run` calls it too), built as every face builds one: `reasonrank.spec.build(spec)`.
    `to_dict`/`from_dict` carry the spec and `top_k`, so a pipeline serialises to YAML and back (Haystack 3 loads
    components only from trusted modules: `Pipeline.loads(text, allowed_modules=["reasonrank.integrations.haystack"])`,
    or `haystack.core.serialization.allow_deserialization_module(...)` once). Each run is one
    request: a spec with a journal file is refused. `reranker=` shares a reranker already built (its spec is what
    `to_dict` writes).
    """

    def __init__(self, model: str | None = None, backend: str | None = None, *, top_k: int | None = 10,
                 spec: RerankerSpec | Mapping[str, Any] | None = None, reranker: Any = None, **options: Any):
        if sum(x is not None for x in (spec, reranker)) + bool(model or backend or options) > 1:
            raise ValueError("pass one of: spec=, reranker=, or the model, backend and options")
        if reranker is not None:
            spec = reranker.spec
        elif spec is None:
            spec = RerankerSpec.from_options(model, backend, **options)
        elif not isinstance(spec, RerankerSpec):
            spec = RerankerSpec.from_dict(spec)
        check_adapter_spec(spec)
        self.spec = spec
        self.top_k = check_top_n(top_k)
        self._reranker = reranker

    def warm_up(self) -> None:
        """Build the reranker (load the model) once."""
        if self._reranker is None:
            from reasonrank.spec import build

            self._reranker = build(self.spec)

    def close(self) -> None:
        if self._reranker is not None:
            self._reranker.close()

    @property
    def reranker(self):
        self.warm_up()
        return self._reranker

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, spec=self.spec.to_dict(), top_k=self.top_k)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReasonRankRanker":
        return default_from_dict(cls, data)

    def _inputs(self, query: str, documents: list[Document], top_k: int | None):
        top_k = self.top_k if top_k is None else check_top_n(top_k)
        return query, [d.content for d in documents], top_k, first_stage([d.score for d in documents])

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        """The `top_k` (default: the component's) most relevant of `documents`, best first, scored."""
        if not documents:
            return {"documents": []}
        query, texts, top_k, scores = self._inputs(query, documents, top_k)
        ranked = rerank_texts(self.reranker, query, texts, top_k, scores)
        return {"documents": [dataclasses.replace(documents[i], score=score) for i, score in ranked]}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        """`run` for AsyncPipeline: the reranking runs in a worker thread (the reranker's `arerank`)."""
        if not documents:
            return {"documents": []}
        query, texts, top_k, scores = self._inputs(query, documents, top_k)
        ranked = await arerank_texts(self.reranker, query, texts, top_k, scores)
        return {"documents": [dataclasses.replace(documents[i], score=score) for i, score in ranked]}
