"""The resume ring (pure): bounds, coverage, and net effects that rebuild the lobby."""

from __future__ import annotations

import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import backbone as bb
from shared.records import DEFAULT, Record
from workers.interest import Changes
from workers.replica import Replica
from workers.ring import (
    HELD_PER_CHANGE,
    HELD_PER_RETURN,
    MAX_AGE,
    MAX_BYTES,
    Ring,
    bytes_to_cover,
    held_size,
)
from workers.scopes import Scopes

A, B, C, D = (f"{i:064x}" for i in range(4))
AWAY: Record = ("away", "{}")
BUSY: Record = ("busy", '{"n":1}')

Lobby = dict[str, Record]


def test_defaults_are_the_documented_ones() -> None:
    ring = Ring()
    assert (ring.max_bytes, ring.max_age) == (MAX_BYTES, MAX_AGE) == (8 * 1024 * 1024, 60.0)
    with pytest.raises(ValueError, match="must not be negative"):
        Ring(max_age=-1)


def test_nothing_is_held_before_an_epoch_and_a_gap_starts_afresh() -> None:
    ring = Ring()
    ring.append(1, 0.0, [(A, DEFAULT)])
    assert len(ring) == 0 and not ring.covers("e", 0, 0.0)
    ring.reset("e", 10)
    assert ring.covers("e", 10, 0.0) and ring.since("e", 10) == Changes.of(10, 10)
    ring.append(11, 1.0, [(A, DEFAULT)])
    ring.append(11, 1.0, [(B, DEFAULT)])  # a duplicate: ignored
    assert ring.since("e", 10) == Changes.of(11, 10, [(A, DEFAULT)])
    ring.append(13, 2.0, left=[A])  # 12 never came: nothing before it can be resumed
    assert (ring.base, ring.newest) == (12, 13)
    assert not ring.covers("e", 11, 2.0) and ring.covers("e", 12, 2.0)
    assert ring.since("e", 11) is None and ring.since("e", 14) is None
    assert ring.since("other", 12) is None and not ring.covers("other", 12, 2.0)
    ring.reset("f", 3)
    assert (len(ring), ring.bytes, ring.base) == (0, 0, 3) and not ring.covers("e", 13, 2.0)


def test_the_oldest_go_past_either_bound() -> None:
    one = held_size([(A, DEFAULT)], [], [])
    ring = Ring(max_bytes=3 * one, max_age=10.0)
    ring.reset("e", 0)
    for seq in range(1, 6):
        ring.append(seq, float(seq), [(A, DEFAULT)])
    assert (ring.base, ring.newest, ring.held_bytes) == (2, 5, 3 * one)
    assert ring.covers("e", 2, 11.9) and not ring.covers("e", 1, 11.9)
    assert not ring.covers("e", 2, 13.5) and ring.base == 3  # update 3 is 10.5 s old
    assert ring.covers("e", 5, 100.0) and len(ring) == 0  # nothing since: resumable
    ring.append(6, 101.0, [(f"{i:064x}", DEFAULT) for i in range(10)])  # alone too big
    assert (len(ring), ring.base, ring.held_bytes) == (0, 6, 0)


def test_the_net_effect_follows_the_first_event_of_each_key() -> None:
    ring = Ring()
    ring.reset("e", 0)  # A and B online at 0 (B away), C and D offline
    ring.append(1, 0.0, joined=[(C, DEFAULT)], left=[A])
    ring.append(2, 0.0, joined=[(A, BUSY), (D, DEFAULT)], left=[B])  # A back; B gone
    ring.append(3, 0.0, joined=[(B, AWAY)], updated=[(C, AWAY)], left=[D])  # B back; D gone
    net = ring.since("e", 0)
    assert net == Changes.of(3, 0, [(C, AWAY)], [(A, BUSY), (B, AWAY)], [])
    assert ring.since("e", 1) == Changes.of(3, 1, [(A, BUSY)], [(B, AWAY), (C, AWAY)], [])
    assert ring.since("e", 2, {B, D, "f" * 64}) == Changes.of(3, 2, [(B, AWAY)], [], [D])
    assert ring.since("e", 0, {C}) == Changes.of(3, 0, [(C, AWAY)], [], [])
    ring.append(4, 0.0, left=[C])
    assert ring.since("e", 0, {C, D}) == Changes.of(4, 0)  # offline at 0 and now
    assert ring.since("e", 3) == Changes.of(4, 3, left=[C])


def test_a_herd_resuming_from_one_view_shares_one_net_effect() -> None:
    ring = Ring(max_age=10.0)
    ring.reset("e", 0)
    ring.append(1, 0.0, [(A, DEFAULT), (B, DEFAULT)])
    held = ring.bytes
    first = ring.since("e", 0)
    assert ring.bytes > held  # the kept net effect is charged
    assert ring.since("e", 0) == first and ring.since("e", 0, {B}) == Changes.of(
        1, 0, [(B, DEFAULT)]
    )
    ring.append(2, 0.0, left=[A])  # folded into the kept one, which is still charged
    assert ring.bytes > ring.held_bytes and ring.since("e", 0) == Changes.of(2, 0, [(B, DEFAULT)])
    ring.trim(100.0)  # its view can no longer be resumed: dropped
    assert ring.bytes == ring.held_bytes == 0


def test_the_byte_estimate_is_near_what_tracemalloc_measures() -> None:
    def key() -> str:
        return os.urandom(32).hex()

    ring = Ring(max_bytes=1 << 40, max_age=1e9)
    ring.reset("e", 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seq in range(1, 301):
            status, data = "away", '{"name":"Ada"}'
            joined = [(key(), ("online", "{}")) for _ in range(3)]
            updated, left = [(key(), (status, data))], [key() for _ in range(3)]
            was = {updated[0][0]: DEFAULT, left[0]: DEFAULT}
            was.update((k, ("busy", f'{{"n":{seq}}}')) for k in left[1:])  # the ring's alone
            ring.append(seq, 0.0, joined, updated, left, was)
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.66 < ring.held_bytes / measured < 1.5, (ring.held_bytes, measured)


# ------------------------------------------------------------------ properties

KEYS = [f"{i:064x}" for i in range(6)]
RECORDS = [DEFAULT, AWAY, BUSY]


@st.composite
def lobby_history(draw: st.DrawFn) -> tuple[Lobby, list[tuple[list, list, list]]]:
    """A starting lobby and a list of updates, each a valid net change of the lobby it
    applies to: leaves, reconnections (left and joined), joins and record changes."""
    start = {k: draw(st.sampled_from(RECORDS)) for k in KEYS if draw(st.booleans())}
    lobby = dict(start)
    updates = []
    for _ in range(draw(st.integers(0, 12))):
        joined, updated, left = [], [], []
        for key in KEYS:
            online = key in lobby
            move = draw(
                st.sampled_from(
                    ["stay", "leave", "reconnect", "change"] if online else ["stay", "join"]
                )
            )
            record = draw(st.sampled_from(RECORDS))
            if move == "leave":
                left.append(key)
            elif move == "reconnect":
                left.append(key)
                joined.append((key, record))
            elif move == "join":
                joined.append((key, record))
            elif move == "change" and record != lobby[key]:
                updated.append((key, record))
        _apply(lobby, joined, updated, left)
        updates.append((joined, updated, left))
    return start, updates


def _apply(view: Lobby, joined: list, updated: list, left: list) -> None:
    """The protocol's rule: remove ``left``, then set ``joined`` and ``updated``."""
    for key in left:
        view.pop(key, None)
    view.update(joined)
    view.update(updated)


@settings(max_examples=150, deadline=None)
@given(
    lobby_history(),
    st.integers(500, 20_000),
    st.lists(st.sampled_from(KEYS), unique=True),
)
def test_a_view_at_s_with_the_net_effect_applied_is_the_lobby_now(
    history: tuple[Lobby, list],
    max_bytes: int,
    watched: list[str],
) -> None:
    start, updates = history
    ring = Ring(max_bytes=max_bytes)
    ring.reset("e", 0)
    views = [dict(start)]  # the lobby at each seq
    for seq, (joined, updated, left) in enumerate(updates, 1):
        ring.append(seq, 0.0, joined, updated, left)
        views.append(dict(views[-1]))
        _apply(views[-1], joined, updated, left)
    now = views[-1]
    keys = set(watched)
    for s in range(ring.base, ring.newest + 1):
        assert ring.covers("e", s, 0.0)
        for scope in (None, keys):
            net = ring.since("e", s, scope)
            assert net is not None and (net.seq, net.prev) == (len(updates), s)
            held = {k: r for k, r in views[s].items() if scope is None or k in scope}
            # A joined key was not in the view, a left or updated key was.
            assert not {k for k, _ in net.joined} & held.keys()
            assert set(net.left) | {k for k, _ in net.updated} <= held.keys()
            assert not set(net.left) & {k for k, _ in net.updated}
            _apply(held, list(net.joined), list(net.updated), list(net.left))
            assert held == {k: r for k, r in now.items() if scope is None or k in scope}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(0, 3), st.booleans()),  # joins, delay, gap
        max_size=20,
    ),
    st.integers(0, 2000),
    st.floats(0.5, 6),
)
def test_the_ring_keeps_its_bounds_and_covers_exactly_what_it_fully_holds(
    steps: list[tuple[int, float, bool]], max_bytes: int, max_age: float
) -> None:
    ring = Ring(max_bytes=max_bytes, max_age=max_age)
    ring.reset("e", 0)
    appended: list[tuple[int, float, int]] = []  # (seq, at, size) of each update taken
    joins_at: dict[int, int] = {}
    start = 0  # updates before it are behind a gap: never resumable
    seq, now = 0, 0.0
    for joins, delay, gap in steps:
        now += delay
        seq += 2 if gap else 1
        joined = [(KEYS[i], DEFAULT) for i in range(joins)]
        ring.append(seq, now, joined)
        if gap:
            start = seq - 1
        appended.append((seq, now, held_size(joined, [], [])))
        assert ring.held_bytes <= max_bytes
        # The model: an update is held iff it and everything after it fit the byte
        # bound, it is not older than max_age, and it follows the last gap.
        kept = [
            s
            for i, (s, at, _) in enumerate(appended)
            if s > start
            and sum(size for _, _, size in appended[i:]) <= max_bytes
            and at >= now - max_age
        ]
        base = kept[0] - 1 if kept else seq
        for s in range(0, seq + 2):
            assert ring.covers("e", s, now) == (base <= s <= seq), (s, base, seq)
            assert not ring.covers("f", s, now)
        assert (ring.base, len(ring)) == (base, len(kept))
        # The per-key index holds the keys of the updates held, and no others.
        joins_at[seq] = joins
        held = sorted((s, KEYS[i]) for s in kept for i in range(joins_at[s]))
        indexed = sorted((e[0], k) for k, events in ring._index.events.items() for e in events)
        assert indexed == held


# ------------------------------------------------------------------ returns unchanged


def _through_a_replica(start: Lobby, updates: list[tuple[list, list, list]]) -> Scopes:
    """The history applied as the worker applies it: backbone updates into a live
    replica, whose forwards the scopes (and so the ring) take."""
    replica = Replica()
    replica.on_welcome(bb.Welcome("e"))
    others = [(k, *r) for k, r in start.items() if r != DEFAULT]
    replica.on_snapshot(bb.Snapshot("e", 0, 0, sorted(start), others))
    scopes = Scopes(ring_bytes=1 << 30)
    scopes.resynced(replica)
    for seq, (joined, updated, left) in enumerate(updates, 1):
        listed = [(k, *r) for k, r in joined if r != DEFAULT]
        update = bb.Update(
            "e", seq, seq, [k for k, _ in joined], left, 0.0, [(k, *r) for k, r in updated], listed
        )
        scopes.published(replica.on_update(update), len(replica.users), 0.0)
    return scopes


@settings(max_examples=150, deadline=None)
@given(lobby_history(), st.lists(st.sampled_from(KEYS), unique=True))
def test_the_net_effect_lists_no_key_whose_state_at_s_is_its_state_now(
    history: tuple[Lobby, list], watched: list[str]
) -> None:
    start, updates = history
    ring = _through_a_replica(start, updates).ring
    views = [dict(start)]
    for joined, updated, left in updates:
        views.append(dict(views[-1]))
        _apply(views[-1], joined, updated, left)
    now = views[-1]
    for s in range(ring.base, ring.newest + 1):
        for scope in (None, set(watched)):
            net = ring.since("e", s, scope)
            assert net is not None
            listed = [k for k, _ in (*net.joined, *net.updated)] + list(net.left)
            same = [k for k in listed if views[s].get(k) == now.get(k)]
            assert not same, (s, same)


def test_the_users_of_a_killed_worker_back_unchanged_are_no_news() -> None:
    mine = {f"{i:064x}": (AWAY, DEFAULT)[i % 2] for i in range(200)}  # on the live worker
    theirs = {f"{i:064x}": (BUSY, DEFAULT)[i % 2] for i in range(200, 1200)}  # killed
    gone = list(theirs)
    updates: list[tuple[list, list, list]] = [([], [], gone)]  # the killed worker's users go
    back = iter(theirs.items())
    for _ in range(0, 900, 100):  # 900 of them come back, 100 to an update
        updates.append(([next(back) for _ in range(100)], [], []))
    updates.append(([], [(gone[0], AWAY)], []))  # one back with another record
    ring = _through_a_replica({**mine, **theirs}, updates).ring
    before = ring.newest - len(updates)
    assert ring.since("e", before) == Changes.of(
        ring.newest, before, [], [(gone[0], AWAY)], gone[900:]
    )
    watching = {gone[0], gone[1], gone[950], next(iter(mine))}
    assert ring.since("e", before, watching) == Changes.of(
        ring.newest, before, [], [(gone[0], AWAY)], [gone[950]]
    )
    back_since_1 = [(gone[0], AWAY)] + [(key, theirs[key]) for key in gone[1:900]]
    assert ring.since("e", 1) == Changes.of(ring.newest, 1, back_since_1, [], [])


def test_the_sizing_rule_matches_what_a_ring_holds() -> None:
    """bytes_to_cover's figures per change and per returning user are the ring's own
    estimates, within 10%: status changes in windows of 20 (each replacing a status
    set before), then users with a status set back on new connections."""
    keys = [f"{i:064x}" for i in range(2000)]
    ring = Ring(max_bytes=1 << 40, max_age=1e9)
    ring.reset("e", 0)
    for w in range(50):
        window = keys[w * 20 : (w + 1) * 20]
        was = {k: AWAY for k in window}  # each replaces a status set before
        ring.append(w + 1, 0.0, updated=[(k, (f"s-{w}", "")) for k in window], was=was)
    per_change = ring.bytes / 1000
    assert abs(per_change - HELD_PER_CHANGE) < 0.1 * HELD_PER_CHANGE
    before = ring.bytes
    for w in range(50):
        window = keys[1000 + w * 20 : 1000 + (w + 1) * 20]
        joined = [(k, DEFAULT) for k in window]
        ring.append(51 + w, 0.0, joined, left=window, was={k: AWAY for k in window})
    per_return = (ring.bytes - before) / 1000
    assert abs(per_return - HELD_PER_RETURN) < 0.1 * HELD_PER_RETURN
    assert bytes_to_cover(0, 60, 0) == 0
    assert bytes_to_cover(1000, 60, 5000) == 35 * 2**20  # 32.4 MB + 3.95 MB, whole MiB
