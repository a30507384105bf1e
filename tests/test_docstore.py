"""The on-disk document store (issue 20): built once per corpus, reused, rebuilt when the corpus
changes; streamed runs and requests give what the whole-run readers give."""

import json
import os
import sqlite3
import threading

import pytest
from _data import SCIFACT, needs_data

from reasonrank.errors import FormatError, UnknownIdError
from reasonrank.io import docstore, load_collection, read_run
from reasonrank.io.collection import Collection
from reasonrank.io.docstore import DocStore, files_key, store_path
from reasonrank.io.trec import iter_run_queries, ranked
from reasonrank.rerankers import iter_requests, requests_from_run
from reasonrank.types import Document, Query

ODD_IDS = ["a b", "  lead", "trail ", "Memory Management_1_0.txt", "日本語", "emoji 🙂", "lone \ud800", "nul\x00id", "'quote\"", "%_like"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache: stores built here never reach the user's cache (as test_doctor isolates it)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("REASONRANK_CACHE", str(path))
    return path


def stores(cache) -> list[str]:
    d = cache / "docstores"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def beir_dir(root, corpus_rows, queries=(("q1", "first"), ("q2", "second"))):
    root.mkdir(exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus_rows))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td1\t1\n" for q, _ in queries))
    return root


CORPUS = [{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "text": "two"}, {"_id": "d3", "title": "T3", "text": "three"}]


def in_memory(docs, store_key=None, name="mem"):
    return Collection(name, lambda: iter([Query("q1", "first")]), lambda: iter(docs), dict, store_key=store_key)


def test_built_once_then_reused_without_reading_the_corpus(tmp_path, cache):
    first = load_collection(beir_dir(tmp_path / "c", CORPUS))
    assert first.store_key and stores(cache) == []
    assert first.doc("d1") == Document("d1", "one", "T1")
    assert stores(cache) == [f"{first.store_key}.sqlite"]
    assert first._doc_index is None  # the corpus never went into a dict

    second = load_collection(tmp_path / "c")
    assert second.store_key == first.store_key

    def fail():
        raise AssertionError("the corpus was read again")

    second.load_docs = fail
    assert second.docs_by_id(["d3", "d2", "d3"]) == [Document("d3", "three", "T3"), Document("d2", "two", ""), Document("d3", "three", "T3")]
    assert second.docs_by_ids(["d2", "d1"]) == {"d2": Document("d2", "two", ""), "d1": Document("d1", "one", "T1")}


def test_rebuilt_when_the_corpus_file_changes(tmp_path, cache):
    root = beir_dir(tmp_path / "c", CORPUS)
    before = load_collection(root)
    assert before.doc("d2").text == "two"
    stat = (root / "corpus.jsonl").stat()
    beir_dir(root, [*CORPUS[:1], {"_id": "d2", "text": "owt"}, CORPUS[2]])  # same size: only the mtime tells
    os.utime(root / "corpus.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = load_collection(root)
    assert after.store_key != before.store_key
    assert after.doc("d2").text == "owt"
    assert stores(cache) == sorted([f"{before.store_key}.sqlite", f"{after.store_key}.sqlite"])


def test_files_key_names_path_size_mtime_and_reader(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("x")
    b.write_text("x")
    key = files_key([a], "beir.iter_docs")
    assert key == files_key([tmp_path / "." / "a.jsonl"], "beir.iter_docs")  # resolved
    assert len({key, files_key([b], "beir.iter_docs"), files_key([a], "bright._documents"), files_key([a, b], "beir.iter_docs")}) == 4


def test_ids_with_spaces_and_any_unicode(cache):
    docs = [Document(d, f"text of {d}", f"title {i}") for i, d in enumerate(ODD_IDS)]
    coll = in_memory(docs, store_key="odd")
    assert coll.docs_by_ids(reversed(ODD_IDS)) == {d.docid: d for d in reversed(docs)}
    assert list(coll.docs_by_ids(reversed(ODD_IDS))) == list(reversed(ODD_IDS))  # in the order asked
    with pytest.raises(KeyError):
        coll.doc("a  b")  # inner spacing is part of the id
    with pytest.raises(KeyError):
        coll.doc("%")  # ids are compared whole, never as patterns


def test_duplicate_ids_keep_the_last_as_the_dict_index_does(cache):
    docs = [Document("d1", "first", "A"), Document("d2", "two"), Document("d1", "second", "")]
    stored, indexed = in_memory(docs, store_key="dups"), in_memory(docs)
    assert stored.doc("d1") == indexed.doc("d1") == Document("d1", "second", "")
    assert len(DocStore(store_path("dups"))) == 2


@pytest.mark.parametrize("key", ["k", None])
def test_unknown_id_message_is_unchanged(cache, key):
    coll = in_memory([Document("d1", "one")], store_key=key, name="scifact/test")
    with pytest.raises(KeyError) as err:
        coll.doc("nope")
    assert err.value.args == ("scifact/test: unknown doc id 'nope'",)
    with pytest.raises(KeyError) as err:
        coll.docs_by_ids(["d1", "x y", "z"])
    assert err.value.args == ("scifact/test: unknown doc id 'x y'",)  # the first unknown, in the order given


def test_a_build_that_dies_leaves_no_store_and_the_next_lookup_builds_it(cache):
    state = {"fail": True}

    def docs():
        yield Document("d1", "one")
        if state["fail"]:
            raise RuntimeError("killed mid-build")
        yield Document("d2", "two")

    coll = Collection("c", lambda: iter(()), docs, dict, store_key="killed")
    with pytest.raises(RuntimeError, match="killed mid-build"):
        coll.doc("d2")
    assert stores(cache) == []  # neither a store nor its temp file
    state["fail"] = False
    assert coll.doc("d2") == Document("d2", "two")
    assert stores(cache) == ["killed.sqlite"]


def test_two_builds_at_once_both_leave_a_valid_store(cache):
    path = store_path("race")

    def slow():  # a second process builds the whole store while this one is half way
        yield Document("d1", "from the slow build")
        docstore.build(path, [Document("d1", "from the fast build"), Document("d2", "fast")])
        assert DocStore(path).get_many(["d1", "d2"])["d1"].text == "from the fast build"
        yield Document("d2", "slow")

    assert docstore.build(path, slow()) == 2
    assert DocStore(path).get_many(["d1", "d2"]) == {"d1": Document("d1", "from the slow build"), "d2": Document("d2", "slow")}
    assert stores(cache) == ["race.sqlite"]


def test_a_damaged_store_is_built_again(cache):
    path = store_path("damaged")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all" * 100)
    assert in_memory([Document("d1", "one")], store_key="damaged").doc("d1").text == "one"


def test_get_many_one_select_per_chunk_and_read_only(cache):
    n = docstore.CHUNK * 2 + 1
    docs = [Document(f"d{i}", f"t{i}") for i in range(n)]
    docstore.build(store_path("big"), docs)
    store = DocStore(store_path("big"))
    selects = []
    store._conn.set_trace_callback(lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)
    ids = [f"d{i}" for i in reversed(range(n))] + ["missing"]
    got = store.get_many(ids)
    assert list(got) == ids[:-1] and got["d7"] == Document("d7", "t7")
    assert len(selects) == 3
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._conn.execute("DELETE FROM docs")


def test_a_store_serves_another_thread(cache):
    docstore.build(store_path("threads"), [Document("d1", "one")])
    store, out = DocStore(store_path("threads")), []
    thread = threading.Thread(target=lambda: out.append(store.get_many(["d1"])))
    thread.start()
    thread.join()
    assert out == [{"d1": Document("d1", "one")}]


def test_loaders_set_a_store_key_only_for_corpus_files(tmp_path):
    (tmp_path / "bright" / "examples").mkdir(parents=True)
    (tmp_path / "bright" / "examples" / "pony.jsonl").write_text(json.dumps({"id": "1", "query": "q", "gold_ids": ["a b"]}) + "\n")
    assert load_collection(tmp_path / "bright", task="pony").store_key is None  # no documents/ to read
    (tmp_path / "bright" / "documents").mkdir()
    (tmp_path / "bright" / "documents" / "pony.jsonl").write_text(json.dumps({"id": "a b", "content": "spaced"}) + "\n")
    bright = load_collection(tmp_path / "bright", task="pony")
    assert bright.store_key == files_key([tmp_path / "bright" / "documents" / "pony.jsonl"], "bright._documents")
    assert bright.doc("a b") == Document("a b", "spaced")

    r2med = tmp_path / "r2med"
    r2med.mkdir()
    (r2med / "query.jsonl").write_text('{"id": "q1", "text": "fever"}\n')
    (r2med / "qrels.jsonl").write_text('{"q_id": "q1", "p_id": "d1", "score": 1}\n')
    assert load_collection(r2med).store_key is None
    (r2med / "corpus.jsonl").write_text('{"id": "d1", "text": "t1"}\n')
    assert load_collection(r2med).doc("d1") == Document("d1", "t1")


# -- streaming runs ------------------------------------------------------------------------------------

RUN = """q2 Q0 d1 1 5.0 x
q2 Q0 d3 2 7.5 x
q2 Q0 d2 3 5.0 x
q2 Q0 d1 4 1.0 x

q1 Q0 d2 1 3.0 x
q1 Q0 d3 2 3.0 x
q1 Q0 d1 3 9.0 x
"""


def test_iter_run_queries_ranks_each_query_as_read_run_does(tmp_path):
    (tmp_path / "r.trec").write_text(RUN)
    streamed = list(iter_run_queries(tmp_path / "r.trec"))
    # ties keep file order; a repeated doc id keeps its first place and its last score (as the dict does)
    assert streamed == [("q2", [("d3", 7.5), ("d2", 5.0), ("d1", 1.0)]), ("q1", [("d1", 9.0), ("d2", 3.0), ("d3", 3.0)])]
    assert streamed == [(q, ranked(docs)) for q, docs in read_run(tmp_path / "r.trec").items()]


def test_iter_run_queries_refuses_a_run_not_grouped_by_query(tmp_path):
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 2.0 x\nq2 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    seen = []
    with pytest.raises(FormatError) as err:
        for qid, _ in iter_run_queries(tmp_path / "r.trec"):
            seen.append(qid)
    assert seen == ["q1", "q2"]
    assert (err.value.line, err.value.path) == (3, str(tmp_path / "r.trec"))
    assert err.value.problem == ("query 'q1' appears again after other queries: a run must list each query's lines "
                                 "together; sort it by query first, keeping each query's order (e.g. `sort -s -k1,1 run > sorted`)")


def requests_dicts(requests):
    return [r.to_dict() for r in requests]


@pytest.mark.parametrize("options", [{}, {"depth": 2}, {"qids": ["q1"]}, {"qids": ["q2", "q1"], "depth": 1}])
def test_iter_requests_gives_what_requests_from_run_gives(tmp_path, options):
    coll = load_collection(beir_dir(tmp_path / "c", CORPUS))
    (tmp_path / "r.trec").write_text(RUN + "q9 Q0 d1 1 1.0 x\n")  # q9: not the collection's, skipped
    whole = requests_from_run(coll, read_run(tmp_path / "r.trec"), **options)
    streamed = list(iter_requests(coll, tmp_path / "r.trec", **options))
    assert requests_dicts(streamed) == requests_dicts(whole)
    assert [r.query.qid for r in streamed] == options.get("qids", ["q2", "q1"])


def test_iter_requests_limit_is_the_first_queries_of_the_run(tmp_path):
    coll = load_collection(beir_dir(tmp_path / "c", CORPUS))
    (tmp_path / "r.trec").write_text(RUN + "q9 Q0 d1 1 1.0 x\n")
    run = read_run(tmp_path / "r.trec")
    first = list(iter_requests(coll, tmp_path / "r.trec", limit=1))
    assert requests_dicts(first) == requests_dicts(requests_from_run(coll, run, list(run)[:1]))
    assert [c.docid for c in first[0].candidates] == ["d3", "d2", "d1"]
    assert list(iter_requests(coll, tmp_path / "r.trec", limit=0)) == []
    with pytest.raises(UnknownIdError) as err:  # as the CLI's --queries 3 fails today: q9 is among the first 3
        list(iter_requests(coll, tmp_path / "r.trec", limit=3))
    assert str(err.value) == "c/test: run has unknown query ids ['q9'] (is it a run of another collection?)"


def test_iter_requests_qids_the_run_lacks_come_last_and_empty(tmp_path):
    coll = load_collection(beir_dir(tmp_path / "c", CORPUS, queries=(("q1", "a"), ("q2", "b"), ("q3", "c"))))
    (tmp_path / "r.trec").write_text(RUN)
    streamed = list(iter_requests(coll, tmp_path / "r.trec", qids=["q3", "q1"]))
    assert [(r.query.qid, len(r.candidates)) for r in streamed] == [("q1", 3), ("q3", 0)]
    whole = requests_from_run(coll, read_run(tmp_path / "r.trec"), ["q3", "q1"])
    assert [(r.query.qid, len(r.candidates)) for r in whole] == [("q3", 0), ("q1", 3)]  # the same requests, run order aside


@pytest.mark.parametrize("run, qids, message", [
    ("q8 Q0 d1 1 1.0 x\nq9 Q0 d1 1 1.0 x\n", None, "c/test: run has unknown query ids ['q8', 'q9'] (is it a run of another collection?)"),
    (RUN, ["q1", "q7"], "c/test: run has unknown query ids ['q7'] (is it a run of another collection?)"),
    ("q1 Q0 d1 1 2.0 x\nq1 Q0 nope 2 1.0 x\n", None, "c/test: unknown doc id 'nope' in the run (is it a run of another collection?)"),
])
def test_iter_requests_unknown_ids_fail_as_requests_from_run_does(tmp_path, run, qids, message):
    coll = load_collection(beir_dir(tmp_path / "c", CORPUS))
    (tmp_path / "r.trec").write_text(run)
    for make in (lambda: requests_from_run(coll, read_run(tmp_path / "r.trec"), qids),
                 lambda: list(iter_requests(coll, tmp_path / "r.trec", qids))):
        with pytest.raises(UnknownIdError) as err:
            make()
        assert str(err.value) == message


@needs_data
def test_scifact_store_holds_the_corpus_as_read(cache):
    coll = load_collection(SCIFACT)
    every = {d.docid: d for d in coll.docs()}
    assert len(every) == 5183
    assert coll.docs_by_ids(every) == every  # every field of every document, one batched lookup
    assert coll.doc("4983").title.startswith("Microstructural development of human newborn")
    assert len(DocStore(store_path(coll.store_key))) == 5183
    assert load_collection(SCIFACT, split="train").store_key == coll.store_key  # one corpus, one store
