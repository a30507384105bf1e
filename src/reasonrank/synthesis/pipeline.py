"""The synthesis stages. Each reads the previous stage's JSONL in the run directory, appends its own,
and on a rerun does only what is missing or failed (see store.py). Teacher calls are cached (see
teacher.py), so nothing is paid for twice even when a stage's record was lost.

    sources     queries.jsonl    one row per query: dataset, qid, query, answer
    candidates  candidates.jsonl first-stage (BM25) top-k per query
    mine        mined.jsonl      relevant_docids judged by the teacher among the top `depth`
    label       labels.jsonl     window of `window` passages (positives + hard negatives, first-stage
                                 order), the teacher's reasoning and permutation on the exact
                                 ReasonRank prompt -> initial_list, final_list, reasoning
    filter      filtered.jsonl   self-consistency: nDCG@10(final_list, relevant_docids) >= alpha
    export      export/          released format, SFT (TRL JSONL, LLaMA-Factory JSON), RL (JSONL, verl parquet)

`summary.json` holds, per domain, the samples at each stage (before and after filtering), the
teacher's parse-failure rates, tokens, cost and seconds, accumulated over every invocation.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from reasonrank.errors import ReasonRankError
from reasonrank.parsing import ParseStatus, parse_ranking
from reasonrank.prompts import PromptRenderer, default_max_passage_tokens
from reasonrank.reward import ranking_metrics
from reasonrank.synthesis.mining import chunks, load_mining_template, mining_messages, parse_mining
from reasonrank.synthesis.sources import SourceSpec, iter_query_records, open_source
from reasonrank.synthesis.store import check_settings, read_json, stage_file, write_json
from reasonrank.synthesis.teacher import Teacher, TeacherStats
from reasonrank.types import Candidate

log = logging.getLogger("reasonrank.synthesis")

SOURCES_FILE = "sources.json"
SUMMARY_FILE = "summary.json"
DEFAULT_ALPHA = 0.4
DONE = ("ok", "skipped")  # records a rerun keeps; "failed" and "parse_failed" are redone


# -- helpers ------------------------------------------------------------------------------------


def _specs(run_dir: Path) -> dict[str, dict[str, Any]]:
    return read_json(run_dir / SOURCES_FILE, {}) or {}


class _Domains:
    """Collections per domain, opened lazily from sources.json (documents indexed on first lookup)."""

    def __init__(self, run_dir: Path):
        self.specs = _specs(run_dir)
        self._open: dict[str, Any] = {}

    def collection(self, domain: str):
        if domain not in self._open:
            spec = self.specs.get(domain)
            if spec is None or "path" not in spec:
                raise ReasonRankError(f"domain {domain!r} has no source in {SOURCES_FILE}; run the sources stage")
            self._open[domain] = open_source(SourceSpec.from_dict(spec))[0]
        return self._open[domain]

    def candidate(self, domain: str, docid: str, score: float = 0.0) -> Candidate:
        return self.collection(domain).doc(docid).to_candidate(score)


def _active(rid: str, queries: dict) -> bool:
    """Is this record's query still in the run (sources may have been re-read with a smaller limit)?
    Imported released rows that repeat a query carry ids `<domain>/<qid>#<n>`."""
    return not queries or rid in queries or rid.split("#", 1)[0] in queries


def _batches(items: Sequence, size: int):
    size = max(1, int(size))
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _renderer_for(domain: str, passage_tokens: int | None, tokenizer, cache: dict) -> PromptRenderer:
    if domain not in cache:
        limit = passage_tokens if passage_tokens is not None else default_max_passage_tokens(domain)
        cache[domain] = PromptRenderer(tokenizer, "reasonrank", max_passage_tokens=limit)
    return cache[domain]


def _snapshot(stats: TeacherStats) -> TeacherStats:
    return TeacherStats(**stats.to_dict())


def _delta(after: TeacherStats, before: TeacherStats) -> dict[str, Any]:
    a, b = after.to_dict(), before.to_dict()
    return {k: a[k] - b[k] for k in a}


def _finish_stage(run_dir: Path, stage: str, seconds: float, teacher_delta: dict | None = None, extra: dict | None = None) -> dict:
    summary = read_json(run_dir / SUMMARY_FILE, {}) or {}
    secs = summary.setdefault("seconds", {})
    secs[stage] = secs.get(stage, 0.0) + seconds
    if teacher_delta:
        acc = TeacherStats(**summary.setdefault("teacher", {}).get(stage, {}))
        acc.add(teacher_delta)
        summary["teacher"][stage] = acc.to_dict()
    if extra:
        summary.update(extra)
    write_json(run_dir / SUMMARY_FILE, summary)
    return summarize(run_dir)


# -- stage 1: sources ---------------------------------------------------------------------------


def run_sources(run_dir: str | Path, specs: Sequence[SourceSpec]) -> dict:
    """Read each domain's queries (and check its corpus is there); writes queries.jsonl.

    Domains already in the run keep their queries unless given again; re-giving a domain replaces its
    spec. Query records are rewritten, which is cheap and changes nothing for unchanged sources.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    stored = _specs(run_dir)
    for spec in specs:
        stored[spec.domain] = spec.to_dict()
    if not stored:
        raise ReasonRankError("no sources given")
    rows = []
    released = []
    for domain, spec in stored.items():
        if "path" not in spec:  # imported from released data: its queries are already in the run
            released.append(domain)
            continue
        rows.extend(iter_query_records(SourceSpec.from_dict(spec)))
    queries = stage_file(run_dir, "sources")
    if released:
        rows.extend(r for r in queries.load().values() if r["dataset"] in released)
    write_json(run_dir / SOURCES_FILE, stored)
    queries.rewrite(rows)
    counts = Counter(r["dataset"] for r in rows)
    log.info("sources: %s", ", ".join(f"{d}: {n} queries" for d, n in counts.items()))
    return _finish_stage(run_dir, "sources", time.perf_counter() - t0)


# -- stage 2: candidates ------------------------------------------------------------------------


def run_candidates(run_dir: str | Path, k: int = 100, bm25_cache: str | Path | None = None, force: bool = False) -> dict:
    """BM25 top-k per query (index built once per corpus and cached); BRIGHT excluded ids removed."""
    from reasonrank.retrieval import BM25Index
    from reasonrank.types import Query

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    check_settings(run_dir, "candidates", {"retriever": "bm25", "k": k}, force)
    queries = stage_file(run_dir, "sources").load()
    out = stage_file(run_dir, "candidates")
    done = {i for i, r in out.load().items() if r.get("status") == "ok"}
    domains = _Domains(run_dir)
    todo: dict[str, list[dict]] = {}
    for rid, q in queries.items():
        if rid not in done and "path" in domains.specs.get(q["dataset"], {}):  # imported released data has its lists
            todo.setdefault(q["dataset"], []).append(q)
    for domain, rows in todo.items():
        coll = domains.collection(domain)
        index = BM25Index.for_collection(coll, cache=bm25_cache)
        excluded = {r["qid"]: set(r.get("excluded_docids") or ()) for r in rows}
        run = index.search([Query(r["qid"], r["query"]) for r in rows], k=k, excluded=excluded, show_progress=False)
        out.append({"id": r["id"], "dataset": domain, "qid": r["qid"], "status": "ok",
                    "candidates": [[d, round(s, 6)] for d, s in run.get(r["qid"], {}).items()]} for r in rows)
        log.info("candidates: %s: %d queries, top-%d", domain, len(rows), k)
    return _finish_stage(run_dir, "candidates", time.perf_counter() - t0)


# -- stage 3: positive mining -------------------------------------------------------------------


def _report_batch(stage: str, done: str, teacher: Teacher, progress: Callable[[str], None] | None) -> None:
    """Log (and pass to `progress`) a teacher stage's progress line after each batch."""
    msg = (f"{stage}: {done}; teacher calls {teacher.stats.calls} "
           f"(cache hits {teacher.stats.cache_hits}, failures {teacher.stats.failures}, retries {teacher.stats.retries}), "
           f"tokens {teacher.stats.prompt_tokens}+{teacher.stats.completion_tokens}, cost {teacher.stats.cost:.4f}")
    log.info(msg)
    if progress:
        progress(msg)


def run_mine(run_dir: str | Path, teacher: Teacher, *, depth: int = 20, chunk: int = 20, max_new_tokens: int = 2048,
             passage_tokens: int | None = None, tokenizer=None, template: str | Path | None = None,
             batch_size: int | None = None, force: bool = False,
             progress: Callable[[str], None] | None = None) -> dict:
    """The teacher judges the top `depth` candidates of each query, `chunk` passages per request,
    given the query and its reference answer; relevant_docids are the union, in first-stage order."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    before = _snapshot(teacher.stats)
    tmpl = load_mining_template(template)
    check_settings(run_dir, "mine", {"teacher": teacher.identity(), "depth": depth, "chunk": chunk,
                                     "max_new_tokens": max_new_tokens, "passage_tokens": passage_tokens,
                                     "template": tmpl.__dict__}, force)
    queries = stage_file(run_dir, "sources").load()
    cands = stage_file(run_dir, "candidates").load()
    out = stage_file(run_dir, "mine")
    done = {i for i, r in out.load().items() if r.get("status") in DONE}
    todo = [i for i, r in cands.items() if r.get("status") == "ok" and i not in done and i in queries]
    domains, renderers = _Domains(run_dir), {}
    batch = batch_size or max(1, teacher.config.concurrency * 2)
    finished = 0
    for ids in _batches(todo, batch):
        jobs = []  # (sample id, chunk candidates)
        conversations = []
        for rid in ids:
            q, c = queries[rid], cands[rid]
            renderer = _renderer_for(q["dataset"], passage_tokens, tokenizer, renderers)
            top = [domains.candidate(q["dataset"], d, s) for d, s in c["candidates"][:depth]]
            if not top:
                jobs.append((rid, None))
                continue
            for part in chunks(top, chunk):
                jobs.append((rid, part))
                conversations.append(mining_messages(tmpl, q["query"], [renderer.passage_content(x) for x in part], q.get("answer", "")))
        results = iter(teacher.generate(conversations, max_new_tokens)) if conversations else iter(())
        per_sample: dict[str, list] = {rid: [] for rid in ids}
        for rid, part in jobs:
            per_sample[rid].append((part, next(results) if part is not None else None))
        records = [_mined_record(queries[rid], parts) for rid, parts in per_sample.items()]
        out.append(records)
        finished += len(records)
        _report_batch("mine", f"{finished}/{len(todo)} queries", teacher, progress)
    return _finish_stage(run_dir, "mine", time.perf_counter() - t0, _delta(teacher.stats, before))


def _mined_record(q: dict, parts: list) -> dict:
    rec: dict[str, Any] = {"id": q["id"], "dataset": q["dataset"], "qid": q["qid"], "relevant_docids": [],
                           "judged_docids": [], "status": "ok", "reason": "", "responses": [],
                           "prompt_tokens": 0, "completion_tokens": 0}
    if parts == [(None, None)]:
        rec.update(status="skipped", reason="no first-stage candidates")
        return rec
    errors, parse_errors = [], []
    relevant: list[str] = []
    for part, (gen, cached) in parts:
        rec["judged_docids"].extend(c.docid for c in part)
        response = {"docids": [c.docid for c in part], "cached": cached, "retries": gen.retries,
                    "finish_reason": gen.finish_reason, "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens}
        rec["prompt_tokens"] += gen.prompt_tokens
        rec["completion_tokens"] += gen.completion_tokens
        if gen.error:
            errors.append(gen.error)
            response["error"] = gen.error
        else:
            parsed = parse_mining(gen.full_text, len(part), gen.finish_reason)
            response.update(raw=gen.full_text, answer=parsed.answer, detail=parsed.detail, parsed=parsed.ok,
                            relevant=[part[i].docid for i in parsed.relevant])
            if parsed.ok:
                relevant.extend(part[i].docid for i in parsed.relevant)
            else:
                parse_errors.append(parsed.detail)
        rec["responses"].append(response)
    if errors:
        rec.update(status="failed", reason=f"teacher request failed: {errors[0]}")
    elif parse_errors:
        rec.update(status="parse_failed", reason=f"mining answer unreadable: {parse_errors[0]}")
    else:
        order = {d: i for i, d in enumerate(rec["judged_docids"])}
        rec["relevant_docids"] = sorted(set(relevant), key=order.__getitem__)
    return rec


# -- stage 4: listwise labelling ----------------------------------------------------------------


def build_window(ranked: Sequence[str], judged: Sequence[str], relevant: Sequence[str], size: int = 20) -> list[str]:
    """The labelling window, in first-stage order: every mined positive (up to `size`), then the
    highest-ranked judged non-positives (hard negatives the teacher saw as irrelevant), then, if the
    judged pool is too small, the next unjudged candidates."""
    rank = {d: i for i, d in enumerate(ranked)}
    rel, jud = set(relevant), set(judged)
    pos = [d for d in ranked if d in rel][:size]
    neg = [d for d in ranked if d in jud and d not in rel][: size - len(pos)]
    rest = [d for d in ranked if d not in jud and d not in rel][: size - len(pos) - len(neg)]
    return sorted(pos + neg + rest, key=rank.__getitem__)


def run_label(run_dir: str | Path, teacher: Teacher, *, window: int = 20, max_new_tokens: int = 3172,
              passage_tokens: int | None = None, tokenizer=None, accept_repaired: bool = True,
              allow_missing: bool = False, batch_size: int | None = None, force: bool = False,
              progress: Callable[[str], None] | None = None) -> dict:
    """The teacher ranks each window with the exact ReasonRank prompt; its reasoning and permutation
    become `reasoning`, `final_list`. Unreadable answers are recorded as parse_failed with the
    parser's reason. A repaired answer (no tags, ties, duplicates, look-alike digits) is kept unless
    `accept_repaired=False`; one that leaves passages out is parse_failed unless `allow_missing`
    (the parser would fill them in input order, which is not the teacher's ranking)."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    before = _snapshot(teacher.stats)
    tok_name = getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None
    check_settings(run_dir, "label", {"teacher": teacher.identity(), "window": window, "max_new_tokens": max_new_tokens,
                                      "passage_tokens": passage_tokens, "tokenizer": tok_name,
                                      "accept_repaired": accept_repaired, "allow_missing": allow_missing}, force)
    queries = stage_file(run_dir, "sources").load()
    cands = stage_file(run_dir, "candidates").load()
    mined = stage_file(run_dir, "mine").load()
    out = stage_file(run_dir, "label")
    done = {i for i, r in out.load().items() if r.get("status") in DONE}
    todo = [i for i, r in mined.items() if r.get("status") == "ok" and i not in done and i in queries and i in cands]
    domains, renderers = _Domains(run_dir), {}
    batch = batch_size or max(1, teacher.config.concurrency * 2)
    finished = 0
    for ids in _batches(todo, batch):
        skipped, jobs, conversations = [], [], []
        for rid in ids:
            q, m = queries[rid], mined[rid]
            base = {"id": rid, "dataset": q["dataset"], "qid": q["qid"], "query": q["query"]}
            if not m["relevant_docids"]:
                skipped.append({**base, "status": "skipped", "reason": "no positive passage mined",
                                "relevant_docids": []})
                continue
            ranked = [d for d, _ in cands[rid]["candidates"]]
            scores = dict(cands[rid]["candidates"])
            initial = build_window(ranked, m["judged_docids"], m["relevant_docids"], window)
            renderer = _renderer_for(q["dataset"], passage_tokens, tokenizer, renderers)
            passages = [domains.candidate(q["dataset"], d, scores[d]) for d in initial]
            messages = renderer.messages(q["query"], passages)
            jobs.append((base, initial, m["relevant_docids"], messages))
            conversations.append(messages)
        gens = teacher.generate(conversations, max_new_tokens) if conversations else []
        records = skipped + [_label_record(base, initial, rel, messages, gen, cached, accept_repaired, allow_missing)
                             for (base, initial, rel, messages), (gen, cached) in zip(jobs, gens, strict=True)]
        out.append(records)
        finished += len(records)
        _report_batch("label", f"{finished}/{len(todo)} samples", teacher, progress)
    return _finish_stage(run_dir, "label", time.perf_counter() - t0, _delta(teacher.stats, before))


def ranked_ids(answer: str, n: int) -> int:
    """How many distinct ids within 1..n an answer names (look-alike digits normalised)."""
    text = unicodedata.normalize("NFKC", answer or "")
    return len({int(d) for d in re.findall(r"\d{1,9}", text) if 1 <= int(d) <= n})


def _label_record(base: dict, initial: list[str], relevant: list[str], messages, gen, cached: bool, accept_repaired: bool,
                  allow_missing: bool = False) -> dict:
    rec = {**base, "initial_list": initial, "relevant_docids": list(relevant), "messages": messages,
           "cached": cached, "retries": gen.retries, "finish_reason": gen.finish_reason,
           "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens, "seconds": round(gen.seconds, 3)}
    if gen.error:
        rec.update(status="failed", reason=f"teacher request failed: {gen.error}")
        return rec
    n = len(initial)
    parsed = parse_ranking(gen.full_text, n, gen.finish_reason)
    rec.update(raw=gen.full_text, parse_status=parsed.status.value, parse_detail=parsed.detail)
    usable = parsed.status is ParseStatus.OK or (parsed.status is ParseStatus.REPAIRED and accept_repaired)
    if not usable:
        rec.update(status="parse_failed", reason=f"ranking answer unusable ({parsed.status.value}): {parsed.detail}")
        return rec
    ranked = ranked_ids(parsed.answer, n)
    if ranked < n and not allow_missing:
        # the rest of such a "ranking" is the parser's fill-in (input order), not the teacher's judgement
        rec.update(status="parse_failed", reason=f"the answer ranks {ranked} of {n} passages ({parsed.detail})")
        return rec
    rec.update(status="ok", reason="", reasoning=parsed.reasoning.strip(),
               permutation=[p + 1 for p in parsed.permutation],
               final_list=[initial[p] for p in parsed.permutation])
    return rec


# -- stage 5: self-consistency filter -----------------------------------------------------------


def consistency_scores(final_list: Sequence[str], relevant_docids: Sequence[str]) -> tuple[float, float]:
    """(nDCG@10, Recall@10) of the teacher's final list against its own mined positives."""
    return ranking_metrics(list(final_list), list(relevant_docids))


def run_filter(run_dir: str | Path, alpha: float = DEFAULT_ALPHA, require_reasoning: bool = True) -> dict:
    """Keep a labelled sample only if nDCG@10(final_list, relevant_docids) >= alpha (and, unless
    `require_reasoning=False`, the teacher's reasoning is not empty). Recomputed from labels.jsonl
    on every call (no teacher involved), so any alpha can be tried on the same labels."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if not 0.0 <= alpha <= 1.0:
        raise ReasonRankError(f"alpha must be within [0, 1], got {alpha}")
    labels = stage_file(run_dir, "label").load()
    queries = stage_file(run_dir, "sources").load()
    rows, report = [], {}
    for rid, rec in labels.items():
        if rec.get("status") != "ok" or not _active(rid, queries):
            continue
        ndcg, recall = consistency_scores(rec["final_list"], rec["relevant_docids"])
        reason = ""
        if ndcg < alpha:
            reason = f"nDCG@10 {ndcg:.4f} < alpha {alpha}"
        elif require_reasoning and not (rec.get("reasoning") or "").strip():
            reason = "empty reasoning"
        d = report.setdefault(rec["dataset"], {"before": 0, "after": 0, "below_alpha": 0, "no_reasoning": 0})
        d["before"] += 1
        if not reason:
            d["after"] += 1
        elif reason.startswith("nDCG"):
            d["below_alpha"] += 1
        else:
            d["no_reasoning"] += 1
        rows.append({**rec, "ndcg@10": ndcg, "recall@10": recall, "kept": not reason, "drop_reason": reason})
    stage_file(run_dir, "filter").rewrite(rows)
    filt = {"alpha": alpha, "require_reasoning": require_reasoning, "domains": report,
            "before": sum(d["before"] for d in report.values()), "after": sum(d["after"] for d in report.values())}
    log.info("filter (alpha=%s): %s", alpha, ", ".join(f"{k}: {v['after']}/{v['before']} kept" for k, v in report.items()) or "nothing labelled")
    return _finish_stage(run_dir, "filter", time.perf_counter() - t0, extra={"filter": filt})


# -- summary ------------------------------------------------------------------------------------


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(run_dir: str | Path) -> dict:
    """Recompute the per-domain counts from the stage files and store them in summary.json."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY_FILE, {}) or {}
    queries = stage_file(run_dir, "sources").load()
    cands = stage_file(run_dir, "candidates").load()
    mined = stage_file(run_dir, "mine").load()
    labels = stage_file(run_dir, "label").load()
    filter_file = stage_file(run_dir, "filter")
    has_filter = filter_file.path.exists()
    filtered = filter_file.load()
    cands, mined, labels, filtered = ({k: v for k, v in recs.items() if _active(k, queries)}
                                      for recs in (cands, mined, labels, filtered))
    domains: dict[str, dict] = {}

    def dom(name: str) -> dict:
        return domains.setdefault(name, {"queries": 0, "candidates": 0, "mined": Counter(), "labelled": Counter(),
                                         "label_parse_status": Counter(), "positives": 0, "gold_hits": 0,
                                         "gold_total": 0, "gold_mined": 0, "after_filter": 0, "identity": 0})

    for rec in queries.values():
        dom(rec["dataset"])["queries"] += 1
    for rec in cands.values():
        if rec.get("status") == "ok":
            dom(rec["dataset"])["candidates"] += 1
    for rid, rec in mined.items():
        d = dom(rec["dataset"])
        status = rec["status"]
        if status == "ok" and not rec["relevant_docids"]:
            status = "no_positive"
        d["mined"][status] += 1
        if rec["status"] == "ok":
            d["positives"] += len(rec["relevant_docids"])
            gold = set((queries.get(rid) or {}).get("gold_docids") or ())
            if gold:
                judged = gold & set(rec["judged_docids"])
                d["gold_total"] += len(judged)
                d["gold_hits"] += len(judged & set(rec["relevant_docids"]))
                d["gold_mined"] += len(rec["relevant_docids"])
    for rec in labels.values():
        d = dom(rec["dataset"])
        d["labelled"][rec["status"]] += 1
        if rec.get("parse_status"):
            d["label_parse_status"][rec["parse_status"]] += 1
        if rec["status"] == "ok" and rec.get("permutation") == list(range(1, len(rec["permutation"]) + 1)):
            d["identity"] += 1  # the teacher left the window in first-stage order: a weak-teacher symptom
    for rec in filtered.values():
        if rec.get("kept"):
            dom(rec["dataset"])["after_filter"] += 1
    out_domains = {}
    tot = Counter()
    for name, d in sorted(domains.items()):
        mined_answered = d["mined"]["ok"] + d["mined"]["no_positive"] + d["mined"]["parse_failed"]
        label_answered = d["labelled"]["ok"] + d["labelled"]["parse_failed"]
        entry = {
            "queries": d["queries"],
            "with_candidates": d["candidates"],
            "mined": dict(d["mined"]),
            "mean_positives": _rate(d["positives"], d["mined"]["ok"] + d["mined"]["no_positive"]),
            "mined_vs_judged": ({"precision": _rate(d["gold_hits"], d["gold_mined"]),
                                 "recall": _rate(d["gold_hits"], d["gold_total"])} if d["gold_total"] else None),
            "mine_parse_failure_rate": _rate(d["mined"]["parse_failed"], mined_answered),
            "labelled": dict(d["labelled"]),
            "label_parse_status": dict(d["label_parse_status"]),
            "label_parse_failure_rate": _rate(d["labelled"]["parse_failed"], label_answered),
            "identity_permutations": d["identity"],
            "before_filter": d["labelled"]["ok"],
            "after_filter": d["after_filter"] if has_filter else None,
        }
        out_domains[name] = entry
        tot.update({"queries": d["queries"], "mine_parse_failed": d["mined"]["parse_failed"], "mine_answered": mined_answered,
                    "label_parse_failed": d["labelled"]["parse_failed"], "label_answered": label_answered,
                    "before_filter": d["labelled"]["ok"], "after_filter": d["after_filter"]})
    summary["run_dir"] = str(run_dir)
    summary["domains"] = out_domains
    summary["totals"] = {
        "queries": tot["queries"],
        "before_filter": tot["before_filter"],
        "after_filter": tot["after_filter"] if has_filter else None,
        "mine_parse_failure_rate": _rate(tot["mine_parse_failed"], tot["mine_answered"]),
        "label_parse_failure_rate": _rate(tot["label_parse_failed"], tot["label_answered"]),
    }
    teacher = summary.get("teacher", {})
    summary["tokens"] = {
        "prompt": sum(s.get("prompt_tokens", 0) for s in teacher.values()),
        "completion": sum(s.get("completion_tokens", 0) for s in teacher.values()),
        "cost": sum(s.get("cost", 0.0) for s in teacher.values()),
    }
    summary["total_seconds"] = sum((summary.get("seconds") or {}).values())
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary
