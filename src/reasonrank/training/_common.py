"""What the SFT and GRPO runs share: loading, checkpoints, the final save, provenance."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from reasonrank.errors import ReasonRankError, require
from reasonrank.training.data import LoadReport
from reasonrank.training.models import resolve_model
from reasonrank.training.presets import apply_overrides, load_preset

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


@dataclass
class TrainResult:
    """Where a run left its model and what it did.

    `output_dir` is a plain Hugging Face model directory (weights, config, generation config,
    tokenizer) unless a LoRA run was asked not to merge, in which case it holds only the adapter
    under `adapter/` and `reasonrank train merge` makes the plain directory.
    """

    output_dir: Path
    checkpoints_dir: Path
    global_step: int
    seconds: float
    data: LoadReport
    log_history: list[dict[str, Any]] = field(default_factory=list)
    adapter_dir: Path | None = None
    merged: bool = False
    resumed_from: str | None = None

    @property
    def model_dir(self) -> Path | None:
        """The directory to load for inference (None for an unmerged LoRA run)."""
        return self.output_dir if (self.adapter_dir is None or self.merged) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir), "checkpoints_dir": str(self.checkpoints_dir),
            "global_step": self.global_step, "seconds": round(self.seconds, 1),
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None, "merged": self.merged,
            "resumed_from": self.resumed_from,
            "data": {"path": self.data.path, "rows": self.data.rows, "kept": self.data.kept,
                     "dropped_overlong": len(self.data.dropped_overlong), "max_tokens": self.data.max_tokens},
        }


def world_size() -> int:
    """Processes in this run (accelerate/torchrun set WORLD_SIZE; 1 for a plain python run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_tokenizer_for(model_path: str, tokenizer=None):
    if tokenizer is not None:
        tok = tokenizer
    else:
        transformers = require("transformers", "train", "Training")
        tok = transformers.AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        raise ReasonRankError(f"{model_path}: the tokenizer has no chat template; the training data is chat-format")
    return tok


def load_model(model_path: str, bf16: bool, fp16: bool = False):
    transformers = require("transformers", "train", "Training")
    torch = require("torch", "train", "Training")
    from reasonrank.training.models import dtype_kw

    dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    return transformers.AutoModelForCausalLM.from_pretrained(model_path, **dtype_kw(dtype))


def resume_argument(resume: bool | str | Path | None, checkpoints_dir: Path) -> str | None:
    """`True` → the last checkpoint in checkpoints_dir (an error if there is none); a path → itself."""
    if resume is None or resume is False:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(checkpoints_dir)) if checkpoints_dir.is_dir() else None
        if last is None:
            raise ReasonRankError(f"nothing to resume: no checkpoint-* directory in {checkpoints_dir}")
        return last
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise ReasonRankError(f"{path}: not a trainer checkpoint (no trainer_state.json)")
    return str(path)


def save_final(trainer, tokenizer, output_dir: Path, base_model: str, lora: bool, merge: bool) -> tuple[Path | None, bool]:
    """Save the trained model as a plain model dir (merging LoRA unless told not to)."""
    from reasonrank.training.models import merge_lora

    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # training turns the KV cache off; inference needs it back
    adapter_dir = None
    if lora:
        adapter_dir = output_dir / ADAPTER
        trainer.save_model(str(adapter_dir))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(adapter_dir))
    else:
        trainer.save_model(str(output_dir))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(str(output_dir))
    trainer.accelerator.wait_for_everyone()
    merged = False
    if lora and merge:
        if trainer.accelerator.is_main_process:
            merge_lora(adapter_dir, output_dir, base_model=base_model)
        trainer.accelerator.wait_for_everyone()
        merged = True
    return adapter_dir, merged


@dataclass
class RunSetup:
    """What `prepare_run` gathered before a trainer is built."""

    stage: str
    start: float
    cfg: dict[str, Any]
    overrides: dict[str, Any] | None
    data: str | Path
    out: Path
    ckpt_dir: Path
    model_path: str
    tokenizer: Any
    rows: list[dict[str, Any]]
    report: LoadReport
    resume: str | None


def prepare_run(stage: str, model: str | Path, data: str | Path, output_dir: str | Path, preset: str | Path,
                overrides: dict[str, Any] | None, resume_from_checkpoint: bool | str | Path | None, drop_overlong: bool,
                tokenizer, load_rows: Callable, length_key: str) -> RunSetup:
    """The preset (with overrides), the model, its tokenizer, the rows (`load_rows(data, tok, cfg[length_key],
    drop_overlong)`) and the checkpoint to resume from."""
    start = time.perf_counter()
    cfg = apply_overrides(load_preset(preset, stage), overrides)
    out = Path(output_dir)
    ckpt_dir = out / CHECKPOINTS
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such training data file")
    model_path = resolve_model(model)
    tok = load_tokenizer_for(model_path, tokenizer)
    rows, report = load_rows(data, tok, cfg.get(length_key), drop_overlong)
    resume = resume_argument(resume_from_checkpoint, ckpt_dir)
    return RunSetup(stage, start, cfg, overrides, data, out, ckpt_dir, model_path, tok, rows, report, resume)


def finish_run(trainer, run: RunSetup, lora: bool, merge: bool, details: Callable[[], dict[str, Any]]) -> TrainResult:
    """Train, save the final model and, on the main process, write the provenance file (`details()` adds the
    stage's own entries)."""
    trainer.train(resume_from_checkpoint=run.resume)
    adapter_dir, merged = save_final(trainer, run.tokenizer, run.out, run.model_path, lora=lora, merge=merge)
    result = TrainResult(run.out, run.ckpt_dir, trainer.state.global_step, time.perf_counter() - run.start, run.report,
                         list(trainer.state.log_history), adapter_dir, merged, run.resume)
    if trainer.accelerator.is_main_process:
        write_run_info(run.out, {"stage": run.stage, "preset": run.cfg["_name"], "overrides": run.overrides or {},
                                 "base_model": run.model_path, "data": str(run.data), **details(), **result.to_dict()})
    return result


def versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - reporting only
            pass
    return out


def write_run_info(output_dir: Path, info: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "reasonrank_training.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(info)
    previous["versions"] = versions()
    previous["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(previous, indent=2, default=str) + "\n")
