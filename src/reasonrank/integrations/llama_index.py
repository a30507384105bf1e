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

from reasonrank.integrations._common import rerank_texts  # noqa: E402
from reasonrank.integrations._fields import RerankerFields  # noqa: E402


class ReasonRankPostprocessor(RerankerFields, BaseNodePostprocessor):
    """Reorder nodes with the listwise reasoning model and keep the `top_n` best (None: all).

    Returns `NodeWithScore`s in the new order, each scored 1 / (rank + 1) (the HTTP service's score). The
    model reads each node's content without metadata. Bad input (no query, no nodes, a node without text,
    `top_n` below 1) raises `reasonrank.validation.InvalidInput`, a ValueError. `apostprocess_nodes`
    (LlamaIndex's default) runs the same reranking in a worker thread; calls on one engine take turns.

    `ReasonRankPostprocessor(model=None, backend=None, top_n=3, **options)` builds `Reranker(model, backend,
    **options)`; `reranker=` takes one already built instead (one model for several adapters). Each
    call reranks with its own in-memory journal, so a reranker journaling to a file is refused.
    """


    @classmethod
    def class_name(cls) -> str:
        return "ReasonRankPostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else ""
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        payload = {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: getattr(self._reranker.backend, "model", ""),
                   EventPayload.QUERY_STR: query, EventPayload.TOP_K: self.top_n}
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            ranked = rerank_texts(self._reranker, query, texts, self.top_n)
            out = [NodeWithScore(node=nodes[i].node, score=score) for i, score in ranked]
            event.on_end(payload={EventPayload.NODES: out})
        return out
