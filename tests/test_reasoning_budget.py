"""Reasoning on a budget (issue 21), the logic: ReasonRank's own fallback (`paper`) on a table of replies,
the reasoning cut of a forced answer, the spec's budget rules, and force/keep/paper through the reranker on
a scripted test double (answers a real model would not give on cue). The real engines are in
test_forced_answer.py."""

from __future__ import annotations

import json
import re

import pytest

from reasonrank.backends.base import Capabilities, Generation
from reasonrank.errors import ConfigError
from reasonrank.parsing import _upstream_answer, cut_reasoning, forced_prefix, paper_permutation
from reasonrank.spec import RerankerSpec, engine_identity, spec_from_cli
from reasonrank.types import Candidate, Query, Request, WindowTrace

from doubles import DoubleBackend

# ReasonRank's reading, one rule per row (8421BCD/ReasonRank rerank/rankllm.py _clean_response,
# receive_permutation, _remove_duplicate): (id, reply, n, reasoning prompt mode, expected 0-based order)
PAPER = [
    ("tagged_answer", "<think>Passage [2] first, 3 studies.</think>\n<answer>[2] > [3] > [1]</answer>", 3, True, [1, 2, 0]),
    ("numbers_in_reasoning_cut", "<think>Passage [3] mentions 2 studies; [1] is older. Then [4]", 4, True, [2, 1, 0, 3]),
    ("year_out_of_range", "<think>In 2019 passage [5] beat [2]", 5, True, [4, 1, 0, 2, 3]),
    ("duplicates_first_mention", "<think>[2] vs [2], then [1] and [2]", 3, True, [1, 0, 2]),
    ("zero_and_n_plus_one_dropped", "<think>[0] [4] [3]", 3, True, [2, 0, 1]),
    ("no_numbers_at_all", "<think>I need to weigh relevance carefully", 3, True, [0, 1, 2]),
    ("empty_reply", "", 3, True, [0, 1, 2]),
    ("unclosed_answer_after_think", "<think>[1] good</think><answer>[3] > [2", 3, True, [2, 1, 0]),
    ("answer_without_think_reads_past_close", "Sure <answer>[2] > [1]</answer> note 3", 3, True, [1, 0, 2]),
    ("upper_case_tags_match_lowered", "<THINK>r 2</THINK><ANSWER>[3] > [1]</ANSWER> 2", 3, True, [2, 0, 1]),
    ("upper_case_answer_tag_alone_is_not_split", "Reasoning 2 <ANSWER>[3] > [1]", 3, True, [1, 2, 0]),
    ("superscript_digit_keeps_window", "<think>x² is [3] then [1]", 3, True, [0, 1, 2]),
    ("circled_digit_keeps_window", "<think>① [3]", 3, True, [0, 1, 2]),
    ("arabic_indic_digits_read", "<think>[٣] then [١]", 3, True, [2, 0, 1]),
    ("bare_numbers_glued", "<think>3>1>2", 3, True, [2, 0, 1]),
    ("first_think_close_without_answer_skipped", "<think>a 1</think> text <think>b</think><answer>[2]</answer>", 2, True, [1, 0]),
    ("first_answer_close_ends_group", "<think>a</think>\n <answer>[1]</answer><answer>[2]</answer>", 2, True, [0, 1]),
    ("rankgpt_mode_reads_whole_reply", "<think>[1]</think><answer>[3] > [2]</answer>", 3, False, [0, 2, 1]),
    ("two_digit_ids", "<think>[12] beats [3]; [12] again", 12, True, [11, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9, 10]),
]


@pytest.mark.parametrize("case", PAPER, ids=[c[0] for c in PAPER])
def test_paper_fallback_reproduces_upstream(case):
    _, reply, n, reasoning, expected = case
    assert paper_permutation(reply, n, reasoning_prompt=reasoning) == expected


@pytest.mark.parametrize("case", PAPER, ids=[c[0] for c in PAPER])
def test_linear_match_equals_upstreams_regex(case):
    lowered = case[1].lower()
    match = re.search(r"<think>.*?</think>\s*<answer>(.*?)</answer>", lowered, re.DOTALL)  # listwise_prompt_r1.toml
    assert _upstream_answer(lowered) == (match.group(1) if match else None)


def test_paper_is_upstream_receive_permutation_on_random_replies():
    """Against a transcription of upstream's three functions, on random replies over an alphabet of tags,
    digits, brackets and look-alike digits."""
    import random

    def upstream(response: str, n: int) -> list[int]:
        match = re.search(r"<think>.*?</think>\s*<answer>(.*?)</answer>", response.lower(), re.DOTALL)
        if match:
            response = match.group(1).strip()
        elif "<answer>" in response:
            response = response.split("<answer>")[-1]
        cleaned = "".join(c if c.isdigit() else " " for c in response).strip()
        try:
            ids = [int(x) - 1 for x in cleaned.split()]
        except ValueError:
            return list(range(n))
        unique = []
        for c in ids:
            if c not in unique:
                unique.append(c)
        unique = [s for s in unique if s in range(n)]
        return unique + [t for t in range(n) if t not in unique]

    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", " ", "\n", "[", "]", " > ", "1", "2", "3", "7", "0",
              "12", "²", "٣", "passage", "."]
    for _ in range(3000):
        reply = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        n = rng.randint(1, 13)
        assert paper_permutation(reply, n) == upstream(reply, n), reply


@pytest.mark.parametrize("text,cut", [
    ("<think>Passage [2] is best. Then [1] maybe, but", "<think>Passage [2] is best."),
    ("Passage [3] answers it!\nPassage [1] is about", "Passage [3] answers it!\n"),
    ("[] > [1] > [2] >", "[] > [1] > [2] >"),  # no sentence end: kept whole
    ("It is 3.5 times larger than [2", "It is 3.5 times larger than [2"),  # a decimal point is no sentence end
    ("<think>done.</think>\n<answer>[2", "<think>done."),  # cut inside the answer: the reasoning only
    ("He said \"yes.\" And then", "He said \"yes."),
])
def test_cut_reasoning_at_last_complete_sentence(text, cut):
    assert cut_reasoning(text) == cut
    assert forced_prefix(text) == cut + "</think>\n<answer>"


# -- the spec's budgets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,budgets", [
    ({}, (3072, 100, 3172)),
    ({"reasoning_budget": 8}, (8, 100, 108)),
    ({"answer_budget": 20}, (3072, 20, 3092)),
    ({"max_new_tokens": 16}, (0, 16, 16)),  # the alias alone: answer min(100, it)
    ({"max_new_tokens": 500}, (400, 100, 500)),
    ({"max_new_tokens": 500, "answer_budget": 50}, (450, 50, 500)),
    ({"max_new_tokens": 500, "reasoning_budget": 300}, (300, 200, 500)),
    ({"reasoning_budget": 8, "answer_budget": 8, "max_new_tokens": 16}, (8, 8, 16)),
    ({"effort": "low"}, (256, 100, 356)),
    ({"effort": "medium", "answer_budget": 40}, (1024, 40, 1064)),
    ({"effort": "high", "reasoning_budget": 3072}, (3072, 100, 3172)),
    ({"reasoning_budget": 0}, (0, 100, 100)),
    ({"method": "tdpart", "reasoning_budget": 64}, (64, 100, 164)),
    ({"method": "pointwise", "reasoning_budget": 64}, (64, None, 64)),
    ({"method": "pointwise", "max_new_tokens": 0}, (0, None, 0)),
])
def test_budget_rules(fields, budgets):
    spec = RerankerSpec(**fields).resolved()
    assert (spec.reasoning_budget, spec.answer_budget, spec.max_new_tokens) == budgets
    assert RerankerSpec.from_dict(spec.to_dict()) == spec  # a resolved spec is consistent


@pytest.mark.parametrize("fields,message", [
    ({"reasoning_budget": 8, "answer_budget": 8, "max_new_tokens": 20}, "max_new_tokens 20 contradicts reasoning_budget 8 + answer_budget 8"),
    ({"effort": "low", "reasoning_budget": 100}, "effort low is a reasoning budget of 256 tokens, which contradicts reasoning_budget 100"),
    ({"max_new_tokens": 16, "answer_budget": 20}, "answer_budget 20 is over max_new_tokens 16"),
    ({"max_new_tokens": 16, "reasoning_budget": 16}, "reasoning_budget 16 leaves no answer budget"),
    ({"answer_budget": 0}, "answer_budget must be an integer >= 1"),
    ({"reasoning_budget": -1}, "reasoning_budget must be an integer >= 0"),
    ({"effort": "max"}, "effort must be one of low, medium, high"),
    ({"on_truncation": "drop"}, "on_truncation must be one of force, keep, paper"),
    ({"thinking": "no"}, "thinking must be true or false"),
    ({"method": "pointwise", "answer_budget": 10}, "answer_budget is a setting of the sliding and tdpart method"),
    ({"method": "pointwise", "on_truncation": "keep"}, "on_truncation is a setting of the sliding and tdpart method"),
    ({"method": "pointwise", "reasoning_budget": 64, "max_new_tokens": 32}, "are the same setting (the think budget)"),
])
def test_contradictory_or_bad_budgets_are_refused(fields, message):
    with pytest.raises(ConfigError) as err:
        RerankerSpec(**fields)
    assert message in str(err.value)


def test_replace_a_budget_on_a_resolved_spec():
    base = RerankerSpec().resolved()
    trio = lambda s: (s.resolved().reasoning_budget, s.resolved().answer_budget, s.resolved().max_new_tokens)  # noqa: E731
    assert trio(base.replace(reasoning_budget=8)) == (8, 100, 108)
    assert trio(base.replace(effort="medium")) == (1024, 100, 1124)
    assert trio(base.replace(effort="low").resolved().replace(reasoning_budget=10)) == (10, 100, 110)
    assert trio(base.replace(max_new_tokens=16)) == (0, 16, 16)
    assert trio(base.replace(answer_budget=30)) == (3072, 30, 3102)
    assert trio(RerankerSpec(reasoning_budget=8, answer_budget=30).resolved().replace(reasoning_budget=4)) == (4, 30, 34)
    pointwise = base.replace(method="pointwise", max_new_tokens=64).resolved()  # the listwise-only fields go
    assert (pointwise.reasoning_budget, pointwise.answer_budget, pointwise.on_truncation) == (64, None, None)


def test_cli_flags_set_the_fields():
    import typer
    from typer.testing import CliRunner

    from reasonrank.spec import spec_options

    seen = {}
    app = typer.Typer()

    @app.command()
    @spec_options()
    def show(spec: RerankerSpec):
        seen["spec"] = spec

    @app.command()
    def other():  # two commands, so `show` is a subcommand
        pass

    result = CliRunner().invoke(app, ["show", "--reasoning-budget", "8", "--answer-budget", "20", "--on-truncation", "paper",
                                      "--no-thinking"])
    assert result.exit_code == 0, result.output
    spec = seen["spec"]
    assert (spec.reasoning_budget, spec.answer_budget, spec.on_truncation, spec.thinking) == (8, 20, "paper", False)
    assert CliRunner().invoke(app, ["show", "--effort", "low"]).exit_code == 0 and seen["spec"].effort == "low"
    bad = CliRunner().invoke(app, ["show", "--max-new-tokens", "20", "--reasoning-budget", "8", "--answer-budget", "8"])
    assert bad.exit_code != 0 and "contradicts" in str(bad.exception or bad.output)
    assert spec_from_cli({"reasoning_budget": 8}).reasoning_budget == 8


# -- force, keep and paper through the reranker ------------------------------------------------------------

CUT = "<think>Passage [2] answers the query. Passage [3] is about"  # cut by the budget mid-sentence


class Truncating(DoubleBackend):
    """Test double: cuts every window's reasoning (finish_reason length) and answers a continuation (a
    prompt ending in `<answer>`, or a final assistant message) with `[2] > [3] > [1]`; records each call."""

    name = "truncating"
    model = "truncating-test-double"

    def __init__(self, formats=("text",), prompt_format="text", forced_answer="[2] > [3] > [1]</answer>"):
        self.capabilities = Capabilities(batch_size=None, prompt_formats=formats)
        self.prompt_format = prompt_format
        self.forced_answer = forced_answer
        self.calls = []  # (prompts, params)

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        out = []
        for p in prompts:
            forced = p.messages[-1]["role"] == "assistant"
            assert forced == bool(p.text and p.text.endswith("<answer>")) or p.text is None
            if forced:
                out.append(Generation(self.forced_answer, prompt_tokens=130, completion_tokens=9, finish_reason="stop", seconds=0.5))
            else:
                out.append(Generation(CUT, prompt_tokens=120, completion_tokens=params.max_new_tokens, finish_reason="length", seconds=2.0))
        return out


def _requests(k=2):
    return [Request(Query(f"q{j}", f"query {j}"), [Candidate(f"q{j}-d{i}", 3.0 - i, f"passage {i}") for i in range(3)])
            for j in range(k)]


def _build(backend, tokenizer, **fields):
    from reasonrank.spec import build

    spec = RerankerSpec(window=3, step=1, top_k=3, mode="reasonrank", max_passage_tokens=0, **fields)
    from reasonrank.prompts import PromptRenderer

    return build(spec, backend=backend, renderer=PromptRenderer(tokenizer, "reasonrank", max_passage_tokens=None))


def test_force_continues_the_same_sequence(qwen_tokenizer, tmp_path):
    backend = Truncating()
    journal = tmp_path / "j.jsonl"
    reranker = _build(backend, qwen_tokenizer, reasoning_budget=8, answer_budget=20, journal=str(journal))
    results = reranker.rerank_batch(_requests())
    assert len(backend.calls) == 2  # the windows of the step in one call, their forced answers in one more
    (first, first_params), (forced, forced_params) = backend.calls
    assert first_params.max_new_tokens == 28 and forced_params.max_new_tokens == 20
    prefix = "<think>Passage [2] answers the query.</think>\n<answer>"
    assert [p.text for p in forced] == [p.text + prefix for p in first]  # the same sequence, continued
    for result in results:
        (trace,) = result.traces
        assert trace.status == "forced" and trace.permutation == [1, 2, 0]
        assert [c.docid for c in result.candidates] == [f"{result.query.qid}-d{i}" for i in (1, 2, 0)]
        assert (trace.raw_output, trace.forced_prefix, trace.forced_answer) == (CUT, prefix, "[2] > [3] > [1]</answer>")
        assert (trace.completion_tokens, trace.forced_prompt_tokens, trace.forced_completion_tokens) == (28, 130, 9)
    stats = reranker.stats.to_dict()
    assert stats["parse_status"] == {"forced": 2} and stats["forced_windows"] == 2 and stats["forced_calls"] == 2
    assert (stats["forced_prompt_tokens"], stats["forced_completion_tokens"], stats["forced_seconds"]) == (260, 18, 1.0)
    assert stats["completion_tokens_per_query"] == 28 + 9  # both parts
    reranker.close()
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["engine"]["on_truncation"] == "force" and lines[0]["engine"]["answer_budget"] == 20
    assert lines[1]["status"] == "forced" and lines[1]["forced_prefix"] == prefix and lines[1]["forced_completion_tokens"] == 9
    # resume: the same spec replays the forced windows without a call
    again = Truncating()
    resumed = _build(again, qwen_tokenizer, reasoning_budget=8, answer_budget=20, journal=str(journal))
    replay = resumed.rerank_batch(_requests())
    assert again.calls == [] and [r.candidates for r in replay] == [r.candidates for r in results]
    assert resumed.stats.to_dict()["parse_status"] == {"forced": 2} and resumed.stats.resumed_windows == 2


def test_keep_and_paper(qwen_tokenizer):
    keep = _build(Truncating(), qwen_tokenizer, reasoning_budget=8, on_truncation="keep")
    (trace,) = keep.rerank_batch(_requests(1))[0].traces
    assert (trace.status, trace.permutation, trace.forced_prefix) == ("truncated", [0, 1, 2], "")
    assert len(keep.backend.calls) == 1
    paper = _build(Truncating(), qwen_tokenizer, reasoning_budget=8, on_truncation="paper")
    (trace,) = paper.rerank_batch(_requests(1))[0].traces
    assert (trace.status, trace.permutation) == ("paper_fallback", [1, 2, 0])  # [2] then [3] in the reasoning
    assert len(paper.backend.calls) == 1 and paper.stats.to_dict()["on_truncation"] == "paper"


def test_a_forced_answer_without_ids_keeps_the_window(qwen_tokenizer):
    reranker = _build(Truncating(forced_answer="I cannot decide."), qwen_tokenizer, reasoning_budget=8)
    (trace,) = reranker.rerank_batch(_requests(1))[0].traces
    assert (trace.status, trace.permutation, trace.forced_answer) == ("truncated", [0, 1, 2], "I cannot decide.")
    stats = reranker.stats.to_dict()
    assert stats["forced_calls"] == 1 and stats["forced_failed"] == 1 and stats["forced_windows"] == 0


def test_chat_messages_continue_the_final_assistant_message():
    from reasonrank.prompts import PromptRenderer
    from reasonrank.spec import build

    backend = Truncating(formats=("text", "messages"), prompt_format="messages")
    reranker = build(RerankerSpec(window=3, step=1, top_k=3, reasoning_budget=8), backend=backend,
                     renderer=PromptRenderer(None, "reasonrank", max_passage_tokens=None))
    (trace,) = reranker.rerank_batch(_requests(1))[0].traces
    (first,), (forced,) = backend.calls[0][0], backend.calls[1][0]
    assert forced.text is None and forced.messages[:-1] == first.messages
    assert forced.messages[-1] == {"role": "assistant", "content": "<think>Passage [2] answers the query.</think>\n<answer>"}
    assert trace.status == "forced"


def test_old_journals_read_and_resume_under_keep(qwen_tokenizer):
    row = WindowTrace("q", 0, 0, 3, "k", permutation=[2, 0, 1], status="truncated", docids=["a", "b", "c"]).to_dict()
    for name in [k for k in row if k.startswith("forced_")]:
        del row[name]  # a line written before issue 21
    assert WindowTrace.from_dict(row).forced_prefix == ""
    from reasonrank.backends.base import SamplingParams
    from reasonrank.prompts import PromptRenderer

    renderer = PromptRenderer(qwen_tokenizer, "reasonrank")
    old = {"backend", "model", "prompt_mode", "prompt_format", "max_new_tokens", "temperature", "seed"}
    assert set(engine_identity(Truncating(), renderer, SamplingParams(), "keep", 100)) == old  # the id a journal had before
    assert engine_identity(Truncating(), renderer, SamplingParams(), "force", 100)["answer_budget"] == 100
    assert engine_identity(Truncating(), renderer, SamplingParams(), "paper")["on_truncation"] == "paper"


def test_tdpart_forces_too(qwen_tokenizer):
    from reasonrank.prompts import PromptRenderer
    from reasonrank.spec import build

    backend = Truncating()
    reranker = build(RerankerSpec(method="tdpart", window=3, top_k=3, max_passage_tokens=0, reasoning_budget=8), backend=backend,
                     renderer=PromptRenderer(qwen_tokenizer, "reasonrank", max_passage_tokens=None))
    (result,) = reranker.rerank_batch(_requests(1))
    assert [(t.status, t.role, t.permutation) for t in result.traces] == [("forced", "first", [1, 2, 0])]
    assert len(backend.calls) == 2 and reranker.stats.to_dict()["model_calls_per_query"] == 2


QWEN3_LIKE = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
              "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
              "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
              "{%- endif %}")  # the part of Qwen3's chat template that the thinking switch changes


def test_thinking_switch(qwen_tokenizer):
    import copy

    from reasonrank.prompts import PromptRenderer
    from reasonrank.spec import build

    qwen3 = copy.copy(qwen_tokenizer)
    qwen3.chat_template = QWEN3_LIKE
    candidates = _requests(1)[0].candidates
    on = build(RerankerSpec(window=3, top_k=3, thinking=None), backend=Truncating(), renderer=PromptRenderer(qwen3, "qwen3"))
    off = build(RerankerSpec(window=3, top_k=3, thinking=False), backend=Truncating(), renderer=PromptRenderer(qwen3, "qwen3"))
    assert not on.renderer.render("q", candidates).text.endswith("</think>\n\n")
    prompt = off.renderer.render("q", candidates)
    assert prompt.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the template's own switch
    assert prompt.chat_template_kwargs == {"enable_thinking": False}  # what a server applying the template is sent
    assert off.journal.engine["chat_template_kwargs"] == {"enable_thinking": False}  # another engine identity
    assert off.spec.thinking is False
    with pytest.raises(ConfigError, match="has no thinking switch"):  # Qwen2.5's template: refused, not ignored
        build(RerankerSpec(window=3, top_k=3, thinking=False), backend=Truncating(), renderer=PromptRenderer(qwen_tokenizer))
    same = build(RerankerSpec(window=3, top_k=3, thinking=True), backend=Truncating(), renderer=PromptRenderer(qwen_tokenizer))
    assert same.renderer.template.chat_template_kwargs == {}  # nothing to switch on a model that always reasons
