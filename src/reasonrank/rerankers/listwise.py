"""The listwise reasoning reranker: sliding windows over the top-k, batched across queries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generator, Iterable, Iterator, Sequence

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
    # Ray replicas (reasonrank.backends.replicas): replicas that died during the run, and calls sent again
    # to another replica because theirs died
    replica_deaths: int = 0
    replica_retries: int = 0

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
            "replica_deaths": self.replica_deaths,
            "replica_retries": self.replica_retries,
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

    def _call(self, prompts: list[Prompt], sizes: list[int]) -> list[tuple[Generation, Forced | None]]:
        """One engine call: the generations of `prompts` (windows of `sizes` passages) and, under
        on_truncation force, the forced answers of those the budget cut, asked right after in one more
        call (for llama.cpp, whose calls are one window, its KV cache still holds the prompt)."""
        t0 = time.perf_counter()
        generations = self.backend.generate(prompts, self.params)
        forced = self._force(prompts, sizes, generations)
        with self._stats_lock:
            self.stats.model_seconds += time.perf_counter() - t0
        return list(zip(generations, forced))

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

    def _plan(self, request: Request) -> Plan:
        """A query's sliding windows, bottom first: each window is rendered from the order the last one left."""
        order = list(request.candidates)
        for p, start, end in self._schedule(len(order)):
            (trace,) = yield [Window(order[start:end], pass_index=p, start=start, end=end)]
            order = apply_permutation(order, start, end, trace.permutation)
        return order

    def expected_windows(self, candidates: int) -> int | None:
        """Windows a query of `candidates` candidates takes (None where it depends on the answers)."""
        return len(self._schedule(candidates))

    def rerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        expected = [self.expected_windows(len(r.candidates)) for r in requests]
        return list(self.rerank_stream(requests, active=None, total_windows=None if None in expected else sum(expected)))

    def rerank_stream(self, requests: Iterable[Request], active: int | None = 256,
                      total_windows: int | None = None) -> Iterator[Result]:
        """Results of `requests` (any iterable, read lazily), in request order, each as soon as it and
        those before it are done: at most `active` queries are held at once (being reranked, or done and
        waiting for an earlier one), so memory does not grow with the number of queries. None: all.

        No step barrier: a query's next windows are rendered and sent as soon as its last ones return,
        whatever the other queries are doing, so a slow window holds up only its own query. Engines that
        take several calls at once (servers, Ray replicas: `capabilities.concurrency`) get that many
        calls in flight, refilled as each returns; the others get one call at a time holding every
        window ready (a vLLM batch) or their batch size of them (llama.cpp: one). Windows the journal
        holds are answered from it without a call. Journal, stats and progress advance per call."""
        if active is not None and active < 1:
            raise ValueError(f"active must be >= 1, got {active}")
        started, done = time.perf_counter(), 0
        try:
            for request, order, traces in _Drive(self, iter(requests), active, _progress(total_windows, self.progress)).stream():
                done += 1
                yield Result(request.query, _with_rank_scores(order), traces)
        finally:
            self._finish(done, started)

    def _finish(self, queries: int, started: float) -> None:
        with self._stats_lock:
            self.stats.queries += queries
            self.stats.wall_seconds += time.perf_counter() - started
            if self.backend.capabilities.stats:
                backend = self.backend.stats
                if backend.get("dropped_fields"):
                    self.stats.dropped_fields = dict(backend["dropped_fields"])
                self.stats.replica_deaths = backend.get("replica_deaths", 0)
                self.stats.replica_retries = backend.get("replica_retries", 0)

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


def _prompt_format(backend, renderer) -> str:
    """`messages` when the backend will send chat messages to a server's template, else `text`."""
    sends_messages = "messages" in backend.capabilities.prompt_formats
    return "messages" if sends_messages and (backend.prompt_format == "messages" or not renderer.can_template) else "text"


def _progress(total: int | None, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="window", dynamic_ncols=True)


@dataclass
class Window:
    """A window a plan asks for: its candidates in input order, and where it sits (positions for the
    sliding window; a role for tdpart's, whose windows are not contiguous)."""

    candidates: list[Candidate]
    role: str = ""
    pass_index: int = 0
    start: int | None = None
    end: int | None = None


# A query's plan: yields the windows it needs next, receives their traces (in the same order), returns
# the query's final order.
Plan = Generator[list[Window], list[WindowTrace], list[Candidate]]


@dataclass
class _Job:
    query: int  # request index
    slot: int  # the window's place in what its plan asked for
    window: Window
    prompt: Prompt
    key: str


class _Drive:
    """The state of one rerank_stream: the queries admitted, each one's plan, the windows waiting for a
    call, the calls in flight (ListwiseReranker.rerank_stream says how they are scheduled)."""

    def __init__(self, reranker: ListwiseReranker, requests: Iterator[Request], active: int | None, bar):
        self.r, self.incoming, self.active, self.bar = reranker, requests, active, bar
        self.requests: dict[int, Request] = {}  # admitted and not yet yielded
        self.traces: dict[int, list[WindowTrace]] = {}
        self.plans: dict[int, Plan] = {}
        self.answers: dict[int, list[WindowTrace | None]] = {}
        self.finals: dict[int, list[Candidate]] = {}
        self.queue: deque[_Job] = deque()
        self.admitted = self.emitted = 0

    def stream(self) -> Iterator[tuple[Request, list[Candidate], list[WindowTrace]]]:
        slots = max(1, self.r.backend.capabilities.concurrency)
        pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="reasonrank-call") if slots > 1 else None
        running: dict = {}
        try:
            while True:
                yield from self._ready()
                if not self.queue and not running:
                    return
                if pool is None:
                    jobs = self._take(1)
                    self._done(jobs, self.r._call([j.prompt for j in jobs], [len(j.window.candidates) for j in jobs]))
                    continue
                while self.queue and len(running) < slots:
                    jobs = self._take(slots - len(running))
                    running[pool.submit(self.r._call, [j.prompt for j in jobs], [len(j.window.candidates) for j in jobs])] = jobs
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._done(running.pop(future), future.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.bar is not None:
                self.bar.close()

    def _ready(self) -> Iterator[tuple[Request, list[Candidate], list[WindowTrace]]]:
        """Admit queries while fewer than `active` are held; yield the finished ones in request order."""
        while True:
            while (self.active is None or len(self.requests) < self.active) and self._admit():
                pass
            if self.emitted not in self.finals:
                return
            i = self.emitted
            self.emitted += 1
            yield self.requests.pop(i), self.finals.pop(i), self.traces.pop(i)

    def _admit(self) -> bool:
        request = next(self.incoming, None)
        if request is None:
            return False
        i = self.admitted
        self.admitted += 1
        self.r.renderer.prepare(request.candidates[:self.r.top_k])
        self.requests[i], self.traces[i], self.plans[i] = request, [], self.r._plan(request)
        self.advance(i, None)
        return True

    def advance(self, i: int, answer: list[WindowTrace] | None) -> None:
        """Give query i its answers; render what it asks next, answering from the journal what it can."""
        while True:
            plan = self.plans[i]
            try:
                windows = plan.send(answer) if answer is not None else next(plan)
            except StopIteration as stop:
                self.finals[i] = stop.value
                del self.plans[i]
                return
            self.answers[i] = [None] * len(windows)
            query = self.requests[i].query
            for n, window in enumerate(windows):
                prompt = self.r.renderer.render(query.text, window.candidates)
                key = self.r._key(prompt)
                done = self.r._lookup(key)
                if done is None:
                    self.queue.append(_Job(i, n, window, prompt, key))
                    continue
                trace = WindowTrace(query.qid, window.pass_index, window.start, window.end, key, permutation=done.order,
                                    status=done.status, docids=[c.docid for c in window.candidates], method=self.r.method,
                                    role=window.role)
                self._answer(i, n, trace, resumed=True)
            if any(t is None for t in self.answers[i]):
                return
            answer = self._complete(i)

    def _answer(self, i: int, n: int, trace: WindowTrace, resumed: bool) -> None:
        self.answers[i][n] = trace
        with self.r._stats_lock:
            self.r.stats.add(trace, resumed)
        if self.bar is not None:
            self.bar.update(1)

    def _complete(self, i: int) -> list[WindowTrace]:
        answer = self.answers.pop(i)
        self.traces[i].extend(answer)  # in the order the plan asked, whichever call returned first
        return answer

    def _take(self, free: int) -> list[_Job]:
        """The windows of the next call: the engine's batch size, else every window ready when one call
        runs at a time (a vLLM batch), else one (a server's calls run side by side)."""
        caps = self.r.backend.capabilities
        size = caps.batch_size or (len(self.queue) if free == 1 and caps.concurrency == 1 else 1)
        return [self.queue.popleft() for _ in range(min(size, len(self.queue)))]

    def _done(self, jobs: list[_Job], results: list[tuple[Generation, Forced | None]]) -> None:
        r = self.r
        for job, (gen, forced) in zip(jobs, results):
            w = job.window
            trace = r._trace(self.requests[job.query].query.qid, w.pass_index, w.start, w.end, w.candidates, job.prompt,
                             job.key, gen, role=w.role, forced=forced)
            r.journal.record(trace)
            self._answer(job.query, job.slot, trace, resumed=False)
            if all(t is not None for t in self.answers[job.query]):
                self.advance(job.query, self._complete(job.query))
        if self.bar is not None:
            s = r.stats
            self.bar.set_postfix(tok_s=f"{(s.prompt_tokens + s.completion_tokens) / max(s.model_seconds, 1e-9):.0f}",
                                 gen_tok_s=f"{s.completion_tokens / max(s.model_seconds, 1e-9):.1f}", **dict(s.status))
