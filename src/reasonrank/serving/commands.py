"""`reasonrank serve`: run the rerank service (Cohere-compatible /v1/rerank and /v2/rerank) with uvicorn.

    reasonrank serve                                   # embedded model, llama.cpp, 127.0.0.1:8000
    reasonrank serve --model reasonrank-7b --backend vllm --alias rerank-v3.5 --port 8080
    REASONRANK_API_KEY=secret reasonrank serve          # clients must send "Authorization: Bearer secret"

Standalone: `python -m reasonrank.serving [options]`. Mount into the main CLI with
`app.add_typer(reasonrank.serving.commands.app)` (no name: the command is called `serve`).
API keys come from an environment variable (`--api-key-env`) or a file (`--api-key-file`), never
from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from reasonrank.backends.base import ANSWER_BUDGET, REASONING_BUDGET
from reasonrank.errors import ReasonRankError

app = typer.Typer(add_completion=False, help="Serve the reranker over HTTP (Cohere rerank API).")


def _options(values: Optional[List[str]]) -> dict:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ReasonRankError(f"--backend-option must be NAME=VALUE, got {v!r}")
        name, value = v.split("=", 1)
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


@app.command("serve")
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registry name, GGUF file, model directory or hub id (default: the embedded model)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="llamacpp, hf, vllm or openai (guessed from the model when omitted)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients send (default: the registry or file name)."),
    alias: Optional[List[str]] = typer.Option(None, "--alias", help="Another model name to accept, e.g. rerank-v3.5 for clients that hard-code one. Repeatable."),
    backend_option: Optional[List[str]] = typer.Option(None, "--backend-option", "-o", help="NAME=VALUE passed to the backend (n_ctx=8192, n_threads=4, dtype=bfloat16, base_url=...). Repeatable."),
    mode: Optional[str] = typer.Option(None, help="Prompt mode: reasonrank, rankgpt, qwen3 (default: the model's)."),
    tokenizer: Optional[str] = typer.Option(None, help="Where to load the tokenizer/chat template from (default: the model's)."),
    max_passage_tokens: int = typer.Option(512, help="Each document is cut to this many tokens in the prompt."),
    window: int = typer.Option(20, help="Documents per sliding window."),
    step: int = typer.Option(10, help="Sliding window step."),
    passes: int = typer.Option(1, help="Sliding-window passes per request."),
    max_new_tokens: int = typer.Option(REASONING_BUDGET + ANSWER_BUDGET, help="Generation budget per window (reasoning + answer)."),
    max_batch: int = typer.Option(8, help="At most this many windows (from all in-flight requests) per backend call."),
    batch_wait_ms: float = typer.Option(20.0, help="How long the batcher waits for more windows once it has one."),
    max_documents: int = typer.Option(100, help="Documents per request (400 beyond)."),
    max_document_chars: int = typer.Option(20_000, help="Characters per document (400 beyond)."),
    max_query_chars: int = typer.Option(4_000, help="Characters per query (400 beyond)."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, help="Request body size cap in bytes (413 beyond)."),
    max_in_flight: int = typer.Option(256, help="Requests worked on at once (503 beyond)."),
    api_key_env: str = typer.Option("REASONRANK_API_KEY", help="Environment variable holding the bearer token clients must send (unset: no auth)."),
    api_key_file: Optional[Path] = typer.Option(None, help="File of accepted bearer tokens, one per line (instead of the environment variable)."),
    graceful_timeout: float = typer.Option(300.0, help="On SIGTERM/SIGINT, wait this long for accepted requests to finish."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
):
    """Serve POST /v1/rerank and /v2/rerank (Cohere's API), GET /health and GET /metrics."""
    import logging

    import uvicorn

    from reasonrank.serving.app import create_app
    from reasonrank.serving.config import ServeConfig, read_api_keys

    try:
        config = ServeConfig(
            model=model, backend=backend, backend_options=_options(backend_option), mode=mode, tokenizer=tokenizer,
            served_model_name=served_model_name, aliases=list(alias or []), max_passage_tokens=max_passage_tokens,
            window=window, step=step, passes=passes, max_new_tokens=max_new_tokens, max_batch=max_batch,
            batch_wait_ms=batch_wait_ms, max_documents=max_documents, max_document_chars=max_document_chars,
            max_query_chars=max_query_chars, max_body_bytes=max_body_bytes, max_in_flight=max_in_flight,
            api_keys=read_api_keys(api_key_file, api_key_env),
        )
    except ReasonRankError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(name)s %(message)s")
    if config.api_keys:
        typer.echo(f"auth: bearer token required ({len(config.api_keys)} key(s))", err=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout)


def main() -> None:
    from reasonrank.cli import run  # errors are reported as by `reasonrank serve`

    run(app)


if __name__ == "__main__":
    main()
