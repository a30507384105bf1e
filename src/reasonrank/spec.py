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
METHOD_FIELDS = ("window", "step", "passes", "pivot", "answer_budget", "effort", "on_truncation", "thinking")  # the fields only some methods take
for _listwise in ("sliding", "tdpart"):  # the reasoning-budget settings of the listwise methods (see RerankerSpec)
    METHOD_DEFAULTS[_listwise].update({"answer_budget": ANSWER_BUDGET, "effort": None, "on_truncation": "force", "thinking": None})
BUDGET_FIELDS = ("reasoning_budget", "answer_budget", "effort", "max_new_tokens")  # resolved together (`budgets`)
ON_TRUNCATION = ("force", "keep", "paper")
# --effort presets: reasoning budgets (tokens); the first call of a window may generate the budget + the
# answer budget (100). Measured on the embedded 0.5B (benchmarks/results/reasoning_budget.md: SciFact top-10,
# windows of 10, the think block opened, 1 llama.cpp thread on a shared 2-core CPU): low, medium and high cost
# the same there, 105 generated tokens and 2.5 s a window (plus the prompt's ~8 s), because that model stops
# by itself after 50-150 tokens; none of its windows was cut. On a reasoning model the budget is the cap on each window's
# reasoning: at most 356, 1,124 and 3,172 generated tokens a window, so high costs up to 9x low.
EFFORT_BUDGETS = {"low": 256, "medium": 1024, "high": REASONING_BUDGET}
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
    # Reasoning on a budget (listwise). A window's call may generate reasoning_budget + answer_budget tokens
    # (`max_new_tokens` is their sum and stays as an alias, see `budgets`). `effort` low/medium/high sets
    # reasoning_budget to 256/1024/3072. `thinking=False` turns reasoning off where the chat template has a
    # switch (Qwen3's enable_thinking); None: the template's default.
    # on_truncation, what a window whose reasoning the budget cut does:
    #   force (default): continue the same sequence with the reasoning cut at its last complete sentence,
    #     then "</think>\n<answer>", for at most answer_budget tokens; status `forced`, a model-made order.
    #     The default because the alternatives throw the window's work away or read noise, and forcing is
    #     cheap: it runs only on cut windows, costs at most answer_budget generated tokens, and reuses the
    #     prompt's KV cache where the engine keeps one (llama.cpp, vLLM's prefix cache). Measured on the
    #     embedded model in benchmarks/results/reasoning_budget.md.
    #   keep: the window keeps its input order (status `truncated`), reasonrank's behaviour before.
    #   paper: every reply is read as ReasonRank's code reads it (parsing.paper_permutation); a cut reply is
    #     ranked by the numbers its reasoning mentions, first mention first (status `paper_fallback`). The
    #     setting that reproduces the paper's tables.
    reasoning_budget: Optional[int] = None  # reasoning tokens per window (listwise: 3072); pointwise: its think budget (256)
    answer_budget: Optional[int] = None  # answer tokens per window, and the forced answer's budget (listwise: 100)
    effort: Optional[str] = None  # low, medium or high: a reasoning_budget preset (EFFORT_BUDGETS)
    on_truncation: Optional[str] = None  # force, keep or paper (listwise; default force)
    thinking: Optional[bool] = None  # False: reasoning off through the chat template's switch; None: the template's default
    max_passage_tokens: Optional[int] = None  # passage cut in model tokens; None: the collection's rule, else 512; 0: whole
    journal: Optional[str] = None  # JSONL window journal; an existing one is resumed
    journal_policy: str = "resume"  # resume; fresh (start the file anew); reuse (accept another engine's answers)
    progress: bool = False  # a progress bar on stderr
    score_mode: str = "rank"  # what every face reports as a score: rank (1 / (rank + 1)) or blend (reasonrank.scoring)
    blend_weight: float = 0.6  # blend: the reranker's weight; the first stage's score gets 1 - blend_weight
    min_score: Optional[float] = None  # results scoring below it are dropped (after scoring); None: keep all
    # A Ray cluster (reasonrank.backends.replicas): `local` (start one for this run), `auto` (the one this
    # machine joined with `ray start`) or HOST:PORT; the model then runs as `replicas` Ray actors, each
    # with its own engine, and this process drives them. None: the engine runs in this process.
    ray: Optional[str] = None
    replicas: Optional[int] = None  # model replicas on the cluster (default 1)
    gpus_per_replica: Optional[float] = None  # GPUs each replica reserves (default 0; >1: tensor parallel in a placement group)
    cpus_per_replica: Optional[float] = None  # CPUs each replica reserves (default 1; llama.cpp's threads unless --threads)

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
        _check_budget_fields(self)
        for name in ("top_k", "window", "step", "passes", "pivot", "max_new_tokens"):
            value = getattr(self, name)
            least = 0 if (name, self.method) == ("max_new_tokens", "pointwise") else 1  # pointwise 0: judge at once
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        value = self.max_passage_tokens
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"max_passage_tokens must be an integer >= 0 (0: whole passages), got {value!r}")
        _check_ray_fields(self)
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
        of the old method that the new one does not take. Changing a budget drops the budgets derived
        from the old one: a new max_new_tokens drops reasoning_budget, answer_budget and effort (unless
        given too), a new reasoning_budget, answer_budget or effort drops max_new_tokens, and
        reasoning_budget and effort drop each other; so `spec.replace(reasoning_budget=8)` works on a
        resolved spec, and the rest is filled again by `resolved()`."""
        if set(BUDGET_FIELDS) & set(changes):
            drop = {"reasoning_budget", "answer_budget", "effort"} if "max_new_tokens" in changes else {"max_new_tokens"}
            if "reasoning_budget" in changes:
                drop.add("effort")
            if "effort" in changes:
                drop.add("reasoning_budget")
            changes = {**{n: None for n in drop if n not in changes}, **changes}
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

        fill = {k: v for k, v in METHOD_DEFAULTS[self.method].items() if getattr(self, k) is None and k not in BUDGET_FIELDS}
        reasoning, answer, total = budgets(self)
        fill.update({k: v for k, v in (("reasoning_budget", reasoning), ("answer_budget", answer), ("max_new_tokens", total))
                     if v is not None and getattr(self, k) is None})
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


RAY_FIELDS = ("replicas", "gpus_per_replica", "cpus_per_replica")


def _check_ray_fields(spec: RerankerSpec) -> None:
    if spec.ray is None:
        given = [name for name in RAY_FIELDS if getattr(spec, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: settings of a Ray run; give --ray too (local, auto or HOST:PORT)")
        return
    if not isinstance(spec.ray, str) or not spec.ray.strip():
        raise ConfigError(f"ray must be local, auto or HOST:PORT, got {spec.ray!r}")
    if spec.replicas is not None and (isinstance(spec.replicas, bool) or not isinstance(spec.replicas, int) or spec.replicas < 1):
        raise ConfigError(f"replicas must be an integer >= 1, got {spec.replicas!r}")
    for name in ("gpus_per_replica", "cpus_per_replica"):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    if spec.gpus_per_replica and spec.gpus_per_replica > 1 and spec.gpus_per_replica != int(spec.gpus_per_replica):
        raise ConfigError(f"gpus_per_replica above 1 is tensor parallel: a whole number of GPUs, got {spec.gpus_per_replica}")


def _check_budget_fields(spec: RerankerSpec) -> None:
    for name, least in (("reasoning_budget", 0), ("answer_budget", 1)):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    if spec.effort is not None and spec.effort not in EFFORT_BUDGETS:
        raise ConfigError(f"effort must be one of {', '.join(EFFORT_BUDGETS)}, got {spec.effort!r}")
    if spec.on_truncation is not None and spec.on_truncation not in ON_TRUNCATION:
        raise ConfigError(f"on_truncation must be one of {', '.join(ON_TRUNCATION)}, got {spec.on_truncation!r}")
    if spec.thinking is not None and not isinstance(spec.thinking, bool):
        raise ConfigError(f"thinking must be true or false, got {spec.thinking!r}")
    budgets(spec)  # contradictory combinations


def budgets(spec: RerankerSpec) -> tuple[int | None, int | None, int]:
    """(reasoning_budget, answer_budget, max_new_tokens) of a spec, its budgets resolved; ConfigError when
    they contradict each other.

    Listwise (sliding, tdpart), R = reasoning, A = answer, M = max_new_tokens, the first call's budget:
    * M = R + A always: a window's call may generate M tokens; when it stops for length before an answer,
      on_truncation decides, and a forced answer may generate A more.
    * `effort` sets R (low 256, medium 1024, high 3072); with reasoning_budget too, they must agree.
    * neither M nor R/A given: R = 3072, A = 100 (the paper's budgets), M = 3172.
    * R and/or A given, no M: the missing one at its default (R 3072, A 100), M = R + A.
    * M alone (--max-new-tokens, the alias): A = min(100, M), R = M - A (so --max-new-tokens 16 is R 0,
      A 16: no room to reason, and a forced answer gets 16 tokens).
    * M with R or A: the other is M minus it (A >= 1, R >= 0); M with both: M must equal R + A.
    Pointwise: reasoning_budget is its think budget, M its alias (the same number: default 256); A None."""
    reasoning, answer, total = spec.reasoning_budget, spec.answer_budget, spec.max_new_tokens
    if spec.effort is not None:
        preset = EFFORT_BUDGETS.get(spec.effort)
        if reasoning is not None and reasoning != preset:
            raise ConfigError(f"effort {spec.effort} is a reasoning budget of {preset} tokens, which contradicts "
                              f"reasoning_budget {reasoning}: give one of them")
        reasoning = preset
    if spec.method == "pointwise":
        if reasoning is not None and total is not None and reasoning != total:
            raise ConfigError(f"pointwise: reasoning_budget {reasoning} and max_new_tokens {total} are the same "
                              "setting (the think budget): give one of them")
        value = reasoning if reasoning is not None else total if total is not None else METHOD_DEFAULTS["pointwise"]["max_new_tokens"]
        return value, None, value
    if total is None:
        reasoning = REASONING_BUDGET if reasoning is None else reasoning
        answer = ANSWER_BUDGET if answer is None else answer
        return reasoning, answer, reasoning + answer
    if reasoning is None and answer is None:
        answer = min(ANSWER_BUDGET, total)
        return total - answer, answer, total
    if reasoning is None:
        if answer > total:
            raise ConfigError(f"answer_budget {answer} is over max_new_tokens {total} (= reasoning_budget + answer_budget)")
        return total - answer, answer, total
    if answer is None:
        if reasoning >= total:
            raise ConfigError(f"reasoning_budget {reasoning} leaves no answer budget in max_new_tokens {total} "
                              "(= reasoning_budget + answer_budget)")
        return reasoning, total - reasoning, total
    if reasoning + answer != total:
        raise ConfigError(f"max_new_tokens {total} contradicts reasoning_budget {reasoning} + answer_budget {answer} "
                          f"= {reasoning + answer}: max_new_tokens is their sum; give the budgets or the sum")
    return reasoning, answer, total


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

    renderer = with_thinking(renderer, spec.thinking)
    params = SamplingParams(max_new_tokens=spec.max_new_tokens)
    journal = Journal(spec.journal, engine=engine_identity(backend, renderer, params, spec.on_truncation, spec.answer_budget),
                      policy=spec.journal_policy)
    method_options = {"tdpart": {"k": spec.pivot}, "sliding": {"step": spec.step, "passes": spec.passes}}[spec.method]
    reranker = METHODS[spec.method](backend, renderer, top_k=spec.top_k, window=spec.window, params=params, journal=journal,
                                    progress=spec.progress, on_truncation=spec.on_truncation, answer_budget=spec.answer_budget,
                                    **method_options)
    reranker.spec = spec
    return reranker


def rebuild(reranker, **changes):
    """The reranker of `reranker.spec.replace(**changes)` on the same engine and prompt renderer (a face's
    per-call settings: a request's reasoning budget, say); `reranker` itself when nothing changes. Fields
    given as None are left as they are. Do not close what it returns: the engine is `reranker`'s."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return reranker
    return build(reranker.spec.replace(**changes), backend=reranker.backend, renderer=reranker.renderer)


def load_backend(spec: RerankerSpec):
    """The engine of a spec, loaded (the model's weights, or a client of its server; with `ray`, its
    replicas on the cluster, reasonrank.backends.replicas)."""
    from reasonrank.backends.factory import get_backend

    if spec.ray is not None:
        from reasonrank.backends.replicas import replicas_for

        return replicas_for(spec)

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
    reranker = PointwiseReranker(backend, prompter, top_k=spec.top_k, think_tokens=spec.reasoning_budget, progress=spec.progress)
    reranker.spec = spec
    return reranker


def engine_identity(backend, renderer, params, on_truncation: str | None = "keep", answer_budget: int | None = None) -> dict[str, Any]:
    """What decides a window's answer besides its prompt: the engine (backend, model identity, adapter,
    dtype or quantisation) and the settings. The journal keys windows by it and refuses a file written
    under another one. What a cut window does (on_truncation, and a forced answer's budget) and the chat
    template's switches are named only when they are not what a journal written before them meant (keep,
    no switches), so such a journal still resumes under `keep`."""
    from reasonrank.rerankers.listwise import _prompt_format

    identity = {**backend.fingerprint(), "prompt_mode": renderer.mode, "prompt_format": _prompt_format(backend, renderer),
                "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "seed": params.seed}
    if on_truncation not in (None, "keep"):
        identity["on_truncation"] = on_truncation
        if on_truncation == "force":
            identity["answer_budget"] = answer_budget
    if renderer.template.chat_template_kwargs:
        identity["chat_template_kwargs"] = dict(renderer.template.chat_template_kwargs)
    return identity


def with_thinking(renderer, thinking: bool | None):
    """The renderer with reasoning switched on or off through the chat template's switch (Qwen3's
    `enable_thinking`); `renderer` itself for None. A template without the switch cannot turn reasoning
    off: ConfigError rather than a silent reasoning run (or, for servers whose template is not known
    here, a warning that the server's template decides)."""
    switch = renderer.thinking_switch
    if thinking is None or (thinking and switch is False):  # nothing to switch: the template's default
        return renderer
    if switch is False and not thinking:
        raise ConfigError(f"thinking=False: the chat template of this model has no thinking switch (enable_thinking); "
                          f"reasoning cannot be turned off for it (the {renderer.mode} prompt asks for reasoning)")
    if switch is None and not thinking:
        import logging

        logging.getLogger(__name__).warning("thinking=False: the server's chat template is not known here; enable_thinking=false "
                                            "is sent with each request and only a template with that switch honours it")
    return renderer.with_template_kwargs(enable_thinking=bool(thinking))


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
        _Option("max_new_tokens", Optional[int], None, ("--max-new-tokens",), "Generation budget per window: an alias for --reasoning-budget + --answer-budget (default 3072 + 100; alone, the answer budget is min(100, it)); pointwise: the think budget (256)."),
        _Option("reasoning_budget", Optional[int], None, ("--reasoning-budget",), "Reasoning tokens per window (default: the paper's 3072; pointwise: its think budget, 256)."),
        _Option("answer_budget", Optional[int], None, ("--answer-budget",), "Answer tokens per window, and a forced answer's budget (default: the paper's 100)."),
        _Option("effort", Optional[str], None, ("--effort",), "Reasoning budget preset: low (256), medium (1024) or high (3072, the paper's)."),
        _Option("on_truncation", Optional[str], None, ("--on-truncation",), "A window whose reasoning the budget cut: force (default: cut the reasoning at its last sentence and force an answer), keep (keep the window's order) or paper (ReasonRank's own reading: the numbers of the whole reply; reproduces the paper)."),
        _Option("thinking", Optional[bool], None, ("--thinking/--no-thinking",), "Reasoning on or off through the chat template's switch (Qwen3's enable_thinking; default: the template's)."),
        _Option("max_passage_tokens", Optional[int], None, ("--max-passage-tokens",), "Passage cut in model tokens (default: 512 BRIGHT/R2MED and unknown, 100 other collections; 0: whole)."),
        _Option("mode", Optional[str], None, ("--mode",), "Prompt mode: reasonrank, rankgpt or qwen3; pointwise: rank1 or rank1-chat (default: the model's)."),
        _Option("tokenizer", Optional[str], None, ("--tokenizer",), "Tokenizer path or hub id (default: the model's); over HTTP it makes the prompt exact."),
        _Option("lora", Optional[Path], None, ("--lora",), "LoRA adapter directory applied to the model (hf and vllm backends)."),
        _Option("journal", Optional[Path], None, ("--traces",), "JSONL journal of every window; an existing one is resumed."),
        _Option("journal_policy", str, "resume", ("--journal-policy",), "resume; fresh (start the journal anew); reuse (accept answers a journal recorded under another engine)."),
        _Option("score_mode", str, "rank", ("--score-mode",), "Scores written and returned: rank (1/(rank+1) of the reranked order) or blend (blend_weight x rerank position + the rest x the min-max normalised first-stage score, re-sorted)."),
        _Option("blend_weight", float, 0.6, ("--blend-weight",), "--score-mode blend: the reranker's weight (0..1; the first stage gets the rest)."),
        _Option("min_score", Optional[float], None, ("--min-score",), "Drop results scoring below this (after scoring; rank mode: 0.2 keeps the top 5)."),
        _Option("ray", Optional[str], None, ("--ray",), "Run the model as replicas on a Ray cluster: local (start one for this run), auto (the cluster `ray start` joined) or HOST:PORT (README: Ray)."),
        _Option("replicas", Optional[int], None, ("--replicas",), "--ray: model replicas, each a Ray actor with its own engine (default 1)."),
        _Option("gpus_per_replica", Optional[float], None, ("--gpus-per-replica",), "--ray: GPUs each replica reserves (default 0; above 1: tensor parallel in a placement group, vLLM)."),
        _Option("cpus_per_replica", Optional[float], None, ("--cpus-per-replica",), "--ray: CPUs each replica reserves (default 1; llama.cpp's threads unless --threads)."),
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


__all__ = ["EFFORT_BUDGETS", "JOURNAL_POLICIES", "METHOD_DEFAULTS", "ON_TRUNCATION", "RerankerSpec", "budgets", "SPEC_FIELDS", "build", "engine_identity", "load_backend",
           "load_renderer", "parse_backend_options", "spec_from_cli", "spec_options"]
