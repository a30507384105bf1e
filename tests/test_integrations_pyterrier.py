"""The PyTerrier integration with the real library (pyterrier, no Java): `bm25 >> text >> ReasonRankReranker()`
in `pt.Experiment` on SciFact with the embedded model, scored the same as `reasonrank evaluate`; column
handling, batching and errors on a scripted test double."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from _data import SCIFACT, needs_data
from _integrations import SMALL, needs_model, scripted_reranker
from test_listwise import reverse

pt = pytest.importorskip("pyterrier")
import pandas as pd  # noqa: E402

from reasonrank.errors import UnknownIdError  # noqa: E402
from reasonrank.io import load_collection, read_run  # noqa: E402
from reasonrank.rerankers import requests_from_run  # noqa: E402
from reasonrank.validation import InvalidInput  # noqa: E402

from reasonrank.integrations.pyterrier import BM25, ReasonRankReranker, TextLoader, qrels_frame, topics_frame  # noqa: E402


@pytest.fixture(scope="module")
def scifact():
    return load_collection(SCIFACT)


@pytest.fixture(scope="module")
def bm25(scifact, tmp_path_factory):
    return BM25(scifact, k=4, cache=tmp_path_factory.mktemp("bm25"))  # top-4: one window of 4 per query


@needs_model
@needs_data
def test_experiment_ndcg_equals_reasonrank_evaluate_and_the_order_is_rerank(scifact, bm25, tmp_path):
    reranker = ReasonRankReranker(**SMALL, journal=str(tmp_path / "traces.jsonl"))  # a journal file: a batch face takes one
    topics = topics_frame(scifact).head(3)
    pipeline = bm25 >> bm25.text_loader() >> reranker
    table = pt.Experiment([bm25, pipeline], topics, qrels_frame(scifact), eval_metrics=["ndcg_cut_10"],
                          names=["bm25", "reranked"], save_dir=str(tmp_path))
    assert not pt.java.started()
    assert reranker.reranker.stats.windows == 3 and reranker.reranker.stats.queries == 3  # one rerank_batch

    # the run pt.Experiment evaluated (it saved it), scored by `reasonrank evaluate`
    saved = tmp_path / "reranked.res.gz"
    cli = subprocess.run([sys.executable, "-m", "reasonrank.cli", "evaluate", str(saved), "-c", str(SCIFACT),
                          "-m", "nDCG@10", "--format", "json"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    (ours,) = json.loads(cli.stdout).values()
    ndcg = table.set_index("name")["ndcg_cut_10"]
    assert ndcg["reranked"] == pytest.approx(ours["nDCG@10"], abs=1e-12)

    # the same order as Reranker.rerank on the same candidates (title and text from the collection): its
    # windows are the transformer's, byte for byte, so all of them resume from the reranker's journal file
    first_stage = read_run(tmp_path / "bm25.res.gz")  # the candidates the pipeline got
    core = reranker.reranker
    resumed_before = core.stats.resumed_windows
    for request in requests_from_run(scifact, first_stage, list(topics["qid"])):
        result = core.rerank(request.query.text, request.candidates)
        assert list(ranked(read_run(saved)[request.query.qid])) == result.docids
    assert core.stats.resumed_windows - resumed_before == 3


def ranked(docs: dict) -> list:
    return [d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])]


def frame(rows, **extra):
    df = pd.DataFrame(rows, columns=["qid", "query", "docno", "text", "score"])
    return df.assign(**extra)


def test_reranker_reorders_keeps_columns_and_batches_queries():
    prompts = []
    core, backend = scripted_reranker(lambda n, user: prompts.append(user) or reverse(n, user))
    reranker = ReasonRankReranker(reranker=core)
    rows = [("q1", "first query", f"a{i}", f"text a{i}", float(s)) for i, s in enumerate([1, 4, 3, 2])]
    rows += [("q2", "second query", f"b{i}", f"text b{i}", float(4 - i)) for i in range(3)]
    inp = frame(rows, title=[f"title {r[2]}" for r in rows], custom=[r[2].upper() for r in rows])
    out = reranker(inp)
    # first-stage order is by score (a1 a2 a3 a0); the double reverses each window
    assert list(out[out.qid == "q1"].docno) == ["a0", "a3", "a2", "a1"]
    assert list(out[out.qid == "q2"].docno) == ["b2", "b1", "b0"]
    # scores as every face reports them (reasonrank.scoring, score_mode rank): 1 / (rank + 1)
    assert list(out[out.qid == "q1"]["rank"]) == [0, 1, 2, 3] and list(out[out.qid == "q1"].score) == [1.0, 0.5, 1 / 3, 0.25]
    assert set(out.columns) == set(inp.columns) | {"rank"} and (out.custom == out.docno.str.upper()).all()
    assert backend.batches == [2]  # both queries' windows in one backend call
    assert "[1] Title: title a1 Content: text a1" in prompts[0]  # the title is in the prompt, as `reasonrank rerank` puts it


def test_reranker_errors_are_the_core_apis():
    reranker = ReasonRankReranker(reranker=scripted_reranker()[0])
    with pytest.raises(pt.validate.InputValidationError):  # PyTerrier's own: no text column at all
        reranker(pd.DataFrame({"qid": ["q"], "query": ["x"], "docno": ["d"], "score": [1.0]}))
    with pytest.raises(InvalidInput, match="qid q: 'query' must not be empty"):
        reranker(frame([("q", "  ", "d", "text", 1.0)]))
    with pytest.raises(InvalidInput, match=r"qid q: docno d2 has no text \(load it before reranking"):
        reranker(frame([("q", "x", "d1", "text", 2.0), ("q", "x", "d2", None, 1.0)]))
    empty = reranker(frame([]))  # what pt.inspect sends, and what a first stage that found nothing gives
    assert empty.empty and {"score", "rank"} <= set(empty.columns)


@needs_data
def test_bm25_and_text_loader(scifact, bm25):
    topics = pd.DataFrame({"qid": ["1", "3"], "query": [scifact.query_dict()[q].text for q in ("1", "3")], "extra": [1, 2]})
    res = bm25(topics)
    assert list(res.columns) == ["qid", "query", "extra", "docno", "score", "rank"] and len(res) == 8
    loaded = pt.text.get_text(bm25)(res)  # PyTerrier's own way to ask for a text loader
    doc = scifact.doc(loaded.docno.iat[0])
    assert (loaded.text.iat[0], loaded.title.iat[0]) == (doc.text, doc.title)
    assert list(TextLoader(scifact, "text")(res).columns) == list(res.columns) + ["text"]
    with pytest.raises(UnknownIdError, match="'nope'"):
        TextLoader(scifact)(res.assign(docno="nope"))


@needs_data
def test_experiment_runs_where_no_java_can_be_found(tmp_path):
    """No JAVA_HOME, no java on PATH: import, transformers and pt.Experiment still work."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import pyterrier as pt
        from _integrations import scripted_reranker
        from reasonrank.integrations.pyterrier import BM25, ReasonRankReranker, qrels_frame, topics_frame
        from reasonrank.io import load_collection
        scifact = load_collection({str(SCIFACT)!r})
        bm25 = BM25(scifact, k=4, cache={str(tmp_path)!r})
        pipeline = bm25 >> bm25.text_loader() >> ReasonRankReranker(reranker=scripted_reranker()[0])
        print(pt.Experiment([pipeline], topics_frame(scifact).head(2), qrels_frame(scifact), eval_metrics=["ndcg_cut_10"]))
        assert not pt.java.started()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "JRE_HOME", "JDK_HOME")}
    env["PATH"] = os.path.dirname(sys.executable)  # the venv's bin: no java there
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ndcg_cut_10" in proc.stdout
