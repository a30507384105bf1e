"""The journal cannot give a wrong answer: a run killed for certain mid-run resumes exactly (answers that are
not the input order), failed windows are retried once the server is back (a real llama.cpp server on
loopback), and a journal written under another engine is refused (real engines)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _data import SCIFACT, needs_data, scifact_bm25_run
from servers import TEST_THREADS, ReverseServer, embedded_gguf, free_port, llama_cpp_server

from reasonrank.io import read_run

pytestmark = [needs_data]


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """BM25 top-30 of 2 SciFact test queries."""
    return scifact_bm25_run(tmp_path_factory.mktemp("run"), queries=2, k=30)


def rerank(first_stage, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(SCIFACT), "--run", str(first_stage),
                             "-o", str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, code: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == code, err
    return out, err


def window_lines(journal: Path) -> int:
    """Windows written so far (the header line not counted)."""
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


# (method, options, windows answered before the stand-in server holds every later request)
CASES = [("sliding", ["--window", "10", "--step", "5"], 4), ("tdpart", ["--window", "10", "--pivot", "5"], 2)]


@pytest.mark.parametrize("method,options,answered", CASES, ids=[c[0] for c in CASES])
def test_a_run_killed_for_certain_mid_run_resumes_exactly(first_stage, tmp_path, method, options, answered):
    common = ["-b", "openai", "-m", "reverse-test-double", "--top-k", "30", "--method", method, *options]
    with ReverseServer() as server:
        finish(rerank(first_stage, tmp_path / "full.trec", "--base-url", server.base_url, "--traces", str(tmp_path / "full.jsonl"), *common))
        total = server.served
    full = read_run(tmp_path / "full.trec")
    bm25 = read_run(first_stage)
    assert all(list(full[q])[:10] != list(bm25[q])[:10] for q in full)  # the answers moved passages

    journal, out = tmp_path / "killed.jsonl", tmp_path / "resumed.trec"
    with ReverseServer(hold_after=answered) as held:
        proc = rerank(first_stage, out, "--base-url", held.base_url, "--traces", str(journal), *common)
        deadline = time.monotonic() + 300
        while window_lines(journal) < answered and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]  # mid-run for certain: its next requests are held
        assert window_lines(journal) == answered and not out.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with ReverseServer() as server:
        _, err = finish(rerank(first_stage, out, "--base-url", server.base_url, "--traces", str(journal), *common))
        assert server.served == total - answered  # only the windows the journal lacked
    assert f"({answered} resumed" in err
    assert read_run(out) == full


@pytest.mark.model
@pytest.mark.skipif(embedded_gguf() is None, reason="embedded model not assembled")
def test_failed_windows_are_retried_when_the_server_is_back_and_another_engine_is_refused(first_stage, tmp_path):
    port = free_port()
    journal = tmp_path / "traces.jsonl"
    # the registry name: the embedded GGUF's tokenizer renders the exact prompt sent to /completions
    common = ["--top-k", "10", "-n", "2", "--max-new-tokens", "16", "--max-passage-tokens", "40", "--traces", str(journal)]
    http = ["-b", "openai", "-m", "qwen2.5-coder-0.5b", "--base-url", f"http://127.0.0.1:{port}/v1", "--backend-option", "max_retries=1",
            "--backend-option", "backoff_base_s=0.1"]
    _, err = finish(rerank(first_stage, tmp_path / "down.trec", *http, *common), code=1)
    assert "2 of 2 windows failed" in " ".join(err.split())
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert [r["status"] for r in rows] == ["backend_error", "backend_error"]

    with llama_cpp_server(embedded_gguf(), port=port, alias="qwen2.5-coder-0.5b"):
        _, err = finish(rerank(first_stage, tmp_path / "up.trec", *http, *common))
    summary = " ".join(err.split())
    assert "windows 2 (0 resumed from the trace journal, 2 failed before and retried)" in summary
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert len(rows) == 4 and all(r["status"] != "backend_error" for r in rows[2:])

    # the same journal under the in-process engine: refused, naming what differs, before any window runs
    local = ["-b", "llamacpp", "--threads", str(TEST_THREADS)]
    _, err = finish(rerank(first_stage, tmp_path / "local.trec", *local, *common), code=2)
    assert "written under another engine or settings (backend: openai -> llamacpp" in " ".join(err.split())
    # opted in: the answers the server gave are reused, no window runs
    _, err = finish(rerank(first_stage, tmp_path / "local.trec", *local, *common, "--journal-policy", "reuse"))
    assert "windows 2 (2 resumed" in " ".join(err.split())
    assert read_run(tmp_path / "local.trec") == read_run(tmp_path / "up.trec")
