"""Reasoning-intensive training-data synthesis with a teacher model (ReasonRank, arXiv 2508.07050, §3.1).

Stages (each a function here and a command in `commands.app`; each resumable; each writes JSONL in a
run directory): sources → candidates (BM25) → mine (teacher judges relevance → relevant_docids) →
label (teacher ranks a 20-passage window with the exact ReasonRank prompt → initial_list, final_list,
reasoning) → filter (self-consistency: nDCG@10 ≥ alpha) → export (released format, SFT, RL).
`import_released` brings the published data (reasonrank_data_13k layout) into a run.
"""

from reasonrank.synthesis.chain import SynthesisConfig, run_all
from reasonrank.synthesis.export import import_released, run_export
from reasonrank.synthesis.mining import load_mining_template, mining_messages, parse_mining
from reasonrank.synthesis.pipeline import (
    DEFAULT_ALPHA,
    build_window,
    consistency_scores,
    run_candidates,
    run_filter,
    run_label,
    run_mine,
    run_sources,
    summarize,
)
from reasonrank.synthesis.sources import SourceSpec, open_source
from reasonrank.synthesis.teacher import ResponseCache, Teacher, TeacherConfig, TeacherStats

__all__ = [
    "DEFAULT_ALPHA",
    "ResponseCache",
    "SourceSpec",
    "SynthesisConfig",
    "Teacher",
    "TeacherConfig",
    "TeacherStats",
    "build_window",
    "consistency_scores",
    "import_released",
    "load_mining_template",
    "mining_messages",
    "open_source",
    "parse_mining",
    "run_all",
    "run_candidates",
    "run_export",
    "run_filter",
    "run_label",
    "run_mine",
    "run_sources",
    "summarize",
]
