"""The LangChain integration with the real library: `ReasonRankCompressor` inside a
`ContextualCompressionRetriever` (sync and async) on the embedded model gives `Reranker.rerank`'s order;
errors, metadata and the event loop on a scripted test double."""

import asyncio
import threading

import pytest
from _integrations import SMALL, needs_model, scifact_passages, scripted_reranker
from test_listwise import reverse

pytest.importorskip("langchain_core")
from langchain_classic.retrievers import ContextualCompressionRetriever  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402

from reasonrank.integrations.langchain import ReasonRankCompressor  # noqa: E402
from reasonrank.validation import InvalidInput  # noqa: E402


def docs(texts):
    return [Document(page_content=t, metadata={"source": f"s{i}"}, id=f"id{i}") for i, t in enumerate(texts)]


def retriever(compressor, documents):
    return ContextualCompressionRetriever(base_compressor=compressor, base_retriever=RunnableLambda(lambda _query: documents))


@needs_model
def test_in_a_retriever_sync_and_async_the_order_is_rerank():
    compressor = ReasonRankCompressor(top_n=3, **SMALL)
    query, texts = scifact_passages(4)  # one window
    expected = compressor.reranker.rerank(query, [_candidate(i, t) for i, t in enumerate(texts)]).docids[:3]

    found = retriever(compressor, docs(texts)).invoke(query)
    assert [d.id for d in found] == [f"id{i}" for i in expected]
    assert [d.metadata["relevance_score"] for d in found] == [1.0, 0.5, 1 / 3]
    assert all(d.metadata["source"] == f"s{d.id[2:]}" for d in found)

    found = asyncio.run(retriever(compressor, docs(texts)).ainvoke(query))
    assert [d.id for d in found] == [f"id{i}" for i in expected]


def _candidate(i, text):
    from reasonrank.types import Candidate

    return Candidate(str(i), 0.0, text)


def test_compress_keeps_the_input_and_top_n_none_returns_all():
    compressor = ReasonRankCompressor(top_n=None, reranker=scripted_reranker()[0])
    original = docs(["a", "b", "c"])
    out = compressor.compress_documents(original, "q")
    assert [d.page_content for d in out] == ["c", "b", "a"]
    assert "relevance_score" not in original[0].metadata  # copies carry the score, the input is untouched
    compressor.top_n = 5  # more than there are: all of them, as Cohere's API does
    assert len(compressor.compress_documents(original, "q")) == 3


@pytest.mark.parametrize("documents,query,top_n,message", [
    (["a"], "", 2, "'query' must not be empty"),
    ([], "q", 2, "'documents' must not be empty"),
    (["a", "  "], "q", 2, r"documents\[1\] has no text"),
    (["a"], "q", 0, "'top_n' must be at least 1, got 0"),
])
def test_bad_input_raises_the_core_apis_error(documents, query, top_n, message):
    compressor = ReasonRankCompressor(reranker=scripted_reranker()[0])
    compressor.top_n = top_n
    with pytest.raises(InvalidInput, match=message):
        compressor.compress_documents(docs(documents), query)
    with pytest.raises(InvalidInput, match=message):
        asyncio.run(compressor.acompress_documents(docs(documents), query))


def test_top_n_is_checked_before_a_model_loads():
    with pytest.raises(ValueError, match="'top_n' must be at least 1, got 0"):  # pydantic's ValidationError
        ReasonRankCompressor(top_n=0, model="/no/such/model.gguf")
    with pytest.raises(ValueError, match="keeps no journal file"):
        ReasonRankCompressor(model="/no/such/model.gguf", journal="traces.jsonl")


def test_acompress_leaves_the_event_loop_free():
    """The double's model call waits until a coroutine on the same loop has run: a blocked loop would
    make it time out (and the reranking fail) instead."""
    loop_ran = threading.Event()

    def answer(n, user):
        assert loop_ran.wait(timeout=30), "the event loop was blocked during the model call"
        return reverse(n, user)

    compressor = ReasonRankCompressor(top_n=2, reranker=scripted_reranker(answer)[0])

    async def main():
        async def meanwhile():
            await asyncio.sleep(0)
            loop_ran.set()

        found, _ = await asyncio.gather(compressor.acompress_documents(docs(["a", "b", "c"]), "q"), meanwhile())
        return [d.page_content for d in found]

    assert asyncio.run(main()) == ["c", "b"]


def test_acompress_on_the_async_http_backend():
    """The openai backend (async HTTP inside) against the tests' scripted OpenAI-like server, which answers
    '[2] > [1]' (action `reasoning`) to a prompt holding case=rev: two retrievals at once, each reversed."""
    from servers import FaultServer

    with FaultServer({"rev": ["reasoning"]}) as server:
        compressor = ReasonRankCompressor("scripted", "openai", base_urls=[server.base_url], top_n=2, window=4, step=2,
                                          max_new_tokens=16)

        async def main():
            r = retriever(compressor, docs(["a", "b"]))
            return await asyncio.gather(r.ainvoke("case=rev first"), r.ainvoke("case=rev second"))

        results = asyncio.run(main())
        hits = dict(server.hits)
    assert [[d.page_content for d in found] for found in results] == [["b", "a"], ["b", "a"]]
    assert hits == {"rev": 2}
