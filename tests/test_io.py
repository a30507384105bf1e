"""Readers: real files round-trip; bad input fails with the file, the line and the problem."""

import gzip
import json

import pytest
from _data import SCIFACT, needs_data

from reasonrank.errors import FormatError
from reasonrank.io import load_collection, read_qrels, read_run, write_qrels, write_run
from reasonrank.io.collection import UnknownCollection
from reasonrank.types import Candidate, Query, Request, Result, WindowTrace


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_run_roundtrip_gz(tmp_path):
    run = {"q1": {"d1": 3.0, "d2": 2.5}, "q2": {"d9": 1.0}}
    write_run(tmp_path / "r.trec.gz", run)
    assert read_run(tmp_path / "r.trec.gz") == run


def test_qrels_trec_and_beir(tmp_path):
    write_qrels(tmp_path / "q.txt", {"1": {"a": 1, "b": 0}})
    assert read_qrels(tmp_path / "q.txt") == {"1": {"a": 1, "b": 0}}
    write(tmp_path / "b.tsv", "query-id\tcorpus-id\tscore\n1\ta\t2\n")
    assert read_qrels(tmp_path / "b.tsv") == {"1": {"a": 2}}


@pytest.mark.parametrize(
    "content, line, problem",
    [
        ("q1 Q0 d1 1 2.0 tag\nq1 Q0 d2 2\n", 2, "a run line needs 6 fields (qid Q0 docid rank score tag), found 4"),
        ("q1 Q0 d1 1 high tag\n", 1, "score 'high' is not a number"),
        ("q1 Q0 d1 first 1.0 tag\n", 1, "rank 'first' is not an integer"),
    ],
)
def test_bad_run_lines(tmp_path, content, line, problem):
    path = write(tmp_path / "bad.trec", content)
    with pytest.raises(FormatError) as err:
        read_run(path)
    assert str(err.value) == f"{path}:{line}: {problem}"


def test_truncated_gzip_run(tmp_path):
    path = write(tmp_path / "r.trec.gz", "".join(f"q1 Q0 d{i} {i} {100 - i} t\n" for i in range(1, 2000)), gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupt gzip|Compressed file ended"):
        read_run(path)


def test_qrels_too_few_fields(tmp_path):
    path = write(tmp_path / "q.txt", "1 0 d1 1\n1 d2\n")
    with pytest.raises(FormatError) as err:
        read_qrels(path)
    assert str(err.value) == f"{path}:2: a qrels line needs 4 fields (qid iter docid relevance) or 3 (qid docid relevance), found 2"


@pytest.mark.parametrize("reader", [read_run, read_qrels])
def test_empty_file(tmp_path, reader):
    path = write(tmp_path / "empty.txt", "\n")
    with pytest.raises(FormatError) as err:
        reader(path)
    assert str(err.value).startswith(f"{path}: empty file")


def test_unknown_collection_directory(tmp_path):
    with pytest.raises(UnknownCollection, match="no such collection directory"):
        load_collection(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownCollection, match="not a collection directory"):
        load_collection(tmp_path / "empty")


def test_bad_jsonl_names_line(tmp_path):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    write(d / "corpus.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n')
    write(d / "queries.jsonl", '{"_id": "1", "text": "q"}\n')
    write(d / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n")
    coll = load_collection(d)
    with pytest.raises(FormatError, match=r"corpus.jsonl:2: invalid JSON"):
        list(coll.docs())
    with pytest.raises(FormatError, match=r"no qrels for split 'dev' \(available: \['test.tsv'\]\)"):
        load_collection(d, split="dev")


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_run(tmp_path / "missing.trec")


@needs_data
def test_scifact_collection():
    coll = load_collection(SCIFACT)
    info = coll.info()
    assert info["docs"] == 5183 and info["queries"] == 300 and info["judgements"] == 339
    doc = coll.doc("4983")
    assert doc.title.startswith("Microstructural development of human newborn")
    with pytest.raises(KeyError, match="unknown doc id 'nope'"):
        coll.doc("nope")
    assert load_collection(SCIFACT, split="train").info()["queries"] == 809


def test_r2med_layout(tmp_path):
    write(tmp_path / "test_queries.jsonl", '{"id": "q1", "text": "fever"}\n')
    write(tmp_path / "corpus.jsonl", '{"id": "d1", "text": "t1"}\n{"id": "d2", "text": "t2"}\n')
    write(tmp_path / "qrels.json", json.dumps({"q1": {"d2": 1}}))
    coll = load_collection(tmp_path)
    assert coll.name == f"r2med/{tmp_path.name}"
    assert [q.text for q in coll.queries()] == ["fever"]
    assert coll.qrels() == {"q1": {"d2": 1}}
    assert coll.doc("d2").text == "t2"


def test_records_json_roundtrip():
    trace = WindowTrace("q", 0, 0, 20, "abc", permutation=[1, 0], status="ok", docids=["a", "b"])
    result = Result(Query("q", "text"), [Candidate("a", 2.0, "x", "T")], [trace])
    assert Result.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    req = Request(Query("q", "t"), [Candidate("d")])
    assert Request.from_dict(req.to_dict()) == req
    with pytest.raises(ValueError, match="unknown field"):
        Query.from_dict({"qid": "1", "text": "t", "oops": 1})
