"""A durable per-window trace: every finished window is appended (and flushed) as one JSON line.

A crashed or interrupted run resumes from it: windows are deterministic given the earlier ones,
so a rerun renders the same prompts, finds their hashes here and reuses the recorded
permutations instead of calling the model again.

Lines of the sliding window are WindowTrace dicts, as always. Other methods add `method` and `role`
(top-down partitioning: first, partition or recursion) to each line; `meta` keeps them per hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from reasonrank.types import WindowTrace


EXTRA_FIELDS = ("method", "role")


def prompt_hash(prompt_key: str, model: str, settings: str = "") -> str:
    return hashlib.sha256(f"{model}\x00{settings}\x00{prompt_key}".encode()).hexdigest()[:32]


class Journal:
    def __init__(self, path: str | Path | None, keep_prompts: bool = True):
        self.path = Path(path) if path else None
        self.keep_prompts = keep_prompts
        self.done: dict[str, WindowTrace] = {}
        self.meta: dict[str, dict] = {}  # prompt hash -> {"method": ..., "role": ...} where recorded
        self.corrupt_lines = 0
        if self.path and self.path.exists():
            self._load()
        self._fh = None

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    extra = {k: row.pop(k) for k in EXTRA_FIELDS if k in row}
                    trace = WindowTrace.from_dict(row)
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    # the last line of a killed run may be half written: count it and redo that window
                    self.corrupt_lines += 1
                    continue
                self.done[trace.prompt_hash] = trace
                if extra:
                    self.meta[trace.prompt_hash] = extra

    def lookup(self, key: str) -> WindowTrace | None:
        return self.done.get(key)

    def record(self, trace: WindowTrace, **extra) -> None:
        """Append one window; `extra` (method=, role=) goes into its line beside the trace's fields."""
        unknown = set(extra) - set(EXTRA_FIELDS)
        if unknown:
            raise ValueError(f"journal lines take no field(s) {sorted(unknown)}")
        self.done[trace.prompt_hash] = trace
        if extra:
            self.meta[trace.prompt_hash] = dict(extra)
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            if self.path.stat().st_size and not self._ends_with_newline():
                self._fh.write("\n")  # close a half-written line from a crash so the next record stands alone
        row = {**trace.to_dict(), **extra}
        if not self.keep_prompts:
            row["prompt"] = ""
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
