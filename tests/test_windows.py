"""The sliding-window schedule."""

from __future__ import annotations

import pytest

from reasonrank.windows import apply_permutation, passes_schedule, window_schedule


def test_top100_window20_step10():
    assert window_schedule(100, 20, 10) == [
        (80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40), (10, 30), (0, 20),
    ]
    assert window_schedule(100) == window_schedule(100, 20, 10)


@pytest.mark.parametrize("k, expected", [
    (0, []),
    (1, [(0, 1)]),
    (10, [(0, 10)]),  # RankLLM's legacy loop yields no window here (window - k == step)
    (20, [(0, 20)]),
    (25, [(5, 25), (0, 15)]),
    (30, [(10, 30), (0, 20)]),
    (31, [(11, 31), (1, 21), (0, 11)]),
])
def test_short_lists(k, expected):
    assert window_schedule(k, 20, 10) == expected


def test_other_shapes():
    assert window_schedule(100, 20, 20) == [(80, 100), (60, 80), (40, 60), (20, 40), (0, 20)]
    assert window_schedule(5, 2, 1) == [(3, 5), (2, 4), (1, 3), (0, 2)]
    assert window_schedule(3, 1, 1) == [(2, 3), (1, 2), (0, 1)]


@pytest.mark.parametrize("k", range(0, 61))
@pytest.mark.parametrize("window, step", [(20, 10), (20, 20), (7, 3), (1, 1)])
def test_invariants(k, window, step):
    schedule = window_schedule(k, window, step)
    covered = set()
    for start, end in schedule:
        assert 0 <= start < end <= k and end - start <= window
        covered.update(range(start, end))
    assert covered == set(range(k))
    if k:
        assert schedule[0][1] == k and schedule[-1][0] == 0
        assert sum(1 for s, _ in schedule if s == 0) == 1  # no redundant tail window


def test_passes():
    assert passes_schedule(25, 20, 10, passes=2) == [(0, 5, 25), (0, 0, 15), (1, 5, 25), (1, 0, 15)]
    assert len(passes_schedule(100, 20, 10, passes=3)) == 27
    assert passes_schedule(100, passes=0) == []


@pytest.mark.parametrize("args", [
    (10, 0, 1), (10, 20, 0), (10, 20, -5), (10, 20, 21), (-1, 20, 10), (10.0, 20, 10), (10, 20.5, 10), (10, True, 1),
])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        window_schedule(*args)


def test_step_larger_than_window_message():
    with pytest.raises(ValueError, match=r"step \(30\) must not exceed window \(20\)"):
        window_schedule(100, 20, 30)
    with pytest.raises(ValueError):
        passes_schedule(100, 20, 10, passes=-1)


def test_apply_permutation():
    items = list("abcdefg")
    assert apply_permutation(items, 2, 5, [2, 0, 1]) == list("abecdfg")
    assert items == list("abcdefg")  # not modified
    assert apply_permutation(items, 0, 0, []) == items
    assert apply_permutation(items, 0, 7, list(range(7))[::-1]) == list("gfedcba")


@pytest.mark.parametrize("start, end, perm", [
    (2, 5, [0, 1]), (2, 5, [0, 1, 1]), (2, 5, [0, 1, 3]), (5, 2, []), (0, 8, list(range(8))), (-1, 2, [0, 1, 2]),
])
def test_apply_permutation_rejects(start, end, perm):
    with pytest.raises(ValueError):
        apply_permutation(list("abcdefg"), start, end, perm)


def test_full_sweep_bubbles_bottom_item_to_top():
    # A window model that puts the 'best' item first carries it from the bottom to the top in one pass.
    items = list(range(100))
    for start, end in window_schedule(100, 20, 10):
        window = items[start:end]
        best = window.index(99)
        perm = [best] + [i for i in range(len(window)) if i != best]
        items = apply_permutation(items, start, end, perm)
    assert items[0] == 99
