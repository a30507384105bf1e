"""The fields and constructor LangChain's compressor and LlamaIndex's postprocessor share. Both
libraries' base classes are pydantic 2 models, so this mixes in as one (its own module: the other
adapters need no pydantic)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, PrivateAttr, field_validator

from reasonrank.integrations._common import arerank_texts, build_reranker, rerank_texts
from reasonrank.validation import check_top_n


class RerankerFields(BaseModel):
    """`(model=None, backend=None, *, top_n=3, spec=None, reranker=None, **options)`: the reranker is
    `build(spec)` (spec: `spec=`, else `RerankerSpec.from_options(model, backend, **options)`), or
    `reranker=`, one already built (one model for several adapters)."""

    top_n: Optional[int] = 3
    model: Optional[str] = None
    backend: Optional[str] = None
    _reranker: Any = PrivateAttr()

    def __init__(self, model: str | None = None, backend: str | None = None, *, top_n: int | None = 3,
                 spec: Any = None, reranker: Any = None, **reranker_options: Any):
        shown = (spec.model, spec.backend) if spec is not None and model is None and backend is None else (model, backend)
        super().__init__(top_n=top_n, model=shown[0], backend=shown[1])  # validates top_n before a model loads
        self._reranker = build_reranker(model, backend, reranker, reranker_options, spec=spec, journal=False)

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, value: int | None) -> int | None:
        return check_top_n(value)

    @property
    def reranker(self):
        return self._reranker

    def _rank(self, query, texts, scores=None) -> list[tuple[int, float]]:
        return rerank_texts(self._reranker, query, texts, self.top_n, scores)

    async def _arank(self, query, texts, scores=None) -> list[tuple[int, float]]:
        return await arerank_texts(self._reranker, query, texts, self.top_n, scores)
