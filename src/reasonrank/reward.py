"""The multi-view ranking reward of ReasonRank's GRPO stage (a pure function, no backend).

R = nDCG@10 + phi * Recall@10 + gamma * RBO   (phi = 0.2, gamma = 0.1), with format rules first:
  -1  the output is not `<think>…</think> <answer>…</answer>`;
   0  the answer's ids differ from the ground truth's in count or in distinct ids, or leave 1..n.
nDCG@10 and Recall@10 use ir-measures, as evaluation does, so training optimises the reported figure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import ir_measures

FORMAT = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)
DIGITS = re.compile(r"\d+")
_NDCG10, _R10 = ir_measures.nDCG @ 10, ir_measures.R @ 10


@dataclass(frozen=True)
class RewardWeights:
    phi: float = 0.2  # Recall@10
    gamma: float = 0.1  # RBO


def answer_ids(output: str) -> list[int] | None:
    """The ids in the answer, or None when the output breaks the think/answer format."""
    match = FORMAT.search(output)
    if match is None:
        return None
    return [int(d) for d in DIGITS.findall(match.group(1))]


def rbo(predicted: Sequence, truth: Sequence) -> float:
    """Average overlap at depth k = len(predicted): (1/k) * sum_d |P[:d] ∩ G[:d]| / d.

    Written here because the `rbo` package pins numpy<2; this is exactly what the paper's code computes.
    """
    k = len(predicted)
    if k == 0:
        return 0.0
    return sum(len(set(predicted[:d]) & set(truth[:d])) / d for d in range(1, k + 1)) / k


def ranking_metrics(doc_order: Sequence[str], relevant: Sequence[str]) -> tuple[float, float]:
    """(nDCG@10, Recall@10) of a doc order against binary relevant ids, via ir-measures."""
    if not relevant or not doc_order:
        return 0.0, 0.0
    qrels = {"q": {d: 1 for d in relevant}}
    n = len(doc_order)
    run = {"q": {d: float(n - i) for i, d in enumerate(dict.fromkeys(doc_order))}}
    values = {m.measure: m.value for m in ir_measures.iter_calc([_NDCG10, _R10], qrels, run)}
    return float(values.get(_NDCG10, 0.0)), float(values.get(_R10, 0.0))


def ranking_reward(
    output: str,
    ground_truth: Sequence[int],
    initial_list: Sequence[str],
    relevant_docids: Sequence[str],
    weights: RewardWeights = RewardWeights(),
) -> float:
    """The reward of one model output for one window.

    `ground_truth`: the teacher's permutation as 1-based ids into the window; `initial_list`: the
    window's doc ids in input order; `relevant_docids`: the mined positives.
    """
    ids = answer_ids(output)
    if ids is None:
        return -1.0
    n = len(initial_list)
    if len(ids) != len(ground_truth) or len(set(ids)) != len(set(ground_truth)) or any(not 1 <= i <= n for i in ids):
        return 0.0
    order = [initial_list[i - 1] for i in ids]
    ndcg, recall = ranking_metrics(order, relevant_docids)
    return ndcg + weights.phi * recall + weights.gamma * rbo(ids, list(ground_truth))


def format_reward(output: str) -> float:
    """1 when the output follows the think/answer format, else 0 (an optional separate GRPO reward)."""
    return 1.0 if FORMAT.search(output) else 0.0


def _ground_truth(value: Any) -> dict:
    if isinstance(value, str):
        value = json.loads(value)
    return value


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> float:
    """verl's custom reward signature (`custom_reward_function.name=compute_score`).

    `ground_truth` is the RL export's `reward_model.ground_truth`: a dict (or its JSON) with
    `permutation`, `initial_list` and `relevant_docids`; `extra_info` may carry `phi`/`gamma`.
    """
    gt = _ground_truth(ground_truth)
    extra = extra_info or {}
    weights = RewardWeights(extra.get("phi", 0.2), extra.get("gamma", 0.1))
    return ranking_reward(solution_str, gt["permutation"], gt["initial_list"], gt["relevant_docids"], weights)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")
    return completion


def trl_ranking_reward(completions, ground_truth, initial_list, relevant_docids, **_) -> list[float]:
    """TRL GRPOTrainer reward function: dataset columns arrive as keyword lists."""
    return [
        ranking_reward(_completion_text(c), json.loads(g) if isinstance(g, str) else g, il, rel)
        for c, g, il, rel in zip(completions, ground_truth, initial_list, relevant_docids)
    ]


def trl_format_reward(completions, **_) -> list[float]:
    return [format_reward(_completion_text(c)) for c in completions]
