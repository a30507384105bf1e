"""Generation backends. Each engine's module is imported only when that backend is asked for."""

from reasonrank.backends.base import Backend, Generation, Prompt, SamplingParams

__all__ = ["Backend", "Generation", "Prompt", "SamplingParams"]
