"""Answer extraction and permutation repair on real and adversarial model outputs."""

from __future__ import annotations

import pytest

from reasonrank.parsing import ParseStatus, format_permutation, parse_ranking

OK, REPAIRED, NO_ANSWER, TRUNCATED = ParseStatus.OK, ParseStatus.REPAIRED, ParseStatus.NO_ANSWER, ParseStatus.TRUNCATED

QWEN_STYLE = (
    "<think>\nOkay, let's tackle this. The query asks why leaves change colour in autumn. Passage [3] explains "
    "chlorophyll breakdown directly, so it's the most relevant. Passage [1] mentions carotenoids, which is related. "
    "[4] is about evergreen trees — less relevant. [2] and [5] are off-topic (photosynthesis in algae, and a recipe).\n"
    "So the order should be [3] > [1] > [4] > [2] > [5].\n</think>\n"
    "<answer> [3] > [1] > [4] > [2] > [5] </answer>"
)

# (id, text, n, finish_reason, require_tags, expected permutation, expected status)
CASES = [
    ("clean", "<think>r</think><answer>[2] > [3] > [1]</answer>", 3, "stop", True, [1, 2, 0], OK),
    ("clean_length_but_complete", "<think>r</think>\n<answer>[2] > [3] > [1]</answer>", 3, "length", True, [1, 2, 0], OK),
    ("upper_case_tags", "<THINK>r</THINK><ANSWER>[1] > [3] > [2]</ANSWER>", 3, "", True, [0, 2, 1], OK),
    ("real_qwen_style", QWEN_STYLE, 5, "stop", True, [2, 0, 3, 1, 4], OK),
    ("truncated_reasoning", "<think>Passage [3] looks best, then [1] maybe, but", 3, "length", True, [0, 1, 2], TRUNCATED),
    ("truncated_untagged", "Passage [3] looks best, then [1] maybe, but", 3, "length", True, [0, 1, 2], TRUNCATED),
    ("unclosed_think_stop", "<think>Passage [3] looks best", 3, "stop", True, [0, 1, 2], NO_ANSWER),
    ("missing_tags", "[3] > [1] > [2]", 3, "stop", True, [2, 0, 1], REPAIRED),
    ("answer_only_after_think", "<think>hmm [1] [2]</think>\n[2] > [1] > [3]", 3, "", True, [1, 0, 2], REPAIRED),
    ("answer_tag_without_think", "Reasoning... <answer>[2] > [1] > [3]</answer>", 3, "", True, [1, 0, 2], REPAIRED),
    ("answer_cut_by_length", "<think>r</think><answer>[4] > [2] > [", 4, "length", True, [3, 1, 0, 2], REPAIRED),
    ("duplicates", "<think>r</think><answer>[2] > [2] > [1] > [3] > [1]</answer>", 3, "", True, [1, 0, 2], REPAIRED),
    ("out_of_range", "<think>r</think><answer>[4] > [2] > [0] > [1] > [3] > [21]</answer>", 3, "", True, [1, 0, 2], REPAIRED),
    ("missing_ids", "<think>r</think><answer>[4] > [2]</answer>", 5, "", True, [3, 1, 0, 2, 4], REPAIRED),
    ("ties", "<think>r</think><answer>[2] = [3] > [1]</answer>", 3, "", True, [1, 2, 0], OK),
    ("fullwidth_digits", "<think>r</think><answer>[２] > [１] > [３]</answer>", 3, "", True, [1, 0, 2], REPAIRED),
    ("fullwidth_brackets", "<think>r</think><answer>［3］ > ［1］ > ［2］</answer>", 3, "", True, [2, 0, 1], REPAIRED),
    ("arabic_indic_digits", "<think>r</think><answer>[٣] > [١] > [٢]</answer>", 3, "", True, [2, 0, 1], REPAIRED),
    ("prose_around_answer", "<think>r</think>\n<answer>Sure! The ranking is: [3] > [2] > [1]. Hope this helps (top 3).</answer>",
     3, "", True, [2, 1, 0], OK),
    ("prose_untagged", "Here is the ranking: [2] > [1] > [3]. Passage 2 is best.", 3, "stop", True, [1, 0, 2], REPAIRED),
    ("bare_numbers_fallback", "<think>r</think><answer>3 > 1 > 2</answer>", 3, "", True, [2, 0, 1], REPAIRED),
    ("spaces_in_brackets", "<think>r</think><answer>[ 2 ] > [1 ]</answer>", 2, "", True, [1, 0], OK),
    ("empty_string", "", 4, "stop", True, [0, 1, 2, 3], NO_ANSWER),
    ("empty_string_length", "", 2, "length", True, [0, 1], TRUNCATED),
    ("empty_answer", "<think>r</think><answer></answer>", 3, "", True, [0, 1, 2], NO_ANSWER),
    ("no_ids_at_all", "<think>r</think><answer>I cannot rank these.</answer>", 3, "", True, [0, 1, 2], NO_ANSWER),
    ("all_out_of_range", "<think>r</think><answer>[7] > [9]</answer>", 3, "", True, [0, 1, 2], NO_ANSWER),
    ("rankgpt_plain", "[2] > [3] > [1]", 3, "stop", False, [1, 2, 0], OK),
    ("rankgpt_prose", "The ranking: [2] > [3] > [1]", 3, "stop", False, [1, 2, 0], OK),
    ("rankgpt_cut", "[2] > [3", 3, "length", False, [1, 0, 2], REPAIRED),
    ("rankgpt_reasoning_model", "<think>[1] or [3]?</think>\n[3] > [1] > [2]", 3, "", False, [2, 0, 1], OK),
    ("rankgpt_empty", "", 3, "", False, [0, 1, 2], NO_ANSWER),
    ("single_passage", "<think>r</think><answer>[1]</answer>", 1, "", True, [0], OK),
    ("zero_passages", "<think>r</think><answer></answer>", 0, "", True, [], NO_ANSWER),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_parse_table(case):
    _, text, n, finish, require_tags, expected, status = case
    result = parse_ranking(text, n, finish_reason=finish, require_tags=require_tags)
    assert sorted(result.permutation) == list(range(n)), "must always be a full permutation"
    assert result.permutation == expected
    assert result.status is status, result.detail
    if status is not OK:
        assert result.detail


def test_reasoning_and_answer_fields():
    result = parse_ranking(QWEN_STYLE, 5)
    assert result.answer == "[3] > [1] > [4] > [2] > [5]"
    assert result.reasoning.startswith("Okay, let's tackle this.")
    assert result.reasoning.endswith("[3] > [1] > [4] > [2] > [5].")
    assert result.detail == ""
    truncated = parse_ranking("<think>still thinking about [2]", 3, finish_reason="length")
    assert truncated.reasoning == "still thinking about [2]" and truncated.answer == ""
    assert "token limit" in truncated.detail


def test_details_name_the_repairs():
    detail = parse_ranking("<think>r</think><answer>[2] > [2] > [9] > [1]</answer>", 4).detail
    assert "duplicate ids dropped: [2]" in detail
    assert "ids outside 1..4 dropped: [9]" in detail
    assert "missing ids appended in input order: [3], [4]" in detail
    assert "ties" in parse_ranking("<think>r</think><answer>[2] = [1]</answer>", 2).detail


def test_bare_numbers_only_when_no_brackets():
    # Brackets present: the bare "5" in the prose is not read as an id.
    result = parse_ranking("<think>r</think><answer>Of the 5 passages: [2] > [1]</answer>", 5)
    assert result.permutation == [1, 0, 2, 3, 4]


def test_negative_n_raises():
    with pytest.raises(ValueError):
        parse_ranking("[1]", -1)


def test_format_permutation_round_trip():
    assert format_permutation([2, 0, 1]) == "[3] > [1] > [2]"
    assert format_permutation([]) == ""
    perm = [4, 1, 3, 0, 2]
    text = f"<think>x</think><answer>{format_permutation(perm)}</answer>"
    assert parse_ranking(text, 5).permutation == perm


def test_adversarial_numbers_never_raise():
    huge = "9" * 5000
    result = parse_ranking(f"<think>r</think><answer>[{huge}] > [2] > [1]</answer>", 2)
    assert result.permutation == [1, 0] and result.status is REPAIRED
    assert parse_ranking(f"<think>r</think><answer>{huge}</answer>", 2).status is NO_ANSWER
    assert parse_ranking("<answer>[1]" * 1000, 3).permutation == [0, 1, 2]


def test_full_match_agrees_with_upstream_regex():
    import random
    import re

    from reasonrank.parsing import _full_match

    pattern = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", " ", "\n", "x", "[1]", "<", ">"]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        m = pattern.search(text)
        assert _full_match(text) == (m.groups() if m else None), text


@pytest.mark.timeout(60)  # a guard against catastrophic backtracking (it parses in milliseconds), not a speed test
def test_degenerate_repetition_is_parsed():
    text = "<think>a</think><answer>[1] > [2]" * 2000  # a looping model cut off by the token limit
    result = parse_ranking(text, 2, finish_reason="length")
    assert result.permutation == [0, 1] and result.status is REPAIRED
