"""The sliding-window schedule of listwise reranking (pure functions, no model).

Windows run from the bottom of the top-k to the top, so a relevant passage found low in the list
can be carried upward window by window: for k=100, window=20, step=10 the windows are
(80,100), (70,90), …, (0,20) — nine of them. Each window's end is `step` above the previous one's;
the last window is clamped at 0 and is then shorter (k=25: (5,25), (0,15)); a list no longer than
the window is one window (0,k); an empty list has none.

Compared with the loops this replaces (checked against the sources):

* RankLLM's legacy loop, which ReasonRank's `rerank/rankllm.py` copies::

      end, start = k, k - window
      while end > 0 and start + step != 0:
          start = max(start, 0); rerank(start, end); end -= step; start -= step

  gives the same windows for every k except when k < window and window - k == step (e.g. k=10,
  window=20, step=10): there `start + step == 0` holds before the first window and the list is
  not reranked at all. Its `start + step != 0` test exists to skip a redundant tail window
  ((0,20) followed by (0,10)); it does so, and after a clamped window it always stops, so for
  k=25 it also yields (5,25), (0,15). Current castorini/rank_llm
  (`_sliding_windows_batched_async`) first clamps window to k and agrees with this module.
* RankGPT's original loop (`while start >= 0`) stops as soon as the next start would be negative,
  so whenever (k - window) is not a multiple of step the top of the list is never reranked
  (k=25: only (5,25)), and a list shorter than the window is not reranked at all.

Several passes are the caller's loop; `passes_schedule` lists them.
"""

from __future__ import annotations

import operator


def _int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check(k, window, step) -> tuple[int, int, int]:
    k, window, step = _int("k", k), _int("window", window), _int("step", step)
    if k < 0:
        raise ValueError(f"k (number of candidates to rerank) must be >= 0, got {k}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if step > window:
        raise ValueError(
            f"step ({step}) must not exceed window ({window}): consecutive windows would leave "
            f"{step - window} passage(s) between them that no window reranks"
        )
    return k, window, step


def window_schedule(k: int, window: int = 20, step: int = 10) -> list[tuple[int, int]]:
    """Half-open (start, end) windows over positions 0..k, bottom of the list first."""
    k, window, step = _check(k, window, step)
    schedule: list[tuple[int, int]] = []
    end = k
    while end > 0:
        start = max(end - window, 0)
        schedule.append((start, end))
        if start == 0:
            break
        end -= step
    return schedule


def passes_schedule(k: int, window: int = 20, step: int = 10, passes: int = 1) -> list[tuple[int, int, int]]:
    """(pass_index, start, end) for `passes` full sweeps, pass 0 first."""
    passes = _int("passes", passes)
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    one = window_schedule(k, window, step)
    return [(p, start, end) for p in range(passes) for start, end in one]


def apply_permutation(items: list, start: int, end: int, permutation: list[int]) -> list:
    """A new list with items[start:end] reordered: new window position j holds old position
    permutation[j] (0-based within the window). `items` is not modified."""
    start, end = _int("start", start), _int("end", end)
    if not 0 <= start <= end <= len(items):
        raise ValueError(f"window ({start}, {end}) does not fit a list of {len(items)} items")
    size = end - start
    perm = [_int("permutation entry", p) for p in permutation]
    if sorted(perm) != list(range(size)):
        raise ValueError(f"permutation {perm} is not a permutation of range({size})")
    window = items[start:end]
    return [*items[:start], *(window[p] for p in perm), *items[end:]]
