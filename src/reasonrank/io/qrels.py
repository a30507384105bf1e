"""Qrels in the layouts collections ship them, told apart by content (names lie: R2MED's .jsonl vs qrels.json).

- TREC: `qid iter docid rel`, whitespace-separated (also `qid docid rel`);
- BEIR TSV: `query-id<TAB>corpus-id<TAB>score`, header optional;
- JSON lines, one judgement a row: R2MED's `{"q_id", "p_id", "score"}`, or BEIR/TREC-style names;
- a whole JSON object `{qid: {docid: rel}}` or `{qid: [docid, ...]}` (older R2MED qrels.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping

from reasonrank.errors import FormatError
from reasonrank.io.common import field, lines, open_text, read_jsonl

Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance

QID_FIELDS = ("q_id", "query-id", "query_id", "qid")
DOCID_FIELDS = ("p_id", "corpus-id", "corpus_id", "docid", "doc_id", "pid")
REL_FIELDS = ("score", "relevance", "rel", "label")
HEADER_FIRST_FIELDS = ("query-id", "query_id", "qid", "q_id")


def check_id(path, what: str, value: str, inner_spaces: bool = True) -> None:
    """Refuse ids a line-based reader cannot give back: blank, padded, or holding tabs/newlines."""
    bad = (not value or value != value.strip()
           or any(c.isspace() and (c != " " or not inner_spaces) for c in value))
    if bad:
        allowed = "inner spaces only" if inner_spaces else "no whitespace"
        raise FormatError(path, None, f"{what} {value!r} cannot be written to this file ({allowed}; not blank or padded)")


def relevance(path, lineno: int | None, value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise FormatError(path, lineno, f"relevance {value!r} is not a number") from None


def first_line(path) -> str | None:
    for _, line in lines(path):
        if line.strip():
            return line.strip()
    return None


def sniff(path) -> str:
    """'json', 'jsonl', 'tsv' or 'trec', from the first non-blank line."""
    line = first_line(path)
    if line is None:
        raise FormatError(path, None, "empty file: no qrels lines")
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return "json"  # an object spread over lines
        # a one-line {qid: {...}} mapping parses too; its values are objects or lists, a row's are not
        is_mapping = isinstance(row, dict) and all(isinstance(v, (dict, list)) for v in row.values())
        return "json" if is_mapping else "jsonl"
    return "tsv" if "\t" in line else "trec"


def body(path) -> Iterator[tuple[int, str]]:
    """(line number, line less trailing whitespace) of the non-blank lines, less a BEIR header on the first."""
    first = True
    for lineno, line in lines(path):
        if not line.strip():
            continue
        if first and line.split()[0] in HEADER_FIRST_FIELDS:
            first = False
            continue
        first = False
        yield lineno, line.rstrip()


def iter_trec(path) -> Iterator[tuple[str, str, int]]:
    # Doc ids may hold spaces (BRIGHT stackoverflow's do), so the id is everything between the
    # leading fields and the relevance. Three fields stay `qid docid rel`: with a spaced id that is
    # indistinguishable from `qid iter docid rel`, and TREC's four fields win; TSV carries such ids.
    for lineno, line in body(path):
        n = len(line.split())
        if n < 3:
            raise FormatError(
                path, lineno, f"a qrels line needs 4 fields (qid iter docid relevance) or 3 (qid docid relevance), found {n}"
            )
        qid, rest = line.split(maxsplit=1)
        if n > 3:
            rest = rest.split(maxsplit=1)[1]  # drop `iter`
        docid, rel = rest.rsplit(maxsplit=1)
        yield qid, docid, relevance(path, lineno, rel)


def iter_tsv(path) -> Iterator[tuple[str, str, int]]:
    for lineno, line in body(path):
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise FormatError(
                path, lineno, f"a tab-separated qrels line needs 3 fields (query-id corpus-id score) or 4, found {len(parts)}"
            )
        if not qid or not docid:
            raise FormatError(path, lineno, "empty query id or doc id")
        yield qid, docid, relevance(path, lineno, rel)


def iter_jsonl(path) -> Iterator[tuple[str, str, int]]:
    for lineno, row in read_jsonl(path):
        qid = field(path, lineno, row, *QID_FIELDS)
        docid = field(path, lineno, row, *DOCID_FIELDS)
        rel = field(path, lineno, row, *REL_FIELDS)
        if qid is None or docid is None or isinstance(qid, (dict, list)) or isinstance(docid, (dict, list)):
            raise FormatError(path, lineno, f"query id and doc id should be strings or numbers, got {qid!r} and {docid!r}")
        yield str(qid), str(docid), relevance(path, lineno, rel)


def iter_json_mapping(path) -> Iterator[tuple[str, str, int]]:
    with open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise FormatError(path, exc.lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise FormatError(path, None, "a JSON qrels file should map query ids to their relevant documents")
    for qid, docs in data.items():
        if isinstance(docs, dict):
            for docid, rel in docs.items():
                yield str(qid), str(docid), relevance(path, None, rel)
        elif isinstance(docs, list):
            for docid in docs:
                yield str(qid), str(docid), 1
        else:
            raise FormatError(path, None, f"query {qid!r}: expected an object or a list of doc ids")


READERS = {"trec": iter_trec, "tsv": iter_tsv, "jsonl": iter_jsonl, "json": iter_json_mapping}


def iter_qrels(path: str | Path) -> Iterator[tuple[str, str, int]]:
    """Yield (qid, docid, relevance) from any layout above; a bad row raises FormatError naming file and line."""
    seen = False
    for judgement in READERS[sniff(path)](path):
        seen = True
        yield judgement
    if not seen:
        raise FormatError(path, None, "empty file: no qrels lines")


def read_qrels(path: str | Path) -> Qrels:
    qrels: Qrels = {}
    for qid, docid, rel in iter_qrels(path):
        qrels.setdefault(qid, {})[docid] = rel
    return qrels


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """TREC qrels; ids are checked first so a refused id leaves no half-written file."""
    for qid, docs in qrels.items():
        check_id(path, "query id", str(qid), inner_spaces=False)
        for docid in docs:
            check_id(path, "doc id", str(docid))
    with open_text(path, "wt") as fh:
        for qid, docs in qrels.items():
            for docid, rel in docs.items():
                fh.write(f"{qid} 0 {docid} {rel}\n")
