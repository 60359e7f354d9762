"""Flaps: a key that leaves and joins again within the window, counted at publication."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.flaps import FLAP_WINDOW, FlapCounter

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_a_leave_and_a_join_within_the_window_is_one_flap() -> None:
    flaps = FlapCounter()
    assert flaps.published([A, B], [], now=0.0) == 0  # joins alone are no flap
    assert flaps.published([], [A], now=1.0) == 0
    assert flaps.published([A], [], now=1.0 + FLAP_WINDOW) == 1
    assert flaps.published([], [A], now=20.0) == 0
    assert flaps.published([A], [], now=20.0 + FLAP_WINDOW + 0.01) == 0  # too late
    assert flaps.total == 1


def test_a_key_that_left_and_joined_in_one_update_flapped() -> None:
    """A reconnect inside one batching window: clients see it leave and join again."""
    flaps = FlapCounter()
    assert flaps.published([A], [A], now=5.0) == 1
    assert len(flaps) == 0  # counted once, forgotten


def test_a_flap_is_counted_once_per_leave() -> None:
    flaps = FlapCounter()
    flaps.published([], [A], now=0.0)
    assert flaps.published([A], [], now=1.0) == 1
    assert flaps.published([A], [], now=2.0) == 0  # (a join without a leave between)


def test_memory_is_bounded_and_old_entries_expire() -> None:
    flaps = FlapCounter(window=10.0, limit=2)
    flaps.published([], [A, B, C], now=0.0)
    assert len(flaps) == 2  # the oldest went first
    assert flaps.published([A], [], now=1.0) == 0  # forgotten: a missed flap, not a wrong one
    assert flaps.published([B, C], [], now=1.0) == 2
    flaps.published([], [A], now=2.0)
    flaps.published([], [], now=12.5)
    assert len(flaps) == 0


@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from([A, B, C])), st.sets(st.sampled_from([A, B, C]))),
        max_size=30,
    )
)
def test_never_more_flaps_than_joins_and_never_more_memory_than_the_limit(
    updates: list[tuple[set[str], set[str]]],
) -> None:
    flaps = FlapCounter(limit=2)
    joins = 0
    for i, (joined, left) in enumerate(updates):
        flaps.published(sorted(joined), sorted(left), now=float(i))
        joins += len(joined)
        assert len(flaps) <= 2
    assert 0 <= flaps.total <= joins
