"""vLLM offline engine backend (GPU): the whole batch goes to one `LLM.generate` call.

UNTESTED HERE: this project's machines have a CPU-only torch and vLLM needs CUDA, so this module is
written against vLLM's documented offline API (`vllm.LLM`, `vllm.SamplingParams`, `LLM.generate`
returning `RequestOutput`s with `.prompt_token_ids` and `.outputs[0].text/.token_ids/.finish_reason`)
and only its missing-dependency error is tested.

Prompts are tokenized here from `Prompt.text` without adding special tokens and passed as
`{"prompt_token_ids": [...]}` (vLLM's TokensPrompt), so vLLM adds no second BOS and generates from
exactly the rendered prompt. Prompts that do not fit `max_model_len` with the token budget come back
as Generations with `error` (vLLM would otherwise reject the whole batch).

LoRA (`lora=` an adapter directory, as the 32B recipe serves it): the engine is built with
`enable_lora=True` and `max_lora_rank` from the adapter's config, and every generate call passes a
`LoRARequest` for it, as upstream ReasonRank does. `enable_lora` without `lora` is refused: vLLM would
then silently generate with the base model. The argument building is tested with a stand-in module
(tests/test_lora.py); the engine itself is not run here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from reasonrank.backends.base import Capabilities, Generation, Prompt, SamplingParams, model_identity
from reasonrank.errors import require


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
        **llm_kwargs,
    ):
        """model: hub id or local directory (vLLM also reads GGUF files; then pass `tokenizer=`).
        lora: a LoRA adapter directory applied to every request.
        Other keyword arguments go to `vllm.LLM` unchanged."""
        vllm = require("vllm", "vllm", "The vLLM backend")
        self._vllm = vllm
        self.model = model
        llm_kwargs, self._lora_request = lora_arguments(lora, llm_kwargs)
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
        self._llm = vllm.LLM(**kwargs)
        self.dtype = str(dtype)
        self.lora = str(lora) if lora else None
        # vLLM batches continuously inside one generate(); LLM itself is not thread-safe, hence the lock
        self.capabilities = Capabilities(batch_size=None, concurrency=1)
        self._lock = threading.Lock()
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = _engine_max_len(self._llm) or max_model_len

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        max_new = max(1, int(params.max_new_tokens))
        results: list[Generation | None] = [None] * len(prompts)
        inputs, index = [], []
        for i, prompt in enumerate(prompts):
            if prompt.text is None:
                results[i] = Generation(text="", error="vLLM backend needs Prompt.text (the rendered prompt)")
                continue
            ids = self._tokenizer.encode(prompt.text, add_special_tokens=False)
            if self.max_model_len and len(ids) + max_new > self.max_model_len:
                results[i] = Generation(text="", prompt_tokens=len(ids), error=(
                    f"prompt of {len(ids)} tokens + max_new_tokens {max_new} exceeds max_model_len={self.max_model_len}"))
                continue
            inputs.append({"prompt_token_ids": ids})
            index.append(i)
        if inputs:
            sampling = self._vllm.SamplingParams(
                temperature=float(params.temperature),
                top_p=float(params.top_p),
                max_tokens=max_new,
                stop=list(params.stop) or None,
                seed=params.seed,
                repetition_penalty=1.0,
            )
            start = time.perf_counter()
            try:
                with self._lock:
                    outputs = self._llm.generate(inputs, sampling, use_tqdm=False, **self._lora_kwargs())
            except Exception as exc:  # noqa: BLE001 - the batch as a whole failed: every item says why
                err = f"vLLM generate failed: {type(exc).__name__}: {exc}"
                for i in index:
                    results[i] = Generation(text="", error=err)
                return results  # type: ignore[return-value]
            seconds = (time.perf_counter() - start) / len(inputs)
            for i, out in zip(index, outputs):
                completion = out.outputs[0]
                results[i] = Generation(
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(completion.token_ids),
                    finish_reason=completion.finish_reason or "",
                    seconds=seconds,
                )
        return results  # type: ignore[return-value]

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
        with self._lock:
            self._llm = None


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


def _engine_max_len(llm) -> int | None:
    for path in (("llm_engine", "model_config", "max_model_len"), ("llm_engine", "vllm_config", "model_config", "max_model_len")):
        obj = llm
        try:
            for attr in path:
                obj = getattr(obj, attr)
            return int(obj)
        except (AttributeError, TypeError, ValueError):
            continue
    return None
