"""The multi-view ranking reward: exact hand-computed values, and random cases against a plain implementation."""

import json
import math
import random

import pytest

from reasonrank.reward import compute_score, format_reward, ranking_reward, rbo, trl_format_reward, trl_ranking_reward

WINDOW = [f"d{i}" for i in range(1, 21)]


def out(ids, think="reasoning"):
    return f"<think>{think}</think>\n<answer>{' > '.join(f'[{i}]' for i in ids)}</answer>"


def test_format_violations_get_minus_one():
    assert ranking_reward("[1] > [2]", [1, 2], ["a", "b"], ["a"]) == -1.0
    assert ranking_reward("<think>x</think><answer>[1] > [2]", [1, 2], ["a", "b"], ["a"]) == -1.0
    assert ranking_reward("<answer>[1] > [2]</answer>", [1, 2], ["a", "b"], ["a"]) == -1.0


def test_count_distinct_and_range_violations_get_zero():
    gt = [2, 1, 3]
    assert ranking_reward(out([2, 1]), gt, ["a", "b", "c"], ["b"]) == 0.0  # too few
    assert ranking_reward(out([2, 2, 1]), gt, ["a", "b", "c"], ["b"]) == 0.0  # duplicate
    assert ranking_reward(out([2, 1, 4]), gt, ["a", "b", "c"], ["b"]) == 0.0  # out of range
    assert ranking_reward(out([0, 1, 2]), gt, ["a", "b", "c"], ["b"]) == 0.0


def test_perfect_answer_hand_computed():
    # 3 passages, relevant b; prediction == ground truth [2, 1, 3]: nDCG 1, Recall 1, RBO 1
    assert ranking_reward(out([2, 1, 3]), [2, 1, 3], ["a", "b", "c"], ["b"]) == pytest.approx(1 + 0.2 + 0.1)


def test_hand_computed_partial():
    # window a,b,c,d; relevant {b, d}; predicted [1,2,3,4] -> order a,b,c,d; ground truth [2,4,1,3]
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ndcg = dcg / (1 + 1 / math.log2(3))
    # RBO: d1 {1}&{2}=0; d2 {1,2}&{2,4}=1 -> 1/2; d3 {1,2,3}&{2,4,1}=2 -> 2/3; d4 = 4/4 -> 1
    rbo_value = (0 + 1 / 2 + 2 / 3 + 1) / 4
    expected = ndcg + 0.2 * 1.0 + 0.1 * rbo_value
    assert ranking_reward(out([1, 2, 3, 4]), [2, 4, 1, 3], ["a", "b", "c", "d"], ["b", "d"]) == pytest.approx(expected, abs=1e-9)


def test_ideal_dcg_counts_relevant_docs_outside_the_window():
    # relevant: b and x (x not in the window): IDCG counts both, Recall@10 is 1/2
    ndcg = 1.0 / (1 + 1 / math.log2(3))
    value = ranking_reward(out([2, 1]), [2, 1], ["a", "b"], ["b", "x"])
    assert value == pytest.approx(ndcg + 0.2 * 0.5 + 0.1 * 1.0)


def test_weights_and_verl_signature():
    gt = {"permutation": [2, 1, 3], "initial_list": ["a", "b", "c"], "relevant_docids": ["b"]}
    assert compute_score("synthetic", out([2, 1, 3]), json.dumps(gt)) == pytest.approx(1.3)
    assert compute_score("synthetic", out([2, 1, 3]), gt, {"phi": 0.0, "gamma": 0.0}) == pytest.approx(1.0)


def test_trl_reward_functions():
    completions = [[{"role": "assistant", "content": out([2, 1, 3])}], [{"role": "assistant", "content": "no tags"}]]
    values = trl_ranking_reward(completions, ground_truth=[[2, 1, 3], "[2, 1, 3]"], initial_list=[["a", "b", "c"]] * 2, relevant_docids=[["b"]] * 2)
    assert values == [pytest.approx(1.3), -1.0]
    assert trl_format_reward(completions) == [1.0, 0.0]
    assert format_reward(out([1])) == 1.0


# --- an independent, straightforward implementation to compare against on random cases ---

def plain_ndcg10(order, relevant):
    rel = set(relevant)
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(order[:10]) if d in rel)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
    return dcg / idcg if idcg else 0.0


def plain_reward(ids, gt, window, relevant):
    order = [window[i - 1] for i in ids]
    recall = len(set(order[:10]) & set(relevant)) / len(set(relevant))
    overlap = sum(len(set(ids[:d]) & set(gt[:d])) / d for d in range(1, len(ids) + 1)) / len(ids)
    return plain_ndcg10(order, relevant) + 0.2 * recall + 0.1 * overlap


def test_random_permutations_match_plain_implementation():
    rng = random.Random(13)
    for _ in range(300):
        n = rng.randint(1, 20)
        window = [f"doc{rng.randint(0, 10**6)}-{i}" for i in range(n)]
        relevant = rng.sample(window, rng.randint(1, n)) + (["outside"] if rng.random() < 0.3 else [])
        gt = rng.sample(range(1, n + 1), n)
        ids = rng.sample(range(1, n + 1), n)
        assert ranking_reward(out(ids), gt, window, relevant) == pytest.approx(plain_reward(ids, gt, window, relevant), abs=1e-9)


def test_rbo_edges():
    assert rbo([], []) == 0.0
    assert rbo([1, 2, 3], [1, 2, 3]) == 1.0
    assert rbo([1, 2], [2, 1]) == pytest.approx((0 + 1) / 2)
