"""RerankerSpec: one validated, serialisable description; defaults in one place; CLI options one-to-one."""

from __future__ import annotations

import pytest

from reasonrank.errors import ConfigError
from reasonrank.spec import SPEC_FIELDS, RerankerSpec, spec_from_cli


def test_none_means_the_methods_default_and_resolved_fills_it():
    assert RerankerSpec().resolved().to_dict() | {} == {
        "model": None, "backend": None, "backend_options": {}, "lora": None, "tokenizer": None, "mode": None, "method": "sliding",
        "top_k": 100, "window": 20, "step": 10, "passes": 1, "pivot": None, "max_new_tokens": 3172, "max_passage_tokens": 512,
        "journal": None, "journal_policy": "resume", "progress": False, "score_mode": "rank", "blend_weight": 0.6, "min_score": None,
        "reasoning_budget": 3072, "answer_budget": 100, "effort": None, "on_truncation": "force", "thinking": None,
        "ray": None, "replicas": None, "gpus_per_replica": None, "cpus_per_replica": None}
    tdpart = RerankerSpec(method="tdpart", window=8).resolved("scifact")
    assert (tdpart.window, tdpart.pivot, tdpart.step, tdpart.max_passage_tokens) == (8, 4, None, 100)
    assert RerankerSpec(window=4).resolved().step == 2
    assert RerankerSpec(method="pointwise").resolved("bright").max_new_tokens == 256
    assert RerankerSpec(method="pointwise").resolved("bright").max_passage_tokens == 512
    assert RerankerSpec(method="pointwise", max_new_tokens=0).max_new_tokens == 0  # judge at once


@pytest.mark.parametrize("fields,message", [
    ({"method": "tdpart", "step": 5}, "step is a setting of the sliding method"),
    ({"method": "pointwise", "window": 5}, "window is a setting of the sliding and tdpart method"),
    ({"method": "sliding", "pivot": 3}, "pivot is a setting of the tdpart method"),
    ({"method": "beam"}, "unknown method 'beam'"),
    ({"window": 10, "step": 20}, "step (20) must not exceed window (10)"),
    ({"method": "tdpart", "window": 10, "pivot": 10}, "pivot (the rank tdpart settles) must be between 1 and window - 1 (9)"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"max_passage_tokens": -1}, "max_passage_tokens must be an integer >= 0"),
    ({"journal_policy": "maybe"}, "journal_policy must be one of resume, fresh, reuse"),
])
def test_settings_a_method_does_not_take_or_bad_values_are_refused(fields, message):
    with pytest.raises(ConfigError) as err:
        RerankerSpec(**fields)
    assert message in str(err.value)


def test_round_trip_replace_and_python_options():
    spec = RerankerSpec.from_options("reasonrank-7b", "vllm", method="tdpart", top_k=40, tensor_parallel_size=2, journal="x.jsonl")
    assert spec.backend_options == {"tensor_parallel_size": 2} and spec.journal == "x.jsonl" and spec.top_k == 40
    assert RerankerSpec.from_dict(spec.to_dict()) == spec
    assert RerankerSpec.from_dict(__import__("json").loads(spec.to_json())) == spec
    assert spec.replace(method="sliding", step=5).to_dict()["pivot"] is None  # the old method's fields go
    with pytest.raises(ConfigError, match="not reranker setting"):
        RerankerSpec.from_dict({"windw": 3})
    with pytest.raises(ConfigError, match="not a reranker setting"):
        spec.replace(windw=3)


def test_cli_options_map_one_to_one_onto_fields():
    values = {name: None for name in ("model", "backend", "window", "step", "passes", "pivot", "max_new_tokens", "max_passage_tokens",
                                      "mode", "tokenizer", "lora", "journal")}
    values.update(method="sliding", top_k=30, journal_policy="fresh", base_url=["http://a/v1", "http://b/v1"], threads=2, n_ctx=None,
                  api_key_file=None, backend_option=["dtype=bfloat16", "n_batch=256", "extra_body={\"top_k\": 1}"])
    spec = spec_from_cli(values)
    assert spec.top_k == 30 and spec.journal_policy == "fresh"
    assert spec.backend_options == {"dtype": "bfloat16", "n_batch": 256, "extra_body": {"top_k": 1},
                                    "base_urls": ["http://a/v1", "http://b/v1"], "n_threads": 2}
    from reasonrank.spec import _options

    # every field but backend_options and progress is a CLI option (those come from the typed flags / the face)
    assert {o.name for o in _options()} >= set(SPEC_FIELDS) - {"backend_options", "progress"}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        spec_from_cli({**values, "backend_option": ["dtype"]})
