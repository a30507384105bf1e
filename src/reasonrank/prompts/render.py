"""Render listwise ranking prompts exactly as the released ReasonRank models saw them in training.

The wording lives in `templates/<mode>.json`; this module only assembles it. The assembly follows
ReasonRank's `RankListwiseOSLLM.create_prompt` (8421BCD/ReasonRank, rerank/rank_listwise_os_llm.py)
and `convert_doc_to_prompt_content` (utils.py):

* query: every `[n]` becomes `(n)`, then stripped;
* passage: `Title: … Content: …` (or the bare text), stripped, `ftfy.fix_text`, cut to the first
  `max_passage_tokens` tokens of the model's own tokenizer (`tokenize(...)[:max]` then
  `convert_tokens_to_string`), then every `[n]` becomes `(n)`;
* one system message and one user message, rendered with the tokenizer's chat template
  (`add_generation_prompt=True`), and the whole string passed through `ftfy.fix_text` again.

Without a tokenizer (HTTP chat servers apply their own template) `Prompt.text` is None and
passages are cut to the first `max_passage_tokens` whitespace-separated words instead, which is
what ReasonRank and RankLLM do for API models (`truncate_by_word=True`, RankLLM's
`max_passage_words`). Words are not tokens: that prompt is close to, not byte-identical with, the
trained one.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ftfy import TextFixerConfig, fix_text

from reasonrank.errors import ConfigError, parse_json
from reasonrank.types import Candidate, Prompt

MODES = ("reasonrank", "rankgpt", "qwen3")

# Passage budgets from ReasonRank's index_and_topics.DOC_MAXLEN: 512 tokens for the
# reasoning-intensive benchmarks (BRIGHT, R2MED, ReasonRank's math sets), 100 for TREC-DL and BEIR.
LONG_PASSAGE_TOKENS = 512
SHORT_PASSAGE_TOKENS = 100
_BRIGHT_TASKS = frozenset({
    "biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
    "sustainable_living", "leetcode", "pony", "aops", "theoremqa_questions", "theoremqa_theorems",
})
_LONG_NAMES = frozenset({"bright", "r2med", "math-qa", "math-theorem"})

# Upstream's replace_number: `\d` is Unicode-aware here too, so `[１]` becomes `(１)` as it did there.
_BRACKETED_NUMBER = re.compile(r"\[(\d+)\]")
_PLACEHOLDER = re.compile(r"\{(num|query|rank|content)\}")
_TEMPLATE_KEYS = ("system", "prefix", "passage", "post_prompt")


def default_max_passage_tokens(collection_name: str) -> int:
    """ReasonRank's passage budget for a collection: 512 for BRIGHT and R2MED, else 100.

    Accepts this package's collection names (`bright/biology`, `r2med/Biology`, `scifact/test`)
    and ReasonRank's (`biology`, `r2med_Biology`, `dl19`, `covid`).
    """
    name = collection_name.strip().lower()
    first = name.split("/", 1)[0]
    if first in _LONG_NAMES or first in _BRIGHT_TASKS or first.startswith("r2med_") or first.startswith("bright_"):
        return LONG_PASSAGE_TOKENS
    return SHORT_PASSAGE_TOKENS


def replace_number(text: str) -> str:
    """`[n]` → `(n)`, so passages and queries cannot be mistaken for passage identifiers."""
    return _BRACKETED_NUMBER.sub(r"(\1)", text)


# What ftfy.fix_text switches to for every segment once a segment holding "<" has been seen
# (its unescape_html="auto"); a chat template's first line ("<|im_start|>system") always has one.
_FIX_NO_HTML = TextFixerConfig(explain=False, unescape_html=False)


class _SegmentFixer:
    """`ftfy.fix_text` on a whole rendered prompt, with each line's result cached.

    fix_text fixes a text in independent segments (lines, `\\n` included; longer than
    `max_decode_length` they are split) and, from the first segment containing "<" on, with HTML
    unescaping off. When the first line contains "<", every segment is therefore fixed exactly as
    `fix_text(segment, unescape_html=False)`, which is what is cached: a passage's lines other than
    its first (`[i] …`, whose number changes from window to window) recur in the next window. In any
    other case the text goes to fix_text whole.
    """

    def __init__(self, size: int):
        self.size = size
        self.cache: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, text: str) -> str:
        first_break = text.find("\n") + 1 or len(text)
        limit = _FIX_NO_HTML.max_decode_length
        if "<" not in text[:min(first_break, limit)]:
            return fix_text(text)
        out = []
        pieces = text.split("\n")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if i < last:
                piece += "\n"
            if not piece:
                continue
            if len(piece) > limit:
                out.append(fix_text(piece, _FIX_NO_HTML))
                continue
            fixed = self.cache.get(piece)
            if fixed is None:
                fixed = fix_text(piece, _FIX_NO_HTML)
                with self.lock:
                    if len(self.cache) >= self.size:
                        self.cache.pop(next(iter(self.cache)), None)
                    self.cache[piece] = fixed
            out.append(fixed)
        return "".join(out)


def _fill(template: str, values: dict[str, str]) -> str:
    # One pass, so a query that itself contains "{num}" is left alone.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class PromptTemplate:
    mode: str
    system: str
    prefix: str
    passage: str
    post_prompt: str
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    require_tags: bool = True  # does the model answer inside <answer> tags (see parsing.parse_ranking)
    description: str = ""
    source: str = ""


def load_template(mode: str | Path = "reasonrank") -> PromptTemplate:
    """A bundled template by mode name (one of MODES), or a JSON file with the same keys."""
    if isinstance(mode, Path) or str(mode).endswith(".json"):
        path = Path(mode)
        raw = path.read_text(encoding="utf-8")
        where = str(path)
    else:
        if mode not in MODES:
            raise ConfigError(f"unknown prompt mode {mode!r}; modes: {', '.join(MODES)} (or a path to a .json template)")
        raw = resources.files("reasonrank.prompts").joinpath("templates").joinpath(f"{mode}.json").read_text(encoding="utf-8")
        where = f"{mode}.json"
    data = parse_json(raw, where)
    missing = [k for k in _TEMPLATE_KEYS if not isinstance(data.get(k), str)]
    if missing:
        raise ConfigError(f"{where}: prompt template lacks string field(s) {missing}")
    return PromptTemplate(
        mode=str(data.get("mode", Path(where).stem)),
        system=data["system"],
        prefix=data["prefix"],
        passage=data["passage"],
        post_prompt=data["post_prompt"],
        chat_template_kwargs=dict(data.get("chat_template_kwargs") or {}),
        require_tags=bool(data.get("require_tags", True)),
        description=data.get("description", ""),
        source=data.get("source", ""),
    )


class PromptRenderer:
    """Builds the prompt for one window of candidates.

    `max_passage_tokens=None` keeps passages whole. Truncated passage contents are cached per
    (docid, title, text): the sliding window shows most passages in two windows per pass, and a
    reranker renders thousands of windows. Likewise the final `ftfy.fix_text` of the whole prompt
    reuses each line's result (see _SegmentFixer). Both caches are bounded (`cache_size` entries
    each, oldest evicted first).
    """

    def __init__(self, tokenizer=None, mode: str | Path | PromptTemplate = "reasonrank",
                 max_passage_tokens: int | None = 512, cache_size: int = 20_000):
        if max_passage_tokens is not None and (type(max_passage_tokens) is not int or max_passage_tokens < 1):
            raise ValueError(f"max_passage_tokens must be a positive integer or None, got {max_passage_tokens!r}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size!r}")
        self.tokenizer = tokenizer
        self.template = mode if isinstance(mode, PromptTemplate) else load_template(mode)
        self.mode = self.template.mode
        self.max_passage_tokens = max_passage_tokens
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._fix_prompt = _SegmentFixer(cache_size)

    @property
    def can_template(self) -> bool:
        """Whether prompts get rendered text (a llama-cpp-python server's tokenizer cuts passages but
        cannot template: its prompts go as messages)."""
        return self.tokenizer is not None and getattr(self.tokenizer, "can_template", True)

    @property
    def require_tags(self) -> bool:
        return self.template.require_tags

    @property
    def thinking_switch(self) -> bool | None:
        """Whether the model's chat template has a thinking switch (`enable_thinking`, Qwen3's): True or
        False when the template is known here, None when a server applies a template this side cannot
        read."""
        template = getattr(self.tokenizer, "chat_template", None) if self.tokenizer is not None else None
        if not isinstance(template, str):
            return None
        return "enable_thinking" in template

    def with_template_kwargs(self, **kwargs) -> "PromptRenderer":
        """This renderer with more chat-template arguments (`enable_thinking=False`), sharing the tokenizer
        and, where nothing changes, itself. Variants are kept, so a service asking per request builds each
        once."""
        merged = {**self.template.chat_template_kwargs, **kwargs}
        if merged == self.template.chat_template_kwargs:
            return self
        key = tuple(sorted(merged.items()))
        with self._lock:
            variants = self.__dict__.setdefault("_variants", {})
            variant = variants.get(key)
            if variant is None:
                template = dataclasses.replace(self.template, chat_template_kwargs=merged)
                variant = PromptRenderer(self.tokenizer, template, self.max_passage_tokens, self.cache_size)
                variant._cache = self._cache  # passage cuts do not depend on the template (one dict, a GIL-safe cache)
                variants[key] = variant
        return variant

    # -- passages -------------------------------------------------------------------------

    def passage_content(self, candidate: Candidate) -> str:
        """The passage as it appears after `[i] ` in the prompt."""
        key = (candidate.docid, candidate.title, candidate.text)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        content = self._convert(candidate.content)
        with self._lock:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[key] = content
        return content

    def prepare(self, candidates: Sequence[Candidate]) -> None:
        """Cut the passages of `candidates` not cut yet in one batched tokenizer call (a query's candidates
        when it starts): the driver otherwise tokenizes them one at a time, the largest share of its time
        at scale (benchmarks/results/ray_scale.md). The same cuts passage_content makes one by one."""
        limit, tok = self.max_passage_tokens, self.tokenizer
        if limit is None or tok is None or hasattr(tok, "truncate") or not getattr(tok, "is_fast", False):
            return
        todo = {(c.docid, c.title, c.text): fix_text(c.content.strip()) for c in candidates
                if (c.docid, c.title, c.text) not in self._cache}
        if not todo:
            return
        with self._render_lock:  # a fast tokenizer fails when two threads use it at once
            encoded = tok(list(todo.values()), add_special_tokens=False)
            cut = [replace_number(tok.convert_tokens_to_string(encoded.tokens(i)[:limit])) for i in range(len(todo))]
        with self._lock:
            for key, content in zip(todo, cut):
                if len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)), None)
                self._cache[key] = content

    def _convert(self, content: str) -> str:
        content = fix_text(content.strip())
        limit = self.max_passage_tokens
        if limit is not None:
            if hasattr(self.tokenizer, "truncate"):  # a server's tokenizer (backends.server_tokenizer)
                content = self.tokenizer.truncate(content, limit)
            elif self.tokenizer is not None:
                content = self.tokenizer.convert_tokens_to_string(self.tokenizer.tokenize(content)[:limit])
            else:
                content = " ".join(content.split()[:limit])
        return replace_number(content)

    # -- prompts --------------------------------------------------------------------------

    def _user(self, query: str, body: str, num: str) -> str:
        values = {"num": num, "query": query}
        return _fill(self.template.prefix, values) + body + _fill(self.template.post_prompt, values)

    def _build(self, query: str, candidates: Sequence[Candidate]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(messages with the query ftfy-fixed, messages exactly as upstream templated them)."""
        body = "".join(_fill(self.template.passage, {"rank": str(i), "content": self.passage_content(c)})
                       for i, c in enumerate(candidates, start=1))
        num = str(len(candidates))
        q = replace_number(query).strip()
        fixed_q = fix_text(q)
        system = {"role": "system", "content": self.template.system}
        messages = [system, {"role": "user", "content": self._user(fixed_q, body, num)}]
        raw = messages if fixed_q == q else [system, {"role": "user", "content": self._user(q, body, num)}]
        return messages, raw

    def messages(self, query: str, candidates: Sequence[Candidate]) -> list[dict[str, str]]:
        """System + user message. Upstream fixes the query only as part of the whole rendered
        prompt; here it is fixed in the message too, so a server applying its own chat template
        sees the same words."""
        return self._build(query, candidates)[0]

    def render(self, query: str, candidates: Sequence[Candidate]) -> Prompt:
        """`Prompt(messages, text)`; `text` is None without a tokenizer. Safe from several threads: one
        render at a time (a fast tokenizer fails when two threads use it at once; rendering is cheap
        next to generating)."""
        with self._render_lock:
            return self._render(query, candidates)

    def _render(self, query: str, candidates: Sequence[Candidate]) -> Prompt:
        messages, raw = self._build(query, candidates)
        kwargs = dict(self.template.chat_template_kwargs)
        if not self.can_template:
            return Prompt(messages, None, kwargs)
        # Byte-identical to upstream: the template over the unfixed query, then the whole string fixed.
        text = self.tokenizer.apply_chat_template(raw, tokenize=False, add_generation_prompt=True, **kwargs)
        return Prompt(messages, self._fix_prompt(text), kwargs)
