"""Rerankers: requests in, results out. `Reranker(...)` is the one factory for the listwise model."""

from __future__ import annotations

from typing import Iterable, Mapping

from reasonrank.backends.base import ANSWER_BUDGET, REASONING_BUDGET, SamplingParams
from reasonrank.errors import ConfigError, ReasonRankError, UnknownIdError
from reasonrank.journal import Journal
from reasonrank.rerankers.listwise import ListwiseReranker, RunStats
from reasonrank.rerankers.tdpart import TopDownPartitionReranker
from reasonrank.types import Candidate, Query, Request, Result

METHODS = {"sliding": ListwiseReranker, "tdpart": TopDownPartitionReranker}


def Reranker(
    model: str | None = None,
    backend: str | None = None,
    *,
    mode: str | None = None,
    max_passage_tokens: int | None = 512,
    top_k: int = 100,
    window: int = 20,
    step: int = 10,
    passes: int = 1,
    max_new_tokens: int = REASONING_BUDGET + ANSWER_BUDGET,
    tokenizer: str | None = None,
    journal: str | Journal | None = None,
    progress: bool = False,
    method: str = "sliding",
    **backend_options,
) -> ListwiseReranker:
    """A listwise reasoning reranker. With no model, the embedded Qwen2.5-Coder-0.5B GGUF on llama.cpp.

    `model` is a friendly name (`reasonrank model list`), a local path (GGUF file or HF directory) or a hub
    id; `backend` is llamacpp, hf, vllm or openai (guessed from the model when omitted). `method` is
    `sliding` (the paper's sliding window, the default) or `tdpart` (top-down partitioning, fewer calls).

    Over HTTP (openai), a known tokenizer (`tokenizer=`, the registry's for a friendly name, or else the
    server's own tokenize endpoints: vLLM, SGLang, llama.cpp) makes the prompt the exact text rendered
    here, sent to the completions endpoint with no server template, passages cut in model tokens. A
    server that can tokenize but not template (llama-cpp-python) gets chat messages with passages cut
    in its tokens; one with no tokenizer at all gets chat messages (the run summary says which).
    """
    from reasonrank.backends.factory import get_backend, tokenizer_source
    from reasonrank.backends.models import resolve
    from reasonrank.prompts import PromptRenderer, load_template
    from reasonrank.tokenizer import load_tokenizer

    if mode is None:
        try:
            mode = resolve(model).prompt_mode
        except KeyError:
            mode = "reasonrank"
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    template = load_template(mode)  # before the model loads: a wrong mode fails at once
    engine = get_backend(backend, model, **backend_options)
    source = tokenizer or tokenizer_source(engine.name, model)
    tok = load_tokenizer(source) if source else _http_tokenizer(engine, model) if engine.name == "openai" else None
    renderer = PromptRenderer(tok, mode=template, max_passage_tokens=max_passage_tokens)
    if engine.name == "openai" and renderer.can_template:
        engine.use_completions = True  # the exact rendered prompt, not the server's chat template
    if not isinstance(journal, Journal):
        journal = Journal(journal)
    return METHODS[method](
        engine, renderer, top_k=top_k, window=window, step=step, passes=passes,
        params=SamplingParams(max_new_tokens=max_new_tokens), journal=journal, progress=progress,
    )


def _http_tokenizer(engine, model: str | None):
    """For a server: the registry's tokenizer for a friendly name, else the server's own (its
    tokenize endpoints), else None (chat messages, passages cut in words)."""
    from reasonrank.backends.server_tokenizer import probe

    tok = _registry_tokenizer(model)
    if tok is None:
        tok = probe(engine.base_urls[0], engine.model, engine.auth_headers())
    return tok


def _registry_tokenizer(model: str | None):
    """The tokenizer a registry name implies for a server that serves it: the embedded GGUF where it
    is assembled, else the spec's tokenizer or hub id. None when it cannot be loaded (offline, not
    cached): the run then falls back to chat messages and says so, rather than failing."""
    import logging

    from reasonrank.backends.models import embedded_path, resolve
    from reasonrank.tokenizer import load_tokenizer

    try:
        spec = resolve(model)
    except KeyError:
        return None
    source = (str(embedded_path()) if embedded_path().is_file() else None) if spec.embedded else spec.tokenizer or spec.hub_id
    if source is None:
        return None
    try:
        return load_tokenizer(source)
    except (OSError, ValueError, ImportError, ReasonRankError) as exc:
        logging.getLogger(__name__).warning("tokenizer of %s not loadable (%s): sending chat messages", model, exc)
        return None


def requests_from_run(collection, run: Mapping[str, Mapping[str, float]], qids: Iterable[str] | None = None, depth: int | None = None) -> list[Request]:
    """Requests for the queries of a run, with passage texts looked up in the collection.

    Fails on a run doc id the collection does not hold, naming it: a silently missing passage would
    shift every window. Without `qids` the run's queries the collection lacks are skipped, but a run
    sharing none with it fails: it is a run of another collection, not an empty one."""
    queries = collection.query_dict()
    wanted = list(qids) if qids is not None else [q for q in run if q in queries]
    unknown = [q for q in wanted if q not in queries] if wanted else list(run)
    if unknown:
        raise UnknownIdError(f"{collection.name}: run has unknown query ids {unknown[:5]} (is it a run of another collection?)")
    requests = []
    for qid in wanted:
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])[:depth]
        try:
            candidates = [collection.doc(d).to_candidate(s) for d, s in ranked]
        except KeyError as exc:
            raise UnknownIdError(f"{exc.args[0]} in the run (is it a run of another collection?)") from None
        requests.append(Request(queries[qid], candidates))
    return requests


def results_to_run(results: Iterable[Result]) -> dict[str, dict[str, float]]:
    """A TREC-style run from results; candidates beyond the reranked depth keep their order below."""
    return {r.query.qid: {c.docid: c.score for c in r.candidates} for r in results}


__all__ = ["Candidate", "ListwiseReranker", "METHODS", "TopDownPartitionReranker", "Query", "Reranker", "Request", "Result", "RunStats", "requests_from_run", "results_to_run"]
