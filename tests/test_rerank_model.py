"""The listwise reranker end to end on the real embedded model (llama.cpp): CLI, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _data import SCIFACT, needs_data
from conftest import qwen_gguf_path

from reasonrank.io import load_collection, read_run, write_run
from reasonrank.retrieval import BM25Index

pytestmark = [pytest.mark.model, needs_data, pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled")]

ARGS = ["--top-k", "6", "--window", "4", "--max-new-tokens", "24", "--max-passage-tokens", "30", "--threads", "1"]
SLIDING = ["--step", "2"]


def kill_once_journaled(proc: subprocess.Popen, journal: Path, output: Path, windows: int = 2) -> None:
    """SIGKILL `proc` once its journal holds `windows` windows. It must still be running then (the test
    fails otherwise: a run that finished first proves nothing about resuming), and its output must not
    exist yet, since it is written only at the end. Windows left to run take seconds each on 1 thread."""
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) - 1 >= windows:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)  # frozen while we look: it cannot finish between the check and the kill
    assert proc.poll() is None, "the run finished before it could be killed"
    assert not output.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    coll = load_collection(SCIFACT)
    queries = list(coll.queries())[:2]
    path = tmp_path_factory.mktemp("run") / "bm25.trec"
    write_run(path, BM25Index.for_collection(coll, cache=path.parent).search(queries, k=6, show_progress=False))
    return path


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(SCIFACT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_rerank_cli_then_kill_and_resume_gives_identical_output(first_stage, tmp_path):
    full = cli("--run", str(first_stage), "-o", str(tmp_path / "full.trec"), "--traces", str(tmp_path / "full.jsonl"), *ARGS, *SLIDING)
    out, err = full.communicate(timeout=900)
    assert full.returncode == 0, err
    assert "first stage" in out and "reranked" in out and "nDCG@10" in out
    assert "windows 4 (0 resumed" in err and "parse status:" in err and "seconds/query" in err
    traces = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()[1:]]
    assert len(traces) == 4 and all(t["prompt_tokens"] > 0 and t["completion_tokens"] > 0 for t in traces)

    journal = tmp_path / "killed.jsonl"
    proc = cli("--run", str(first_stage), "-o", str(tmp_path / "resumed.trec"), "--traces", str(journal), *ARGS, *SLIDING)
    kill_once_journaled(proc, journal, tmp_path / "resumed.trec")
    done = len(journal.read_text().splitlines()) - 1
    assert 2 <= done < 4
    resumed = cli("--run", str(first_stage), "-o", str(tmp_path / "resumed.trec"), "--traces", str(journal), *ARGS, *SLIDING)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert f"({done} resumed" in err
    assert read_run(tmp_path / "resumed.trec") == read_run(tmp_path / "full.trec")
