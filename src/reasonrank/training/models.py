"""Model directories for training: a tiny random Qwen2 for tests, GGUF → plain weights, LoRA merge.

Everything here writes a plain Hugging Face model directory (config.json, model.safetensors,
generation_config.json, tokenizer files) that `AutoModelForCausalLM.from_pretrained(dir)` — and so
the reranker's hf backend — loads with no network.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from reasonrank.errors import ReasonRankError, require

TINY_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def default_gguf() -> Path:
    """The embedded Qwen2.5-Coder-0.5B-Instruct GGUF (assembled by scripts/setup.sh)."""
    from reasonrank.backends.models import embedded_path

    return embedded_path()


def dtype_kw(value) -> dict:
    """`dtype=` for transformers >= 4.56, `torch_dtype=` before (the keyword was renamed)."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": value}


def _tokenizer(source):
    from reasonrank.tokenizer import load_tokenizer

    if source is None:
        source = default_gguf()
    return load_tokenizer(str(source)) if isinstance(source, (str, Path)) else source


def _fix_generation_config(model, tokenizer) -> None:
    """eos = the chat template's end-of-turn (<|im_end|> for Qwen) plus the tokenizer's text end."""
    eos = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in eos:
            eos.append(tid)
    gc = model.generation_config
    gc.eos_token_id = eos if len(eos) > 1 else eos[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[-1]
    gc.pad_token_id = pad
    model.config.pad_token_id = pad
    model.config.eos_token_id = eos[0]


def build_tiny_model(output_dir: str | Path, tokenizer=None, seed: int = 0, **config_overrides) -> Path:
    """A randomly initialised Qwen2ForCausalLM of a few million parameters with the real Qwen2.5
    tokenizer (from the embedded GGUF unless another tokenizer or path is given), saved to
    `output_dir`. Used by tests and CPU smoke runs: it trains in seconds and says nothing useful."""
    transformers = require("transformers", "train", "Building a tiny model")
    torch = require("torch", "train", "Building a tiny model")
    tok = _tokenizer(tokenizer)
    settings = {**TINY_QWEN2, **config_overrides}
    vocab = max(len(tok), getattr(tok, "vocab_size", 0) or 0)
    config = transformers.Qwen2Config(vocab_size=vocab, bos_token_id=tok.bos_token_id, **settings)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config)
    model.to(torch.float32)
    _fix_generation_config(model, tok)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    _write_provenance(out, {"kind": "tiny-random-qwen2", "seed": seed, "config": settings, "vocab_size": vocab,
                            "parameters": sum(p.numel() for p in model.parameters())})
    return out


def gguf_to_hf(gguf: str | Path | None, output_dir: str | Path, dtype: str = "float32", log=print) -> Path:
    """Load a GGUF with transformers (dequantised) and save it as plain weights + tokenizer.

    transformers keeps a GGUF-loaded model marked as quantized and refuses to save it, and TRL/PEFT
    will not train it; the dequantised tensors are copied into a fresh model built from the same
    config (strict: every tensor must match). fp32 keeps the dequantised values exactly; `bfloat16`
    halves the size. Takes ~1.5 min for the 0.5B model on 2 cores.
    """
    transformers = require("transformers", "train", "Converting a GGUF model")
    torch = require("torch", "train", "Converting a GGUF model")
    require("gguf", "train", "Converting a GGUF model")
    path = Path(gguf) if gguf else default_gguf()
    if not path.exists():
        raise ReasonRankError(f"{path}: no such GGUF file (the embedded model is assembled by scripts/setup.sh)")
    torch_dtype = getattr(torch, dtype)
    start = time.perf_counter()
    log(f"gguf: loading {path.name} (dequantising)")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **dtype_kw(torch.float32))
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("transformers_version", None)
    model_type = config.pop("model_type")
    plain = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **config),
                                                          **dtype_kw(torch.float32))
    state = loaded.state_dict()
    result = plain.load_state_dict(state, strict=False)
    # a tied lm_head may be absent from the GGUF state dict; nothing else may be missing
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ReasonRankError(f"{path.name}: tensors do not match the config (missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]})")
    del loaded, state
    plain.to(torch_dtype)
    tok = _tokenizer(path)
    _fix_generation_config(plain, tok)
    out = Path(output_dir)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    _write_provenance(tmp, {"kind": "gguf-dequantised", "gguf": str(path), "dtype": dtype,
                            "seconds": round(time.perf_counter() - start, 1)})
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    log(f"gguf: saved plain weights to {out} in {time.perf_counter() - start:.0f}s")
    return out


def resolve_model(model: str | Path, log=print) -> str:
    """A model directory for training: a path, a registry name or a hub id (checked as the reranker's
    hf backend checks it, `backends.models.locate`). A .gguf file, the embedded model's included, is
    converted once to plain fp32 weights kept beside it (`<file>.hf/`) and reused after."""
    from reasonrank.backends import models

    path = Path(model)
    if not path.exists():
        try:
            spec = models.resolve(str(model))
        except KeyError:
            spec = None
        if spec is not None and spec.embedded is not None:
            path = models.ensure_embedded(spec.embedded, log=log)
        elif spec is not None and spec.hub_id:
            return models.check_hub(str(model), spec.hub_id)
    if path.suffix == ".gguf":
        target = path.with_name(path.name + ".hf")
        if not (target / "config.json").exists():
            gguf_to_hf(path, target, log=log)
        return str(target)
    if path.exists():
        if not (path / "config.json").exists():
            raise ReasonRankError(f"{path}: not a model directory (no config.json)")
        return str(model)
    return models.locate(str(model))  # a hub id: transformers resolves it (the network or the local hub cache)


def merge_lora(adapter_dir: str | Path, output_dir: str | Path, base_model: str | Path | None = None,
               dtype: str | None = None) -> Path:
    """Merge a LoRA adapter into its base model (PEFT `merge_and_unload`) and save a plain model dir.

    `base_model` defaults to the adapter's `base_model_name_or_path`. The tokenizer is taken from the
    adapter dir when saved there, else from the base model.
    """
    transformers = require("transformers", "train", "Merging a LoRA adapter")
    torch = require("torch", "train", "Merging a LoRA adapter")
    peft = require("peft", "train", "Merging a LoRA adapter")
    adapter = Path(adapter_dir)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.exists():
        raise ReasonRankError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    base = str(base_model) if base_model else json.loads(cfg_file.read_text())["base_model_name_or_path"]
    base = resolve_model(base)
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    model = transformers.AutoModelForCausalLM.from_pretrained(base, **dtype_kw(torch_dtype))
    merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tok_src = adapter if (adapter / "tokenizer_config.json").exists() else Path(base)
    transformers.AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(str(out))
    _write_provenance(out, {"kind": "lora-merged", "adapter": str(adapter), "base_model": base})
    return out


def _write_provenance(directory: Path, info: dict) -> None:
    (Path(directory) / "reasonrank_training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
