"""`reasonrank synth ...`: one command per synthesis stage, plus `run` (all of them) and `summary`.

Every command works on a run directory (`--run`, default ./synth-run) and resumes: rerunning a
command does only what is missing or failed, and teacher responses are cached in the run directory.
API keys are read from an environment variable (`--api-key-env`) or a file (`--api-key-file`),
never from the command line.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from reasonrank.errors import ReasonRankError, parse_json

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reasoning-intensive training-data synthesis with a teacher model (OpenAI-compatible endpoint).")

RunOpt = typer.Option(Path("synth-run"), "--run", "-r", help="Run directory (created if missing).")
ForceOpt = typer.Option(False, "--force", help="Discard this stage's records (and later stages') if its settings changed.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


@app.callback()
def _setup(verbose: bool = typer.Option(True, "--verbose/--quiet", help="Progress lines on stderr.")):
    logger = logging.getLogger("reasonrank.synthesis")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _pairs(values: Optional[List[str]], what: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ReasonRankError(f"{what} must be NAME=VALUE, got {v!r}")
        name, value = v.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def _specs(source, corpus, task, split, limit, sources_file):
    from reasonrank.synthesis.sources import SourceSpec

    specs = []
    if sources_file:
        data = parse_json(Path(sources_file).read_text(encoding="utf-8"), sources_file)
        specs.extend(SourceSpec.from_dict(d) for d in (data if isinstance(data, list) else [data]))
    corpora, tasks = _pairs(corpus, "--corpus"), _pairs(task, "--task")
    for name, path in _pairs(source, "--source").items():
        specs.append(SourceSpec(name, path, corpus=corpora.get(name), task=tasks.get(name), split=split, limit=limit))
    return specs


@contextmanager
def _teacher(run: Path, model, base_url, api_key_env, api_key_file, concurrency, max_retries, timeout, temperature,
             top_p, seed, price_prompt, price_completion, extra_body, server_slots, no_cache):
    """The run's teacher from the shared teacher options; closed when the block ends."""
    from reasonrank.synthesis.teacher import Teacher, TeacherConfig

    if not model:
        raise ReasonRankError("--model is required for stages that call the teacher")
    config = TeacherConfig(
        model=model, base_urls=list(base_url or ["http://127.0.0.1:8000/v1"]), api_key_env=api_key_env,
        api_key_file=str(api_key_file) if api_key_file else None, concurrency=concurrency, max_retries=max_retries,
        timeout=timeout, temperature=temperature, top_p=top_p, seed=seed,
        extra_body=parse_json(extra_body, "--extra-body") if extra_body else {}, price_prompt_per_m=price_prompt,
        price_completion_per_m=price_completion, server_slots=server_slots if server_slots > 0 else None,
    )
    teacher = Teacher.for_run(config, run, use_cache=not no_cache)
    try:
        yield teacher
    finally:
        teacher.close()


def _tokenizer(path: Optional[str]):
    if not path:
        return None
    from reasonrank.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _print_summary(summary: dict) -> None:
    keys = ("domains", "totals", "tokens", "teacher", "seconds", "total_seconds", "filter", "export")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))


# Teacher options, shared by mine / label / run.
ModelOpt = typer.Option(None, "--model", "-m", help="Model name the endpoint serves (e.g. deepseek-reasoner).")
BaseUrlOpt = typer.Option(None, "--base-url", help="API root ending in /v1; repeat to spread over servers.")
KeyEnvOpt = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key ('' for none).")
KeyFileOpt = typer.Option(None, "--api-key-file", help="File holding the API key (instead of the environment).")
ConcOpt = typer.Option(8, "--concurrency", help="Requests in flight at once.")
RetryOpt = typer.Option(4, "--max-retries", help="Resends per request (exponential backoff with jitter).")
TimeoutOpt = typer.Option(None, "--timeout", help="Read timeout in seconds (default: sized from the token budget).")
TempOpt = typer.Option(0.6, "--temperature")
TopPOpt = typer.Option(0.95, "--top-p")
SeedOpt = typer.Option(0, "--seed")
PriceInOpt = typer.Option(0.0, "--price-prompt", help="Price per million prompt tokens (for the running cost).")
PriceOutOpt = typer.Option(0.0, "--price-completion", help="Price per million completion tokens.")
ExtraOpt = typer.Option(None, "--extra-body", help="JSON merged into every request body.")
SlotsOpt = typer.Option(0, "--server-slots", help="Parallel requests each server runs, for timeout sizing (0: unlimited, as "
                                                   "APIs and vLLM; 1 for llama.cpp's server).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Do not read or write the response cache.")
PassageOpt = typer.Option(None, "--passage-tokens", help="Passage budget (default: 512 for BRIGHT/R2MED domains, else 100).")
TokOpt = typer.Option(None, "--tokenizer", help="Student tokenizer (GGUF, dir or hub id) for token-exact passage truncation.")
BatchOpt = typer.Option(None, "--batch-size", help="Samples per teacher batch (default 2 x concurrency).")

# --output like every other command; --out is the name it had first
ExportOpt = typer.Option(None, "--output", "-o", "--out", help="Export directory (default: <run>/export).")
SourceOpt = typer.Option(None, "--source", "-s", help="NAME=PATH: a BEIR/BRIGHT/R2MED directory or a JSONL of query rows.")
CorpusOpt = typer.Option(None, "--corpus", help="NAME=PATH: the corpus JSONL of a query-rows source.")
TaskSrcOpt = typer.Option(None, "--task", help="NAME=TASK: the BRIGHT task of a BRIGHT root.")
SplitOpt = typer.Option("train", "--split", help="BEIR qrels split whose queries are used.")
LimitOpt = typer.Option(None, "--limit", help="At most this many queries per domain.")
SourcesFileOpt = typer.Option(None, "--sources-file", help="JSON list of source specs (domain, path, corpus, task, split, limit).")


@app.command()
def sources(run: Path = RunOpt, source: Optional[List[str]] = SourceOpt, corpus: Optional[List[str]] = CorpusOpt,
            task: Optional[List[str]] = TaskSrcOpt, split: str = SplitOpt, limit: Optional[int] = LimitOpt,
            sources_file: Optional[Path] = SourcesFileOpt):
    """Stage 1: read each domain's queries (and reference answers) into the run."""
    from reasonrank.synthesis.pipeline import run_sources

    _print_summary(run_sources(run, _specs(source, corpus, task, split, limit, sources_file)))


@app.command()
def candidates(run: Path = RunOpt, k: int = typer.Option(100, "--top-k", "-k"),
               bm25_cache: Optional[Path] = typer.Option(None, help="Where BM25 indexes are cached."), force: bool = ForceOpt):
    """Stage 2: BM25 top-k per query."""
    from reasonrank.synthesis.pipeline import run_candidates

    _print_summary(run_candidates(run, k=k, bm25_cache=bm25_cache, force=force))


@app.command()
def mine(run: Path = RunOpt, depth: int = typer.Option(20, help="Candidates judged per query."),
         chunk: int = typer.Option(20, help="Passages per mining request."),
         max_tokens: int = typer.Option(2048, help="Teacher token budget per mining request."),
         template: Optional[Path] = typer.Option(None, help="A mining prompt JSON (default: the bundled one)."),
         passage_tokens: Optional[int] = PassageOpt, tokenizer: Optional[str] = TokOpt, batch_size: Optional[int] = BatchOpt,
         force: bool = ForceOpt, model: Optional[str] = ModelOpt, base_url: Optional[List[str]] = BaseUrlOpt,
         api_key_env: str = KeyEnvOpt, api_key_file: Optional[Path] = KeyFileOpt, concurrency: int = ConcOpt,
         max_retries: int = RetryOpt, timeout: Optional[float] = TimeoutOpt, temperature: float = TempOpt,
         top_p: float = TopPOpt, seed: int = SeedOpt, price_prompt: float = PriceInOpt, price_completion: float = PriceOutOpt,
         extra_body: Optional[str] = ExtraOpt, server_slots: int = SlotsOpt, no_cache: bool = NoCacheOpt):
    """Stage 3: the teacher judges which candidates are relevant (relevant_docids)."""
    from reasonrank.synthesis.pipeline import run_mine

    with _teacher(run, model, base_url, api_key_env, api_key_file, concurrency, max_retries, timeout, temperature,
                  top_p, seed, price_prompt, price_completion, extra_body, server_slots, no_cache) as teacher:
        _print_summary(run_mine(run, teacher, depth=depth, chunk=chunk, max_new_tokens=max_tokens,
                                passage_tokens=passage_tokens, tokenizer=_tokenizer(tokenizer), template=template,
                                batch_size=batch_size, force=force))


@app.command()
def label(run: Path = RunOpt, window: int = typer.Option(20, help="Passages per sample."),
          max_tokens: int = typer.Option(3172, help="Teacher token budget (reasoning + answer)."),
          accept_repaired: bool = typer.Option(True, "--accept-repaired/--strict", help="Keep answers the parser had to repair."),
          allow_missing: bool = typer.Option(False, "--allow-missing/--require-complete",
                                             help="Keep answers that leave passages out (filled in input order)."),
          passage_tokens: Optional[int] = PassageOpt, tokenizer: Optional[str] = TokOpt, batch_size: Optional[int] = BatchOpt,
          force: bool = ForceOpt, model: Optional[str] = ModelOpt, base_url: Optional[List[str]] = BaseUrlOpt,
          api_key_env: str = KeyEnvOpt, api_key_file: Optional[Path] = KeyFileOpt, concurrency: int = ConcOpt,
          max_retries: int = RetryOpt, timeout: Optional[float] = TimeoutOpt, temperature: float = TempOpt,
          top_p: float = TopPOpt, seed: int = SeedOpt, price_prompt: float = PriceInOpt, price_completion: float = PriceOutOpt,
          extra_body: Optional[str] = ExtraOpt, server_slots: int = SlotsOpt, no_cache: bool = NoCacheOpt):
    """Stage 4: the teacher ranks each window with the exact ReasonRank prompt."""
    from reasonrank.synthesis.pipeline import run_label

    with _teacher(run, model, base_url, api_key_env, api_key_file, concurrency, max_retries, timeout, temperature,
                  top_p, seed, price_prompt, price_completion, extra_body, server_slots, no_cache) as teacher:
        _print_summary(run_label(run, teacher, window=window, max_new_tokens=max_tokens, passage_tokens=passage_tokens,
                                 tokenizer=_tokenizer(tokenizer), accept_repaired=accept_repaired,
                                 allow_missing=allow_missing, batch_size=batch_size, force=force))


@app.command("filter")
def filter_(run: Path = RunOpt, alpha: float = typer.Option(0.4, help="Keep samples with nDCG@10 >= alpha."),
            require_reasoning: bool = typer.Option(True, "--require-reasoning/--allow-empty-reasoning")):
    """Stage 5: self-consistency filter (nDCG@10 of final_list against relevant_docids)."""
    from reasonrank.synthesis.pipeline import run_filter

    _print_summary(run_filter(run, alpha, require_reasoning))


@app.command()
def export(run: Path = RunOpt, out: Optional[Path] = ExportOpt,
           alpha: Optional[float] = typer.Option(None, help="Re-filter with this alpha first."),
           require_reasoning: Optional[bool] = typer.Option(None, "--require-reasoning/--allow-empty-reasoning"),
           split: str = typer.Option("train", help="Split name in the verl parquet (file name and extra_info).")):
    """Stage 6: released format, SFT (TRL JSONL + LLaMA-Factory JSON) and RL (JSONL + verl parquet)."""
    from reasonrank.synthesis.export import run_export

    print(json.dumps(run_export(run, out, alpha, require_reasoning, split), indent=2))


@app.command("import-released")
def import_released_cmd(path: Path = typer.Argument(..., help="Directory with training_data_all.jsonl, id_query/, id_doc/ (or the JSONL)."),
                        run: Path = RunOpt, dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="Only these datasets."),
                        limit: Optional[int] = typer.Option(None, help="At most this many rows."),
                        passage_tokens: Optional[int] = PassageOpt, tokenizer: Optional[str] = TokOpt):
    """Import data in the released ReasonRank format (e.g. reasonrank_data_13k) as labelled samples."""
    from reasonrank.synthesis.export import import_released

    _print_summary(import_released(run, path, datasets=dataset, limit=limit, passage_tokens=passage_tokens,
                                   tokenizer=_tokenizer(tokenizer)))


@app.command("run")
def run_cmd(run: Path = RunOpt, source: Optional[List[str]] = SourceOpt, corpus: Optional[List[str]] = CorpusOpt,
            task: Optional[List[str]] = TaskSrcOpt, split: str = SplitOpt, limit: Optional[int] = LimitOpt,
            sources_file: Optional[Path] = SourcesFileOpt, k: int = typer.Option(100, "--top-k", "-k"),
            depth: int = typer.Option(20), chunk: int = typer.Option(20), mine_max_tokens: int = typer.Option(2048),
            window: int = typer.Option(20), max_tokens: int = typer.Option(3172),
            accept_repaired: bool = typer.Option(True, "--accept-repaired/--strict"),
            allow_missing: bool = typer.Option(False, "--allow-missing/--require-complete"),
            alpha: float = typer.Option(0.4), require_reasoning: bool = typer.Option(True, "--require-reasoning/--allow-empty-reasoning"),
            out: Optional[Path] = ExportOpt, bm25_cache: Optional[Path] = typer.Option(None),
            passage_tokens: Optional[int] = PassageOpt, tokenizer: Optional[str] = TokOpt, batch_size: Optional[int] = BatchOpt,
            force: bool = ForceOpt, model: Optional[str] = ModelOpt, base_url: Optional[List[str]] = BaseUrlOpt,
            api_key_env: str = KeyEnvOpt, api_key_file: Optional[Path] = KeyFileOpt, concurrency: int = ConcOpt,
            max_retries: int = RetryOpt, timeout: Optional[float] = TimeoutOpt, temperature: float = TempOpt,
            top_p: float = TopPOpt, seed: int = SeedOpt, price_prompt: float = PriceInOpt, price_completion: float = PriceOutOpt,
            extra_body: Optional[str] = ExtraOpt, server_slots: int = SlotsOpt, no_cache: bool = NoCacheOpt):
    """All stages: sources → candidates → mine → label → filter → export (each resumes)."""
    from reasonrank.synthesis.chain import SynthesisConfig, run_all

    specs = _specs(source, corpus, task, split, limit, sources_file)
    if not specs and not (run / "sources.json").exists():
        raise ReasonRankError("give at least one --source (or --sources-file), or a --run that already has sources")
    config = SynthesisConfig(k=k, mine_depth=depth, mine_chunk=chunk, mine_max_tokens=mine_max_tokens, window=window,
                             label_max_tokens=max_tokens, passage_tokens=passage_tokens, accept_repaired=accept_repaired,
                             allow_missing=allow_missing,
                             alpha=alpha, require_reasoning=require_reasoning, batch_size=batch_size)
    with _teacher(run, model, base_url, api_key_env, api_key_file, concurrency, max_retries, timeout, temperature,
                  top_p, seed, price_prompt, price_completion, extra_body, server_slots, no_cache) as teacher:
        _print_summary(run_all(run, specs, teacher, config, tokenizer=_tokenizer(tokenizer), bm25_cache=bm25_cache,
                               out_dir=out, force=force))


@app.command()
def summary(run: Path = RunOpt):
    """The run's summary: samples per domain before/after filtering, parse failures, tokens, seconds."""
    from reasonrank.synthesis.pipeline import summarize

    if not run.exists():
        raise ReasonRankError(f"{run}: no such run directory")
    _print_summary(summarize(run))
