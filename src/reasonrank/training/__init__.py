"""Training: SFT and GRPO (TRL), LoRA (PEFT), presets from the paper, accelerate configs.

    from reasonrank.training import train_sft, train_grpo, merge_lora, build_tiny_model
    build_tiny_model("tiny")                                  # tests / CPU smoke runs
    sft = train_sft("tiny", "sft.jsonl", "out/sft", preset="cpu-tiny")
    rl = train_grpo(sft.output_dir, "rl.jsonl", "out/grpo", preset="cpu-tiny")
    # out/grpo is a plain HF model dir: Reranker(model="out/grpo", backend="hf")

Heavy dependencies (torch, transformers, trl, peft, datasets) are imported on first use, so
`import reasonrank.training` is cheap; they come with `pip install 'reasonrank[train]'`.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "train_sft": "reasonrank.training.sft",
    "PadCollator": "reasonrank.training.sft",
    "train_grpo": "reasonrank.training.grpo",
    "grpo_layout": "reasonrank.training.grpo",
    "reward_functions": "reasonrank.training.grpo",
    "TrainResult": "reasonrank.training._common",
    "build_tiny_model": "reasonrank.training.models",
    "gguf_to_hf": "reasonrank.training.models",
    "merge_lora": "reasonrank.training.models",
    "resolve_model": "reasonrank.training.models",
    "load_sft": "reasonrank.training.data",
    "load_rl": "reasonrank.training.data",
    "tokenize_sft": "reasonrank.training.data",
    "validate_sft_row": "reasonrank.training.data",
    "validate_rl_row": "reasonrank.training.data",
    "write_rows": "reasonrank.training.data",
    "TrainingDataError": "reasonrank.training.data",
    "LoadReport": "reasonrank.training.data",
    "load_preset": "reasonrank.training.presets",
    "list_presets": "reasonrank.training.presets",
    "accelerate_config": "reasonrank.training.presets",
    "list_accelerate_configs": "reasonrank.training.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reasonrank.training' has no attribute {name!r}")
    return getattr(import_module(module), name)
