"""LoRA adapters for inference (the 32B recipe serves Qwen2.5-32B + a rank-32 adapter).

An adapter is a PEFT directory (adapter_config.json + adapter weights), as `reasonrank train sft
--lora-r` writes under `<out>/adapter` and as the released 32B adapter ships. Both the hf backend
(PEFT) and the vLLM backend (LoRARequest) read it through here, so a bad path fails the same way
before any engine loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from reasonrank.errors import ReasonRankError

# vLLM only accepts these max_lora_rank values (its LoRAConfig validates against the list)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_config(path: str | Path) -> dict:
    """The adapter's adapter_config.json, or an error naming what is missing."""
    directory = Path(path).expanduser()
    cfg_file = directory / "adapter_config.json"
    if not cfg_file.is_file():
        raise ReasonRankError(f"{directory}: not a LoRA adapter directory (no adapter_config.json)")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ReasonRankError(f"{directory}: a {cfg.get('peft_type')} adapter, not LoRA")
    return cfg


def adapter_rank(cfg: dict) -> int:
    """The largest rank the adapter uses (rank_pattern may raise it for some modules)."""
    ranks = [int(cfg.get("r", 8))] + [int(r) for r in (cfg.get("rank_pattern") or {}).values()]
    return max(ranks)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ReasonRankError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
