"""Training presets (presets/<stage>-<name>.json) and accelerate configs (accelerate/<name>.yaml).

A preset is JSON with `stage` ("sft" or "grpo"), a `description` and `source` (where each number
comes from), stage settings (`cutoff_len`, `lora`, `max_prompt_length`, GRPO batch layout) and
`training_args`, passed to TRL's SFTConfig / GRPOConfig. Overrides are merged on top: keys that
are stage settings replace them, anything else goes into `training_args`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from reasonrank.errors import ReasonRankError, parse_json

STAGES = ("sft", "grpo")
STAGE_KEYS = {
    "sft": {"cutoff_len", "lora", "fused_loss"},
    "grpo": {"max_prompt_length", "lora", "prompts_per_rollout", "prompts_per_update", "rollout_steps", "format_reward",
             "weight_decay_all_parameters"},
}
INFO_KEYS = {"stage", "description", "source", "accelerate_config", "launch", "training_args"}


def _files():
    return resources.files("reasonrank.training")


def list_presets(stage: str | None = None) -> list[str]:
    """Preset names (without the stage prefix), e.g. ['32b-lora', '7b-full', 'cpu-tiny']."""
    names = []
    for entry in _files().joinpath("presets").iterdir():
        name = entry.name
        if name.endswith(".json"):
            st, _, rest = name[:-5].partition("-")
            if stage is None or st == stage:
                names.append(rest if stage else name[:-5])
    return sorted(names)


def load_preset(name: str | Path, stage: str) -> dict[str, Any]:
    """A preset by name (`cpu-tiny`, `7b-full`, `32b-lora`, or `sft-cpu-tiny`) or a JSON file path."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    text = str(name)
    if text.endswith(".json") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ReasonRankError(f"{path}: no such preset file")
        raw, where = path.read_text(encoding="utf-8"), str(path)
    else:
        base = text if text.startswith(stage + "-") else f"{stage}-{text}"
        entry = _files().joinpath("presets").joinpath(base + ".json")
        if not entry.is_file():
            raise ReasonRankError(f"unknown {stage} preset {text!r}; presets: {', '.join(list_presets(stage))} "
                                  "(or a path to a .json preset)")
        raw, where = entry.read_text(encoding="utf-8"), base + ".json"
    preset = parse_json(raw, where)
    if preset.get("stage") != stage:
        raise ReasonRankError(f"{where}: a {preset.get('stage')!r} preset, not a {stage!r} one")
    unknown = set(preset) - STAGE_KEYS[stage] - INFO_KEYS
    if unknown:
        raise ReasonRankError(f"{where}: unknown preset key(s) {sorted(unknown)}")
    preset.setdefault("training_args", {})
    preset["_name"] = where
    return preset


def apply_overrides(preset: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of the preset with overrides: stage keys replace settings, others go to training_args."""
    out = copy.deepcopy(preset)
    for key, value in (overrides or {}).items():
        if key in STAGE_KEYS[out["stage"]]:
            out[key] = value
        else:
            out["training_args"][key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as JSON when it parses (numbers, true,
    null, lists), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReasonRankError(f"override {text!r} is not key=value")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def build_config(config_cls, args: dict[str, Any]):
    """`config_cls(**args)` with two compatibility rules and a clear error on unknown keys.

    `warmup_ratio` (the paper's and LLaMA-Factory's name) becomes `warmup_steps` on transformers 5,
    which dropped `warmup_ratio` and reads a warmup_steps below 1 as a ratio.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    args = dict(args)
    if "warmup_ratio" in args and "warmup_ratio" not in known:
        ratio = args.pop("warmup_ratio")
        if ratio:
            if args.get("warmup_steps"):
                raise ReasonRankError("give warmup_ratio or warmup_steps, not both")
            args["warmup_steps"] = float(ratio)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ReasonRankError(f"{config_cls.__name__} has no option(s) {unknown} (check the preset or --set overrides)")
    return config_cls(**args)


def list_accelerate_configs() -> list[str]:
    return sorted(e.name[:-5] for e in _files().joinpath("accelerate").iterdir() if e.name.endswith(".yaml"))


def accelerate_config(name: str) -> Path:
    """Path of a bundled accelerate config (`single-gpu`, `multi-gpu`, `zero3`, `fsdp`, `multi-node-zero3`),
    for `accelerate launch --config_file`."""
    entry = _files().joinpath("accelerate").joinpath(name if name.endswith(".yaml") else name + ".yaml")
    if not entry.is_file():
        raise ReasonRankError(f"unknown accelerate config {name!r}; bundled: {', '.join(list_accelerate_configs())}")
    return Path(str(entry))


def lora_config(settings: dict[str, Any] | None):
    """A PEFT LoraConfig for causal LM from a preset's `lora` block (None → full fine-tuning)."""
    if not settings:
        return None
    from reasonrank.errors import require

    peft = require("peft", "train", "LoRA training")
    settings = dict(settings)
    settings.setdefault("task_type", "CAUSAL_LM")
    try:
        return peft.LoraConfig(**settings)
    except TypeError as exc:
        raise ReasonRankError(f"bad lora settings {settings}: {exc}") from None
