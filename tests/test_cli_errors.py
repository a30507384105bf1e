"""Wrong invocations through the real `reasonrank` command: each exits 2 with one line (or click's
usage block), never a traceback. No model loads: every case fails before one would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasonrank.backends import factory, models
from reasonrank.errors import ReasonRankError

EXE = Path(sys.executable).with_name("reasonrank")
COMMAND = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "reasonrank.cli"]
TRACEBACK_MARKS = ("Traceback", "╭", "│", "╰")  # Python's traceback, or the box rich draws around typer's


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A three-document BEIR collection, a run over it, a malformed run."""
    root = tmp_path_factory.mktemp("cli-errors")
    coll = root / "tiny"
    (coll / "qrels").mkdir(parents=True)
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"text {i}"}) + "\n"
                                               for i in range(3)))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    (coll / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (root / "run.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {3 - i} bm25\n" for i in range(3)))
    (root / "bad.trec").write_text("q1 Q0 d0 1\n")
    (root / "other.trec").write_text("q9 Q0 d0 1 1.0 bm25\n")
    return root


def _cases(f: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, text the error must contain)."""
    coll, run, out = str(f / "tiny"), str(f / "run.trec"), str(f / "out.trec")
    rerank = ["rerank", "-c", coll, "-r", run, "-o", out]
    return {
        "unknown option": ([*rerank, "--bogus"], "No such option: --bogus"),
        "unknown command": (["bogus"], "No such command 'bogus'"),
        "missing required option": (["rerank", "-c", coll, "-o", out], "Missing option '--run'"),
        "train tiny-model wrong option": (["train", "tiny-model", "-o", str(f / "m"), "--wrong"], "No such option: --wrong"),
        "unknown backend": ([*rerank, "-b", "tensorrt"], "unknown backend 'tensorrt'"),
        "missing model, hf": ([*rerank, "-b", "hf", "-m", str(f / "no_such_model")], "not a local directory or file"),
        "missing model name, hf": ([*rerank, "-b", "hf", "-m", "some_missing_dir"], "not a model name in the registry"),
        "uncached hub id, hf": ([*rerank, "-b", "hf", "-m", "nobody/no-such-model"], "not a hub id in the local cache"),
        "missing run file": (["rerank", "-c", coll, "-r", str(f / "none.trec"), "-o", out], "none.trec"),
        "missing collection": (["rerank", "-c", str(f / "nowhere"), "-r", run, "-o", out], "nowhere"),
        "malformed run file": (["rerank", "-c", coll, "-r", str(f / "bad.trec"), "-o", out], "bad.trec:1"),
        "evaluate without qrels": (["evaluate", run], "give --collection or --qrels"),
        "top-k not a number": ([*rerank, "--top-k", "abc"], "Invalid value for '--top-k'"),
        "unknown prompt mode": ([*rerank, "--mode", "bogus"], "unknown prompt mode 'bogus'"),
        "run of another collection": (["rerank", "-c", coll, "-r", str(f / "other.trec"), "-o", out], "unknown query ids"),
    }


CASE_NAMES = list(_cases(Path("x")))


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}  # 80 columns: long errors must not wrap
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=120)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_wrong_invocation_exits_2_with_one_clear_line(name, files):
    args, expected = _cases(files)[name]
    proc = _run(args, files)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert not any(mark in output for mark in TRACEBACK_MARKS), output
    assert expected in output, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if lines[0].startswith("Usage: "):  # click's block: usage, the --help hint, the error
        assert lines[1].startswith("Try '") and lines[-1].startswith("Error: ") and len(lines) == 3, output
    else:
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], output
        assert expected in lines[-1], output


def test_missing_model_message_names_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReasonRankError) as err:
        factory.resolve_model("vllm", "owner/not-cached")
    assert str(err.value) == ("owner/not-cached: not a local directory or file, not a model name in the registry "
                              "(reasonrank model list), and not a hub id in the local cache (hub unreachable: "
                              "HF_HUB_OFFLINE is set)")
    with pytest.raises(ReasonRankError, match=r"reasonrank-7b: its hub model liuwenhan/reasonrank-7B is not in the local"):
        factory.resolve_model("hf", "reasonrank-7b")
    assert factory.resolve_model("hf", str(tmp_path)) == str(tmp_path)  # a local path: the engine judges it


def test_training_says_the_same(monkeypatch):
    pytest.importorskip("transformers")
    from reasonrank.training.models import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReasonRankError, match=r"^some_missing_dir: not a local directory or file, not a model name"):
        resolve_model("some_missing_dir")


def test_a_failed_hub_load_is_worded_like_the_offline_check(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(target, **options):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    with pytest.raises(ReasonRankError, match=r"not a hub id in the local cache \(hub unreachable: We couldn't connect"):
        factory._load(unreachable, "owner/not-cached", "owner/not-cached", {})
    assert models.hub_load_failed("./here", ".", OSError("x")) is None  # a local directory's error is its own


def test_missing_extra_from_a_bare_import():
    from reasonrank.cli import _exit_code

    assert _exit_code(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")) == 2
    assert _exit_code(ModuleNotFoundError("No module named 'nothing_we_know'", name="nothing_we_know")) is None
    assert _exit_code(RuntimeError("a bug")) is None  # bugs keep their traceback
