"""vLLM offline engine backend (GPU): the whole batch goes to one `LLM.generate` call.

UNTESTED HERE: this project's machines have a CPU-only torch and vLLM needs CUDA, so this module is
written against vLLM's documented offline API (`vllm.LLM`, `vllm.SamplingParams`, `LLM.generate`
returning `RequestOutput`s with `.prompt_token_ids` and `.outputs[0].text/.token_ids/.finish_reason`)
and only its missing-dependency error is tested.

Prompts are tokenized here from `Prompt.text` without adding special tokens and passed as
`{"prompt_token_ids": [...]}` (vLLM's TokensPrompt), so vLLM adds no second BOS and generates from
exactly the rendered prompt. Prompts that do not fit `max_model_len` with the token budget come back
as Generations with `error` (vLLM would otherwise reject the whole batch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from reasonrank.backends.base import Generation, Prompt, SamplingParams
from reasonrank.errors import require


class VLLMBackend:
    name = "vllm"

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
        **llm_kwargs,
    ):
        """model: hub id or local directory (vLLM also reads GGUF files; then pass `tokenizer=`).
        Other keyword arguments go to `vllm.LLM` unchanged."""
        vllm = require("vllm", "vllm", "The vLLM backend")
        self._vllm = vllm
        self.model = model
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
                outputs = self._llm.generate(inputs, sampling, use_tqdm=False)
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

    def close(self) -> None:
        self._llm = None


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
