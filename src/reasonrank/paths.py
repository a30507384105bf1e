"""Where reasonrank finds its data, and keeps what it builds once: BM25 indexes, the assembled embedded model."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("REASONRANK_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "reasonrank")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(explicit: str | Path | None = None) -> Path:
    """The folder holding the collections: `explicit`, else $REASONRANK_DATA, else ../shared/data
    relative to the working directory (where this project's machines keep it)."""
    return Path(explicit or os.environ.get("REASONRANK_DATA") or Path.cwd().parent / "shared" / "data")


def find_collections(root: Path) -> list[tuple[Path, str, str]]:
    """(directory, kind, detail) of every collection under `root`: BEIR, BRIGHT (detail: its local
    tasks) and R2MED directories, sorted by path."""
    from reasonrank.io import beir, bright, r2med

    found = []
    for path in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        if bright.is_bright_root(path):
            found.append((path, "BRIGHT", "tasks: " + ", ".join(bright.local_tasks(path))))
        elif beir.is_beir_dir(path):
            found.append((path, "BEIR", ""))
        elif r2med.is_r2med_dir(path):
            found.append((path, "R2MED", ""))
    return found
