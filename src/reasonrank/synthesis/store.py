"""The run directory: append-only JSONL stage files keyed by sample id, and per-stage settings.

Every stage appends one record per sample as soon as its batch finishes (flushed and fsynced), so a
killed run loses at most the batch in flight; the last record per id wins, and a half-written last
line (a crash mid-write) is skipped and counted. A stage reruns only the samples that have no
record yet or whose record is a failure, so a rerun resumes instead of starting over.

Changing a stage's output-affecting settings (model, window, budgets, ...) between invocations
would silently mix two configurations in one file; `check_settings` refuses that unless the caller
passes `force=True`, which discards the stage's records (and those of the stages after it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from reasonrank.errors import ReasonRankError

STAGES = ("sources", "candidates", "mine", "label", "filter", "export")
FILES = {
    "sources": "queries.jsonl",
    "candidates": "candidates.jsonl",
    "mine": "mined.jsonl",
    "label": "labels.jsonl",
    "filter": "filtered.jsonl",
}


_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_domain(name: str) -> str:
    """Domain names become file names (id_query/<domain>.json): letters, digits, '_', '.', '-'."""
    if not isinstance(name, str) or not _DOMAIN.match(name):
        raise ReasonRankError(f"domain name {name!r} must be letters, digits, '_', '.' or '-' (it names files)")
    return name


def sample_id(domain: str, qid: str) -> str:
    return f"{domain}/{qid}"


class StageFile:
    """One stage's JSONL records, keyed by `id`; later records for an id replace earlier ones."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.corrupt_lines = 0

    def load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        self.corrupt_lines = 0
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.corrupt_lines += 1  # the last line of a killed run; that sample is redone
                    continue
                if isinstance(row, dict) and "id" in row:
                    records[row["id"]] = row
                else:
                    self.corrupt_lines += 1
        return records

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as fh:
            if needs_newline:
                fh.write("\n")  # close a half-written line so the next record stands alone
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the file atomically (write a temporary file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def stage_file(run_dir: str | Path, stage: str) -> StageFile:
    return StageFile(Path(run_dir) / FILES[stage])


def read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def check_settings(run_dir: str | Path, stage: str, settings: dict[str, Any], force: bool = False) -> None:
    """Record a stage's settings on first use; refuse different settings on a stage that has records.

    With `force`, the stage's records and every later stage's records are discarded instead.
    """
    run_dir = Path(run_dir)
    path = run_dir / "settings.json"
    all_settings = read_json(path, {}) or {}
    previous = all_settings.get(stage)
    normal = json.loads(json.dumps(settings))
    has_records = stage in FILES and (run_dir / FILES[stage]).exists() and (run_dir / FILES[stage]).stat().st_size > 0
    if previous is not None and previous != normal and has_records:
        if not force:
            changed = sorted(k for k in set(previous) | set(normal) if previous.get(k) != normal.get(k))
            raise ReasonRankError(
                f"{run_dir}: stage '{stage}' already has records made with other settings "
                f"(changed: {', '.join(changed)}). Use a new run directory, or --force to discard this stage's "
                "records and those of the stages after it."
            )
        for later in STAGES[STAGES.index(stage):]:
            if later in FILES and (run_dir / FILES[later]).exists():
                (run_dir / FILES[later]).unlink()
    all_settings[stage] = normal
    write_json(path, all_settings)
