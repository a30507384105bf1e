"""Plain data records that flow through the pipeline. Every record round-trips through JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _from_dict(cls, data: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**data)


@dataclass
class Query:
    qid: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Query":
        return _from_dict(cls, data)


@dataclass
class Candidate:
    docid: str
    score: float = 0.0
    text: str = ""
    title: str = ""

    @property
    def content(self) -> str:
        """The passage as the prompt shows it (ReasonRank's `Title: … Content: …`)."""
        if self.title:
            return f"Title: {self.title} Content: {self.text}"
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        return _from_dict(cls, data)


@dataclass
class Request:
    query: Query
    candidates: list[Candidate]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query.to_dict(), "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Request":
        return cls(Query.from_dict(data["query"]), [Candidate.from_dict(c) for c in data["candidates"]])


@dataclass
class WindowTrace:
    """One window, for every method: enough to audit, replay or resume it.

    `docids` is the window's input order and `permutation` the model's answer over it (0-based), so
    `output_docids` is the order it produced; the report and resume replay by docid. `start`/`end` are
    the window's positions in the list for the sliding window and None for methods whose windows are
    not contiguous (tdpart: `role` says first, partition or recursion)."""

    qid: str
    pass_index: int
    start: int | None
    end: int | None
    prompt_hash: str
    prompt: str = ""
    raw_output: str = ""
    reasoning: str = ""
    permutation: list[int] = field(default_factory=list)  # 0-based positions within the window
    status: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    docids: list[str] = field(default_factory=list)  # window docids in input order
    method: str = "sliding"
    role: str = ""
    # on_truncation=force, a window cut in its reasoning: the second part of the same sequence. The prompt
    # of the forced call is `prompt` + `forced_prefix` (the first part's reasoning cut at its last complete
    # sentence, then "</think>\n<answer>"); `forced_answer` is what the model wrote after it. Empty, with
    # zero tokens, for every other window (and in journals written before these fields).
    forced_prefix: str = ""
    forced_answer: str = ""
    forced_prompt_tokens: int = 0
    forced_completion_tokens: int = 0
    forced_seconds: float = 0.0
    forced_error: str = ""  # why a cut window got no forced answer (the engine cannot continue chat messages, ...)

    @property
    def output_docids(self) -> list[str]:
        if not self.docids:
            return []
        if sorted(self.permutation) != list(range(len(self.docids))):
            raise ValueError(f"window {self.prompt_hash}: permutation {self.permutation} is not one of its {len(self.docids)} doc ids")
        return [self.docids[p] for p in self.permutation]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "output_docids": self.output_docids}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WindowTrace":
        data = dict(data)
        output = data.pop("output_docids", None)
        trace = _from_dict(cls, data)
        if output is not None and output != trace.output_docids:
            raise ValueError(f"window {trace.prompt_hash}: output_docids disagree with docids and permutation")
        return trace


@dataclass
class Result:
    """A reranked list. Scores are rank-derived (higher is better) so TREC files sort correctly."""

    query: Query
    candidates: list[Candidate]
    traces: list[WindowTrace] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "traces": [t.to_dict() for t in self.traces],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Result":
        return cls(
            Query.from_dict(data["query"]),
            [Candidate.from_dict(c) for c in data["candidates"]],
            [WindowTrace.from_dict(t) for t in data.get("traces", [])],
        )

    @property
    def docids(self) -> list[str]:
        return [c.docid for c in self.candidates]


@dataclass
class Document:
    docid: str
    text: str
    title: str = ""

    def to_candidate(self, score: float = 0.0) -> Candidate:
        return Candidate(self.docid, score, self.text, self.title)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prompt:
    """A chat prompt. `text` is the exact string the model sees (chat template applied, then
    ftfy.fix_text), rendered by reasonrank.prompts; local engines generate from it. HTTP chat
    endpoints receive `messages` and apply the server's own template."""

    messages: list[dict[str, str]]
    text: str | None = None
    # for a server that applies its own chat template to `messages` (the template's switches, e.g.
    # {"enable_thinking": False}); `text` was rendered with them already
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
