"""Load the model's own tokenizer (for its chat template and passage truncation).

A GGUF carries its tokenizer as metadata. transformers can read it (`gguf_file=`), but since 5.x its
GGUF reader imports torch, and the `llamacpp` extra (the CPU path, the demo) must not pull torch: a
bare torch requirement is a multi-GB CUDA download. So for byte-level BPE vocabularies (Qwen2,
Qwen2.5, Llama 3 and most current models) the tokenizer is built here from the metadata, read with
llama.cpp's own `gguf` package, into a `tokenizers` BPE exactly as transformers' GGUF converter
builds it (tests compare the two token for token). Other vocabularies (sentencepiece, unigram) go
through transformers, which then needs torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reasonrank.errors import ReasonRankError, require

# The pre-tokenizer split of each `tokenizer.ggml.pre` family we build ourselves: the regexes
# llama.cpp (llama-vocab.cpp) and transformers use for these vocabularies.
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT, "megrez": _QWEN2_SPLIT,
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
}
# Qwen2's own tokenizer (tokenizer.json on the hub, and transformers' Qwen2Tokenizer) NFC-normalises
# text first; the GGUF does not say so, so it is known per family.
NFC_FAMILIES = {"qwen2", "deepseek-r1-qwen", "megrez"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def gguf_metadata(path: str | Path) -> dict:
    """A GGUF file's metadata keys and values (no tensor data is read)."""
    gguf = require("gguf", "llamacpp", "Reading a tokenizer from a GGUF file")
    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def tokenizer_from_gguf(path: str | Path):
    """A transformers fast tokenizer built from a byte-level BPE GGUF without torch, or None when the
    file's vocabulary is of another kind (sentencepiece, unigram) or has an unknown pre-tokenizer."""
    meta = gguf_metadata(path)
    split = SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if meta.get("tokenizer.ggml.model") != "gpt2" or split is None or "tokenizer.ggml.merges" not in meta:
        return None
    tokenizers = require("tokenizers", "llamacpp", "Building a tokenizer from a GGUF file")
    transformers = require("transformers", "llamacpp", "Building a tokenizer from a GGUF file")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]],
        dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = tokenizers.decoders.ByteLevel()
    if meta["tokenizer.ggml.pre"] in NFC_FAMILIES:
        backend.normalizer = tokenizers.normalizers.NFC()
    # Control tokens (<|im_start|>) must stay whole and special; user-defined ones (<think>) whole.
    alphabet = set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                                for t, kind in zip(tokens, types) if kind == _CONTROL and set(t) <= alphabet])
    backend.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                        for t, kind in zip(tokens, types) if kind == _USER_DEFINED])

    def special(key):
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None else None

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=special("bos_token_id"), eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"), pad_token=special("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"), add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)), clean_up_tokenization_spaces=False)


def _read_gguf_tokenizer(path: Path):
    tok = tokenizer_from_gguf(path)
    if tok is not None:
        return tok
    transformers = require("transformers", "hf", "Loading a model tokenizer")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as exc:
        raise ReasonRankError(
            f"{path}: its vocabulary is not byte-level BPE, and transformers needs torch to read it "
            f"({exc}). Install it with: pip install 'reasonrank[hf]', or pass --tokenizer DIR") from None


def _quiet_transformers() -> None:
    # Without torch, importing transformers prints "PyTorch was not found. Models won't be available"
    # on every run; for a tokenizer that is expected, and it alarms users of the torch-free CPU path.
    import importlib.util
    import os

    if importlib.util.find_spec("torch") is None:
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def load_tokenizer(source: str):
    """A Hugging Face tokenizer from a GGUF file, a model directory or a hub id: a copy of its own.

    Each caller gets its own object (a deep copy of one loaded per source, ~0.2 s against ~2 s for a
    load): Hugging Face fast tokenizers fail ("Already borrowed") when two threads use one at once,
    and a backend and a prompt renderer of the same model run on different threads in the service.

    The first load of a GGUF saves the tokenizer as plain files beside it (`<file>.tokenizer/`), and
    later loads read those (a GGUF holds 150k tokens and merges: reading them takes seconds).
    """
    import copy

    return copy.deepcopy(_load_tokenizer(source))


@lru_cache(maxsize=8)
def _load_tokenizer(source: str):
    _quiet_transformers()
    path = Path(source)
    if path.suffix == ".gguf":
        transformers = require("transformers", "llamacpp", "Loading a model tokenizer")
        saved = path.with_name(path.name + ".tokenizer")
        if (saved / "tokenizer_config.json").exists():
            return transformers.AutoTokenizer.from_pretrained(str(saved))
        tok = _read_gguf_tokenizer(path)
        tmp = saved.with_name(saved.name + ".tmp")
        tok.save_pretrained(str(tmp))
        tmp.replace(saved)
        return tok
    transformers = require("transformers", "hf", "Loading a model tokenizer")
    return transformers.AutoTokenizer.from_pretrained(source)
