"""The teacher: any OpenAI-compatible chat endpoint, behind a response cache and a running bill.

Transport is `reasonrank.backends.openai_compat.OpenAIBackend` (concurrency limit, per-request
retries with exponential backoff and jitter, read timeouts sized from the token budget, reasoning
read from `reasoning_content` or an inline `<think>` block). This module adds:

* a cache on disk (sqlite, one row per request) keyed by a hash of the model, the messages, the
  sampling parameters and any extra request fields: a request that succeeded once is never sent
  again, whichever stage or invocation asks for it. Failed requests are not cached, so a rerun
  retries them;
* a running count of logical calls, cache hits, HTTP attempts, retries, failures, tokens and
  (optional) cost from per-million-token prices.

API keys come from the environment (`api_key_env`, default OPENAI_API_KEY) or a file
(`api_key_file`); they are never written to the run directory, logs or errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from reasonrank.backends.base import Generation, SamplingParams
from reasonrank.errors import ReasonRankError
from reasonrank.types import Prompt

log = logging.getLogger(__name__)

CACHE_FILE = "teacher_cache.sqlite"


@dataclass
class TeacherConfig:
    """How to reach the teacher. Nothing here is secret: the key is named, never stored."""

    model: str
    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ('' for none)
    api_key_file: str | None = None  # or a file holding it
    concurrency: int = 8
    max_retries: int = 4
    timeout: float | None = None  # read timeout (s); None sizes it from the token budget
    temperature: float = 0.6  # DeepSeek-R1's recommended sampling
    top_p: float = 0.95
    seed: int = 0
    extra_body: dict[str, Any] = field(default_factory=dict)
    price_prompt_per_m: float = 0.0  # currency units per million prompt tokens (0: no cost tracking)
    price_completion_per_m: float = 0.0  # per million completion tokens (reasoning included)
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    server_slots: int | None = None  # parallel requests one server runs (None: as many as sent, e.g. an API,
    #                                   vLLM, SGLang; 1 for llama.cpp's server): sizes the read timeout

    def params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """The settings that change what the teacher answers (recorded per stage)."""
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "extra_body": self.extra_body}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _api_key(config: TeacherConfig) -> str | None:
    if config.api_key_file:
        path = Path(config.api_key_file).expanduser()
        if not path.exists():
            raise ReasonRankError(f"API key file {path} does not exist")
        return path.read_text().strip() or None
    if config.api_key_env:
        return os.environ.get(config.api_key_env) or None
    return None


class ResponseCache:
    """request key → Generation, in sqlite (safe against a crash mid-write; one writer at a time)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, created REAL, "
                         "generation TEXT NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], params: SamplingParams, extra_body: dict | None = None) -> str:
        payload = {"model": model, "messages": messages, "params": asdict(params), "extra_body": extra_body or {}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def get(self, key: str) -> Generation | None:
        with self._lock:
            row = self._db.execute("SELECT generation FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Generation(**{k: v for k, v in data.items() if k in Generation.__dataclass_fields__})

    def put(self, key: str, model: str, gen: Generation) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                             (key, model, time.time(), json.dumps(gen.to_dict(), ensure_ascii=False)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class TeacherStats:
    calls: int = 0  # logical requests asked of the teacher
    cache_hits: int = 0
    sent: int = 0  # logical requests that went to the server
    http_requests: int = 0  # HTTP attempts (first tries and retries)
    retries: int = 0
    failures: int = 0  # requests that failed after all retries
    prompt_tokens: int = 0  # of requests sent now (cache hits cost nothing)
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0  # waiting on the server

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, other: "TeacherStats | dict") -> None:
        data = other.to_dict() if isinstance(other, TeacherStats) else other
        for k, v in data.items():
            if hasattr(self, k):
                setattr(self, k, getattr(self, k) + v)


class Teacher:
    """`generate(list of message lists, max_new_tokens) -> list[Generation]`, cached and counted.

    `backend` is anything with `generate(prompts, params)` and `model` (normally an OpenAIBackend
    built from `config`); `cache` None disables caching.
    """

    def __init__(self, config: TeacherConfig, cache: ResponseCache | None = None, backend=None):
        self.config = config
        self.cache = cache
        if backend is None:
            from reasonrank.backends.openai_compat import OpenAIBackend

            backend = OpenAIBackend(
                config.model, config.base_urls, api_key=_api_key(config), concurrency=config.concurrency,
                max_retries=config.max_retries, timeout=config.timeout, extra_body=config.extra_body,
                backoff_base_s=config.backoff_base_s, backoff_max_s=config.backoff_max_s,
                server_slots=config.server_slots,
            )
        self.backend = backend
        self.stats = TeacherStats()

    @classmethod
    def for_run(cls, config: TeacherConfig, run_dir: str | Path, use_cache: bool = True, backend=None) -> "Teacher":
        cache = ResponseCache(Path(run_dir) / CACHE_FILE) if use_cache else None
        return cls(config, cache, backend)

    def identity(self) -> dict[str, Any]:
        return self.config.identity()

    def generate(self, conversations: Sequence[list[dict[str, str]]], max_new_tokens: int) -> list[tuple[Generation, bool]]:
        """(Generation, came from the cache) per conversation, in order. Never raises for one bad item."""
        params = self.config.params(max_new_tokens)
        out: list[tuple[Generation, bool] | None] = [None] * len(conversations)
        keys: list[str] = []
        missing: list[int] = []
        for i, messages in enumerate(conversations):
            self.stats.calls += 1
            key = ResponseCache.key(self.config.model, list(messages), params, self.config.extra_body)
            keys.append(key)
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                self.stats.cache_hits += 1
                out[i] = (cached, True)
            else:
                missing.append(i)
        if missing:
            counts = self.backend.capabilities.stats  # an HTTP client counts its requests (retries included)
            before = dict(self.backend.stats) if counts else {}
            t0 = time.perf_counter()
            gens = self.backend.generate([Prompt(list(conversations[i])) for i in missing], params)
            self.stats.seconds += time.perf_counter() - t0
            after = self.backend.stats if counts else {}
            self.stats.sent += len(missing)
            self.stats.http_requests += int(after.get("requests", 0)) - int(before.get("requests", 0)) if after else len(missing)
            for i, gen in zip(missing, gens, strict=True):
                self.stats.retries += gen.retries
                if gen.error:
                    self.stats.failures += 1
                else:
                    self.stats.prompt_tokens += gen.prompt_tokens
                    self.stats.completion_tokens += gen.completion_tokens
                    self.stats.cost += (gen.prompt_tokens * self.config.price_prompt_per_m
                                        + gen.completion_tokens * self.config.price_completion_per_m) / 1e6
                    if self.cache is not None:
                        self.cache.put(keys[i], self.config.model, gen)
                out[i] = (gen, False)
        return list(out)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
