"""The window journal: every finished window appended as one JSON line (written through to the file at
once, fsynced at least once a second and at close), so a crashed or interrupted run resumes where it
stopped.

A rerun renders the same prompts (windows are deterministic given the earlier ones), finds their keys
here and replays the recorded answers instead of calling the model. Three rules keep it from giving
a wrong answer:

* **The engine is part of the key.** The first line of a file is a header naming the engine that
  wrote it (backend, model identity, adapter, dtype or quantisation, prompt mode and format, budget):
  `{"reasonrank_journal": 2, "engine": {...}, "engine_id": "..."}`. A window's key hashes that
  identity with its prompt. A file written under another engine is refused with one line saying
  what differs, unless the caller opts into its answers (`policy="reuse"`) or starts it anew
  (`policy="fresh"`).
* **Failures are not answers.** A window that failed (`backend_error`) is recorded, for the audit,
  but never reused: the rerun asks the model again and counts it as retried.
* **Only what resuming needs stays in memory**: per key, the permutation and the status (about 200
  bytes a window); nothing at all without a file. The full records stay in the file, where
  `read_windows` reads them for the report. (Two windows with the same prompt share an answer even
  when their doc ids differ, duplicate passages say: the model sees only the text, and the answer is
  over positions.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from reasonrank.errors import ReasonRankError
from reasonrank.types import WindowTrace

VERSION = 2
FSYNC_SECONDS = 1.0  # the most a power loss can take from a journal (a killed process loses nothing written)
FAILED = frozenset({"backend_error"})


class JournalMismatch(ReasonRankError):
    """The journal file was written under another engine or settings."""


class Entry(NamedTuple):
    """A finished window as resuming needs it."""

    permutation: bytes | tuple  # bytes when every position fits one
    status: str

    @property
    def order(self) -> list[int]:
        return list(self.permutation)


def engine_id(engine: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(engine, sort_keys=True, default=str).encode()).hexdigest()[:16]


def window_key(engine: str, prompt_key: str) -> str:
    return hashlib.sha256(f"{engine}\x00{prompt_key}".encode()).hexdigest()[:32]


def _compact(permutation: Sequence[int]) -> bytes | tuple:
    return bytes(permutation) if all(0 <= p < 256 for p in permutation) else tuple(permutation)


def _is_header(row: dict) -> bool:
    return "reasonrank_journal" in row


def read_windows(path: str | Path) -> tuple[dict | None, list[WindowTrace], list[int]]:
    """(header or None for a journal older than headers, windows in file order, numbers of the lines
    that are neither). A killed run leaves a half-written last line: it is counted, not fatal."""
    header, windows, bad = None, [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if lineno == 1 and isinstance(row, dict) and _is_header(row):
                    header = row
                    continue
                windows.append(WindowTrace.from_dict(row))
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                bad.append(lineno)
    return header, windows, bad


class Journal:
    """`Journal(path, engine=identity, policy="resume")`; `Journal(None)` records nothing and keeps nothing.

    `lookup(key)` gives the Entry of a finished window (never a failed one); `record(trace)` appends a
    window. Safe to share between threads."""

    def __init__(self, path: str | Path | None = None, *, engine: dict[str, Any] | None = None, policy: str = "resume",
                 keep_prompts: bool = True):
        if policy not in ("resume", "fresh", "reuse"):
            raise ValueError(f"journal policy must be resume, fresh or reuse, got {policy!r}")
        self.path = Path(path) if path else None
        self.engine = dict(engine or {})
        self.engine_id = engine_id(self.engine)
        self.keep_prompts = keep_prompts
        self.done: dict[str, Entry] = {}
        self.failed: set[str] = set()  # keys of windows recorded as failed and not (yet) redone
        self.corrupt_lines = 0
        self.reused_engine: dict | None = None  # the other engine whose answers policy "reuse" accepted
        self._key_engine = self.engine_id
        self._lock = threading.Lock()
        self._fh = None
        self._synced = 0.0  # time.monotonic() of the last fsync
        if self.path is not None and policy == "fresh" and self.path.exists():
            self.path.unlink()
        if self.path is not None and self.path.exists() and self.path.stat().st_size:
            self._load(policy)

    # -- keys ------------------------------------------------------------------------------------------

    def key(self, prompt_key: str) -> str:
        """The key of a window with this prompt under this journal's engine."""
        return window_key(self._key_engine, prompt_key)

    # -- reading ---------------------------------------------------------------------------------------

    def _load(self, policy: str) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
            header = _header(first)
            self._check(header, policy)
            if header is None:
                fh.seek(0)
            for line in fh:
                self._index(line)

    def _check(self, header: dict | None, policy: str) -> None:
        if header is not None and header.get("engine_id") == self.engine_id:
            return
        if policy == "reuse" and header is not None:
            self._key_engine = str(header.get("engine_id"))
            self.reused_engine = dict(header.get("engine") or {})
            print(f"journal: {self.path}: reusing answers recorded under another engine ({_difference(header.get('engine') or {}, self.engine)})",
                  file=sys.stderr)
            return
        if header is None:
            raise JournalMismatch(f"{self.path}: a journal without an engine header (written by an older reasonrank): its answers "
                                  f"cannot be told apart from another engine's; start it anew with --journal-policy fresh or use a new file")
        raise JournalMismatch(f"{self.path} was written under another engine or settings ({_difference(header.get('engine') or {}, self.engine)}): "
                              f"use a new --traces file, --journal-policy fresh to start it anew, or --journal-policy reuse to reuse its answers")

    def _index(self, line: str) -> None:
        if not line.strip():
            return
        try:
            row = json.loads(line)
            key, status, permutation = row["prompt_hash"], row["status"], row["permutation"]
            if sorted(permutation) != list(range(len(row["docids"]))):
                raise ValueError("not a permutation of the window")
        except (json.JSONDecodeError, TypeError, ValueError, KeyError):
            # the last line of a killed run may be half written: count it and redo that window
            self.corrupt_lines += 1
            return
        if status in FAILED:
            if key not in self.done:
                self.failed.add(key)
            return
        self.failed.discard(key)
        self.done[key] = Entry(_compact(permutation), sys.intern(status))

    def lookup(self, key: str) -> Entry | None:
        """The finished window under this key; None when there is none, or only a failed one (redo it)."""
        return self.done.get(key)

    def was_failed(self, key: str) -> bool:
        return key in self.failed

    # -- writing ---------------------------------------------------------------------------------------

    def record(self, trace: WindowTrace) -> None:
        """Append one window. Written to the file at once, so a killed process loses at most the window being
        written; fsynced at most once every FSYNC_SECONDS (and at close), so a machine that loses power
        loses at most that much. An fsync a window cost 4 ms, a quarter of the driver's time at scale
        (benchmarks/results/ray_scale.md); a model's window takes seconds."""
        if self.path is None:
            return
        row = trace.to_dict()
        if not self.keep_prompts:
            row["prompt"] = ""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None:
                self._open()
            self._fh.write(line)
            self._fh.flush()
            now = time.monotonic()
            if now - self._synced >= FSYNC_SECONDS:
                os.fsync(self._fh.fileno())
                self._synced = now
            if trace.status in FAILED:
                if trace.prompt_hash not in self.done:
                    self.failed.add(trace.prompt_hash)
            else:
                self.failed.discard(trace.prompt_hash)
                self.done[trace.prompt_hash] = Entry(_compact(trace.permutation), sys.intern(trace.status))

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", encoding="utf-8")
        if new:
            header = {"reasonrank_journal": VERSION, "engine": self.engine, "engine_id": self.engine_id}
            self._fh.write(json.dumps(header, ensure_ascii=False, default=str) + "\n")
        elif not self._ends_with_newline():
            self._fh.write("\n")  # close a half-written line from a crash so the next record stands alone

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _header(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and _is_header(row) else None


def _difference(old: dict, new: dict) -> str:
    """`key: old -> new` for what differs between two engine identities, briefly."""
    def short(value) -> str:
        text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
        return text if len(text) <= 60 else text[:57] + "..."

    keys = sorted(set(old) | set(new), key=lambda k: (k != "backend", k))
    parts = [f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts) or "engine id differs"
