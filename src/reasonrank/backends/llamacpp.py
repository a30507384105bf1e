"""llama.cpp backend (llama-cpp-python): the CPU default, for GGUF models.

Generation is a raw completion from `Prompt.text`, the prompt already rendered with the model's chat
template: no second template is applied. The text is tokenized here with special tokens parsed
(`<|im_start|>` becomes one token, as the template means it) and handed to llama.cpp as token ids,
so llama.cpp adds nothing: a BOS token is prepended only when the GGUF asks for one
(`tokenizer.ggml.add_bos_token`) and the rendered text does not already start with it. Qwen2.5's
GGUF does not ask for one, so a Qwen prompt is evaluated exactly as rendered.

Context: `n_ctx` must hold the prompt plus `max_new_tokens`. By default it is the model's training
context (capped at 32,768 tokens). A prompt that does not fit comes back as a Generation with
`error` set; the rest of the batch still runs.

Threads: `n_threads` defaults to every CPU the process may use, the fastest setting on an idle
machine. On CPUs shared with other busy processes llama.cpp's threads wait on each other: measured
here on 2 shared cores, generation ran at 0.6-2.1 tokens/s with n_threads=2 but 9-10 tokens/s with
n_threads=1 (and ~24 tokens/s with n_threads=2 when the machine was nearly idle). Pass n_threads=1
when the cores are shared.

Log-probabilities (for pointwise judgements such as P("true")), without `logits_all` (which would
keep n_ctx x vocab floats): the logits of each step are read as they are sampled.

* `LlamaCppBackend(..., logprobs=N)`: `generate()` returns `LogprobGeneration`s (a Generation subclass)
  whose `top_logprobs` holds, for each of the first `logprob_steps` generated tokens, the top-N
  tokens' log-probabilities (plus the chosen token's).
* `backend.next_token_logprobs(prompts, candidates=["true", "false"], top_k=20)`: the distribution of
  the single next token after each prompt, with the log-probability of each candidate string's first
  token. Costs one prompt evaluation and one sampled token per prompt.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasonrank.backends.base import Capabilities, file_identity, Generation, NextTokenLogprobs, Prompt, SamplingParams  # noqa: F401 (NextTokenLogprobs: re-exported)
from reasonrank.errors import ReasonRankError, require

MAX_DEFAULT_CTX = 32768  # the default n_ctx: the model's training context, at most this


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> tuple[int, str]:
    """The default thread count, and why: CPUs not already busy (1-minute load average subtracted).

    llama.cpp's threads wait for each other at every step, so one thread more than there are free
    cores is far slower than one fewer (measured here: 0.6-2.1 tok/s with 2 threads against 9-10
    tok/s with 1 while another job held a core). On an idle machine this is every CPU.
    """
    cpus = available_cpus()
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this OS: assume the machine is idle
        return cpus, f"{cpus} CPUs available to this process; no load average to subtract"
    busy = int(load + 0.5)
    threads = max(1, cpus - busy)
    return threads, f"{cpus} CPUs available to this process minus {busy} busy: 1-minute load average {load:.2f}"


def idle_cpus() -> int:
    """The default thread count (see default_threads)."""
    return default_threads()[0]


@dataclass
class LogprobGeneration(Generation):
    """A Generation with per-step top log-probabilities of its first generated tokens.

    `top_logprobs[i]` maps token text -> natural-log probability for step i (the top-N tokens of the
    model's distribution before sampling, plus the token actually chosen)."""

    top_logprobs: list[dict[str, float]] = field(default_factory=list)


class _StepRecorder:
    """A llama-cpp-python logits processor that records log-softmax top-k of the first `steps` steps.

    llama-cpp-python runs logits processors as the first stage of its sampler chain, on the full,
    id-ordered logits of the step (before penalties and sampling), and returns them unchanged."""

    def __init__(self, steps: int, top_k: int, watch_ids: Sequence[int] = ()):
        self.steps, self.top_k, self.watch_ids = steps, top_k, list(watch_ids)
        self.records: list[tuple[list[tuple[int, float]], dict[int, float], int]] = []

    def __call__(self, input_ids, scores):
        if len(self.records) < self.steps:
            import numpy as np

            logits = np.asarray(scores, dtype=np.float64)
            shifted = logits - logits.max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
            k = min(self.top_k, logprobs.shape[0])
            top = np.argpartition(-logprobs, k - 1)[:k] if k > 0 else np.array([], dtype=int)
            top = top[np.argsort(-logprobs[top])]
            self.records.append((
                [(int(i), float(logprobs[i])) for i in top],
                {int(i): float(logprobs[i]) for i in self.watch_ids},
                int(np.argmax(logprobs)),
            ))
        return scores


class LlamaCppBackend:
    """Batched (sequential) generation with llama-cpp-python. Not thread-safe inside llama.cpp, so
    calls are serialised with a lock; one instance holds one model in memory."""

    name = "llamacpp"
    batch_size = 1  # llama-cpp-python runs one sequence at a time; rerankers step it prompt by prompt
    # one sequence at a time, one caller at a time (the lock): llama.cpp is not thread-safe
    capabilities = Capabilities(batch_size=1, logprobs=True, concurrency=1)
    prompt_format = "text"  # generates from the prompt rendered here

    def __init__(
        self,
        model_path: str | os.PathLike,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        logprobs: int | bool = 0,
        logprob_steps: int = 8,
        n_gpu_layers: int = 0,
        verbose: bool = False,
        **llama_kwargs,
    ):
        """
        model_path: a GGUF file.
        n_ctx: context window (prompt + generated tokens). None: the model's training context, at
            most 32,768 (KV cache for Qwen2.5-0.5B at 32k: ~400 MB).
        n_threads: CPU threads for generation and prompt processing; None: all CPUs available.
        n_batch: prompt tokens evaluated per llama.cpp decode call.
        seed: the seed llama.cpp's context starts with (each call samples with `SamplingParams.seed`).
        logprobs: 0/False off; N (True = 5): record the top-N log-probabilities of the first
            `logprob_steps` generated tokens on every Generation (as LogprobGeneration).
        n_gpu_layers: layers offloaded to a GPU when llama-cpp-python was built with one (-1: all).
        """
        llama_cpp = require("llama_cpp", "llamacpp", "The llama.cpp backend")
        path = Path(model_path)
        if not path.is_file():
            raise ReasonRankError(f"{path}: no such GGUF file")
        self.model = str(path)
        self.model_path = str(path)
        self.n_threads = n_threads or idle_cpus()
        self.logprobs = 5 if logprobs is True else int(logprobs or 0)
        self.logprob_steps = logprob_steps
        self.seed = seed
        if n_ctx is None:
            n_ctx = min(_gguf_context_length(llama_cpp, path) or 8192, MAX_DEFAULT_CTX)
        self._lock = threading.Lock()
        self._recent: deque = deque(maxlen=8)  # the last calls: (prompt length, tokens in the cache after it) (_align_cache)
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_batch, n_ctx),
            n_ubatch=min(n_batch, n_ctx),
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            logits_all=False,
            verbose=verbose,
            **llama_kwargs,
        )
        # freed at interpreter exit while llama_cpp's module globals still exist: Llama.__del__ alone runs
        # after they are torn down and prints "Exception ignored in Llama.__del__ ... TypeError"
        weakref.finalize(self, self._llm.close)
        self.n_ctx = self._llm.n_ctx()
        meta = getattr(self._llm, "metadata", {}) or {}
        self._add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
        self._bos = self._llm.token_bos()

    # -- tokens -------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids llama.cpp evaluates for a rendered prompt: special tokens parsed; BOS only when
        the GGUF asks for it and the text does not already begin with it."""
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self._add_bos and self._bos >= 0 and (not ids or ids[0] != self._bos):
            ids = [self._bos] + ids
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _token_text(self, token_id: int) -> str:
        return self._llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    # -- generation ---------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        return [self._generate_one(p, params) for p in prompts]

    def _prompt_ids(self, prompt: Prompt, max_new_tokens: int) -> tuple[list[int] | None, str]:
        if prompt.text is None:
            return None, "llama.cpp backend needs Prompt.text (the rendered prompt); got messages only"
        ids = self.tokenize(prompt.text)
        if len(ids) + max_new_tokens > self.n_ctx:
            return ids, (
                f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} = {len(ids) + max_new_tokens} "
                f"exceeds the context window n_ctx={self.n_ctx}; shorten the prompt (fewer or shorter "
                f"passages) or load the backend with a larger n_ctx"
            )
        return ids, ""

    def _generate_one(self, prompt: Prompt, params: SamplingParams) -> Generation:
        cls = LogprobGeneration if self.logprobs else Generation
        start = time.perf_counter()
        max_new = max(1, int(params.max_new_tokens))
        ids, error = self._prompt_ids(prompt, max_new)
        if error:
            return cls(text="", prompt_tokens=len(ids or []), error=error, seconds=time.perf_counter() - start)
        recorder = _StepRecorder(self.logprob_steps, self.logprobs) if self.logprobs else None
        try:
            with self._lock:
                self._align_cache(ids)
                out = self._llm.create_completion(
                    prompt=ids,
                    max_tokens=max_new,
                    **self._sampling_kwargs(params),
                    logits_processor=[recorder] if recorder else None,
                )
                self._remember(ids)
        except Exception as exc:  # noqa: BLE001 - one bad item must not lose the batch
            return cls(text="", prompt_tokens=len(ids), error=f"llama.cpp failed: {type(exc).__name__}: {exc}",
                       seconds=time.perf_counter() - start)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        gen = cls(
            text=choice.get("text") or "",
            prompt_tokens=int(usage.get("prompt_tokens", len(ids))),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "",
            seconds=time.perf_counter() - start,
        )
        if recorder is not None:
            gen.top_logprobs = [self._step_dict(top) for top, _, _ in recorder.records]
        return gen

    def _align_cache(self, ids: list[int]) -> None:
        """Make the cache what a fresh engine would hold before `ids` (call with the lock held), so an
        answer never depends on what ran before it.

        llama-cpp-python reuses the longest cached prefix a prompt shares with the last call and
        evaluates the rest in n_batch chunks from there; chunks of other sizes give other floating-point
        sums, so a window's answer depended on which prompt ran before it on this engine (measured: the
        same SciFact window answered `[1] > [2] > [3]` after one prompt, `[1] > [3] > [4]` after
        another). So only the cached prefix that ends on a multiple of n_batch is kept: the rest is
        evaluated in the very chunks a fresh engine uses. A prompt that continues an earlier call's
        prompt (a forced answer: that window's prompt, its reasoning, `<answer>`) keeps that call's
        cache, its reasoning evaluated a token at a time as it was generated; where another call ran in
        between (two callers of one engine, a Ray replica that took over a dead one's calls) that
        cache is rebuilt first, so the forced answer is the same either way."""
        llm = self._llm
        base = next((c for c in reversed(self._recent) if len(ids) > c[0] and ids[:c[0]] == c[1][:c[0]]), None)
        if base is not None and llm._input_ids.tolist() == base[1]:
            return  # the cache holds the call this prompt continues
        if base is not None:
            self._evaluate(base[1][:base[0]])
            for token in base[1][base[0]:]:  # as generation evaluated them
                llm.eval([token])
            return
        self._cut_to_chunk(ids)

    def _cut_to_chunk(self, ids: list[int]) -> None:
        llm = self._llm
        common = 0
        for a, b in zip(llm._input_ids, ids):
            if a != b:
                break
            common += 1
        keep = (min(common, len(ids) - 1) // llm.n_batch) * llm.n_batch
        if keep < llm.n_tokens:
            llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            llm.n_tokens = keep

    def _evaluate(self, prompt: list[int]) -> None:
        """The cache after evaluating `prompt` alone, the way create_completion evaluates a prompt."""
        self._cut_to_chunk(prompt)
        self._llm.eval(prompt[self._llm.n_tokens:])

    def _remember(self, ids: list[int]) -> None:
        """Note a finished call: its prompt's length and every token it left in the cache."""
        self._recent.append((len(ids), self._llm._input_ids.tolist()))

    def _sampling_kwargs(self, params: SamplingParams) -> dict:
        kwargs = {
            "temperature": float(params.temperature),  # 0 -> llama.cpp's greedy sampler
            "top_p": float(params.top_p),
            "top_k": 0,  # no top-k / min-p truncation beyond what SamplingParams says
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        return kwargs

    def _step_dict(self, top: list[tuple[int, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for token_id, lp in top:
            out.setdefault(self._token_text(token_id), lp)
        return out

    # -- next-token distribution -------------------------------------------------------------------

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[str] = (), top_k: int = 20
    ) -> list[NextTokenLogprobs]:
        """For each prompt, log-probabilities of the token that follows it.

        `candidates` are strings (e.g. "true", "false"); each is scored by the log-probability of its
        first token (its tokenization without special tokens), keyed by the candidate string. The
        prompt should end exactly where the judgement token goes (e.g. after the assistant header)."""
        cand_ids = {}
        for cand in candidates:
            toks = self._llm.tokenize(cand.encode("utf-8"), add_bos=False, special=False)
            if not toks:
                raise ValueError(f"candidate {cand!r} has no tokens")
            cand_ids[cand] = toks[0]
        results = []
        for prompt in prompts:
            ids, error = self._prompt_ids(prompt, 1)
            if error:
                results.append(NextTokenLogprobs(prompt_tokens=len(ids or []), error=error))
                continue
            recorder = _StepRecorder(1, top_k, watch_ids=list(cand_ids.values()))
            try:
                with self._lock:
                    self._align_cache(ids)
                    self._llm.create_completion(prompt=ids, max_tokens=1, temperature=0.0, top_k=0, min_p=0.0,
                                                repeat_penalty=1.0, logits_processor=[recorder])
            except Exception as exc:  # noqa: BLE001
                results.append(NextTokenLogprobs(prompt_tokens=len(ids), error=f"llama.cpp failed: {type(exc).__name__}: {exc}"))
                continue
            if not recorder.records:
                results.append(NextTokenLogprobs(prompt_tokens=len(ids), error="llama.cpp produced no logits"))
                continue
            top, watched, _ = recorder.records[0]
            results.append(NextTokenLogprobs(
                top=self._step_dict(top),
                candidates={c: watched[i] for c, i in cand_ids.items()},
                prompt_tokens=len(ids),
            ))
        return results

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": file_identity(self.model_path)}

    def close(self) -> None:
        """Free the model, after any call in flight (the lock): a model freed under a running call crashes."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            llm, self._llm = getattr(self, "_llm", None), None
            if llm is not None:
                llm.close()

    def __repr__(self) -> str:
        return f"LlamaCppBackend(model_path={self.model_path!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"


def _gguf_context_length(llama_cpp, path: Path) -> int | None:
    """`<arch>.context_length` from the GGUF metadata, read by a vocab-only model load (under a
    second; gguf.GGUFReader takes ~15 s on a 0.5 GB file here). None when it cannot be read."""
    try:
        try:  # no context is created this way, so llama.cpp prints nothing
            from llama_cpp import _internals

            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            probe = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
            meta = probe.metadata()
        except (ImportError, AttributeError, TypeError):  # internals moved: the public class
            probe = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=16, verbose=False)
            meta = probe.metadata or {}
        try:
            arch = meta.get("general.architecture")
            value = meta.get(f"{arch}.context_length") if arch else None
            return int(value) if value else None
        finally:
            probe.close()
    except Exception:  # noqa: BLE001 - fall back to the default context size
        return None
