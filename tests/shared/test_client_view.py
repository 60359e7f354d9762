"""LobbyView: the pure bookkeeping behind LobbyClient.view."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.client import (
    DuplicateUpdate,
    InconsistentSnapshot,
    InconsistentUpdate,
    LobbyClientError,
    LobbyView,
    SequenceGap,
    ViewError,
)

KEYS = [f"{i:064x}" for i in range(12)]
A, B, C, D = KEYS[:4]
Step = tuple[frozenset[str], frozenset[str]]  # (new truth, reconnected keys)


def view_at(seq: int, *keys: str) -> LobbyView:
    view = LobbyView()
    view.apply_snapshot(seq, keys)
    return view


def test_errors_form_one_tree() -> None:
    for cls in (SequenceGap, DuplicateUpdate, InconsistentUpdate, InconsistentSnapshot):
        assert issubclass(cls, ViewError)
        assert issubclass(cls, LobbyClientError)


def test_new_view_is_empty_and_has_no_seq() -> None:
    view = LobbyView()
    assert view.seq is None
    assert view.online == frozenset()
    assert len(view) == 0


def test_snapshot_replaces_everything() -> None:
    view = view_at(3, A, B)
    view.apply_snapshot(100, [C])
    assert view.seq == 100
    assert view.online == {C}
    assert view.matches({C})
    # A snapshot may restart from any number, lower included.
    view.apply_snapshot(1, [])
    assert (view.seq, view.online) == (1, frozenset())


def test_updates_apply_in_order() -> None:
    view = view_at(7, A)
    view.apply_update(8, joined=[B], left=[])
    view.apply_update(9, joined=[C], left=[A])
    assert view.seq == 9
    assert view.online == {B, C}
    assert A not in view and B in view


def test_reconnection_is_in_both_lists() -> None:
    view = view_at(1, A, B)
    view.apply_update(2, joined=[A], left=[A])
    assert view.online == {A, B}


def test_update_before_snapshot_is_a_gap() -> None:
    view = LobbyView()
    with pytest.raises(SequenceGap) as info:
        view.apply_update(1, joined=[A], left=[])
    assert info.value.expected is None
    assert view.seq is None


@pytest.mark.parametrize("seq", [7, 12])
def test_gap_is_detected_and_changes_nothing(seq: int) -> None:
    view = view_at(5, A)
    with pytest.raises(SequenceGap) as info:
        view.apply_update(seq, joined=[B], left=[])
    assert (info.value.expected, info.value.received) == (6, seq)
    assert (view.seq, view.online) == (5, frozenset({A}))


@pytest.mark.parametrize("seq", [5, 4, -1])
def test_duplicate_or_old_update_is_detected(seq: int) -> None:
    view = view_at(5, A)
    with pytest.raises(DuplicateUpdate) as info:
        view.apply_update(seq, joined=[B], left=[])
    assert (info.value.current, info.value.received) == (5, seq)
    assert (view.seq, view.online) == (5, frozenset({A}))


def test_same_update_twice_is_a_duplicate() -> None:
    view = view_at(1)
    view.apply_update(2, joined=[A], left=[])
    with pytest.raises(DuplicateUpdate):
        view.apply_update(2, joined=[A], left=[])
    assert view.online == {A}


@pytest.mark.parametrize(
    ("joined", "left", "why"),
    [
        ([A], [], "joined while online"),
        ([], [B], "left while not online"),
        ([], [], "both lists empty"),
        ([B, B], [], "joined twice"),
        ([], [A, A], "left twice"),
        ([C], [B], "left while not online, with a valid join"),
    ],
)
def test_inconsistent_updates_are_detected(joined: list[str], left: list[str], why: str) -> None:
    view = view_at(1, A)
    with pytest.raises(InconsistentUpdate):
        view.apply_update(2, joined=joined, left=left)
    assert (view.seq, view.online) == (1, frozenset({A})), why


def test_snapshot_with_a_key_twice_is_refused() -> None:
    view = view_at(1, A)
    with pytest.raises(InconsistentSnapshot):
        view.apply_snapshot(2, [B, B])
    assert (view.seq, view.online) == (1, frozenset({A}))


# --------------------------------------------------------------------------- properties

key_sets = st.frozensets(st.sampled_from(KEYS))


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[int, frozenset[str], list[Step]]:
    """A start seq, the initial truth, and steps (new truth, reconnected keys)."""
    start = draw(st.integers(-(2**40), 2**40))
    initial = draw(key_sets)
    steps = []
    state = initial
    for new in draw(st.lists(key_sets, max_size=30)):
        both = sorted(state & new)
        reconnected = (
            frozenset(draw(st.lists(st.sampled_from(both), unique=True))) if both else frozenset()
        )
        if new == state and not reconnected:
            continue  # an update is never empty
        steps.append((new, reconnected))
        state = new
    return start, initial, steps


def deltas(
    initial: frozenset[str], steps: list[Step]
) -> list[tuple[list[str], list[str], frozenset[str]]]:
    """(joined, left, truth after) for each step, as the server would send them."""
    out = []
    state = initial
    for new, reconnected in steps:
        joined = sorted((new - state) | reconnected)
        left = sorted((state - new) | reconnected)
        out.append((joined, left, new))
        state = new
    return out


@given(valid_streams())
def test_valid_stream_reproduces_the_truth(
    stream: tuple[int, frozenset[str], list[Step]],
) -> None:
    start, initial, steps = stream
    view = view_at(start, *initial)
    for i, (joined, left, truth) in enumerate(deltas(initial, steps), start=1):
        view.apply_update(start + i, joined, left)
        assert view.online == truth
        assert view.seq == start + i


@given(valid_streams(), st.data())
def test_a_dropped_update_is_always_caught(
    stream: tuple[int, frozenset[str], list[Step]], data: st.DataObject
) -> None:
    start, initial, steps = stream
    updates = deltas(initial, steps)
    if len(updates) < 2:
        return
    dropped = data.draw(st.integers(0, len(updates) - 2))
    view = view_at(start, *initial)
    truth = initial
    for i, (joined, left, after) in enumerate(updates):
        if i == dropped:
            continue
        if i == dropped + 1:
            with pytest.raises(SequenceGap):
                view.apply_update(start + 1 + i, joined, left)
            assert view.online == truth  # unchanged: still the state before the gap
            return
        view.apply_update(start + 1 + i, joined, left)
        truth = after


@given(
    key_sets, st.integers(-3, 3), st.lists(st.sampled_from(KEYS)), st.lists(st.sampled_from(KEYS))
)
def test_any_update_is_applied_whole_or_not_at_all(
    online: frozenset[str], offset: int, joined: list[str], left: list[str]
) -> None:
    view = view_at(10, *online)
    try:
        view.apply_update(10 + offset, joined, left)
    except ViewError:
        assert (view.seq, view.online) == (10, online)
        return
    # Accepted: it was the next seq and it respected every invariant.
    assert offset == 1
    assert len(set(joined)) == len(joined) and len(set(left)) == len(left)
    assert set(left) <= online
    assert not (set(joined) - set(left)) & online
    assert view.online == (online - set(left)) | set(joined)
    assert view.seq == 11
