"""Pointwise reasoning reranker in the style of Rank1: one prompt per (query, passage), a true/false judgement.

Rank1 (Weller et al., arXiv 2502.18418; github.com/orionw/rank1) prompts with
`Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.`
then `Query: …`, `Passage: …` and an opened `<think>`; the model reasons, closes `</think>` and writes
` true` or ` false`. Its score is the probability of " true" renormalised over the two judgement
tokens at that position: exp(lp_true) / (exp(lp_true) + exp(lp_false)). A reply that never reached a
judgement (token budget) is cut back to its last complete sentence, `\\n</think>` is appended and the
judgement is read at the next token. The prompt wording is data: `prompts/templates/pointwise_*.json`
(`rank1`: Rank1's raw text, for the rank1 models; `rank1-chat`: the same words inside the model's chat
template with the assistant turn prefilled with `<think>`, for instruct models such as the embedded
Qwen2.5-Coder-0.5B-Instruct).

How one pair is judged here (two backend requests per pair; one when the reasoning budget is 0):

1. reasoning: `backend.generate(prompt, max_new_tokens=think_tokens, stop=[</think>])`, greedy;
2. judgement prompt: the prompt + the reasoning + `</think>`. When the reasoning stopped on the token
   budget (finish_reason "length") it is first cut back to its last `.`, `!` or `?` and
   `cut_separator` (a newline) goes before `</think>` (Rank1's fix for incomplete replies; Rank1 also
   re-strips the reasoning's start, this keeps it as generated so llama.cpp can reuse its KV cache);
3. the score, with a backend that has `next_token_logprobs` (llama.cpp, transformers, vLLM; declared in
   `capabilities.logprobs`): log-probabilities of the
   first token of " true" and of " false" as the next token after the judgement prompt, and
       score = P(true) / (P(true) + P(false)) = 1 / (1 + exp(lp_false - lp_true)),
   a probability in [0, 1]; other tokens' mass (a newline, "True", …) is ignored, as Rank1 does by
   reading only those two tokens;
4. without log-probabilities (OpenAI-compatible backends here, or scoring="label") the judgement is
   generated (`answer_tokens` tokens, greedy) and parsed: the first word `true` or `false`
   (case-insensitive) gives score 1.0 or 0.0; no such word is a parse failure with score 0.5. With
   messages only (an HTTP chat backend without a tokenizer, so no prefill is possible) a single call
   of `think_tokens + answer_tokens` is made and the label read after the last `</think>`, else from
   the whole reply.

Ordering: candidates are sorted by score, highest first, with a stable sort, so equal scores (labels,
or the 0.5 of a failed judgement) keep their first-stage order. Candidates past `top_k` are not judged;
they follow in first-stage order with scores -1, -2, …. A backend error scores 0.5 and is counted.
Note that trec_eval breaks equal scores by doc id, not by list order: to evaluate a list whose tie
order matters, build the run from positions (as `reasonrank.compare` does), not from the scores.

Batching: all (query, passage) pairs of all requests are judged in one flat, query-major list, sent to
the backend `batch_size` pairs at a time (step 1 for the batch, then step 3/4 for the batch). For
llama.cpp the default batch size is 1: llama.cpp evaluates prompts one after another anyway, and judging
a pair right after its reasoning lets llama-cpp-python reuse the KV cache of prompt + reasoning, so the
judgement costs a handful of new tokens instead of a second prefill. Other backends default to 64.

Counting (`PointwiseStats`): calls are backend requests (2 per pair with reasoning, 1 without);
prompt tokens are each pair's prompt once plus the few tokens appended for the judgement (the
reasoning is counted once, as generated tokens); generated tokens are the reasoning plus the
judgement token(s); parse failures are pairs that got the fallback score 0.5 (no label, no logits,
or a backend error).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from reasonrank.backends.base import Backend, Generation, SamplingParams
from reasonrank.errors import ConfigError, parse_json
from reasonrank.types import Candidate, Prompt, Query, Request, Result

TRUE_SCORE, FALSE_SCORE, UNPARSED_SCORE = 1.0, 0.0, 0.5
OK, UNPARSED, BACKEND_ERROR = "ok", "unparsed", "backend_error"
POINTWISE_TEMPLATES = ("rank1", "rank1-chat")
_TEMPLATE_KEYS = ("user", "think_open", "think_close", "true", "false")
_LABEL = re.compile(r"\b(true|false)\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(query|passage)\}")


# -- template --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PointwiseTemplate:
    mode: str
    user: str
    think_open: str
    think_close: str
    true: str
    false: str
    system: str = ""
    chat: bool = True
    cut_separator: str = "\n"
    description: str = ""
    source: str = ""


def load_pointwise_template(name: str | Path = "rank1-chat") -> PointwiseTemplate:
    """A bundled template (`rank1`, `rank1-chat`) or a JSON file with the same keys."""
    if isinstance(name, Path) or str(name).endswith(".json"):
        path = Path(name)
        raw, where = path.read_text(encoding="utf-8"), str(path)
    else:
        if name not in POINTWISE_TEMPLATES:
            raise ConfigError(f"unknown pointwise template {name!r}; bundled: {', '.join(POINTWISE_TEMPLATES)} (or a .json path)")
        fname = f"pointwise_{str(name).replace('-', '_')}.json"
        raw = resources.files("reasonrank.prompts").joinpath("templates").joinpath(fname).read_text(encoding="utf-8")
        where = fname
    data = parse_json(raw, where)
    missing = [k for k in _TEMPLATE_KEYS if not isinstance(data.get(k), str)]
    if missing:
        raise ConfigError(f"{where}: pointwise template lacks string field(s) {missing}")
    if "{passage}" not in data["user"]:
        raise ConfigError(f"{where}: the user text must contain {{passage}}")
    return PointwiseTemplate(
        mode=str(data.get("mode", Path(where).stem)), user=data["user"], think_open=data["think_open"],
        think_close=data["think_close"], true=data["true"], false=data["false"], system=data.get("system", "") or "",
        chat=bool(data.get("chat", True)), cut_separator=data.get("cut_separator", "\n"),
        description=data.get("description", ""), source=data.get("source", ""),
    )


class PointwisePrompter:
    """Renders the prompt for one (query, passage) pair.

    The passage is Rank1's `"{title} {text}"` (the bare text without a title), cut to the first
    `max_passage_tokens` tokens of the model's tokenizer (whitespace words without a tokenizer);
    None keeps it whole."""

    def __init__(self, tokenizer=None, template: str | Path | PointwiseTemplate = "rank1-chat", max_passage_tokens: int | None = 512):
        if max_passage_tokens is not None and (type(max_passage_tokens) is not int or max_passage_tokens < 1):
            raise ValueError(f"max_passage_tokens must be a positive integer or None, got {max_passage_tokens!r}")
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, PointwiseTemplate) else load_pointwise_template(template)
        self.max_passage_tokens = max_passage_tokens
        self._cache: dict[tuple[str, str, str], str] = {}

    def passage(self, c: Candidate) -> str:
        key = (c.docid, c.title, c.text)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        text = f"{c.title} {c.text}".strip() if c.title else c.text.strip()
        limit = self.max_passage_tokens
        if limit is not None:
            if self.tokenizer is not None:
                text = self.tokenizer.convert_tokens_to_string(self.tokenizer.tokenize(text)[:limit])
            else:
                text = " ".join(text.split()[:limit])
        if len(self._cache) >= 50_000:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = text
        return text

    def messages(self, query: str, c: Candidate) -> list[dict[str, str]]:
        values = {"query": query.strip(), "passage": self.passage(c)}
        user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template.user)  # one pass: "{passage}" in a query stays
        msgs = [{"role": "system", "content": self.template.system}] if self.template.system else []
        return msgs + [{"role": "user", "content": user}]

    def render(self, query: str, c: Candidate) -> Prompt:
        """`Prompt(messages, text)`: text ends with the opened think tag, where generation starts.
        With a chat template and no tokenizer, text is None (an HTTP chat server templates it)."""
        msgs = self.messages(query, c)
        t = self.template
        if not t.chat:
            return Prompt(msgs, "".join(m["content"] for m in msgs) + t.think_open)
        if self.tokenizer is None:
            return Prompt(msgs, None)
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return Prompt(msgs, text + t.think_open)


# -- records ---------------------------------------------------------------------------------------

@dataclass
class Judgement:
    """One (query, passage) judgement, enough to audit it."""

    qid: str
    docid: str
    first_stage_rank: int  # 0-based position in the input list
    score: float
    status: str  # ok | unparsed | backend_error
    label: str = ""  # "true" / "false" from a parsed answer; "" when scored by log-probabilities or unparsed
    logprob_true: float | None = None
    logprob_false: float | None = None
    reasoning: str = ""
    cut: bool = False  # the reasoning hit the token budget and was cut back before the judgement
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    seconds: float = 0.0
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PointwiseStats:
    queries: int = 0
    pairs: int = 0
    calls: int = 0
    status: Counter = field(default_factory=Counter)
    cut_reasoning: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0

    def add(self, j: Judgement) -> None:
        self.pairs += 1
        self.calls += j.calls
        self.status[j.status] += 1
        self.cut_reasoning += int(j.cut)
        self.prompt_tokens += j.prompt_tokens
        self.completion_tokens += j.completion_tokens

    @property
    def failures(self) -> int:
        return self.status[UNPARSED] + self.status[BACKEND_ERROR]

    def usage(self) -> dict:
        """The counters `reasonrank.compare` reads (units: judged pairs)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "calls": self.calls,
                "failures": self.failures, "units": self.pairs}

    def to_dict(self) -> dict:
        q = max(self.queries, 1)
        return {
            "queries": self.queries, "pairs": self.pairs, "calls": self.calls, "status": dict(self.status),
            "cut_reasoning": self.cut_reasoning, "parse_failure_rate": self.failures / self.pairs if self.pairs else 0.0,
            "seconds_per_query": self.wall_seconds / q, "prompt_tokens_per_query": self.prompt_tokens / q,
            "completion_tokens_per_query": self.completion_tokens / q, "calls_per_query": self.calls / q,
            "wall_seconds": self.wall_seconds, "model_seconds": self.model_seconds,
        }


def probability_true(lp_true: float, lp_false: float) -> float:
    """exp(lp_true) / (exp(lp_true) + exp(lp_false)), computed stably."""
    d = lp_false - lp_true
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


def parse_label(text: str) -> float | None:
    """1.0 for a first true/false word `true`, 0.0 for `false` (case-insensitive), None for neither."""
    m = _LABEL.search(text or "")
    if m is None:
        return None
    return TRUE_SCORE if m.group(1).lower() == "true" else FALSE_SCORE


def cut_to_sentence(text: str) -> str:
    """Rank1's repair of a reply cut by the budget: trailing space dropped and, unless it already
    ends a sentence, everything after the last `.`, `!` or `?` (kept whole when it has none)."""
    text = text.rstrip()
    if not text.endswith((".", "!", "?")):
        last = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
        if last != -1:
            text = text[: last + 1]
    return text


# -- reranker --------------------------------------------------------------------------------------

class PointwiseReranker:
    """Rank1-style pointwise reranker over any backend; `rerank(query, passages)` / `rerank_batch(requests)`.

    think_tokens: the reasoning budget per pair (0: judge right after the opened and closed think tag).
    answer_tokens: tokens generated for the judgement when the backend has no log-probabilities.
    scoring: "auto" (log-probabilities when the backend declares them, `capabilities.logprobs`), "logprobs" or "label".
    batch_size: pairs per backend request batch; None: the backend's own batch size (`capabilities.batch_size`:
    1 for llama.cpp, so a pair's judgement reuses its reasoning's KV cache), else 64.
    """

    def __init__(
        self,
        backend: Backend,
        prompter: PointwisePrompter,
        *,
        top_k: int = 100,
        think_tokens: int = 256,
        answer_tokens: int = 4,
        scoring: str = "auto",
        batch_size: int | None = None,
        progress: bool = False,
    ):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if think_tokens < 0 or answer_tokens < 1:
            raise ValueError("think_tokens must be >= 0 and answer_tokens >= 1")
        if scoring not in ("auto", "logprobs", "label"):
            raise ValueError(f"scoring must be auto, logprobs or label, got {scoring!r}")
        caps = backend.capabilities
        if scoring == "logprobs" and not caps.logprobs:
            raise ValueError(f"backend {backend.name!r} returns no log-probabilities; use scoring='label'")
        self.backend, self.prompter = backend, prompter
        self.top_k, self.think_tokens, self.answer_tokens = top_k, think_tokens, answer_tokens
        self.use_logprobs = caps.logprobs if scoring == "auto" else scoring == "logprobs"
        # an engine that runs prompts one at a time (llama.cpp) judges a pair right after its reasoning (KV reuse)
        self.batch_size = batch_size or caps.batch_size or 64
        self.progress = progress
        self.stats = PointwiseStats()
        self.judgements: list[Judgement] = []  # of the last rerank_batch call
        t = prompter.template
        self._suffix_tokens = {cut: self._count(("" if not cut else t.cut_separator) + t.think_close) for cut in (False, True)}

    @property
    def template(self) -> PointwiseTemplate:
        return self.prompter.template

    def _count(self, text: str) -> int:
        tok = self.prompter.tokenizer
        if tok is None:
            return max(1, len(text.split()))
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def rerank(self, query: Query | str, candidates: Sequence[Candidate]) -> Result:
        if isinstance(query, str):
            query = Query("q", query)
        return self.rerank_batch([Request(query, list(candidates))])[0]

    def rerank_stream(self, requests: Iterable[Request], active: int | None = 256, total_windows: int | None = None) -> Iterator[Result]:
        """Results of `requests` (read lazily) in order, `active` queries judged together (None: all);
        ListwiseReranker.rerank_stream's signature. Judgements have no order between them to wait for."""
        group: list[Request] = []
        for request in requests:
            group.append(request)
            if active is not None and len(group) >= active:
                yield from self.rerank_batch(group)
                group = []
        if group:
            yield from self.rerank_batch(group)

    def rerank_batch(self, requests: Sequence[Request]) -> list[Result]:
        started = time.perf_counter()
        jobs = [(ri, pos) for ri, r in enumerate(requests) for pos in range(min(self.top_k, len(r.candidates)))]
        judged: dict[tuple[int, int], Judgement] = {}
        bar = _progress(len(jobs), self.progress)
        for s in range(0, len(jobs), self.batch_size):
            chunk = jobs[s:s + self.batch_size]
            for key, j in zip(chunk, self._judge([(requests[ri], pos) for ri, pos in chunk])):
                judged[key] = j
                self.stats.add(j)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(**{k: v for k, v in self.stats.status.items()})
        if bar is not None:
            bar.close()
        results = []
        self.judgements = [judged[k] for k in jobs]
        for ri, r in enumerate(requests):
            k = min(self.top_k, len(r.candidates))
            head = [(judged[(ri, pos)].score, pos) for pos in range(k)]
            head.sort(key=lambda sp: -sp[0])  # stable: equal scores keep first-stage order
            ordered = [_with_score(r.candidates[pos], score) for score, pos in head]
            ordered += [_with_score(c, -float(i + 1)) for i, c in enumerate(r.candidates[k:])]
            results.append(Result(r.query, ordered))
        self.stats.queries += len(requests)
        self.stats.wall_seconds += time.perf_counter() - started
        return results

    # -- one batch of pairs ---------------------------------------------------------------------

    def _judge(self, pairs: list[tuple[Request, int]]) -> list[Judgement]:
        prompts = [self.prompter.render(r.query.text, r.candidates[pos]) for r, pos in pairs]
        out = [Judgement(r.query.qid, r.candidates[pos].docid, pos, UNPARSED_SCORE, UNPARSED) for r, pos in pairs]
        if any(p.text is None for p in prompts):
            return self._judge_messages(prompts, out)
        t = self.template
        judge_texts = [p.text + t.think_close for p in prompts]
        active = list(range(len(pairs)))
        if self.think_tokens > 0:
            gens = self._generate(prompts, SamplingParams(max_new_tokens=self.think_tokens, stop=[t.think_close]))
            active = []
            for i, (p, g) in enumerate(zip(prompts, gens)):
                j = out[i]
                j.calls, j.seconds, j.prompt_tokens, j.completion_tokens = 1, g.seconds, g.prompt_tokens, g.completion_tokens
                if g.error:
                    j.status, j.error = BACKEND_ERROR, g.error
                    continue
                j.cut = g.finish_reason == "length"
                j.reasoning = cut_to_sentence(g.text) if j.cut else g.text
                judge_texts[i] = p.text + j.reasoning + (t.cut_separator if j.cut else "") + t.think_close
                active.append(i)
        if not active:
            return out
        judge_prompts = [Prompt(prompts[i].messages, judge_texts[i]) for i in active]
        if self.use_logprobs:
            t0 = time.perf_counter()
            dists = self.backend.next_token_logprobs(judge_prompts, candidates=[t.true, t.false], top_k=2)
            self.stats.model_seconds += time.perf_counter() - t0
            for i, d in zip(active, dists):
                j = out[i]
                j.calls += 1
                if self.think_tokens > 0:
                    j.prompt_tokens += self._suffix_tokens[j.cut]
                    j.completion_tokens += 1
                else:
                    j.prompt_tokens, j.completion_tokens = d.prompt_tokens, 1
                if d.error or t.true not in d.candidates or t.false not in d.candidates:
                    j.status, j.error = BACKEND_ERROR, d.error or "no log-probabilities for the judgement tokens"
                    continue
                j.logprob_true, j.logprob_false = d.candidates[t.true], d.candidates[t.false]
                j.score, j.status = probability_true(j.logprob_true, j.logprob_false), OK
        else:
            answers = self._generate(judge_prompts, SamplingParams(max_new_tokens=self.answer_tokens))
            for i, g in zip(active, answers):
                j = out[i]
                j.calls += 1
                j.seconds += g.seconds
                j.prompt_tokens += self._suffix_tokens[j.cut] if self.think_tokens > 0 else g.prompt_tokens
                j.completion_tokens += g.completion_tokens
                if g.error:
                    j.status, j.error = BACKEND_ERROR, g.error
                    continue
                self._set_label(j, g.text)
        return out

    def _judge_messages(self, prompts: list[Prompt], out: list[Judgement]) -> list[Judgement]:
        """No rendered text (chat server without a tokenizer): one call, the label parsed from the reply."""
        gens = self._generate(prompts, SamplingParams(max_new_tokens=self.think_tokens + self.answer_tokens))
        close = self.template.think_close
        for j, g in zip(out, gens):
            j.calls, j.seconds, j.prompt_tokens, j.completion_tokens = 1, g.seconds, g.prompt_tokens, g.completion_tokens
            if g.error:
                j.status, j.error = BACKEND_ERROR, g.error
                continue
            text = g.full_text
            j.cut = g.finish_reason == "length"
            if close in text:
                j.reasoning, _, answer = text.rpartition(close)
            else:
                answer = text
            self._set_label(j, answer)
        return out

    @staticmethod
    def _set_label(j: Judgement, answer: str) -> None:
        label = parse_label(answer)
        if label is None:
            j.status = UNPARSED
            j.score = UNPARSED_SCORE
        else:
            j.status, j.score, j.label = OK, label, "true" if label == TRUE_SCORE else "false"

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        t0 = time.perf_counter()
        gens = self.backend.generate(prompts, params)
        self.stats.model_seconds += time.perf_counter() - t0
        return gens

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: str | None = None,
        backend: str | None = None,
        *,
        template: str | Path | None = None,
        max_passage_tokens: int | None = 512,
        tokenizer: str | None = None,
        engine: Backend | None = None,
        **kwargs,
    ) -> PointwiseReranker:
        """Like `reasonrank.rerankers.Reranker`, through the same `build(spec)` with method "pointwise": with no
        model, the embedded Qwen2.5-Coder-0.5B GGUF on llama.cpp. `template` (the spec's mode) defaults to
        `rank1` for a model whose name contains "rank1" (trained on the raw prompt), else `rank1-chat`.
        Pass `engine` to share an already loaded backend. `top_k`, `think_tokens` (the spec's
        max_new_tokens) and `progress` are the spec's; `answer_tokens`, `scoring` and `batch_size` set the
        reranker's own; any other option goes to the backend's constructor."""
        from reasonrank.spec import RerankerSpec, build

        own = {k: kwargs.pop(k) for k in ("answer_tokens", "scoring", "batch_size") if k in kwargs}
        if "think_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("think_tokens")
        spec = RerankerSpec.from_options(model, backend, method="pointwise", mode=None if template is None else str(template),
                                         max_passage_tokens=0 if max_passage_tokens is None else max_passage_tokens,
                                         tokenizer=tokenizer, **kwargs)
        reranker = build(spec, backend=engine)
        if own:  # settings a spec does not carry: the same engine and prompter, reranked with them
            built = reranker
            reranker = cls(built.backend, built.prompter, **{"top_k": built.top_k, "think_tokens": built.think_tokens,
                                                             "progress": built.progress, **own})
            reranker.spec = built.spec
        return reranker


def _with_score(c: Candidate, score: float) -> Candidate:
    return Candidate(c.docid, float(score), c.text, c.title)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", dynamic_ncols=True)


__all__ = [
    "Judgement", "PointwisePrompter", "PointwiseReranker", "PointwiseStats", "PointwiseTemplate", "cut_to_sentence",
    "load_pointwise_template", "parse_label", "probability_true",
]
