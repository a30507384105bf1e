"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

from pathlib import Path

import pytest

QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def qwen_gguf_path() -> Path:
    """Where scripts/setup.sh assembles the embedded model (honours REASONRANK_CACHE)."""
    from reasonrank.paths import cache_dir

    return cache_dir() / "models" / QWEN_GGUF_NAME


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (and chat template) read from the embedded GGUF.

    Skips when the GGUF is not assembled or transformers is missing. The first load ever takes
    ~40 s (it saves `<gguf>.tokenizer/` beside the file); later loads take ~2 s.
    """
    path = qwen_gguf_path()
    if not path.exists():
        pytest.skip(f"Qwen2.5 tokenizer not available: {path} is missing (run scripts/setup.sh)")
    pytest.importorskip("transformers", reason="transformers is needed for the Qwen2.5 tokenizer")
    from reasonrank.tokenizer import load_tokenizer

    return load_tokenizer(str(path))
