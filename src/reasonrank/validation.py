"""Checks of one rerank request (a query, its documents, how many to return), shared by every way in:
`ListwiseReranker.rerank`, the HTTP service and the PyTerrier, LangChain, LlamaIndex and MCP adapters.

Each failure is an `InvalidInput` (a `ValueError`) whose message names the field the way the HTTP API
spells it (`'query' must not be empty`), so a mistake reads the same whichever door it came through.
"""

from __future__ import annotations

from typing import Any, Sequence

from reasonrank.errors import ReasonRankError


class InvalidInput(ReasonRankError, ValueError):
    """A rerank request that cannot be answered: an empty query, no documents, a document without text,
    or `top_n` out of range."""


def type_name(value: Any) -> str:
    """A value's type as JSON names it (what a caller of the HTTP API or an MCP tool sent)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_query(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidInput(f"'query' must be a string, got {type_name(query)}")
    if not query.strip():
        raise InvalidInput("'query' must not be empty")
    return query


def check_documents(texts: Sequence[Any]) -> list[str]:
    """The documents' texts; a blank one is refused rather than ranked, since it is always a caller's bug
    (a loader that found nothing, a wrong field) that a ranking would hide."""
    texts = list(texts)
    if not texts:
        raise InvalidInput("'documents' must not be empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"documents[{i}] must be a string, got {type_name(text)}")
        if not text.strip():
            raise InvalidInput(f"documents[{i}] has no text")
    return texts


def check_top_n(top_n: Any, n: int | None = None) -> int | None:
    """How many of `n` documents to return: all for None, else at most `n` (asking for more than there are
    is not an error, as in Cohere's API). Without `n` (a setting checked before any documents come), the
    value as given."""
    if top_n is None:
        return n
    if isinstance(top_n, bool) or not isinstance(top_n, int):
        raise InvalidInput(f"'top_n' must be an integer, got {type_name(top_n)}")
    if top_n < 1:
        raise InvalidInput(f"'top_n' must be at least 1, got {top_n}")
    return top_n if n is None else min(top_n, n)


def check_rerank_input(query: Any, texts: Sequence[Any], top_n: Any = None) -> int:
    """Check a whole request; returns the number of results to give back."""
    check_query(query)
    return check_top_n(top_n, len(check_documents(texts)))
