"""Readers and writers for TREC, BEIR, BRIGHT and R2MED files, and the Collection they produce."""

from reasonrank.io.collection import Collection, UnknownCollection
from reasonrank.io.common import open_text, read_jsonl
from reasonrank.io.load import load_collection
from reasonrank.io.qrels import read_qrels, write_qrels
from reasonrank.io.trec import iter_run_queries, read_run, run_writer, write_run

__all__ = [
    "Collection",
    "UnknownCollection",
    "load_collection",
    "open_text",
    "read_jsonl",
    "read_qrels",
    "iter_run_queries",
    "read_run",
    "run_writer",
    "write_qrels",
    "write_run",
]
