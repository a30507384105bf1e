"""Shared by the integration tests (test_integrations_*.py): the small settings the embedded model runs
with, a real reranker on them, a scripted test double for what does not depend on the model, and
SciFact passages to rerank."""

from __future__ import annotations

import pytest
from _data import SCIFACT, needs_data
from conftest import qwen_gguf_path
from servers import TEST_THREADS
from test_listwise import ScriptedBackend, reverse

from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers.listwise import ListwiseReranker

# Windows of 4 (step 2), 24 new tokens, passages cut to 30 tokens, one llama.cpp thread (the tests'
# rule: outputs must not depend on the machine's load). Four passages are one window.
SMALL = dict(window=4, step=2, max_new_tokens=24, max_passage_tokens=30, n_threads=TEST_THREADS)
SMALL_ARGS = ["--window", "4", "--step", "2", "--max-new-tokens", "24", "--max-passage-tokens", "30",
              "--threads", str(TEST_THREADS)]

MODEL_MARKS = [pytest.mark.model, needs_data, pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled")]


def needs_model(test):
    """Mark a test (or fixture user) as running the embedded model on SciFact."""
    for mark in MODEL_MARKS:
        test = mark(test)
    return test


def small_reranker(**options):
    """The embedded model on llama.cpp with the small settings."""
    from reasonrank.rerankers import Reranker

    return Reranker(**{**SMALL, **options})


def scripted_reranker(answer=reverse, **options) -> tuple[ListwiseReranker, ScriptedBackend]:
    """Test double: a reranker whose backend answers every window with `answer` (default: the window
    reversed) and records its batch sizes; prompts are rendered without a tokenizer."""
    backend = ScriptedBackend(answer)
    return ListwiseReranker(backend, PromptRenderer(None, max_passage_tokens=None), **{"window": 4, "step": 2, **options}), backend


def scifact_passages(n: int, qid: str = "1") -> tuple[str, list[str]]:
    """A SciFact test query and the texts of its BM25 top n (with their titles, as the prompt shows them)."""
    from reasonrank.io import load_collection
    from reasonrank.retrieval import BM25Index

    coll = load_collection(SCIFACT)
    query = coll.query_dict()[qid]
    index = BM25Index.for_collection(coll)
    run = index.search([query], k=n, show_progress=False)[qid]
    return query.text, [coll.doc(d).to_candidate().content for d in run]
