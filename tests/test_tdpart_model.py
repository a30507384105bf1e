"""Top-down partitioning end to end on the real embedded model (llama.cpp) through the CLI: a full run,
then a run killed midway and resumed from its journal gives the same output."""

import json

import pytest
from _data import needs_data
from conftest import qwen_gguf_path
from test_rerank_model import ARGS, cli, first_stage, kill_once_journaled  # noqa: F401 (first_stage is a fixture)

from reasonrank.io import read_run

pytestmark = [pytest.mark.model, needs_data, pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled")]


def test_tdpart_cli_then_kill_and_resume_gives_identical_output(first_stage, tmp_path):  # noqa: F811
    method = ["--method", "tdpart"]
    full = cli("--run", str(first_stage), "-o", str(tmp_path / "full.trec"), "--traces", str(tmp_path / "full.jsonl"), *ARGS, *method)
    out, err = full.communicate(timeout=900)
    assert full.returncode == 0, err
    assert "reranked" in out and "nDCG@10" in out and "(0 resumed" in err
    rows = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()[1:]]
    # 2 queries of 6, window 4, pivot at rank 2: a first window and a partition window each, more if a
    # partition's candidate beat the pivot
    assert len(rows) >= 4 and {r["method"] for r in rows} == {"tdpart"}
    assert [r["role"] for r in rows[:4]] == ["first", "first", "partition", "partition"]
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)

    journal = tmp_path / "killed.jsonl"
    proc = cli("--run", str(first_stage), "-o", str(tmp_path / "resumed.trec"), "--traces", str(journal), *ARGS, *method)
    kill_once_journaled(proc, journal, tmp_path / "resumed.trec")
    done = len(journal.read_text().splitlines()) - 1
    assert 2 <= done < len(rows)
    resumed = cli("--run", str(first_stage), "-o", str(tmp_path / "resumed.trec"), "--traces", str(journal), *ARGS, *method)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert f"({done} resumed" in err
    assert read_run(tmp_path / "resumed.trec") == read_run(tmp_path / "full.trec")
