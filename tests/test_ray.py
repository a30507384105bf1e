"""Reranking on a real local Ray cluster (one head for the session: conftest's `ray_cluster`) with the
embedded model: 2 replicas give the output and journal of one process; a replica killed mid-run changes
nothing; a driver killed mid-run resumes exactly the journaled windows and leaves no process behind;
every replica dead stops the run with one clear error and the journal intact.

Every run is `reasonrank rerank` in a subprocess (a driver as users start it), at 1 llama.cpp thread a
replica and in the single process, on BM25 top-10 of 3 SciFact queries in windows of 5 (9 windows)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _data import SCIFACT, needs_data, scifact_bm25_run

from reasonrank.io import read_run

pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = [needs_data, pytest.mark.model]

JOB = ["--top-k", "10", "--window", "5", "--step", "3", "--max-new-tokens", "16", "--max-passage-tokens", "64", "--threads", "1"]
WINDOWS = 9  # 3 queries x windows (5,10), (2,7), (0,5)
TIMING = ("seconds", "forced_seconds")  # the only fields that may differ between two runs of the same windows


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    return scifact_bm25_run(tmp_path_factory.mktemp("run"), queries=3, k=10)


def rerank(first_stage, out: Path, journal: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reasonrank.cli", "rerank", "-c", str(SCIFACT), "--run", str(first_stage),
                             "-o", str(out), "--traces", str(journal), *JOB, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == code, err[-3000:]
    return err


def records(journal: Path) -> tuple[dict, dict[str, dict]]:
    """(header, window records by key without their timings)."""
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    return rows[0], {r["prompt_hash"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows[1:]}


def windows_in(journal: Path) -> int:
    return max(0, len(journal.read_text().splitlines()) - 1) if journal.exists() else 0


def wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def single(first_stage, tmp_path_factory):
    """The job in one process at 1 thread: (output run, journal)."""
    tmp = tmp_path_factory.mktemp("single")
    finish(rerank(first_stage, tmp / "out.trec", tmp / "journal.jsonl"))
    bm25, out = read_run(first_stage), read_run(tmp / "out.trec")
    assert any(list(out[q]) != list(bm25[q]) for q in out)  # the model's answers moved passages: a real comparison
    return tmp / "out.trec", tmp / "journal.jsonl"


def test_two_replicas_give_the_output_and_journal_of_one_process(ray_cluster, single, first_stage, tmp_path):
    err = finish(rerank(first_stage, tmp_path / "out.trec", tmp_path / "journal.jsonl", "--ray", ray_cluster.address, "--replicas", "2"))
    assert (tmp_path / "out.trec").read_bytes() == single[0].read_bytes()
    assert records(tmp_path / "journal.jsonl") == records(single[1])  # the same engine header, the same windows
    assert "windows 9 (0 resumed" in err and "Ray replicas" not in err


def test_a_replica_killed_mid_run_changes_nothing(ray_cluster, single, first_stage, tmp_path):
    journal = tmp_path / "journal.jsonl"
    proc = rerank(first_stage, tmp_path / "out.trec", journal, "--ray", ray_cluster.address, "--replicas", "2")
    wait_for(lambda: windows_in(journal) >= 1 and len(ray_cluster.replica_pids()) == 2, proc, "first window")
    victim = ray_cluster.replica_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert windows_in(journal) < WINDOWS  # mid-run: killed while windows were left
    err = finish(proc)
    assert victim not in ray_cluster.replica_pids()
    assert (tmp_path / "out.trec").read_bytes() == single[0].read_bytes()
    assert records(journal) == records(single[1])
    assert "windows 9 (0 resumed" in err


def test_a_killed_driver_leaves_no_process_and_its_rerun_resumes_exactly(ray_cluster, single, first_stage, tmp_path):
    journal, out = tmp_path / "journal.jsonl", tmp_path / "out.trec"
    proc = rerank(first_stage, out, journal, "--ray", ray_cluster.address, "--replicas", "2")
    wait_for(lambda: windows_in(journal) >= 3, proc, "third window")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = windows_in(journal)  # the driver is dead: nothing more can be journaled
    assert 3 <= done < WINDOWS and not out.exists()
    deadline = time.monotonic() + 120
    while ray_cluster.replica_pids() and time.monotonic() < deadline:  # Ray ends a dead driver's actors
        time.sleep(0.2)
    assert ray_cluster.replica_pids() == []
    err = finish(rerank(first_stage, out, journal, "--ray", ray_cluster.address, "--replicas", "2"))
    assert f"windows 9 ({done} resumed" in err
    assert out.read_bytes() == single[0].read_bytes()
    assert records(journal) == records(single[1])


def test_a_killed_driver_that_started_its_own_cluster_leaves_nothing_running(first_stage, tmp_path):
    """`--ray local`: the cluster the driver started goes with it (the guard process), where Ray alone
    would leave its agents running."""
    import psutil

    journal = tmp_path / "journal.jsonl"
    proc = rerank(first_stage, tmp_path / "out.trec", journal, "--ray", "local", "--replicas", "1")
    wait_for(lambda: windows_in(journal) >= 1, proc, "first window")
    started = [(p.pid, p.create_time()) for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(started) >= 4  # gcs, raylet, agents, the replica, the guard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p for p in started if _alive(*p)]:
        time.sleep(0.2)
    left = [psutil.Process(pid).cmdline()[:1] for pid, t in started if _alive(pid, t)]
    assert left == []


def _alive(pid: int, created: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_every_replica_dead_stops_the_run_with_one_clear_error_and_the_journal_intact(ray_cluster, first_stage, tmp_path):
    journal = tmp_path / "journal.jsonl"
    proc = rerank(first_stage, tmp_path / "out.trec", journal, "--ray", ray_cluster.address, "--replicas", "2")
    wait_for(lambda: windows_in(journal) >= 1, proc, "first window")
    killed = 0
    while proc.poll() is None:  # kill every replica, and every restart of one, until Ray gives up on them
        for pid in ray_cluster.replica_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.1)
    err = finish(proc, code=2)  # the CLI's exit code for an error it explains
    assert "all 2 replicas died and none could restart" in err
    assert "Traceback" not in err
    assert killed >= 2 * 3  # each replica and its 2 restarts
    assert not (tmp_path / "out.trec").exists()
    rows = [json.loads(line) for line in journal.read_text().splitlines()]  # every line whole
    assert "reasonrank_journal" in rows[0] and len(rows) - 1 < WINDOWS


def test_ray_settings_are_spec_fields_checked_once():
    from reasonrank.errors import ConfigError
    from reasonrank.spec import RerankerSpec

    spec = RerankerSpec(ray="auto", replicas=2, gpus_per_replica=0.5, cpus_per_replica=1)
    assert RerankerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="replicas: settings of a Ray run; give --ray too"):
        RerankerSpec(replicas=2)
    with pytest.raises(ConfigError, match="replicas must be an integer >= 1"):
        RerankerSpec(ray="local", replicas=0)
    with pytest.raises(ConfigError, match="tensor parallel: a whole number of GPUs"):
        RerankerSpec(ray="local", gpus_per_replica=1.5)


def test_ray_refuses_an_http_backend_with_one_line(tmp_path):
    from reasonrank.errors import ConfigError
    from reasonrank.spec import RerankerSpec, build

    with pytest.raises(ConfigError, match="pass several --base-url instead"):
        build(RerankerSpec(ray="local", backend="openai", model="m", backend_options={"base_urls": ["http://127.0.0.1:9/v1"]}))
