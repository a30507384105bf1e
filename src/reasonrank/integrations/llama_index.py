"""LlamaIndex (`pip install 'reasonrank[llama-index]'`): `ReasonRankPostprocessor`, a node postprocessor.

    from reasonrank.integrations.llama_index import ReasonRankPostprocessor

    nodes = ReasonRankPostprocessor(top_n=3).postprocess_nodes(nodes, query_str="what causes tides?")
    query_engine = index.as_query_engine(node_postprocessors=[ReasonRankPostprocessor(top_n=3)])
"""

from __future__ import annotations

from typing import List, Optional

from reasonrank.errors import require

require("llama_index.core", "llama-index", "The LlamaIndex integration")
from llama_index.core.callbacks import CBEventType, EventPayload  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

from reasonrank.integrations._common import first_stage  # noqa: E402
from reasonrank.integrations._fields import RerankerFields  # noqa: E402


class ReasonRankPostprocessor(RerankerFields, BaseNodePostprocessor):
    """Reorder nodes with the listwise reasoning model and keep the `top_n` best (None: all).

    Returns `NodeWithScore`s in the new order, each scored as every face scores (reasonrank.scoring: 1 / (rank
    + 1) by default; with the spec's `score_mode="blend"` the nodes' incoming scores, when every node has one,
    are the first stage's, else their order is). The model reads each node's content without metadata. Bad input (no query, no nodes, a node without text,
    `top_n` below 1) raises `reasonrank.validation.InvalidInput`, a ValueError. `apostprocess_nodes`
    awaits the reranker's `arerank` (the reranking runs in a worker thread, the event loop stays free).

    `ReasonRankPostprocessor(model=None, backend=None, top_n=3, **options)` builds
    `build(RerankerSpec.from_options(model, backend, **options))`; `spec=` builds a spec as given, and
    `reranker=` takes one already built (one model for several adapters). Each call is one request, no
    run to resume: a reranker journaling to a file is refused.
    """

    @classmethod
    def class_name(cls) -> str:
        return "ReasonRankPostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        query, texts = _inputs(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            out = _scored(nodes, self._rank(query, texts, first_stage([n.score for n in nodes])))
            event.on_end(payload={EventPayload.NODES: out})
        return out

    async def _apostprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        query, texts = _inputs(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            out = _scored(nodes, await self._arank(query, texts, first_stage([n.score for n in nodes])))
            event.on_end(payload={EventPayload.NODES: out})
        return out

    def _payload(self, nodes: List[NodeWithScore], query: str) -> dict:
        return {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self._reranker.backend.model,
                EventPayload.QUERY_STR: query, EventPayload.TOP_K: self.top_n}


def _inputs(nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]) -> tuple[str, list[str]]:
    """The query and what the model reads of each node: its content without metadata."""
    query = query_bundle.query_str if query_bundle is not None else ""
    return query, [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def _scored(nodes: List[NodeWithScore], ranked: list[tuple[int, float]]) -> List[NodeWithScore]:
    return [NodeWithScore(node=nodes[i].node, score=score) for i, score in ranked]
