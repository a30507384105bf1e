"""BM25 first stage on bm25s (+ PyStemmer): index once, saved to disk, reused."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import bm25s
import Stemmer

from reasonrank.io.collection import Collection
from reasonrank.types import Document, Query

INDEX_VERSION = 1


def doc_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}".strip() if doc.title else doc.text


def default_cache() -> Path:
    from reasonrank.paths import cache_dir

    return cache_dir() / "bm25"


@dataclass
class BM25Index:
    retriever: "bm25s.BM25"
    docids: list[str]
    language: str = "english"
    index_seconds: float = 0.0

    @classmethod
    def build(cls, docs: Iterable[Document], language: str = "english", k1: float = 0.9, b: float = 0.4) -> "BM25Index":
        # k1=0.9, b=0.4 are Pyserini's BEIR defaults, the setting BEIR's published BM25 figures use.
        start = time.perf_counter()
        docids, texts = [], []
        for d in docs:
            docids.append(d.docid)
            texts.append(doc_text(d))
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer(language), show_progress=False)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, docids, language, time.perf_counter() - start)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.retriever.save(str(directory))
        (directory / "reasonrank.json").write_text(json.dumps({"version": INDEX_VERSION, "docids": self.docids, "language": self.language}))

    @classmethod
    def load(cls, directory: str | Path) -> "BM25Index":
        directory = Path(directory)
        meta = json.loads((directory / "reasonrank.json").read_text())
        return cls(bm25s.BM25.load(str(directory)), meta["docids"], meta["language"])

    @classmethod
    def for_collection(cls, collection: Collection, cache: str | Path | None = None, **kwargs) -> "BM25Index":
        """Build the collection's index, or load it if one was saved for the same source files."""
        key = hashlib.sha256(json.dumps([collection.name, collection.source, _fingerprint(collection.source), kwargs, INDEX_VERSION]).encode()).hexdigest()[:16]
        directory = Path(cache or default_cache()) / f"{collection.name.replace('/', '_')}-{key}"
        if (directory / "reasonrank.json").exists():
            return cls.load(directory)
        index = cls.build(collection.docs(), **kwargs)
        tmp = directory.with_name(directory.name + ".tmp")
        index.save(tmp)
        tmp.replace(directory)  # a crash mid-save never leaves a half index that later loads
        return index

    def search(self, queries: Iterable[Query], k: int = 100, excluded: Mapping[str, set[str]] | None = None, show_progress: bool = True) -> dict[str, dict[str, float]]:
        """Top-k per query; excluded ids (BRIGHT) are removed and the list refilled to k."""
        queries = list(queries)
        excluded = excluded or {}
        extra = max((len(excluded.get(q.qid, ())) for q in queries), default=0)
        depth = min(k + extra, len(self.docids))
        tokens = bm25s.tokenize([q.text for q in queries], stopwords="en", stemmer=Stemmer.Stemmer(self.language), return_ids=False, show_progress=False)
        idx, scores = self.retriever.retrieve(tokens, k=depth, show_progress=show_progress, n_threads=0)
        run = {}
        for q, row_idx, row_scores in zip(queries, idx, scores):
            drop = excluded.get(q.qid, set())
            hits = [(self.docids[i], float(s)) for i, s in zip(row_idx, row_scores) if self.docids[i] not in drop]
            run[q.qid] = dict(hits[:k])
        return run


def _fingerprint(source: str) -> list:
    """Sizes and mtimes of a collection's files, so an edited corpus gets a fresh index."""
    path = Path(source.split(" (")[0])
    if not path.exists():
        return []
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, int(p.stat().st_mtime)) for p in files[:200]]
