"""SFT → GRPO on this CPU with a tiny random Qwen2 (real Qwen2.5 tokenizer), real SciFact windows,
the real prompt renderer and the real reward; checkpoint resume; LoRA + merge through the CLI."""

from __future__ import annotations

import json

import pytest
from _data import SCIFACT, needs_data

pytest.importorskip("trl", reason="the train extra (trl) is not installed")
pytest.importorskip("peft", reason="the train extra (peft) is not installed")

from reasonrank.io import load_collection  # noqa: E402
from reasonrank.prompts import PromptRenderer  # noqa: E402
from reasonrank.reward import ranking_reward  # noqa: E402
from reasonrank.training import build_tiny_model, train_grpo, train_sft  # noqa: E402
from reasonrank.training.data import TrainingDataError, write_rows  # noqa: E402
from reasonrank.training.qrels_data import collection_rows  # noqa: E402

pytestmark = needs_data


@pytest.fixture(scope="module")
def work(tmp_path_factory, qwen_tokenizer):
    """A tiny model and 6 SFT / RL rows (3 BM25 candidates of 12 tokens per SciFact train query)."""
    root = tmp_path_factory.mktemp("train")
    renderer = PromptRenderer(qwen_tokenizer, mode="reasonrank", max_passage_tokens=12)
    _, sft, rl = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=6, window=3)
    return {
        "root": root,
        "tiny": build_tiny_model(root / "tiny", tokenizer=qwen_tokenizer),
        "sft": write_rows(root / "sft.jsonl", sft),
        "rl": write_rows(root / "rl.jsonl", rl),
        "rl_rows": rl,
    }


def _steps(history, key):
    return [h["step"] for h in history if key in h]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def test_sft_resume_then_grpo_with_the_real_reward(work, monkeypatch):
    out = work["root"] / "sft"
    # SFT: 2 steps, a checkpoint after each
    first = train_sft(work["tiny"], work["sft"], out, preset="cpu-tiny", overrides={"max_steps": 2, "save_steps": 1})
    assert first.global_step == 2 and _steps(first.log_history, "loss") == [1, 2]
    assert {p.name for p in first.checkpoints_dir.iterdir()} >= {"checkpoint-1", "checkpoint-2"}
    assert first.model_dir == out and (out / "model.safetensors").exists()

    # resume from the last checkpoint and go on to step 3: steps 1-2 are not trained again
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps: list = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    resumed = train_sft(work["tiny"], work["sft"], out, preset="cpu-tiny", overrides={"max_steps": 3, "save_steps": 1},
                        resume_from_checkpoint=True, callbacks=[CountSteps()])
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.global_step == 3 and CountSteps.steps == [3]  # one new optimizer step, not three
    assert _steps(resumed.log_history, "loss") == [1, 2, 3]  # 1-2 restored from the checkpoint's state
    losses = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert losses[1] == first.log_history[0]["loss"]

    # GRPO from the SFT output, with the reward wrapped to record what TRL hands it
    import reasonrank.training.grpo as grpo_mod

    calls = []
    real = grpo_mod.trl_ranking_reward

    def recording(completions, **kwargs):
        values = real(completions, **kwargs)
        calls.append((completions, kwargs, values))
        return values

    recording.__name__ = real.__name__  # TRL logs rewards under the function's name
    monkeypatch.setattr(grpo_mod, "trl_ranking_reward", recording)
    rl = train_grpo(out, work["rl"], work["root"] / "grpo", preset="cpu-tiny",
                    overrides={"rollout_steps": 1, "max_completion_length": 16})
    assert rl.global_step == 1
    logged = [h for h in rl.log_history if "rewards/trl_ranking_reward/mean" in h]
    assert logged and all(-1.0 <= h["rewards/trl_ranking_reward/mean"] <= 1.3 for h in logged)
    assert any("rewards/trl_format_reward/mean" in h for h in rl.log_history)  # cpu-tiny adds the format reward
    assert calls
    by_truth = {json.dumps(r["ground_truth"]) + json.dumps(r["initial_list"]): r for r in work["rl_rows"]}
    for completions, kwargs, values in calls:
        # the dataset columns arrive intact, and the logged values are the reward of those completions
        for c, gt, il, rel, v in zip(completions, kwargs["ground_truth"], kwargs["initial_list"],
                                     kwargs["relevant_docids"], values):
            row = by_truth[json.dumps(gt) + json.dumps(il)]
            assert rel == row["relevant_docids"]
            text = c if isinstance(c, str) else "".join(m["content"] for m in c)
            assert v == ranking_reward(text, gt, il, rel)

    # the GRPO output is a plain model dir that loads and generates with its own tokenizer and chat template
    model, tok = _load(rl.output_dir)
    prompt = tok.apply_chat_template(work["rl_rows"][0]["prompt"], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4 or tok.eos_token_id in gen[0].tolist()
    assert model.config.use_cache is True
    info = json.loads((rl.output_dir / "reasonrank_training.json").read_text())
    assert info["stage"] == "grpo" and info["use_vllm"] is False and info["versions"]["trl"]
    assert info["optimizer"] == {"weight_decay": 0.01, "weight_decay_all_parameters": True}  # verl 0.4.0's AdamW

    # … and straight into the reranker's hf backend
    from reasonrank.rerankers import Reranker
    from reasonrank.types import Candidate

    reranker = Reranker(model=str(rl.output_dir), backend="hf", window=3, step=3, max_new_tokens=8, max_passage_tokens=12)
    row = work["rl_rows"][0]
    cands = [Candidate(d, text=f"passage {d}") for d in row["initial_list"]]
    result = reranker.rerank("a query", cands)
    assert sorted(c.docid for c in result.candidates) == sorted(row["initial_list"])  # a random model: order kept or not


def test_lora_sft_and_merge_through_the_cli(work):
    from typer.testing import CliRunner

    from reasonrank.training.commands import app

    out = work["root"] / "lora"
    result = CliRunner().invoke(app, ["sft", "--model", str(work["tiny"]), "--data", str(work["sft"]), "--output", str(out),
                                      "--lora-r", "4", "--set", "max_steps=1", "--set", "save_strategy=no",
                                      "--set", "learning_rate=0.01"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.rindex('{\n  "output_dir"'):])
    assert report["merged"] is True and report["model_dir"] == str(out)
    assert (out / "adapter" / "adapter_config.json").exists()
    merged, tok = _load(out)
    base, _ = _load(work["tiny"])
    assert not any(k.startswith("base_model") or "lora" in k for k in merged.state_dict())  # plain weights
    changed = [k for k, v in merged.state_dict().items() if not v.equal(base.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA touched the linear layers only
    assert tok.chat_template

    # `merge` again by hand from the saved adapter gives the same weights
    again = work["root"] / "merged-again"
    result = CliRunner().invoke(app, ["merge", str(out / "adapter"), "-o", str(again)])
    assert result.exit_code == 0, result.output
    remerged, _ = _load(again)
    assert all(v.equal(remerged.state_dict()[k]) for k, v in merged.state_dict().items())


def test_lora_grpo_through_the_cli(work):
    from typer.testing import CliRunner

    from reasonrank.training.commands import app

    out = work["root"] / "grpo-lora"
    result = CliRunner().invoke(app, ["grpo", "--model", str(work["tiny"]), "--data", str(work["rl"]), "--output", str(out),
                                      "--lora-r", "4", "--no-format-reward", "--set", "rollout_steps=1",
                                      "--set", "max_completion_length=8", "--set", "save_strategy=no"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.rindex('{\n  "output_dir"'):])
    assert report["global_step"] == 1 and report["merged"] is True
    info = json.loads((out / "reasonrank_training.json").read_text())
    assert info["batch"]["num_generations"] == 2 and info["use_vllm"] is False
    model, _ = _load(out)
    assert not any("lora" in k for k in model.state_dict())


def test_bad_training_data_fails_before_training(work, tmp_path):
    rows = [json.loads(line) for line in work["sft"].read_text().splitlines()]
    rows[3]["messages"][-1]["content"] = "[1] > [2]"  # no think/answer tags
    bad = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TrainingDataError, match=r"bad\.jsonl:4: row 4 .*not '<think>"):
        train_sft(work["tiny"], bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_tiny_model_command(tmp_path):
    from typer.testing import CliRunner

    from reasonrank.training.commands import app

    result = CliRunner().invoke(app, ["tiny-model", "-o", str(tmp_path / "m"), "--layers", "1", "--hidden", "32"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (1, 32, 151936)
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
