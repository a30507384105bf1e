"""README.md, run: every command and Python example in it (issue 18, "a README that runs").

Every fenced block of the README is covered, or `test_every_block_is_covered` fails:

* ```bash blocks: each command (continuation lines joined, the trailing `# comment` dropped) runs in
  README order through bash, in a scratch folder whose `../shared/data` is the shared data (a link:
  read in place, never copied), with the repository's .venv first on PATH (so `reasonrank` and
  `python` are the venv's), REASONRANK_CACHE the session's (the embedded model is not fetched again)
  and the hub offline. Unless it is listed in SKIPPED with the reason it cannot run here.
* ```python blocks run in this process, in the same folder: `reasonrank.spec.build` (the one path
  every face builds a reranker through) is wrapped to scale the spec; the MCP example starts the
  venv's `reasonrank mcp` with the same scaled options.

What changes from the README's text, and only this:

* SCALED: options appended to commands whose real size takes minutes to hours (the README says
  these options exist and what the full size costs); `--threads 1` wherever llama.cpp runs in the
  command's own process (tests/servers.py: outputs must not depend on the machine's load).
* Ports (8000, 8080) become free ports; `~/.cache/reasonrank` becomes the session's cache.
* `--ray local` becomes `--ray <the session's Ray head>` (conftest's `ray_cluster`, its token passed on):
  heavy engines start once per session, and tests/test_ray.py runs `--ray local` itself.
* A command that ends in `&` starts in the background; the block's later commands wait for its port
  and it is stopped at the end of the block.
* A file a command reads that an earlier README command writes (bm25.trec, reranked.trec,
  runs/demo/traces.jsonl) is made by running that command first when it is missing (so one block can
  run alone); the one input no README command can make here, a synthesis run's `sft.jsonl` (it needs
  a teacher model behind an endpoint), is written from SciFact's qrels as tests/test_training_chain.py
  writes its rows.

Each command must exit 0 with no traceback and no "Exception ignored" at interpreter exit; every
file it names as its output (-o/--output, --report, --traces, --per-query) must exist; figures its
comment states (`# average 30.59`) must be in what it prints (unscaled commands only).

Slowest parts (marked slow): the training block (`train from-gguf` writes the 0.5B model as 2.4 GB
of fp32 weights, ~50 s), the tdpart/HTTP block (a llama.cpp server) and `compare`. Whole file:
several minutes on 2 shared cores.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _data import DATA, SCIFACT, needs_data
from conftest import qwen_gguf_path
from servers import TEST_THREADS, free_port, wait_for_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "reasonrank").exists() else Path(sys.executable).parent

# -- what cannot run here, and why (keep it short and true) --------------------------------------------

SKIPPED = {
    "bash scripts/demo.sh":
        "runs `scripts/setup.sh llamacpp,report` first, which pip-installs into .venv from the network whenever the "
        "installed extras differ (they do: the tests' venv has every extra); what it then runs, `reasonrank demo`, "
        "runs here (the main-job block)",
    "bash scripts/test.sh": "the whole test suite, this file included (and it apt-get installs chromium)",
    'pip install -c constraints.txt -e ".[llamacpp]"':
        "installs from the network; scripts/setup.sh made this venv with the same command",
    "pip install torch": "a CUDA torch from the network, for a GPU machine",
    "pip install -c <(grep -v '^torch==' constraints.txt) -e \".[hf,train,vllm]\"":
        "the CUDA builds of torch and vLLM from the network, for a GPU machine; tests/test_vllm_extra.py resolves the "
        "lock with --dry-run",
    "reasonrank rerank -c ../shared/data/bright -t biology -r ../shared/data/bright/runs/biology.reasonir_gpt4cot_top100.trec.gz "
    "-m reasonrank-7b -b vllm -o biology.trec":
        "reasonrank-7b (15 GB) from the hub on vLLM: a GPU machine, online",
    "reasonrank rerank ... -m reasonrank-7b -b openai --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1":
        "needs two GPU servers serving reasonrank-7b; the HTTP path runs here against a local llama.cpp server (tdpart block)",
    "reasonrank rerank -c bright -t biology -r bm25.run -o reranked.run -m Qwen/Qwen2.5-32B-Instruct -b vllm --lora adapter/":
        "a 32B model from the hub on vLLM: a GPU machine, online",
    "ray start --head --port=6379":
        "sets up a Ray cluster that outlives the command (its `ray stop` would stop every Ray cluster of the user); "
        "the session's Ray head (conftest's `ray_cluster`) is started the same way, and the `--ray local` commands join it",
    "reasonrank rerank -c ../shared/data/bright -t biology -r ../shared/data/bright/runs/biology.reasonir_gpt4cot_top100.trec.gz "
    "-m reasonrank-7b -b vllm -o biology.trec --traces biology.jsonl --ray auto --replicas 8 --gpus-per-replica 1":
        "8 GPUs on a Ray cluster, reasonrank-7b (15 GB) from the hub on vLLM; the same path runs here on the session's "
        "Ray head with the embedded model (the `--ray local` commands)",
}

# -- how runs are scaled ---------------------------------------------------------------------------------

RERANK_SCALE = "--queries 1 --top-k 10 --max-new-tokens 16"  # one window of 10 a query, 16 new tokens
THREADS = f"--threads {TEST_THREADS}"
SCALED = [  # (command prefix, options appended); first match wins
    (re.compile(r"^reasonrank (rerank|demo)\b"), RERANK_SCALE),
    (re.compile(r"^reasonrank serve\b"), "--max-new-tokens 16"),
    (re.compile(r"^reasonrank compare\b"), "--queries 1 --depth 4 --listwise-max-new-tokens 16 --rankgpt-max-new-tokens 16 "
                                           "--pointwise-think-tokens 8"),
    (re.compile(r"^reasonrank train (sft|grpo)\b"), "--set max_steps=1 --set save_strategy=no"),
    (re.compile(r"^python -m llama_cpp\.server\b"), f"--n_threads {TEST_THREADS}"),
]
IN_PROCESS_LLAMA = re.compile(r"^reasonrank (rerank|demo|serve|compare)\b")  # gets --threads unless it talks to a server
# What the Python examples' rerankers are scaled to (the spec is wrapped on its way to build):
PY_SCALE = dict(top_k=10, max_new_tokens=16, max_passage_tokens=30)
MCP_ARGS = ["--top-k", "10", "--max-new-tokens", "16", "--max-passage-tokens", "30", "--threads", str(TEST_THREADS)]

PORTS = ("8000", "8080")  # README ports, each replaced by a free one
PRODUCED = {  # file a command reads -> how to find the README command that writes it
    "bm25.trec": re.compile(r"^reasonrank retrieve .*-o bm25\.trec\b"),
    "reranked.trec": re.compile(r"^reasonrank rerank .*-o reranked\.trec\b"),
    "runs/demo/traces.jsonl": re.compile(r"^reasonrank demo\b"),
}
SFT_STAND_IN = "synth-run/export/sft.jsonl"
RL_STAND_IN = "synth-run/export/rl.jsonl"
OUTPUT_FLAGS = ("-o", "--output", "--report", "--traces", "--per-query")
RESUMES = re.compile(r"resumed from the journal|resumes the Ray run's journal")  # a comment saying every window is resumed
FIGURE = re.compile(r"(?<![\w.@])\d+\.\d\d(?![\w.])")


# -- the README, parsed ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    text: str  # as in the README, continuations joined, whitespace collapsed, comment dropped
    comment: str

    @property
    def background(self) -> bool:
        return self.text.endswith("&")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    section: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:30]
        return f"L{self.line}-{slug}"

    def commands(self) -> list[Command]:
        out = []
        for line in re.sub(r"\\\n\s*", " ", self.code).splitlines():
            m = re.match(r"^(.*?)(?:\s+#\s(.*))?$", line.strip())
            text = " ".join(m.group(1).split())
            if text:
                out.append(Command(text, (m.group(2) or "").strip()))
        return out


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for m in re.finditer(r"^```(\S*)\n(.*?)^```\s*$", text, re.M | re.S):
        before = text[:m.start()]
        headings = re.findall(r"^#{1,3} (.+)$", before, re.M)
        blocks.append(Block(m.group(1), m.group(2), before.count("\n") + 1, headings[-1] if headings else "top"))
    return blocks


PY_LIBRARIES = ("pyterrier", "langchain_classic", "llama_index", "haystack", "mcp", "reasonrank")


def python_kind(block: Block) -> str | None:
    """The library a Python example is about: its first import among PY_LIBRARIES."""
    for m in re.finditer(r"^(?:from|import) (\w+)", block.code, re.M):
        if m.group(1) in PY_LIBRARIES:
            return m.group(1)
    return None


BLOCKS = readme_blocks()
BASH = [b for b in BLOCKS if b.lang == "bash"]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def all_commands() -> list[Command]:
    return [c for b in BASH for c in b.commands()]


# -- coverage: nothing in the README escapes -------------------------------------------------------------


def test_every_block_is_covered():
    assert BASH and PYTHON, "no blocks found: has the fence syntax changed?"
    others = [f"line {b.line}: ```{b.lang}" for b in BLOCKS if b.lang not in ("bash", "python")]
    assert not others, f"README blocks this test does not know how to run: {others} (run them here or use bash/python)"
    kinds = [python_kind(b) for b in PYTHON]
    assert None not in kinds and len(set(kinds)) == len(kinds), \
        f"each Python example must be one of {PY_LIBRARIES}, once (found {kinds}): add a runner to test_python_example"
    texts = {c.text for c in all_commands()}
    stale = [c for c in SKIPPED if c not in texts]
    assert not stale, f"SKIPPED names commands the README no longer has (update the list): {stale}"


def test_skipped_list_stays_short():
    assert len(SKIPPED) <= len(all_commands()) // 4, "most of the README must run here"


# -- the scratch folder ----------------------------------------------------------------------------------


def session_cache() -> Path:
    from reasonrank.paths import cache_dir

    return cache_dir()


class Workspace:
    def __init__(self, root: Path):
        (root / "shared").mkdir()
        (root / "shared" / "data").symlink_to(DATA, target_is_directory=True)  # ../shared/data, read in place
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.ports = {p: str(free_port()) for p in PORTS}
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "REASONRANK_CACHE": str(session_cache()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "PYTHONUNBUFFERED": "1", "HAYSTACK_TELEMETRY_ENABLED": "False"}  # Haystack reports usage otherwise
        self.env.pop("VIRTUAL_ENV", None)
        self.ray_address: str | None = None  # the session's Ray head, once a command asks for --ray local

    def use_ray(self, cluster) -> None:
        self.ray_address = cluster.address
        self.env.update(cluster.env)  # its auth token

    # what runs instead of the README's text
    def prepare(self, command: Command) -> str:
        text = command.text.removesuffix("&").strip()
        for pattern, extra in SCALED:
            if pattern.match(text):
                text = f"{text} {extra}"
                break
        if IN_PROCESS_LLAMA.match(text) and "-b openai" not in text and "-b vllm" not in text:
            text = f"{text} {THREADS}"
        for readme_port, port in self.ports.items():
            text = re.sub(rf"(--port |:){readme_port}\b", rf"\g<1>{port}", text)
        if "--ray local" in text:
            assert self.ray_address, "a --ray local command runs on the session's Ray head: call use_ray first"
            text = text.replace("--ray local", f"--ray {self.ray_address}")
        return text.replace("~/.cache/reasonrank", shlex.quote(str(session_cache())))

    def scaled(self, command: Command) -> bool:
        return any(p.match(command.text) for p, _ in SCALED) or bool(IN_PROCESS_LLAMA.match(command.text))

    def inputs(self, text: str) -> None:
        """Make what `text` reads that an earlier README command (or the stand-in) writes, if missing."""
        for name, writer in PRODUCED.items():
            if re.search(rf"(?<![\w/.-]){re.escape(name)}\b", text) and not (self.cwd / name).exists() \
                    and not writer.match(text):
                producer = next(c for c in all_commands() if writer.match(c.text))
                self.run(producer)
        for stand_in, index in ((SFT_STAND_IN, 1), (RL_STAND_IN, 2)):
            if stand_in in text and not (self.cwd / stand_in).exists():
                write_stand_in(self.cwd / stand_in, index)

    def run(self, command: Command, timeout: float = 600) -> subprocess.CompletedProcess:
        self.inputs(command.text)
        text = self.prepare(command)
        done = subprocess.run(["bash", "-c", text], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        where = f"README command: {command.text}\nran: {text}\nexit {done.returncode}\nstdout:\n{done.stdout[-3000:]}" \
                f"\nstderr:\n{done.stderr[-5000:]}"
        assert done.returncode == 0, where
        for noise in ("Traceback (most recent call last)", "Exception ignored"):
            assert noise not in done.stderr + done.stdout, where
        for flag in OUTPUT_FLAGS:
            for m in re.finditer(rf"(?:^|\s){re.escape(flag)}[ =](\S+)", command.text):
                assert (self.cwd / m.group(1)).exists(), f"{command.text}: wrote no {m.group(1)}\n{where}"
        if not self.scaled(command):
            for figure in FIGURE.findall(command.comment):
                assert figure in done.stdout, f"the README says {figure}; the command printed:\n{done.stdout}"
        check_output(command, done, self.cwd)
        return done

    def start(self, command: Command) -> subprocess.Popen:
        self.inputs(command.text)
        text = self.prepare(command)
        log = self.cwd / f"server-{len(list(self.cwd.glob('server-*.log')))}.log"
        proc = subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=self.cwd, env=self.env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        port = re.search(r"--port (\d+)", text).group(1)
        path = "/health" if text.startswith("reasonrank serve") else "/v1/models"
        wait_for_server(proc, f"http://127.0.0.1:{port}{path}", 300, command.text, log)
        return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def write_stand_in(path: Path, index: int) -> None:
    """Rows from 2 SciFact train queries' qrels in the export's format (what tests/test_training_chain.py trains
    on): `collection_rows`' SFT rows (index 1) or RL rows (index 2)."""
    from reasonrank.io import load_collection
    from reasonrank.prompts import PromptRenderer
    from reasonrank.tokenizer import load_tokenizer
    from reasonrank.training.data import write_rows
    from reasonrank.training.qrels_data import collection_rows

    renderer = PromptRenderer(load_tokenizer(str(qwen_gguf_path())), mode="reasonrank", max_passage_tokens=12)
    rows = collection_rows(load_collection(SCIFACT, split="train"), renderer, n_queries=2, window=3)[index]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(path, rows)


def check_output(command: Command, done: subprocess.CompletedProcess, cwd: Path) -> None:
    """What a few commands must print, beyond exiting cleanly."""
    text = command.text
    if text.startswith("curl"):
        body = json.loads(done.stdout)
        if "/rerank -H" in text and '"texts"' in text:  # TEI: a bare list, best first
            assert [sorted(hit) for hit in body] == [["index", "score", "text"]] * 2 and body[0]["score"] == 1.0, body
        elif "/score -H" in text:  # vLLM's ScoreResponse: one score per document, in document order
            assert sorted(d["index"] for d in body["data"]) == [0, 1] and "usage" in body, body
        else:
            assert len(body["results"]) == 1 and body["results"][0]["relevance_score"] == 1.0, body
    elif text.startswith("reasonrank prompt"):
        assert done.stdout.rstrip().endswith("<|im_start|>assistant"), done.stdout[-500:]
    elif text.startswith("reasonrank rerank") and RESUMES.search(command.comment):
        windows = re.search(r"windows (\d+) \((\d+) resumed", done.stderr)
        assert windows and windows.group(1) == windows.group(2) != "0", done.stderr[-3000:]
    elif text.startswith("reasonrank doctor --json"):
        assert json.loads(done.stdout)
    elif text.startswith("reasonrank report"):
        assert "<html" in (cwd / "report.html").read_text(encoding="utf-8")[:2000].lower()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    yield Workspace(root)
    shutil.rmtree(root, ignore_errors=True)  # the training block alone leaves 2.4 GB


# -- the bash blocks -------------------------------------------------------------------------------------


def _marks(block: Block) -> list:
    code = block.code
    marks = []
    if re.search(r"^reasonrank (rerank|demo|serve|compare|train)|llama_cpp\.server", code, re.M):
        marks += [pytest.mark.model, needs_data,
                  pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled")]
    if re.search(r"train from-gguf|llama_cpp\.server|^reasonrank compare", code, re.M):
        marks.append(pytest.mark.slow)
    if "../shared/data" in code and needs_data not in marks:
        marks.append(needs_data)
    return marks


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=_marks(b)) for b in BASH])
def test_bash_block(block, workspace, request):
    commands = [c for c in block.commands() if c.text not in SKIPPED]
    if not commands:
        pytest.skip("; ".join(SKIPPED[c.text] for c in block.commands()))
    if any("--ray local" in c.text for c in commands):
        workspace.use_ray(request.getfixturevalue("ray_cluster"))  # skips where the ray extra is not installed
    if any(c.text.startswith("reasonrank train") for c in commands):
        pytest.importorskip("trl", reason="the train extra is not installed")
    background = []
    try:
        for command in commands:
            if command.background:
                background.append(workspace.start(command))
            else:
                workspace.run(command)
    finally:
        for proc in background:
            stop(proc)
    if any(c.text.startswith("reasonrank train from-gguf") for c in commands):
        shutil.rmtree(workspace.cwd / "qwen-0.5b", ignore_errors=True)  # 2.4 GB


# -- the Python examples ---------------------------------------------------------------------------------

# Runs an example as a script of its own (so what happens at interpreter exit shows), with every reranker
# it builds recorded and scaled on its way through `reasonrank.spec.build`, the one path every face takes.
WRAPPER = """
import json, os, sys
import reasonrank.spec as spec_module

real = spec_module.build
scale = json.loads(os.environ["README_SCALE"])

def build(spec, **kwargs):
    with open(os.environ["README_SPECS"], "a") as f:
        f.write(json.dumps({"model": spec.model, "backend": spec.backend}) + "\\n")
    small = {k: v if getattr(spec, k) is None else min(getattr(spec, k), v) for k, v in scale["spec"].items()}
    return real(spec.replace(backend_options={**spec.backend_options, **scale["backend_options"]}, **small), **kwargs)

spec_module.build = build
name, path = sys.argv[1:3]
exec(compile(open(path, encoding="utf-8").read(), name, "exec"), {"__name__": "__main__"})
"""


def _py_param(block: Block):
    kind = python_kind(block)
    marks = [pytest.mark.model, needs_data, pytest.mark.skipif(not qwen_gguf_path().exists(), reason="embedded model not assembled")]
    extra = {"pyterrier": "pyterrier", "langchain_classic": "langchain_classic", "llama_index": "llama_index.core", "mcp": "mcp",
             "haystack": "haystack"}
    return pytest.param(block, extra.get(kind), id=f"{block.id}-{kind}", marks=marks)


@pytest.mark.parametrize("block,module", [_py_param(b) for b in PYTHON])
def test_python_example(block, module, workspace):
    if module:
        pytest.importorskip(module, reason=f"the extra for {module} is not installed")
    kind = python_kind(block)
    code = block.code
    if kind == "mcp":
        assert 'command="reasonrank", args=["mcp"], env=env' in code
        assert "REASONRANK_" in code  # the SDK passes only HOME, PATH, …: without env= REASONRANK_CACHE is lost
        command = str(VENV_BIN / "reasonrank")
        code = code.replace('command="reasonrank", args=["mcp"]', f"command={command!r}, args={['mcp', *MCP_ARGS]!r}")
    workspace.inputs(code)  # bm25.trec
    script, specs = workspace.cwd / f"example-{block.line}.py", workspace.cwd / f"example-{block.line}.specs"
    script.write_text(code, encoding="utf-8")
    specs.unlink(missing_ok=True)
    env = {**workspace.env, "README_SPECS": str(specs),
           "README_SCALE": json.dumps({"spec": PY_SCALE, "backend_options": {"n_threads": TEST_THREADS}})}
    done = subprocess.run([str(VENV_BIN / "python"), "-c", WRAPPER, f"README.md (line {block.line})", str(script)],
                          cwd=workspace.cwd, env=env, capture_output=True, text=True, timeout=600)
    out, where = done.stdout, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert done.returncode == 0, where
    for noise in ("Traceback (most recent call last)", "Exception ignored"):
        assert noise not in done.stderr, where
    lines = out.strip().splitlines()
    if kind == "mcp":  # the reranker is built in the server process, from the scaled command line
        assert out.startswith("{'results': [{'index': ") and "'relevance_score': 1.0" in out, where
        return
    built = [json.loads(line) for line in specs.read_text().splitlines()]
    assert built and all(b == {"model": None, "backend": None} for b in built), built  # the embedded model
    if kind == "pyterrier":
        assert "BM25 >> reasonrank" in out and "ndcg_cut_10" in out, where
    elif kind in ("langchain_classic", "llama_index"):
        assert len(lines) == 2 and lines[0].startswith("1.0 ") and lines[1].startswith("0.5 "), where
    elif kind == "haystack":  # top 3 by the blended score, best first
        scores = [float(line.split()[0]) for line in lines]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True), where
    elif kind == "reasonrank":
        assert len(lines) == 2 and sorted(ast.literal_eval(lines[0])) == ["d1", "d2"], where
        top = ast.literal_eval(lines[1])
        assert list(top) == ["1", "3"] and all(len(v) == 3 for v in top.values()), where


# -- what the README says about the options --------------------------------------------------------------


def _commands(group, path=()):
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


def test_dash_o_is_output_everywhere():
    """The README: "`-o` is `--output` wherever it appears (retrieve, rerank, demo, evaluate, report,
    compare, train …) and means nothing else"."""
    import typer

    from reasonrank.cli import app

    seen = []
    for name, cmd in _commands(typer.main.get_command(app)):
        for param in cmd.params:
            opts = set(param.opts) | set(param.secondary_opts)
            if "-o" in opts or "--output" in opts:
                assert {"-o", "--output"} <= opts, f"reasonrank {name}: {sorted(opts)} (-o must be --output, and --output -o)"
                seen.append(name)
    assert {"retrieve", "rerank", "demo", "evaluate", "report", "compare", "train sft"} <= set(seen), seen
