"""The LlamaIndex integration with the real library: `ReasonRankPostprocessor` on the embedded model gives
`Reranker.rerank`'s order as `NodeWithScore`s; errors, async and a retriever query engine on a scripted
test double."""

import asyncio

import pytest
from _integrations import SMALL, needs_model, scifact_passages, scripted_reranker

pytest.importorskip("llama_index.core")
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402

from reasonrank.integrations.llama_index import ReasonRankPostprocessor  # noqa: E402
from reasonrank.types import Candidate  # noqa: E402
from reasonrank.validation import InvalidInput  # noqa: E402


def nodes(texts):
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"file": "x.txt"}), score=float(-i))
            for i, t in enumerate(texts)]


@needs_model
def test_postprocess_gives_reranks_order():
    postprocessor = ReasonRankPostprocessor(top_n=3, **SMALL)
    query, texts = scifact_passages(4, qid="3")  # one window
    expected = postprocessor.reranker.rerank(query, [Candidate(str(i), 0.0, t) for i, t in enumerate(texts)]).docids[:3]
    out = postprocessor.postprocess_nodes(nodes(texts), query_str=query)
    assert all(isinstance(n, NodeWithScore) for n in out)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in expected]
    assert [n.score for n in out] == [1.0, 0.5, 1 / 3]


def test_query_bundle_async_and_metadata_left_out_of_the_prompt():
    prompts = []
    core, _ = scripted_reranker(lambda n, user: prompts.append(user) or " > ".join(f"[{i}]" for i in range(n, 0, -1)))
    postprocessor = ReasonRankPostprocessor(top_n=None, reranker=core)
    out = postprocessor.postprocess_nodes(nodes(["a", "b", "c"]), QueryBundle("q"))
    assert [n.node.get_content() for n in out] == ["c", "b", "a"]
    assert "x.txt" not in prompts[0]  # the model reads the text, not the node's metadata
    out = asyncio.run(postprocessor.apostprocess_nodes(nodes(["a", "b"]), query_str="q"))
    assert [n.node.get_content() for n in out] == ["b", "a"]


@pytest.mark.parametrize("texts,query,top_n,message", [
    (["a"], "", 2, "'query' must not be empty"),
    (["a"], None, 2, "'query' must not be empty"),
    ([], "q", 2, "'documents' must not be empty"),
    (["a", ""], "q", 2, r"documents\[1\] has no text"),
    (["a"], "q", -1, "'top_n' must be at least 1, got -1"),
])
def test_bad_input_raises_the_core_apis_error(texts, query, top_n, message):
    postprocessor = ReasonRankPostprocessor(reranker=scripted_reranker()[0])
    postprocessor.top_n = top_n
    with pytest.raises(InvalidInput, match=message):
        postprocessor.postprocess_nodes(nodes(texts), query_str=query)


def test_top_n_is_checked_before_a_model_loads():
    with pytest.raises(ValueError, match="'top_n' must be at least 1, got 0"):
        ReasonRankPostprocessor(top_n=0, model="/no/such/model.gguf")


def test_in_a_query_engine():
    """As LlamaIndex users plug it in: node_postprocessors of a retriever query engine."""
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.retrievers import BaseRetriever

    class Fixed(BaseRetriever):
        def _retrieve(self, query_bundle):
            return nodes(["a", "b", "c"])

    # NoText: only the retrieved nodes, no answer; its LLM is a mock (the default would be OpenAI's)
    engine = RetrieverQueryEngine(Fixed(), response_synthesizer=NoText(llm=MockLLM()),
                                  node_postprocessors=[ReasonRankPostprocessor(top_n=2, reranker=scripted_reranker()[0])])
    response = engine.query("q")
    assert [n.node.get_content() for n in response.source_nodes] == ["c", "b"]
