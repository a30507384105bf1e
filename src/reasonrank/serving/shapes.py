"""The rerank API shapes the service speaks besides Cohere's, each at the path its clients call: how a request is
told apart, parsed (through reasonrank.serving.schema's validation and limits) and answered, errors included.

| path                    | shapes (told apart by the body)                                                     |
|-------------------------|--------------------------------------------------------------------------------------|
| POST /rerank            | TEI (text-embeddings-inference) when the body has `texts`; vLLM when `documents`    |
| POST /v1/rerank         | Cohere v1, Jina, vLLM (see the rule below)                                           |
| POST /v2/rerank         | Cohere v2, vLLM                                                                      |
| POST /score, /v1/score  | vLLM's score API                                                                     |

On /v1/rerank and /v2/rerank a body is Cohere's when it has a field only Cohere's API has (`rank_fields`,
`max_chunks_per_doc`, `relevant_spans`, reasonrank's `return_reasoning`, or an object document with fields other
than `text` and `score`); vLLM's when it has a field only vLLM's has (`truncate_prompt_tokens`, `use_activation`,
`instruction`, `chat_template_kwargs`, `mm_processor_kwargs`, `cache_salt`, `request_id`, `padding`,
`truncation_side`, `max_tokens_per_query`, `user`), `top_n: 0` (vLLM's "all"), `documents` as one string, or
`{"content": [...]}` documents; Jina's when a document is an `{"image": ...}` object (Jina's multimodal reranker;
refused: reasonrank reranks text). Anything else (`model`, `query`, `documents` as strings or `{text}` objects,
`top_n`, `return_documents`: what Cohere's, Jina's and vLLM's clients all send) is answered in a shape each of
them accepts: Cohere's body (`id`, `results` of `index`, `relevance_score` and `document`; `meta`) plus Jina's and
vLLM's `model` and `usage`; its errors carry Cohere's `message`/`type`/`code`, Jina's `detail` and vLLM's `error`
object together. Documents come back there unless `return_documents: false` (Jina's and vLLM's default; vLLM's
response requires them, Cohere's SDK takes them as it takes them when asked for). On /v2/rerank such a body must
name its `model` (Cohere v2 requires it).

Shapes, as their own docs give them:

* TEI `POST /rerank`: `{"query", "texts": [str], "raw_scores", "return_text", "truncate", "truncation_direction"}`
  -> a bare JSON list `[{"index", "score", "text"?}]`, best first. Token counts in TEI's headers
  (`x-compute-tokens`, and reasonrank's `x-prompt-tokens`, `x-completion-tokens`). Errors
  `{"error": message, "error_type": ...}`: 400 `empty` (no texts), 413 `validation` (too many or too long),
  422 `validation` (a malformed body), 401, 429 `overloaded`, 424 `backend` (the model failed), 503 `unhealthy`.
  `raw_scores` changes nothing (the score is no logit to squash); `truncate`/`truncation_direction` are accepted
  and passages are always cut to the server's passage token budget.
* Jina `POST /v1/rerank`: `{"model", "query", "documents": [str | {"text"}], "top_n", "return_documents"}` ->
  `{"id", "model", "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "results": [{"index",
  "relevance_score", "document": {"text"}?}]}` (documents unless `return_documents: false`). Errors
  `{"detail": message}`.
* vLLM `POST /rerank`, `/v1/rerank`, `/v2/rerank`: `RerankRequest` (`model`, `query`, `documents`: a string,
  strings or `{"content": [{"type": "text", "text"}]}`, `top_n` 0 = all, and its engine fields, accepted and
  ignored) -> `RerankResponse` `{"id", "model", "usage": {"prompt_tokens", "total_tokens", "completion_tokens"},
  "results": [{"index", "document": {"text"}, "relevance_score"}]}`. `POST /score`: `queries`/`documents` (or
  `queries`/`items`, `data_1`/`data_2`, `text_1`/`text_2`) -> `ScoreResponse` `{"id", "object": "list",
  "created", "model", "data": [{"index", "object": "score", "score"}], "usage"}` in the documents' order. A listwise
  reranker orders the documents of one query: one query (or the same query repeated per document) is scored;
  pairs of different queries are refused. Errors `{"error": {"message", "type", "param", "code"}}`.

reasonrank's extensions, in every shape that has object documents (Cohere, Jina, vLLM): a document's `score`, the
first stage's (`{"text": ..., "score": 12.3}`), and the request fields `score_mode`, `blend_weight`, `min_score`
(reasonrank.scoring). TEI's `texts` and vLLM's string documents carry no score: their input order stands for the
first stage.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from reasonrank.serving.schema import BUDGET_FIELDS, ApiError, Limits, RerankInput, build_response, parse_request
from reasonrank.validation import type_name

COHERE_ONLY = ("rank_fields", "max_chunks_per_doc", "relevant_spans", "return_reasoning")
VLLM_ONLY = ("truncate_prompt_tokens", "use_activation", "instruction", "chat_template_kwargs", "mm_processor_kwargs",
             "cache_salt", "request_id", "padding", "truncation_side", "max_tokens_per_query", "user")
SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
TEI_STATUS_TYPES = {400: "validation", 401: "unauthorized", 404: "validation", 413: "validation", 422: "validation",
                    429: "overloaded", 424: "backend", 503: "unhealthy"}

# shapes: cohere1, cohere2 (Cohere's own), compat1, compat2 (Cohere's answer plus Jina's/vLLM's fields), jina,
# vllm (rerank), vllm_score, tei


@dataclass
class Shaped:
    """A parsed request of some shape: what to rerank (a RerankInput, Cohere's validation) and how to answer."""

    shape: str
    req: RerankInput
    options: dict[str, Any] = field(default_factory=dict)


def default_shape(path: str) -> str:
    """The shape of a path's errors before its body is read (a bad token, a body that is no JSON)."""
    return {"/rerank": "tei", "/v1/rerank": "compat1", "/v2/rerank": "compat2", "/score": "vllm_score",
            "/v1/score": "vllm_score"}[path]


def detect(path: str, body: Any) -> str:
    """Which shape a request to `path` is, by its body (see the module's rule)."""
    if path in ("/score", "/v1/score"):
        return "vllm_score"
    if not isinstance(body, dict):
        return default_shape(path)
    if path == "/rerank":
        return "vllm" if "documents" in body and "texts" not in body else "tei"
    documents = body.get("documents")
    docs = documents if isinstance(documents, list) else []
    objects = [d for d in docs if isinstance(d, dict)]
    if any("image" in d for d in objects) and path == "/v1/rerank":
        return "jina"
    if any(k in body for k in COHERE_ONLY) or any(set(d) - {"text", "score"} for d in objects if "content" not in d):
        return "cohere1" if path == "/v1/rerank" else "cohere2"
    if (any(k in body for k in VLLM_ONLY) or body.get("top_n") == 0 or isinstance(documents, str)
            or any("content" in d for d in objects)):
        return "vllm"
    return "compat1" if path == "/v1/rerank" else "compat2"


def parse(shape: str, body: Any, limits: Limits, names: list[str], served: str) -> Shaped:
    """A validated request of `shape`, or ApiError (in Cohere's words; `error_body` puts it in the shape's)."""
    if shape in ("cohere1", "cohere2", "compat1", "compat2"):
        version = 1 if shape in ("cohere1", "compat1") else 2
        req = parse_request(body, version, limits, names, served)
        if shape.startswith("compat"):  # documents back unless declined: Jina's and vLLM's default, Cohere's clients take them
            req.return_documents = body.get("return_documents") is not False
        return Shaped(shape, req)
    if not isinstance(body, dict):
        raise ApiError(422 if shape == "tei" else 400, f"the request body must be a JSON object, got {type_name(body)}")
    if shape == "tei":
        return _parse_tei(body, limits, names, served)
    if shape == "jina":
        raise ApiError(400, "image documents are not supported: reasonrank reranks text ({\"text\": ...} or strings)")
    if shape == "vllm":
        return _parse_vllm(body, limits, names, served)
    return _parse_score(body, limits, names, served)


# -- TEI ------------------------------------------------------------------------------------------------

def _parse_tei(body: dict, limits: Limits, names: list[str], served: str) -> Shaped:
    for key in ("query", "texts"):
        if key not in body:
            raise ApiError(422, f"missing field `{key}`", "validation")
    texts = body["texts"]
    if not isinstance(texts, list):
        raise ApiError(422, f"'texts' must be an array of strings, got {type_name(texts)}", "validation")
    if not texts:
        raise ApiError(400, "`texts` cannot be empty", "empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, f"texts[{i}] must be a string, got {type_name(text)}", "validation")
    options = {}
    for key in ("raw_scores", "return_text", "truncate"):
        value = body.get(key, False)
        if value is not None and not isinstance(value, bool):
            raise ApiError(422, f"'{key}' must be a boolean, got {type_name(value)}", "validation")
        options[key] = bool(value)
    direction = body.get("truncation_direction")
    if direction is not None and direction not in ("Left", "Right", "left", "right"):
        raise ApiError(422, f"'truncation_direction' must be Left or Right, got {direction!r}", "validation")
    if len(texts) > limits.max_documents:  # TEI answers a batch over its client batch size with 413
        raise ApiError(413, f"batch size {len(texts)} > maximum allowed batch size {limits.max_documents}", "validation")
    extensions = ("score_mode", "blend_weight", "min_score", *BUDGET_FIELDS)  # reasonrank's own fields ride along
    cohere = {"query": body["query"], "documents": texts, **{k: body[k] for k in extensions if k in body}}
    try:
        req = parse_request(cohere, 1, limits, names, served)
    except ApiError as exc:
        message = exc.message.replace("'documents'", "'texts'").replace("documents[", "texts[")
        status = 413 if "the limit is" in message else 400 if "must not be empty" in message or "has no text" in message else 422
        raise ApiError(status, message, "empty" if status == 400 else "validation") from None
    return Shaped("tei", req, options)


# -- vLLM and Jina ---------------------------------------------------------------------------------------

def _content_text(i: int, doc: dict, key: str) -> str:
    """The text of a vLLM multimodal document `{"content": [{"type": "text", "text": ...}, ...]}`."""
    parts = doc["content"]
    if not isinstance(parts, list) or not parts:
        raise ApiError(400, f"{key}[{i}].content must be a non-empty array of content parts")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{key}[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported; "
                                "reasonrank reranks text")
        texts.append(part["text"])
    return "\n".join(texts)


def _vllm_documents(documents: Any, key: str = "documents") -> Any:
    """vLLM's documents (a string, strings, `{content}` objects, or reasonrank's `{text, score}`) as Cohere's."""
    if isinstance(documents, (str, dict)):
        documents = [documents]
    if not isinstance(documents, list):
        return documents  # parse_request names the type
    out = []
    for i, doc in enumerate(documents):
        if isinstance(doc, dict) and "content" in doc:
            out.append({"text": _content_text(i, doc, key), **({"score": doc["score"]} if "score" in doc else {})})
        else:
            out.append(doc)
    return out


def _parse_vllm(body: dict, limits: Limits, names: list[str], served: str) -> Shaped:
    top_n = body.get("top_n")
    if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n < 0:
        raise ApiError(400, f"'top_n' must be at least 0 (0: all), got {top_n}")
    cohere = {k: v for k, v in body.items() if k not in VLLM_ONLY and k != "top_n"}
    cohere["documents"] = _vllm_documents(body.get("documents")) if "documents" in body else None
    if top_n not in (None, 0):
        cohere["top_n"] = top_n
    if cohere["documents"] is None:
        del cohere["documents"]
    req = parse_request(cohere, 1, limits, names, served)
    return Shaped("vllm", req, {"return_documents": body.get("return_documents", True) is not False})


def _parse_score(body: dict, limits: Limits, names: list[str], served: str) -> Shaped:
    pair = next((p for p in SCORE_PAIRS if p[0] in body and p[1] in body), None)
    if pair is None:
        raise ApiError(400, "a score request needs one of: queries and documents, queries and items, data_1 and data_2, "
                            "text_1 and text_2")
    first, second = pair
    queries = body[first] if isinstance(body[first], list) else [body[first]]
    queries = [_content_text(i, q, first) if isinstance(q, dict) and "content" in q else q for i, q in enumerate(queries)]
    documents = _vllm_documents(body[second], second)
    n = len(documents) if isinstance(documents, list) else 0
    if not queries:
        raise ApiError(400, f"'{first}' must not be empty")
    if len(queries) > 1 and (len(queries) != n or len({q if isinstance(q, str) else repr(q) for q in queries}) > 1):
        raise ApiError(400, f"reasonrank orders the documents of one query: send one entry in '{first}' (or the same query "
                            f"once per document); scoring pairs of different queries is not supported by a listwise reranker")
    cohere = {k: v for k, v in body.items() if k not in VLLM_ONLY and k not in (first, second)}
    cohere.update(query=queries[0], documents=documents)
    try:
        req = parse_request(cohere, 1, limits, names, served)
    except ApiError as exc:
        raise ApiError(exc.status, exc.message.replace("'documents'", f"'{second}'").replace("documents[", f"{second}[")
                       .replace("'query'", f"'{first}'"), exc.kind) from None
    return Shaped("vllm_score", req)


# -- answers ---------------------------------------------------------------------------------------------

def usage(traces: list) -> tuple[int, int]:
    """(prompt tokens, completion tokens) the request's windows took, as the engine counted them."""
    return sum(t.prompt_tokens for t in traces), sum(t.completion_tokens for t in traces)


def _usage(traces: list) -> dict[str, int]:
    prompt, completion = usage(traces)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text(req: RerankInput, index: int) -> str:
    return req.texts[index]


def respond(shaped: Shaped, ranked: list[tuple[int, float]], traces: list, served: str) -> tuple[Any, dict[str, str]]:
    """(the JSON body, extra headers) of a shape's answer. `ranked`: (document index, score) best first, from
    reasonrank.scoring (already thresholded; `top_n` is applied here)."""
    req, shape = shaped.req, shaped.shape
    request_id = str(uuid.uuid4())
    if shape == "tei":
        prompt, completion = usage(traces)
        body = [{"index": i, **({"text": _text(req, i)} if shaped.options["return_text"] else {}), "score": s}
                for i, s in ranked]
        headers = {"x-compute-tokens": str(prompt + completion), "x-prompt-tokens": str(prompt),
                   "x-completion-tokens": str(completion), "x-compute-characters": str(sum(map(len, req.texts)) + len(req.query))}
        return body, headers
    if shape == "vllm_score":
        scores = dict(ranked)
        return {"id": f"score-{request_id}", "object": "list", "created": int(time.time()), "model": served,
                "data": [{"index": i, "object": "score", "score": scores[i]} for i in range(len(req.texts)) if i in scores],
                "usage": _usage(traces)}, {}
    if shape in ("vllm", "jina"):
        documents = shaped.options.get("return_documents", True)
        return {"id": f"rerank-{request_id}", "model": served, "usage": _usage(traces),
                "results": [{"index": i, **({"document": {"text": _text(req, i)}} if documents else {}), "relevance_score": s}
                            for i, s in ranked[:req.top_n]]}, {}
    body = build_response(req, ranked, traces, request_id)
    if shape in ("compat1", "compat2"):  # Cohere's answer, plus what Jina's and vLLM's clients read
        body["model"] = served
        body["usage"] = _usage(traces)
    return body, {}


def error_body(shape: str, exc: ApiError) -> tuple[int, Any]:
    """(status, body) of an error in a shape's own form."""
    cohere = exc.body()
    vllm = {"message": exc.message, "type": _vllm_type(exc.status), "param": None, "code": exc.status}
    if shape == "tei":
        status = _tei_status(exc)
        kind = exc.kind if exc.kind in ("empty", "validation") else TEI_STATUS_TYPES.get(status, "backend")
        return status, {"error": exc.message, "error_type": kind}
    if shape in ("vllm", "vllm_score"):
        return exc.status, {"error": vllm}
    if shape == "jina":
        return exc.status, {"detail": exc.message}
    if shape in ("compat1", "compat2"):
        return exc.status, {**cohere, "detail": exc.message, "error": vllm}
    return exc.status, cohere


def _tei_status(exc: ApiError) -> int:
    if exc.kind in ("empty", "validation"):
        return exc.status
    if exc.status == 400:  # a body that is no JSON: TEI (axum) answers 422
        return 422
    if exc.status == 503 and "busy" in exc.message:
        return 429
    if exc.status == 500:
        return 424
    return exc.status


def _vllm_type(status: int) -> str:
    return {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 413: "BadRequestError",
            503: "ServiceUnavailableError"}.get(status, "InternalServerError")


__all__ = ["Shaped", "default_shape", "detect", "error_body", "parse", "respond", "usage"]
