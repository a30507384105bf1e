"""Training data: load, validate and tokenize the SFT and RL exports.

Formats (what the synthesis module exports):

* SFT JSONL, one window per row::

      {"messages": [{"role": "system", ...}, {"role": "user", ...},
                    {"role": "assistant", "content": "<think>…</think>\\n<answer>[i] > [j] > …</answer>"}],
       "id": ..., "dataset": ...}

* RL JSONL or parquet, one window per row::

      {"prompt": [system, user messages], "ground_truth": [1-based ids], "initial_list": [docids in window order],
       "relevant_docids": [...], "id": ..., "dataset": ...}

Every row is checked before anything trains. A malformed row or a missing column raises
`TrainingDataError` naming the file and the row (`file.jsonl:7` is line 7; parquet rows are numbered
from 1). A row longer than the cutoff raises too, unless the caller asks to drop over-long rows
(`drop_overlong=True`), in which case the dropped rows are counted, printed and returned in the
report: nothing trains on silently dropped or silently truncated data.

SFT loss masking (see `tokenize_sft`) is done here, not by TRL: the Qwen2.5 chat template has no
`{% generation %}` markers, so `SFTConfig(assistant_only_loss=True)` gives an all-zero assistant
mask with the stock template on TRL < 1.x, and TRL releases that patch the template differ in what
they count as the assistant span. Rendering the prompt with `add_generation_prompt=True` and
masking exactly that prefix is version independent and is what the model sees at inference.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from reasonrank.errors import FormatError
from reasonrank.io.common import read_jsonl
from reasonrank.reward import FORMAT

IGNORE_INDEX = -100
SFT_COLUMNS = ("messages", "id", "dataset")
RL_COLUMNS = ("prompt", "ground_truth", "initial_list", "relevant_docids", "id", "dataset")
ROLES = ("system", "user", "assistant")


class TrainingDataError(FormatError):
    """A training file has a bad row: the message names the file and the row."""


@dataclass
class LoadReport:
    """What loading kept and dropped (only over-long rows are ever dropped, and only when asked)."""

    path: str
    rows: int = 0
    kept: int = 0
    dropped_overlong: list[tuple[int, Any, int]] = field(default_factory=list)  # (row, id, tokens)
    max_tokens: int = 0

    def summary(self) -> str:
        text = f"{self.path}: {self.kept} of {self.rows} rows kept"
        if self.dropped_overlong:
            text += f", {len(self.dropped_overlong)} dropped as longer than the cutoff"
        return text


# -- reading rows ----------------------------------------------------------------------------


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) from a .jsonl(.gz) or .parquet file. JSONL numbers are line numbers."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        yield from read_jsonl(path)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the train extra
        from reasonrank.errors import MissingExtra

        raise MissingExtra("train", "pyarrow", "Reading parquet training data") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a damaged file
        raise TrainingDataError(path, None, f"cannot read parquet file ({exc})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def _fail(path, row: int, problem: str, rid: Any = None) -> TrainingDataError:
    who = f"row {row}" + (f" (id={rid!r})" if rid is not None else "")
    return TrainingDataError(path, row, f"{who}: {problem}")


def _columns(path, row: int, obj: dict, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in obj]
    if missing:
        raise _fail(path, row, f"missing column(s) {missing} (required: {list(required)})", obj.get("id"))


def _maybe_json(value: Any) -> Any:
    # parquet exports (verl style) may store list columns as JSON strings
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _messages(path, row: int, rid, value: Any, name: str) -> list[dict[str, str]]:
    value = _maybe_json(value)
    if not isinstance(value, list) or not value:
        raise _fail(path, row, f"{name!r} must be a non-empty list of chat messages, got {type(value).__name__}", rid)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _fail(path, row, f"{name}[{i}] must be an object with string 'role' and 'content'", rid)
        if m["role"] not in ROLES:
            raise _fail(path, row, f"{name}[{i}] has role {m['role']!r}; expected one of {list(ROLES)}", rid)
        out.append({"role": m["role"], "content": m["content"]})
    return out


# -- SFT ---------------------------------------------------------------------------------------


def validate_sft_row(path, row: int, obj: dict) -> dict[str, Any]:
    """A clean SFT row ({"messages", "id", "dataset"}) or TrainingDataError."""
    _columns(path, row, obj, SFT_COLUMNS)
    rid = obj["id"]
    messages = _messages(path, row, rid, obj["messages"], "messages")
    roles = [m["role"] for m in messages]
    if roles not in (["system", "user", "assistant"], ["user", "assistant"]):
        raise _fail(path, row, f"messages must be [system,] user, assistant (one turn); got roles {roles}", rid)
    answer = messages[-1]["content"]
    if not FORMAT.search(answer):
        raise _fail(path, row, "the assistant message is not '<think>…</think> <answer>…</answer>' "
                               f"(starts {answer[:60]!r})", rid)
    if not isinstance(obj["dataset"], str):
        raise _fail(path, row, f"'dataset' must be a string, got {type(obj['dataset']).__name__}", rid)
    return {"messages": messages, "id": rid, "dataset": obj["dataset"]}


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    # The chat template writes every special token itself; the engines that serve the model
    # tokenize the rendered text the same way (no BOS added for Qwen).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_sft(tokenizer, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """input_ids and labels for one SFT conversation, loss on the assistant turn only.

    The prompt is rendered with `add_generation_prompt=True` (for Qwen2.5: through
    `<|im_start|>assistant\\n`), exactly the string the reranker generates from; its tokens get label
    -100. Everything after it — the assistant content, `<|im_end|>` (so the model learns to stop) and
    the template's trailing newline — is trained. If the template tokenizes the prompt differently
    on its own than inside the full conversation (a merge across the boundary), the mask cannot be
    exact and this raises instead of guessing.
    """
    prompt_ids = _encode(tokenizer, _render(tokenizer, messages[:-1], True))
    full_ids = _encode(tokenizer, _render(tokenizer, messages, False))
    n = len(prompt_ids)
    if full_ids[:n] != prompt_ids or len(full_ids) <= n:
        raise ValueError("the chat template does not render the prompt as a token prefix of the full conversation; "
                         "cannot mask the prompt exactly")
    return {"input_ids": full_ids, "labels": [IGNORE_INDEX] * n + full_ids[n:]}


def load_sft(path: str | Path, tokenizer=None, cutoff_len: int | None = None, drop_overlong: bool = False,
             verbose: bool = True) -> tuple[list[dict[str, Any]], LoadReport]:
    """Validated SFT rows; with a tokenizer each row also carries `input_ids` and `labels`.

    `cutoff_len` bounds prompt + answer tokens (the paper's 23,552). A longer row raises naming the
    row, or with `drop_overlong=True` is dropped, counted and printed.
    """
    def tokens(row: int, clean: dict[str, Any]) -> int:
        try:
            clean.update(tokenize_sft(tokenizer, clean["messages"]))
        except ValueError as exc:
            raise _fail(path, row, str(exc), clean["id"]) from None
        return len(clean["input_ids"])

    return _load(path, validate_sft_row, tokens if tokenizer is not None else None, cutoff_len, drop_overlong,
                 lambda n: f"{n} tokens (prompt + answer) exceed the cutoff of {cutoff_len}; raise the "
                           "cutoff or pass drop_overlong / --drop-overlong to skip such rows", verbose)


# -- RL ----------------------------------------------------------------------------------------


def _int_list(path, row, rid, name, value) -> list[int]:
    value = _maybe_json(value)
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise _fail(path, row, f"{name!r} must be a non-empty list of integers, got {value!r:.80}", rid)
    return list(value)


def _str_list(path, row, rid, name, value, allow_empty: bool) -> list[str]:
    value = _maybe_json(value)
    if not isinstance(value, list) or (not value and not allow_empty) or any(not isinstance(v, str) or not v for v in value):
        raise _fail(path, row, f"{name!r} must be a {'' if allow_empty else 'non-empty '}list of doc id strings, "
                               f"got {value!r:.80}", rid)
    return list(value)


def validate_rl_row(path, row: int, obj: dict) -> dict[str, Any]:
    """A clean RL row or TrainingDataError. Checks that the reward can score it."""
    _columns(path, row, obj, RL_COLUMNS)
    rid = obj["id"]
    prompt = _messages(path, row, rid, obj["prompt"], "prompt")
    if prompt[-1]["role"] != "user":
        raise _fail(path, row, f"the prompt must end with a user message, ends with {prompt[-1]['role']!r}", rid)
    initial = _str_list(path, row, rid, "initial_list", obj["initial_list"], allow_empty=False)
    if len(set(initial)) != len(initial):
        raise _fail(path, row, "'initial_list' repeats a doc id", rid)
    truth = _int_list(path, row, rid, "ground_truth", obj["ground_truth"])
    n = len(initial)
    bad = [i for i in truth if not 1 <= i <= n]
    if bad:
        raise _fail(path, row, f"'ground_truth' ids {bad[:5]} are outside 1..{n} (len(initial_list))", rid)
    if len(set(truth)) != len(truth):
        raise _fail(path, row, "'ground_truth' repeats an id", rid)
    relevant = _str_list(path, row, rid, "relevant_docids", obj["relevant_docids"], allow_empty=True)
    if not isinstance(obj["dataset"], str):
        raise _fail(path, row, f"'dataset' must be a string, got {type(obj['dataset']).__name__}", rid)
    return {"prompt": prompt, "ground_truth": truth, "initial_list": initial, "relevant_docids": relevant,
            "id": rid if isinstance(rid, str) else json.dumps(rid), "dataset": obj["dataset"]}


def prompt_length(tokenizer, prompt: list[dict[str, str]]) -> int:
    """Tokens of the rendered prompt (generation prompt included), as GRPO feeds it to the model."""
    return len(_encode(tokenizer, _render(tokenizer, prompt, True)))


def load_rl(path: str | Path, tokenizer=None, max_prompt_length: int | None = None, drop_overlong: bool = False,
            verbose: bool = True) -> tuple[list[dict[str, Any]], LoadReport]:
    """Validated RL rows. With a tokenizer and `max_prompt_length` (the paper's 20,480), a longer
    prompt raises naming the row, or with `drop_overlong=True` is dropped, counted and printed."""
    measure = tokenizer is not None and max_prompt_length is not None
    return _load(path, validate_rl_row, (lambda row, clean: prompt_length(tokenizer, clean["prompt"])) if measure else None,
                 max_prompt_length, drop_overlong,
                 lambda n: f"the prompt has {n} tokens, more than max_prompt_length {max_prompt_length}; "
                           "raise it or pass drop_overlong / --drop-overlong to skip such rows", verbose)


def _load(path, validate: Callable, tokens: Callable | None, limit: int | None, drop_overlong: bool,
          too_long: Callable[[int], str], verbose: bool) -> tuple[list[dict[str, Any]], LoadReport]:
    """Validated rows of `path`. With `tokens(row, clean)` each row is measured; one over `limit` raises
    (`too_long(n)` says why) or, with `drop_overlong`, is dropped and counted."""
    report = LoadReport(str(path))
    rows: list[dict[str, Any]] = []
    for row, obj in iter_rows(path):
        report.rows += 1
        clean = validate(path, row, obj)
        if tokens is not None:
            n = tokens(row, clean)
            report.max_tokens = max(report.max_tokens, n)
            if limit is not None and n > limit:
                if not drop_overlong:
                    raise _fail(path, row, too_long(n), clean["id"])
                report.dropped_overlong.append((row, clean["id"], n))
                continue
        rows.append(clean)
    _finish(report, rows, verbose)
    return rows, report


def _finish(report: LoadReport, rows: list, verbose: bool) -> None:
    report.kept = len(rows)
    if not rows:
        raise TrainingDataError(report.path, None, f"no training rows ({report.rows} read, "
                                                   f"{len(report.dropped_overlong)} dropped as over-long)")
    if report.dropped_overlong and verbose:
        first = ", ".join(f"row {r} ({t} tokens)" for r, _, t in report.dropped_overlong[:5])
        print(f"{report.summary()}: {first}{' …' if len(report.dropped_overlong) > 5 else ''}", file=sys.stderr)


# -- writing -----------------------------------------------------------------------------------


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSONL, or parquet when the name ends in .parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    else:
        from reasonrank.io.common import write_jsonl

        write_jsonl(path, rows)
    return path
