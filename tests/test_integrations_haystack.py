"""Haystack: `ReasonRankRanker` in a real Haystack Pipeline, after an InMemoryBM25Retriever over an
InMemoryDocumentStore, on a reversing stand-in server (`-b openai`, tests/servers.py's ReverseServer: the
ranking is then not BM25's, so the order check means something) and on the embedded model; serialised with
to_dict/from_dict and through a pipeline's YAML; the README's example, run."""

from __future__ import annotations

import os
import textwrap

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # Haystack reports usage by default; no network here
pytest.importorskip("haystack")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from servers import TEST_THREADS, ReverseServer, embedded_gguf  # noqa: E402

from reasonrank.integrations.haystack import ReasonRankRanker  # noqa: E402
from reasonrank.scoring import score_order  # noqa: E402
from reasonrank.spec import RerankerSpec  # noqa: E402
from reasonrank.validation import InvalidInput  # noqa: E402

QUERY = "What is the capital of France?"
TEXTS = ["Paris is the capital and most populous city of France.", "Berlin is the capital of Germany.",
         "The Seine is a river that flows through Paris in France.", "Lyon is a city in France known for its cuisine.",
         "Madrid is the capital of Spain.", "France is a country in Western Europe whose capital is Paris.",
         "Tokyo is the capital of Japan."]


def store(index: str) -> InMemoryDocumentStore:
    s = InMemoryDocumentStore(index=index)  # a named index: a pipeline loaded from YAML finds the same documents
    s.write_documents([Document(id=f"d{i}", content=t, meta={"n": i}) for i, t in enumerate(TEXTS)])
    return s


def pipeline(ranker: ReasonRankRanker, index: str, retrieve: int = 6) -> Pipeline:
    p = Pipeline()
    p.add_component("retriever", InMemoryBM25Retriever(document_store=store(index), top_k=retrieve))
    p.add_component("ranker", ranker)
    p.connect("retriever.documents", "ranker.documents")
    return p


def run(p: Pipeline, top_k: int | None = None) -> tuple[list[Document], list[Document]]:
    """(BM25's documents, the ranker's)."""
    ranker_input = {"query": QUERY, **({"top_k": top_k} if top_k else {})}
    out = p.run({"retriever": {"query": QUERY}, "ranker": ranker_input}, include_outputs_from={"retriever"})
    return out["retriever"]["documents"], out["ranker"]["documents"]


@pytest.fixture()
def reverse(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    with ReverseServer() as server:
        yield server


def served(server: ReverseServer, **fields) -> RerankerSpec:
    return RerankerSpec(model="reverse-test-double", backend="openai", backend_options={"base_urls": [server.base_url]},
                        top_k=10, max_new_tokens=16, max_passage_tokens=30, **fields)


def test_ranker_in_a_bm25_pipeline_on_a_reversing_engine(reverse):
    ranker = ReasonRankRanker(spec=served(reverse), top_k=4)
    try:
        bm25, ranked = run(pipeline(ranker, "haystack-reverse"))
    finally:
        ranker.close()
    assert len(bm25) == 6 and reverse.served == 1  # six passages: one window of the stand-in
    assert [d.id for d in ranked] == [d.id for d in reversed(bm25)][:4]  # the engine's order, not BM25's
    assert [d.score for d in ranked] == [1.0, 0.5, 1 / 3, 0.25]  # score_mode rank: 1 / (rank + 1)
    assert [d.meta for d in ranked] == [next(b.meta for b in bm25 if b.id == d.id) for d in ranked]  # documents kept


def test_blend_mixes_bm25s_scores_and_min_score_cuts(reverse):
    ranker = ReasonRankRanker(spec=served(reverse, score_mode="blend", min_score=0.45), top_k=None)
    try:
        bm25, ranked = run(pipeline(ranker, "haystack-blend"))
    finally:
        ranker.close()
    expected = score_order(list(range(len(bm25)))[::-1], [d.score for d in bm25], score_mode="blend", min_score=0.45)
    assert [(d.id, d.score) for d in ranked] == [(bm25[i].id, pytest.approx(s)) for i, s in expected]
    assert 1 < len(ranked) < len(bm25)  # the threshold cut some
    assert [d.id for d in ranked] != [d.id for d in reversed(bm25)][:len(ranked)]  # BM25's scores moved some: the blend shows


def test_serialises_with_to_dict_from_dict_and_a_pipelines_yaml(reverse):
    spec = served(reverse, score_mode="blend", blend_weight=0.7)
    ranker = ReasonRankRanker(spec=spec, top_k=3)
    data = ranker.to_dict()
    assert data["type"] == "reasonrank.integrations.haystack.ReasonRankRanker"
    assert data["init_parameters"] == {"spec": spec.to_dict(), "top_k": 3}
    again = ReasonRankRanker.from_dict(data)
    assert again.spec == spec and again.top_k == 3
    p = pipeline(ranker, "haystack-yaml")
    # Haystack 3 loads components only from modules the caller trusts: reasonrank's is named
    loaded = Pipeline.loads(p.dumps(), allowed_modules=["reasonrank.integrations.haystack"])
    try:
        _, first = run(p)
        _, second = run(loaded)
        assert [(d.id, d.score) for d in first] == [(d.id, d.score) for d in second] and len(first) == 3
    finally:
        ranker.close()
        loaded.get_component("ranker").close()


def test_options_build_a_spec_and_bad_input_is_refused():
    ranker = ReasonRankRanker("reasonrank-7b", "vllm", top_k=2, window=10, n_threads=1, score_mode="blend")
    assert (ranker.spec.model, ranker.spec.backend, ranker.spec.window, ranker.spec.score_mode) == ("reasonrank-7b", "vllm", 10, "blend")
    assert ranker.spec.backend_options == {"n_threads": 1} and ranker._reranker is None  # nothing loads before warm_up
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}
    with pytest.raises(ValueError, match="journal"):
        ReasonRankRanker(spec=RerankerSpec(journal="x.jsonl"))
    with pytest.raises(InvalidInput, match="'top_n' must be at least 1"):
        ReasonRankRanker(top_k=0)
    with pytest.raises(ValueError, match="one of"):
        ReasonRankRanker("m", spec=RerankerSpec())


def test_a_document_without_text_is_refused(reverse):
    ranker = ReasonRankRanker(spec=served(reverse))
    try:
        with pytest.raises(InvalidInput, match=r"documents\[1\]"):
            ranker.run(query=QUERY, documents=[Document(content="a"), Document(content=None)])
    finally:
        ranker.close()


@pytest.mark.model
def test_ranker_in_a_bm25_pipeline_on_the_embedded_model():
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp")
    spec = RerankerSpec(top_k=10, max_new_tokens=16, max_passage_tokens=30, backend_options={"n_threads": TEST_THREADS})
    ranker = ReasonRankRanker(spec=spec, top_k=5)
    try:
        bm25, ranked = run(pipeline(ranker, "haystack-embedded"))
        assert ranker.reranker.stats.windows == 1 and ranker.reranker.stats.completion_tokens > 0  # the model ran
    finally:
        ranker.close()
    assert len(ranked) == 5 and {d.id for d in ranked} <= {d.id for d in bm25}
    assert [d.score for d in ranked] == [1.0, 0.5, 1 / 3, 0.25, 0.2]


# The README's Haystack example (the lead puts it in README.md; tests/test_readme.py then runs it too), run here as
# tests/test_readme.py runs Python examples: `reasonrank.spec.build` scaled to 16 new tokens, one thread.
README_EXAMPLE = textwrap.dedent('''
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from reasonrank.integrations.haystack import ReasonRankRanker

    store = InMemoryDocumentStore()
    store.write_documents([
        Document(content="Paris is the capital and most populous city of France."),
        Document(content="Berlin is the capital of Germany."),
        Document(content="The Seine flows through Paris."),
        Document(content="Lyon is a city in France known for its cuisine."),
    ])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=10))
    pipeline.add_component("ranker", ReasonRankRanker(top_k=3, score_mode="blend"))  # 0.6 rerank + 0.4 BM25
    pipeline.connect("retriever.documents", "ranker.documents")

    query = "What is the capital of France?"
    result = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
    for doc in result["ranker"]["documents"]:
        print(f"{doc.score:.3f}  {doc.content}")
''')


@pytest.mark.model
def test_the_readme_example_runs(monkeypatch, capsys):
    if embedded_gguf() is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("llama_cpp")
    import reasonrank.spec

    real = reasonrank.spec.build
    built = []

    def scaled(spec, **kwargs):
        spec = spec.replace(max_new_tokens=16, max_passage_tokens=30, backend_options={"n_threads": TEST_THREADS})
        built.append(real(spec, **kwargs))
        return built[-1]

    monkeypatch.setattr(reasonrank.spec, "build", scaled)
    try:
        exec(compile(README_EXAMPLE, "README-haystack", "exec"), {})
    finally:
        for reranker in built:
            reranker.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and built[0].spec.score_mode == "blend"
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
