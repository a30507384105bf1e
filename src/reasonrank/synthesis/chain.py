"""Every synthesis stage in order: sources → candidates → mine → label → filter → export.

Above both `pipeline` (the stages up to the filter) and `export` (which runs after the filter, and
runs the filter itself when it has not run): neither imports this module, so the two import each
other in one direction only (export → pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from reasonrank.synthesis.export import run_export
from reasonrank.synthesis.pipeline import (
    DEFAULT_ALPHA,
    run_candidates,
    run_filter,
    run_label,
    run_mine,
    run_sources,
    summarize,
)
from reasonrank.synthesis.sources import SourceSpec
from reasonrank.synthesis.teacher import Teacher


@dataclass
class SynthesisConfig:
    """Stage settings for `run_all` (each stage function takes the same names as keywords)."""

    k: int = 100  # first-stage depth
    mine_depth: int = 20  # candidates the teacher judges per query
    mine_chunk: int = 20  # passages per mining request
    mine_max_tokens: int = 2048
    window: int = 20  # passages per labelled sample
    label_max_tokens: int = 3172  # the paper's budget: 3,072 reasoning + 100 answer
    passage_tokens: int | None = None  # None: ReasonRank's budget for the domain (512 BRIGHT/R2MED, else 100)
    accept_repaired: bool = True
    allow_missing: bool = False  # keep answers that leave passages out (filled in input order)
    alpha: float = DEFAULT_ALPHA
    require_reasoning: bool = True
    batch_size: int | None = None  # samples per teacher batch (default 2 x concurrency)


def run_all(run_dir: str | Path, specs: Sequence[SourceSpec], teacher: Teacher, config: SynthesisConfig | None = None, *,
            tokenizer=None, bm25_cache: str | Path | None = None, out_dir: str | Path | None = None,
            force: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """sources → candidates → mine → label → filter → export; every stage resumes. Returns the summary."""
    c = config or SynthesisConfig()
    run_dir = Path(run_dir)
    if specs:
        run_sources(run_dir, specs)
    run_candidates(run_dir, k=c.k, bm25_cache=bm25_cache, force=force)
    run_mine(run_dir, teacher, depth=c.mine_depth, chunk=c.mine_chunk, max_new_tokens=c.mine_max_tokens,
             passage_tokens=c.passage_tokens, tokenizer=tokenizer, batch_size=c.batch_size, force=force, progress=progress)
    run_label(run_dir, teacher, window=c.window, max_new_tokens=c.label_max_tokens, passage_tokens=c.passage_tokens,
              tokenizer=tokenizer, accept_repaired=c.accept_repaired, allow_missing=c.allow_missing, batch_size=c.batch_size,
              force=force, progress=progress)
    run_filter(run_dir, c.alpha, c.require_reasoning)
    run_export(run_dir, out_dir)
    return summarize(run_dir)
