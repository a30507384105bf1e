"""Test doubles of a generation backend (named as such): the Backend protocol's attributes with a
scripted `generate`, for logic that needs answers a real model would not give (non-identity orders,
failures on cue). Real engines are tested elsewhere (tests/servers.py)."""

from __future__ import annotations

from reasonrank.backends.base import Capabilities


class DoubleBackend:
    """Subclass and write `generate(prompts, params)`."""

    name = "double"
    model = "double"
    capabilities = Capabilities()
    prompt_format = "text"

    def fingerprint(self) -> dict:
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:
        pass
