"""The one interface every backend implements: a batch of prompts in, texts and token counts out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from reasonrank.types import Prompt  # noqa: F401  (re-exported: backends take Prompts)

# The paper's budget: 3,072 tokens of reasoning plus 100 for the answer.
REASONING_BUDGET = 3072
ANSWER_BUDGET = 100


@dataclass
class SamplingParams:
    max_new_tokens: int = REASONING_BUDGET + ANSWER_BUDGET
    temperature: float = 0.0  # greedy, as the paper
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Generation:
    text: str  # the model's output; for servers that split reasoning out, the answer part
    reasoning: str = ""  # reasoning returned separately (`reasoning_content`), if any
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop", or "length" when the token budget cut the output
    seconds: float = 0.0
    error: str = ""  # non-empty when the call failed after all retries; text is then ""
    retries: int = 0

    @property
    def full_text(self) -> str:
        """Output with separately returned reasoning put back inline, as the model wrote it."""
        if self.reasoning and "<think>" not in self.text:
            return f"<think>{self.reasoning}</think>{self.text}"
        return self.text

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """One Generation per prompt, in order. A failed item carries `error`; the batch never raises
        for one bad item, so a long run loses nothing."""
        ...
