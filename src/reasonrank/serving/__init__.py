"""HTTP rerank service: Cohere-compatible /v1/rerank and /v2/rerank over the listwise reranker, and the
text-embeddings-inference, Jina and vLLM rerank APIs beside them (reasonrank.serving.shapes), with windows
of concurrent requests batched together. `reasonrank serve` runs it."""

from reasonrank.serving.config import ServeConfig, read_api_keys

__all__ = ["ServeConfig", "create_app", "read_api_keys"]


def create_app(*args, **kwargs):
    from reasonrank.serving.app import create_app as _create_app

    return _create_app(*args, **kwargs)
