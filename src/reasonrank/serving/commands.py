"""`reasonrank serve`: run the rerank service (Cohere's /v1/rerank and /v2/rerank; TEI's /rerank, Jina's and vLLM's
rerank and vLLM's /score on the same server: reasonrank.serving.shapes) with uvicorn.

    reasonrank serve                                   # embedded model, llama.cpp, 127.0.0.1:8000
    reasonrank serve --model reasonrank-7b --backend vllm --alias rerank-v3.5 --port 8080
    reasonrank serve --method tdpart --window 20      # every reranker setting, as `reasonrank rerank` takes it
    REASONRANK_API_KEY=secret reasonrank serve          # clients must send "Authorization: Bearer secret"

The reranker's options (model, backend, method, budgets, passage cut, --backend-option NAME=VALUE, ...)
are the spec's, the same flags as every command that reranks (`reasonrank.spec.spec_options`); the
service keeps no journal, so --traces is not one of them. Standalone: `python -m reasonrank.serving
[options]` (serving/__main__.py; this module imports nothing of the CLI, which imports it). Mount into
the main CLI with `app.add_typer(reasonrank.serving.commands.app)` (no name: the command is called
`serve`). The bearer tokens clients must send come from an environment variable (`--auth-key-env`) or
a file (`--auth-key-file`), never from the command line; `--api-key-file` is the key this service
sends to an upstream OpenAI-compatible server (`-b openai`), as for `rerank`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from reasonrank.errors import ReasonRankError
from reasonrank.spec import RerankerSpec, spec_options

app = typer.Typer(add_completion=False, help="Serve the reranker over HTTP (Cohere rerank API).")

# what the service cannot honour: it keeps no journal (each request is reranked on its own) and shows no bar
NOT_SERVED = ("journal", "journal_policy", "progress")


@app.command("serve")
@spec_options(exclude=NOT_SERVED)
def serve(
    spec: RerankerSpec,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients send (default: the registry or file name)."),
    alias: Optional[List[str]] = typer.Option(None, "--alias", help="Another model name to accept, e.g. rerank-v3.5 for clients that hard-code one. Repeatable."),
    max_batch: int = typer.Option(8, help="At most this many windows (from all in-flight requests) per backend call."),
    batch_wait_ms: float = typer.Option(20.0, help="How long the batcher waits for more windows once it has one."),
    max_documents: int = typer.Option(100, help="Documents per request (400 beyond); the first --top-k of them are reranked."),
    max_document_chars: int = typer.Option(20_000, help="Characters per document (400 beyond)."),
    max_query_chars: int = typer.Option(4_000, help="Characters per query (400 beyond)."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, help="Request body size cap in bytes (413 beyond)."),
    max_in_flight: int = typer.Option(256, help="Requests worked on at once (503 beyond)."),
    max_reasoning_budget: Optional[int] = typer.Option(None, help="The most reasoning_budget a request may ask (400 beyond; default: the served --reasoning-budget)."),
    max_answer_budget: Optional[int] = typer.Option(None, help="The most answer_budget a request may ask (400 beyond; default: the served --answer-budget)."),
    auth_key_env: str = typer.Option("REASONRANK_API_KEY", "--auth-key-env",
                                     help="Environment variable holding the bearer token clients must send (unset: no auth)."),
    auth_key_file: Optional[Path] = typer.Option(None, "--auth-key-file",
                                                 help="File of accepted bearer tokens, one per line (instead of the environment variable)."),
    graceful_timeout: float = typer.Option(300.0, help="On SIGTERM/SIGINT, wait this long for accepted requests to finish."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
):
    """Serve rerank APIs (Cohere /v1/rerank /v2/rerank, TEI /rerank, Jina, vLLM /rerank /score), GET /health and GET /metrics."""
    import logging

    import uvicorn

    from reasonrank.serving.app import create_app
    from reasonrank.serving.config import ServeConfig, read_api_keys

    try:
        config = ServeConfig(
            spec=spec, served_model_name=served_model_name, aliases=list(alias or []), max_batch=max_batch,
            batch_wait_ms=batch_wait_ms, max_documents=max_documents, max_document_chars=max_document_chars,
            max_query_chars=max_query_chars, max_body_bytes=max_body_bytes, max_in_flight=max_in_flight,
            max_reasoning_budget=max_reasoning_budget, max_answer_budget=max_answer_budget,
            api_keys=read_api_keys(auth_key_file, auth_key_env),
        )
    except ReasonRankError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(message)s")
    if config.api_keys:
        typer.echo(f"auth: bearer token required ({len(config.api_keys)} key(s))", err=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout)
