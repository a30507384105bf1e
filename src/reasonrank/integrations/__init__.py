"""Adapters for the tools users already compose with, each an optional extra and a thin layer over
`Reranker` (windows, prompts and parsing stay in reasonrank.rerankers):

* `reasonrank.integrations.pyterrier`: `ReasonRankReranker`, `BM25` and a text loader as PyTerrier
  transformers (`pip install 'reasonrank[pyterrier]'`; no Java);
* `reasonrank.integrations.langchain`: `ReasonRankCompressor`, a LangChain document compressor
  (`reasonrank[langchain]`);
* `reasonrank.integrations.llama_index`: `ReasonRankPostprocessor`, a LlamaIndex node postprocessor
  (`reasonrank[llama-index]`);
* `reasonrank.integrations.mcp`: `reasonrank mcp`, an MCP server with `rerank` and `evaluate` tools
  (`reasonrank[mcp]`).

Importing this package imports none of those libraries; each module names its extra when its library
is missing.
"""
