"""Prometheus metrics of one app (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

from reasonrank.errors import require

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
PARSE_FAILURES = ("no_answer", "truncated", "paper_fallback", "backend_error")  # "repaired" rankings are usable: counted in windows only


class Metrics:
    def __init__(self):
        prom = require("prometheus_client", "serve", "The rerank service's /metrics")
        self._prom = prom
        self.registry = r = prom.CollectorRegistry()
        self.requests = prom.Counter("reasonrank_requests", "HTTP rerank requests answered, by endpoint and status code.",
                                     ["endpoint", "code"], registry=r)
        self.latency = prom.Histogram("reasonrank_request_duration_seconds",
                                      "Time from receiving a rerank request to answering it.", ["endpoint"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = prom.Gauge("reasonrank_requests_in_flight", "Rerank requests being worked on.", registry=r)
        self.documents = prom.Counter("reasonrank_documents", "Documents received in accepted rerank requests.", registry=r)
        self.windows = prom.Counter("reasonrank_windows", "Sliding windows the model ranked, by parse status.",
                                    ["status"], registry=r)
        self.parse_failures = prom.Counter(
            "reasonrank_parse_failures",
            "Windows whose output gave no usable ranking (no_answer, truncated, backend_error: their input order was kept; "
            "paper_fallback: the numbers of the whole reply).",
            registry=r)
        self.prompt_tokens = prom.Counter("reasonrank_prompt_tokens", "Prompt tokens the model read.", registry=r)
        self.completion_tokens = prom.Counter("reasonrank_completion_tokens", "Tokens the model generated.", registry=r)
        self.cancelled = prom.Counter("reasonrank_cancelled_requests",
                                      "Requests whose client went away before the answer; their remaining windows were not run.",
                                      registry=r)
        self.dropped_prompts = prom.Counter("reasonrank_dropped_prompts",
                                            "Queued windows dropped because their request was cancelled.", registry=r)
        self.batches = prom.Counter("reasonrank_backend_batches", "Backend generate() calls.", registry=r)
        self.batch_size = prom.Histogram("reasonrank_backend_batch_size",
                                         "Prompts per backend generate() call (windows of all in-flight requests).",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = prom.Histogram("reasonrank_backend_batch_seconds", "Seconds per backend generate() call.",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = prom.Gauge("reasonrank_queue_depth", "Windows waiting for the next backend call.", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batches.inc()
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_traces(self, traces) -> None:
        for t in traces:
            self.windows.labels(status=t.status or "unknown").inc()
            if t.status in PARSE_FAILURES:
                self.parse_failures.inc()
            self.prompt_tokens.inc(t.prompt_tokens + t.forced_prompt_tokens)  # a forced answer's call included
            self.completion_tokens.inc(t.completion_tokens + t.forced_completion_tokens)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
