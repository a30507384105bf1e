"""Where reasonrank keeps what it builds once: BM25 indexes, the assembled embedded model."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("REASONRANK_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "reasonrank")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
