"""The scores every face reports (reasonrank.scoring): rank, blend, the threshold, and the spec fields that choose
them. Pure arithmetic here; tests/test_face_parity.py checks that every face gives the same numbers."""

from __future__ import annotations

import pytest

from reasonrank.errors import ConfigError
from reasonrank.scoring import score_order, score_results
from reasonrank.spec import RerankerSpec, spec_from_cli
from reasonrank.types import Candidate, Query, Request, Result


def test_rank_mode_is_the_reciprocal_rank_of_the_reranked_order():
    assert score_order([2, 0, 1]) == [(2, 1.0), (0, 0.5), (1, 1 / 3)]
    # first-stage scores change nothing in rank mode
    assert score_order([2, 0, 1], [9.0, 1.0, 5.0]) == score_order([2, 0, 1])


def test_blend_mixes_the_normalised_first_stage_with_the_rerank_position_and_resorts():
    # reranked order: 2, 1, 0 (positions 1, 0.5, 0); first stage 3, 2.5, 0 (normalised 1, 5/6, 0)
    ranked = score_order([2, 1, 0], [3.0, 2.5, 0.0], score_mode="blend")
    assert [i for i, _ in ranked] == [1, 2, 0]  # the first stage holds document 1 above the reranker's top
    assert dict(ranked) == pytest.approx({2: 0.6, 1: 0.6 * 0.5 + 0.4 * 5 / 6, 0: 0.4})
    # the weight: 1.0 is the reranker's order (as positions), 0.0 the first stage's
    assert [i for i, _ in score_order([2, 1, 0], [3.0, 2.5, 0.0], score_mode="blend", blend_weight=1.0)] == [2, 1, 0]
    assert [i for i, _ in score_order([2, 1, 0], [3.0, 2.5, 0.0], score_mode="blend", blend_weight=0.0)] == [0, 1, 2]


def test_blend_without_first_stage_scores_takes_the_input_order_and_ties_keep_the_reranked_order():
    # no scores: input positions 0, 1, 2 stand for a first stage of 1, 0.5, 0
    assert score_order([2, 1, 0], None, score_mode="blend") == score_order([2, 1, 0], [2.0, 1.0, 0.0], score_mode="blend")
    # weight 0.5 over a reversed list: every document blends to 0.5; the reranked order stands
    assert [i for i, _ in score_order([2, 1, 0], None, score_mode="blend", blend_weight=0.5)] == [2, 1, 0]
    # equal first-stage scores count as 1 each, one document scores 1
    assert score_order([1, 0], [4.0, 4.0], score_mode="blend") == [(1, 1.0), (0, 0.4 + 0.0)]
    assert score_order([0], [7.0], score_mode="blend") == [(0, 1.0)]


def test_min_score_drops_results_below_it_after_scoring():
    assert [i for i, _ in score_order([3, 2, 1, 0, 4], min_score=0.3)] == [3, 2, 1]  # 1, 0.5, 0.33
    blended = score_order([2, 1, 0], [3.0, 2.5, 0.0], score_mode="blend", min_score=0.5)
    assert [i for i, _ in blended] == [1, 2]
    assert score_order([0, 1], min_score=2.0) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"score_mode": "prob"}, "score_mode must be one of rank, blend"),
    ({"blend_weight": 1.5}, "blend_weight must be a number between 0 and 1"),
    ({"blend_weight": True}, "blend_weight must be a number between 0 and 1"),
    ({"min_score": "0.5"}, "min_score must be a number or null"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        score_order([0, 1], **kwargs)
    with pytest.raises(ConfigError, match=message):
        RerankerSpec(**kwargs)


def test_order_and_scores_must_fit():
    with pytest.raises(ValueError, match="permutation"):
        score_order([0, 0])
    with pytest.raises(ValueError, match="2 first-stage scores for 3 documents"):
        score_order([0, 1, 2], [1.0, 2.0])


def test_the_spec_carries_the_scoring_fields_to_every_face():
    spec = RerankerSpec(score_mode="blend", blend_weight=0.7, min_score=0.1)
    assert RerankerSpec.from_dict(spec.to_dict()) == spec and spec.replace(score_mode="rank").blend_weight == 0.7
    assert RerankerSpec.from_options(None, None, score_mode="blend", n_threads=1).score_mode == "blend"
    cli = spec_from_cli({"score_mode": "blend", "blend_weight": 0.7, "min_score": 0.1})
    assert (cli.score_mode, cli.blend_weight, cli.min_score) == ("blend", 0.7, 0.1)


def test_score_results_reads_first_stage_scores_from_the_request():
    request = Request(Query("q", "q"), [Candidate("a", 3.0, "A"), Candidate("b", 2.5, "B"), Candidate("c", 0.0, "C")])
    result = Result(request.query, [Candidate("c", 3.0, "C"), Candidate("b", 2.0, "B"), Candidate("a", 1.0, "A")])
    (blended,) = score_results(RerankerSpec(score_mode="blend"), [request], [result])
    assert blended.docids == ["b", "c", "a"] and blended.candidates[0].text == "B"
    (ranked,) = score_results(RerankerSpec(), [request], [result])
    assert [(c.docid, c.score) for c in ranked.candidates] == [("c", 1.0), ("b", 0.5), ("a", 1 / 3)]
