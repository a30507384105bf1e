from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO, Any, Iterator

from reasonrank.errors import FormatError


def open_text(path: str | Path, mode: str = "rt") -> IO[str]:
    """Open a text file, gzip-compressed when the name ends in .gz."""
    path = Path(path)
    if "r" in mode and not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line); a damaged gzip stream raises FormatError, not a bare EOFError."""
    with open_text(path) as fh:
        try:
            yield from enumerate(fh, 1)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            raise FormatError(path, None, f"corrupt gzip file ({exc})") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises FormatError."""
    for lineno, line in lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise FormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def field(path, lineno: int, obj: dict, *names: str, required: bool = True):
    """The first of several accepted field names present in a JSON row."""
    for name in names:
        if name in obj:
            return obj[name]
    if required:
        raise FormatError(path, lineno, f"missing field {' or '.join(repr(n) for n in names)}")
    return None


def write_jsonl(path: str | Path, rows, append: bool = False) -> None:
    with open_text(path, "at" if append else "wt") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
