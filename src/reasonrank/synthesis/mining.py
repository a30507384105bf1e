"""Positive mining: the prompt (wording in templates/mining.json) and a robust reader of the reply.

The teacher sees the query, the reference answer where there is one, and a numbered list of
candidates, and lists the relevant identifiers: `<answer>[2], [5]</answer>` or `<answer>none</answer>`.

`parse_mining(text, n, finish_reason)` never raises. It looks for the answer, in order: inside the
last `<answer>…</answer>` (or after a final unclosed `<answer>`), after the last `</think>`, or, when
the reply has no tags and was not cut off, the whole reply. In the answer it reads `[i]` ids; when
there are none, bare numbers (`2, 5` or a JSON list); a "none"-style answer is an explicit empty
list. Ids outside 1..n are dropped and reported. No answer at all (reasoning cut by the token limit,
an empty reply, prose without ids) is a parse failure, never "no positives".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from reasonrank.errors import ConfigError, parse_json
from reasonrank.types import Candidate

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\s*(\d{1,9})\s*\]")
_BARE = re.compile(r"(?<![\w.])(\d{1,9})(?![\w.])")
_NONE = re.compile(r"^\W*(none|no relevant passages?|no passages? (is|are) relevant|nothing|n/?a|empty|\[\s*\])\W*$", re.IGNORECASE)
_MINING_PLACEHOLDER = re.compile(r"\{(query|num|passages|answer_block|answer_hint|answer|rank|content)\}")


@dataclass(frozen=True)
class MiningTemplate:
    system: str
    user: str
    answer_block: str
    answer_hint: str
    passage: str
    name: str = "mining"


def load_mining_template(path: str | Path | None = None) -> MiningTemplate:
    if path is None:
        raw = resources.files("reasonrank.synthesis").joinpath("templates").joinpath("mining.json").read_text(encoding="utf-8")
    else:
        raw = Path(path).read_text(encoding="utf-8")
    data = parse_json(raw, path or "mining.json")
    missing = [k for k in ("system", "user", "answer_block", "passage") if not isinstance(data.get(k), str)]
    if missing:
        raise ConfigError(f"{path or 'mining.json'}: mining template lacks string field(s) {missing}")
    return MiningTemplate(data["system"], data["user"], data["answer_block"], data.get("answer_hint", ""),
                          data["passage"], data.get("name", "mining"))


def _sub(template: str, values: dict[str, str]) -> str:
    return _MINING_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def mining_messages(template: MiningTemplate, query: str, contents: Sequence[str], answer: str = "") -> list[dict[str, str]]:
    """System + user message asking which of `contents` (passage texts, in order) are relevant."""
    passages = "".join(_sub(template.passage, {"rank": str(i), "content": c}) for i, c in enumerate(contents, 1))
    answer = (answer or "").strip()
    values = {
        "query": query.strip(),
        "num": str(len(contents)),
        "passages": passages,
        "answer_block": _sub(template.answer_block, {"answer": answer}) if answer else "",
        "answer_hint": template.answer_hint if answer else "",
    }
    return [{"role": "system", "content": template.system}, {"role": "user", "content": _sub(template.user, values)}]


@dataclass
class MiningParse:
    ok: bool
    relevant: list[int] = field(default_factory=list)  # 0-based positions, in the order given
    reasoning: str = ""
    answer: str = ""
    detail: str = ""


def _normalise(text: str) -> str:
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        if not ("0" <= ch <= "9"):
            value = unicodedata.decimal(ch, None)
            if value is not None:
                ch = str(value)
        out.append(ch)
    return "".join(out)


def _split(text: str, truncated: bool) -> tuple[str, str | None, str]:
    """(reasoning, answer or None, how)."""
    matches = list(_ANSWER.finditer(text))
    if matches:
        last = matches[-1]
        reasoning = _THINK_CLOSE.sub("", _THINK_OPEN.sub("", text[: last.start()])).strip()
        return reasoning, last.group(1), "tagged"
    opened = list(_ANSWER_OPEN.finditer(text))
    if opened:
        last = opened[-1]
        return text[: last.start()].strip(), text[last.end():], "unclosed <answer>"
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        last = closes[-1]
        return _THINK_OPEN.sub("", text[: last.start()]).strip(), text[last.end():], "after </think>"
    if _THINK_OPEN.search(text):
        return _THINK_OPEN.sub("", text).strip(), None, "reasoning never closed"
    if truncated:
        return text.strip(), None, "cut off by the token limit without an answer"
    return "", text, "untagged"


def parse_mining(text: str, n: int, finish_reason: str = "") -> MiningParse:
    text = text or ""
    truncated = (finish_reason or "").lower() == "length"
    reasoning, answer, how = _split(text, truncated)
    if answer is None:
        return MiningParse(False, [], reasoning, "", how)
    answer_norm = _normalise(answer).strip()
    if not answer_norm:
        return MiningParse(False, [], reasoning, answer, f"empty answer ({how})")
    if _NONE.match(answer_norm):
        return MiningParse(True, [], reasoning, answer, "" if how == "tagged" else how)
    digits = _BRACKETED.findall(answer_norm)
    notes = [] if how == "tagged" else [how]
    if not digits:
        if how == "untagged" and len(answer_norm) > 200:
            return MiningParse(False, [], reasoning, answer, "untagged prose without passage identifiers")
        digits = _BARE.findall(answer_norm)
        if digits:
            notes.append("bare numbers read as ids")
    if not digits:
        return MiningParse(False, [], reasoning, answer, f"no passage identifier in the answer ({how})")
    seen: list[int] = []
    dropped: list[int] = []
    for d in digits:
        i = int(d)
        if 1 <= i <= n:
            if i - 1 not in seen:
                seen.append(i - 1)
        else:
            dropped.append(i)
    if dropped:
        notes.append(f"ids outside 1..{n} dropped: {dropped[:10]}")
    if not seen:
        return MiningParse(False, [], reasoning, answer, "; ".join(notes) or "no id within range")
    return MiningParse(True, seen, reasoning, answer, "; ".join(notes))


def chunks(candidates: Sequence[Candidate], size: int) -> list[list[Candidate]]:
    size = max(1, int(size))
    return [list(candidates[i:i + size]) for i in range(0, len(candidates), size)]
