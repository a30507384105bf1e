"""Peer row for benchmarks/tdpart_scifact.py: the same top-down partitioning work (SciFact test queries,
BM25 top-100, window 20, pivot at rank 10, ReasonRank prompt with passages cut to 100 model tokens,
greedy, max-new-tokens 32) done by pyterrier-generative 0.1.3's TDPart (`GenerativeRanker(...,
algorithm=Algorithm.TDPART)`) through pyterrier-rag's `OpenAIBackend`, against the same llama.cpp
server (llama-cpp-python's OpenAI-compatible server on loopback serving the embedded GGUF).

It needs its own virtualenv (pyterrier-generative pulls pyterrier, pyterrier-rag and torch):

    python3 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install -c constraints.txt pyterrier-generative==0.1.3 -e '.[openai,llamacpp]'
    /tmp/peer-venv/bin/pip uninstall -y torchvision torchaudio   # see below
    /tmp/peer-venv/bin/python benchmarks/tdpart_peer.py --queries 4 --threads 2
    /tmp/peer-venv/bin/python benchmarks/tdpart_peer.py --dry   # no server: a scripted mock answers

pyterrier-rag (required by pyterrier-generative) pulls torchvision and torchaudio, whose PyPI wheels for
torch 2.13 are CUDA builds that fail to import against the CPU torch (and transformers imports
torchvision when it is installed); nothing here uses them, so they are removed. pyterrier-generative
0.1.3 also imports `pyterrier_rag.prompt.jinja`, which no pyterrier-rag release has: see
import_pyterrier_generative.

Prints one row in tdpart_scifact.md's format and appends it to --out (benchmarks/results/tdpart_peer.md,
its header written when the file does not exist yet), then per-query counts and how the answers parsed.
Every HTTP request the backend sends is counted (an httpx event hook on the OpenAI client): model
calls are server requests (retries included), prompt and generated tokens are the server's `usage`.
Each call (prompt size, raw answer, usage, seconds) goes to --calls-log (JSON lines, outside the repo).

What is the same as ours: the prompt (a callable prompt returning `PromptRenderer.messages()`, our system
and user messages, sent to /v1/chat/completions so the server applies the GGUF's chat template; with
`--api completions` the exact rendered text `PromptRenderer.render().text` goes to /v1/completions as in
tdpart_scifact.py's server rows), the candidates and their order (BM25 top-100; scores are replaced by
100 - rank because pyterrier-generative re-sorts by score with an unstable sort), window 20, pivot at
rank 10 (`cutoff=10`), the pivot placed first in each partition window of 19 + pivot, greedy decoding
(temperature 0, top_p 1, seed 0, as our SamplingParams).

What differs (pyterrier_generative/algorithms/tdpart.py, the batched path `transform` uses):
* Partitions are sequential within a query: after the first window, one partition window per query per
  round (its `budget_warning` stops collection after the first window and is never reset), batched
  only across queries; ours sends all partition windows of all queries as one batch.
* A buffer (default 20): partitioning stops once 20 candidates are above the pivot (9 from the first
  window + 11 winners); the candidates not yet partitioned go below the pivot unseen. Ours partitions
  every candidate (no buffer).
* Above 20 candidates the first 20 are kept and ranked again as a new iteration (at most `max_iters`,
  10 in GenerativeRanker), the rest (and the pivot) go to the backfill; with 10-20 candidates and the
  list exhausted one final window ranks the candidates plus the pivot (up to 21 passages), so the old
  pivot can move; ours holds a short last partition back and ranks it in one final window with those
  above the pivot and the pivot (6 calls at top-100 while up to 6 beat the pivot), recursing in
  windows of 20 only when more do. Exactly 20 candidates with passages left is a dead end in their state
  machine: it spins through max_iters without calls and returns the candidates in discovery order.
* Backfill order: in a re-iteration the new window's ranks 11-20 go after everything already in the
  backfill; ours keeps the first window's order below the pivot.
* Parsing: every digit run in the whole answer (reasoning included, no <answer> tag handling) is read as
  an id, duplicates and out-of-range ids dropped, missing ones appended in window order; an empty answer
  or an HTTP error ("ERROR::other") keeps the window order, which in a partition window means nothing
  beats the pivot. Ours reads ids only from the answer part and keeps the window order for a reply cut
  by the token limit without tags; so with 32 new tokens theirs acts on numbers in the reasoning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from reasonrank.evaluation import evaluate
from reasonrank.io import load_collection
from reasonrank.prompts import PromptRenderer
from reasonrank.rerankers import requests_from_run
from reasonrank.retrieval import BM25Index
from reasonrank.types import Candidate

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REASONRANK_DATA") or ROOT.parent / "shared" / "data")
OUT = ROOT / "benchmarks" / "results" / "tdpart_peer.md"
HEADER = ("| engine | method | queries | model calls/query | prompt tokens/query | generated tokens/query | "
          "s/query | nDCG@10 (BM25 → reranked) |\n|---|---|---:|---:|---:|---:|---:|---|\n")
ENGINE = "llama.cpp server (pyterrier-generative 0.1.3 TDPart)"
METHOD = "tdpart (peer)"


class CallLog:
    """Every request/response pair the OpenAI client sends, attributed to its query via the prompt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: dict[str, tuple[str, int]] = {}  # prompt key -> (qid, passages in the window)
        self.calls: list[dict] = []

    def register(self, key: str, qid: str, n: int) -> None:
        with self.lock:
            self.owner[key] = (qid, n)

    @staticmethod
    def key_of(body: dict) -> str:
        if "messages" in body:
            return body["messages"][-1]["content"]
        return body.get("prompt", "")

    def on_request(self, request) -> None:
        request.extensions["peer_started"] = time.perf_counter()

    def on_response(self, response) -> None:
        response.read()
        started = response.request.extensions.get("peer_started", time.perf_counter())
        body = json.loads(response.request.content or b"{}")
        qid, n = self.owner.get(self.key_of(body), ("?", 0))
        try:
            data = response.json()
        except ValueError:
            data = {}
        usage = data.get("usage") or {}
        choice = (data.get("choices") or [{}])[0]
        text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
        with self.lock:
            self.calls.append({
                "qid": qid, "passages": n, "status": response.status_code, "seconds": time.perf_counter() - started,
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
                "finish_reason": choice.get("finish_reason"), "text": text,
            })


def make_prompt(renderer: PromptRenderer, calls: CallLog, qid_of: dict[str, str], api: str):
    """pyterrier-generative callable prompt: called with query=, num=, passages= (the window's texts)."""

    def prompt(query: str, passages, num=None, **_):
        cands = [Candidate(docid="", text=str(t)) for t in passages]
        if api == "completions":
            out = renderer.render(query, cands).text
            key = out
        else:
            out = renderer.messages(query, cands)
            key = out[-1]["content"]
        calls.register(key, qid_of[query], len(cands))
        return out

    return prompt


def mock_transport():
    """Dry run: an httpx transport answering like a llama.cpp server, `[2] > [1] > [3]` every time (in
    a partition window passage 2 then beats the pivot, which exercises the final collation)."""
    import httpx

    def handler(request):
        body = json.loads(request.content)
        chat = "messages" in body
        choice = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": "[2] > [1] > [3]"}
        else:
            choice["text"] = "[2] > [1] > [3]"
        return httpx.Response(200, json={"id": "mock", "object": "chat.completion" if chat else "text_completion",
                                         "choices": [choice],
                                         "usage": {"prompt_tokens": 1000, "completion_tokens": 32, "total_tokens": 1032}})

    return httpx.MockTransport(handler)


def build_ranker(args, base_url: str, renderer: PromptRenderer, calls: CallLog, qid_of: dict[str, str], transport=None):
    import httpx
    import openai
    from pyterrier_generative import Algorithm, GenerativeRanker
    from pyterrier_rag.backend import OpenAIBackend

    api = "completions" if args.api == "completions" else "chat/completions"
    backend = OpenAIBackend(
        "embedded", api_key="sk-local", base_url=base_url, api=api, max_new_tokens=args.max_new_tokens,
        generation_args={"max_tokens": args.max_new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0},
        max_retries=1, timeout=args.request_timeout, parallel=args.parallel)
    # The same client, with an httpx client whose hooks see every request and response (usage included).
    http_client = httpx.Client(transport=transport, timeout=args.request_timeout,
                               event_hooks={"request": [calls.on_request], "response": [calls.on_response]})
    backend.client = openai.OpenAI(base_url=base_url, api_key="sk-local", max_retries=1, http_client=http_client)
    return GenerativeRanker(
        backend, prompt=make_prompt(renderer, calls, qid_of, args.api), system_prompt=None,
        algorithm=Algorithm.TDPART, window_size=20, cutoff=10)  # buffer 20, max_iters 10: GenerativeRanker's defaults


def import_pyterrier_generative():
    """pyterrier-generative 0.1.3 imports `pyterrier_rag.prompt.jinja`, which no pyterrier-rag release has
    (0.3.0, the latest on PyPI, lacks it; it is on pyterrier_rag's main branch: a 5-line wrapper around
    jinja2.Template). Only Jinja-string prompts use it and ours is a callable, so when the module is
    missing the same function is provided here."""
    import importlib.util
    import types

    if importlib.util.find_spec("pyterrier_rag.prompt.jinja") is None:
        from jinja2 import Template

        def jinja_formatter(template: str):
            obj = Template(template)
            return lambda **kwargs: obj.render(**kwargs)

        shim = types.ModuleType("pyterrier_rag.prompt.jinja")
        shim.jinja_formatter = jinja_formatter
        sys.modules["pyterrier_rag.prompt.jinja"] = shim
    import pyterrier_generative

    return pyterrier_generative


def server_chat_prompt(tokenizer, messages) -> str:
    """The prompt llama-cpp-python's server builds from chat messages (the GGUF's template, no chat_format)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=tokenizer.chat_template, eos_token=tokenizer.eos_token or "",
                              bos_token=tokenizer.bos_token or "")
    return fmt(messages=messages).prompt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--api", choices=["chat", "completions"], default="chat",
                        help="chat: our messages to /v1/chat/completions (pyterrier-generative's default); "
                             "completions: our exact rendered prompt to /v1/completions")
    parser.add_argument("--parallel", type=int, default=1,
                        help="OpenAIBackend's parallel requests (the llama.cpp server runs one at a time; 1 keeps "
                             "per-call seconds free of queueing)")
    parser.add_argument("--request-timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown table to append the row to.")
    parser.add_argument("--calls-log", type=Path, default=Path("/tmp/tdpart_peer_calls.jsonl"))
    parser.add_argument("--dry", action="store_true", help="No server: print one prompt and run against a mock.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd
    pyterrier_generative = import_pyterrier_generative()
    from reasonrank.tokenizer import load_tokenizer
    from servers import embedded_gguf, llama_cpp_server

    gguf = embedded_gguf()
    if gguf is None:
        raise SystemExit("embedded GGUF missing: run scripts/setup.sh")
    coll = load_collection(DATA / "scifact")
    queries = list(coll.queries())[: args.queries]
    first_stage = BM25Index.for_collection(coll).search(queries, k=100, show_progress=False)
    requests = requests_from_run(coll, first_stage, [q.qid for q in queries], depth=100)
    qid_of = {q.text: q.qid for q in queries}
    assert len(qid_of) == len(queries), "two queries share a text"
    rows = [{"qid": r.query.qid, "query": r.query.text, "docno": c.docid, "text": c.content, "score": float(100 - i)}
            for r in requests for i, c in enumerate(r.candidates)]
    inp = pd.DataFrame(rows)
    tokenizer = load_tokenizer(str(gguf))
    renderer = PromptRenderer(tokenizer=tokenizer, max_passage_tokens=100)
    calls = CallLog()

    if args.dry:
        r = requests[0]
        messages = renderer.messages(r.query.text, r.candidates[:20])
        exact = renderer.render(r.query.text, r.candidates[:20]).text
        served = server_chat_prompt(tokenizer, messages)
        print(f"pyterrier-generative {pyterrier_generative.__version__}; first window of query {r.query.qid} as sent "
              f"({args.api}):\n")
        print(exact if args.api == "completions" else json.dumps(messages, indent=1, ensure_ascii=False)[:3000])
        print(f"\nserver chat template over these messages == our exact prompt: {served == exact} "
              f"({len(tokenizer(exact)['input_ids'])} tokens by our tokenizer)")
        ranker = build_ranker(args, "http://127.0.0.1:9/v1", renderer, calls, qid_of, transport=mock_transport())
    else:
        server = llama_cpp_server(gguf, n_ctx=4096, n_threads=args.threads)
        base_url = server.__enter__()
    try:
        if not args.dry:
            ranker = build_ranker(args, base_url, renderer, calls, qid_of)
        started = time.perf_counter()
        out = ranker.transform(inp)
        wall = time.perf_counter() - started
    finally:
        if not args.dry:
            server.__exit__(None, None, None)

    run = {qid: {str(d): float(s) for d, s in zip(g["docno"], g["score"])} for qid, g in out.groupby("qid")}
    assert all(len(run[q.qid]) == len(first_stage[q.qid]) for q in queries), "reranked lists lost passages"
    before = evaluate({q: first_stage[q] for q in run}, coll.qrels(), ["nDCG@10"])
    after = evaluate(run, coll.qrels(), ["nDCG@10"])
    n = len(run)
    total = {k: sum(c[k] for c in calls.calls) for k in ("prompt_tokens", "completion_tokens")}
    row = (f"| {ENGINE} | {METHOD} | {n} | {len(calls.calls) / n:.1f} | {total['prompt_tokens'] / n:,.0f} | "
           f"{total['completion_tokens'] / n:,.0f} | {wall / n:.0f} | "
           f"{100 * before.aggregate['nDCG@10']:.2f} → {100 * after.aggregate['nDCG@10']:.2f} |")
    print(row, flush=True)
    if not args.dry:
        if not args.out.exists():
            args.out.write_text(
                f"# pyterrier-generative's TDPart as a peer of ours, SciFact top-100 ({n} test quer{'y' if n == 1 else 'ies'}, "
                f"embedded Qwen2.5-Coder-0.5B, llama.cpp server {args.threads} thread{'s' if args.threads > 1 else ''}, "
                f"max-new-tokens {args.max_new_tokens}, passages 100 tokens, {args.api} API)\n\n"
                f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/tdpart_peer.py` (its docstring lists how their "
                "algorithm differs from ours); a smoke-test model, not ReasonRank.\n\n" + HEADER)
        with args.out.open("a") as fh:
            fh.write(row + "\n")
    with args.calls_log.open("w") as fh:
        for c in calls.calls:
            fh.write(json.dumps(c, ensure_ascii=False) + "\n")

    # Per query, and how each answer would parse under theirs and ours.
    from reasonrank.parsing import parse_ranking
    ranker_parse = ranker.parse_output
    print(f"\nwall {wall:.0f} s; calls log {args.calls_log}")
    print("| qid | calls | passages per call | prompt tokens | generated tokens | seconds in calls | nDCG@10 BM25 → reranked |")
    print("|---|---:|---|---:|---:|---:|---|")
    for q in queries:
        mine = [c for c in calls.calls if c["qid"] == q.qid]
        print(f"| {q.qid} | {len(mine)} | {','.join(str(c['passages']) for c in mine)} | "
              f"{sum(c['prompt_tokens'] for c in mine):,} | {sum(c['completion_tokens'] for c in mine):,} | "
              f"{sum(c['seconds'] for c in mine):.0f} | {100 * before.per_query[q.qid]['nDCG@10']:.2f} → "
              f"{100 * after.per_query[q.qid]['nDCG@10']:.2f} |")
    unattributed = sum(c["qid"] == "?" for c in calls.calls)
    errors = sum(c["status"] != 200 for c in calls.calls)
    theirs_moved = ours_moved = 0
    statuses: dict[str, int] = {}
    for c in calls.calls:
        if not c["passages"]:
            continue
        identity = list(range(c["passages"]))
        theirs_moved += ranker_parse(c["text"] or "", c["passages"]) != identity
        parsed = parse_ranking(c["text"] or "", c["passages"], c["finish_reason"] or "", require_tags=True)
        status = str(getattr(parsed.status, "value", parsed.status))
        statuses[status] = statuses.get(status, 0) + 1
        ours_moved += list(parsed.permutation) != identity
    print(f"\n{len(calls.calls)} calls ({unattributed} unattributed, {errors} non-200); answers that change the window "
          f"order: {theirs_moved} by pyterrier-generative's parser, {ours_moved} by ours (our statuses: {statuses})")


if __name__ == "__main__":
    main()
