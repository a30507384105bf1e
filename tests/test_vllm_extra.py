"""The `vllm` extra resolves together with every other extra under the lock (constraints.txt: transformers
5.24, torch 2.13, TRL 1.16, fastapi 0.136, numpy 2.3), so a conflict fails here rather than on a user's GPU.

Why the bound is `>=0.27,<0.31` (read from each release's METADATA): vLLM 0.22-0.26 pin torch==2.11;
0.27-0.30 pin torch==2.13 and ask transformers>=5.5.3 / >=5.10.4 with no cap; 0.31 caps
transformers<5.18 and 0.32 <5.20 (we need 5.24); TRL 1.16 supports 0.22-0.31.

vLLM 0.27-0.30 also need fastapi<0.137, and its mistral_common numpy<2.4 on Python <= 3.12: the lock
holds fastapi 0.136.3 and numpy 2.3.5 for that (the serve extra's floor is fastapi 0.115), found by
resolving all extras plus vLLM in one dry run. A GPU install drops only the CPU torch line (README).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
ALL_EXTRAS = ["llamacpp", "hf", "openai", "serve", "train", "synth", "dense", "report", "pyterrier", "langchain", "haystack",
              "llama-index", "mcp", "ray", "dev", "vllm"]


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def vllm_bound() -> SpecifierSet:
    (req,) = [Requirement(r) for r in extras()["vllm"]]
    assert req.name == "vllm"
    return req.specifier


def test_the_bound_is_inside_trls_supported_range():
    from importlib.metadata import requires

    trl_vllm = [Requirement(r.split(";")[0]) for r in requires("trl") or [] if r.startswith("vllm") and "extra ==" in r]
    assert trl_vllm, "TRL no longer declares a vllm extra"
    trl_spec = trl_vllm[0].specifier
    ours = vllm_bound()
    for version in ("0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0"):
        assert version in ours and version in trl_spec, version
    for version in ("0.26.0", "0.31.0", "0.32.0", "0.33.0"):  # torch 2.11 below, transformers caps above
        assert version not in ours, version


def registry_reachable() -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "vllm"], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and "0.30.0" in out.stdout


def dry_run(tmp_path: Path, constraints: Path, requirements: list[str]) -> subprocess.CompletedProcess:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "-c", str(constraints), *requirements]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_every_extra_and_vllm_resolve_under_the_lock(tmp_path):
    """pip's resolver, dry-run (it downloads wheels to read metadata: ~1 GB the first time, minutes)."""
    if not registry_reachable():
        pytest.skip("the package registry is unreachable (pip index versions vllm failed): the dry-run needs it")
    result = dry_run(tmp_path, ROOT / "constraints.txt", [f"{ROOT}[{','.join(ALL_EXTRAS)}]"])
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert chosen["vllm"] in vllm_bound()
    assert chosen["transformers"] == "5.24.0" and chosen["trl"] == "1.16.0"
    assert chosen["fastapi"] == "0.136.3" and chosen["numpy"] == "2.3.5"
    assert chosen["torch"].split("+")[0] == "2.13.0"
    assert chosen["ray"] == "2.60.0" and chosen["protobuf"] == "7.36.2"  # the ray extra's; vLLM's protobuf range takes it
