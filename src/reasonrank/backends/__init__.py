"""Generation backends. Each engine's module is imported only when that backend is asked for."""

from reasonrank.backends.base import Backend, Capabilities, Generation, Prompt, SamplingParams
from reasonrank.backends.factory import BACKENDS, get_backend, resolve_model, tokenizer_source

__all__ = ["BACKENDS", "Backend", "Generation", "Prompt", "SamplingParams", "get_backend", "resolve_model",
           "tokenizer_source"]
