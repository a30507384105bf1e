"""OpenAI-compatible HTTP backend (vLLM, SGLang, llama.cpp servers, OpenAI, DeepSeek, ...).

Requests go out with httpx (async), at most `concurrency` at a time, spread over one or more base
URLs (least in-flight first, ties round-robin). Each request is retried on its own (never the whole
batch) on 408/409/429/5xx, timeouts, connection errors, and truncated or invalid bodies, with
exponential backoff and jitter (a 429's Retry-After is honoured). Every resend is counted in
`Generation.retries` and in `backend.stats`. A request that still fails, or fails with a
non-retryable status (400, 401, 404, ...), yields `Generation(error=...)`; the batch never raises
for one item.

Timeout sizing. A client timeout shorter than the server's generation time does not make anything
faster: the client gives up, retries, and the server computes the same request twice (or more)
while the client waits again. So the read timeout is derived from the token budget:

    per_request = prompt_allowance_s + max_new_tokens / min_tokens_per_second
    static      = max(timeout_floor_s, per_request * ceil(in_flight_per_url / server_slots))
    timeout     = max(static, 2 * slowest observed seconds-per-token * max_new_tokens)

with defaults prompt_allowance_s=60, min_tokens_per_second=5 (a slow CPU server), timeout_floor_s=120,
server_slots=1 (a server that runs one request at a time, as llama-cpp-python's does, so a request
may wait behind the others this client sent to the same URL). For ReasonRank's 3,172-token budget
and concurrency=1 that is 60 + 634 = 694 s. The last term adapts to the server actually in use: each
answered request with at least 16 completion tokens records its wall time per token (queueing and
prompt processing included, so this errs long), and the slowest of the last 64 can only lengthen
the timeout, never shorten it (a 7B model on a CPU, or a CPU shared with other jobs, can be far
slower than 5 tokens/s: the embedded 0.5B model fell to 1.4 tokens/s here while other jobs ran).
Servers that batch (vLLM, SGLang) should be given `server_slots=` their parallelism (or None).
`timeout=` (seconds) overrides all this; `connect_timeout_s` bounds only the TCP/TLS connect.
`request_timeout(max_new_tokens)` returns the value used.

Reasoning: a separate `reasoning_content` (DeepSeek, vLLM), `reasoning` or `reasonings_content`
field goes to Generation.reasoning; an inline `<think>...</think>` is split the same way (reasoning
inside, answer after); `Generation.full_text` puts it back inline.

`use_completions=True`: prompts with `text` go to /v1/completions with that exact string (the
prompt rendered locally, so the server applies no template); prompts without it, and the default
mode, go to /v1/chat/completions with `messages`.

One BOS over HTTP. A llama.cpp-family server (the C++ llama.cpp server, llama-cpp-python) tokenizes a
/completions prompt with its model's special tokens added: when the GGUF says `tokenizer.ggml.add_bos_token`
it puts a BOS before the text, even a text that (rendered with a chat template that writes `bos_token`)
already begins with one, and the model then sees two. Neither server takes a request field that turns
this off for a text prompt (llama.cpp always tokenizes with add_special; llama-cpp-python adds the BOS
whenever the model asks for one). So the client asks each such server once, through its own tokenize
endpoint (the same tokenization as /completions: `POST /tokenize {content, add_special, parse_special}`,
`POST /extras/tokenize {input}`), whether it adds a token to an empty text; if it does and a prompt's
text tokenizes to that token twice, the shortest head of the text that does so is the template's BOS
text, which is then left out of every prompt that starts with it (`stats["bos_stripped"]` counts them):
the server's own BOS takes its place, and the prompt's tokens are the in-process engine's. vLLM is told
`add_special_tokens: false` instead (below).

Greedy means greedy on every server. Servers fill fields a request leaves out with their own
defaults: vLLM from the model's generation_config.json (Qwen2.5: repetition_penalty 1.05, top_k 20),
llama.cpp with repeat_penalty 1.1 and min_p 0.05, and vLLM's completions endpoint adds special tokens
to a prompt unless told not to. So every request pins them (`pinned_fields`), in the names of the
server it goes to; the kind of server is read once per base URL from GET /models (`owned_by`). An
unknown server gets every name. A strict server (OpenAI's API) answers 400 naming a field it does not
know: the request is then sent once more without the pinned fields, and that URL gets none from then
on; `stats["dropped_fields"]` says which were dropped where, for the run summary.

API key: `api_key`, else `api_key_file`, else $OPENAI_API_KEY, else $OPENAI_API_KEY_FILE; no key
sends no Authorization header (local servers). The key is never logged, printed or put in errors.

Continuations (a forced answer, reasonrank.rerankers.listwise.continuation). In text mode a continuation
is just a longer rendered prompt. In chat mode it is the messages with a final assistant message to be
continued, not answered: a vLLM or SGLang server is told `continue_final_message: true,
add_generation_prompt: false` (the template renders the assistant turn open, and the model writes on);
llama.cpp-family servers and unknown ones have no such field (llama-cpp-python would close the message
and open a new turn), so such a prompt is not sent: it comes back with `error` saying so.
`Prompt.chat_template_kwargs` (a thinking switch) goes out as `chat_template_kwargs`, the field vLLM,
SGLang and llama.cpp's server read.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasonrank.backends.base import Capabilities, Generation, Prompt, SamplingParams
from reasonrank.errors import ReasonRankError, require

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
REASONING_FIELDS = ("reasoning_content", "reasoning", "reasonings_content")


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _FatalError(Exception):
    pass


class _UnknownFieldError(_FatalError):
    """A 400/422 that names one of the pinned sampling fields: the server does not take it."""


# What each kind of server is told, in its own names. top_k "off" is 0 for llama.cpp (its pydantic
# model rejects -1) and -1 for vLLM/SGLang (older vLLM rejects 0).
_PINS = {
    "vllm": {"repetition_penalty": 1.0, "top_k": -1, "min_p": 0.0},
    "llama-cpp-python": {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0},
    "llama.cpp": {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0},
    "unknown": {"repetition_penalty": 1.0, "repeat_penalty": 1.0, "top_k": -1, "min_p": 0.0},
}
_OWNED_BY = {"vllm": "vllm", "me": "llama-cpp-python", "llamacpp": "llama.cpp", "sglang": "vllm"}

# Tokenize endpoints (at the server root) that tokenize a text exactly as the server's /completions does:
# llama.cpp with add_special and parse_special, llama-cpp-python with add_bos and special tokens parsed.
_TOKENIZE_AS_COMPLETIONS = {
    "llama.cpp": ("/tokenize", lambda text: {"content": text, "add_special": True, "parse_special": True}),
    "llama-cpp-python": ("/extras/tokenize", lambda text: {"input": text}),
}
_BOS_HEAD_CHARS = 128  # a template's BOS text (`<s>`, `<|begin_of_text|>`, ...) is far shorter
_CONTINUES_MESSAGES = ("vllm",)  # servers that continue a final assistant message (vLLM, SGLang: continue_final_message)


def continues_assistant(prompt: Prompt) -> bool:
    """A chat prompt whose final message is the assistant's own, to be continued (a forced answer)."""
    return bool(prompt.messages) and prompt.messages[-1].get("role") == "assistant"


def pinned_fields(kind: str, raw_prompt: bool) -> dict[str, Any]:
    """The sampling fields a request to this kind of server must carry to decode greedily as asked;
    `raw_prompt`: the body carries a rendered prompt, to which vLLM would add special tokens."""
    pins = dict(_PINS.get(kind, _PINS["unknown"]))
    if raw_prompt and kind in ("vllm", "unknown"):
        pins["add_special_tokens"] = False
    return pins


def server_kind(models_body: Any) -> str:
    """vllm, llama-cpp-python, llama.cpp or unknown, from a GET /models answer's `owned_by`."""
    try:
        owner = str(models_body["data"][0].get("owned_by", "")).lower()
    except (KeyError, IndexError, TypeError, AttributeError):
        return "unknown"
    return _OWNED_BY.get(owner, "unknown")


def split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) from output that may hold an inline `<think>...</think>` block.

    `<think>R</think>A` -> (R, A); `R</think>A` (the template opened the block) -> (R, A); an unclosed
    `<think>` (cut by the budget) and text without tags are left whole as the answer."""
    if "</think>" not in content:
        return "", content
    head, _, answer = content.partition("</think>")
    stripped = head.lstrip()
    if stripped.startswith("<think>"):
        reasoning = stripped[len("<think>"):]
    elif "<think>" in head:
        return "", content  # text before <think>: leave it as the model wrote it
    else:
        reasoning = head
    return reasoning, answer


def read_api_key(api_key: str | None = None, api_key_file: str | os.PathLike | None = None) -> str | None:
    """`api_key`, else the contents of `api_key_file`, else $OPENAI_API_KEY, else the file named by
    $OPENAI_API_KEY_FILE; None when there is none."""
    if api_key:
        return api_key
    if api_key_file:
        return Path(api_key_file).expanduser().read_text().strip() or None
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    if os.environ.get("OPENAI_API_KEY_FILE"):
        return Path(os.environ["OPENAI_API_KEY_FILE"]).expanduser().read_text().strip() or None
    return None


def auto_timeout(
    max_new_tokens: int,
    *,
    min_tokens_per_second: float = 5.0,
    prompt_allowance_s: float = 60.0,
    timeout_floor_s: float = 120.0,
    queue_depth: int = 1,
) -> float:
    """Seconds to wait for one response (see the module docstring)."""
    per_request = prompt_allowance_s + max(0, max_new_tokens) / max(min_tokens_per_second, 1e-6)
    return max(timeout_floor_s, per_request * max(1, queue_depth))


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_urls: Sequence[str] | str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float | None = None,
        use_completions: bool = False,
        extra_body: dict[str, Any] | None = None,
        *,
        api_key_file: str | os.PathLike | None = None,
        min_tokens_per_second: float = 5.0,
        prompt_allowance_s: float = 60.0,
        timeout_floor_s: float = 120.0,
        server_slots: int | None = 1,
        connect_timeout_s: float = 10.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ):
        """
        model: the model name the server serves (sent as `model`).
        base_urls: one or more API roots, each ending in /v1 (e.g. http://host:8000/v1).
        concurrency: requests in flight at once, over all URLs: per `generate()` call, and shared by
            all `agenerate()` calls on one event loop.
        max_retries: resends per request after its first attempt.
        timeout: read timeout in seconds; None derives it from the token budget (module docstring).
        use_completions: send Prompt.text verbatim to /v1/completions (exact-prompt mode).
        extra_body: merged into every request body (e.g. {"repeat_penalty": 1.0}, {"top_k": 1}).
        server_slots: requests each server runs in parallel (None: as many as it is sent).
        backoff_base_s/backoff_max_s: retry n waits uniform(0.5, 1) * min(max, base * 2**n) seconds.
        """
        self._httpx = require("httpx", "openai", "The OpenAI-compatible backend")
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ReasonRankError("OpenAIBackend needs at least one base URL")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model = model
        self._api_key = read_api_key(api_key, api_key_file)
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout = timeout
        self.use_completions = use_completions
        self.extra_body = dict(extra_body or {})
        self.min_tokens_per_second = min_tokens_per_second
        self.prompt_allowance_s = prompt_allowance_s
        self.timeout_floor_s = timeout_floor_s
        self.server_slots = server_slots
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._stats_lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "requests": 0,  # HTTP attempts sent (first tries and retries)
            "retries": 0,  # resends
            "failures": 0,  # items that ended with an error
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "per_url": {u: 0 for u in self.base_urls},  # attempts per base URL
            "server_kind": {},  # base URL -> vllm, llama-cpp-python, llama.cpp or unknown
            "dropped_fields": {},  # base URL -> pinned fields the server refused (sent no more)
            "bos_stripped": 0,  # raw prompts sent without the template's BOS because the server adds one
        }
        self._kinds: dict[str, str] = {}
        self._server_bos: dict[str, int | None] = {}  # base URL -> the token its /completions adds first (None: none)
        self._bos_text: dict[str, str] = {}  # base URL -> the template's BOS text, once seen
        self._plain_heads: dict[str, set[str]] = {}  # base URL -> prompt heads known not to start with a BOS
        self._in_flight = {u: 0 for u in self.base_urls}
        self._seconds_per_token: collections.deque[float] = collections.deque(maxlen=64)
        self._rr = 0
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple] = weakref.WeakKeyDictionary()

    @property
    def capabilities(self) -> Capabilities:
        # many requests in flight (the point of a server); generate() is safe from several threads
        return Capabilities(batch_size=None, prompt_formats=("text", "messages"), concurrency=self.concurrency, stats=True)

    @property
    def prompt_format(self) -> str:
        """"text": rendered prompts go verbatim to /completions; "messages": chat messages, the server's template."""
        return "text" if self.use_completions else "messages"

    @prompt_format.setter
    def prompt_format(self, value: str) -> None:
        self.use_completions = value == "text"

    def fingerprint(self) -> dict:
        # the served model, not the URLs: the same model behind another address answers the same
        return {"backend": self.name, "model": self.model}

    def __repr__(self) -> str:  # never shows the key
        return (f"OpenAIBackend(model={self.model!r}, base_urls={self.base_urls!r}, concurrency={self.concurrency}, "
                f"use_completions={self.use_completions}, api_key={'set' if self._api_key else 'none'})")

    # -- sizing -------------------------------------------------------------------------------------

    def request_timeout(self, max_new_tokens: int) -> float:
        """The read timeout (seconds) for a request with this token budget (module docstring)."""
        if self.timeout is not None:
            return float(self.timeout)
        per_url = math.ceil(self.concurrency / len(self.base_urls))
        queue = math.ceil(per_url / self.server_slots) if self.server_slots else 1
        static = auto_timeout(
            max_new_tokens,
            min_tokens_per_second=self.min_tokens_per_second,
            prompt_allowance_s=self.prompt_allowance_s,
            timeout_floor_s=self.timeout_floor_s,
            queue_depth=queue,
        )
        with self._stats_lock:
            slowest = max(self._seconds_per_token, default=0.0)
        return max(static, 2.0 * slowest * max(0, max_new_tokens))

    def _observe(self, seconds: float, completion_tokens: int) -> None:
        if completion_tokens >= 16 and seconds > 0:  # short answers say little about the rate
            with self._stats_lock:
                self._seconds_per_token.append(seconds / completion_tokens)

    # -- public entry points -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """Synchronous: runs its own event loop (in a helper thread when this thread already has one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_standalone(prompts, params))
        result: list = []
        error: list = []

        def run():
            try:
                result.extend(asyncio.run(self._generate_standalone(prompts, params)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(exc)

        worker = threading.Thread(target=run, name="reasonrank-openai")
        worker.start()
        worker.join()
        if error:
            raise error[0]
        return result

    async def agenerate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """For async callers: shares one connection pool and one concurrency limit per event loop
        across concurrent calls. Call `aclose()` when done with the loop."""
        client, sem = self._loop_resources()
        return await self._run_batch(client, sem, prompts, params)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        res = self._per_loop.pop(loop, None)
        if res is not None:
            await res[0].aclose()

    # -- internals ----------------------------------------------------------------------------------

    def _new_client(self):
        # timeouts are set per request; no limit on the pool here: the semaphore limits concurrency
        limits = self._httpx.Limits(max_connections=None, max_keepalive_connections=self.concurrency)
        return self._httpx.AsyncClient(limits=limits, timeout=None)

    def _loop_resources(self):
        loop = asyncio.get_running_loop()
        res = self._per_loop.get(loop)
        if res is None:
            res = (self._new_client(), asyncio.Semaphore(self.concurrency))
            self._per_loop[loop] = res
        return res

    async def _generate_standalone(self, prompts, params):
        async with self._new_client() as client:
            return await self._run_batch(client, asyncio.Semaphore(self.concurrency), prompts, params)

    async def _run_batch(self, client, sem, prompts, params) -> list[Generation]:
        return list(await asyncio.gather(*(self._one(client, sem, p, params) for p in prompts)))

    def _pick_url(self, avoid: str | None) -> str:
        with self._stats_lock:
            candidates = [u for u in self.base_urls if u != avoid] or self.base_urls
            n = len(candidates)
            order = [candidates[(self._rr + i) % n] for i in range(n)]
            self._rr += 1
            url = min(order, key=lambda u: self._in_flight[u])
            self._in_flight[url] += 1
            self.stats["requests"] += 1
            self.stats["per_url"][url] += 1
            return url

    def _release_url(self, url: str) -> None:
        with self._stats_lock:
            self._in_flight[url] -= 1

    def _count(self, **deltas) -> None:
        with self._stats_lock:
            for key, value in deltas.items():
                self.stats[key] += value

    def _payload(self, prompt: Prompt, params: SamplingParams, url: str | None = None,
                 text: str | None = None) -> tuple[str, dict]:
        """The path and body of one request; `text` replaces `prompt.text` (a raw prompt without its BOS)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(params.max_new_tokens),
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "seed": int(params.seed),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        raw = self.use_completions and prompt.text is not None
        if raw:
            path, body["prompt"] = "/completions", prompt.text if text is None else text
        else:
            path, body["messages"] = "/chat/completions", prompt.messages
            if prompt.chat_template_kwargs:
                body["chat_template_kwargs"] = dict(prompt.chat_template_kwargs)
            if continues_assistant(prompt):
                body.update(continue_final_message=True, add_generation_prompt=False)
        if url is None or url not in self.stats["dropped_fields"]:
            body.update(pinned_fields(self._kinds.get(url, "unknown"), raw))
        body.update(self.extra_body)
        return path, body

    async def _learn_kind(self, client, url: str, headers: dict) -> None:
        """Ask a base URL once what serves it (GET /models), to pin fields in its own names."""
        if url in self._kinds:
            return
        kind = "unknown"
        try:
            response = await client.get(url + "/models", headers=headers, timeout=self.connect_timeout_s)
            if response.status_code == 200:
                kind = server_kind(response.json())
        except (self._httpx.HTTPError, ValueError):
            pass  # a server that cannot list models is sent every name; the 400 fallback covers strict ones
        self._kinds[url] = kind
        with self._stats_lock:
            self.stats["server_kind"][url] = kind

    async def _server_tokens(self, client, url: str, headers: dict, text: str) -> list[int]:
        path, body = _TOKENIZE_AS_COMPLETIONS[self._kinds[url]]
        root = url.removesuffix("/v1")
        response = await client.post(root + path, json={"model": self.model, **body(text)}, headers=headers,
                                     timeout=self._httpx.Timeout(60.0, connect=self.connect_timeout_s))
        if response.status_code != 200:
            raise ValueError(f"{root}{path} answered {response.status_code}")
        tokens = response.json()["tokens"]
        return [t["id"] if isinstance(t, dict) else int(t) for t in tokens]

    async def _one_bos(self, client, url: str, headers: dict, text: str) -> str:
        """The raw prompt `text` as it must be sent to this server for the model to see one BOS: without the
        template's leading BOS text when the server adds a BOS itself (module docstring), else unchanged."""
        if self._kinds.get(url) not in _TOKENIZE_AS_COMPLETIONS:
            return text
        try:
            if url not in self._server_bos:
                added = await self._server_tokens(client, url, headers, "")
                self._server_bos[url] = added[0] if added else None
            bos = self._server_bos[url]
            if bos is None:
                return text
            known = self._bos_text.get(url)
            if known is None:
                head = text[:_BOS_HEAD_CHARS]
                plain = self._plain_heads.setdefault(url, set())
                if head in plain:
                    return text

                async def doubled(n: int) -> bool:  # the first n characters hold the template's BOS
                    return (await self._server_tokens(client, url, headers, head[:n]))[:2] == [bos, bos]

                if not await doubled(len(head)):
                    plain.add(head)
                    return text
                lo, hi = 1, len(head)  # the shortest head that tokenizes to the server's BOS and the template's
                while lo < hi:
                    mid = (lo + hi) // 2
                    if await doubled(mid):
                        hi = mid
                    else:
                        lo = mid + 1
                known = self._bos_text.setdefault(url, head[:lo])
                log.info("%s adds a BOS (token %d) to every prompt; the rendered prompts' own %r is left out so the "
                         "model sees one", url, bos, known)
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("%s: cannot tell whether the server adds a BOS (%s); prompts are sent as rendered", url, exc)
            self._server_bos[url] = None
            return text
        if known and text.startswith(known):
            self._count(bos_stripped=1)
            return text[len(known):]
        return text

    def _drop_pins(self, url: str, body: dict, path: str) -> dict:
        """Forget the pinned fields for this URL (a strict server refused one) and the body without them."""
        dropped = sorted(set(pinned_fields(self._kinds.get(url, "unknown"), path == "/completions")) - set(self.extra_body))
        with self._stats_lock:
            self.stats["dropped_fields"][url] = dropped
        log.warning("%s refuses the sampling fields %s; sending them no more (its own defaults apply)", url, dropped)
        return {k: v for k, v in body.items() if k not in dropped}

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def auth_headers(self) -> dict[str, str]:
        """The headers every request carries (the key included, when there is one)."""
        headers = dict(self._headers)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _one(self, client, sem, prompt: Prompt, params: SamplingParams) -> Generation:
        headers = self.auth_headers()
        start = time.perf_counter()
        retries, last_error, url = 0, "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                retries += 1
                self._count(retries=1)
            async with sem:
                url = self._pick_url(avoid=url if attempt else None)
                sent = time.perf_counter()
                # sized per attempt: what earlier answers taught about this server's speed counts
                timeout = self._httpx.Timeout(self.request_timeout(params.max_new_tokens), connect=self.connect_timeout_s)
                try:
                    await self._learn_kind(client, url, headers)
                    chat = not (self.use_completions and prompt.text is not None)
                    if chat and continues_assistant(prompt) and self._kinds.get(url) not in _CONTINUES_MESSAGES:
                        path = "/chat/completions"
                        raise _FatalError(f"a {self._kinds.get(url)} server cannot continue a final assistant message in "
                                          "chat mode (no continue_final_message); send rendered prompts (a tokenizer) instead")
                    text = None
                    if self.use_completions and prompt.text is not None:
                        text = await self._one_bos(client, url, headers, prompt.text)
                    path, body = self._payload(prompt, params, url, text)
                    try:
                        data = await self._post(client, url + path, body, headers, timeout)
                    except _UnknownFieldError:
                        if url in self.stats["dropped_fields"]:
                            raise
                        data = await self._post(client, url + path, self._drop_pins(url, body, path), headers, timeout)
                    gen = self._parse(data, chat=path == "/chat/completions")
                except _RetryableError as exc:
                    last_error, retry_after = f"{url}{path}: {exc}", exc.retry_after
                except _FatalError as exc:
                    last_error = f"{url}{path}: {exc}"
                    break
                else:
                    self._observe(time.perf_counter() - sent, gen.completion_tokens)
                    gen.retries, gen.seconds = retries, time.perf_counter() - start
                    self._count(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
                    return gen
                finally:
                    self._release_url(url)
            if attempt < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.warning("request failed (%s); retry %d/%d in %.1fs", last_error, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
        self._count(failures=1)
        tries = retries + 1
        return Generation(text="", error=f"failed after {tries} attempt(s): {last_error}", retries=retries,
                          seconds=time.perf_counter() - start)

    async def _post(self, client, url: str, body: dict, headers: dict, timeout) -> dict:
        httpx = self._httpx
        try:
            response = await client.post(url, json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise _RetryableError(f"timed out ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:  # connect errors, truncated bodies
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            snippet = response.text[:300].replace("\n", " ")
            if response.status_code in RETRYABLE_STATUS:
                raise _RetryableError(f"HTTP {response.status_code}: {snippet}", _retry_after(response))
            if response.status_code in (400, 422) and _names_a_pin(response.text):
                raise _UnknownFieldError(f"HTTP {response.status_code}: {snippet}")
            raise _FatalError(f"HTTP {response.status_code}: {snippet}")
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise _RetryableError(f"invalid JSON body ({len(response.content)} bytes): {response.text[:120]!r}") from None
        if not isinstance(data, dict):
            raise _RetryableError(f"unexpected body: {str(data)[:120]!r}")
        if data.get("error") and not data.get("choices"):
            # some servers answer 200 with an error object
            raise _RetryableError(f"error in body: {str(data['error'])[:300]}")
        return data

    def _parse(self, data: dict, chat: bool) -> Generation:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _RetryableError(f"response has no choices: {str(data)[:200]!r}")
        choice = choices[0]
        if chat:
            message = choice.get("message")
            if not isinstance(message, dict):
                raise _RetryableError(f"chat response without a message: {str(choice)[:200]!r}")
            content = message.get("content") or ""
            reasoning = next((message[f] for f in REASONING_FIELDS if isinstance(message.get(f), str) and message[f]), "")
        else:
            if "text" not in choice:
                raise _RetryableError(f"completion response without text: {str(choice)[:200]!r}")
            content, reasoning = choice.get("text") or "", ""
        if not reasoning:
            reasoning, content = split_reasoning(content)
        usage = data.get("usage") or {}
        return Generation(
            text=content,
            reasoning=reasoning,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "",
        )

    def close(self) -> None:
        """Nothing to release for `generate()` callers (each call uses its own client)."""


_PIN_NAMES = frozenset(k for pins in _PINS.values() for k in pins) | {"add_special_tokens"}


def _names_a_pin(error_text: str) -> bool:
    return any(name in error_text for name in _PIN_NAMES)


def _retry_after(response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
