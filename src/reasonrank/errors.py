"""Errors a user can act on: each names the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path


class ReasonRankError(Exception):
    """Base class for errors the CLI prints without a traceback."""


class FormatError(ReasonRankError, ValueError):
    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


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
