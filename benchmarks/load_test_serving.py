"""Bounded load test of the rerank service (loopback only; starts and stops its own server).

    .venv/bin/python benchmarks/load_test_serving.py                       # tiny random Qwen2 + real tokenizer, HF backend
    .venv/bin/python benchmarks/load_test_serving.py --model ~/.cache/reasonrank/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.hf \
        --sequential 2 --requests 8 --concurrency 8                         # the real 0.5B model as plain HF weights
    .venv/bin/python benchmarks/load_test_serving.py --backend llamacpp --model default --max-batch 8

Starts `python -m reasonrank.serving` on a free 127.0.0.1 port, then:

1. one-at-a-time: `--sequential` requests, each sent after the previous answered;
2. concurrent: `--concurrency` clients share `--requests` requests (a fixed count: the test ends by itself);
3. with `--compare-unbatched`: the concurrent phase against a second server started with
   --max-batch 1, to separate the gain of batched generation from mere overlap of HTTP and prompt
   rendering with the model.

The phases are interleaved over `--rounds` rounds (this machine's CPUs are shared; interleaving keeps
slow spells from landing on one phase only), and summed per phase at the end.

For each phase it prints requests/s, p50/p95/p99 latency, errors (non-200 answers and transport
failures; valid requests must give 0), and the backend batch sizes read from /metrics.

Which configuration batching helps: the HF transformers backend generates a gathered batch as one
left-padded forward pass per token, so on a CPU the per-token cost of a batch of 8 is far below 8
times that of one prompt. llama-cpp-python generates the prompts of a batch one after another, so
the service's batching gives it next to nothing (requests still interleave fairly). The default here
is therefore HF with a tiny randomly initialised Qwen2 (2 layers, hidden 128) that uses the real
Qwen2.5 tokenizer and chat template: the same prompts, the same code path, seconds instead of minutes
per phase. Its output is noise (windows end at max_new_tokens and parse as no_answer, keeping the
input order), which does not matter for throughput. `--model DIR` runs any HF model directory instead,
e.g. the embedded 0.5B model saved as plain weights (training.models.gguf_to_hf).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

TOPICS = ["vaccines", "volcanoes", "protein folding", "neural networks", "ocean currents", "photosynthesis", "black holes",
          "antibiotics", "plate tectonics", "gene editing", "climate models", "superconductors"]


def make_request(i: int, docs: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    documents = [f"Passage {j} on {TOPICS[(i + j) % len(TOPICS)]}: a short study of how {topic} relates to "
                 f"{TOPICS[(i + 2 * j + 1) % len(TOPICS)]}, with results from experiment {i * 7 + j}." for j in range(docs)]
    return {"model": "served", "query": f"What is known about {topic}? (query {i})", "documents": documents, "top_n": docs}


def build_tiny_model(out: Path) -> Path:
    """A randomly initialised 2-layer Qwen2 with the embedded model's real tokenizer and chat template."""
    import torch
    import transformers

    from reasonrank.backends.models import ensure_embedded
    from reasonrank.tokenizer import load_tokenizer

    tok = load_tokenizer(str(ensure_embedded()))
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, model: str, max_batch: int, log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "reasonrank.serving", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend", args.backend, "--model", model, "--served-model-name", "served",
               "--window", str(args.window), "--step", str(args.window // 2), "--max-new-tokens", str(args.max_new_tokens),
               "--max-passage-tokens", str(args.max_passage_tokens), "--max-batch", str(max_batch),
               "--batch-wait-ms", str(args.batch_wait_ms), "--log-level", "warning"]
        for opt in args.backend_option or []:
            cmd += ["--backend-option", opt]
        env = {k: v for k, v in os.environ.items() if k != "REASONRANK_API_KEY"}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server not ready after {args.startup_timeout:.0f}s; see {log_path}")
            time.sleep(0.5)

    def batches(self) -> tuple[float, float, float]:
        """(backend calls, windows, seconds inside backend calls) so far, from /metrics."""
        calls = windows = seconds = 0.0
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            if line.startswith("reasonrank_backend_batch_size_count"):
                calls = float(line.split()[-1])
            elif line.startswith("reasonrank_backend_batch_size_sum"):
                windows = float(line.split()[-1])
            elif line.startswith("reasonrank_backend_batch_seconds_sum"):
                seconds = float(line.split()[-1])
        return calls, windows, seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_phase(server: Server, n_requests: int, concurrency: int, first_index: int, args) -> dict:
    """Send `n_requests` requests from `concurrency` client threads; measure."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_i = iter(range(first_index, first_index + n_requests))
    before = server.batches()

    def client():
        with httpx.Client(timeout=args.request_timeout) as http:
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = http.post(server.base + "/v1/rerank", json=make_request(i, args.docs))
                    ok = r.status_code == 200 and len(r.json()["results"]) == args.docs
                    err = None if ok else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if err:
                        errors.append(err)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = server.batches()
    calls, windows, model_s = (a - b for a, b in zip(after, before))
    return {"requests": n_requests, "wall": wall, "latencies": latencies, "errors": errors, "calls": calls,
            "windows": windows, "model_s": model_s}


class Phase:
    """One kind of load, accumulated over rounds."""

    def __init__(self, name: str, server: Server, concurrency: int, n_requests: int):
        self.name, self.server, self.concurrency, self.n_requests = name, server, concurrency, n_requests
        self.runs: list[dict] = []

    def run(self, first_index: int, args) -> None:
        row = run_phase(self.server, self.n_requests, self.concurrency, first_index, args)
        self.runs.append(row)
        print(f"  {self.name:<30} {row['requests'] / row['wall']:7.3f} req/s  ({row['requests']} requests in "
              f"{row['wall']:.1f}s, {row['calls']:.0f} backend calls, errors {len(row['errors'])})", flush=True)
        for e in row["errors"][:3]:
            print("     error:", e)

    def summary(self) -> dict:
        lat = [x for r in self.runs for x in r["latencies"]]
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
        requests, wall = sum(r["requests"] for r in self.runs), sum(r["wall"] for r in self.runs)
        calls, windows = sum(r["calls"] for r in self.runs), sum(r["windows"] for r in self.runs)
        return {"phase": self.name, "requests": requests, "rps": requests / wall, "p50": q[49], "p95": q[94], "p99": q[98],
                "errors": sum(len(r["errors"]) for r in self.runs), "calls": calls, "windows": windows,
                "mean_batch": windows / calls if calls else 0.0,
                "model_s_per_call": sum(r["model_s"] for r in self.runs) / calls if calls else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--model", default="tiny", help="'tiny' (built here), an HF model directory, a GGUF, or a registry name")
    parser.add_argument("--backend-option", "-o", action="append", help="NAME=VALUE for the backend (hf default: n_threads=1)")
    parser.add_argument("--sequential", type=int, default=8, help="requests in the one-at-a-time phase")
    parser.add_argument("--requests", type=int, default=32, help="requests in the concurrent phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--docs", type=int, default=3, help="documents per request")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-passage-tokens", type=int, default=48)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--compare-unbatched", action="store_true", help="also run the concurrent phase against a --max-batch 1 server")
    parser.add_argument("--rounds", type=int, default=2, help="phases are interleaved this many times (the CPU may be shared)")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args = parser.parse_args()

    if not any(o.split("=", 1)[0] in ("n_threads",) for o in args.backend_option or []) and args.backend == "hf":
        # one torch thread: on a small, shared CPU more threads mostly add contention (measured 4x slower at load 6)
        args.backend_option = [*(args.backend_option or []), "n_threads=1"]

    with tempfile.TemporaryDirectory(prefix="rr-load-") as tmp:
        tmp = Path(tmp)
        model, what = args.model, args.model
        if args.model == "tiny":
            t0 = time.perf_counter()
            model = str(build_tiny_model(tmp / "tiny-qwen2"))
            what = f"tiny random Qwen2 (2 layers, hidden 128) + real Qwen2.5 tokenizer, built in {time.perf_counter() - t0:.0f}s"
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"backend {args.backend} ({', '.join(args.backend_option or [])}); model {what}")
        print(f"requests: {args.docs} documents each, window {args.window}, max_new_tokens {args.max_new_tokens}; "
              f"server max_batch {args.max_batch}, batch wait {args.batch_wait_ms} ms; {args.rounds} rounds, phases interleaved")
        servers = []
        try:
            servers.append(Server(args, model, args.max_batch, tmp / "server.log"))
            phases = [Phase("one-at-a-time", servers[0], 1, args.sequential),
                      Phase(f"{args.concurrency} clients, max_batch {args.max_batch}", servers[0], args.concurrency, args.requests)]
            if args.compare_unbatched:
                servers.append(Server(args, model, 1, tmp / "server-unbatched.log"))
                phases.append(Phase(f"{args.concurrency} clients, max_batch 1", servers[1], args.concurrency, args.requests))
            for server in servers:
                run_phase(server, 1, 1, 10_000, args)  # warm-up
            index = 0
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.1f})")
                for phase in phases:
                    phase.run(index, args)
                    index += phase.n_requests
        finally:
            for server in servers:
                server.stop()
        print(f"{'phase':<32}{'requests':>9}{'req/s':>9}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'errors':>8}{'mean batch':>12}{'s/call':>8}")
        rows = [p.summary() for p in phases]
        for row in rows:
            print(f"{row['phase']:<32}{row['requests']:>9}{row['rps']:>9.3f}{row['p50']:>8.2f}{row['p95']:>8.2f}{row['p99']:>8.2f}"
                  f"{row['errors']:>8}{row['mean_batch']:>12.2f}{row['model_s_per_call']:>8.2f}")
        print(f"concurrent / one-at-a-time throughput: {rows[1]['rps'] / rows[0]['rps']:.2f}x")
        if args.compare_unbatched:
            print(f"concurrent batched / concurrent unbatched throughput: {rows[1]['rps'] / rows[2]['rps']:.2f}x")
        total_errors = sum(r["errors"] for r in rows)
        if total_errors:
            raise SystemExit(f"{total_errors} errors")


if __name__ == "__main__":
    main()
