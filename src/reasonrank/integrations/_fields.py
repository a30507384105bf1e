"""The fields and constructor LangChain's compressor and LlamaIndex's postprocessor share. Both
libraries' base classes are pydantic 2 models, so this mixes in as one (its own module: the other
adapters need no pydantic)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, PrivateAttr, field_validator

from reasonrank.integrations._common import build_reranker
from reasonrank.rerankers import ListwiseReranker
from reasonrank.validation import check_top_n


class RerankerFields(BaseModel):
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
