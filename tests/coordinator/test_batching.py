"""The batching window: it widens while changes keep coming, as far as the number of
recipients makes worth it, and a quiet lobby publishes within the floor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.batching import BatchWindow


def test_quiet_lobby_keeps_the_floor() -> None:
    w = BatchWindow(0.005, 0.05, 2000)
    for t in (0.0, 1.0, 2.0, 3.5):
        assert w.opened(t, 5000) == 0.005
        w.flushed(t + w.current)


def sustained(w: BatchWindow, recipients: int, flushes: int) -> list[float]:
    """The windows of ``flushes`` batches, each change arriving just after the last
    publication (changes keep coming)."""
    t, seen = 0.0, []
    for _ in range(flushes):
        seen.append(w.opened(t, recipients))
        t += w.current
        w.flushed(t)
        t += 0.001
    return seen


def test_a_large_lobby_under_sustained_changes_widens_to_the_ceiling_and_stays() -> None:
    seen = sustained(BatchWindow(0.005, 0.05, 2000), 2000, 9)
    assert seen == [0.005, 0.01, 0.02, 0.04, 0.05, 0.05, 0.05, 0.05, 0.05]


def test_a_busy_window_widens_in_proportion_to_the_recipients() -> None:
    assert sustained(BatchWindow(0.005, 0.05, 2000), 1000, 6)[-1] == pytest.approx(0.025)
    assert sustained(BatchWindow(0.005, 0.05, 2000), 100, 6) == [0.005] * 6  # small lobby
    assert sustained(BatchWindow(0.005, 0.05, 0), 100, 6)[-1] == 0.05  # full 0: any size


def test_quiet_after_busy_returns_to_the_floor() -> None:
    w = BatchWindow(0.005, 0.05, 2000)
    sustained(w, 5000, 6)
    assert w.current == 0.05
    assert w.opened(10.0, 5000) == 0.005


def test_zero_floor_means_no_batching_ever() -> None:
    w = BatchWindow(0.0, 0.0, 2000)
    for t in (0.0, 0.001, 0.002):
        assert w.opened(t, 10_000) == 0.0
        w.flushed(t)


def test_fixed_window_when_floor_equals_ceiling() -> None:
    assert sustained(BatchWindow(0.02, 0.02, 2000), 10, 3) == [0.02] * 3


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        BatchWindow(0.05, 0.01)
    with pytest.raises(ValueError):
        BatchWindow(0.005, 0.05, -1)


bounds = st.tuples(st.floats(0.001, 0.1), st.floats(0, 0.2), st.integers(0, 50_000))
events = st.lists(st.tuples(st.floats(0, 0.3), st.integers(0, 100_000)), max_size=60)


@given(bounds, events)
def test_the_window_stays_within_its_floor_ceiling_and_reach(
    limits: tuple[float, float, int], changes: list[tuple[float, int]]
) -> None:
    floor, extra, full = limits
    w = BatchWindow(floor, floor + extra, full)
    t = 0.0
    for gap, recipients in changes:
        t += gap
        window = w.opened(t, recipients)
        assert floor <= window <= w.ceiling
        assert window <= w.reach(recipients)
        t += window
        w.flushed(t)


@given(bounds, events, st.integers(0, 100_000))
def test_a_change_after_a_quiet_spell_waits_only_the_floor(
    limits: tuple[float, float, int], changes: list[tuple[float, int]], recipients: int
) -> None:
    floor, extra, full = limits
    w = BatchWindow(floor, floor + extra, full)
    t = 0.0
    for gap, size in changes:
        t += gap
        t += w.opened(t, size)
        w.flushed(t)
    quiet = w.ceiling + 1e-9  # a spell at least as long as the widest window
    assert w.opened(t + quiet, recipients) == floor
