import pytest
from _data import SCIFACT, needs_data

from reasonrank.evaluation import evaluate
from reasonrank.io import load_collection
from reasonrank.retrieval import BM25Index
from reasonrank.types import Document, Query


@needs_data
def test_bm25_scifact_quality(tmp_path):
    coll = load_collection(SCIFACT)
    index = BM25Index.for_collection(coll, cache=tmp_path)
    run = index.search(coll.queries(), k=100, show_progress=False)
    agg = evaluate(run, coll.qrels(), ["nDCG@10", "Recall@100"]).aggregate
    assert 0.66 <= agg["nDCG@10"] <= 0.69
    assert agg["Recall@100"] >= 0.90
    # the saved index is reused and gives the same run
    again = BM25Index.for_collection(coll, cache=tmp_path)
    assert again.index_seconds == 0.0
    assert again.search(coll.queries(), k=100, show_progress=False) == run


def test_bm25_excluded_ids_refilled():
    docs = [Document(f"d{i}", f"apple banana {'apple ' * (10 - i)}") for i in range(10)]
    index = BM25Index.build(docs)
    q = Query("q", "apple")
    top = list(index.search([q], k=3, show_progress=False)["q"])
    assert top == ["d0", "d1", "d2"]
    assert list(index.search([q], k=3, excluded={"q": {"d0"}}, show_progress=False)["q"]) == ["d1", "d2", "d3"]
