"""The listwise reasoning reranker: sliding windows over the top-k, batched across queries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from reasonrank.backends.base import ANSWER_BUDGET, Backend, Generation, SamplingParams
from reasonrank.journal import Entry, Journal
from reasonrank.parsing import (FORCED, PAPER_FALLBACK, ParseStatus, forced_prefix, paper_permutation, parse_forced,
                                parse_ranking)
from reasonrank.prompts import PromptRenderer
from reasonrank.types import Candidate, Prompt, Query, Request, Result, WindowTrace
from reasonrank.validation import check_documents, check_query
from reasonrank.windows import apply_permutation, window_schedule

BACKEND_ERROR = "backend_error"
ON_TRUNCATION = ("force", "keep", "paper")  # what a window cut in its reasoning does (reasonrank.spec.RerankerSpec)
log = logging.getLogger(__name__)


@dataclass
class Forced:
    """The forced answer of a window whose reasoning the budget cut: the continuation's prefix (the
    reasoning cut at its last complete sentence, then `</think>\n<answer>`) and the generation that
    followed it, or why there is none."""

    prefix: str
    generation: Generation | None = None
    error: str = ""


def continuation(prompt: Prompt, prefix: str, prompt_format: str) -> Prompt:
    """The prompt of a forced answer: the same sequence, continued. Text: the rendered prompt + `prefix`
    (an engine with a prefix cache reuses the prompt's). Chat messages: the messages with `prefix` as a
    final assistant message, which the backend sends as a continuation of it (vLLM's
    continue_final_message) where the server has one, and refuses where it has not."""
    messages = [*prompt.messages, {"role": "assistant", "content": prefix}]
    text = prompt.text + prefix if prompt_format == "text" and prompt.text is not None else None
    return Prompt(messages, text, dict(prompt.chat_template_kwargs))


@dataclass
class RunStats:
    """What a run did, for the summary line and benchmarks."""

    queries: int = 0
    windows: int = 0
    resumed_windows: int = 0
    retried_windows: int = 0  # windows a journal recorded as failed, asked again
    status: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_seconds: float = 0.0  # inside backend.generate
    wall_seconds: float = 0.0
    method: str = "sliding"
    prompt_format: str = "text"  # text: rendered here, sent as is; messages: a server's chat template applies
    dropped_fields: dict = field(default_factory=dict)  # base URL -> sampling fields a strict server refused
    on_truncation: str = "force"
    # forced answers (on_truncation force), included in the token totals above: calls made, calls that gave
    # no answer (the engine cannot continue chat messages, a failed call), and what they cost
    forced_calls: int = 0
    forced_failed: int = 0
    forced_prompt_tokens: int = 0
    forced_completion_tokens: int = 0
    forced_seconds: float = 0.0

    def add(self, trace: WindowTrace, resumed: bool) -> None:
        self.windows += 1
        self.status[trace.status] += 1
        if resumed:
            self.resumed_windows += 1
        else:
            self.prompt_tokens += trace.prompt_tokens + trace.forced_prompt_tokens
            self.completion_tokens += trace.completion_tokens + trace.forced_completion_tokens
            if trace.forced_prefix:
                self.forced_calls += 1
                self.forced_failed += trace.status != FORCED
                self.forced_prompt_tokens += trace.forced_prompt_tokens
                self.forced_completion_tokens += trace.forced_completion_tokens
                self.forced_seconds += trace.forced_seconds

    def to_dict(self) -> dict:
        q = max(self.queries, 1)
        return {
            "queries": self.queries,
            "windows": self.windows,
            "resumed_windows": self.resumed_windows,
            "retried_windows": self.retried_windows,
            "failed_windows": self.status.get(BACKEND_ERROR, 0),
            "parse_status": dict(self.status),
            "seconds_per_query": self.wall_seconds / q,
            "prompt_tokens_per_query": self.prompt_tokens / q,
            "completion_tokens_per_query": self.completion_tokens / q,
            "wall_seconds": self.wall_seconds,
            "model_seconds": self.model_seconds,
            "overhead_share": (self.wall_seconds - self.model_seconds) / self.wall_seconds if self.wall_seconds else 0.0,
            "model_calls_per_query": (self.windows - self.resumed_windows + self.forced_calls) / q,  # forced answers are calls too
            "method": self.method,
            "prompt_format": self.prompt_format,
            "dropped_fields": dict(self.dropped_fields),
            "on_truncation": self.on_truncation,
            "forced_windows": self.status.get(FORCED, 0),
            "forced_calls": self.forced_calls,
            "forced_failed": self.forced_failed,
            "forced_prompt_tokens": self.forced_prompt_tokens,
            "forced_completion_tokens": self.forced_completion_tokens,
            "forced_seconds": self.forced_seconds,
        }


def _with_rank_scores(candidates: list[Candidate]) -> list[Candidate]:
    n = len(candidates)
    return [Candidate(c.docid, float(n - i), c.text, c.title) for i, c in enumerate(candidates)]


class ListwiseReranker:
    """Rerank with a ReasonRank-style model: `rerank(query, passages)` or `rerank_batch(requests)`.

    Windows at the same step of many queries go to the backend as one batch; a query's next window
    is rendered from the order its previous window produced. Garbled answers keep the window's input
    order and are counted; every window is journaled as it finishes, so a rerun resumes.

    A window whose reasoning the budget cut (parse status `truncated`) is handled as `on_truncation` says
    (reasonrank.spec.RerankerSpec): `force` continues it with a forced answer of at most `answer_budget`
    tokens (one more batched call for the cut windows of each engine batch, right after it, so
    llama.cpp's KV cache still holds the prompt), `keep` keeps its order, `paper` reads every reply as
    ReasonRank's code does.
    """

    method = "sliding"

    def __init__(
        self,
        backend: Backend,
        renderer: PromptRenderer,
        *,
        top_k: int = 100,
        window: int = 20,
        step: int | None = 10,
        passes: int | None = 1,
        params: SamplingParams | None = None,
        journal: Journal | None = None,
        progress: bool = False,
        on_truncation: str | None = None,
        answer_budget: int | None = None,
    ):
        step, passes = step or 10, passes or 1
        window_schedule(top_k, window, step)  # validate the arguments now, not mid-run
        self.backend, self.renderer = backend, renderer
        self.top_k, self.window, self.step, self.passes = top_k, window, step, passes
        self.params = params or SamplingParams()
        self.on_truncation = on_truncation or "force"
        if self.on_truncation not in ON_TRUNCATION:
            raise ValueError(f"on_truncation must be one of {', '.join(ON_TRUNCATION)}, got {on_truncation!r}")
        # the forced answer's budget; by default the spec's rule for max_new_tokens alone (min(100, it))
        self.answer_budget = answer_budget or min(ANSWER_BUDGET, self.params.max_new_tokens)
        self._warned_force = False
        self.journal = journal if journal is not None else Journal(None)
        self.progress = progress
        self._spec = None  # the RerankerSpec it was built from (reasonrank.spec.build sets it)
        self._stats_lock = threading.Lock()  # several threads may rerank at once (service, adapters)
        self.stats = RunStats(method=self.method, prompt_format=_prompt_format(backend, renderer), on_truncation=self.on_truncation)
        if self.stats.prompt_format == "messages" and renderer.tokenizer is None:
            log.warning("prompts go to %s as chat messages: no tokenizer is known for %s, so the server's chat template "
                        "applies and passages are cut in words, not model tokens (pass --tokenizer)", backend.name, backend.model)
        elif self.stats.prompt_format == "messages":
            log.warning("prompts go to %s as chat messages, with passages cut in its own tokens: the server cannot "
                        "render its chat template over HTTP, so its chat handler applies it", backend.name)

    @property
    def spec(self):
        """The RerankerSpec it was built from; for one constructed by hand, the spec of its settings."""
        if self._spec is None:
            from reasonrank.spec import RerankerSpec

            return RerankerSpec(method=self.method, **self._settings()).resolved()
        return self._spec

    @spec.setter
    def spec(self, value) -> None:
        self._spec = value

    def _settings(self) -> dict:
        thinking = self.renderer.template.chat_template_kwargs.get("enable_thinking")
        return dict(top_k=self.top_k, window=self.window, step=self.step, passes=self.passes,
                    max_new_tokens=self.params.max_new_tokens, answer_budget=min(self.answer_budget, self.params.max_new_tokens),
                    on_truncation=self.on_truncation, thinking=thinking if isinstance(thinking, bool) else None,
                    mode=self.renderer.mode, max_passage_tokens=self.renderer.max_passage_tokens or 0)

    def close(self) -> None:
        """Flush the journal and free the engine."""
        self.journal.close()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def rerank(self, query: Query | str, candidates: Sequence[Candidate]) -> Result:
        if isinstance(query, str):
            query = Query("q", query)
        check_query(query.text)  # the same InvalidInput as the HTTP service and the integrations
        check_documents([c.content for c in candidates])
        return self.rerank_batch([Request(query, list(candidates))])[0]

    async def arerank(self, query: Query | str, candidates: Sequence[Candidate]) -> Result:
        """`rerank` for async callers: the work runs in a worker thread, never on the event loop."""
        return await asyncio.to_thread(self.rerank, query, candidates)

    async def arerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        return await asyncio.to_thread(self.rerank_batch, requests)

    def _generate(self, jobs: list[tuple], prompt_at: int, size: Callable[[tuple], int]):
        """(job, generation, forced answer or None) for each job, whose prompt is `job[prompt_at]` and window
        size `size(job)`. Engines that run prompts one after another (llama.cpp) or in fixed batches (hf)
        get them in chunks of their batch size, so the caller's journal and progress bar advance per chunk.
        Under on_truncation force the chunk's windows cut in their reasoning are continued in one more
        call right after it (for llama.cpp, a chunk is one window: its KV cache still holds the prompt)."""
        chunk = self.backend.capabilities.batch_size or len(jobs) or 1
        for begin in range(0, len(jobs), chunk):
            part = jobs[begin:begin + chunk]
            t0 = time.perf_counter()
            prompts = [job[prompt_at] for job in part]
            generations = self.backend.generate(prompts, self.params)
            forced = self._force(prompts, [size(job) for job in part], generations)
            with self._stats_lock:
                self.stats.model_seconds += time.perf_counter() - t0
            yield from zip(part, generations, forced)

    def _force(self, prompts: list[Prompt], sizes: list[int], generations: list[Generation]) -> list[Forced | None]:
        """The forced answers of the windows whose reasoning the budget cut (None for the others), asked in
        one call of at most `answer_budget` tokens each."""
        out: list[Forced | None] = [None] * len(prompts)
        if self.on_truncation != "force":
            return out
        todo = []
        for k, (prompt, n, gen) in enumerate(zip(prompts, sizes, generations)):
            if gen.error:
                continue
            if parse_ranking(gen.full_text, n, gen.finish_reason, require_tags=self.renderer.require_tags).status is not ParseStatus.TRUNCATED:
                continue
            out[k] = Forced(forced_prefix(gen.full_text))
            todo.append(k)
        if todo:
            params = dataclasses.replace(self.params, max_new_tokens=self.answer_budget)
            fmt = self.stats.prompt_format
            answers = self.backend.generate([continuation(prompts[k], out[k].prefix, fmt) for k in todo], params)
            for k, answer in zip(todo, answers):
                out[k].generation = answer
                out[k].error = answer.error
        return out

    def _schedule(self, n: int) -> list[tuple[int, int, int]]:
        k = min(self.top_k, n)
        return [(p, s, e) for p in range(self.passes) for s, e in window_schedule(k, self.window, self.step)]

    def rerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        started = time.perf_counter()
        orders = [list(r.candidates) for r in requests]
        traces: list[list[WindowTrace]] = [[] for _ in requests]
        schedules = [self._schedule(len(r.candidates)) for r in requests]
        total = sum(len(s) for s in schedules)
        bar = _progress(total, self.progress)
        for step in range(max((len(s) for s in schedules), default=0)):
            active = [i for i, s in enumerate(schedules) if step < len(s)]
            self._run_step(requests, orders, traces, [(i, schedules[i][step]) for i in active], bar)
        if bar is not None:
            bar.close()
        self._finish(len(requests), started)
        return [Result(r.query, _with_rank_scores(order), t) for r, order, t in zip(requests, orders, traces)]

    def _run_step(self, requests, orders, traces, jobs, bar) -> None:
        pending = []  # (request index, pass, start, end, prompt, key)
        for i, (p, start, end) in jobs:
            window = orders[i][start:end]
            prompt = self.renderer.render(requests[i].query.text, window)
            key = self._key(prompt)
            done = self._lookup(key)
            if done is not None:
                trace = WindowTrace(requests[i].query.qid, p, start, end, key, permutation=done.order, status=done.status,
                                    docids=[c.docid for c in window], method=self.method)
                self._apply(i, orders, traces, trace, resumed=True)
                if bar is not None:
                    bar.update(1)
            else:
                pending.append((i, p, start, end, prompt, key))
        for (i, p, start, end, prompt, key), gen, forced in self._generate(pending, 4, lambda job: job[3] - job[2]):
            trace = self._trace(requests[i].query.qid, p, start, end, orders[i][start:end], prompt, key, gen, forced=forced)
            self.journal.record(trace)
            self._apply(i, orders, traces, trace, resumed=False)
            if bar is not None:
                bar.update(1)
                s = self.stats
                bar.set_postfix(tok_s=f"{(s.prompt_tokens + s.completion_tokens) / max(s.model_seconds, 1e-9):.0f}",
                                gen_tok_s=f"{s.completion_tokens / max(s.model_seconds, 1e-9):.1f}", **dict(s.status))

    def _finish(self, queries: int, started: float) -> None:
        with self._stats_lock:
            self.stats.queries += queries
            self.stats.wall_seconds += time.perf_counter() - started
            if self.backend.capabilities.stats and self.backend.stats.get("dropped_fields"):
                self.stats.dropped_fields = dict(self.backend.stats["dropped_fields"])

    def _key(self, prompt: Prompt) -> str:
        # The journal key of a window: the same prompt under the same engine and settings gives the same
        # answer whichever method asked for it, so methods share finished windows.
        return self.journal.key(prompt.text or json.dumps(prompt.messages))

    def _lookup(self, key: str) -> Entry | None:
        """The journal's answer for this window; None to ask the model (a failed window is asked again)."""
        done = self.journal.lookup(key)
        if done is None and self.journal.was_failed(key):
            with self._stats_lock:
                self.stats.retried_windows += 1
        return done

    def _trace(self, qid, p, start, end, window, prompt: Prompt, key: str, gen: Generation, role: str = "",
               forced: Forced | None = None) -> WindowTrace:
        n = len(window)
        extra: dict = {}
        if gen.error:
            perm, status, reasoning = list(range(n)), BACKEND_ERROR, ""
        else:
            parsed = parse_ranking(gen.full_text, n, gen.finish_reason, require_tags=self.renderer.require_tags)
            perm, status, reasoning = parsed.permutation, parsed.status.value, parsed.reasoning
            if self.on_truncation == "paper":
                # ReasonRank's own reading of every reply; where ours found no answer, that is its fallback
                perm = paper_permutation(gen.full_text, n, reasoning_prompt=self.renderer.require_tags)
                if status in (ParseStatus.TRUNCATED.value, ParseStatus.NO_ANSWER.value):
                    status = PAPER_FALLBACK
            elif status == ParseStatus.TRUNCATED.value and forced is not None:
                perm, status, extra = self._forced_answer(forced, n, perm, status)
        return WindowTrace(
            qid=qid, pass_index=p, start=start, end=end, prompt_hash=key,
            prompt=prompt.text or json.dumps(prompt.messages, ensure_ascii=False),
            raw_output=gen.full_text if not gen.error else gen.error, reasoning=reasoning, permutation=perm, status=status,
            prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, seconds=gen.seconds,
            docids=[c.docid for c in window], method=self.method, role=role, **extra,
        )

    def _forced_answer(self, forced: Forced, n: int, perm: list[int], status: str) -> tuple[list[int], str, dict]:
        """(permutation, status, trace fields) of a cut window after its forced answer: the answer's order
        (status `forced`) when it names a passage of the window, else the window's order (`truncated`)."""
        answer = forced.generation
        extra = {"forced_prefix": forced.prefix, "forced_error": forced.error}
        if answer is not None:
            extra.update(forced_answer=answer.full_text if not answer.error else "", forced_prompt_tokens=answer.prompt_tokens,
                         forced_completion_tokens=answer.completion_tokens, forced_seconds=answer.seconds)
        if answer is None or answer.error:
            if not self._warned_force:
                self._warned_force = True
                log.warning("a window cut in its reasoning could not be forced to answer (%s): it keeps its order; "
                            "counted as forced_failed", forced.error or "no answer")
            return perm, status, extra
        parsed = parse_forced(answer.full_text, n, answer.finish_reason)
        if parsed.status in (ParseStatus.OK, ParseStatus.REPAIRED):
            return parsed.permutation, FORCED, extra
        return perm, status, extra

    def _apply(self, i, orders, traces, trace: WindowTrace, resumed: bool) -> None:
        orders[i] = apply_permutation(orders[i], trace.start, trace.end, trace.permutation)
        traces[i].append(trace)
        with self._stats_lock:
            self.stats.add(trace, resumed)


def _prompt_format(backend, renderer) -> str:
    """`messages` when the backend will send chat messages to a server's template, else `text`."""
    sends_messages = "messages" in backend.capabilities.prompt_formats
    return "messages" if sends_messages and (backend.prompt_format == "messages" or not renderer.can_template) else "text"


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="window", dynamic_ncols=True)
