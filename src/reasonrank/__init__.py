"""reasonrank: reasoning-intensive listwise passage reranking."""

from reasonrank.evaluation import evaluate
from reasonrank.io import Collection, load_collection, read_qrels, read_run, write_run
from reasonrank.types import Candidate, Document, Query, Request, Result, WindowTrace

__version__ = "0.1.0"

__all__ = [
    "Candidate", "Collection", "Document", "Query", "Request", "Result", "WindowTrace",
    "evaluate", "load_collection", "read_qrels", "read_run", "write_run",
]
