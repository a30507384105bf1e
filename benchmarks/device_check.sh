#!/usr/bin/env bash
# GPU device check for the training and hf paths (issue #14). READY, UNRUN: no GPU was lent to the
# task that wrote it. Runs in a few minutes on one GPU with only what can be carried there:
#   - this repository (src/ is put on PYTHONPATH; nothing is installed from it),
#   - a Python with CUDA torch and transformers (the device image), and TRL + PEFT (+ datasets,
#     accelerate) importable, or their wheels in $WHEELS (installed with --no-index),
#   - a tokenizer directory in $TOKENIZER (the Qwen2.5 tokenizer: the embedded GGUF's
#     `<gguf>.tokenizer/` folder, a few MB); the model itself is a random 2-layer Qwen2 built here.
# It prints a table: the hf backend batched on CUDA (bf16) against one-at-a-time, one SFT step and
# one GRPO loss (verl-equivalent preset settings) in bf16 on CUDA against fp32 on the CPU for the same
# seed and inputs, and one real GRPOTrainer step on CUDA. Exit status 1 when a check fails.
#
#   TOKENIZER=path/to/qwen.tokenizer WHEELS=wheels/ bash benchmarks/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
: "${TOKENIZER:?set TOKENIZER to a Qwen2.5 tokenizer directory (the .tokenizer folder beside the embedded GGUF)}"
if ! "$PY" -c "import trl, peft, datasets, accelerate" 2>/dev/null; then
  : "${WHEELS:?trl/peft are not importable: set WHEELS to a folder of their wheels}"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" trl peft datasets accelerate
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

timeout 540 "$PY" - "$TOKENIZER" "$WORK" <<'PY'
import sys
import time

import torch

tok_dir, work = sys.argv[1], sys.argv[2]
assert torch.cuda.is_available(), "no CUDA device"
rows = []  # (check, cuda, cpu, |diff|, ok)


def report(check, cuda, cpu, tol):
    diff = abs(cuda - cpu) if cpu is not None else float("nan")
    ok = (diff <= tol) if cpu is not None else bool(cuda == cuda)  # no reference: finite is enough
    rows.append((check, cuda, cpu, diff, ok))


from reasonrank.tokenizer import load_tokenizer
from reasonrank.training import build_tiny_model

tok = load_tokenizer(tok_dir)
model_dir = build_tiny_model(f"{work}/tiny", tokenizer=tok, seed=0)

# 1. hf backend, batched on CUDA: the batch of 8 (left-padded) gives each prompt's greedy output
from reasonrank.backends.base import SamplingParams
from reasonrank.backends.hf import HFBackend
from reasonrank.types import Prompt

prompts = [Prompt(messages=[], text=tok.apply_chat_template([{"role": "user", "content": "rank " * (i * 7 + 1)}],
                                                            tokenize=False, add_generation_prompt=True)) for i in range(8)]
params = SamplingParams(temperature=0.0, max_new_tokens=16)
hf = HFBackend(str(model_dir), device="cuda", dtype="bfloat16", batch_size=8)
start = time.perf_counter()
batched = hf.generate(prompts, params)
seconds = time.perf_counter() - start
single = [hf.generate([p], params)[0] for p in prompts]
same = sum(a.text == b.text for a, b in zip(batched, single))
errors = sum(bool(g.error) for g in batched)  # Generation.error is "" when the call succeeded
rows.append(("hf batched == single (bf16, 8 prompts)", same, 8, 8 - same, errors == 0 and same >= 7))
print(f"hf backend: a batch of 8 in {seconds:.2f} s on cuda (information only)")
hf.close()
del hf

# 2. one SFT step: the loss of step 1 (before the update) in bf16 on CUDA vs fp32 on the CPU
import datasets
import trl
from transformers import AutoModelForCausalLM

from reasonrank.training.sft import PadCollator

ids = [tok(f"<think>passage {i} is relevant</think>\n<answer>[2] > [1]</answer>", add_special_tokens=False)["input_ids"]
       for i in range(4)]
data = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


def sft_loss(device_bf16):
    cfg = dict(output_dir=f"{work}/sft-{device_bf16}", max_steps=1, per_device_train_batch_size=4, learning_rate=1e-4,
               report_to="none", logging_steps=1, save_strategy="no", seed=0, bf16=device_bf16, use_cpu=not device_bf16,
               dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**cfg), train_dataset=data, processing_class=tok,
                             data_collator=PadCollator(tok.pad_token_id))
    trainer.train()
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


report("SFT step loss (bf16 cuda vs fp32 cpu)", sft_loss(True), sft_loss(False), tol=0.05)

# 3. GRPO loss under the preset's verl settings on a fixed batch: bf16 cuda vs fp32 cpu
from reasonrank.training.grpo import VERL_LOSS


def grpo_loss(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
    args = trl.GRPOConfig(output_dir=f"{work}/grpo-{device}", per_device_train_batch_size=8, num_generations=8,
                          gradient_accumulation_steps=1, use_cpu=device == "cpu", bf16=device == "cuda",
                          report_to="none", use_vllm=False, **VERL_LOSS)
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "rank"}]}] * 8)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                              args=args, train_dataset=dataset, processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([ids[0][:6]] * 8)
    completion = torch.randint(0, 1000, (8, 24), generator=g)
    mask = (torch.arange(24)[None, :] < torch.tensor([4, 8, 12, 16, 18, 20, 22, 24])[:, None]).long()
    base = torch.randn(8, 24, generator=g) * 0.1 - 11.0
    batch = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
             "completion_mask": mask, "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2, 0.8, -0.8]),
             "old_per_token_logps": base, "ref_per_token_logps": base + 0.05}
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, batch))


report("GRPO loss, verl settings (bf16 cuda vs fp32 cpu)", grpo_loss("cuda"), grpo_loss("cpu"), tol=0.05)

# 4. one real GRPOTrainer step on CUDA in bf16 (generation with transformers, the ranking reward)
from reasonrank.reward import trl_ranking_reward

rl = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": f"rank [1] [2] for q{i}"}],
                                  "ground_truth": ["a", "b"], "initial_list": ["a", "b"], "relevant_docids": ["a"]}
                                 for i in range(4)])
model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
args = trl.GRPOConfig(output_dir=f"{work}/grpo-step", max_steps=1, per_device_train_batch_size=8, num_generations=8,
                      max_completion_length=16, bf16=True, report_to="none", use_vllm=False, logging_steps=1,
                      save_strategy="no", remove_unused_columns=False, **VERL_LOSS)
trainer = trl.GRPOTrainer(model=model, reward_funcs=[trl_ranking_reward], args=args, train_dataset=rl,
                          processing_class=tok)
trainer.train()
step = next(h for h in trainer.state.log_history if "loss" in h)
report("GRPOTrainer step on cuda (loss finite)", float(step["loss"]), None, tol=0)

print(f"\n{'check':<52} {'cuda':>12} {'cpu':>12} {'|diff|':>10}  ok")
for check, cuda, cpu, diff, ok in rows:
    cpu_s = f"{cpu:>12.5g}" if cpu is not None else f"{'-':>12}"
    print(f"{check:<52} {cuda:>12.5g} {cpu_s} {diff:>10.3g}  {'yes' if ok else 'NO'}")
print(f"\ndevice: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; trl {trl.__version__}")
sys.exit(0 if all(r[-1] for r in rows) else 1)
PY
