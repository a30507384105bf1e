"""One description of a reranker, and one way to build it.

    spec = RerankerSpec(model=None, method="tdpart", top_k=40, journal="runs/x.jsonl")
    reranker = build(spec)                      # backend, tokenizer, prompt renderer, journal, method

Every face builds what it runs from a `RerankerSpec` through `build`: the Python API (`Reranker(...)`
is `build(RerankerSpec(...))`), the CLI (`rerank`, `demo`, `serve`, `mcp` and `compare` get one
option per field from `spec_options`), the HTTP service (one spec; per request the same spec with
the request's overrides, on the shared engine), MCP and every adapter. A setting is a field here,
once; its default lives here, once.

Fields a method does not use are refused rather than ignored (`step` with tdpart, say), and `None`
means "the method's own default" (`resolved()` fills them in), so a spec says exactly what runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional

from reasonrank.backends.base import ANSWER_BUDGET, REASONING_BUDGET
from reasonrank.errors import ConfigError, ReasonRankError

JOURNAL_POLICIES = ("resume", "fresh", "reuse")

# Defaults per method: None in a spec means the method's value here.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "sliding": {"window": 20, "step": None, "passes": 1, "max_new_tokens": REASONING_BUDGET + ANSWER_BUDGET},
    "tdpart": {"window": 20, "pivot": None, "max_new_tokens": REASONING_BUDGET + ANSWER_BUDGET},
    "pointwise": {"max_new_tokens": 256},
}
METHOD_FIELDS = ("window", "step", "passes", "pivot")  # the fields only some methods take
DEFAULT_PASSAGE_TOKENS = 512  # where no collection says otherwise (prompts.default_max_passage_tokens)


@dataclass(frozen=True)
class RerankerSpec:
    """What to build. `None` fields take the method's (or the model's) default; see `resolved()`."""

    model: Optional[str] = None  # registry name, GGUF/HF path or hub id; None: the embedded GGUF
    backend: Optional[str] = None  # llamacpp, hf, vllm or openai; None: guessed from the model
    backend_options: Mapping[str, Any] = field(default_factory=dict)  # the engine's constructor options
    lora: Optional[str] = None  # a LoRA adapter directory (hf, vllm)
    tokenizer: Optional[str] = None  # where the tokenizer/chat template comes from; None: the model's
    mode: Optional[str] = None  # prompt mode (reasonrank, rankgpt, qwen3; pointwise: rank1, rank1-chat)
    method: str = "sliding"  # sliding, tdpart or pointwise
    top_k: int = 100  # how deep the first-stage list is reranked
    window: Optional[int] = None  # passages per window (sliding, tdpart: 20)
    step: Optional[int] = None  # window step (sliding: half the window, 10)
    passes: Optional[int] = None  # sweeps (sliding: 1)
    pivot: Optional[int] = None  # the rank tdpart settles (its k: min(10, window // 2))
    max_new_tokens: Optional[int] = None  # generation budget per call (listwise: 3072 + 100; pointwise: 256 of reasoning, 0: none)
    max_passage_tokens: Optional[int] = None  # passage cut in model tokens; None: the collection's rule, else 512; 0: whole
    journal: Optional[str] = None  # JSONL window journal; an existing one is resumed
    journal_policy: str = "resume"  # resume; fresh (start the file anew); reuse (accept another engine's answers)
    progress: bool = False  # a progress bar on stderr
    score_mode: str = "rank"  # what every face reports as a score: rank (1 / (rank + 1)) or blend (reasonrank.scoring)
    blend_weight: float = 0.6  # blend: the reranker's weight; the first stage's score gets 1 - blend_weight
    min_score: Optional[float] = None  # results scoring below it are dropped (after scoring); None: keep all

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend_options", dict(self.backend_options or {}))
        if self.journal is not None:
            object.__setattr__(self, "journal", str(self.journal))
        if self.lora is not None:
            object.__setattr__(self, "lora", str(self.lora))
        if self.method not in METHOD_DEFAULTS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_DEFAULTS)}")
        if self.journal_policy not in JOURNAL_POLICIES:
            raise ConfigError(f"journal_policy must be one of {', '.join(JOURNAL_POLICIES)}, got {self.journal_policy!r}")
        taken = METHOD_DEFAULTS[self.method]
        for name in METHOD_FIELDS:
            if getattr(self, name) is not None and name not in taken:
                users = [m for m, d in METHOD_DEFAULTS.items() if name in d]
                raise ConfigError(f"{name} is a setting of the {' and '.join(users)} method(s), not of {self.method}")
        for name in ("top_k", "window", "step", "passes", "pivot", "max_new_tokens"):
            value = getattr(self, name)
            least = 0 if (name, self.method) == ("max_new_tokens", "pointwise") else 1  # pointwise 0: judge at once
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        value = self.max_passage_tokens
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"max_passage_tokens must be an integer >= 0 (0: whole passages), got {value!r}")
        from reasonrank.scoring import check_scoring

        try:
            check_scoring(self.score_mode, self.blend_weight, self.min_score)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.method == "sliding":
            from reasonrank.windows import window_schedule

            try:
                window_schedule(self.top_k, self.window or 20, self.step or _half(self.window or 20))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.method == "tdpart":
            window, pivot = self.window or 20, self.pivot
            if pivot is not None and not 1 <= pivot < window:
                raise ConfigError(f"pivot (the rank tdpart settles) must be between 1 and window - 1 ({window - 1}), got {pivot}")

    # -- values ------------------------------------------------------------------------------------

    def replace(self, **changes) -> "RerankerSpec":
        """This spec with some fields changed (validated again). Changing the method drops the fields
        of the old method that the new one does not take."""
        if "method" in changes and changes["method"] != self.method:
            keep = METHOD_DEFAULTS[changes["method"]]
            changes = {**{n: None for n in METHOD_FIELDS if n not in keep and n not in changes}, **changes}
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ConfigError(f"not a reranker setting: {exc}") from None

    def resolved(self, collection: str | None = None) -> "RerankerSpec":
        """Every `None` filled: the method's defaults, and the passage cut of `collection` (by name) or 512."""
        from reasonrank.prompts import default_max_passage_tokens

        fill = {k: v for k, v in METHOD_DEFAULTS[self.method].items() if getattr(self, k) is None}
        window = self.window or METHOD_DEFAULTS[self.method].get("window")
        if self.method == "sliding" and self.step is None:
            fill["step"] = _half(window)
        if self.method == "tdpart" and self.pivot is None:
            fill["pivot"] = min(10, _half(window))
        if self.max_passage_tokens is None:
            fill["max_passage_tokens"] = default_max_passage_tokens(collection) if collection else DEFAULT_PASSAGE_TOKENS
        return dataclasses.replace(self, **fill) if fill else self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RerankerSpec":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"not reranker setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_options(cls, model: str | None = None, backend: str | None = None, **options) -> "RerankerSpec":
        """The Python faces' signature, `(model, backend, **options)`: options named like a field set it,
        any other goes to the backend's constructor (`n_threads=2`, `base_url=...`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        own = {k: options.pop(k) for k in list(options) if k in names}
        backend_options = {**dict(own.pop("backend_options", None) or {}), **options}
        return cls(model=model, backend=backend, backend_options=backend_options, **own)


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(RerankerSpec))


def _half(window: int) -> int:
    return max(1, window // 2)


# -- building ------------------------------------------------------------------------------------------

def build(spec: RerankerSpec, *, backend=None, renderer=None, collection: str | None = None):
    """The reranker a spec describes: a ListwiseReranker (sliding), TopDownPartitionReranker (tdpart) or
    PointwiseReranker (pointwise).

    `backend` (and `renderer`) share an engine already loaded, as the service does per request: the spec's
    model, backend and options then describe that engine and are not loaded again. `collection` (a name)
    picks the passage cut where the spec leaves it to the collection."""
    spec = spec.resolved(collection)
    if backend is None:
        backend = load_backend(spec)
    if spec.method == "pointwise":
        return _pointwise(spec, backend)
    if renderer is None:
        renderer = load_renderer(spec, backend)
        if "messages" in backend.capabilities.prompt_formats:
            # a server: the exact text rendered here where we can render it, else its own chat template
            backend.prompt_format = "text" if renderer.can_template else "messages"
    from reasonrank.backends.base import SamplingParams
    from reasonrank.journal import Journal
    from reasonrank.rerankers import METHODS

    params = SamplingParams(max_new_tokens=spec.max_new_tokens)
    journal = Journal(spec.journal, engine=engine_identity(backend, renderer, params), policy=spec.journal_policy)
    method_options = {"tdpart": {"k": spec.pivot}, "sliding": {"step": spec.step, "passes": spec.passes}}[spec.method]
    reranker = METHODS[spec.method](backend, renderer, top_k=spec.top_k, window=spec.window, params=params, journal=journal,
                                    progress=spec.progress, **method_options)
    reranker.spec = spec
    return reranker


def load_backend(spec: RerankerSpec):
    """The engine of a spec, loaded (the model's weights, or a client of its server)."""
    from reasonrank.backends.factory import get_backend

    options = dict(spec.backend_options)
    if spec.lora:
        options["lora"] = spec.lora
    return get_backend(spec.backend, spec.model, **options)


def load_renderer(spec: RerankerSpec, backend):
    """The prompt renderer of a listwise spec: the prompt mode's template and the model's tokenizer."""
    from reasonrank.prompts import PromptRenderer, load_template

    template = load_template(prompt_mode(spec))
    return PromptRenderer(load_tokenizer_for(spec, backend), mode=template, max_passage_tokens=spec.max_passage_tokens or None)


def prompt_mode(spec: RerankerSpec) -> str:
    if spec.mode is not None:
        return spec.mode
    from reasonrank.backends.models import resolve

    try:
        return resolve(spec.model).prompt_mode
    except KeyError:
        return "reasonrank"


def load_tokenizer_for(spec: RerankerSpec, backend):
    """The model's tokenizer (chat template, passage cut): `spec.tokenizer`, else the model's own; over HTTP
    the registry's for a friendly name, else the server's own tokenize endpoints, else None (chat messages)."""
    from reasonrank.backends.factory import tokenizer_source
    from reasonrank.tokenizer import load_tokenizer

    source = spec.tokenizer or tokenizer_source(backend.name, spec.model)
    if source:
        return load_tokenizer(source)
    if "messages" in backend.capabilities.prompt_formats:
        return _http_tokenizer(backend, spec.model)
    return None


def _http_tokenizer(engine, model: str | None):
    from reasonrank.backends.server_tokenizer import probe

    tok = _registry_tokenizer(model)
    if tok is None:
        tok = probe(engine.base_urls[0], engine.model, engine.auth_headers())
    return tok


def _registry_tokenizer(model: str | None):
    """The tokenizer a registry name implies for a server that serves it: the embedded GGUF where it
    is assembled, else the registry's tokenizer or hub id. None when it cannot be loaded (offline, not
    cached): the run then falls back to chat messages and says so, rather than failing."""
    import logging

    from reasonrank.backends.models import embedded_path, hub_cached, hub_offline, is_hub_id, resolve
    from reasonrank.tokenizer import load_tokenizer

    try:
        entry = resolve(model)
    except KeyError:
        return None
    source = (str(embedded_path()) if embedded_path().is_file() else None) if entry.embedded else entry.tokenizer or entry.hub_id
    if source is None or (is_hub_id(source) and hub_offline() and not hub_cached(source)):
        return None  # offline: asking the hub would retry for a minute before failing
    try:
        return load_tokenizer(source)
    except (OSError, ValueError, ImportError, ReasonRankError) as exc:
        logging.getLogger(__name__).warning("tokenizer of %s not loadable (%s): sending chat messages", model, exc)
        return None


def _pointwise(spec: RerankerSpec, backend):
    from reasonrank.rerankers.pointwise import PointwisePrompter, PointwiseReranker

    template = spec.mode or ("rank1" if "rank1" in str(spec.model or "").lower() else "rank1-chat")
    prompter = PointwisePrompter(load_tokenizer_for(spec, backend), template, spec.max_passage_tokens or None)
    reranker = PointwiseReranker(backend, prompter, top_k=spec.top_k, think_tokens=spec.max_new_tokens, progress=spec.progress)
    reranker.spec = spec
    return reranker


def engine_identity(backend, renderer, params) -> dict[str, Any]:
    """What decides a window's answer besides its prompt: the engine (backend, model identity, adapter,
    dtype or quantisation) and the settings. The journal keys windows by it and refuses a file written
    under another one."""
    from reasonrank.rerankers.listwise import _prompt_format

    return {**backend.fingerprint(), "prompt_mode": renderer.mode, "prompt_format": _prompt_format(backend, renderer),
            "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "seed": params.seed}


# -- the command-line face -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Option:
    name: str  # the command's parameter
    annotation: Any
    default: Any
    decls: tuple[str, ...]
    help: str


def _options() -> list[_Option]:
    """One CLI option per spec field (and the typed backend options), in help order."""
    return [
        _Option("model", Optional[str], None, ("--model", "-m"), "Registry name, GGUF file, model directory or hub id (default: the embedded model)."),
        _Option("backend", Optional[str], None, ("--backend", "-b"), "llamacpp, hf, vllm or openai (guessed from the model when omitted)."),
        _Option("method", str, "sliding", ("--method",), "sliding (the paper's sliding window), tdpart (top-down partitioning: fewer calls) or pointwise."),
        _Option("top_k", int, 100, ("--top-k", "-k"), "How deep the first-stage list is reranked; the rest keep their order below."),
        _Option("window", Optional[int], None, ("--window",), "Passages per window (sliding, tdpart; default 20)."),
        _Option("step", Optional[int], None, ("--step",), "Sliding window step (default: half the window, 10)."),
        _Option("passes", Optional[int], None, ("--passes",), "Sliding-window sweeps (default 1)."),
        _Option("pivot", Optional[int], None, ("--pivot",), "tdpart: the rank it settles (default min(10, window/2))."),
        _Option("max_new_tokens", Optional[int], None, ("--max-new-tokens",), "Generation budget per window (default: the paper's 3072 reasoning + 100 answer; pointwise 256)."),
        _Option("max_passage_tokens", Optional[int], None, ("--max-passage-tokens",), "Passage cut in model tokens (default: 512 BRIGHT/R2MED and unknown, 100 other collections; 0: whole)."),
        _Option("mode", Optional[str], None, ("--mode",), "Prompt mode: reasonrank, rankgpt or qwen3; pointwise: rank1 or rank1-chat (default: the model's)."),
        _Option("tokenizer", Optional[str], None, ("--tokenizer",), "Tokenizer path or hub id (default: the model's); over HTTP it makes the prompt exact."),
        _Option("lora", Optional[Path], None, ("--lora",), "LoRA adapter directory applied to the model (hf and vllm backends)."),
        _Option("journal", Optional[Path], None, ("--traces",), "JSONL journal of every window; an existing one is resumed."),
        _Option("journal_policy", str, "resume", ("--journal-policy",), "resume; fresh (start the journal anew); reuse (accept answers a journal recorded under another engine)."),
        _Option("score_mode", str, "rank", ("--score-mode",), "Scores written and returned: rank (1/(rank+1) of the reranked order) or blend (blend_weight x rerank position + the rest x the min-max normalised first-stage score, re-sorted)."),
        _Option("blend_weight", float, 0.6, ("--blend-weight",), "--score-mode blend: the reranker's weight (0..1; the first stage gets the rest)."),
        _Option("min_score", Optional[float], None, ("--min-score",), "Drop results scoring below this (after scoring; rank mode: 0.2 keeps the top 5)."),
        _Option("base_url", Optional[List[str]], None, ("--base-url",), "OpenAI-compatible server URL ending in /v1 (repeat to balance)."),
        _Option("api_key_file", Optional[Path], None, ("--api-key-file",), "File holding the server's API key (else OPENAI_API_KEY)."),
        _Option("threads", Optional[int], None, ("--threads",), "CPU threads for llama.cpp (default: the idle CPUs)."),
        _Option("n_ctx", Optional[int], None, ("--n-ctx",), "llama.cpp context size (default: the model's, at most 32,768)."),
        _Option("backend_option", Optional[List[str]], None, ("--backend-option",), "NAME=VALUE for the backend's constructor (dtype=bfloat16, n_batch=256, ...). Repeatable."),
    ]


# typed CLI flags that are backend options: flag parameter -> backend_options key
_BACKEND_FLAGS = {"base_url": "base_urls", "api_key_file": "api_key_file", "threads": "n_threads", "n_ctx": "n_ctx"}


def parse_backend_options(values: list[str] | None) -> dict[str, Any]:
    """`NAME=VALUE` strings (values read as JSON where they parse: 4, true, [..]) into backend options."""
    out: dict[str, Any] = {}
    for v in values or []:
        if "=" not in v:
            raise ConfigError(f"--backend-option must be NAME=VALUE, got {v!r}")
        name, value = v.split("=", 1)
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def spec_from_cli(values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> RerankerSpec:
    """The spec of a command's options (the parameters `spec_options` added)."""
    values = dict(values)
    options = parse_backend_options(values.pop("backend_option", None))
    for flag, key in _BACKEND_FLAGS.items():
        value = values.pop(flag, None)
        if value:
            options[key] = [str(v) for v in value] if isinstance(value, list) else str(value) if isinstance(value, Path) else value
    fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
    return RerankerSpec(**{**dict(defaults or {}), **fields, "backend_options": options})


def spec_options(*, exclude: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None) -> Callable:
    """Give a typer command one option per spec field; the command receives them as `spec: RerankerSpec`.

    `exclude` leaves out options a face cannot honour (the service keeps no journal); `defaults` changes a
    default for that face (the demo's budget), shown in its --help."""
    import typer

    defaults = dict(defaults or {})
    chosen = [o for o in _options() if o.name not in exclude]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        if "spec" not in signature.parameters:
            raise TypeError(f"{command.__name__} takes no `spec` parameter")
        own = [p for p in signature.parameters.values() if p.name != "spec"]
        added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation,
                                   default=typer.Option(defaults.get(o.name, o.default), *o.decls, help=o.help))
                 for o in chosen]
        names = [o.name for o in chosen]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {n: kwargs.pop(n) for n in names}
            try:
                kwargs["spec"] = spec_from_cli(values, {k: v for k, v in defaults.items() if k not in values})
            except ValueError as exc:
                raise ReasonRankError(str(exc)) from None
            return command(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])
        wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != "spec"},
                                   **{o.name: o.annotation for o in chosen}}
        return wrapper

    return decorate


__all__ = ["JOURNAL_POLICIES", "METHOD_DEFAULTS", "RerankerSpec", "SPEC_FIELDS", "build", "engine_identity", "load_backend",
           "load_renderer", "parse_backend_options", "spec_from_cli", "spec_options"]
