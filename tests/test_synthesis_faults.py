"""Synthesis against a real, misbehaving OpenAI-compatible HTTP server on 127.0.0.1 (stdlib
http.server, random port): 500s, a request that hangs past the client timeout, a truncated body, a
garbled permutation, a request that always fails, a query with no relevant passage, and answers with
`reasoning_content` as well as inline `<think>`. The run must finish, count its retries, record each
failed sample with its reason, and on a rerun resume without sending any request that once succeeded.
The `reasonrank synth` commands run against the same kind of server at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from reasonrank.synthesis import SourceSpec, SynthesisConfig, Teacher, TeacherConfig, run_all, run_label
from reasonrank.synthesis.store import StageFile
from servers import LoopbackHTTPServer

TOPICS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf")
SECRET = "sk-test-0123456789-do-not-log"


class FaultTeacher(LoopbackHTTPServer):
    """OpenAI-compatible chat endpoint whose behaviour is chosen by the topic word in the query:

    alpha    answers with `reasoning_content` (DeepSeek/vLLM style) and a tagged answer
    bravo    ranking request: HTTP 500 on the first try
    charlie  mining request: hangs past the client timeout on the first try
    delta    ranking request: truncated body (Content-Length larger than what is sent) on the first try
    echo     ranking request: a garbled answer without any passage id, every time
    foxtrot  ranking request: HTTP 500 every time
    golf     mining request: "none" (no relevant passage)

    Mining answers list the passages whose text says RELEVANT; ranking answers put them first.
    """

    def __init__(self, hang_s: float = 2.5):
        self.hits: Counter = Counter()  # request (messages) hash -> attempts received
        self.answered: Counter = Counter()  # request hash -> complete 200 answers sent
        self.what: dict[str, tuple[str, str]] = {}  # request hash -> (mine|label, topic)
        self.auth: Counter = Counter()
        self.hang_s = hang_s
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.auth[self.headers.get("Authorization", "")] += 1
                outer.handle(self, json.loads(body))

        super().__init__(Handler)

    @staticmethod
    def key(messages) -> str:
        return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()

    def keys_for(self, kind: str, topic: str) -> list[str]:
        return [k for k, v in self.what.items() if v == (kind, topic)]

    def handle(self, h, req: dict) -> None:
        messages = req["messages"]
        key = self.key(messages)
        system, user = messages[0]["content"], messages[-1]["content"]
        kind = "mine" if "relevance assessor" in system else "label"
        query = re.search(r"(?i)search query: (.*?)\.?\n", user).group(1)
        topic = next(t for t in TOPICS if t in query)
        with self.lock:
            self.hits[key] += 1
            n = self.hits[key]
            self.what[key] = (kind, topic)
        passages = re.findall(r"^\[(\d+)\] (.*)$", user, re.M)
        relevant = [int(i) for i, text in passages if "RELEVANT" in text]
        if kind == "mine":
            if topic == "charlie" and n == 1:
                time.sleep(self.hang_s)  # the client has given up by now
                return self._send(h, 200, {"late": True})
            ids = "none" if topic == "golf" else ", ".join(f"[{i}]" for i in relevant)
            return self._answer(h, key, f"<think>passages saying RELEVANT help</think><answer>{ids}</answer>")
        if topic == "bravo" and n == 1:
            return self._send(h, 500, {"error": {"message": "overloaded"}})
        if topic == "foxtrot":
            return self._send(h, 500, {"error": {"message": "always down"}})
        if topic == "delta" and n == 1:
            return self._truncated(h)
        if topic == "echo":
            return self._answer(h, key, "<think>Hmm.</think><answer>I cannot rank these passages.</answer>")
        order = relevant[::-1] + [int(i) for i, _ in passages if int(i) not in relevant][::-1]
        answer = " > ".join(f"[{i}]" for i in order)
        if topic == "alpha":
            return self._answer(h, key, f"<answer>{answer}</answer>", reasoning="relevant passages first")
        return self._answer(h, key, f"<think>relevant passages first</think>\n<answer>{answer}</answer>")

    def _answer(self, h, key, content, reasoning=None):
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if self._send(h, 200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 100, "completion_tokens": 20}}):
            with self.lock:
                self.answered[key] += 1

    @staticmethod
    def _send(h, status, obj) -> bool:
        data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return True
        except OSError:
            return False

    @staticmethod
    def _truncated(h):
        data = json.dumps({"choices": [{"message": {"content": "x" * 200}}]}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data) + 100))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def write_corpus(root):
    docs, queries = [], []
    for t in TOPICS:
        for i in range(3):
            docs.append({"_id": f"{t}-r{i}", "title": f"{t} study {i}", "text": f"{t} {t} RELEVANT evidence number {i} on {t}"})
        for i in range(4):
            docs.append({"_id": f"{t}-n{i}", "text": f"{t} background note {i}"})
        queries.append({"id": f"q-{t}", "query": f"what is known about {t}?", "answer": f"{t} is known" if t == "alpha" else None})
    for i in range(20):
        docs.append({"_id": f"filler{i}", "text": f"unrelated filler text {i}"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root / "queries.jsonl", root / "corpus.jsonl"


CONFIG = SynthesisConfig(k=10, mine_depth=8, window=6, mine_max_tokens=64, label_max_tokens=64)


def teacher_config(url: str) -> TeacherConfig:
    return TeacherConfig(model="fault-teacher", base_urls=[url], api_key_env="SYNTH_TEST_KEY", concurrency=4,
                         max_retries=2, timeout=1.0, temperature=0.0, backoff_base_s=0.01, backoff_max_s=0.05)


def test_faults_are_retried_recorded_and_resumed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SYNTH_TEST_KEY", SECRET)
    queries, corpus = write_corpus(tmp_path)
    spec = SourceSpec("faulty", str(queries), corpus=str(corpus))
    run = tmp_path / "run"
    with FaultTeacher() as server:
        caplog.set_level("DEBUG")
        teacher = Teacher.for_run(teacher_config(server.base_url), run)
        started = time.perf_counter()
        summary = run_all(run, [spec], teacher, CONFIG, bm25_cache=tmp_path / "bm25")
        assert time.perf_counter() - started < 60

        # every HTTP attempt reached the server and was counted, retries included
        assert teacher.stats.http_requests == sum(server.hits.values()) == 18
        assert summary["teacher"]["mine"]["retries"] == 1  # charlie's hang
        assert summary["teacher"]["label"]["retries"] == 4  # bravo 500, delta truncated, foxtrot 500 x2
        assert summary["teacher"]["label"]["failures"] == 1
        assert server.auth == Counter({f"Bearer {SECRET}": 18})  # the key from the environment was sent ...
        dom = summary["domains"]["faulty"]
        assert dom["mined"] == {"ok": 6, "no_positive": 1}
        assert dom["labelled"] == {"ok": 4, "parse_failed": 1, "failed": 1, "skipped": 1}
        assert dom["label_parse_failure_rate"] == pytest.approx(0.2)  # 1 unreadable of 5 answers
        assert dom["before_filter"] == 4 and dom["after_filter"] == 4
        assert summary["totals"]["after_filter"] == 4
        assert summary["tokens"] == {"prompt": 1200, "completion": 240, "cost": 0.0}  # 12 answered x (100, 20)
        assert set(summary["seconds"]) >= {"sources", "candidates", "mine", "label", "filter", "export"}

        labels = StageFile(run / "labels.jsonl").load()
        reasons = {rid.split("-")[-1]: (r["status"], r.get("reason", "")) for rid, r in labels.items()}
        assert reasons["echo"][0] == "parse_failed" and "no passage identifier" in reasons["echo"][1]
        assert reasons["foxtrot"][0] == "failed" and "HTTP 500" in reasons["foxtrot"][1] and "3 attempt" in reasons["foxtrot"][1]
        assert reasons["golf"] == ("skipped", "no positive passage mined")
        for t in ("alpha", "bravo", "charlie", "delta"):
            assert reasons[t] == ("ok", "")
        alpha = labels["faulty/q-alpha"]
        assert alpha["reasoning"] == "relevant passages first"  # from reasoning_content
        assert labels["faulty/q-bravo"]["reasoning"] == "relevant passages first"  # from inline <think>
        assert alpha["final_list"][:3] == sorted(alpha["relevant_docids"], key=alpha["final_list"].index)
        assert (run / "export" / "sft.jsonl").read_text().count("\n") == 4

        # rerun: nothing that once succeeded is sent again; the failed request is retried in full
        first = Counter(server.hits)
        teacher2 = Teacher.for_run(teacher_config(server.base_url), run)
        summary2 = run_all(run, [], teacher2, CONFIG, bm25_cache=tmp_path / "bm25")
        new = server.hits - first
        foxtrot = server.keys_for("label", "foxtrot")
        assert set(new) == set(foxtrot) and new[foxtrot[0]] == 3
        assert not any(server.hits[k] > first[k] for k in server.answered)
        assert teacher2.stats.cache_hits == 1 and teacher2.stats.sent == 1  # echo re-read from the cache; foxtrot sent
        assert summary2["domains"]["faulty"]["labelled"] == dom["labelled"]
        assert summary2["teacher"]["label"]["retries"] == 6  # accumulated over both invocations

        # a stage record lost in a crash is redone from the cache, with no request
        kept = {k: v for k, v in StageFile(run / "labels.jsonl").load().items() if k != "faulty/q-delta"}
        StageFile(run / "labels.jsonl").rewrite(kept.values())
        with open(run / "labels.jsonl", "a") as fh:
            fh.write('{"id": "faulty/q-delta", "status": "o')
        before = Counter(server.hits)
        teacher3 = Teacher.for_run(teacher_config(server.base_url), run)
        run_label(run, teacher3, window=6, max_new_tokens=64)
        assert (server.hits - before).keys() == set(foxtrot)
        assert StageFile(run / "labels.jsonl").load()["faulty/q-delta"]["status"] == "ok"

    # ... and never written anywhere: not in the run directory, not in the logs
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_cli_commands_against_a_server(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from reasonrank.synthesis.commands import app

    monkeypatch.setenv("SYNTH_TEST_KEY", SECRET)
    queries, corpus = write_corpus(tmp_path)
    run = tmp_path / "cli-run"
    runner = CliRunner()
    teacher_opts = ["--model", "fault-teacher", "--api-key-env", "SYNTH_TEST_KEY", "--timeout", "1", "--max-retries", "2",
                    "--temperature", "0", "--concurrency", "4", "--price-prompt", "0.55", "--price-completion", "2.19"]
    with FaultTeacher() as server:
        teacher_opts += ["--base-url", server.base_url]
        steps = [
            ["sources", "--run", str(run), "--source", f"faulty={queries}", "--corpus", f"faulty={corpus}", "--limit", "4"],
            ["candidates", "--run", str(run), "-k", "10", "--bm25-cache", str(tmp_path / "bm25")],
            ["mine", "--run", str(run), "--depth", "8", "--max-tokens", "64", *teacher_opts],
            ["label", "--run", str(run), "--window", "6", "--max-tokens", "64", *teacher_opts],
            ["filter", "--run", str(run), "--alpha", "0.4"],
            ["export", "--run", str(run)],
            ["summary", "--run", str(run)],
        ]
        outputs = []
        for args in steps:
            result = runner.invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, (args, result.output)
            outputs.append(result.stdout)
        # alpha..delta: 4 mining + 4 ranking requests, plus retries after charlie's hang, bravo's 500, delta's truncation
        assert sum(server.hits.values()) == 4 + 4 + 3
        # the whole pipeline in one command, on a fresh run directory
        result = runner.invoke(app, ["run", "--run", str(tmp_path / "cli-run-all"), "--source", f"faulty={queries}",
                                     "--corpus", f"faulty={corpus}", "--limit", "2", "-k", "10", "--depth", "8",
                                     "--window", "6", "--mine-max-tokens", "64", "--max-tokens", "64",
                                     "--bm25-cache", str(tmp_path / "bm25"), *teacher_opts], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    summary = json.loads(outputs[-1])
    assert summary["domains"]["faulty"]["before_filter"] == 4 and summary["domains"]["faulty"]["after_filter"] == 4
    # a running cost from per-million-token prices: 8 answered requests x (100 x 0.55 + 20 x 2.19) / 1e6
    assert summary["tokens"]["cost"] == pytest.approx(8 * (100 * 0.55 + 20 * 2.19) / 1e6)
    manifest = json.loads(outputs[5])
    assert manifest["samples"] == 4 and (run / "export" / "verl" / "train.parquet").exists()
    assert json.loads(result.stdout)["totals"]["after_filter"] == 2
    assert SECRET not in "".join(outputs) + result.output
