"""Prompt rendering, byte for byte against hand-written Qwen2.5 chat prompts."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from reasonrank.prompts import MODES, PromptRenderer, default_max_passage_tokens, load_template
from reasonrank.types import Candidate, Prompt

REASONRANK_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query. "
    "Given a query and a passage list, you first thinks about the reasoning process in the mind and then provides "
    "the answer (i.e., the reranked passage list). The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)
RANKGPT_SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query."

CANDIDATES = [
    Candidate("d1", 3.0, "Paris is the capital of France [1].", "Paris"),
    Candidate("d2", 2.0, "  The cafÃ© serves [2] kinds of coffee.  "),
    Candidate("d3", 1.0, "The Eiffel Tower [12] is a wrought-iron lattice tower."),
]
QUERY = "  Which passage cites [3] sources?  "

# Written by hand: the Qwen2.5 chat template with a system and a user turn, generation prompt on.
EXPECTED_REASONRANK = (
    "<|im_start|>system\n"
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query. "
    "Given a query and a passage list, you first thinks about the reasoning process in the mind and then provides "
    "the answer (i.e., the reranked passage list). The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.<|im_end|>\n"
    "<|im_start|>user\n"
    "I will provide you with 3 passages, each indicated by a numerical identifier []. "
    "Rank the passages based on their relevance to the search query: Which passage cites (3) sources?.\n"
    "\n"
    "[1] Title: Paris Content: Paris is the capital of France (1).\n"
    "[2] The café serves (2) kinds of coffee.\n"
    "[3] The Eiffel Tower (12) is a wrought-iron lattice tower.\n"
    "Search Query: Which passage cites (3) sources?.\n"
    "Rank the 3 passages above based on their relevance to the search query. All the passages should be included "
    "and listed using identifiers, in descending order of relevance. The format of the answer should be [] > [], "
    "e.g., [2] > [1].<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_modes_and_templates_are_data():
    assert MODES == ("reasonrank", "rankgpt", "qwen3")
    for mode in MODES:
        raw = json.loads(resources.files("reasonrank.prompts").joinpath("templates").joinpath(f"{mode}.json").read_text())
        assert raw["mode"] == mode
        t = load_template(mode)
        assert "{num}" in t.prefix and "{query}" in t.prefix and "{query}" in t.post_prompt
        assert t.source  # where the wording came from
    assert load_template("reasonrank").system == REASONRANK_SYSTEM
    assert load_template("rankgpt").system == RANKGPT_SYSTEM
    assert load_template("qwen3").system == RANKGPT_SYSTEM  # ReasonRank keeps the short system prompt for Qwen3
    assert [load_template(m).require_tags for m in MODES] == [True, False, True]
    with pytest.raises(ValueError, match="unknown prompt mode"):
        load_template("rankzephyr")


def test_reasonrank_render_byte_identical(qwen_tokenizer):
    prompt = PromptRenderer(qwen_tokenizer, "reasonrank", 512).render(QUERY, CANDIDATES)
    assert isinstance(prompt, Prompt)
    assert prompt.text == EXPECTED_REASONRANK
    assert prompt.messages[0] == {"role": "system", "content": REASONRANK_SYSTEM}
    assert prompt.messages[1]["role"] == "user"
    assert qwen_tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True) == prompt.text


def test_rankgpt_render_byte_identical(qwen_tokenizer):
    expected = (
        "<|im_start|>system\n"
        "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query.<|im_end|>\n"
        "<|im_start|>user\n"
        "I will provide you with 2 passages, each indicated by a numerical identifier []. "
        "Rank the passages based on their relevance to the search query: tallest tower.\n"
        "\n"
        "[1] The Eiffel Tower (12) is a wrought-iron lattice tower.\n"
        "[2] Title: Paris Content: Paris is the capital of France (1).\n"
        "Search Query: tallest tower.\n"
        "Rank the 2 passages above based on their relevance to the search query. All the passages should be included "
        "and listed using identifiers, in descending order of relevance. The output format should be [] > [], "
        "e.g., [2] > [1]. Only respond with the ranking results, do not say any word or explain.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    renderer = PromptRenderer(qwen_tokenizer, "rankgpt", 100)
    assert renderer.render("tallest tower", [CANDIDATES[2], CANDIDATES[0]]).text == expected
    assert renderer.require_tags is False


def test_qwen3_post_prompt(qwen_tokenizer):
    messages = PromptRenderer(None, "qwen3").messages("q", [Candidate("a", text="alpha")])
    assert messages[1]["content"] == (
        "I will provide you with 1 passages, each indicated by a numerical identifier []. "
        "Rank the passages based on their relevance to the search query: q.\n\n"
        "[1] alpha\n"
        "Search Query: q.\n"
        "Rank the 1 passages above based on their relevance to the search query. All the passages should be included "
        "and listed using identifiers, in descending order of relevance. The final ranked list should be enclosed "
        "within <answer> </answer> tags, i.e., <answer> ranked list here </answer>. The format of ranked list should "
        "be [] > [], e.g., [2] > [1]. Only respond with the ranking results, do not say any word or explain."
    )
    text = PromptRenderer(qwen_tokenizer, "qwen3").render("q", [Candidate("a", text="alpha")]).text
    assert text.startswith("<|im_start|>system\n" + RANKGPT_SYSTEM + "<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("limit, content", [
    # Tokens: 'The' 'ĠE' 'iff' 'el' 'ĠTower' 'Ġ[' '1' '2' ']' 'Ġis' …
    (5, "The Eiffel Tower"),
    (8, "The Eiffel Tower [12"),  # cut inside the brackets: nothing to escape, as upstream
    (9, "The Eiffel Tower (12)"),
])
def test_truncation_to_model_tokens(qwen_tokenizer, limit, content):
    renderer = PromptRenderer(qwen_tokenizer, "reasonrank", max_passage_tokens=limit)
    assert renderer.passage_content(CANDIDATES[2]) == content
    text = renderer.render("tower", [CANDIDATES[2], CANDIDATES[0]]).text
    # 'Title' ':' 'ĠParis' 'ĠContent' ':' are the title passage's first five tokens.
    title_line = {5: "Title: Paris Content:", 8: "Title: Paris Content: Paris is the", 9: "Title: Paris Content: Paris is the capital"}
    assert f"\n\n[1] {content}\n[2] {title_line[limit]}\nSearch Query: tower.\n" in text


def test_mojibake_is_fixed(qwen_tokenizer):
    renderer = PromptRenderer(qwen_tokenizer, "reasonrank", 512)
    assert renderer.passage_content(CANDIDATES[1]) == "The café serves (2) kinds of coffee."
    # The query is not fixed on its own upstream, but the whole rendered prompt is.
    prompt = renderer.render("cafÃ© hours [4]", [CANDIDATES[1]])
    assert "search query: café hours (4).\n\n[1] The café serves (2) kinds of coffee.\nSearch Query: café hours (4).\n" in prompt.text
    assert "cafÃ©" not in prompt.messages[1]["content"]


def test_without_tokenizer_messages_only_and_word_truncation():
    renderer = PromptRenderer(None, "reasonrank", max_passage_tokens=4)
    prompt = renderer.render(QUERY, CANDIDATES)
    assert prompt.text is None
    user = prompt.messages[1]["content"]
    assert "\n\n[1] Title: Paris Content: Paris\n[2] The café serves (2)\n[3] The Eiffel Tower (12)\n" in user
    assert renderer.messages(QUERY, CANDIDATES) == prompt.messages
    # None keeps passages whole (whitespace untouched).
    whole = PromptRenderer(None, "reasonrank", None).passage_content(Candidate("x", text="a  b\n c [7]"))
    assert whole == "a  b\n c (7)"


def test_user_message_matches_expected_prompt_without_tokenizer():
    messages = PromptRenderer(None, "reasonrank", None).messages(QUERY, CANDIDATES)
    start = EXPECTED_REASONRANK.index("<|im_start|>user\n") + len("<|im_start|>user\n")
    assert messages[1]["content"] == EXPECTED_REASONRANK[start:EXPECTED_REASONRANK.index("<|im_end|>", start)]


def test_placeholders_in_query_are_not_expanded():
    user = PromptRenderer(None, "reasonrank").messages("what is {num} and {content}?", [Candidate("a", text="x")])[1]["content"]
    assert "search query: what is {num} and {content}?." in user


def test_cache_is_per_document_and_bounded():
    class CountingTokenizer:
        calls = 0

        def tokenize(self, text):
            self.calls += 1
            return text.split()

        def convert_tokens_to_string(self, tokens):
            return " ".join(tokens)

    tok = CountingTokenizer()
    renderer = PromptRenderer(tok, "reasonrank", 3, cache_size=2)
    a, b, c = Candidate("a", text="one two three four"), Candidate("b", text="x y"), Candidate("c", text="p q")
    for _ in range(3):
        assert renderer.passage_content(a) == "one two three"
    assert tok.calls == 1
    assert renderer.passage_content(Candidate("a", text="changed text")) == "changed text"  # same docid, new text
    assert tok.calls == 2
    renderer.passage_content(b), renderer.passage_content(c)
    assert len(renderer._cache) <= 2


def test_bad_max_passage_tokens():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            PromptRenderer(None, "reasonrank", bad)


@pytest.mark.parametrize("name, expected", [
    ("bright/biology", 512), ("bright/pony/long", 512), ("biology", 512), ("theoremqa_theorems", 512),
    ("r2med/Biology", 512), ("r2med_PMC-Clinical", 512),
    ("dl19", 100), ("scifact/test", 100), ("trec-covid/test", 100), ("msmarco", 100),
])
def test_default_max_passage_tokens(name, expected):
    assert default_max_passage_tokens(name) == expected


@pytest.mark.parametrize("text", [
    "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n[1] cafÃ© &amp; bar\r\nline two &lt;x&gt;\n\n[2] â€œquotedâ€\x1b[31m red\n<|im_start|>assistant\n",
    "<a>\n&amp;\n",            # HTML stays escaped once a '<' segment was seen, as in fix_text
    "no angle bracket first\n<b> &amp; later\n&amp;",  # falls back to fix_text on the whole text
    "<only one line, no newline &amp;",
    "",
    "<x>\n\n\n",
])
def test_segment_fixer_equals_fix_text(text):
    from ftfy import fix_text

    from reasonrank.prompts.render import _SegmentFixer

    fixer = _SegmentFixer(size=3)
    assert fixer(text) == fix_text(text)
    assert fixer(text) == fix_text(text)  # again, from the cache


def test_prompt_command_prints_the_exact_window_prompt(qwen_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from _data import SCIFACT
    from reasonrank.cli import app
    from reasonrank.io import load_collection, write_run

    if not (SCIFACT / "corpus.jsonl.gz").exists():
        pytest.skip("shared data missing")
    coll = load_collection(SCIFACT)
    run = tmp_path / "run.trec"
    write_run(run, {"1": {"31715818": 3.0, "4983": 2.0, "5836": 1.0}})
    result = CliRunner().invoke(app, ["prompt", "-c", str(SCIFACT), "-r", str(run), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    expected = PromptRenderer(qwen_tokenizer, max_passage_tokens=100).render(
        coll.query_dict()["1"].text, [coll.doc(d).to_candidate() for d in ["31715818", "4983", "5836"]]
    )
    assert result.output == expected.text
