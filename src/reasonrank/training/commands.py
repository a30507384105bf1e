"""`reasonrank train …`: a thin command layer over reasonrank.training.

Single process (CPU or one GPU): `reasonrank train sft --model M --data sft.jsonl --output out/sft`.
Several GPUs or nodes: the same command under accelerate, e.g.
`accelerate launch --config_file "$(reasonrank train accelerate-config zero3)" -m reasonrank.training sft …`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train rerankers: SFT and GRPO (TRL), LoRA merge, tiny test models.")

OutputOpt = typer.Option(..., "--output", "-o", help="Output directory (plain model dir + checkpoints/).")
PresetOpt = typer.Option("cpu-tiny", "--preset", "-p", help="7b-full, 32b-lora, cpu-tiny, or a preset .json path.")
SetOpt = typer.Option(None, "--set", "-s", help="Override: key=value (JSON value), a preset key or a TRL config field. Repeatable.")
ResumeOpt = typer.Option(False, "--resume", help="Resume from the last checkpoint in OUTPUT/checkpoints.")
ResumeFromOpt = typer.Option(None, "--resume-from", help="Resume from this checkpoint directory.")
DropOpt = typer.Option(False, "--drop-overlong", help="Drop (and count) rows over the length cutoff instead of failing.")
MergeOpt = typer.Option(True, "--merge/--no-merge", help="LoRA runs: merge the adapter into a plain model dir.")
LoraOpt = typer.Option(None, "--lora-r", help="Train a LoRA of this rank (alpha = r, all linear layers) instead of the preset's setting.")


def _overrides(sets: Optional[List[str]], lora_r: Optional[int]) -> dict:
    from reasonrank.training.presets import parse_override

    out = dict(parse_override(s) for s in (sets or []))
    if lora_r:
        out["lora"] = {"r": lora_r, "lora_alpha": lora_r, "lora_dropout": 0.0, "target_modules": "all-linear"}
    return out


def _resume(resume: bool, resume_from: Optional[Path]):
    return str(resume_from) if resume_from else (True if resume else None)


def _train(train, model, data, output, preset, set_, lora_r, resume, resume_from, drop_overlong, merge, **extra) -> None:
    """Run `train` (train_sft / train_grpo) with the options sft and grpo share, and print its result."""
    _report(train(model, data, output, preset=preset, overrides=_overrides(set_, lora_r),
                  resume_from_checkpoint=_resume(resume, resume_from), drop_overlong=drop_overlong, merge=merge, **extra))


def _report(result) -> None:
    info = result.to_dict()
    info["model_dir"] = str(result.model_dir) if result.model_dir else None
    typer.echo(json.dumps(info, indent=2))


@app.command()
def sft(
    model: str = typer.Option(..., "--model", "-m", help="Base model: a model directory or a .gguf (converted once)."),
    data: Path = typer.Option(..., "--data", "-d", help="SFT JSONL export."),
    output: Path = OutputOpt,
    preset: str = PresetOpt,
    set_: Optional[List[str]] = SetOpt,
    lora_r: Optional[int] = LoraOpt,
    resume: bool = ResumeOpt,
    resume_from: Optional[Path] = ResumeFromOpt,
    drop_overlong: bool = DropOpt,
    merge: bool = MergeOpt,
):
    """Supervised fine-tuning on the assistant turn (full or LoRA)."""
    from reasonrank.training.sft import train_sft

    _train(train_sft, model, data, output, preset, set_, lora_r, resume, resume_from, drop_overlong, merge)


@app.command()
def grpo(
    model: str = typer.Option(..., "--model", "-m", help="Model to train (usually the SFT output)."),
    data: Path = typer.Option(..., "--data", "-d", help="RL export (.jsonl or .parquet)."),
    output: Path = OutputOpt,
    preset: str = PresetOpt,
    set_: Optional[List[str]] = SetOpt,
    lora_r: Optional[int] = LoraOpt,
    resume: bool = ResumeOpt,
    resume_from: Optional[Path] = ResumeFromOpt,
    drop_overlong: bool = DropOpt,
    merge: bool = MergeOpt,
    format_reward: Optional[bool] = typer.Option(None, "--format-reward/--no-format-reward",
                                                 help="Add the separate format reward (default: the preset's)."),
):
    """GRPO with the multi-view ranking reward (nDCG@10 + 0.2 Recall@10 + 0.1 RBO)."""
    from reasonrank.training.grpo import train_grpo

    _train(train_grpo, model, data, output, preset, set_, lora_r, resume, resume_from, drop_overlong, merge,
           format_reward=format_reward)


@app.command()
def merge(
    adapter: Path = typer.Argument(..., help="LoRA adapter directory (adapter_config.json)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the merged plain model directory."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the adapter's base_model_name_or_path)."),
):
    """Merge a LoRA adapter into its base model (PEFT merge_and_unload)."""
    from reasonrank.training.models import merge_lora

    typer.echo(str(merge_lora(adapter, output, base_model=base)))


@app.command("tiny-model")
def tiny_model(
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the model to."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer source (default: the embedded Qwen2.5 GGUF)."),
    seed: int = typer.Option(0, help="Initialisation seed."),
    layers: int = typer.Option(2, help="Hidden layers."),
    hidden: int = typer.Option(64, help="Hidden size (heads: 4, KV heads: 2)."),
):
    """A tiny randomly initialised Qwen2 with the real Qwen2.5 tokenizer (tests, smoke runs)."""
    from reasonrank.training.models import build_tiny_model

    typer.echo(str(build_tiny_model(output, tokenizer=tokenizer, seed=seed, num_hidden_layers=layers,
                                    hidden_size=hidden, intermediate_size=2 * hidden)))


@app.command("from-gguf")
def from_gguf(
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the plain-weights model."),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="GGUF file (default: the embedded Qwen2.5-Coder-0.5B)."),
    dtype: str = typer.Option("float32", help="float32 (exact dequantised values) or bfloat16."),
):
    """Dequantise a GGUF into a plain Hugging Face model directory that TRL/PEFT can train."""
    from reasonrank.training.models import gguf_to_hf

    typer.echo(str(gguf_to_hf(gguf, output, dtype=dtype)))


@app.command()
def presets():
    """List the presets and the bundled accelerate configs."""
    from reasonrank.training.presets import list_accelerate_configs, list_presets, load_preset

    for stage in ("sft", "grpo"):
        for name in list_presets(stage):
            typer.echo(f"{stage:5} {name:10} {load_preset(name, stage)['description']}")
    typer.echo("accelerate configs: " + ", ".join(list_accelerate_configs()))


@app.command("accelerate-config")
def accelerate_config_path(name: str = typer.Argument(..., help="single-gpu, multi-gpu, zero3, fsdp, multi-node-zero3")):
    """Print the path of a bundled accelerate config (for accelerate launch --config_file)."""
    from reasonrank.training.presets import accelerate_config

    typer.echo(str(accelerate_config(name)))
