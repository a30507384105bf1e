"""Settings of the rerank service, and building the shared reranker parts from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonrank.backends.base import ANSWER_BUDGET, REASONING_BUDGET
from reasonrank.errors import ReasonRankError

API_KEY_ENV = "REASONRANK_API_KEY"


@dataclass
class ServeConfig:
    """Everything `create_app(config)` needs. Defaults suit the embedded model on a CPU.

    Model: `model`/`backend` as for `Reranker(...)` (None/None: the embedded GGUF on llama.cpp);
    `backend_options` go to the backend's constructor. Requests must name `served_model_name`
    (default: the registry name of the model, or the file/directory name) or one of `aliases`
    (the registry's aliases, the `--model` string itself and any `--alias` are added).

    Reranking: each request is reranked with a sliding window of `window` passages moving by `step`
    over (up to) `max_documents` documents, `passes` times, with `max_new_tokens` per window.

    Batching: windows from all in-flight requests are gathered into one backend call of at most
    `max_batch` prompts; the gatherer waits at most `batch_wait_ms` for more once it has one.

    Limits (each answered with a 4xx JSON error): `max_documents` per request, `max_document_chars`
    per document, `max_query_chars`, `max_body_bytes` for the whole request body (413), and
    `max_in_flight` requests at once (503 beyond it).

    Auth: when `api_keys` is non-empty, /v1/rerank, /v2/rerank and /metrics need
    `Authorization: Bearer <key>`; /health stays open for probes.
    """

    model: str | None = None
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    tokenizer: str | None = None
    served_model_name: str | None = None
    aliases: list[str] = field(default_factory=list)
    max_passage_tokens: int | None = 512
    window: int = 20
    step: int = 10
    passes: int = 1
    max_new_tokens: int = REASONING_BUDGET + ANSWER_BUDGET
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_documents: int = 100
    max_document_chars: int = 20_000
    max_query_chars: int = 4_000
    max_body_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 256
    api_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("window", "step", "passes", "max_new_tokens", "max_batch", "max_documents", "max_document_chars",
                     "max_query_chars", "max_body_bytes", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ReasonRankError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_wait_ms < 0:
            raise ReasonRankError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        self.api_keys = [k for k in (k.strip() for k in self.api_keys) if k]


def read_api_keys(key_file: str | Path | None = None, env: str = API_KEY_ENV) -> list[str]:
    """Bearer tokens the server accepts: one per non-empty line of `key_file` (when given), else the
    value of the environment variable `env` (when set). Never from the command line, so keys do not
    show up in `ps` or shell history."""
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise ReasonRankError(f"{path}: API key file not found")
        keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not keys:
            raise ReasonRankError(f"{path}: API key file is empty")
        return keys
    value = os.environ.get(env, "").strip()
    return [value] if value else []


def model_names(config: ServeConfig, backend_model: str | None = None, registry: bool = True) -> tuple[str, list[str]]:
    """(the served model name, every name a request may use for it, lower-cased).

    `registry=False` (a reranker factory with no `config.model`): None does not mean the embedded
    default, the name comes from the backend's model instead."""
    from reasonrank.backends import models

    names: list[str] = []
    served = config.served_model_name
    spec = None
    if registry or config.model is not None:
        try:
            spec = models.resolve(config.model)
        except KeyError:
            pass
    if spec is not None:
        names += [spec.name, *spec.aliases]
        if spec.hub_id:
            names.append(spec.hub_id)
    if config.model:
        names.append(str(config.model))
        path = Path(str(config.model))
        names += [path.name, path.stem]
    if backend_model:
        names.append(Path(str(backend_model)).name)
    if served is None:
        served = spec.name if spec is not None else (Path(str(config.model or backend_model or "reasonrank")).name)
    names = [served, *names, *config.aliases]
    seen: list[str] = []
    for n in names:
        key = str(n).strip().lower()
        if key and key not in seen:
            seen.append(key)
    return served, seen
