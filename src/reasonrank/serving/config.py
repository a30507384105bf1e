"""Settings of the rerank service: the reranker's spec, and what only a service has (limits, batching,
auth, the names it answers to)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from reasonrank.errors import ReasonRankError
from reasonrank.spec import RerankerSpec

API_KEY_ENV = "REASONRANK_API_KEY"


@dataclass
class ServeConfig:
    """Everything `create_app(config)` needs. Defaults suit the embedded model on a CPU.

    Model and reranking: `spec`, a `reasonrank.spec.RerankerSpec` as every face takes (the default: the
    embedded GGUF on llama.cpp, the sliding window, passages cut to 512 tokens). The engine is built once
    from it (`build(spec)`); each request is reranked by `build(spec.replace(top_k=...))` on that engine,
    its method included (a tdpart spec is served as tdpart), over its first `spec.top_k` documents (the
    rest keep their order below). The service keeps no journal: a spec with one is refused.

    Names: requests must name `served_model_name` (default: the registry name of the model, or the
    file/directory name) or one of `aliases` (the registry's aliases, the model string itself and any
    `--alias` are added).

    Batching: windows from all in-flight requests are gathered into one backend call of at most
    `max_batch` prompts; the gatherer waits at most `batch_wait_ms` for more once it has one (the engine
    runs a gathered batch in chunks of its own batch size: `--backend-option batch_size=8` for hf).

    Limits (each answered with a 4xx JSON error): `max_documents` per request, `max_document_chars`
    per document, `max_query_chars`, `max_body_bytes` for the whole request body (413), and
    `max_in_flight` requests at once (503 beyond it).

    Reasoning budgets: a request may set its own reasoning_budget, answer_budget, effort, thinking and
    on_truncation (fields beside Cohere's); its budgets may not exceed `max_reasoning_budget` and
    `max_answer_budget` (None: the served spec's own budgets, so a request can only ask for less unless
    the operator raises the cap), else 400 naming the cap.

    Auth: when `api_keys` is non-empty, every rerank and score path and /metrics need
    `Authorization: Bearer <key>`; /health stays open for probes.
    """

    spec: RerankerSpec = field(default_factory=RerankerSpec)
    served_model_name: str | None = None
    aliases: list[str] = field(default_factory=list)
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_documents: int = 100
    max_document_chars: int = 20_000
    max_query_chars: int = 4_000
    max_body_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 256
    api_keys: list[str] = field(default_factory=list)
    max_reasoning_budget: int | None = None  # a request's reasoning_budget cap (None: the served spec's)
    max_answer_budget: int | None = None  # a request's answer_budget cap (None: the served spec's)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, RerankerSpec):
            raise ReasonRankError(f"ServeConfig.spec must be a RerankerSpec, got {type(self.spec).__name__}")
        check_servable(self.spec)
        for name in ("max_batch", "max_documents", "max_document_chars", "max_query_chars", "max_body_bytes", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ReasonRankError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_reasoning_budget", "max_answer_budget"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ReasonRankError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_wait_ms < 0:
            raise ReasonRankError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        self.api_keys = [k for k in (k.strip() for k in self.api_keys) if k]

    @property
    def model(self) -> str | None:
        return self.spec.model


def check_servable(spec: RerankerSpec) -> None:
    """What the service cannot honour, refused in one line before a model loads."""
    if spec.journal is not None:
        raise ReasonRankError("the rerank service keeps no journal (each request is reranked on its own); "
                              f"build the spec without journal (got {spec.journal})")
    if spec.method == "pointwise":
        raise ReasonRankError("the rerank service serves the listwise methods (sliding, tdpart), not pointwise")


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


def model_names(config: ServeConfig, backend_model: str | None = None, registry: bool = True,
                model: str | None = None) -> tuple[str, list[str]]:
    """(the served model name, every name a request may use for it, lower-cased).

    `model`: the model string of the spec served (default: `config.spec.model`). `registry=False` (a
    reranker factory whose spec names no model): None does not mean the embedded default, the name comes
    from the backend's model instead."""
    from reasonrank.backends import models

    model = config.model if model is None else model
    names: list[str] = []
    served = config.served_model_name
    entry = None
    if registry or model is not None:
        try:
            entry = models.resolve(model)
        except KeyError:
            pass
    if entry is not None:
        names += [entry.name, *entry.aliases]
        if entry.hub_id:
            names.append(entry.hub_id)
    if model:
        names.append(str(model))
        path = Path(str(model))
        names += [path.name, path.stem]
    if backend_model:
        names.append(Path(str(backend_model)).name)
    if served is None:
        served = entry.name if entry is not None else (Path(str(model or backend_model or "reasonrank")).name)
    names = [served, *names, *config.aliases]
    seen: list[str] = []
    for n in names:
        key = str(n).strip().lower()
        if key and key not in seen:
            seen.append(key)
    return served, seen
