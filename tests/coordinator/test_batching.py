"""The adaptive batching window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.batching import BatchWindow


def test_quiet_lobby_keeps_the_floor() -> None:
    w = BatchWindow(0.005, 0.05)
    for t in (0.0, 1.0, 2.0, 3.5):
        w.flushed(t)
        assert w.current == 0.005


def test_sustained_changes_widen_to_the_ceiling_then_quiet_resets() -> None:
    w = BatchWindow(0.005, 0.05)
    t = 0.0
    seen = []
    for _ in range(6):
        w.flushed(t)
        seen.append(w.current)
        t += w.current  # the next flush comes as soon as the window allows
    assert seen == [0.005, 0.01, 0.02, 0.04, 0.05, 0.05]
    w.flushed(t + 1.0)
    assert w.current == 0.005


def test_zero_floor_means_no_batching_ever() -> None:
    w = BatchWindow(0.0, 0.05)
    for t in (0.0, 0.001, 0.002):
        w.flushed(t)
        assert w.current == 0.0


def test_fixed_window_when_floor_equals_ceiling() -> None:
    w = BatchWindow(0.02, 0.02)
    w.flushed(0.0)
    w.flushed(0.02)
    assert w.current == 0.02


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        BatchWindow(0.05, 0.01)


@given(st.lists(st.floats(0, 2, allow_nan=False), max_size=60))
def test_window_stays_within_bounds(gaps: list[float]) -> None:
    w = BatchWindow(0.005, 0.05)
    t = 0.0
    for gap in gaps:
        t += gap
        w.flushed(t)
        assert 0.005 <= w.current <= 0.05
