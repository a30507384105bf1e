"""Rerank request validation and response shapes (Cohere's v1/v2 rerank API).

Request (POST /v1/rerank or /v2/rerank, JSON):

    model             string; the served model name or an alias (optional on /v1, like Cohere's v1)
    query             non-empty string
    documents         non-empty list of strings or objects with a string "text", none of them blank (v1:
                      other fields are kept and echoed back with return_documents)
    top_n             integer >= 1; how many results to return (more than the documents: all)
    return_documents  boolean; include each document in its result
    rank_fields       (v1) list of keys: rank on "key: value" lines of those fields of object documents
    score_mode, blend_weight, min_score (extension): this request's scoring (reasonrank.scoring; default:
                      the served spec's): `rank` or `blend`, the reranker's weight in a blend, a threshold
    documents[i].score (extension): the first stage's score of an object document (a number; give it for
                      every document or none), which `blend` mixes in; without it the input order stands for
                      the first stage
    reasoning_budget, answer_budget, effort, thinking, on_truncation (extension): this request's reasoning
                      budget (reasonrank.spec.RerankerSpec: integers >= 0 and >= 1, low|medium|high, a
                      boolean, force|keep|paper; default: the served spec's). A Cohere client that does not
                      send them is served as before. The server caps the budgets (--max-reasoning-budget,
                      --max-answer-budget; default: its own): a request over a cap is a 400 naming it
                      positions, documents, permutation, status, reasoning, raw output, tokens)
    max_chunks_per_doc, max_tokens_per_doc, priority, relevant_spans: accepted and ignored
                      (documents are cut to the server's passage token budget instead)

Response:

    {"id": "...", "results": [{"index": 3, "relevance_score": 1.0, "document": {"text": ...}?}, ...],
     "meta": {"api_version": {"version": "1"|"2", ...},
              "billed_units": {"search_units": 1, "input_tokens": N, "output_tokens": M},
              "tokens": {"input_tokens": N, "output_tokens": M}, "warnings": [...]?},
     "reasoning": [...]?}

`relevance_score` is the score every face reports (reasonrank.scoring). With score_mode `rank` (the
default) it is derived from the final rank only: the document ranked r-th (r = 0 for the top) scores
1 / (r + 1), the reciprocal rank. It is in (0, 1], 1.0 for the top document and strictly decreasing
down the list, so sorting by it gives the model's order; it is not a calibrated probability and does
not compare across requests beyond that. With `blend` it mixes the rank with the first stage's score
(results re-sorted by it); `min_score` drops results below it before `top_n` counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reasonrank.parsing import MODEL_ORDER
from reasonrank.validation import InvalidInput, check_documents, check_query, check_top_n
from reasonrank.validation import type_name as _type_name

IGNORED_FIELDS = ("max_chunks_per_doc", "max_tokens_per_doc", "priority", "relevant_spans")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict:
        return {"message": self.message, "type": self.kind, "code": self.status}


@dataclass
class RerankInput:
    version: int
    model: str
    query: str
    texts: list[str]
    originals: list[Any]
    top_n: int
    return_documents: bool = False
    return_reasoning: bool = False
    budget: dict[str, Any] = field(default_factory=dict)  # this request's reasoning_budget, answer_budget, effort, thinking, on_truncation
    ignored: list[str] = field(default_factory=list)
    scores: list[float] | None = None  # the first stage's score of each document (extension), None: not given
    scoring: dict[str, Any] = field(default_factory=dict)  # this request's score_mode/blend_weight/min_score


@dataclass
class Limits:
    max_documents: int
    max_document_chars: int
    max_query_chars: int


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _bool(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be a boolean, got {_type_name(value)}")
    return value


def parse_request(body: Any, version: int, limits: Limits, model_names: list[str], served: str) -> RerankInput:
    """A validated request, or ApiError (400; 404 for an unknown model). The checks every rerank entry point
    shares (reasonrank.validation) answer 400 with their own message."""
    try:
        return _parse(body, version, limits, model_names, served)
    except InvalidInput as exc:
        raise _bad(str(exc)) from None


def _parse(body: Any, version: int, limits: Limits, model_names: list[str], served: str) -> RerankInput:
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_type_name(body)}")
    model = body.get("model")
    if model is None:
        if version == 2:
            raise _bad(f"'model' is required; this server serves '{served}'")
        model = served
    elif not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {_type_name(model)}")
    elif model.strip().lower() not in model_names:
        raise ApiError(404, f"model '{model}' not found; this server serves '{served}' "
                            f"(also accepted: {', '.join(n for n in model_names if n != served.lower())})", "not_found")

    query = body.get("query")
    if query is None:
        raise _bad("'query' is required")
    check_query(query)
    if len(query) > limits.max_query_chars:
        raise _bad(f"'query' is {len(query)} characters; the limit is {limits.max_query_chars}")

    rank_fields = body.get("rank_fields")
    if rank_fields is not None and (not isinstance(rank_fields, list) or not rank_fields
                                    or not all(isinstance(f, str) for f in rank_fields)):
        raise _bad("'rank_fields' must be a non-empty array of strings")

    documents = body.get("documents")
    if documents is None:
        raise _bad("'documents' is required")
    if not isinstance(documents, list):
        raise _bad(f"'documents' must be an array of strings or objects with a 'text' field, got {_type_name(documents)}")
    if len(documents) > limits.max_documents:
        raise _bad(f"{len(documents)} documents sent; the limit is {limits.max_documents} per request")
    texts = check_documents([_document_text(i, d, rank_fields) for i, d in enumerate(documents)])
    for i, text in enumerate(texts):
        if len(text) > limits.max_document_chars:
            raise _bad(f"documents[{i}] is {len(text)} characters; the limit is {limits.max_document_chars}")

    return RerankInput(
        version=version, model=model, query=query, texts=texts, originals=documents,
        top_n=check_top_n(body.get("top_n"), len(documents)), return_documents=_bool(body, "return_documents"),
        return_reasoning=_bool(body, "return_reasoning"), budget=request_budget(body), ignored=[k for k in IGNORED_FIELDS if body.get(k) is not None],
        scores=first_stage_scores(documents), scoring=request_scoring(body),
    )


def first_stage_scores(documents: list) -> list[float] | None:
    """The `score` of every object document (reasonrank's extension: the first stage's score), or None when
    no document has one. Some but not all is an error: the blend would mix unlike things."""
    given = [isinstance(d, dict) and "score" in d for d in documents]
    if not any(given):
        return None
    if not all(given):
        missing = given.index(False)
        raise _bad(f"documents[{missing}] has no 'score' while other documents have one: give the first stage's "
                   f"score for every document or for none")
    scores = []
    for i, doc in enumerate(documents):
        value = doc["score"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(f"documents[{i}].score must be a number, got {_type_name(value)}")
        scores.append(float(value))
    return scores


def request_scoring(body: dict) -> dict[str, Any]:
    """A request's own scoring settings (extension fields score_mode, blend_weight, min_score), checked."""
    from reasonrank.scoring import DEFAULT_BLEND_WEIGHT, check_scoring, scoring_fields

    given = scoring_fields(body)
    try:
        check_scoring(given.get("score_mode", "rank"), given.get("blend_weight", DEFAULT_BLEND_WEIGHT), given.get("min_score"))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return given


def _document_text(i: int, doc: Any, rank_fields: list[str] | None) -> str:
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        raise _bad(f"documents[{i}] must be a string or an object with a 'text' field, got {_type_name(doc)}")
    if rank_fields:
        lines = []
        for key in rank_fields:
            if key in doc:
                value = doc[key]
                if not isinstance(value, str):
                    raise _bad(f"documents[{i}].{key} must be a string, got {_type_name(value)}")
                lines.append(f"{key}: {value}")
        if not lines:
            raise _bad(f"documents[{i}] has none of the rank_fields {rank_fields}")
        return "\n".join(lines)
    if "text" not in doc:
        raise _bad(f"documents[{i}] has no 'text' field")
    if not isinstance(doc["text"], str):
        raise _bad(f"documents[{i}].text must be a string, got {_type_name(doc['text'])}")
    return doc["text"]


BUDGET_FIELDS = ("reasoning_budget", "answer_budget", "effort", "thinking", "on_truncation")


def request_budget(body: dict) -> dict[str, Any]:
    """A request's own reasoning-budget settings (extension fields beside Cohere's), type-checked here; how
    they combine with the served spec (a contradiction, a cap) is the service's check (RerankService.request_spec)."""
    from reasonrank.spec import EFFORT_BUDGETS, ON_TRUNCATION

    given = {k: body[k] for k in BUDGET_FIELDS if body.get(k) is not None}
    for name, least in (("reasoning_budget", 0), ("answer_budget", 1)):
        value = given.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise _bad(f"'{name}' must be an integer >= {least}, got {value!r}")
    for name, choices in (("effort", tuple(EFFORT_BUDGETS)), ("on_truncation", ON_TRUNCATION)):
        if name in given and given[name] not in choices:
            raise _bad(f"'{name}' must be one of {', '.join(choices)}, got {given[name]!r}")
    if "thinking" in given and not isinstance(given["thinking"], bool):
        raise _bad(f"'thinking' must be a boolean, got {_type_name(given['thinking'])}")
    return given


def relevance_score(rank: int) -> float:
    """The score of the document at 0-based position `rank` of the final order: 1 / (rank + 1)."""
    return 1.0 / (rank + 1)


def build_response(req: RerankInput, ranked: list, traces: list, request_id: str) -> dict:
    """The Cohere-shaped answer. `ranked` lists (document index, score) best first, as reasonrank.scoring gives
    them (plain indices: scored by rank)."""
    results = []
    ranked = [(item, relevance_score(rank)) if isinstance(item, int) else tuple(item) for rank, item in enumerate(ranked)]
    for index, score in ranked[:req.top_n]:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if req.return_documents:
            original = req.originals[index]
            item["document"] = dict(original) if isinstance(original, dict) else {"text": original}
        results.append(item)
    prompt_tokens = sum(t.prompt_tokens + t.forced_prompt_tokens for t in traces)  # forced answers included
    completion_tokens = sum(t.completion_tokens + t.forced_completion_tokens for t in traces)
    api_version: dict[str, Any] = {"version": str(req.version)}
    if req.version == 2:
        api_version["is_experimental"] = False
    meta: dict[str, Any] = {
        "api_version": api_version,
        # Cohere bills one search unit per query of up to 100 documents
        "billed_units": {"search_units": max(1, math.ceil(len(req.texts) / 100)), "input_tokens": prompt_tokens,
                         "output_tokens": completion_tokens},
        "tokens": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
    }
    warnings = []
    failed = [t for t in traces if t.status not in MODEL_ORDER]
    if failed:
        kinds = sorted({t.status for t in failed})
        warnings.append(f"{len(failed)} of {len(traces)} windows gave no usable ranking ({', '.join(kinds)}); "
                        f"those windows kept their input order" + (" (paper_fallback: the numbers of the whole reply)"
                                                                   if "paper_fallback" in kinds else ""))
    if req.ignored:
        warnings.append(f"ignored: {', '.join(req.ignored)} (documents are cut to the server's passage token budget)")
    if warnings:
        meta["warnings"] = warnings
    out: dict[str, Any] = {"id": request_id, "results": results, "meta": meta}
    if req.return_reasoning:
        out["reasoning"] = [
            {
                # start/end: the window's positions (sliding); None for tdpart, whose role says which window it was
                "method": t.method, "role": t.role, "pass": t.pass_index, "start": t.start, "end": t.end,
                "documents": [int(d) for d in t.docids],  # indices of the window's documents, in its input order
                "permutation": list(t.permutation),  # the model's order, as positions within the window
                "status": t.status, "reasoning": t.reasoning, "raw_output": t.raw_output,
                "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens, "seconds": round(t.seconds, 4),
                # status forced: the second part of the window (its prompt: the window's + forced_prefix)
                "forced": {"prefix": t.forced_prefix, "answer": t.forced_answer, "prompt_tokens": t.forced_prompt_tokens,
                           "completion_tokens": t.forced_completion_tokens, "seconds": round(t.forced_seconds, 4),
                           "error": t.forced_error} if t.forced_prefix else None,
            }
            for t in traces
        ]
    return out
