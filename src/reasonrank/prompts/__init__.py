"""Listwise ranking prompts: wording as data (templates/*.json), assembly in render.py."""

from reasonrank.prompts.render import (
    MODES,
    PromptRenderer,
    PromptTemplate,
    default_max_passage_tokens,
    load_template,
)

__all__ = ["MODES", "PromptRenderer", "PromptTemplate", "default_max_passage_tokens", "load_template"]
