"""Training data, loss masking, presets and accelerate configs (no training here; see test_training_chain)."""

from __future__ import annotations

import json

import pytest
from _data import SCIFACT, needs_data

pytest.importorskip("trl", reason="the train extra (trl) is not installed")

from reasonrank.errors import FormatError, ReasonRankError  # noqa: E402
from reasonrank.io import load_collection  # noqa: E402
from reasonrank.prompts import PromptRenderer  # noqa: E402
from reasonrank.reward import ranking_reward, trl_ranking_reward  # noqa: E402
from reasonrank.training.data import (  # noqa: E402
    IGNORE_INDEX, TrainingDataError, load_rl, load_sft, tokenize_sft, write_rows,
)
from reasonrank.training.grpo import grpo_layout  # noqa: E402
from reasonrank.training.presets import (  # noqa: E402
    accelerate_config, apply_overrides, build_config, list_accelerate_configs, list_presets, load_preset, parse_override,
)
from reasonrank.training.qrels_data import collection_rows  # noqa: E402


@pytest.fixture(scope="module")
def scifact(qwen_tokenizer):
    """6 SciFact train windows of 4 BM25 candidates, prompts from the real renderer + tokenizer."""
    if not (SCIFACT / "corpus.jsonl.gz").exists():
        pytest.skip("shared SciFact data not found")
    renderer = PromptRenderer(qwen_tokenizer, mode="reasonrank", max_passage_tokens=24)
    windows, sft, rl = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=6, window=4)
    assert len(sft) == len(rl) == len(windows) >= 5
    return renderer, windows, sft, rl


# -- loss masking ------------------------------------------------------------------------------


@needs_data
def test_sft_labels_mask_exactly_the_inference_prompt(scifact, qwen_tokenizer, tmp_path):
    renderer, windows, sft, _ = scifact
    rows, report = load_sft(write_rows(tmp_path / "sft.jsonl", sft), qwen_tokenizer, cutoff_len=4096)
    assert report.kept == len(sft) and not report.dropped_overlong
    for row, w in zip(rows, windows):
        # the prompt the reranker sends at inference, rendered independently of the training code
        prompt = renderer.render(w["query"].text, w["candidates"]).text
        prompt_ids = qwen_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert row["input_ids"][:n] == prompt_ids
        assert row["labels"][:n] == [IGNORE_INDEX] * n  # every prompt token masked …
        assert row["labels"][n:] == row["input_ids"][n:]  # … and no answer token masked
        assert IGNORE_INDEX not in row["labels"][n:]
        answer = row["messages"][-1]["content"]
        assert qwen_tokenizer.decode(row["input_ids"][n:]) == answer + "<|im_end|>\n"  # trains the stop token


def test_tokenize_sft_refuses_a_prompt_that_is_not_a_token_prefix():
    class Tok:  # a template that renders the prompt differently alone than in the conversation
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "A" if add_generation_prompt else "Bxy"

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(ValueError, match="prefix"):
        tokenize_sft(Tok(), [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


@needs_data
def test_gold_completion_gets_the_top_reward(scifact):
    _, _, sft, rl = scifact
    completions = [s["messages"][-1]["content"] for s in sft]
    rewards = trl_ranking_reward(completions, [r["ground_truth"] for r in rl], [r["initial_list"] for r in rl],
                                 [r["relevant_docids"] for r in rl])
    for reward, row in zip(rewards, rl):
        n_rel = len(set(row["relevant_docids"]) & set(row["initial_list"]))
        recall = n_rel / len(row["relevant_docids"])
        assert reward == pytest.approx(1.0 + 0.2 * recall + 0.1)  # nDCG@10 = 1, RBO = 1
    assert ranking_reward("no tags at all", rl[0]["ground_truth"], rl[0]["initial_list"], rl[0]["relevant_docids"]) == -1.0


@needs_data
def test_loaders_read_the_synthesis_exports(scifact, qwen_tokenizer, tmp_path):
    """sft.jsonl, rl.jsonl and verl/train.parquet as reasonrank.synthesis.export writes them."""
    export = pytest.importorskip("reasonrank.synthesis.export")
    from reasonrank.training.qrels_data import qrels_permutation

    _, windows, sft, _ = scifact
    samples = []
    for i, (w, row) in enumerate(zip(windows, sft)):
        docids = [c.docid for c in w["candidates"]]
        perm = [p + 1 for p in qrels_permutation(docids, w["relevant"])]
        samples.append({"id": f"s{i}", "dataset": "scifact", "qid": w["query"].qid, "messages": row["messages"][:2],
                        "reasoning": "because", "permutation": perm, "initial_list": docids,
                        "final_list": [docids[p - 1] for p in perm], "relevant_docids": w["relevant"]})
    sft_rows, report = load_sft(write_rows(tmp_path / "sft.jsonl", [export.sft_row(s) for s in samples]),
                                qwen_tokenizer, cutoff_len=4096)
    assert report.kept == len(samples) and all(IGNORE_INDEX in r["labels"] for r in sft_rows)
    rl_rows, _ = load_rl(write_rows(tmp_path / "rl.jsonl", [export.rl_row(s) for s in samples]), qwen_tokenizer, 4096)
    export.write_verl_parquet(tmp_path / "train.parquet", [export.verl_row(s, i) for i, s in enumerate(samples)])
    verl_rows, _ = load_rl(tmp_path / "train.parquet", qwen_tokenizer, 4096)
    assert verl_rows == rl_rows  # the extra verl columns are ignored; the training columns are the same
    assert [r["ground_truth"] for r in rl_rows] == [s["permutation"] for s in samples]


# -- bad input names the file and row --------------------------------------------------------------


def _sft_row(i=0, answer="<think>r</think>\n<answer>[2] > [1]</answer>"):
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": answer}], "id": f"q{i}", "dataset": "t"}


def _rl_row(i=0, **changes):
    row = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "ground_truth": [2, 1],
           "initial_list": ["d1", "d2"], "relevant_docids": ["d2"], "id": f"q{i}", "dataset": "t"}
    row.update(changes)
    return row


def test_sft_errors_name_file_and_row(tmp_path):
    path = tmp_path / "sft.jsonl"
    bad = _sft_row(1)
    del bad["dataset"]
    write_rows(path, [_sft_row(0), bad])
    with pytest.raises(TrainingDataError, match=r"sft\.jsonl:2: row 2 \(id='q1'\): missing column\(s\) \['dataset'\]"):
        load_sft(path)
    write_rows(path, [_sft_row(0), _sft_row(1), _sft_row(2, answer="[1] > [2]")])
    with pytest.raises(TrainingDataError, match=r"sft\.jsonl:3: row 3 .*not '<think>"):
        load_sft(path)
    path.write_text(json.dumps(_sft_row(0)) + "\n{not json\n")
    with pytest.raises(FormatError, match=r"sft\.jsonl:2: invalid JSON"):
        load_sft(path)
    msgs = _sft_row(0)
    msgs["messages"] = msgs["messages"][:2]  # no assistant turn
    write_rows(path, [msgs])
    with pytest.raises(TrainingDataError, match=r":1: row 1 .*roles \['system', 'user'\]"):
        load_sft(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rl_errors_name_file_and_row(tmp_path, suffix):
    path = tmp_path / f"rl{suffix}"
    write_rows(path, [_rl_row(0), _rl_row(1), _rl_row(2, ground_truth=[3, 1])])
    with pytest.raises(TrainingDataError, match=rf"rl\{suffix}:3: row 3 \(id='q2'\): 'ground_truth' ids \[3\] are outside 1..2"):
        load_rl(path)
    write_rows(path, [_rl_row(0, prompt=[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])])
    with pytest.raises(TrainingDataError, match=r":1: row 1 .*must end with a user message"):
        load_rl(path)
    write_rows(path, [{k: v for k, v in _rl_row(0).items() if k != "relevant_docids"}])
    with pytest.raises(TrainingDataError, match=r"row 1 .*missing column\(s\) \['relevant_docids'\]"):
        load_rl(path)


def test_rl_parquet_round_trip(tmp_path):
    rows = [_rl_row(i) for i in range(3)]
    loaded, report = load_rl(write_rows(tmp_path / "rl.parquet", rows))
    assert report.rows == report.kept == 3
    assert loaded == rows


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n")
    with pytest.raises(TrainingDataError, match="no training rows"):
        load_sft(path)


@needs_data
def test_overlong_rows_error_or_are_dropped_and_counted(scifact, qwen_tokenizer, tmp_path, capsys):
    _, _, sft, rl = scifact
    sft_path, rl_path = write_rows(tmp_path / "sft.jsonl", sft), write_rows(tmp_path / "rl.jsonl", rl)
    lengths = sorted(len(r["input_ids"]) for r in load_sft(sft_path, qwen_tokenizer)[0])
    cutoff = lengths[len(lengths) // 2]  # about half the rows are longer
    longer = sum(n > cutoff for n in lengths)
    assert 0 < longer < len(lengths)
    with pytest.raises(TrainingDataError, match=rf"tokens \(prompt \+ answer\) exceed the cutoff of {cutoff}"):
        load_sft(sft_path, qwen_tokenizer, cutoff_len=cutoff)
    rows, report = load_sft(sft_path, qwen_tokenizer, cutoff_len=cutoff, drop_overlong=True)
    assert len(rows) == len(sft) - longer and len(report.dropped_overlong) == longer
    assert f"{len(rows)} of {len(sft)} rows kept, {longer} dropped as longer than the cutoff" in capsys.readouterr().err
    with pytest.raises(TrainingDataError, match="more than max_prompt_length 50"):
        load_rl(rl_path, qwen_tokenizer, max_prompt_length=50)
    with pytest.raises(TrainingDataError, match="no training rows"):
        load_rl(rl_path, qwen_tokenizer, max_prompt_length=50, drop_overlong=True)


# -- presets and accelerate configs ------------------------------------------------------------------


def test_presets_from_the_paper():
    assert list_presets("sft") == ["32b-lora", "7b-full", "cpu-tiny"]
    assert list_presets("grpo") == ["32b-lora", "7b-full", "cpu-tiny"]
    sft7 = load_preset("7b-full", "sft")
    ta = sft7["training_args"]
    assert (ta["learning_rate"], ta["num_train_epochs"], ta["per_device_train_batch_size"], ta["gradient_accumulation_steps"],
            ta["lr_scheduler_type"], ta["warmup_ratio"], ta["bf16"]) == (5e-6, 5, 1, 8, "cosine", 0.1, True)
    assert sft7["cutoff_len"] == 23552 and sft7["lora"] is None and sft7["accelerate_config"] == "zero3"
    sft32 = load_preset("32b-lora", "sft")
    assert sft32["lora"]["r"] == sft32["lora"]["lora_alpha"] == 32 and sft32["training_args"]["learning_rate"] == 1e-4
    grpo = load_preset("7b-full", "grpo")
    g = grpo["training_args"]
    assert (g["num_generations"], g["beta"], g["learning_rate"], g["max_completion_length"], g["use_vllm"]) == (8, 0.001, 1e-6, 3072, "auto")
    # one epoch over the RL set, as upstream's total_epochs=1
    assert (grpo["prompts_per_rollout"], grpo["prompts_per_update"], grpo["rollout_steps"]) == (16, 8, "epoch")
    from reasonrank.training.grpo import VERL_LOSS

    for name in ("7b-full", "32b-lora"):
        preset = load_preset(name, "grpo")["training_args"]
        assert {k: preset[k] for k in VERL_LOSS} == VERL_LOSS, name  # verl 0.4.0's loss (tests/test_grpo_verl.py)
        assert preset["vllm_enable_sleep_mode"] is True


def test_grpo_layout_maps_paper_batches_to_trl():
    grpo = load_preset("7b-full", "grpo")
    # 8 GPUs, 1 completion per device: 8 prompts x 8 rollouts = 64 completions per update; one epoch
    # over 3,210 prompts is 200 rollout steps of 16 (the last 10 dropped, as verl does) = 400 updates
    assert grpo_layout(grpo, 8, n_prompts=3210) == {"gradient_accumulation_steps": 8, "steps_per_generation": 16, "max_steps": 400}
    assert grpo_layout(grpo, 1, n_prompts=3210) == {"gradient_accumulation_steps": 64, "steps_per_generation": 128, "max_steps": 400}
    with pytest.raises(ReasonRankError, match="cannot be split"):
        grpo_layout(grpo, 3, n_prompts=3210)
    with pytest.raises(ReasonRankError, match="needs the RL set's size"):
        grpo_layout(grpo, 8)
    with pytest.raises(ReasonRankError, match="fewer than one rollout step of 16"):
        grpo_layout(grpo, 8, n_prompts=15)
    explicit = apply_overrides(grpo, {"gradient_accumulation_steps": 2, "max_steps": 5})
    assert grpo_layout(explicit, 8) == {"steps_per_generation": 16}


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_every_preset_builds_a_trl_config(stage, tmp_path):
    import trl

    cls = trl.SFTConfig if stage == "sft" else trl.GRPOConfig
    for name in list_presets(stage):
        preset = load_preset(name, stage)
        args = dict(preset["training_args"], output_dir=str(tmp_path), bf16=False)
        if stage == "grpo":
            args.update(grpo_layout(preset, 1 if name == "cpu-tiny" else 8, n_prompts=160))
            args["use_vllm"] = False
            args = {k: v for k, v in args.items() if not k.startswith("vllm_")}
        config = build_config(cls, args)
        if preset["training_args"].get("warmup_ratio"):
            assert getattr(config, "warmup_ratio", None) == 0.1 or config.warmup_steps == 0.1
    with pytest.raises(ReasonRankError, match=r"has no option\(s\) \['learning_rat'\]"):
        build_config(trl.SFTConfig, {"output_dir": str(tmp_path), "learning_rat": 1e-5})


def test_preset_overrides_and_errors(tmp_path):
    assert parse_override("max_steps=3") == ("max_steps", 3)
    assert parse_override('lora={"r": 8}') == ("lora", {"r": 8})
    assert parse_override("lr_scheduler_type=cosine") == ("lr_scheduler_type", "cosine")
    preset = apply_overrides(load_preset("cpu-tiny", "sft"), {"cutoff_len": 99, "max_steps": 7})
    assert preset["cutoff_len"] == 99 and preset["training_args"]["max_steps"] == 7
    with pytest.raises(ReasonRankError, match="unknown sft preset 'nope'"):
        load_preset("nope", "sft")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"stage": "sft", "training_args": {"max_steps": 1}}))
    assert load_preset(own, "sft")["training_args"] == {"max_steps": 1}
    with pytest.raises(ReasonRankError, match="not a 'grpo' one"):
        load_preset(own, "grpo")
    own.write_text(json.dumps({"stage": "sft", "cutof_len": 5}))
    with pytest.raises(ReasonRankError, match=r"unknown preset key\(s\) \['cutof_len'\]"):
        load_preset(own, "sft")


def test_accelerate_configs_parse_with_accelerate():
    from accelerate.commands.config.config_args import ClusterConfig

    assert list_accelerate_configs() == ["fsdp", "multi-gpu", "multi-node-zero3", "single-gpu", "zero3"]
    expected = {"single-gpu": "NO", "multi-gpu": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp": "FSDP", "multi-node-zero3": "DEEPSPEED"}
    for name, kind in expected.items():
        config = ClusterConfig.from_yaml_file(str(accelerate_config(name)))  # rejects unknown keys
        assert config.distributed_type.value == kind
        assert config.mixed_precision == "bf16"
    assert ClusterConfig.from_yaml_file(str(accelerate_config("zero3"))).deepspeed_config["zero_stage"] == 3
    multi = ClusterConfig.from_yaml_file(str(accelerate_config("multi-node-zero3")))
    assert (multi.num_machines, multi.num_processes, multi.main_process_port) == (2, 16, 29500)
    assert ClusterConfig.from_yaml_file(str(accelerate_config("fsdp"))).fsdp_config["fsdp_version"] == 2
