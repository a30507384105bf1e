"""Stage 6: export the kept samples, and import data already in the released format.

Layout under `<run>/export/` (or `out_dir`):

    released/training_data_all.jsonl   one row per sample, the columns of liuwenhan/reasonrank_data_13k:
                                       dataset, qid, initial_list, final_list, reasoning, relevant_docids
    released/id_query/<dataset>.json   {qid: query text}
    released/id_doc/<dataset>.json     {docid: passage text, as the prompt shows it before truncation}
    sft.jsonl                          {"messages": [system, user, assistant], "id", "dataset"} (TRL; what
                                       reasonrank.training.data.load_sft reads)
    llamafactory/reasonrank_synth_sft.json   alpaca-style [{"instruction", "input", "output", "system"}]
    llamafactory/dataset_info.json           the LLaMA-Factory entry naming those columns
    rl.jsonl                           {"prompt": [system, user], "ground_truth": [1-based ids], "initial_list",
                                       "final_list", "relevant_docids", "id", "dataset"} (load_rl, TRL GRPO)
    verl/train.parquet                 verl's RL layout: data_source, prompt (messages), ability,
                                       reward_model {style: "rule", ground_truth: JSON of {permutation,
                                       initial_list, relevant_docids}} (what reasonrank.reward.compute_score
                                       reads), extra_info; plus the released RL data's label/list columns and
                                       the rl.jsonl columns, so load_rl reads it too
    manifest.json                      counts, alpha, file list

The assistant turn is `<think>{reasoning}</think>\\n<answer>[i] > [j] > …</answer>`, the answer being
the teacher's permutation of the window, 1-based, as the ReasonRank models emit it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from reasonrank.errors import ReasonRankError, require
from reasonrank.parsing import format_permutation
from reasonrank.synthesis.pipeline import (
    DEFAULT_ALPHA,
    SOURCES_FILE,
    _Domains,
    _finish_stage,
    _renderer_for,
    run_filter,
)
from reasonrank.synthesis.store import StageFile, check_domain, read_json, sample_id, stage_file, write_json
from reasonrank.types import Candidate

log = logging.getLogger("reasonrank.synthesis")

RELEASED_FILE = "training_data_all.jsonl"
RELEASED_COLUMNS = ("dataset", "qid", "initial_list", "final_list", "reasoning", "relevant_docids")
LLAMAFACTORY_NAME = "reasonrank_synth_sft"
VERL_DATA_SOURCE = "ranking"  # as in liuwenhan/reasonrank_data_rl
VERL_ABILITY = "ranking"


# -- row builders (pure) ------------------------------------------------------------------------


def assistant_content(reasoning: str, permutation: Sequence[int]) -> str:
    """`<think>…</think>\\n<answer>[i] > [j] > …</answer>` from a 1-based permutation."""
    return f"<think>{reasoning.strip()}</think>\n<answer>{format_permutation([p - 1 for p in permutation])}</answer>"


def released_row(s: dict) -> dict:
    return {"dataset": s["dataset"], "qid": s["qid"], "initial_list": list(s["initial_list"]),
            "final_list": list(s["final_list"]), "reasoning": s.get("reasoning", ""),
            "relevant_docids": list(s["relevant_docids"])}


def sft_row(s: dict) -> dict:
    prompt = [dict(m) for m in s["messages"]]
    return {"messages": prompt + [{"role": "assistant", "content": assistant_content(s.get("reasoning", ""), s["permutation"])}],
            "id": s["id"], "dataset": s["dataset"]}


def llamafactory_row(s: dict) -> dict:
    system = next((m["content"] for m in s["messages"] if m["role"] == "system"), "")
    user = next(m["content"] for m in s["messages"] if m["role"] == "user")
    return {"instruction": user, "input": "", "output": assistant_content(s.get("reasoning", ""), s["permutation"]),
            "system": system}


def llamafactory_dataset_info(file_name: str, name: str = LLAMAFACTORY_NAME) -> dict:
    """LLaMA-Factory's dataset_info.json entry for the alpaca-style file (as ReasonRank's own)."""
    return {name: {"file_name": file_name, "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                          "system": "system"}}}


def rl_row(s: dict) -> dict:
    return {"prompt": [dict(m) for m in s["messages"]], "ground_truth": list(s["permutation"]),
            "initial_list": list(s["initial_list"]), "final_list": list(s["final_list"]),
            "relevant_docids": list(s["relevant_docids"]), "id": s["id"], "dataset": s["dataset"]}


def verl_ground_truth(s: dict) -> str:
    """reward_model.ground_truth: the JSON reasonrank.reward.compute_score reads."""
    return json.dumps({"permutation": list(s["permutation"]), "initial_list": list(s["initial_list"]),
                       "relevant_docids": list(s["relevant_docids"])}, ensure_ascii=False)


def verl_row(s: dict, index: int, split: str = "train") -> dict:
    return {
        "data_source": VERL_DATA_SOURCE,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in s["messages"]],
        "ability": VERL_ABILITY,
        "reward_model": {"style": "rule", "ground_truth": verl_ground_truth(s)},
        "extra_info": {"index": index, "split": split, "id": s["id"], "dataset": s["dataset"], "qid": s["qid"],
                       "initial_list": list(s["initial_list"]), "final_list": list(s["final_list"]),
                       "relevant_docids": list(s["relevant_docids"])},
        "label": format_permutation([p - 1 for p in s["permutation"]]),
        "ground_truth": list(s["permutation"]),
        "initial_list": list(s["initial_list"]),
        "final_list": list(s["final_list"]),
        "relevant_docids": list(s["relevant_docids"]),
        "id": s["id"],
        "dataset": s["dataset"],
    }


def verl_schema():
    pa = require("pyarrow", "synth", "Writing the verl parquet export")
    strings = pa.list_(pa.string())
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string()), ("id", pa.string()),
                                  ("dataset", pa.string()), ("qid", pa.string()), ("initial_list", strings),
                                  ("final_list", strings), ("relevant_docids", strings)])),
        ("label", pa.string()),
        ("ground_truth", pa.list_(pa.int64())),
        ("initial_list", strings),
        ("final_list", strings),
        ("relevant_docids", strings),
        ("id", pa.string()),
        ("dataset", pa.string()),
    ])


def write_verl_parquet(path: Path, rows: list[dict]) -> None:
    pa = require("pyarrow", "synth", "Writing the verl parquet export")
    pq = require("pyarrow.parquet", "synth", "Writing the verl parquet export")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = verl_schema()
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    pq.write_table(table, path)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    f = StageFile(path)
    rows = list(rows)
    f.rewrite(rows)
    return len(rows)


# -- document and query texts -------------------------------------------------------------------


class _Texts:
    """Query and passage texts per domain: from the source collections, or from imported id_doc files."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.domains = _Domains(run_dir)
        self._released: dict[str, dict[str, str]] = {}

    def doc(self, domain: str, docid: str) -> str:
        spec = self.domains.specs.get(domain) or {}
        if "path" in spec:
            return self.domains.candidate(domain, docid).content
        if domain not in self._released:
            root = Path(spec.get("released", ""))
            self._released[domain] = _load_id_map(root / "id_doc" / f"{domain}.json")
        try:
            return self._released[domain][docid]
        except KeyError:
            raise ReasonRankError(f"{domain}: no text for doc id {docid!r} in the imported id_doc file") from None


def _doc_content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        text = value.get("text") or value.get("contents") or value.get("content") or ""
        return Candidate("", 0.0, text, value.get("title") or "").content
    raise ReasonRankError(f"unexpected document value of type {type(value).__name__}")


def _load_id_map(path: Path) -> dict[str, str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the released data keeps texts in id_query/ and id_doc/)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ReasonRankError(f"{path}: expected a JSON object mapping ids to texts")
    return {str(k): _doc_content(v) for k, v in data.items()}


# -- export -------------------------------------------------------------------------------------


def kept_samples(run_dir: str | Path) -> list[dict]:
    return [r for r in stage_file(run_dir, "filter").load().values() if r.get("kept")]


def run_export(run_dir: str | Path, out_dir: str | Path | None = None, alpha: float | None = None,
               require_reasoning: bool | None = None, split: str = "train") -> dict:
    """Write every export of the kept samples. With `alpha` (or no filter run yet) the filter is run
    first with that alpha (default 0.4)."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if alpha is not None or require_reasoning is not None or not stage_file(run_dir, "filter").path.exists():
        run_filter(run_dir, DEFAULT_ALPHA if alpha is None else alpha,
                   True if require_reasoning is None else require_reasoning)
    samples = sorted(kept_samples(run_dir), key=lambda s: (s["dataset"], s["id"]))
    out = Path(out_dir) if out_dir else run_dir / "export"
    texts = _Texts(run_dir)
    files: dict[str, str] = {}

    # (a) the released format
    rel = out / "released"
    files["released"] = str(rel / RELEASED_FILE)
    _write_jsonl(rel / RELEASED_FILE, (released_row(s) for s in samples))
    by_domain: dict[str, list[dict]] = {}
    for s in samples:
        by_domain.setdefault(s["dataset"], []).append(s)
    for domain, rows in by_domain.items():
        write_json(rel / "id_query" / f"{domain}.json", {s["qid"]: s["query"] for s in rows})
        docids = dict.fromkeys(d for s in rows for d in s["initial_list"])
        write_json(rel / "id_doc" / f"{domain}.json", {d: texts.doc(domain, d) for d in docids})

    # (b) SFT
    files["sft"] = str(out / "sft.jsonl")
    _write_jsonl(out / "sft.jsonl", (sft_row(s) for s in samples))
    lf = out / "llamafactory"
    files["llamafactory"] = str(lf / f"{LLAMAFACTORY_NAME}.json")
    write_json(lf / f"{LLAMAFACTORY_NAME}.json", [llamafactory_row(s) for s in samples])
    write_json(lf / "dataset_info.json", llamafactory_dataset_info(f"{LLAMAFACTORY_NAME}.json"))

    # (c) RL
    files["rl"] = str(out / "rl.jsonl")
    _write_jsonl(out / "rl.jsonl", (rl_row(s) for s in samples))
    files["verl"] = str(out / "verl" / f"{split}.parquet")
    write_verl_parquet(out / "verl" / f"{split}.parquet", [verl_row(s, i, split) for i, s in enumerate(samples)])

    summary = read_json(run_dir / "summary.json", {}) or {}
    manifest = {"samples": len(samples), "per_domain": {d: len(v) for d, v in sorted(by_domain.items())},
                "filter": summary.get("filter"), "files": files}
    write_json(out / "manifest.json", manifest)
    if not samples:
        log.warning("export: no sample passed the filter; the export files are empty")
    log.info("export: %d samples -> %s", len(samples), out)
    _finish_stage(run_dir, "export", time.perf_counter() - t0, extra={"export": manifest})
    return manifest


# -- import of the released data ----------------------------------------------------------------


def _released_paths(source: str | Path) -> tuple[Path, Path]:
    source = Path(source)
    if source.is_dir():
        data = source / RELEASED_FILE
        if not data.exists():
            found = sorted(p.name for p in source.glob("*.jsonl"))
            if len(found) == 1:
                data = source / found[0]
            else:
                raise FileNotFoundError(f"{source}: no {RELEASED_FILE} (JSONL files here: {found or 'none'})")
        return data, source
    if source.is_file():
        return source, source.parent
    raise FileNotFoundError(f"{source}: no such file or directory")


def import_released(run_dir: str | Path, source: str | Path, *, datasets: Sequence[str] | None = None,
                    limit: int | None = None, passage_tokens: int | None = None, tokenizer=None) -> dict:
    """Bring rows in the released format (e.g. liuwenhan/reasonrank_data_13k: training_data_all.jsonl
    with id_query/ and id_doc/ beside it) into a run as labelled samples, so filter and export work on
    them as on synthesized ones. The prompt is rendered from the id_query/id_doc texts with the exact
    ReasonRank template. A row whose final_list is not a reordering of its initial_list, or whose
    texts are missing, is recorded as failed with the reason."""
    from reasonrank.io.common import read_jsonl

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    data, root = _released_paths(source)
    wanted = set(datasets) if datasets else None
    queries_file, labels_file = stage_file(run_dir, "sources"), stage_file(run_dir, "label")
    done = {i for i, r in labels_file.load().items() if r.get("status") == "ok"}
    known_queries = queries_file.load()
    id_query: dict[str, dict[str, str]] = {}
    id_doc: dict[str, dict[str, str]] = {}
    renderers: dict = {}
    seen: dict[str, int] = {}
    new_queries, records, taken = [], [], 0
    for lineno, row in read_jsonl(data):
        missing = [c for c in RELEASED_COLUMNS if c not in row and c != "reasoning"]
        if missing:
            raise ReasonRankError(f"{data}:{lineno}: missing column(s) {missing}; expected {list(RELEASED_COLUMNS)}")
        ds, qid = check_domain(str(row["dataset"])), str(row["qid"])
        if wanted is not None and ds not in wanted:
            continue
        if limit is not None and taken >= limit:
            break
        taken += 1
        base_id = sample_id(ds, qid)
        seen[base_id] = seen.get(base_id, 0) + 1
        rid = base_id if seen[base_id] == 1 else f"{base_id}#{seen[base_id]}"
        if rid in done:
            continue
        if ds not in id_query:
            id_query[ds] = _load_id_map(root / "id_query" / f"{ds}.json")
            id_doc[ds] = _load_id_map(root / "id_doc" / f"{ds}.json")
        query = id_query[ds].get(qid)
        rec: dict[str, Any] = {"id": rid, "dataset": ds, "qid": qid, "query": query or "", "source": "released",
                               "initial_list": [str(d) for d in row["initial_list"]],
                               "relevant_docids": [str(d) for d in row.get("relevant_docids") or []],
                               "cached": True, "prompt_tokens": 0, "completion_tokens": 0}
        problem = _released_problem(rec, row, query, id_doc[ds])
        if problem:
            rec.update(status="failed", reason=problem)
        else:
            initial = rec["initial_list"]
            final, detail = _complete(initial, [str(d) for d in row["final_list"]])
            pos = {d: i for i, d in enumerate(initial)}
            renderer = _renderer_for(ds, passage_tokens, tokenizer, renderers)
            messages = renderer.messages(query, [Candidate(d, 0.0, id_doc[ds][d]) for d in initial])
            rec.update(status="ok", reason="", reasoning=(row.get("reasoning") or "").strip(), messages=messages,
                       final_list=final, permutation=[pos[d] + 1 for d in final],
                       parse_status="repaired" if detail else "ok", parse_detail=detail)
        records.append(rec)
        if base_id not in known_queries:
            known_queries[base_id] = {"id": base_id, "dataset": ds, "qid": qid, "query": query or "", "answer": "",
                                      "gold_docids": None, "excluded_docids": []}
            new_queries.append(known_queries[base_id])
    queries_file.append(new_queries)
    labels_file.append(records)
    specs = read_json(run_dir / SOURCES_FILE, {}) or {}
    for ds in id_query:
        specs.setdefault(ds, {"domain": ds, "released": str(root)})
    write_json(run_dir / SOURCES_FILE, specs)
    ok = sum(r["status"] == "ok" for r in records)
    log.info("import-released: %d rows imported (%d failed) from %s", ok, len(records) - ok, data)
    return _finish_stage(run_dir, "import-released", time.perf_counter() - t0)


def _released_problem(rec: dict, row: dict, query: str | None, docs: dict[str, str]) -> str:
    initial = rec["initial_list"]
    if query is None:
        return f"query id {rec['qid']!r} not in id_query/{rec['dataset']}.json"
    if not initial:
        return "empty initial_list"
    if len(set(initial)) != len(initial):
        return "initial_list repeats a doc id"
    absent = [d for d in initial if d not in docs]
    if absent:
        return f"doc id(s) {absent[:5]} not in id_doc/{rec['dataset']}.json"
    final = [str(d) for d in row["final_list"]]
    unknown = [d for d in final if d not in set(initial)]
    if unknown:
        return f"final_list has id(s) not in initial_list: {unknown[:5]}"
    if len(set(final)) != len(final):
        return "final_list repeats a doc id"
    return ""


def _complete(initial: list[str], final: list[str]) -> tuple[list[str], str]:
    missing = [d for d in initial if d not in set(final)]
    if not missing:
        return final, ""
    return final + missing, f"{len(missing)} id(s) missing from final_list appended in initial order"
