"""Read a ranking out of a model's reply and turn it into a full permutation of the window.

The parser never raises on model output and never reorders a window silently: whatever the reply,
`ParseResult.permutation` is a permutation of `range(n)`, and when no usable identifier was found it
is the identity (the window keeps its input order) with status NO_ANSWER or TRUNCATED.

Extraction (reasoning models, `require_tags=True`), first match wins:
  1. `<think>(.*?)</think>\\s*<answer>(.*?)</answer>` (DOTALL, case-insensitive like ReasonRank's
     `_clean_response`, which matches on `response.lower()`);
  2. the text after the last `<answer>` (up to a following `</answer>`);
  3. the text after the last `</think>`;
  4. an opened `<think>` that never closed: no answer (the reasoning was cut off or abandoned);
  5. no tags at all: the whole reply is read as the answer (REPAIRED), unless the reply stopped on
     the token budget (finish_reason "length"): a cut-off reply without tags is reasoning, and reading
     the passage numbers it mentions as a ranking would reorder the window on noise, so it is
     TRUNCATED.
Steps 2, 3 and 5 are repairs. With `require_tags=False` (RankGPT-style prompts) the answer may be
anywhere: a tagged answer or the text after `</think>` is used when present, else the whole reply,
and none of that counts as a repair.

Identifiers: the answer is NFKC-normalised (fullwidth `［３］`, circled and superscript digits) and any
remaining Unicode decimal digit (Arabic-Indic, Devanagari, …) mapped to ASCII; then bracketed numbers
`[n]` are read left to right, so `=` ties are broken in reading order. Only when the answer holds no
bracketed number at all are bare numbers read (what RankLLM's parser does with every reply); a
stray number in prose could then be read as an id, so that is reported as a repair. The first
occurrence of each id is kept, ids outside 1..n are dropped, and ids the answer missed are appended
in their input order.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum


class ParseStatus(str, Enum):
    OK = "ok"
    REPAIRED = "repaired"
    NO_ANSWER = "no_answer"
    TRUNCATED = "truncated"


@dataclass
class ParseResult:
    permutation: list[int]  # 0-based positions in the window; always a full permutation of range(n)
    status: ParseStatus
    reasoning: str
    answer: str
    detail: str  # what was repaired, human readable; "" for a clean answer

    @property
    def ok(self) -> bool:
        return self.status is ParseStatus.OK


_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\s*([0-9]+)\s*\]")
_BARE = re.compile(r"[0-9]+")
_TIE = re.compile(r"\]\s*=\s*\[")


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def _strip_think(text: str) -> str:
    return _THINK_CLOSE.sub("", _THINK_OPEN.sub("", text)).strip()


# How the answer was found; every kind but EXPECTED is a repair when tags are required.
EXPECTED, AFTER_ANSWER_TAG, AFTER_THINK, UNCLOSED_THINK, UNTAGGED = range(5)
_HOW = {
    AFTER_ANSWER_TAG: "answer taken after the last <answer> tag",
    AFTER_THINK: "answer taken after </think> without <answer> tags",
    UNCLOSED_THINK: "reasoning never closed (no </think>)",
    UNTAGGED: "no <think>/<answer> tags; whole reply read as the answer",
}


def _full_match(text: str) -> tuple[str, str] | None:
    """`re.search(r"<think>(.*?)</think>\\s*<answer>(.*?)</answer>", text, DOTALL | IGNORECASE)`,
    groups 1 and 2, without the regex: on a degenerate reply that repeats the tags (small models do,
    until the token limit) that pattern backtracks in cubic time.

    Only the first <think> can start a match (a later one sees a subset of the same closing tags);
    group 1 ends at the first </think> followed by whitespace, an <answer>, and later an </answer>;
    group 2 ends at the first </answer> after that.
    """
    think = _THINK_OPEN.search(text)
    ends = [m.start() for m in _ANSWER_CLOSE.finditer(text)]
    if think is None or not ends:
        return None
    last_end = ends[-1]
    for close in _THINK_CLOSE.finditer(text, think.end()):
        pos = close.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
        opened = _ANSWER_OPEN.match(text, pos)
        if opened is None:
            continue
        if last_end < opened.end():
            return None  # no </answer> after this or any later <answer>
        end = ends[bisect.bisect_left(ends, opened.end())]
        return text[think.end():close.start()], text[opened.end():end]
    return None


def _extract(text: str) -> tuple[str, str | None, int]:
    """(reasoning, answer or None, how)."""
    full = _full_match(text)
    if full:
        return full[0].strip(), full[1].strip(), EXPECTED
    answer_open = _last(_ANSWER_OPEN, text)
    if answer_open:
        rest = text[answer_open.end():]
        close = _ANSWER_CLOSE.search(rest)
        answer = rest[: close.start()] if close else rest
        return _strip_think(text[: answer_open.start()]), answer.strip(), AFTER_ANSWER_TAG
    think_close = _last(_THINK_CLOSE, text)
    if think_close:
        return _strip_think(text[: think_close.start()]), text[think_close.end():].strip(), AFTER_THINK
    think_open = _THINK_OPEN.search(text)
    if think_open:
        return text[think_open.end():].strip(), None, UNCLOSED_THINK
    return "", text.strip(), UNTAGGED


def _ascii_digits(text: str) -> tuple[str, bool]:
    """NFKC plus Unicode decimal digits → ASCII. Returns the text and whether anything changed."""
    normal = unicodedata.normalize("NFKC", text)
    out = []
    for ch in normal:
        if not ("0" <= ch <= "9"):
            value = unicodedata.decimal(ch, None)
            if value is not None:
                ch = str(value)
        out.append(ch)
    mapped = "".join(out)
    # NFKC also rewrites things unrelated to ids (ligatures, ellipses…); report only a digit change.
    changed = _BRACKETED.findall(mapped) != _BRACKETED.findall(text) or _BARE.findall(mapped) != _BARE.findall(text)
    return mapped, changed


def _identity(n: int, status: ParseStatus, reasoning: str, answer: str, detail: str) -> ParseResult:
    return ParseResult(list(range(n)), status, reasoning, answer, detail)


def parse_ranking(text: str, n: int, finish_reason: str = "", require_tags: bool = True) -> ParseResult:
    """Parse a listwise ranking reply for a window of `n` passages (see the module docstring)."""
    if n < 0:
        raise ValueError(f"window size n must be >= 0, got {n}")
    text = text or ""
    truncated = (finish_reason or "").lower() == "length"
    reasoning, answer, how = _extract(text)

    def no_answer(why: str) -> ParseResult:
        if truncated:
            return _identity(n, ParseStatus.TRUNCATED, reasoning, answer or "",
                             f"output hit the token limit before an answer ({why}); window order kept")
        return _identity(n, ParseStatus.NO_ANSWER, reasoning, answer or "", f"{why}; window order kept")

    if answer is None:
        return no_answer(_HOW[how])
    if how == UNTAGGED and truncated and require_tags:
        # A cut-off reply without any tag is unfinished reasoning, not a ranking.
        return _identity(n, ParseStatus.TRUNCATED, answer, "",
                         "output hit the token limit without <think>/<answer> tags; window order kept")

    repairs: list[str] = [_HOW[how]] if require_tags and how != EXPECTED else []
    mapped, digits_changed = _ascii_digits(answer)
    if digits_changed:
        repairs.append("look-alike digits or brackets normalised to ASCII")
    digits = _BRACKETED.findall(mapped)
    if not digits:
        digits = _BARE.findall(mapped)
        if digits:
            repairs.append("no bracketed ids; bare numbers read as ids")
    if not digits:
        return no_answer("no passage identifier in the answer" if answer.strip() else "empty answer")
    # A thousand-digit "id" must not reach int() (Python caps int parsing at 4300 digits).
    ids = [int(d) if len(d) <= 12 else -1 for d in digits]
    if not any(1 <= i <= n for i in ids):
        return no_answer(f"no identifier within 1..{n} in the answer")

    seen: set[int] = set()
    order: list[int] = []
    duplicates: list[int] = []
    out_of_range: list[str] = []
    for i, d in zip(ids, digits):
        if not 1 <= i <= n:
            out_of_range.append(d if len(d) <= 12 else d[:12] + "…")
        elif i in seen:
            duplicates.append(i)
        else:
            seen.add(i)
            order.append(i - 1)
    missing = [p for p in range(n) if p + 1 not in seen]
    if duplicates:
        repairs.append("duplicate ids dropped: " + ", ".join(f"[{i}]" for i in _unique(duplicates)))
    if out_of_range:
        repairs.append(f"ids outside 1..{n} dropped: " + ", ".join(f"[{i}]" for i in _unique(out_of_range)))
    if missing:
        repairs.append("missing ids appended in input order: " + ", ".join(f"[{p + 1}]" for p in missing))
        if truncated:
            repairs.append("output hit the token limit")
    permutation = order + missing
    notes = []
    if _TIE.search(mapped):
        notes.append("ties '=' broken left to right")
    status = ParseStatus.REPAIRED if repairs else ParseStatus.OK
    return ParseResult(permutation, status, reasoning, answer, "; ".join(repairs + notes))


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def format_permutation(perm: list[int]) -> str:
    """0-based permutation → `[i] > [j] > …` (1-based), the answer format of the training data."""
    return " > ".join(f"[{p + 1}]" for p in perm)


# -- what a run does with a reply cut by its budget (the spec's on_truncation) ------------------------------

FORCED = "forced"  # cut in its reasoning, then answered by a forced continuation (force)
PAPER_FALLBACK = "paper_fallback"  # no answer: the numbers of the whole reply, as ReasonRank's code reads it (paper)
MODEL_ORDER = ("ok", "repaired", FORCED)  # statuses whose order the model made as an answer
FORCE_OPEN = "</think>\n<answer>"  # what a forced continuation appends to the cut reasoning

# a sentence ends at . ! ? (or their CJK forms) followed by a space, a closing quote or bracket, or the
# end; or at a line break
_PARTIAL_TAG = re.compile(r"<[/a-zA-Z]{0,7}$")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f](?=[\s\"'\u201d\u2019)\]]|$)|\n")


def cut_reasoning(text: str) -> str:
    """The reasoning of a reply the budget cut, ending at its last complete sentence.

    The reply's text before its first `</think>` (all of it when there is none), cut after the last
    sentence end (`.`, `!`, `?` before a space, a quote, a bracket or the end; or a line break), so the
    forced answer does not continue a half-written thought. A reply with no sentence end at all is
    kept whole: there is nothing complete to cut back to."""
    close = _THINK_CLOSE.search(text)
    head = text[:close.start()] if close else text
    head = _PARTIAL_TAG.sub("", head)  # "... </" cut inside a tag: not the reasoning's
    end = None
    for end in _SENTENCE_END.finditer(head):
        pass
    return head[:end.end()] if end is not None else head


def forced_prefix(text: str) -> str:
    """What follows the prompt in a forced continuation: the cut reasoning, then `</think>\\n<answer>`."""
    return cut_reasoning(text) + FORCE_OPEN


_OPENED_ID = re.compile(r"\[\s*[0-9]")


def parse_forced(answer: str, n: int, finish_reason: str = "") -> ParseResult:
    """The ranking of a forced answer (the model's text after `<answer>`): read as the answer of a tagged
    reply, so bracketed ids, first mention, out-of-range and duplicate ids dropped, missing ids appended.
    Status OK or REPAIRED when it holds an id of the window, else NO_ANSWER/TRUNCATED (window order).

    Stricter than a reply's answer in one way: it must hold a bracketed id (`[3]`, or `[3` cut by the
    answer budget). A short forced answer in prose ("IRG1 has") would otherwise have its stray digits
    read as a ranking through the bare-number repair."""
    parsed = parse_ranking("<answer>" + (answer or ""), n, finish_reason, require_tags=True)
    if parsed.status in (ParseStatus.OK, ParseStatus.REPAIRED) and not _OPENED_ID.search(_ascii_digits(parsed.answer)[0]):
        return _identity(n, ParseStatus.NO_ANSWER, "", parsed.answer, "forced answer without a bracketed passage id; window order kept")
    return parsed


def _upstream_answer(lowered: str) -> str | None:
    """Group 1 of `re.search(r'<think>.*?</think>\\s*<answer>(.*?)</answer>', lowered, re.DOTALL)`, case-
    sensitive as upstream matches it (on `response.lower()`), without the regex's backtracking on replies
    that repeat the tags (see `_full_match`: only the first <think> can start a match; the lazy groups end
    at the first qualifying </think> and the first </answer> after it)."""
    think = lowered.find("<think>")
    if think < 0:
        return None
    pos = think + len("<think>")
    while True:
        close = lowered.find("</think>", pos)
        if close < 0:
            return None
        j = close + len("</think>")
        while j < len(lowered) and lowered[j].isspace():  # `\s` of a str pattern is str.isspace
            j += 1
        if lowered.startswith("<answer>", j):
            end = lowered.find("</answer>", j + len("<answer>"))
            return None if end < 0 else lowered[j + len("<answer>"):end]
        pos = close + 1


def paper_permutation(text: str, n: int, reasoning_prompt: bool = True) -> list[int]:
    """The window order ReasonRank's own code reads out of a reply, exactly.

    8421BCD/ReasonRank, rerank/rankllm.py: `RankLLM.receive_permutation` calls `_clean_response` then
    `_remove_duplicate`:
      1. reasoning prompt modes (rank_GPT_reasoning, rank_GPT_qwen3; here `reasoning_prompt`, the
         templates with `require_tags`): `re.search(r'<think>.*?</think>\\s*<answer>(.*?)</answer>',
         response.lower(), re.DOTALL)` (`listwise_prompt_r1.toml`'s pattern); a match keeps group 1,
         stripped; else, if `'<answer>' in response` (case-sensitive, on the reply as written), the text
         after its last `<answer>`; else the whole reply, reasoning included ('the reasoning length is too
         long'). Other modes (rank_GPT): always the whole reply.
      2. every character that is not `str.isdigit()` becomes a space; the rest is split on whitespace and
         each piece read with `int(x) - 1`; if one piece does not parse (a digit `isdigit` accepts but
         `int` does not, such as `²` or `①`) the window keeps its order ('unexcepted output!').
      3. duplicates dropped (first mention kept), positions outside the window dropped (0 and n+1...),
         the window's missing positions appended in input order.
    So a reply cut in its reasoning is ranked by the order in which its reasoning first mentions the
    passages' numbers, any number (a year, a count) that happens to fall in 1..n included."""
    response = text or ""
    if reasoning_prompt:
        answer = _upstream_answer(response.lower())
        if answer is not None:
            response = answer.strip()
        elif "<answer>" in response:
            response = response.split("<answer>")[-1]
    cleaned = "".join(c if c.isdigit() else " " for c in response).strip()
    try:
        ids = [int(x) - 1 for x in cleaned.split()]
    except ValueError:  # upstream prints 'unexcepted output!' and returns the window unchanged
        return list(range(n))
    order = [p for p in dict.fromkeys(ids) if 0 <= p < n]
    seen = set(order)
    return order + [p for p in range(n) if p not in seen]
