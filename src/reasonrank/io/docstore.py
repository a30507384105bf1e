"""An on-disk document store: a corpus indexed by doc id once, then read by id without holding it in memory.

A Collection read from files looks its documents up here (`Collection.store_key`), so the reranking
driver's memory holds one query's candidates, not the corpus. The store is built once per corpus
under `cache_dir()/docstores/<key>.sqlite`, the key naming the corpus files (resolved path, size,
mtime_ns): an edited corpus gets a new key and so a fresh store.

SQLite (the stdlib `sqlite3`) rather than LMDB: it ships with Python, so the store costs no extra
dependency, and a B-tree lookup of a few hundred ids is far below a model's time per window.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import fields
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from reasonrank.types import Document

# Bumped when the table layout changes: part of every key, so an old store is never read by new code.
SCHEMA_VERSION = 1
COLUMNS = tuple(f.name for f in fields(Document))  # every field a Document has, docid first
# Ids bound per SELECT: under SQLITE_MAX_VARIABLE_NUMBER, which is 999 in SQLite builds before 3.32.
CHUNK = 500
BUILD_BATCH = 10_000  # rows per executemany during a build


def files_key(paths: Iterable[str | Path], reader: str) -> str:
    """A stable identity of a corpus: each file's resolved path, size and mtime_ns, the reader that
    parses them (one file may be read two ways) and the store's layout."""
    parts: list = [SCHEMA_VERSION, COLUMNS, reader]
    for p in paths:
        path = Path(p).resolve()
        stat = path.stat()
        parts.append([str(path), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def store_path(key: str) -> Path:
    from reasonrank.paths import cache_dir

    return cache_dir() / "docstores" / f"{key}.sqlite"


# Every value is stored as UTF-8 bytes with surrogates passed through: real corpora hold lone
# surrogates (JSON "\ud800") and NULs, which a TEXT column refuses or cuts; bytes compare exactly
# as the strings do, so a lookup by encoded id is a lookup by id.
def _enc(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _dec(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


def build(path: Path, docs: Iterable[Document]) -> int:
    """Write `docs` into a new store at `path`; returns the number of distinct ids.

    Written to a temp file beside `path`, then renamed over it: a killed build leaves no half store
    under the real name, and two processes building at once each rename a complete one. A later
    duplicate id replaces the earlier one, as `{d.docid: d for d in docs}` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        count = _write(tmp, docs)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _write(tmp: Path, docs: Iterable[Document]) -> int:
    conn = sqlite3.connect(tmp)
    try:
        # no rollback journal and no fsync per page: the file is private until renamed, and one fsync
        # before the rename makes it durable
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        cols = ", ".join(f"{c} BLOB NOT NULL" for c in COLUMNS[1:])
        conn.execute(f"CREATE TABLE docs (docid BLOB PRIMARY KEY NOT NULL, {cols})")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        insert = f"INSERT OR REPLACE INTO docs VALUES ({', '.join('?' * len(COLUMNS))})"
        rows = (tuple(_enc(getattr(d, c)) for c in COLUMNS) for d in docs)
        while batch := list(islice(rows, BUILD_BATCH)):
            conn.executemany(insert, batch)
        count = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
        conn.execute("INSERT INTO meta VALUES ('schema', ?), ('docs', ?)", (str(SCHEMA_VERSION), str(count)))
        conn.commit()
    finally:
        conn.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    return count


class DocStore:
    """A built store, opened read-only. Usable from any thread: one connection, calls serialized."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + "?mode=ro"  # as_uri escapes spaces, '?' and '#' in the path
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            self._check()
        except sqlite3.DatabaseError:
            self.close()
            raise

    def _check(self) -> None:
        """A file that is not a store of this layout fails here, on open, not on a later lookup."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"{self.path}: not a reasonrank doc store of schema {SCHEMA_VERSION}")

    @classmethod
    def open_or_build(cls, key: str, docs: Callable[[], Iterable[Document]]) -> "DocStore":
        """The store for `key`, built from `docs()` first when there is none (or it is unreadable)."""
        path = store_path(key)
        if path.exists():
            try:
                return cls(path)
            except sqlite3.DatabaseError:
                pass  # damaged or of another layout: build it again
        build(path, docs())
        return cls(path)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM docs").fetchone()[0]

    def get_many(self, docids: Iterable[str]) -> dict[str, Document]:
        """{docid: Document} for those of `docids` the store holds, in the order asked; one SELECT per
        CHUNK ids. Ids it lacks are simply absent (the caller names them)."""
        wanted = list(dict.fromkeys(d for d in docids if isinstance(d, str)))
        found: dict[str, Document] = {}
        with self._lock:
            for chunk in _chunks(wanted, CHUNK):
                sql = f"SELECT * FROM docs WHERE docid IN ({', '.join('?' * len(chunk))})"
                for row in self._conn.execute(sql, [_enc(d) for d in chunk]):
                    doc = Document(*(_dec(v) for v in row))
                    found[doc.docid] = doc
        return {d: found[d] for d in wanted if d in found}

    def close(self) -> None:
        self._conn.close()


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
