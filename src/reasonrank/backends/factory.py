"""One entry point for every engine: `get_backend("llamacpp" | "hf" | "vllm" | "openai", model, **options)`.

Model names go through the registry (`models.resolve`): the embedded default (None, "default",
"embedded", "qwen2.5-coder-0.5b") becomes the assembled GGUF (fetched and verified on first use),
friendly names such as "reasonrank-7b" become their hub ids; anything else must be a local path or
a hub id (`models.locate`): with the hub switched off (HF_HUB_OFFLINE), one in the local hub cache.
A model found nowhere fails with one message naming what was tried, before any engine loads.
Engines are imported only when asked for.

Backend choice when `backend` is None: "llamacpp" for the embedded default or a .gguf file,
"openai" when base_url(s) are given, else "hf".

`tokenizer_source(backend, model)` says where the prompt renderer should load the model's tokenizer
(chat template) from: the GGUF file, the model directory or the hub id; None for an HTTP backend
unless one is given (the server then applies its own template to `messages`).
"""

from __future__ import annotations

from pathlib import Path

from reasonrank.backends import models
from reasonrank.backends.base import Backend
from reasonrank.errors import ReasonRankError

ALIASES = {
    "llamacpp": "llamacpp", "llama.cpp": "llamacpp", "llama_cpp": "llamacpp", "llama-cpp": "llamacpp", "gguf": "llamacpp",
    "hf": "hf", "transformers": "hf", "huggingface": "hf",
    "vllm": "vllm",
    "openai": "openai", "openai_compat": "openai", "openai-compatible": "openai", "http": "openai", "api": "openai",
}
BACKENDS = ("llamacpp", "hf", "vllm", "openai")


def backend_name(backend: str | None, model: str | None = None, **options) -> str:
    """The canonical backend name, choosing one when `backend` is None (see the module docstring)."""
    if backend is not None:
        key = backend.strip().lower()
        if key not in ALIASES:
            raise ReasonRankError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return ALIASES[key]
    if options.get("base_urls") or options.get("base_url"):
        return "openai"
    spec = _registry(model)
    if model is None or (spec is not None and spec.embedded is not None) or str(model).endswith(".gguf"):
        return "llamacpp"
    return "hf"


def _registry(model: str | None) -> models.ModelSpec | None:
    try:
        return models.resolve(model)
    except KeyError:
        return None


def resolve_model(backend: str, model: str | None) -> str:
    """What the engine loads: a GGUF path (llamacpp), a directory or hub id (hf, vllm; the GGUF path
    for the embedded model under hf), or the name sent to the server (openai)."""
    backend = backend_name(backend)
    spec = _registry(model)
    if backend == "openai":
        if spec is not None and spec.hub_id:
            return spec.hub_id
        if model is None:
            raise ReasonRankError("the openai backend needs --model: the model name the server serves")
        return str(model)
    if spec is not None and spec.embedded is not None:
        if backend == "vllm":  # vLLM 0.30 reads no GGUF: the embedded model as a bf16 checkpoint, converted once
            return str(models.embedded_checkpoint(spec.embedded))
        return str(models.ensure_embedded(spec.embedded))
    if spec is not None and spec.hub_id:
        if backend == "llamacpp":
            raise ReasonRankError(
                f"{spec.name} is a hub model ({spec.hub_id}); llama.cpp needs a GGUF file: pass its path as the "
                f"model, or use --backend hf / vllm")
        return models.check_hub(str(model), spec.hub_id)
    if model is None:  # pragma: no cover - resolve(None) always finds the default
        raise ReasonRankError("no model given")
    if backend == "llamacpp":
        path = Path(model).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise ReasonRankError(f"{model}: the llama.cpp backend needs an existing .gguf file")
        return str(path)
    return models.locate(str(model))


def tokenizer_source(backend: str | None, model: str | None, tokenizer: str | None = None) -> str | None:
    """Where to load the tokenizer used to render prompts for this backend and model."""
    if tokenizer:
        return tokenizer
    name = backend_name(backend, model)
    if name == "openai":
        return None
    spec = _registry(model)
    if spec is not None and spec.tokenizer:
        return spec.tokenizer
    return resolve_model(name, model)


def get_backend(backend: str | None = None, model: str | None = None, **options) -> Backend:
    """An engine ready to `generate()`. `options` go to the backend's constructor, e.g.
    llamacpp: n_ctx, n_threads, n_batch, seed, logprobs; hf: device, dtype, batch_size;
    vllm: tensor_parallel_size, gpu_memory_utilization, max_model_len;
    openai: base_urls (or base_url), api_key, concurrency, max_retries, timeout, use_completions, extra_body."""
    name = backend_name(backend, model, **options)
    target = resolve_model(name, model)
    if name == "llamacpp":
        from reasonrank.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(target, **options)
    if name == "hf":
        from reasonrank.backends.hf import HFBackend

        return _load(HFBackend, str(model or target), target, options)
    if name == "vllm":
        from reasonrank.backends.vllm import VLLMBackend

        return _load(VLLMBackend, str(model or target), target, options)
    from reasonrank.backends.openai_compat import OpenAIBackend

    if "base_url" in options:
        url = options.pop("base_url")
        options.setdefault("base_urls", url)
    return OpenAIBackend(target, **options)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a load from an unreachable hub raises: transformers wraps most of it in OSError (requests'
    errors are OSErrors too); huggingface_hub's own HTTP errors are not OSErrors in every version."""
    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return (OSError,)
    return (OSError, HfHubHTTPError)


def _load(engine, model: str, target: str, options: dict) -> Backend:
    """`engine(target)`, a failure to fetch an uncached hub model worded as resolve_model's errors are."""
    try:
        return engine(target, **options)
    except _hub_errors() as exc:
        error = models.hub_load_failed(model, target, exc)
        if error is None:
            raise
        raise error from exc
