"""Supervised fine-tuning on the SFT export with TRL's SFTTrainer (full or LoRA).

Loss is on the assistant turn only. How: `data.tokenize_sft` renders the prompt with the chat
template's generation prompt and labels those tokens -100; the dataset reaches SFTTrainer already
tokenized (`dataset_kwargs={"skip_prepare_dataset": True}`) with our `labels`, and `PadCollator`
pads them. TRL's own `assistant_only_loss=True` is not used: it needs `{% generation %}` markers,
which the Qwen2.5 template lacks (TRL >= 1.x swaps in a patched copy for known templates, older TRL
raises), and its span also trains the newline of the generation prompt. Nothing is truncated:
rows over `cutoff_len` are an error or, when asked, dropped and counted (see data.load_sft).

A CPU run needs no accelerate config: `train_sft(...)` or `reasonrank train sft ...`. On GPUs,
launch the same entry point under `accelerate launch --config_file <accelerate/*.yaml>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonrank.errors import require
from reasonrank.training._common import TrainResult, finish_run, load_model, prepare_run
from reasonrank.training.data import IGNORE_INDEX, load_sft
from reasonrank.training.presets import build_config, lora_config


class PadCollator:
    """Right-pads `input_ids` (pad id) and `labels` (-100) and builds the attention mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, mask = [], [], []
        for f in features:
            k = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * (n - k))
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * (n - k))
            mask.append([1] * k + [0] * (n - k))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def use_fused_loss(setting) -> bool:
    """TRL's fused (chunked) LM-head loss: `"auto"` uses it on CUDA only.

    On a GPU it saves the full-vocabulary logits (23k tokens x 152k vocab), so it stays TRL's
    default there. On a CPU its Python-level tiles cost ~6x the plain loss (measured: 12 s vs 2 s a
    step for the tiny test model), so there the model's own shifted cross-entropy is used; both
    average the same per-token NLL over the unmasked labels.
    """
    if setting == "auto":
        import torch

        return torch.cuda.is_available()
    return bool(setting)


def _trainer_class(trl, fused: bool):
    if fused:
        return trl.SFTTrainer
    import transformers

    class PlainLossSFTTrainer(trl.SFTTrainer):
        """SFTTrainer whose loss is the model's own (labels in, shifted cross-entropy out)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return transformers.Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                                     num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def sft_dataset(rows: list[dict[str, Any]]):
    datasets = require("datasets", "train", "SFT training")
    return datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def train_sft(
    model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    preset: str | Path = "cpu-tiny",
    overrides: dict[str, Any] | None = None,
    resume_from_checkpoint: bool | str | Path | None = None,
    drop_overlong: bool = False,
    merge: bool = True,
    tokenizer=None,
    callbacks: list | None = None,
) -> TrainResult:
    """Fine-tune `model` (a model dir, or a .gguf converted once to plain weights) on an SFT JSONL.

    `preset`: `7b-full`, `32b-lora`, `cpu-tiny` or a JSON path; `overrides`: preset keys
    (`cutoff_len`, `lora`, `fused_loss`) or SFTConfig fields (`max_steps`, `learning_rate`, …).
    `resume_from_checkpoint`: True for the last checkpoint under `output_dir/checkpoints`, or a
    checkpoint path. The result's `output_dir` is a plain model directory (LoRA merged unless
    `merge=False`).
    """
    trl = require("trl", "train", "SFT training")
    run = prepare_run("sft", model, data, output_dir, preset, overrides, resume_from_checkpoint, drop_overlong,
                      tokenizer, load_sft, "cutoff_len")
    cfg, tok = run.cfg, run.tokenizer
    targs = dict(cfg["training_args"])
    targs.update(output_dir=str(run.ckpt_dir), max_length=cfg.get("cutoff_len"),
                 dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    args = build_config(trl.SFTConfig, targs)
    peft_config = lora_config(cfg.get("lora"))
    net = load_model(run.model_path, bf16=bool(args.bf16), fp16=bool(args.fp16))
    trainer = _trainer_class(trl, use_fused_loss(cfg.get("fused_loss", "auto")))(
        model=net, args=args, train_dataset=sft_dataset(run.rows), processing_class=tok,
        data_collator=PadCollator(tok.pad_token_id), peft_config=peft_config, callbacks=callbacks,
    )
    return finish_run(trainer, run, lora=peft_config is not None, merge=merge,
                      details=lambda: {"loss_masking": "prompt tokens (chat template + generation prompt) = -100"})
