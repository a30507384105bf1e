"""Hugging Face transformers backend: AutoModelForCausalLM, batched, left-padded.

Generates from `Prompt.text` (the rendered prompt), tokenized without adding special tokens: the
chat template already put in whatever the model needs. Prompts are sorted by length and batched so
padding stays small; outputs come back in input order.

Decoding is pinned to what SamplingParams says, not to the model's generation_config.json (Qwen's
asks for sampling with repetition_penalty=1.05): temperature 0 is greedy, repetition penalty 1.0,
no top-k. `finish_reason` is "stop" when an EOS token or a stop string ended the output, "length"
when the budget did. A stop string is cut from the returned text (as OpenAI servers do).

A GGUF file can be loaded with `gguf_file=` (or by passing the .gguf path as the model): transformers
dequantizes it to full precision (slow to load; float32 on CPU by default).

Log-probabilities (`capabilities.logprobs`): `next_token_logprobs(prompts, candidates, top_k)` runs one
forward pass per batch (left-padded, each row with its own position ids) and reads the log-softmax of
the logits after each prompt, as llama.cpp's and vLLM's do (pointwise P(true)).

`lora=` a PEFT adapter directory: the base model is wrapped in a PeftModel and generates through the
adapter, unmerged (the output equals the merged model's up to float rounding; tests/test_lora.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from reasonrank.backends.base import Capabilities, model_identity, Generation, NextTokenLogprobs, Prompt, SamplingParams
from reasonrank.errors import require


class HFBackend:
    name = "hf"
    prompt_format = "text"  # generates from the prompt rendered here
    # one padded batch of `batch_size` at a time; concurrent callers wait on the lock

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 4,
        gguf_file: str | None = None,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        max_context: int | None = None,
        n_threads: int | None = None,
        lora: str | os.PathLike | None = None,
    ):
        """
        model_name_or_path: a local model directory, a hub id, or a .gguf file.
        device: "cpu", "cuda", "cuda:1", ...; None: cuda when available, else cpu.
        dtype: "float32", "bfloat16", "float16" or "auto"; None: float32 on CPU, bfloat16 on GPUs
            that support it (else float16).
        batch_size: prompts generated together.
        gguf_file: a GGUF file name inside model_name_or_path (transformers dequantizes it).
        tokenizer: where to load the tokenizer from (default: the model, or the GGUF file).
        max_context: prompt + new tokens allowed; None: the config's max_position_embeddings.
        n_threads: torch CPU threads (torch.set_num_threads); None leaves torch's default.
        lora: a LoRA adapter directory applied on top of the model through PEFT (the `peft` package).
        """
        self._torch = torch = require("torch", "hf", "The transformers backend")
        transformers = require("transformers", "hf", "The transformers backend")
        from reasonrank.tokenizer import load_tokenizer

        if n_threads:
            torch.set_num_threads(int(n_threads))
        source = str(model_name_or_path)
        if gguf_file is None and source.endswith(".gguf"):
            path = Path(source)
            source, gguf_file = str(path.parent), path.name
        self.model = str(Path(source) / gguf_file) if gguf_file else source
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch_dtype = _pick_dtype(torch, dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        tok_source = tokenizer or (str(Path(source) / gguf_file) if gguf_file else source)
        self.tokenizer = load_tokenizer(tok_source)
        load_kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if gguf_file:
            load_kwargs["gguf_file"] = gguf_file
        self._model = transformers.AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
        self.lora = str(lora) if lora else None
        if self.lora:
            self._model = _with_adapter(self._model, self.lora)
        self._model.to(self.device)
        self._model.eval()
        config = self._model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.max_context = max_context or getattr(text_config, "max_position_embeddings", None)
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self._lock = threading.Lock()
        self.dtype = str(self._model.dtype).replace("torch.", "")
        self.capabilities = Capabilities(batch_size=self.batch_size, concurrency=1, logprobs=True)

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": model_identity(self.model), "dtype": self.dtype,
                "lora": model_identity(self.lora)}

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for value in (getattr(self._model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            for i in (value if isinstance(value, (list, tuple)) else [value]):
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        if not ids:
            raise ValueError(f"{self.model}: neither the model nor the tokenizer names an EOS token")
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, prompts: Sequence[Prompt], room: int, failed) -> tuple[list, list[tuple[int, list[int]]]]:
        """(results with `failed(prompt_tokens, error)` where a prompt cannot run, [(index, ids)] of the others,
        longest first so padded batches waste little). `room`: tokens the prompt must leave in the context."""
        results: list = [None] * len(prompts)
        encoded: list[tuple[int, list[int]]] = []
        for i, prompt in enumerate(prompts):
            if prompt.text is None:
                results[i] = failed(0, "transformers backend needs Prompt.text (the rendered prompt)")
                continue
            ids = self.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
            if self.max_context and len(ids) + room > self.max_context:
                results[i] = failed(len(ids), f"prompt of {len(ids)} tokens + {room} new token(s) exceeds the model's "
                                              f"context of {self.max_context} tokens")
                continue
            encoded.append((i, ids))
        encoded.sort(key=lambda item: -len(item[1]))
        return results, encoded

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        max_new = max(1, int(params.max_new_tokens))
        results, encoded = self._encode(prompts, max_new, lambda n, error: Generation(text="", prompt_tokens=n, error=error))
        with self._lock:
            for start in range(0, len(encoded), self.batch_size):
                batch = encoded[start:start + self.batch_size]
                for (i, _), gen in zip(batch, self._generate_batch([ids for _, ids in batch], params, max_new)):
                    results[i] = gen
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch: list[list[int]], params: SamplingParams, max_new: int) -> list[Generation]:
        try:
            return self._run(batch, params, max_new)
        except Exception as exc:  # noqa: BLE001 - one failing batch must not lose the run
            if len(batch) > 1:  # isolate the item that fails (or run smaller on OOM)
                return [g for ids in batch for g in self._generate_batch([ids], params, max_new)]
            return [Generation(text="", prompt_tokens=len(batch[0]),
                               error=f"transformers generate failed: {type(exc).__name__}: {exc}")]

    def _run(self, batch: list[list[int]], params: SamplingParams, max_new: int) -> list[Generation]:
        torch = self._torch
        start = time.perf_counter()
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        kwargs = {
            "max_new_tokens": max_new,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
            "repetition_penalty": 1.0,
        }
        if params.temperature and params.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p), top_k=0)
            torch.manual_seed(params.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        seconds = (time.perf_counter() - start) / len(batch)
        new_tokens = out[:, width:].tolist()
        return [self._finish(ids, tokens, params, max_new, seconds) for ids, tokens in zip(batch, new_tokens)]

    def _finish(self, prompt_ids, tokens: list[int], params: SamplingParams, max_new: int, seconds: float) -> Generation:
        finish = "length"
        for pos, tok in enumerate(tokens):
            if tok in self.eos_ids:
                tokens, finish = tokens[:pos], "stop"
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        # a stop string ends the text there (and is not returned), whichever came first
        cut = min((text.find(s) for s in params.stop if s and s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif finish == "length" and len(tokens) < max_new:
            finish = "stop"  # generation ended early without EOS (a stop string spanning the edge)
        return Generation(text=text, prompt_tokens=len(prompt_ids), completion_tokens=len(tokens),
                          finish_reason=finish, seconds=seconds)

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidates: Sequence[str] = (), top_k: int = 20
    ) -> list[NextTokenLogprobs]:
        """For each prompt, log-probabilities of the token that follows it (one forward pass per batch of
        `batch_size`, left-padded with matching position ids): the top `top_k` tokens by text, and each
        candidate string's first token (its tokenization without special tokens), keyed by the candidate."""
        torch = self._torch
        cand_ids = {}
        for cand in candidates:
            toks = self.tokenizer(cand, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"candidate {cand!r} has no tokens")
            cand_ids[cand] = toks[0]
        results, encoded = self._encode(prompts, 1, lambda n, error: NextTokenLogprobs(prompt_tokens=n, error=error))
        with self._lock:
            for start in range(0, len(encoded), self.batch_size):
                batch = encoded[start:start + self.batch_size]
                try:
                    rows = self._last_logprobs([ids for _, ids in batch])
                except Exception as exc:  # noqa: BLE001 - one failing batch must not lose the run
                    for i, ids in batch:
                        results[i] = NextTokenLogprobs(prompt_tokens=len(ids),
                                                       error=f"transformers forward failed: {type(exc).__name__}: {exc}")
                    continue
                for (i, ids), row in zip(batch, rows):
                    values, indices = torch.topk(row, min(max(0, int(top_k)), row.shape[-1]))
                    top: dict[str, float] = {}
                    for v, t in zip(values.tolist(), indices.tolist()):
                        top.setdefault(self.tokenizer.decode([t], skip_special_tokens=False), float(v))
                    results[i] = NextTokenLogprobs(top=top, candidates={c: float(row[t]) for c, t in cand_ids.items()},
                                                   prompt_tokens=len(ids))
        return results  # type: ignore[return-value]

    def _last_logprobs(self, batch: list[list[int]]):
        """log-softmax of the logits after each prompt's last token (float32 rows, one per prompt)."""
        torch = self._torch
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # each prompt's own positions, as unpadded
        with torch.inference_mode():
            logits = self._model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                 position_ids=positions.to(self.device)).logits[:, -1, :]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def close(self) -> None:
        with self._lock:
            self._model = None


def _with_adapter(model, path: str):
    """`model` generating through the LoRA adapter at `path` (checked before PEFT loads it)."""
    from reasonrank.backends.lora import adapter_config

    adapter_config(path)
    peft = require("peft", "train", "LoRA adapters in the transformers backend")
    return peft.PeftModel.from_pretrained(model, path)


def _pick_dtype(torch, dtype: str | None, device):
    if dtype == "auto":
        return "auto"
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
