"""A Collection: lazy queries, documents and qrels with lookup by doc id (after ir_datasets).

The readers build Collections, so this module imports none of them: opening a directory by its
layout is io/load.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from reasonrank.errors import ReasonRankError
from reasonrank.io.docstore import DocStore
from reasonrank.io.qrels import Qrels
from reasonrank.types import Document, Query


class UnknownCollection(ReasonRankError):
    pass


@dataclass
class Collection:
    """Nothing is read until asked for; documents are indexed by id on the first lookup.

    With a `store_key` (set by the loaders that read corpus files: `reasonrank.io.docstore.files_key`)
    the index is an on-disk store built once per corpus and reused by every later process, so a
    lookup holds only the documents asked for. Without one (collections built in memory, the hub
    loader) it is a dict of the whole corpus, built on the first lookup."""

    name: str
    load_queries: Callable[[], Iterator[Query]]
    load_docs: Callable[[], Iterator[Document]] | None
    load_qrels: Callable[[], Qrels]
    load_excluded: Callable[[], dict[str, set[str]]] = dict
    source: str = ""
    store_key: str | None = None
    _doc_index: dict[str, Document] | None = field(default=None, repr=False)
    _store: DocStore | None = field(default=None, repr=False)
    _qrels: Qrels | None = field(default=None, repr=False)
    _excluded: dict[str, set[str]] | None = field(default=None, repr=False)

    def queries(self) -> Iterator[Query]:
        return self.load_queries()

    @property
    def has_docs(self) -> bool:
        return self.load_docs is not None

    def docs(self) -> Iterator[Document]:
        if self.load_docs is None:
            raise ReasonRankError(
                f"{self.name}: document texts are not available here ({self.source}). "
                "Point the loader at a local copy of the corpus (see README: Collections)."
            )
        return self.load_docs()

    def doc(self, docid: str) -> Document:
        return self.docs_by_ids([docid])[docid]

    def docs_by_id(self, docids: Iterable[str]) -> list[Document]:
        docids = list(docids)
        found = self.docs_by_ids(docids)
        return [found[d] for d in docids]

    def docs_by_ids(self, docids: Iterable[str]) -> dict[str, Document]:
        """{docid: Document} for every id, in one batched lookup (a query's candidates at once).

        The first unknown id, in the order given, raises KeyError naming it."""
        docids = list(docids)
        found = self._lookup(docids) if docids else {}  # nothing asked: no corpus read or store built
        for d in docids:
            if d not in found:
                raise KeyError(f"{self.name}: unknown doc id {d!r}")
        return found

    def _lookup(self, docids: list[str]) -> dict[str, Document]:
        if self.store_key is not None:
            if self._store is None:
                self._store = DocStore.open_or_build(self.store_key, self.docs)
            return self._store.get_many(docids)
        if self._doc_index is None:
            self._doc_index = {d.docid: d for d in self.docs()}
        index = self._doc_index
        return {d: index[d] for d in docids if d in index}

    def qrels(self) -> Qrels:
        if self._qrels is None:
            self._qrels = self.load_qrels()
        return self._qrels

    def excluded(self) -> dict[str, set[str]]:
        """Doc ids to drop per query before evaluation (BRIGHT's excluded_ids); empty elsewhere."""
        if self._excluded is None:
            self._excluded = self.load_excluded()
        return self._excluded

    def query_dict(self) -> dict[str, Query]:
        return {q.qid: q for q in self.queries()}

    def info(self) -> dict:
        qrels = self.qrels()
        info = {
            "name": self.name,
            "source": self.source,
            "queries": sum(1 for _ in self.queries()),
            "judged_queries": len(qrels),
            "judgements": sum(len(v) for v in qrels.values()),
            "docs": sum(1 for _ in self.docs()) if self.has_docs else None,
        }
        excluded = self.excluded()
        if excluded:
            info["queries_with_excluded_ids"] = sum(1 for v in excluded.values() if v)
        return info

