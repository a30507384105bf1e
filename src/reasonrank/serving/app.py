"""The rerank service: a FastAPI app speaking Cohere's rerank API, backed by the listwise reranker.

    app = create_app(ServeConfig(RerankerSpec(method="tdpart")))    # or create_app(lambda: build(spec), config)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints:

* POST /v1/rerank, POST /v2/rerank: Cohere-shaped rerank (see reasonrank.serving.schema); the
  official `cohere` SDK works unchanged with `base_url` pointing here. The same paths answer Jina's
  and vLLM's rerank requests, told apart by the body (reasonrank.serving.shapes).
* POST /rerank: text-embeddings-inference's rerank (`texts`) or vLLM's (`documents`).
* POST /score (and /v1/score): vLLM's score API, one query against its documents.
* GET /v1/models: the served model name and the aliases requests may use.
* GET /health: liveness/readiness (never needs the API key).
* GET /metrics: Prometheus text format (requests, latency histogram, windows by parse status, parse
  failures, tokens, backend batch sizes, cancellations, queue depth).

Each request runs its own reranker, `build(spec.replace(top_k=...))` of the served spec (sliding or
tdpart, its RunStats per request, no journal), in a worker thread; all of them share one prompt
renderer and one BatchingBackend, so windows of concurrent requests go to the model in the same
generate() call (see reasonrank.serving.batching).

Errors are JSON `{"message": ..., "type": ..., "code": status}`: 400 invalid input, 401 missing or
wrong bearer token, 404 unknown model, 413 body over the size cap, 500 model failure, 503 draining
or over `max_in_flight`. A client that disconnects cancels its request: no further windows of it are
queued. On shutdown (SIGINT/SIGTERM under uvicorn) the listening socket closes first, accepted
requests finish, then the batching worker stops.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Callable

from reasonrank.errors import ReasonRankError, require
from reasonrank.scoring import score_ranking
from reasonrank.spec import RerankerSpec

fastapi = require("fastapi", "serve", "The rerank service")
from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here

from reasonrank.serving.batching import BatchingBackend, RequestCancelled
from reasonrank.serving.config import ServeConfig, check_servable, model_names
from reasonrank.serving.metrics import Metrics
from reasonrank.serving import shapes
from reasonrank.serving.schema import ApiError, Limits, RerankInput

log = logging.getLogger("reasonrank.serving")

RerankerFactory = Callable[[], object]  # () -> a built reranker (its spec, backend and renderer are used)


class RerankService:
    """The model side of the app: loads once, reranks one validated request at a time per thread.

    The engine (backend and prompt renderer) is built once from `config.spec`, or taken from the reranker
    a factory returns (its `spec`, backend and renderer). Each request is then reranked by the reranker
    `build(spec.replace(top_k=...), backend=<the request's batch client>, renderer=<the shared renderer>)`
    gives: the spec's own method and settings, on the shared engine, with its own stats and no journal."""

    def __init__(self, source: ServeConfig | RerankerFactory | None, config: ServeConfig | None = None):
        if isinstance(source, ServeConfig):
            config, factory = source, None
        else:
            factory = source
        self.config = config or ServeConfig()
        self.factory = factory
        self.metrics = Metrics()
        self.batcher: BatchingBackend | None = None
        self.renderer = None
        self.spec: RerankerSpec = self.config.spec.resolved()
        self.served, self.names = model_names(self.config, registry=factory is None)
        self.in_flight = 0
        self.draining = False
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        from reasonrank.spec import build

        started = time.perf_counter()
        if self.factory is not None:
            reranker = self.factory()
            spec = reranker.spec
            check_servable(spec)
            model = spec.model
        else:
            reranker = build(self.config.spec)
            spec, model = reranker.spec, self.config.spec.model
        self.spec = spec.replace(journal=None, progress=False)
        self.renderer = reranker.renderer  # PromptRenderer.render is safe from several threads
        self.batcher = BatchingBackend(
            reranker.backend, max_batch=self.config.max_batch, max_wait=self.config.batch_wait_ms / 1000.0,
            on_batch=self.metrics.observe_batch, on_drop=self.metrics.dropped_prompts.inc)
        self.served, self.names = model_names(self.config, reranker.backend.model, registry=self.factory is None, model=model)
        log.info("serving %s (%s backend, %s) loaded in %.1fs", self.served, self.batcher.name, self.spec.method,
                 time.perf_counter() - started)

    def close(self) -> None:
        self.draining = True
        if self.batcher is not None:
            self.batcher.close()
            if self.factory is None:  # the engine the service built; a factory's stays its caller's
                self.batcher.backend.close()

    # -- work ---------------------------------------------------------------------------------

    def admit(self) -> None:
        with self._lock:
            if self.draining:
                raise ApiError(503, "the server is shutting down", "unavailable")
            if self.in_flight >= self.config.max_in_flight:
                raise ApiError(503, f"server busy: {self.in_flight} requests in flight (limit {self.config.max_in_flight}); "
                                    f"retry later", "unavailable")
            self.in_flight += 1
        self.metrics.in_flight.inc()

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self.metrics.in_flight.dec()

    def request_spec(self, budget: dict | None = None) -> RerankerSpec:
        """The served spec with a request's reasoning-budget fields (RerankInput.budget), resolved; ApiError 400
        for a contradiction (effort with another reasoning_budget, ...) or a budget over this server's cap
        (ServeConfig.max_reasoning_budget / max_answer_budget, default: the served spec's own), naming it."""
        from reasonrank.errors import ReasonRankError

        if not budget:
            return self.spec
        from reasonrank.spec import with_thinking

        try:
            spec = self.spec.replace(**budget).resolved()
            with_thinking(self.renderer, spec.thinking)  # thinking=false on a template without the switch: refused
        except ReasonRankError as exc:
            raise ApiError(400, str(exc)) from None
        for name, cap in (("reasoning_budget", self.config.max_reasoning_budget), ("answer_budget", self.config.max_answer_budget)):
            cap = getattr(self.spec, name) if cap is None else cap
            value = getattr(spec, name)
            if cap is not None and value is not None and value > cap:
                asked = f" (effort {spec.effort})" if name == "reasoning_budget" and spec.effort and "effort" in budget else ""
                raise ApiError(400, f"{name} {value}{asked} is over this server's max_{name} of {cap} tokens")
        return spec

    def reranker(self, n_documents: int, cancel: threading.Event | None = None, budget: dict | None = None):
        """The reranker of one request of `n_documents`: the served spec (with the request's budget fields)
        over (at most) its top_k, built on the shared engine through this request's batch client."""
        from reasonrank.spec import build

        spec = self.request_spec(budget)
        spec = spec.replace(top_k=min(spec.top_k, n_documents))
        return build(spec, backend=self.batcher.client(cancel), renderer=self.renderer)

    def rerank(self, req: RerankInput, cancel: threading.Event) -> tuple[list[int], list]:
        """(document indices best first, window traces). Blocking; raises RequestCancelled."""
        from reasonrank.types import Candidate, Query, Request

        n = len(req.texts)
        if n == 1:  # nothing to order: no model call
            return [0], []
        candidates = [Candidate(str(i), 0.0, text) for i, text in enumerate(req.texts)]
        result = self.reranker(n, cancel, req.budget).rerank_batch([Request(Query("q", req.query), candidates)])[0]
        traces = result.traces
        self.metrics.observe_traces(traces)
        if traces and all(tr.status == "backend_error" for tr in traces):
            raise ApiError(500, f"the model failed on every window: {traces[0].raw_output[:500]}", "model_error")
        return [int(c.docid) for c in result.candidates], traces


def _check_auth(service: RerankService, request) -> None:
    keys = service.config.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", "unauthorized")
    token = token.strip().encode()
    if not any(hmac.compare_digest(token, k.encode()) for k in keys):
        raise ApiError(401, "invalid API key", "unauthorized")


async def _read_body(request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if size > cap:
            raise ApiError(413, f"request body of {size} bytes is over the limit of {cap} bytes", "payload_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, f"request body is over the limit of {cap} bytes", "payload_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(source: ServeConfig | RerankerFactory | None = None, config: ServeConfig | None = None):
    """A FastAPI app. `source` is a ServeConfig (the engine is built from its spec at startup) or a factory
    returning a built reranker (`build(spec)`, or a ListwiseReranker/TopDownPartitionReranker made by hand)
    whose spec, backend and renderer are served (limits, batching, auth and model names then come from
    `config`). The model loads in the app's startup (lifespan), so the server answers only once it is
    ready."""
    import anyio
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    service = RerankService(source, config)
    limiter = anyio.CapacityLimiter(service.config.max_in_flight)

    @asynccontextmanager
    async def lifespan(app):
        await anyio.to_thread.run_sync(service.load)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished the accepted requests by now
            await anyio.to_thread.run_sync(service.close)

    app = fastapi.FastAPI(title="reasonrank rerank service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    def error(exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown paths, wrong methods: the same JSON shape
        return JSONResponse({"message": str(exc.detail), "type": "http_error", "code": exc.status_code},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def handle(request, endpoint: str):
        """One rerank request to `endpoint` in whichever API shape its body is (reasonrank.serving.shapes)."""
        started = time.perf_counter()
        status = 500
        admitted = False
        shape = shapes.default_shape(endpoint)
        try:
            _check_auth(service, request)
            raw = await _read_body(request, service.config.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
            c = service.config
            shape = shapes.detect(endpoint, body)
            shaped = shapes.parse(shape, body, Limits(c.max_documents, c.max_document_chars, c.max_query_chars),
                                  service.names, service.served)
            req = shaped.req
            try:  # the request's scoring settings over the served spec's (reasonrank.scoring: one place for every face)
                scoring = service.spec.replace(**req.scoring)
            except ReasonRankError as exc:
                raise ApiError(400, str(exc)) from None
            service.request_spec(req.budget)  # 400 for a bad or over-cap budget, before the request is admitted
            service.admit()
            admitted = True
            service.metrics.documents.inc(len(req.texts))
            cancel = threading.Event()

            async def watch_disconnect():
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        cancel.set()
                        return

            watcher = asyncio.create_task(watch_disconnect())
            try:
                order, traces = await anyio.to_thread.run_sync(service.rerank, req, cancel, limiter=limiter)
            finally:
                watcher.cancel()
            content, headers = shapes.respond(shaped, score_ranking(scoring, order, req.scores), traces, service.served)
            status = 200
            return JSONResponse(content, headers=headers)
        except ApiError as exc:
            status, content = shapes.error_body(shape, exc)
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(content, status_code=status, headers=headers)
        except (RequestCancelled, ClientDisconnect):
            status = 499  # nginx's "client closed request"; nobody reads this response
            service.metrics.cancelled.inc()
            log.info("%s: client disconnected; remaining windows cancelled", endpoint)
            return JSONResponse({"message": "client disconnected", "type": "cancelled", "code": 499}, status_code=499)
        except Exception as exc:  # one bad request must not take the server down
            log.exception("%s failed", endpoint)
            status, content = shapes.error_body(shape, ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                                                "internal_error"))
            return JSONResponse(content, status_code=status)
        finally:
            if admitted:
                service.release()
            service.metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()
            service.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    @app.post("/v1/rerank")
    async def rerank_v1(request: Request):  # Cohere v1, Jina, vLLM: told apart by the body
        return await handle(request, "/v1/rerank")

    @app.post("/v2/rerank")
    async def rerank_v2(request: Request):  # Cohere v2, vLLM
        return await handle(request, "/v2/rerank")

    @app.post("/rerank")
    async def rerank_bare(request: Request):  # TEI (texts) or vLLM (documents)
        return await handle(request, "/rerank")

    @app.post("/score")
    async def score(request: Request):  # vLLM's score API
        return await handle(request, "/score")

    @app.post("/v1/score")
    async def score_v1(request: Request):  # vLLM's older path of it
        return await handle(request, "/v1/score")

    @app.get("/v1/models")
    async def list_models(request: Request):
        try:
            _check_auth(service, request)
        except ApiError as exc:
            return error(exc)
        return {"data": [{"id": service.served, "object": "model", "aliases": service.names,
                          "backend": service.batcher.name if service.batcher else None}]}

    @app.get("/health")
    async def health():
        batcher = service.batcher
        body = {
            "status": "draining" if service.draining else "ok",
            "model": service.served,
            "backend": batcher.name if batcher else None,
            "in_flight": service.in_flight,
            "queued_windows": batcher.queued if batcher else 0,
            "running_windows": batcher.busy if batcher else 0,
            "max_batch": service.config.max_batch,
        }
        return JSONResponse(body, status_code=503 if service.draining else 200)

    @app.get("/metrics")
    async def metrics(request: Request):
        try:
            _check_auth(service, request)
        except ApiError as exc:
            return error(exc)
        if service.batcher is not None:
            service.metrics.queue_depth.set(service.batcher.queued)
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    return app
