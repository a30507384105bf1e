"""The tokenizer of the model a server serves, read from the server itself.

A server that exposes its tokenizer lets the client cut passages in model tokens and, where it can
also render its chat template, send the exact prompt to /completions, with no local copy of the
tokenizer and no hub download. Endpoints (each server's own, at the server root, not under /v1):

    vLLM / SGLang      POST /tokenize {prompt | messages, add_special_tokens}   POST /detokenize {tokens}
    llama.cpp server   POST /tokenize {content, add_special}  /detokenize  POST /apply-template {messages}
    llama-cpp-python   POST /extras/tokenize {input}          /extras/detokenize   (no template endpoint)

A llama-cpp-python server therefore gets passages cut in its tokens but chat messages, which its own
chat handler templates; `can_template` says which of the two a server allows.

Written by hand because no library speaks these endpoints: they are each server's own extensions.
It has the three methods the prompt renderer calls on a transformers tokenizer (`tokenize`,
`convert_tokens_to_string`, `apply_chat_template`); its "tokens" are ids, which only it reads back.
"""

from __future__ import annotations

import logging
from typing import Any

from reasonrank.errors import ReasonRankError, require

log = logging.getLogger(__name__)

# kind -> (tokenize path, body for text, tokens key, detokenize path, text key, template path or None)
_ENDPOINTS = {
    "vllm": ("/tokenize", lambda text: {"prompt": text, "add_special_tokens": False}, "tokens",
             "/detokenize", "prompt", "/tokenize"),
    "llama.cpp": ("/tokenize", lambda text: {"content": text, "add_special": False, "parse_special": True}, "tokens",
                  "/detokenize", "content", "/apply-template"),
    "llama-cpp-python": ("/extras/tokenize", lambda text: {"input": text}, "tokens",
                         "/extras/detokenize", "text", None),
}


class ServerTokenizer:
    def __init__(self, base_url: str, model: str, kind: str, headers: dict[str, str] | None = None, timeout: float = 60.0):
        if kind not in _ENDPOINTS:
            raise ReasonRankError(f"no tokenizer endpoints known for a {kind} server")
        httpx = require("httpx", "openai", "The server's tokenizer")
        self.root = base_url.rstrip("/").removesuffix("/v1")
        self.model, self.kind = model, kind
        self._client = httpx.Client(timeout=timeout, headers=headers or {})
        self._tok_path, self._tok_body, self._tok_key, self._detok_path, self._text_key, self._template_path = _ENDPOINTS[kind]
        self._bos = self._post(self._tok_path, self._tok_body(""))[self._tok_key]  # what the server adds to any text

    @property
    def can_template(self) -> bool:
        return self._template_path is not None

    def __repr__(self) -> str:
        return f"ServerTokenizer({self.root!r}, kind={self.kind!r})"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(self.root + path, json={"model": self.model, **body})
        if response.status_code != 200:
            raise ReasonRankError(f"{self.root}{path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    def tokenize(self, text: str) -> list[int]:
        ids = self._post(self._tok_path, self._tok_body(text))[self._tok_key]
        return ids[len(self._bos):] if self._bos and ids[:len(self._bos)] == self._bos else ids

    def _decode(self, ids: list[int]) -> str:
        return self._post(self._detok_path, {"tokens": ids})[self._text_key]

    def convert_tokens_to_string(self, ids: list[int]) -> str:
        return self._decode(list(ids))

    def truncate(self, text: str, limit: int) -> str:
        """The text of its first `limit` tokens. A cut inside a multi-byte character ends in U+FFFD, as
        transformers' byte-level decoding does. Servers differ there: llama-cpp-python's detokenize
        fails on partial bytes (500), so the cut steps back to the character's start (keeping the space a
        byte-level BPE token carries before it: exact for Qwen's and Llama 3's vocabularies); others drop
        them silently, detected when the character after the head is not where the tail starts."""
        ids = self.tokenize(text)
        if len(ids) <= limit:
            return self._decode(ids)
        for back in range(4):  # a UTF-8 character spans at most 4 byte-level tokens
            try:
                head = self._decode(ids[:limit - back])
                tail = self._decode(ids[limit - back:])
                break
            except ReasonRankError:
                if back == 3 or limit - back <= 1:
                    raise
        if back:  # the stepped-over tokens held the partial character, after the space BPE merges into them
            return head + tail[:len(tail) - len(tail.lstrip())] + "\ufffd"
        whole = self._decode(ids)
        rest = whole[len(head):] if whole.startswith(head) else ""
        # (a leading space that a SentencePiece decode drops from the tail is not a split)
        if rest and rest.lstrip()[:1] != tail.lstrip()[:1] and not head.endswith("\ufffd"):
            head += "\ufffd"
        return head

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = True, **kwargs) -> str:
        if not self.can_template:
            raise ReasonRankError(f"a {self.kind} server does not render its chat template over HTTP")
        if self.kind == "llama.cpp":
            return self._post("/apply-template", {"messages": messages})["prompt"]
        body = {"messages": messages, "add_generation_prompt": add_generation_prompt, "add_special_tokens": False}
        if kwargs:
            body["chat_template_kwargs"] = kwargs
        return self._decode(self._post("/tokenize", body)["tokens"])

    def close(self) -> None:
        self._client.close()


def probe(base_url: str, model: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> ServerTokenizer | None:
    """The server's tokenizer, or None when it exposes none. Only servers that say what they are in
    GET /models (`owned_by`: vllm, sglang, llamacpp, or llama-cpp-python's "me") are asked; hosted
    APIs (OpenAI's, most others) are not sent requests that would only 404."""
    from reasonrank.backends.openai_compat import server_kind

    httpx = require("httpx", "openai", "The server's tokenizer")
    try:
        kind = server_kind(httpx.get(base_url.rstrip("/") + "/models", headers=headers or {}, timeout=timeout).json())
    except (httpx.HTTPError, ValueError) as exc:
        log.info("no tokenizer from %s: %s", base_url, exc)
        return None
    if kind not in _ENDPOINTS:  # a hosted API (OpenAI's, DeepSeek's, ...): nothing to ask it
        return None
    try:
        return ServerTokenizer(base_url, model, kind, headers, timeout)
    except (httpx.HTTPError, ReasonRankError, ValueError, KeyError, TypeError) as exc:
        log.warning("the %s server at %s answers no tokenize request (%s): passages are cut in words", kind, base_url, exc)
        return None
