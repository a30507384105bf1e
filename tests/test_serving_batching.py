"""Cross-request batching and request validation, without a model (fast).

The batching wrapper is tested with scripted backends whose calls can be held open, so which prompts
share a generate() call is deterministic. The full service (uvicorn, HTTP, the embedded model) is
tested in test_serving.py.
"""

from __future__ import annotations

import itertools
import re
import threading
import time

import pytest
from doubles import DoubleBackend

from reasonrank.backends.base import Capabilities, Generation, SamplingParams
from reasonrank.serving.batching import BatchingBackend, RequestCancelled
from reasonrank.serving.config import ServeConfig, model_names, read_api_keys
from reasonrank.serving.schema import ApiError, Limits, parse_request, relevance_score
from reasonrank.types import Prompt


def P(tag: str) -> Prompt:
    return Prompt([{"role": "user", "content": tag}], tag)


class GatedBackend(DoubleBackend):
    """Test double: records each generate() call; while `gate` is clear, calls block (the model is 'busy')."""

    name, model = "gated", "gated-model"

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def generate(self, prompts, params):
        self.calls.append([p.text for p in prompts])
        self.entered.set()
        self.gate.wait(10)
        if self.fail_on and any(p.text == self.fail_on for p in prompts):
            raise RuntimeError("boom")
        return [Generation(text=f"out:{p.text}:{params.max_new_tokens}", prompt_tokens=1, completion_tokens=1) for p in prompts]


def _in_thread(fn, *args):
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _wait_queued(batcher, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while batcher.queued < n:
        assert time.monotonic() < deadline, f"only {batcher.queued} of {n} prompts queued"
        time.sleep(0.005)


def test_windows_of_concurrent_requests_share_one_backend_call():
    inner = GatedBackend()
    batcher = BatchingBackend(inner, max_batch=8, max_wait=0.0)
    params = SamplingParams(max_new_tokens=7)
    try:
        first, first_box = _in_thread(batcher.client().generate, [P("a")], params)
        assert inner.entered.wait(5)  # the model is now busy with request a
        others = [_in_thread(batcher.client().generate, [P(tag)], params) for tag in "bcd"]
        _wait_queued(batcher, 3)
        inner.gate.set()
        for t, _ in [(first, first_box), *others]:
            t.join(5)
        assert inner.calls[0] == ["a"]
        assert sorted(inner.calls[1]) == ["b", "c", "d"]  # three requests, one generate() call
        assert len(inner.calls) == 2
        assert first_box["value"][0].text == "out:a:7"
        assert [box["value"][0].text for _, box in others] == ["out:b:7", "out:c:7", "out:d:7"]  # each gets its own
        assert (batcher.batches, batcher.prompts) == (2, 4)
    finally:
        inner.gate.set()
        batcher.close()


def test_max_batch_and_params_split():
    inner = GatedBackend()
    batcher = BatchingBackend(inner, max_batch=2, max_wait=0.0)
    try:
        _in_thread(batcher.generate, [P("busy")], SamplingParams(max_new_tokens=1))
        assert inner.entered.wait(5)
        threads = [_in_thread(batcher.generate, [P(f"x{i}")], SamplingParams(max_new_tokens=5)) for i in range(3)]
        _wait_queued(batcher, 3)
        threads.append(_in_thread(batcher.generate, [P("y")], SamplingParams(max_new_tokens=9)))
        _wait_queued(batcher, 4)
        inner.gate.set()
        for t, _ in threads:
            t.join(5)
        assert all(len(c) <= 2 for c in inner.calls)
        assert sorted(p for c in inner.calls for p in c) == ["busy", "x0", "x1", "x2", "y"]
        assert all(len({p[0] for p in c}) == 1 for c in inner.calls)  # max_new_tokens 5 and 9 never mixed
        assert threads[-1][1]["value"][0].text == "out:y:9"
    finally:
        inner.gate.set()
        batcher.close()


def test_cancelled_request_queues_nothing_and_its_queued_windows_are_dropped():
    inner = GatedBackend()
    dropped = []
    batcher = BatchingBackend(inner, max_batch=8, max_wait=0.0, on_drop=dropped.append)
    params = SamplingParams()
    try:
        _in_thread(batcher.generate, [P("busy")], params)
        assert inner.entered.wait(5)
        cancel = threading.Event()
        t, box = _in_thread(batcher.client(cancel).generate, [P("doomed1"), P("doomed2")], params)
        keep, keep_box = _in_thread(batcher.client().generate, [P("kept")], params)
        _wait_queued(batcher, 3)
        cancel.set()
        t.join(5)
        assert isinstance(box.get("error"), RequestCancelled)  # the waiting caller stops waiting at once
        with pytest.raises(RequestCancelled):  # and a cancelled client never queues again
            batcher.client(cancel).generate([P("late")], params)
        inner.gate.set()
        keep.join(5)
        assert keep_box["value"][0].text == "out:kept:3172"
        assert all("doomed" not in p and p != "late" for c in inner.calls for p in c)
        assert dropped == [2]
    finally:
        inner.gate.set()
        batcher.close()


def test_backend_exception_becomes_error_generations_and_worker_survives():
    inner = GatedBackend(fail_on="bad")
    inner.gate.set()
    batcher = BatchingBackend(inner, max_batch=4, max_wait=0.0)
    try:
        gens = batcher.generate([P("bad"), P("other")], SamplingParams())
        assert all(g.error.startswith("backend failed: RuntimeError: boom") for g in gens)
        assert batcher.generate([P("fine")], SamplingParams())[0].text.startswith("out:fine")
    finally:
        batcher.close()


def test_close_finishes_queued_work():
    inner = GatedBackend()
    batcher = BatchingBackend(inner, max_batch=1, max_wait=0.0)
    threads = [_in_thread(batcher.generate, [P(f"p{i}")], SamplingParams()) for i in range(3)]
    assert inner.entered.wait(5)
    _wait_queued(batcher, 2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    inner.gate.set()
    closer.join(10)
    for t, box in threads:
        t.join(5)
        assert box["value"][0].text.startswith("out:p")
    with pytest.raises(RuntimeError, match="closed"):
        batcher.generate([P("after")], SamplingParams())


class ReverseBackend(DoubleBackend):
    """Test double: answers every window with its passages in reverse order (prompts rendered without a tokenizer)."""

    name, model = "reverse", "reverse-model"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def generate(self, prompts, params):
        with self.lock:
            self.calls.append(len(prompts))
        time.sleep(self.delay)
        out = []
        for p in prompts:
            n = max(int(x) for x in re.findall(r"^\[(\d+)\]", p.messages[-1]["content"], re.MULTILINE))
            out.append(Generation(text="<think>r</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>",
                                  prompt_tokens=10, completion_tokens=5, finish_reason="stop"))
        return out


def test_listwise_rerankers_over_the_batcher_match_sequential_results():
    from reasonrank.prompts import PromptRenderer
    from reasonrank.rerankers.listwise import ListwiseReranker
    from reasonrank.types import Candidate, Query, Request

    renderer = PromptRenderer(None, max_passage_tokens=16)
    requests = [Request(Query(f"q{j}", f"query {j}"), [Candidate(str(i), 0, f"doc {j}-{i}") for i in range(7 + j)])
                for j in range(4)]
    sequential = [ListwiseReranker(ReverseBackend(), renderer, window=4, step=2).rerank_batch([r])[0].docids for r in requests]
    inner = ReverseBackend(delay=0.05)
    batcher = BatchingBackend(inner, max_batch=8, max_wait=0.02)
    try:
        threads = [_in_thread(lambda r: ListwiseReranker(batcher.client(), renderer, window=4, step=2).rerank_batch([r])[0].docids, r)
                   for r in requests]
        for t, _ in threads:
            t.join(20)
        assert [box["value"] for _, box in threads] == sequential
        from reasonrank.windows import window_schedule

        assert sum(inner.calls) == sum(len(window_schedule(len(r.candidates), 4, 2)) for r in requests)  # every window once ...
        assert len(inner.calls) < sum(inner.calls)  # ... in fewer backend calls than windows
    finally:
        batcher.close()


class ServerLikeBackend(ReverseBackend):
    """Test double of an HTTP engine: can send text or chat messages, keeps stats, set to send text."""

    capabilities = Capabilities(batch_size=3, prompt_formats=("text", "messages"), logprobs=True, concurrency=4, stats=True)

    def __init__(self):
        super().__init__()
        self.prompt_format = "text"
        self.stats = {"requests": 7, "dropped_fields": {"http://x/v1": ["seed"]}}
        self.fingerprints = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def fingerprint(self) -> dict:
        self.fingerprints += 1
        return {"backend": "server-like", "model": self.model, "revision": "r1"}


def test_a_client_is_the_engine_to_its_reranker(qwen_tokenizer, caplog):
    """What a reranker reads of its backend is the engine's through the batcher: capabilities (but any batch
    size: the batcher gathers), prompt format, fingerprint (computed once), stats; close() leaves the engine
    alone. So a reranker built on a client under an HTTP engine sending text warns of no chat messages (it
    did for every request under `serve -b openai`) and reports the engine's dropped fields."""
    from reasonrank.prompts import PromptRenderer
    from reasonrank.spec import RerankerSpec, build
    from reasonrank.types import Candidate

    engine = ServerLikeBackend()
    batcher = BatchingBackend(engine, max_batch=8, max_wait=0.0)
    try:
        client = batcher.client()
        assert client.capabilities == Capabilities(batch_size=None, prompt_formats=("text", "messages"), logprobs=True,
                                                   concurrency=4, stats=True)
        assert client.prompt_format == "text" and client.stats is engine.stats
        assert client.fingerprint() == batcher.client().fingerprint() == engine.fingerprint() and engine.fingerprints == 2
        renderer = PromptRenderer(qwen_tokenizer, max_passage_tokens=16)
        with caplog.at_level("WARNING"):
            reranker = build(RerankerSpec(window=4, step=2, max_new_tokens=8), backend=client, renderer=renderer)
            result = reranker.rerank("q", [Candidate(str(i), 0.0, f"doc {i}") for i in range(3)])
        assert "chat messages" not in caplog.text
        assert reranker.stats.prompt_format == "text" and result.docids == ["2", "1", "0"]
        assert reranker.stats.to_dict()["dropped_fields"] == {"http://x/v1": ["seed"]}
        assert reranker.journal.engine["revision"] == "r1"  # keyed by the engine's own identity
        client.close()
        assert not engine.closed  # the engine is the service's
    finally:
        batcher.close()


# -- request validation (the HTTP status codes are checked against the real server in test_serving.py)


LIMITS = Limits(max_documents=3, max_document_chars=10, max_query_chars=20)
NAMES = ["served", "alias"]


def _parse(body, version=1):
    return parse_request(body, version, LIMITS, NAMES, "served")


def test_parse_request_accepts_cohere_shapes():
    req = _parse({"query": "q", "documents": ["a", {"text": "b", "id": "x"}], "top_n": 5, "return_documents": True,
                  "max_chunks_per_doc": 3})
    assert (req.model, req.texts, req.top_n, req.return_documents, req.ignored) == ("served", ["a", "b"], 2, True, ["max_chunks_per_doc"])
    req = _parse({"model": "ALIAS", "query": "q", "documents": [{"t": "T", "b": "B"}], "rank_fields": ["t", "b"]}, 2)
    assert req.texts == ["t: T\nb: B"]


@pytest.mark.parametrize("body,status,message", [
    ({"documents": ["a"]}, 400, "'query' is required"),
    ({"query": "", "documents": ["a"]}, 400, "'query' must not be empty"),
    ({"query": "q", "documents": []}, 400, "'documents' must not be empty"),
    ({"query": "q", "documents": ["a"] * 4}, 400, "4 documents sent; the limit is 3"),
    ({"query": "q", "documents": ["a" * 11]}, 400, "documents[0] is 11 characters; the limit is 10"),
    ({"query": "q", "documents": [3]}, 400, "documents[0] must be a string or an object"),
    ({"query": "q", "documents": ["a", {"text": " "}]}, 400, "documents[1] has no text"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, 400, "'top_n' must be at least 1"),
    ({"query": "q", "documents": ["a"], "model": "other"}, 404, "model 'other' not found"),
])
def test_parse_request_errors(body, status, message):
    with pytest.raises(ApiError) as err:
        _parse(body)
    assert err.value.status == status and message in err.value.message


def test_relevance_score_is_monotone_in_rank():
    scores = [relevance_score(r) for r in range(100)]
    assert scores[0] == 1.0 and all(0 < b < a <= 1 for a, b in itertools.pairwise(scores))


def test_api_keys_from_file_or_env(tmp_path, monkeypatch):
    keyfile = tmp_path / "keys"
    keyfile.write_text("k1\n\n k2 \n")
    assert read_api_keys(keyfile) == ["k1", "k2"]
    monkeypatch.setenv("RR_TEST_KEY", " secret ")
    assert read_api_keys(None, "RR_TEST_KEY") == ["secret"]
    monkeypatch.delenv("RR_TEST_KEY")
    assert read_api_keys(None, "RR_TEST_KEY") == []


def test_model_names_include_registry_aliases():
    served, names = model_names(ServeConfig(aliases=["Rerank-v3.5"]))
    assert served == "qwen2.5-coder-0.5b"
    assert {"qwen2.5-coder-0.5b", "default", "embedded", "rerank-v3.5"} <= set(names)
    # a reranker factory's model: named after the backend's model, not the registry default
    served, names = model_names(ServeConfig(), "/models/my-reranker", registry=False)
    assert served == "my-reranker" and "default" not in names
    # a factory's spec names its model: that one's names
    served, names = model_names(ServeConfig(), "/x/model.gguf", registry=False, model="reasonrank-7b")
    assert served == "reasonrank-7b" and "model.gguf" in names


def test_config_holds_a_spec_and_refuses_what_a_service_cannot_do():
    from reasonrank.errors import ReasonRankError
    from reasonrank.spec import RerankerSpec

    config = ServeConfig(RerankerSpec(model="reasonrank-7b", method="tdpart", window=10))
    assert config.model == "reasonrank-7b" and config.spec.method == "tdpart"
    with pytest.raises(ReasonRankError, match="keeps no journal"):
        ServeConfig(RerankerSpec(journal="x.jsonl"))
    with pytest.raises(ReasonRankError, match="listwise methods"):
        ServeConfig(RerankerSpec(method="pointwise"))
    with pytest.raises(ReasonRankError, match="max_batch must be a positive integer"):
        ServeConfig(max_batch=0)
