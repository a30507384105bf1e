"""The listwise reasoning reranker: sliding windows over the top-k, batched across queries."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from reasonrank.backends.base import Backend, Generation, SamplingParams
from reasonrank.journal import Entry, Journal
from reasonrank.parsing import parse_ranking
from reasonrank.prompts import PromptRenderer
from reasonrank.types import Candidate, Prompt, Query, Request, Result, WindowTrace
from reasonrank.validation import check_documents, check_query
from reasonrank.windows import apply_permutation, window_schedule

BACKEND_ERROR = "backend_error"
log = logging.getLogger(__name__)


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

    def add(self, trace: WindowTrace, resumed: bool) -> None:
        self.windows += 1
        self.status[trace.status] += 1
        if resumed:
            self.resumed_windows += 1
        else:
            self.prompt_tokens += trace.prompt_tokens
            self.completion_tokens += trace.completion_tokens

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
            "model_calls_per_query": (self.windows - self.resumed_windows) / q,
            "method": self.method,
            "prompt_format": self.prompt_format,
            "dropped_fields": dict(self.dropped_fields),
        }


def _with_rank_scores(candidates: list[Candidate]) -> list[Candidate]:
    n = len(candidates)
    return [Candidate(c.docid, float(n - i), c.text, c.title) for i, c in enumerate(candidates)]


class ListwiseReranker:
    """Rerank with a ReasonRank-style model: `rerank(query, passages)` or `rerank_batch(requests)`.

    Windows at the same step of many queries go to the backend as one batch; a query's next window
    is rendered from the order its previous window produced. Garbled answers keep the window's input
    order and are counted; every window is journaled as it finishes, so a rerun resumes.
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
    ):
        step, passes = step or 10, passes or 1
        window_schedule(top_k, window, step)  # validate the arguments now, not mid-run
        self.backend, self.renderer = backend, renderer
        self.top_k, self.window, self.step, self.passes = top_k, window, step, passes
        self.params = params or SamplingParams()
        self.journal = journal if journal is not None else Journal(None)
        self.progress = progress
        self._spec = None  # the RerankerSpec it was built from (reasonrank.spec.build sets it)
        self._stats_lock = threading.Lock()  # several threads may rerank at once (service, adapters)
        self.stats = RunStats(method=self.method, prompt_format=_prompt_format(backend, renderer))
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
        return dict(top_k=self.top_k, window=self.window, step=self.step, passes=self.passes,
                    max_new_tokens=self.params.max_new_tokens, mode=self.renderer.mode,
                    max_passage_tokens=self.renderer.max_passage_tokens or 0)

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

    def _generate(self, jobs: list[tuple], prompt_at: int):
        """(job, generation) for each job, whose prompt is `job[prompt_at]`. Engines that run prompts one
        after another (llama.cpp) or in fixed batches (hf) get them in chunks of their batch size, so the
        caller's journal and progress bar advance per chunk."""
        chunk = self.backend.capabilities.batch_size or len(jobs) or 1
        for begin in range(0, len(jobs), chunk):
            part = jobs[begin:begin + chunk]
            t0 = time.perf_counter()
            generations = self.backend.generate([job[prompt_at] for job in part], self.params)
            with self._stats_lock:
                self.stats.model_seconds += time.perf_counter() - t0
            yield from zip(part, generations)

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
        for (i, p, start, end, prompt, key), gen in self._generate(pending, 4):
            trace = self._trace(requests[i].query.qid, p, start, end, orders[i][start:end], prompt, key, gen)
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

    def _trace(self, qid, p, start, end, window, prompt: Prompt, key: str, gen: Generation, role: str = "") -> WindowTrace:
        n = len(window)
        if gen.error:
            perm, status, reasoning = list(range(n)), BACKEND_ERROR, ""
        else:
            parsed = parse_ranking(gen.full_text, n, gen.finish_reason, require_tags=self.renderer.require_tags)
            perm, status, reasoning = parsed.permutation, parsed.status.value, parsed.reasoning
        return WindowTrace(
            qid=qid, pass_index=p, start=start, end=end, prompt_hash=key,
            prompt=prompt.text or json.dumps(prompt.messages, ensure_ascii=False),
            raw_output=gen.full_text if not gen.error else gen.error, reasoning=reasoning, permutation=perm, status=status,
            prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, seconds=gen.seconds,
            docids=[c.docid for c in window], method=self.method, role=role,
        )

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
