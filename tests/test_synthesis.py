"""Training-data synthesis: the pieces that need no server (mining parser, window, filter with exact
nDCG values, teacher cache, settings guard, export schemas, released-format import/export).

`EchoTeacher` is a test double standing in for the HTTP transport in these unit tests only: it
answers mining prompts with the passages marked RELEVANT and ranking prompts with those passages
first. Real-server runs of the same code are in test_synthesis_faults.py (a misbehaving local HTTP
server) and test_synthesis_llamacpp.py (llama.cpp's OpenAI-compatible server with the embedded model).
"""

from __future__ import annotations

import json
import math
import re

import pytest
from doubles import DoubleBackend

from reasonrank.backends.base import Capabilities, Generation
from reasonrank.errors import ReasonRankError
from reasonrank.prompts import PromptRenderer
from reasonrank.synthesis import (
    SourceSpec,
    SynthesisConfig,
    Teacher,
    TeacherConfig,
    build_window,
    consistency_scores,
    import_released,
    load_mining_template,
    mining_messages,
    parse_mining,
    run_all,
    run_export,
    run_filter,
    run_label,
    summarize,
)
from reasonrank.synthesis.export import assistant_content
from reasonrank.synthesis.store import StageFile
from reasonrank.types import Candidate

# -- mining parser --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,finish,ok,relevant", [
    ("<think>2 and 5 help</think><answer>[2], [5]</answer>", "stop", True, [1, 4]),
    ("<think>r</think>\n<answer>[5] [2] [2]</answer>", "stop", True, [4, 1]),  # order kept, duplicates dropped
    ("<think>r</think><answer>none</answer>", "stop", True, []),
    ("<answer>No relevant passages.</answer>", "stop", True, []),
    ("<think>r</think><answer>[]</answer>", "stop", True, []),
    ("<answer>2, 5</answer>", "stop", True, [1, 4]),  # bare numbers
    ("<answer>[2, 5]</answer>", "stop", True, [1, 4]),  # a JSON list
    ("<answer>［３］, ［１］</answer>", "stop", True, [2, 0]),  # fullwidth digits and brackets
    ("<think>long</think> Relevant: [3]", "stop", True, [2]),  # after </think>, no answer tags
    ("[1] > [4]", "stop", True, [0, 3]),  # untagged
    ("<answer>[1], [9], [77]</answer>", "stop", True, [0]),  # out of range dropped
    ("<think>I am still thinking about [2] and", "length", False, []),  # cut off inside reasoning
    ("Passage [2] mentions the", "length", False, []),  # untagged and cut off: reasoning, not an answer
    ("<answer>I cannot tell.</answer>", "stop", False, []),
    ("", "stop", False, []),
    ("<answer>[9]</answer>", "stop", False, []),  # only out-of-range ids
])
def test_parse_mining(text, finish, ok, relevant):
    parsed = parse_mining(text, 5, finish)
    assert parsed.ok is ok, parsed.detail
    assert parsed.relevant == relevant
    if not ok:
        assert parsed.detail  # a failure always says why


def test_mining_prompt_has_answer_only_when_given():
    tmpl = load_mining_template()
    with_answer = mining_messages(tmpl, "Why is the sky blue?", ["Rayleigh scattering ...", "Cats sleep a lot."], "Rayleigh scattering")
    without = mining_messages(tmpl, "Why is the sky blue?", ["Rayleigh scattering ...", "Cats sleep a lot."])
    assert [m["role"] for m in with_answer] == ["system", "user"]
    user = with_answer[1]["content"]
    assert "Reference Answer: Rayleigh scattering\n" in user
    assert "[1] Rayleigh scattering ...\n[2] Cats sleep a lot.\n" in user
    assert "I will provide you with 2 passages" in user
    assert "Reference Answer" not in without[1]["content"]
    assert "{" not in without[1]["content"]  # every placeholder filled


# -- window ---------------------------------------------------------------------------------------


def test_build_window_positives_then_hard_negatives_in_first_stage_order():
    ranked = [f"d{i}" for i in range(30)]
    judged = ranked[:20]
    relevant = ["d15", "d3", "d19"]
    window = build_window(ranked, judged, relevant, size=6)
    # all positives, then the best-ranked judged negatives, sorted by first-stage rank
    assert window == ["d0", "d1", "d2", "d3", "d15", "d19"]
    # judged pool smaller than the window: unjudged candidates fill it
    assert build_window(ranked, ranked[:3], ["d1"], size=5) == ["d0", "d1", "d2", "d3", "d4"]
    assert build_window(ranked[:4], ranked[:4], ["d2"], size=20) == ranked[:4]


# -- self-consistency filter with exact nDCG values -----------------------------------------------

EXACT = [
    # (final_list, relevant, nDCG@10)
    (["a", "x", "y"], ["a"], 1.0),
    (["x", "a", "y"], ["a"], 1 / math.log2(3)),  # 0.6309297535714575
    (["x", "y", "a"], ["a"], 0.5),  # 1 / log2(4)
    (["x", "y", "z", "w", "a"], ["a"], 1 / math.log2(6)),  # 0.38685280723454163
    (["a", "x", "b"], ["a", "b"], (1 + 0.5) / (1 + 1 / math.log2(3))),  # 0.9197207891481876
    ([f"n{i}" for i in range(10)] + ["a"], ["a"], 0.0),  # the positive below rank 10
]


@pytest.mark.parametrize("final,relevant,expected", EXACT)
def test_consistency_ndcg_exact(final, relevant, expected):
    ndcg, _ = consistency_scores(final, relevant)
    assert ndcg == pytest.approx(expected, abs=1e-12)


def _labelled(run_dir, rows):
    StageFile(run_dir / "labels.jsonl").append(rows)


def _label_row(i, domain, final, relevant, reasoning="because"):
    initial = sorted(final)
    return {"id": f"{domain}/q{i}", "dataset": domain, "qid": f"q{i}", "query": f"query {i}", "status": "ok",
            "initial_list": initial, "final_list": final, "relevant_docids": relevant, "reasoning": reasoning,
            "permutation": [initial.index(d) + 1 for d in final],
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"u{i}"}]}


def test_filter_alpha_configurable_and_counts_exact(tmp_path):
    rows = [_label_row(i, "dom_a" if i % 2 == 0 else "dom_b", f, r) for i, (f, r, _) in enumerate(EXACT)]
    rows.append(_label_row(99, "dom_b", ["a", "x"], ["a"], reasoning="   "))  # nDCG 1.0 but no reasoning
    rows.append({"id": "dom_a/bad", "dataset": "dom_a", "qid": "bad", "status": "parse_failed", "reason": "garbled"})
    _labelled(tmp_path, rows)

    def kept(alpha, **kw):
        summary = run_filter(tmp_path, alpha, **kw)
        return summary["filter"], {r["id"]: r for r in StageFile(tmp_path / "filtered.jsonl").load().values()}

    report, recs = kept(0.4)
    # dom_a holds EXACT[0, 2, 4] = 1.0, 0.5, 0.9197 ; dom_b holds EXACT[1, 3, 5] = 0.6309, 0.3869, 0.0 + the no-reasoning row
    assert report["domains"]["dom_a"] == {"before": 3, "after": 3, "below_alpha": 0, "no_reasoning": 0}
    assert report["domains"]["dom_b"] == {"before": 4, "after": 1, "below_alpha": 2, "no_reasoning": 1}
    assert (report["before"], report["after"]) == (7, 4)
    assert recs["dom_b/q3"]["ndcg@10"] == pytest.approx(1 / math.log2(6), abs=1e-12)
    assert recs["dom_b/q3"]["drop_reason"] == "nDCG@10 0.3869 < alpha 0.4"
    assert "dom_a/bad" not in recs  # only parsed samples are filtered

    report, recs = kept(0.5)  # the boundary is inclusive: nDCG exactly 0.5 is kept
    assert recs["dom_a/q2"]["kept"] and report["after"] == 4
    report, _ = kept(0.631)  # just above 1/log2(3)
    assert report["after"] == 2
    report, _ = kept(0.0, require_reasoning=False)
    assert report["after"] == 7
    summary = summarize(tmp_path)
    assert summary["domains"]["dom_b"]["before_filter"] == 4 and summary["domains"]["dom_b"]["after_filter"] == 4
    with pytest.raises(ReasonRankError):
        run_filter(tmp_path, 1.5)


# -- a full run on a tiny corpus with a scripted teacher -------------------------------------------


class EchoTeacher(DoubleBackend):
    """Test double for the transport (see the module docstring); counts what it is asked."""

    model = "echo"
    capabilities = Capabilities(stats=True)

    def __init__(self):
        self.asked = 0
        self.stats = {"requests": 0}

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            self.asked += 1
            self.stats["requests"] += 1
            user = p.messages[-1]["content"]
            passages = re.findall(r"^\[(\d+)\] (.*)$", user, re.M)
            rel = [int(i) for i, t in passages if "RELEVANT" in t]
            if "relevance assessor" in p.messages[0]["content"]:
                text = "<think>marked ones</think><answer>" + ", ".join(f"[{i}]" for i in rel) + "</answer>"
            else:
                order = rel[::-1] + [int(i) for i, _ in passages if int(i) not in rel][::-1]
                text = "<think>marked ones first</think>\n<answer>" + " > ".join(f"[{i}]" for i in order) + "</answer>"
            out.append(Generation(text, prompt_tokens=50, completion_tokens=10, finish_reason="stop"))
        return out


def write_tiny_corpus(root, topics=("alpha", "bravo", "charlie")):
    docs, queries = [], []
    for t in topics:
        for i in range(3):
            docs.append({"_id": f"{t}-r{i}", "title": f"{t} study {i}", "text": f"{t} {t} RELEVANT evidence [{i}] on {t}"})
        for i in range(4):
            docs.append({"_id": f"{t}-n{i}", "text": f"{t} background note {i}"})
        queries.append({"id": f"q-{t}", "query": f"what is known about {t}?", "answer": f"{t} is well known"})
    for i in range(10):
        docs.append({"_id": f"filler{i}", "text": f"unrelated filler text {i}"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return SourceSpec("tiny", str(root / "queries.jsonl"), corpus=str(root / "corpus.jsonl"))


SMALL = SynthesisConfig(k=10, mine_depth=8, window=6, mine_max_tokens=64, label_max_tokens=64)


@pytest.fixture()
def tiny_run(tmp_path):
    spec = write_tiny_corpus(tmp_path)
    backend = EchoTeacher()
    teacher = Teacher.for_run(TeacherConfig("echo", temperature=0.0, api_key_env=""), tmp_path / "run", backend=backend)
    summary = run_all(tmp_path / "run", [spec], teacher, SMALL, bm25_cache=tmp_path / "bm25")
    return tmp_path / "run", spec, backend, summary


def test_run_all_cache_and_resume(tiny_run, tmp_path):
    run, spec, backend, summary = tiny_run
    dom = summary["domains"]["tiny"]
    assert dom["queries"] == 3 and dom["mined"] == {"ok": 3} and dom["mean_positives"] == 3.0
    assert dom["labelled"] == {"ok": 3} and dom["before_filter"] == 3 and dom["after_filter"] == 3
    assert backend.asked == 6  # one mining and one ranking request per query
    labels = StageFile(run / "labels.jsonl").load()
    rec = labels["tiny/q-alpha"]
    assert set(rec["relevant_docids"]) == {"alpha-r0", "alpha-r1", "alpha-r2"}
    assert len(rec["initial_list"]) == 6 and sorted(rec["final_list"]) == sorted(rec["initial_list"])
    assert rec["final_list"][:3] == [rec["initial_list"][p - 1] for p in rec["permutation"][:3]]
    # the ranking prompt is the exact ReasonRank prompt (PromptRenderer, mode reasonrank)
    expected = PromptRenderer(None, "reasonrank", max_passage_tokens=100)
    from reasonrank.io.beir import iter_docs

    docs = {d.docid: d for d in iter_docs(spec.corpus)}
    assert rec["messages"] == expected.messages("what is known about alpha?", [docs[d].to_candidate() for d in rec["initial_list"]])
    # a second run asks nothing: every stage is done
    teacher2 = Teacher.for_run(TeacherConfig("echo", temperature=0.0, api_key_env=""), run, backend=backend)
    run_all(run, [], teacher2, SMALL, bm25_cache=tmp_path / "bm25")
    assert backend.asked == 6 and teacher2.stats.calls == 0
    # a lost label record (and a half-written line) is redone from the cache: nothing asked twice
    kept = [r for r in labels.values() if r["id"] != "tiny/q-alpha"]
    StageFile(run / "labels.jsonl").rewrite(kept)
    with open(run / "labels.jsonl", "a") as fh:
        fh.write('{"id": "tiny/q-alpha", "stat')
    teacher3 = Teacher.for_run(TeacherConfig("echo", temperature=0.0, api_key_env=""), run, backend=backend)
    run_label(run, teacher3, window=6, max_new_tokens=64)
    assert backend.asked == 6 and teacher3.stats.cache_hits == 1
    assert StageFile(run / "labels.jsonl").load()["tiny/q-alpha"]["final_list"] == rec["final_list"]


def test_changed_settings_refused_unless_forced(tiny_run):
    run, _, backend, _ = tiny_run
    teacher = Teacher.for_run(TeacherConfig("echo", temperature=0.0, api_key_env=""), run, backend=backend)
    with pytest.raises(ReasonRankError, match="window"):
        run_label(run, teacher, window=5, max_new_tokens=64)
    run_label(run, teacher, window=5, max_new_tokens=64, force=True)
    labels = StageFile(run / "labels.jsonl").load()
    assert all(len(r["initial_list"]) == 5 for r in labels.values())
    assert not (run / "filtered.jsonl").exists()  # later stages discarded with it


def test_exports_match_schemas(tiny_run):
    run, _, _, _ = tiny_run
    manifest = run_export(run)
    assert manifest["samples"] == 3 and manifest["per_domain"] == {"tiny": 3}
    check_exports(run / "export", expect=3)


def test_sft_export_renders_with_the_chat_template(tiny_run, qwen_tokenizer):
    run, _, _, _ = tiny_run
    run_export(run)
    check_exports(run / "export", expect=3, tokenizer=qwen_tokenizer)


def check_exports(out, expect: int, tokenizer=None):
    """Validate every export file against its schema (shared with the server tests)."""
    import datasets
    import pyarrow.parquet as pq

    from reasonrank.reward import compute_score

    rel = [json.loads(x) for x in (out / "released" / "training_data_all.jsonl").read_text().splitlines()]
    assert len(rel) == expect
    for row in rel:
        assert list(row) == ["dataset", "qid", "initial_list", "final_list", "reasoning", "relevant_docids"]
        assert isinstance(row["reasoning"], str) and sorted(row["final_list"]) == sorted(row["initial_list"])
        assert all(isinstance(d, str) for d in row["initial_list"] + row["relevant_docids"])
        assert set(row["relevant_docids"]) <= set(row["initial_list"])
        queries = json.loads((out / "released" / "id_query" / f"{row['dataset']}.json").read_text())
        docs = json.loads((out / "released" / "id_doc" / f"{row['dataset']}.json").read_text())
        assert isinstance(queries[row["qid"]], str) and all(isinstance(docs[d], str) for d in row["initial_list"])

    sft = datasets.load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    assert len(sft) == expect and set(sft.column_names) == {"messages", "id", "dataset"}
    for ex in sft:
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        assert re.fullmatch(r"<think>.*</think>\n<answer>\[\d+\]( > \[\d+\])*</answer>", ex["messages"][2]["content"], re.S)
    if tokenizer is not None and expect:
        text = tokenizer.apply_chat_template(sft[0]["messages"], tokenize=False)
        assert text.startswith("<|im_start|>system\nYou are RankLLM")
        assert "<|im_start|>assistant\n<think>" in text and text.rstrip().endswith("</answer><|im_end|>")
    try:
        from reasonrank.training.data import load_rl, load_sft
    except ImportError:  # the training module is optional here
        load_sft = load_rl = None
    if load_sft is not None and expect:
        rows, report = load_sft(out / "sft.jsonl", tokenizer=tokenizer, verbose=False)
        assert report.kept == expect
        if tokenizer is not None:
            assert any(t != -100 for t in rows[0]["labels"])

    lf = json.loads((out / "llamafactory" / "reasonrank_synth_sft.json").read_text())
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    entry = info["reasonrank_synth_sft"]
    assert entry["file_name"] == "reasonrank_synth_sft.json"
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    assert isinstance(lf, list) and len(lf) == expect
    for row, ex in zip(lf, sft, strict=True):
        assert set(row) == {"instruction", "input", "output", "system"}
        assert row["system"] == ex["messages"][0]["content"] and row["instruction"] == ex["messages"][1]["content"]
        assert row["output"] == ex["messages"][2]["content"] and row["input"] == ""

    rl = [json.loads(x) for x in (out / "rl.jsonl").read_text().splitlines()]
    assert len(rl) == expect
    for row, ex in zip(rl, sft, strict=True):
        assert {"prompt", "ground_truth", "initial_list", "relevant_docids", "id", "dataset"} <= set(row)
        n = len(row["initial_list"])
        assert sorted(row["ground_truth"]) == list(range(1, n + 1))
        assert row["final_list"] == [row["initial_list"][i - 1] for i in row["ground_truth"]]
        assert row["prompt"] == ex["messages"][:2]
    if load_rl is not None and expect:
        assert load_rl(out / "rl.jsonl", verbose=False)[1].kept == expect
        assert load_rl(out / "verl" / "train.parquet", verbose=False)[1].kept == expect

    table = pq.read_table(out / "verl" / "train.parquet")
    assert {"data_source", "prompt", "ability", "reward_model", "extra_info"} <= set(table.column_names)
    for i, (row, ex) in enumerate(zip(table.to_pylist(), rl, strict=True)):
        assert row["data_source"] == "ranking" and row["ability"] == "ranking"
        assert row["prompt"] == ex["prompt"]
        assert row["reward_model"]["style"] == "rule"
        gt = json.loads(row["reward_model"]["ground_truth"])
        assert gt == {"permutation": ex["ground_truth"], "initial_list": ex["initial_list"], "relevant_docids": ex["relevant_docids"]}
        assert row["extra_info"]["index"] == i and row["extra_info"]["split"] == "train"
        # the reward of the teacher's own answer: nDCG@10 + 0.2 Recall@10 + 0.1 RBO(identical) = ... + 0.1
        ndcg, recall = consistency_scores(ex["final_list"], ex["relevant_docids"])
        answer = assistant_content("r", ex["ground_truth"])
        assert compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"], row["extra_info"]) == \
            pytest.approx(ndcg + 0.2 * recall + 0.1, abs=1e-9)


# -- released format ------------------------------------------------------------------------------


def write_released(root, rows, queries, docs, dataset="mathqa"):
    (root / "id_query").mkdir(parents=True)
    (root / "id_doc").mkdir()
    (root / "training_data_all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "id_query" / f"{dataset}.json").write_text(json.dumps(queries))
    (root / "id_doc" / f"{dataset}.json").write_text(json.dumps(docs))


def test_import_released(tmp_path):
    docs = {f"m{i}": f"Lemma {i}: if [1] then x^{i} holds." for i in range(5)}
    queries = {"q1": "Solve x^2 = [4].", "q2": "Prove the lemma.", "q3": "Unknown ids?", "q4": "Short final list"}
    rows = [
        {"dataset": "mathqa", "qid": "q1", "initial_list": ["m0", "m1", "m2", "m3"], "final_list": ["m2", "m0", "m3", "m1"],
         "reasoning": "Okay, m2 solves it.", "relevant_docids": ["m2"]},
        {"dataset": "mathqa", "qid": "q2", "initial_list": ["m4", "m0"], "final_list": ["m0", "m4"],
         "reasoning": "m0.", "relevant_docids": ["m0", "m4"]},
        {"dataset": "mathqa", "qid": "q3", "initial_list": ["m0", "zz"], "final_list": ["zz", "m0"],
         "reasoning": "", "relevant_docids": []},
        {"dataset": "mathqa", "qid": "q4", "initial_list": ["m1", "m2", "m3"], "final_list": ["m3"],
         "reasoning": "only m3", "relevant_docids": ["m3"]},
    ]
    write_released(tmp_path / "released", rows, queries, docs)
    run = tmp_path / "run"
    summary = import_released(run, tmp_path / "released")
    assert summary["domains"]["mathqa"]["labelled"] == {"ok": 3, "failed": 1}
    labels = StageFile(run / "labels.jsonl").load()
    assert "not in id_doc" in labels["mathqa/q3"]["reason"]
    q1 = labels["mathqa/q1"]
    assert q1["permutation"] == [3, 1, 4, 2]
    renderer = PromptRenderer(None, "reasonrank", max_passage_tokens=100)
    assert q1["messages"] == renderer.messages(queries["q1"], [Candidate(d, 0.0, docs[d]) for d in rows[0]["initial_list"]])
    assert "(4)" in q1["messages"][1]["content"] and "(1) then" in q1["messages"][1]["content"]  # [n] -> (n), as upstream
    assert labels["mathqa/q4"]["final_list"] == ["m3", "m1", "m2"] and labels["mathqa/q4"]["parse_status"] == "repaired"
    # importing again adds nothing
    import_released(run, tmp_path / "released")
    assert len(StageFile(run / "labels.jsonl").load()) == 4

    manifest = run_export(run, alpha=0.4)
    # q1: m2 at rank 1 -> 1.0 ; q2: both relevant at the top -> 1.0 ; q4: m3 at rank 1 -> 1.0
    assert manifest["samples"] == 3
    out = [json.loads(x) for x in (run / "export" / "released" / "training_data_all.jsonl").read_text().splitlines()]
    assert out[0] == rows[0] and out[1] == rows[1]
    sft = [json.loads(x) for x in (run / "export" / "sft.jsonl").read_text().splitlines()]
    assert sft[0]["messages"][2]["content"] == "<think>Okay, m2 solves it.</think>\n<answer>[3] > [1] > [4] > [2]</answer>"


def test_export_then_import_round_trip(tiny_run, tmp_path):
    run, _, _, _ = tiny_run
    run_export(run)
    second = tmp_path / "second"
    import_released(second, run / "export" / "released")
    run_export(second)
    first_sft = (run / "export" / "sft.jsonl").read_text()
    assert (second / "export" / "sft.jsonl").read_text() == first_sft
    assert (second / "export" / "released" / "training_data_all.jsonl").read_text() == \
        (run / "export" / "released" / "training_data_all.jsonl").read_text()


def test_bad_domain_name_rejected():
    with pytest.raises(ReasonRankError):
        SourceSpec("../etc", "x")


# -- sources ----------------------------------------------------------------------------------------


def test_sources_beir_bright_and_rows(tmp_path):
    from _data import BRIGHT, SCIFACT
    from reasonrank.synthesis import open_source

    if (SCIFACT / "queries.jsonl").exists():
        coll, queries = open_source(SourceSpec("scifact", str(SCIFACT), split="train", limit=3))
        assert len(queries) == 3 and all(q.domain == "scifact" and q.gold for q in queries)
        assert coll.doc(queries[0].gold[0]).text
        if (BRIGHT / "examples").is_dir():  # the offline copy has no BRIGHT documents: synthesis needs them
            with pytest.raises(ReasonRankError, match="corpus texts are needed"):
                open_source(SourceSpec("biology", str(BRIGHT), task="biology"))
    # BRIGHT-style rows: gold_answer, list fields as Python-literal strings, excluded_ids ['N/A']
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "7", "query": "Why do cats purr?", "gold_answer": "To heal.",
                                                     "gold_ids": "['d1']", "excluded_ids": "['N/A']"}) + "\n")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "d1", "content": "Purring helps bones heal."}) + "\n")
    coll, queries = open_source(SourceSpec("cats", str(tmp_path / "rows.jsonl"), corpus=str(tmp_path / "docs.jsonl")))
    assert (queries[0].qid, queries[0].answer, queries[0].gold, queries[0].excluded) == ("7", "To heal.", ["d1"], [])
    assert coll.doc("d1").text == "Purring helps bones heal."
    with pytest.raises(ReasonRankError, match="corpus"):
        open_source(SourceSpec("cats", str(tmp_path / "rows.jsonl")))


def test_smaller_source_limit_narrows_filter_and_summary(tiny_run):
    from reasonrank.synthesis import run_sources

    run, spec, _, summary = tiny_run
    assert summary["domains"]["tiny"]["before_filter"] == 3
    spec.limit = 2
    run_sources(run, [spec])
    summary = run_filter(run, 0.4)
    assert summary["domains"]["tiny"]["before_filter"] == 2 and summary["filter"]["after"] == 2


def test_cache_key_covers_model_messages_and_sampling():
    from reasonrank.backends.base import SamplingParams
    from reasonrank.synthesis import ResponseCache

    msgs = [{"role": "user", "content": "rank"}]
    base = ResponseCache.key("m", msgs, SamplingParams(max_new_tokens=10))
    assert base == ResponseCache.key("m", [dict(m) for m in msgs], SamplingParams(max_new_tokens=10))
    assert base != ResponseCache.key("m2", msgs, SamplingParams(max_new_tokens=10))
    assert base != ResponseCache.key("m", [{"role": "user", "content": "rank!"}], SamplingParams(max_new_tokens=10))
    assert base != ResponseCache.key("m", msgs, SamplingParams(max_new_tokens=11))
    assert base != ResponseCache.key("m", msgs, SamplingParams(max_new_tokens=10, temperature=0.6))
    assert base != ResponseCache.key("m", msgs, SamplingParams(max_new_tokens=10), {"top_k": 1})


def test_released_import_and_synthesis_share_a_run(tiny_run, tmp_path):
    run, _, backend, _ = tiny_run
    write_released(tmp_path / "rel", [{"dataset": "mathqa", "qid": "q1", "initial_list": ["m0", "m1"], "final_list": ["m1", "m0"],
                                      "reasoning": "m1 first", "relevant_docids": ["m1"]}],
                   {"q1": "Which lemma?"}, {"m0": "Lemma zero.", "m1": "Lemma one."})
    import_released(run, tmp_path / "rel")
    teacher = Teacher.for_run(TeacherConfig("echo", temperature=0.0, api_key_env=""), run, backend=backend)
    summary = run_all(run, [], teacher, SMALL, bm25_cache=tmp_path / "bm25")
    assert backend.asked == 6  # nothing new to ask: the imported sample needs no teacher
    assert {d: v["after_filter"] for d, v in summary["domains"].items()} == {"mathqa": 1, "tiny": 3}
    assert json.loads((run / "export" / "manifest.json").read_text())["per_domain"] == {"mathqa": 1, "tiny": 3}


class PartialTeacher(EchoTeacher):
    """Ranks only two passages, without tags: '[2] > [1]' (what weak teachers do)."""

    def generate(self, prompts, params):
        out = super().generate(prompts, params)
        for p, g in zip(prompts, out, strict=True):
            if "relevance assessor" not in p.messages[0]["content"]:
                g.text = "[2] > [1]"
        return out


def test_answers_leaving_passages_out_are_parse_failures_unless_allowed(tmp_path):
    spec = write_tiny_corpus(tmp_path)
    run = tmp_path / "run"
    teacher = Teacher.for_run(TeacherConfig("partial", temperature=0.0, api_key_env=""), run, backend=PartialTeacher())
    summary = run_all(run, [spec], teacher, SMALL, bm25_cache=tmp_path / "bm25")
    dom = summary["domains"]["tiny"]
    assert dom["labelled"] == {"parse_failed": 3} and dom["label_parse_failure_rate"] == 1.0
    rec = StageFile(run / "labels.jsonl").load()["tiny/q-alpha"]
    assert rec["reason"].startswith("the answer ranks 2 of 6 passages")
    summary = run_label(run, teacher, window=6, max_new_tokens=64, allow_missing=True, force=True)
    assert summary["domains"]["tiny"]["labelled"] == {"ok": 3}
    assert teacher.stats.sent == 6  # the relabelling came from the cache
    rec = StageFile(run / "labels.jsonl").load()["tiny/q-alpha"]
    assert rec["permutation"][:2] == [2, 1] and rec["permutation"][2:] == [3, 4, 5, 6] and rec["reasoning"] == ""
