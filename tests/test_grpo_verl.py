"""The GRPO presets' loss is verl 0.4.0's (the paper's) for its batch layout.

verl's formulas are written out here by hand (core_algos.compute_policy_loss with its always-on
dual-clip, kl_penalty "low_var_kl", agg_loss "token-mean", dp_actor's division by the gradient
accumulation of one-sequence micro-batches) and compared with what TRL's own
`GRPOTrainer._compute_loss` computes under the preset, on a tiny random Qwen2 and a group of 8
completions of different lengths: loss values and parameter gradients.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl", reason="the train extra (trl) is not installed")
torch = pytest.importorskip("torch")

from reasonrank.training.grpo import VERL_LOSS, grpo_layout, grpo_trainer_class  # noqa: E402
from reasonrank.training.presets import build_config, load_preset  # noqa: E402

CLIP, CLIP_C, KL_COEF = 0.2, 3.0, 0.001  # the paper's clip_ratio, verl's default clip_ratio_c, kl_loss_coef


# --- verl 0.4.0, by hand -------------------------------------------------------------------------

def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def verl_policy_losses(logp, old_logp, adv, clip=CLIP, clip_c=CLIP_C):
    """Per-token PPO loss with verl's dual clip for negative advantages."""
    ratio = torch.exp(logp - old_logp)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    clipped1 = torch.maximum(loss1, loss2)
    clipped2 = torch.min(-adv * clip_c, clipped1)
    return torch.where(adv < 0, clipped2, clipped1)


def verl_low_var_kl(logp, ref_logp, clamp=True):
    kl = ref_logp - logp
    kld = torch.exp(kl) - kl - 1
    return torch.clamp(kld, min=-10, max=10) if clamp else kld


def verl_loss(logp, old_logp, ref_logp, adv, mask, kl_clamp=True):
    """dp_actor.update_policy with ppo_micro_batch_size_per_gpu=1: each sequence is a micro-batch whose
    loss is token-mean(pg) + kl_coef * token-mean(kl), divided by the accumulation (= sequences)."""
    n = logp.size(0)
    total = 0.0
    for i in range(n):
        m = mask[i]
        a = adv[i].expand_as(logp[i])
        pg = masked_mean(verl_policy_losses(logp[i], old_logp[i], a), m)
        kl = masked_mean(verl_low_var_kl(logp[i], ref_logp[i], clamp=kl_clamp), m)
        total = total + (pg + KL_COEF * kl) / n
    return total


# --- the batch -----------------------------------------------------------------------------------

ANSWERS = ["[2] > [1] > [3]", "[1] > [3] > [2]", "[3] > [2] > [1]"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, qwen_tokenizer):
    from reasonrank.training import build_tiny_model

    root = tmp_path_factory.mktemp("verl")
    model_dir = build_tiny_model(root / "tiny", tokenizer=qwen_tokenizer)
    return root, model_dir, qwen_tokenizer


def make_trainer(root, model_dir, tok, per_device: int, **overrides):
    """A GRPOTrainer under the 7b-full preset's loss and optimizer settings (CPU, fp32, no vLLM)."""
    import datasets
    import trl
    from transformers import AutoModelForCausalLM

    cfg = load_preset("7b-full", "grpo")
    targs = dict(cfg["training_args"])
    targs.update(per_device_train_batch_size=per_device, **overrides)
    targs.update(grpo_layout(cfg, processes=1, n_prompts=32))
    targs.update(use_vllm=False, bf16=False, gradient_checkpointing=False, output_dir=str(root / "out"),
                 report_to="none", use_cpu=True)
    targs = {k: v for k, v in targs.items() if not k.startswith("vllm_")}
    args = build_config(trl.GRPOConfig, targs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "rank"}]}] * 8)
    trainer_cls = grpo_trainer_class(trl, cfg["weight_decay_all_parameters"])
    trainer = trainer_cls(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                              args=args, train_dataset=dataset, processing_class=tok)
    trainer.model.train()
    return trainer


def make_batch(tok, model):
    """One group of 8 completions of 4..60 tokens sharing a prompt; old/ref log-probs perturbed from
    the model's so that ratios cross 1 +- 0.2 and, for a few tokens, the dual-clip bound 3."""
    prompt = tok.apply_chat_template([{"role": "user", "content": "Rank the passages [1] [2] [3] for the query."}],
                                     tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    completions = []
    for i in range(8):
        think = " ".join(["passage", str(i), "is relevant because"] * (i * 2))
        text = f"<think>{think}</think>\n<answer>{ANSWERS[i % 3]}</answer>"
        completions.append(tok(text, add_special_tokens=False)["input_ids"][: 4 + i * 8])
    width = max(len(c) for c in completions)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    completion_ids = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
    prompt_t = torch.tensor([prompt_ids] * 8)
    logp = model_logps(model, prompt_t, completion_ids, mask).detach()
    g = torch.Generator().manual_seed(1)
    old = logp + (torch.rand(logp.shape, generator=g) - 0.5) * 1.2
    old[1, :3] = logp[1, :3] - 1.5  # ratio e^1.5 = 4.5 > 3 on a negative-advantage sequence: dual clip
    ref = logp + (torch.rand(logp.shape, generator=g) - 0.5) * 4.0  # |ref - logp| <= 2: the k3 clamp never binds
    adv = torch.tensor([1.2, -0.9, 0.4, -1.5, 0.0, 0.8, -0.3, 0.3])
    return {
        "prompt_ids": prompt_t, "prompt_mask": torch.ones_like(prompt_t),
        "completion_ids": completion_ids, "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }


def model_logps(model, prompt_ids, completion_ids, mask):
    """Per-token log-probs of the completion, computed here independently of TRL."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attn = torch.cat([torch.ones_like(prompt_ids), mask], dim=1)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, prompt_ids.size(1) - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def rows(batch, start, stop):
    return {k: (v[start:stop] if k != "num_items_in_batch" else v) for k, v in batch.items()}


def trl_accumulated(trainer, batch, per_device):
    """TRL's loss summed over the micro-batches of one accumulation window (what Trainer backpropagates)."""
    model = trainer.model
    steps = batch["advantages"].size(0) // per_device
    trainer.current_gradient_accumulation_steps = steps
    model.zero_grad()
    total = 0.0
    for s in range(steps):
        loss = trainer._compute_loss(model, rows(batch, s * per_device, (s + 1) * per_device))
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def verl_reference(trainer, batch, kl_clamp=True):
    model = trainer.model
    model.zero_grad()
    logp = model_logps(model, batch["prompt_ids"], batch["completion_ids"], batch["completion_mask"])
    loss = verl_loss(logp, batch["old_per_token_logps"], batch["ref_per_token_logps"], batch["advantages"],
                     batch["completion_mask"].float(), kl_clamp=kl_clamp)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7, msg=name)


# --- tests ---------------------------------------------------------------------------------------

def test_presets_carry_the_verl_loss_settings():
    import trl

    for name in ("7b-full", "32b-lora", "cpu-tiny"):
        cfg = load_preset(name, "grpo")
        targs = cfg["training_args"]
        assert {k: targs[k] for k in VERL_LOSS} == VERL_LOSS, name
        args = build_config(trl.GRPOConfig, {**{k: v for k, v in targs.items() if k != "use_vllm"},
                                             **grpo_layout(cfg, processes=1, n_prompts=32),
                                             "use_vllm": False, "bf16": False, "output_dir": "unused"})
        assert (args.loss_type, args.delta, args.use_bias_correction_kl) == ("grpo", 3.0, False)
        # verl 0.4.0's actor AdamW: weight decay 0.01 (its default; train_grpo.sh keeps it) on every parameter,
        # betas (0.9, 0.999), eps 1e-8, gradient clip 1.0
        assert (args.weight_decay, cfg["weight_decay_all_parameters"]) == (0.01, True), name
        assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.max_grad_norm) == (0.9, 0.999, 1e-8, 1.0)
    for name in ("7b-full", "32b-lora"):
        cfg = load_preset(name, "grpo")
        assert cfg["rollout_steps"] == "epoch" and cfg["training_args"]["vllm_enable_sleep_mode"] is True
        assert "[-10, 10]" in cfg["source"]


@pytest.mark.parametrize("per_device", [1, 2])
def test_trl_loss_and_gradients_equal_verl(setup, per_device):
    root, model_dir, tok = setup
    trainer = make_trainer(root, model_dir, tok, per_device)
    batch = make_batch(tok, trainer.model)
    ratio = torch.exp(model_logps(trainer.model, batch["prompt_ids"], batch["completion_ids"],
                                  batch["completion_mask"]).detach() - batch["old_per_token_logps"])
    m = batch["completion_mask"].bool()
    assert (ratio[m] > 1.2).any() and (ratio[m] < 0.8).any() and (ratio[1, :3] > 3).all()  # every clip branch used

    trl_value, trl_grads = trl_accumulated(trainer, batch, per_device)
    verl_value, verl_grads = verl_reference(trainer, batch)
    assert trl_value == pytest.approx(verl_value, rel=1e-5, abs=1e-7)
    assert_same_grads(trl_grads, verl_grads)


def test_dapo_weights_long_completions_and_differs(setup):
    """Why not `dapo`: it divides by all tokens of the window, so a 60-token completion counts 15x a
    4-token one; verl (micro-batch 1) weights each sequence equally."""
    root, model_dir, tok = setup
    trainer = make_trainer(root, model_dir, tok, 1)
    batch = make_batch(tok, trainer.model)
    trainer.loss_type = "dapo"
    trainer.args.steps_per_generation = 8  # the window is the whole group here
    dapo_value, _ = trl_accumulated(trainer, batch, 1)
    verl_value, _ = verl_reference(trainer, batch)
    assert abs(dapo_value - verl_value) > 1e-3


def test_the_kl_clamp_is_the_one_difference_left(setup):
    """verl clamps k3 to [-10, 10]; TRL cannot. Where |ref - logp| is large TRL's loss is verl's without
    the clamp (documented in the presets' source and the README)."""
    root, model_dir, tok = setup
    trainer = make_trainer(root, model_dir, tok, 1)
    batch = make_batch(tok, trainer.model)
    batch["ref_per_token_logps"][0, :2] += 4.0  # exp(>=2) - ... : k3 > 10 on these tokens
    trl_value, _ = trl_accumulated(trainer, batch, 1)
    clamped, _ = verl_reference(trainer, batch, kl_clamp=True)
    unclamped, _ = verl_reference(trainer, batch, kl_clamp=False)
    assert trl_value == pytest.approx(unclamped, rel=1e-5)
    assert abs(trl_value - clamped) > 1e-5


def test_one_epoch_rollout_steps_from_the_rl_set_size():
    from reasonrank.errors import ReasonRankError

    cfg = load_preset("7b-full", "grpo")
    layout = grpo_layout(cfg, processes=8, n_prompts=1000)
    # 1000 // 16 = 62 rollout steps (the partial 63rd dropped, as verl does), 2 updates each
    assert layout["max_steps"] == 124
    assert layout["gradient_accumulation_steps"] == 8 and layout["steps_per_generation"] == 16
    with pytest.raises(ReasonRankError, match="fewer than one rollout step"):
        grpo_layout(cfg, processes=8, n_prompts=10)
    assert grpo_layout({**cfg, "rollout_steps": 3}, processes=8)["max_steps"] == 6


def test_the_optimizer_step_is_verls_adamw(setup):
    """verl 0.4.0 steps `AdamW(actor.parameters(), lr, betas=(0.9, 0.999), weight_decay=0.01)`: every
    parameter decays. transformers' Trainer would leave biases (Qwen2's q/k/v) and norm weights out; the
    preset's weight_decay_all_parameters puts them back. One step from the same gradients, compared with a
    plain torch AdamW built as verl builds it (lr raised to 1e-2 so the decay term, lr x 0.01 x p, shows)."""
    import copy

    root, model_dir, tok = setup
    trainer = make_trainer(root, model_dir, tok, 1, learning_rate=1e-2)
    model = trainer.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.endswith("q_proj.bias") for n in names) and any("norm" in n for n in names)
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    assert all(id(p) in decayed for p in model.parameters() if p.requires_grad)
    # transformers' own choice (what a preset without weight_decay_all_parameters gets) skips them
    plain = set(trainer.__class__.__mro__[1].get_decay_parameter_names(trainer, model))
    assert not any(n.endswith("q_proj.bias") or "norm" in n for n in plain)

    reference = copy.deepcopy(model)
    verl_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(3)
    for (_, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        grad = torch.randn(p.shape, generator=g) * 1e-3
        p.grad, q.grad = grad.clone(), grad.clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    verl_opt.step()
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=n)
    # the decay really acted on a bias: without it the step differs by lr x 0.01 x bias
    bias = next(n for n in names if n.endswith("q_proj.bias"))
    undecayed = before[bias] - 1e-2 * torch.sign(dict(model.named_parameters())[bias].grad)  # Adam's first step ~ lr x sign(g)
    assert not torch.allclose(dict(model.named_parameters())[bias], undecayed, rtol=0, atol=1e-7)
