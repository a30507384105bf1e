"""Load the model's own tokenizer (for its chat template and passage truncation)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reasonrank.errors import require


@lru_cache(maxsize=8)
def load_tokenizer(source: str):
    """A Hugging Face tokenizer from a GGUF file, a model directory or a hub id.

    Reading a tokenizer out of a GGUF takes transformers ~40 s on 2 cores, so the first load saves
    it as plain tokenizer files beside the GGUF (`<file>.tokenizer/`) and later loads read those.
    """
    transformers = require("transformers", "hf", "Loading a model tokenizer")
    path = Path(source)
    if path.suffix == ".gguf":
        saved = path.with_name(path.name + ".tokenizer")
        if (saved / "tokenizer_config.json").exists():
            return transformers.AutoTokenizer.from_pretrained(str(saved))
        require("gguf", "llamacpp", "Reading a tokenizer from a GGUF file")
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tmp = saved.with_name(saved.name + ".tmp")
        tok.save_pretrained(str(tmp))
        tmp.replace(saved)
        return tok
    return transformers.AutoTokenizer.from_pretrained(source)
