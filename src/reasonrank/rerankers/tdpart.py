"""Top-down partitioning (`--method tdpart`), after Parry, MacAvaney and Ganguly, SIGIR 2024 (arXiv 2405.14589).

The sliding window carries relevant passages up from the bottom in overlapping windows (top-100,
20/10: 9 windows, each depending on the one before). Top-down partitioning instead:

1. ranks the top window (role `first`);
2. takes the candidate now at rank k as the pivot;
3. ranks every remaining candidate in windows of `window - 1` candidates plus the pivot, placed first
   (role `partition`); these windows do not depend on each other, so they go out as one batch, and
   the candidates a window places above the pivot are collected;
4. if no candidate beat the pivot, the top k are settled; else the candidates above the pivot (the
   top window's and the collected ones, in that order) are reranked the same way (role `recursion`).

A short last partition (fewer than `window - k` candidates: 4 at top-100, window 20) is not a window
of its own: those candidates are held back and ranked in one final window together with the pivot and
everything above it (role `recursion`). That window settles the top k whether or not anything beat
the pivot, so a query costs the same calls either way: at top-100, window 20, k 10, 1 first window,
4 partitions of 19 plus the pivot, and 1 final window of 14 + m passages (m: how many beat the pivot)
= 6 calls while m <= 6, against the sliding window's 9; more when m > 6 (the final group is then
itself partitioned). Without the hold-back it would be 1 + 5 + (1 if m > 0). Every candidate is still
ranked against the pivot or in the final window: nothing is left at its first-stage place unseen.

The result is the settled top, then the pivot, then everything placed below it in the order the
windows left it, then the candidates beyond the reranked depth. A garbled answer keeps the window's
input order, which puts every competitor below the pivot: the window changes nothing, and it is
counted in the run's parse statuses.

Each query is a generator that yields the windows it needs next and receives their orders back;
the driver batches the pending windows of all queries, so a partition step of 50 queries is one
backend batch. Prompts, parsing, traces and the journal are the sliding window's: a window is
journaled with its input and output doc ids, `method` and `role` (no positions: its windows are not
contiguous), so a killed run resumes and the report replays it.
"""

from __future__ import annotations

from typing import Generator

from reasonrank.rerankers.listwise import ListwiseReranker, Plan as ListPlan, Window
from reasonrank.types import Candidate, Request, WindowTrace

FIRST, PARTITION, RECURSION = "first", "partition", "recursion"

# A query's plan: yields [(role, window candidates)], receives [WindowTrace] (one per window).
Plan = Generator[list[tuple[str, list[Candidate]]], list[WindowTrace], list[Candidate]]


def _reordered(window: list[Candidate], trace: WindowTrace) -> list[Candidate]:
    return [window[p] for p in trace.permutation]


def partition_plan(candidates: list[Candidate], k: int, window: int, depth: int = 0) -> Plan:
    """Top-down partitioning of `candidates` (all of them are reranked) so that the top k are settled."""
    role = FIRST if depth == 0 else RECURSION
    if len(candidates) <= window:
        (trace,) = yield [(role, candidates)]
        return _reordered(candidates, trace)
    top = candidates[:window]
    (trace,) = yield [(role, top)]
    ranked = _reordered(top, trace)
    pivot = ranked[k - 1]
    above, below = ranked[:k - 1], ranked[k:]
    rest, size = candidates[window:], window - 1
    # A short last partition would be a call of its own: when it fits, its candidates are held back
    # for the final window instead (those above the pivot, the pivot, and them), which settles the top
    # k in the same call that reranks whatever beat the pivot (module docstring).
    spare = len(rest) % size
    held = rest[len(rest) - spare:] if 0 < spare <= window - k - 1 else []
    rest = rest[:len(rest) - len(held)]
    chunks = [[pivot, *rest[i:i + size]] for i in range(0, len(rest), size)]
    traces = (yield [(PARTITION, chunk) for chunk in chunks]) if chunks else []
    for chunk, t in zip(chunks, traces):
        order = _reordered(chunk, t)
        at = _index(order, pivot)
        above += order[:at]
        below += order[at + 1:]
    if held:
        group = yield from partition_plan([*above, pivot, *held], k, window, depth + 1)
        at = _index(group, pivot)
        lost = {id(c) for c in held}
        after = group[at + 1:]
        # held candidates that lose to the pivot were last in the first stage: they stay after every
        # partition's losers (so a garbled final window changes nothing)
        return [*group[:at + 1], *(c for c in after if id(c) not in lost), *below, *(c for c in after if id(c) in lost)]
    if len(above) > k - 1:
        # the pivot lost its rank k: the top k are among those above it, which compete again
        above = yield from partition_plan(above, k, window, depth + 1)
    return [*above, pivot, *below]


def _index(order: list[Candidate], pivot: Candidate) -> int:
    return next(j for j, c in enumerate(order) if c is pivot)  # identity: two passages may be equal in value


class TopDownPartitionReranker(ListwiseReranker):
    """`ListwiseReranker` with top-down partitioning instead of sliding windows (module docstring).

    `k` is the depth to settle (the pivot's rank): 10 (nDCG@10, the paper's setting with window 20), at
    most half the window by default so that small windows still leave room to partition; `top_k` is
    how deep the first-stage list is reranked, as for the sliding window."""

    method = "tdpart"

    def __init__(self, backend, renderer, *, k: int | None = None, top_k: int = 100, window: int = 20, **options):
        # the base class checks top_k and window against a sliding schedule; tdpart has no step, and any
        # step up to the window passes that check
        super().__init__(backend, renderer, top_k=top_k, window=window, step=window, passes=1, **options)
        k = min(10, max(1, self.window // 2)) if k is None else k
        if not 1 <= k < self.window:
            raise ValueError(f"k (the pivot's rank) must be between 1 and window - 1 ({self.window - 1}), got {k}")
        self.k = k

    def _settings(self) -> dict:
        settings = super()._settings()
        del settings["step"], settings["passes"]
        return {**settings, "pivot": self.k}

    def _plan(self, request: Request) -> ListPlan:
        """partition_plan over the reranked depth, as the driver's windows; the rest keep their order below."""
        head, tail = list(request.candidates[:self.top_k]), list(request.candidates[self.top_k:])
        if not head:
            return tail
        plan, answer = partition_plan(head, self.k, self.window), None
        try:
            while True:
                asked = plan.send(answer) if answer is not None else next(plan)
                answer = yield [Window(window, role=role) for role, window in asked]
        except StopIteration as stop:
            return [*stop.value, *tail]

    def expected_windows(self, candidates: int) -> None:
        return None  # how many windows depends on how many candidates beat the pivot
