"""The one interface every backend implements: a batch of prompts in, texts and token counts out."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


@dataclass
class NextTokenLogprobs:
    """The distribution of the one token that follows a prompt (`next_token_logprobs`: llama.cpp, hf, vLLM)."""

    top: dict[str, float] = field(default_factory=dict)  # token text -> logprob, best first
    candidates: dict[str, float] = field(default_factory=dict)  # candidate string -> logprob of its first token
    prompt_tokens: int = 0
    error: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, decided when it is built; callers read these instead of probing."""

    batch_size: int | None = None  # prompts one generate() runs together (None: any number at once)
    prompt_formats: tuple[str, ...] = ("text",)  # "text": generates from Prompt.text; "messages": can send chat messages
    logprobs: bool = False  # has next_token_logprobs()
    concurrency: int = 1  # generate() calls it runs at once; more callers wait on its own lock (never the caller's)
    stats: bool = False  # keeps a `stats` dict (requests, retries, dropped fields)


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str
    capabilities: Capabilities

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """One Generation per prompt, in order. A failed item carries `error`; the batch never raises
        for one bad item, so a long run loses nothing. Safe to call from several threads."""
        ...

    def fingerprint(self) -> dict:
        """The engine's identity for the journal: backend, model identity, adapter, dtype/quantisation."""
        ...

    def close(self) -> None:
        """Free the engine; idempotent, safe while another thread is generating (it waits)."""
        ...


def file_identity(path: str | Path) -> dict:
    """A file's identity without reading all of it: name, size and the SHA-256 of its first and last MiB
    (a 491 MB GGUF in milliseconds; another quantisation or fine-tune differs in both)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), 2)
            digest.update(fh.read(1 << 20))
    return {"name": path.name, "size": size, "sha256_sample": digest.hexdigest()[:16]}


def model_identity(source: str | None) -> dict | str | None:
    """A local model (file or directory of weights) by file identity; a hub id as given, with the cached
    revision where the hub cache knows one."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return file_identity(path)
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt"))
        return {"dir": path.name, "weights": [file_identity(p) for p in weights]}
    return {"hub_id": str(source), "revision": _hub_revision(str(source))}


def _hub_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import scan_cache_dir  # noqa: F401
        from huggingface_hub.file_download import repo_folder_name
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None
