"""PyTerrier transformers (`pip install 'reasonrank[pyterrier]'`): the listwise reasoning reranker, our
BM25 (bm25s, no Java) and a text loader, composable with `>>` and evaluated by `pt.Experiment`.

    import pyterrier as pt
    from reasonrank.integrations.pyterrier import BM25, ReasonRankReranker, qrels_frame, topics_frame
    from reasonrank.io import load_collection

    scifact = load_collection("../shared/data/scifact")
    bm25 = BM25(scifact, k=20)
    pipeline = bm25 >> bm25.text_loader() >> ReasonRankReranker(top_k=20)
    pt.Experiment([bm25, pipeline], topics_frame(scifact), qrels_frame(scifact), eval_metrics=["ndcg_cut_10"])

pyterrier >= 1.0 starts Java only when a Terrier component asks for it; nothing here does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from reasonrank.errors import UnknownIdError, require
from reasonrank.integrations._common import build_reranker
from reasonrank.io import Collection, load_collection
from reasonrank.retrieval import BM25Index
from reasonrank.scoring import score_results
from reasonrank.types import Candidate, Query, Request, Result
from reasonrank.validation import InvalidInput, check_query

pt = require("pyterrier", "pyterrier", "The PyTerrier integration")
import pandas as pd  # noqa: E402  (a dependency of pyterrier)

FIELDS = ("text", "title")


def _collection(collection: Collection | str | Path) -> Collection:
    return collection if isinstance(collection, Collection) else load_collection(collection)


def topics_frame(collection: Collection | str | Path) -> pd.DataFrame:
    """The collection's queries as PyTerrier topics (`qid`, `query`)."""
    return pd.DataFrame([(q.qid, q.text) for q in _collection(collection).queries()], columns=["qid", "query"])


def qrels_frame(collection: Collection | str | Path) -> pd.DataFrame:
    """The collection's judgements as PyTerrier qrels (`qid`, `docno`, `label`)."""
    qrels = _collection(collection).qrels()
    rows = [(qid, docno, label) for qid, docs in qrels.items() for docno, label in docs.items()]
    return pd.DataFrame(rows, columns=["qid", "docno", "label"])


class ReasonRankReranker(pt.Transformer):
    """Rerank a result frame (`qid, query, docno, text[, title, score, rank]`) with the reranker a spec builds
    (the listwise reasoning model by default).

    The frame comes back in the new order with a new `score` (reasonrank.scoring, as every face scores: 1 / (rank
    + 1), or with the spec's `score_mode="blend"` mixed with the frame's incoming `score`) and `rank`; every other
    column is kept (rows under the spec's `min_score` are dropped). Each query's candidates enter in first-stage order (by `score` when the
    frame has one); `title`, when present, goes into the prompt as `Title: … Content: …`, as `reasonrank
    rerank` does. All queries of a frame go to one `rerank_batch`, so the windows of many queries at the
    same step share backend calls.

    `ReasonRankReranker(model=None, backend=None, **options)` builds `build(RerankerSpec.from_options(model,
    backend, **options))` (method, top_k, window, step, max_new_tokens, journal, n_threads, ...); `spec=`
    builds a spec as given, and `reranker=` takes one already built.
    """

    def __init__(self, model: str | None = None, backend: str | None = None, *, spec=None, reranker=None,
                 **reranker_options):
        self.reranker = build_reranker(model, backend, reranker, reranker_options, spec=spec)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["query", "text"])
        if inp.empty:  # pt.inspect probes with empty frames; a first stage may also find nothing
            return pt.model.add_ranks(inp.assign(score=pd.Series(dtype="float64")))
        frames = [_first_stage_order(frame) for _, frame in inp.groupby("qid", sort=False)]
        requests = [_request(frame) for frame in frames]
        # the scores every face reports (reasonrank.scoring), the frame's `score` as the first stage's where it has one
        results = score_results(self.reranker.spec, requests, self.reranker.rerank_batch(requests),
                                first_stage="score" in inp.columns)
        return pd.concat([_reordered(frame, result) for frame, result in zip(frames, results)], ignore_index=True)

    def __repr__(self) -> str:
        return f"ReasonRankReranker({self.reranker.backend.model!r})"


def _first_stage_order(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    return frame.sort_values("score", ascending=False, kind="stable") if "score" in frame.columns else frame


def _request(frame: pd.DataFrame) -> Request:
    qid = str(frame["qid"].iat[0])
    try:
        query = check_query(frame["query"].iat[0])
    except InvalidInput as exc:
        raise InvalidInput(f"qid {qid}: {exc}") from None
    docnos = [str(d) for d in frame["docno"]]
    if len(set(docnos)) < len(docnos):
        raise InvalidInput(f"qid {qid}: docno {next(d for d in docnos if docnos.count(d) > 1)} appears twice")
    titles = frame["title"] if "title" in frame.columns else [""] * len(frame)
    scores = frame["score"] if "score" in frame.columns else [0.0] * len(frame)
    # docnos as the candidates' ids: the journal (journal=...) then holds real ids, is shared with
    # `reasonrank rerank` and the run report, and a window met again elsewhere resumes
    candidates = [Candidate(docno, float(score), _text(qid, docno, text), title if isinstance(title, str) else "")
                  for docno, text, title, score in zip(docnos, frame["text"], titles, scores)]
    return Request(Query(qid, query), candidates)


def _text(qid: str, docno, text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"qid {qid}: docno {docno} has no text (load it before reranking: "
                           "bm25 >> bm25.text_loader() >> reranker)")
    return text


def _reordered(frame: pd.DataFrame, result: Result) -> pd.DataFrame:
    row = {str(docno): i for i, docno in zip(frame.index, frame["docno"])}
    out = frame.loc[[row[c.docid] for c in result.candidates]].reset_index(drop=True)
    out["score"] = [c.score for c in result.candidates]
    return pt.model.add_ranks(out, single_query=True)


class BM25(pt.Transformer):
    """BM25 over a Collection with reasonrank's bm25s index (k1=0.9, b=0.4; built once, then cached): a query
    frame (`qid, query`) in, its top `k` as a result frame (`qid, query, docno, score, rank` and the query
    frame's other columns) out. BRIGHT's excluded ids are removed and the list refilled to k, as by
    `reasonrank retrieve`. `text_loader()` gives the transformer that adds the passages' text and title."""

    def __init__(self, collection: Collection | str | Path, k: int = 100, *, cache: str | Path | None = None):
        self.collection = _collection(collection)
        self.k = k
        self.index = BM25Index.for_collection(self.collection, cache=cache)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.query_frame(inp, extra_columns=["query"])
        topics = inp.assign(qid=inp["qid"].astype(str))
        queries = [Query(qid, text) for qid, text in zip(topics["qid"], topics["query"])]
        run = self.index.search(queries, k=self.k, excluded=self.collection.excluded(), show_progress=False) if queries else {}
        hits = pd.DataFrame([(qid, docno, score) for qid, docs in run.items() for docno, score in docs.items()],
                            columns=["qid", "docno", "score"])
        return pt.model.add_ranks(topics.merge(hits, on="qid"))

    def text_loader(self, fields: str | Sequence[str] = "*", *, verbose: bool = False) -> "TextLoader":
        """PyTerrier's HasTextLoader protocol, so `pt.text.get_text(bm25)` works too."""
        return TextLoader(self.collection, fields)

    def __repr__(self) -> str:
        return f"BM25({self.collection.name!r}, k={self.k})"


class TextLoader(pt.Transformer):
    """Fill `text` and `title` (or the `fields` named) of a result frame from a Collection, by `docno`."""

    def __init__(self, collection: Collection | str | Path, fields: str | Sequence[str] = "*"):
        self.collection = _collection(collection)
        self.fields = list(FIELDS) if fields == "*" else [fields] if isinstance(fields, str) else list(fields)
        unknown = [f for f in self.fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}: a Collection document has {', '.join(FIELDS)}")

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp)
        docs = [self._doc(docno) for docno in inp["docno"]]
        return inp.assign(**{f: [getattr(d, f) for d in docs] for f in self.fields})

    def _doc(self, docno):
        try:
            return self.collection.doc(str(docno))
        except KeyError as exc:
            raise UnknownIdError(f"{exc.args[0]} (is the frame from another collection?)") from None

    def __repr__(self) -> str:
        return f"TextLoader({self.collection.name!r}, {self.fields})"

