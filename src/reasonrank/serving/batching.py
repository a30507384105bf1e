"""Cross-request batching: windows from every in-flight request share backend calls.

Each HTTP request runs its own `ListwiseReranker` in a thread, and that reranker calls
`generate(prompts, params)` once per sliding-window step. Here that call does not reach the model:
the prompts are put on one queue and the calling thread waits. A single worker thread takes the
first waiting prompt, then everything else already queued (up to `max_batch`), and, while the batch
is not full, waits at most `max_wait` seconds for more; then it calls the real backend once for the
whole gathered batch and hands each caller its own Generations. While the model is busy, new windows
pile up on the queue, so under load every backend call is as full as `max_batch` allows.

Prompts with different SamplingParams are never mixed: a gathered batch is split by params.

A request's `BatchClient` is the engine as its reranker sees it: the engine's name, model, capabilities
(prompt formats, log-probabilities, stats; its batch size is the batcher's: any number of prompts per
call), prompt format, fingerprint and stats, so a reranker built on it (`build(spec, backend=client)`) keys its journal,
renders its prompts and reports its run exactly as on the engine itself.

Cancellation: a request's `BatchClient` carries a `threading.Event`. Once it is set, the client's
next `generate()` raises `RequestCancelled` without queueing anything (the reranker stops there: no
further windows), prompts it still has on the queue are dropped by the worker, and a caller waiting
for a batch already inside the model stops waiting (that batch finishes; its result is discarded).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import astuple, dataclass, field
from typing import Callable, Sequence

from reasonrank.backends.base import Backend, Generation, Prompt, SamplingParams

log = logging.getLogger("reasonrank.serving")


class RequestCancelled(Exception):
    """The request this work belonged to was cancelled (client gone)."""


@dataclass
class _Item:
    prompt: Prompt
    params: SamplingParams
    cancel: threading.Event | None
    future: Future = field(default_factory=Future)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


_STOP = object()


def _params_key(params: SamplingParams) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in astuple(params))


class BatchingBackend:
    """Wraps a Backend; `client(cancel)` gives each request a Backend-shaped handle onto the queue.

    `on_batch(size, seconds)` is called after every backend call (for metrics); `on_drop(n)` when
    queued prompts of cancelled requests are discarded.
    """

    def __init__(self, backend: Backend, max_batch: int = 8, max_wait: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None, on_drop: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.backend = backend
        self.name, self.model = backend.name, backend.model
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.on_batch, self.on_drop = on_batch, on_drop
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._busy = 0  # prompts inside the backend right now
        self.batches = 0
        self.prompts = 0
        self._fingerprint: dict | None = None
        self._fingerprint_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="reasonrank-batcher", daemon=True)
        self._thread.start()

    # -- the engine, as every request's client sees it ----------------------------------------

    @property
    def capabilities(self):
        """The engine's, except its batch size: callers may hand over any number of prompts (the worker
        gathers them into calls of at most `max_batch`; the engine chunks those its own way)."""
        return dataclasses.replace(self.backend.capabilities, batch_size=None)

    def fingerprint(self) -> dict:
        """The engine's identity, computed once (a reranker is built per request; llama.cpp's hashes its file)."""
        with self._fingerprint_lock:
            if self._fingerprint is None:
                self._fingerprint = dict(self.backend.fingerprint())
            return dict(self._fingerprint)

    @property
    def stats(self):
        return self.backend.stats

    # -- callers ------------------------------------------------------------------------------

    def client(self, cancel: threading.Event | None = None) -> BatchClient:
        return BatchClient(self, cancel)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return self.submit(prompts, params, None)

    def submit(self, prompts: Sequence[Prompt], params: SamplingParams, cancel: threading.Event | None) -> list[Generation]:
        if cancel is not None and cancel.is_set():
            raise RequestCancelled()
        if self._closed:
            raise RuntimeError("the batching backend is closed")
        items = [_Item(p, params, cancel) for p in prompts]
        for item in items:  # consecutive, so one request's windows of a step usually share a batch
            self._queue.put(item)
        out = []
        for item in items:
            while True:
                try:
                    out.append(item.future.result(timeout=0.05))
                    break
                except FutureTimeout:
                    if cancel is not None and cancel.is_set():
                        raise RequestCancelled() from None
        return out

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> int:
        return self._busy

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop after the prompts already queued are done (graceful); later submits fail."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            live = []
            for item in batch:
                if item.cancelled:
                    item.future.set_exception(RequestCancelled())
                else:
                    live.append(item)
            if len(live) < len(batch) and self.on_drop:
                self.on_drop(len(batch) - len(live))
            for group in _by_params(live):
                self._run(group)
            if stop:
                self._drain_after_stop()
                return

    def _drain_after_stop(self) -> None:
        """Items queued after close() began (they raced it): still served, nothing is lost."""
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        for start in range(0, len(rest), self.max_batch):
            for group in _by_params(rest[start:start + self.max_batch]):
                self._run(group)

    def _run(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        self._busy = len(items)
        try:
            gens = self.backend.generate([i.prompt for i in items], items[0].params)
            if len(gens) != len(items):
                raise RuntimeError(f"backend returned {len(gens)} generations for {len(items)} prompts")
        except Exception as exc:  # noqa: BLE001 - a failing call must not kill the worker or hang callers
            gens = [Generation(text="", error=f"backend failed: {type(exc).__name__}: {exc}") for _ in items]
        seconds = time.perf_counter() - started
        self.batches += 1
        self.prompts += len(items)
        if self.on_batch:
            try:
                self.on_batch(len(items), seconds)
            except Exception:  # metrics must never break serving
                log.debug("on_batch hook failed", exc_info=True)
        self._busy = 0  # only now: a batch reads as finished once its metrics are recorded
        for item, gen in zip(items, gens):
            if not item.future.done():
                item.future.set_result(gen)


def _by_params(items: list[_Item]) -> list[list[_Item]]:
    groups: dict[tuple, list[_Item]] = {}
    for item in items:
        groups.setdefault(_params_key(item.params), []).append(item)
    return list(groups.values())


class BatchClient:
    """What one request's reranker sees as its backend: `generate` goes through the batcher (and stops on
    `cancel`); name, model, capabilities, fingerprint and stats are the engine's (see the module docstring);
    anything else the engine offers (log-probabilities, its prompt-format switch) is the engine's own.
    `close()` does nothing: the engine belongs to the service, not to a request."""

    def __init__(self, batcher: BatchingBackend, cancel: threading.Event | None):
        self._batcher, self.cancel = batcher, cancel
        self.name, self.model = batcher.name, batcher.model

    @property
    def capabilities(self):
        return self._batcher.capabilities

    def fingerprint(self) -> dict:
        return self._batcher.fingerprint()

    @property
    def stats(self):
        return self._batcher.stats

    @property
    def prompt_format(self) -> str:
        """How the engine sends prompts ("text" or "messages"), as the service's build set it once."""
        return self._batcher.backend.prompt_format

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return self._batcher.submit(prompts, params, self.cancel)

    def close(self) -> None:
        pass

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._batcher.backend, name)
