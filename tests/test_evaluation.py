"""Measure names: the aliases `evaluate` accepts, several names of one measure, a name given twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reasonrank.errors import ReasonRankError
from reasonrank.evaluation import evaluate, format_table

QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 2}}
RUN = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d1": 2.0, "d2": 1.0}}


def test_names_of_one_measure_are_each_reported():
    # MAP is AP, Recall@2 is R@2, MRR@10 is RR@10: computed once, reported under every name asked for
    names = ["MAP", "AP", "Recall@2", "R@2", "MRR@10", "RR@10"]
    result = evaluate(RUN, QRELS, names)
    assert result.measures == names
    for a, b in (("MAP", "AP"), ("Recall@2", "R@2"), ("MRR@10", "RR@10")):
        assert result.aggregate[a] == result.aggregate[b]
        assert all(pq[a] == pq[b] for pq in result.per_query.values())
    assert result.aggregate["AP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    assert result.aggregate["RR@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert "MAP" in format_table({"run": result.aggregate}, result.measures)


def test_a_name_given_twice_is_one_column():
    result = evaluate(RUN, QRELS, ["nDCG@10", "MAP", "nDCG@10"])
    assert result.measures == ["nDCG@10", "MAP"] and list(result.aggregate) == ["nDCG@10", "MAP"]


def test_unknown_measure_is_one_error():
    with pytest.raises(ReasonRankError, match="unknown measure 'nDCG@x'"):
        evaluate(RUN, QRELS, ["nDCG@x"])


def test_cli_alias_pair_prints_both_columns(tmp_path):
    """`reasonrank evaluate -m MAP,AP` crashed with a KeyError traceback (issue 18)."""
    run, qrels = tmp_path / "run.trec", tmp_path / "qrels.txt"
    run.write_text("".join(f"{q} Q0 {d} {i + 1} {s} x\n" for q, docs in RUN.items() for i, (d, s) in enumerate(docs.items())))
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in QRELS.items() for d, g in docs.items()))
    exe = Path(sys.executable).with_name("reasonrank")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "reasonrank.cli"]
    done = subprocess.run([*command, "evaluate", str(run), "--qrels", str(qrels), "-m", "MAP,AP"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    header, _, row = done.stdout.strip().splitlines()
    assert header.split() == ["task", "MAP", "AP"]
    assert row.split()[1] == row.split()[2] == f"{evaluate(RUN, QRELS, ['AP']).aggregate['AP'] * 100:.2f}"
