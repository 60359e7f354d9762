"""The interest index (pure): watchlists, routing an update to its watchers, prevs."""

from __future__ import annotations

import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.records import DEFAULT, Record
from shared.v2.client import MAX_WATCH_KEYS
from workers.interest import Changes, Entry, Interest, NotWatching, WatchlistFull

KEYS = [f"{i:064x}" for i in range(8)]
AWAY: Record = ("away", "{}")


def test_a_watchlist_holds_at_most_its_bound_and_a_refusal_changes_nothing() -> None:
    index: Interest[str] = Interest()
    many = [f"{i:064x}" for i in range(MAX_WATCH_KEYS)]
    index.follow("a", many + many[:10])  # duplicates count once
    assert len(index.keys_of("a")) == MAX_WATCH_KEYS and index.pairs == MAX_WATCH_KEYS
    with pytest.raises(WatchlistFull, match="at most 1000 keys, not 1001"):
        index.watch("a", [f"{MAX_WATCH_KEYS:064x}"])
    index.watch("a", many[:5])  # already held: nothing new
    with pytest.raises(WatchlistFull):
        index.follow("b", [f"{i:064x}" for i in range(MAX_WATCH_KEYS + 1)])
    assert not index.follows("b") and index.clients == 1 and index.pairs == MAX_WATCH_KEYS
    index.sent("a", 7)
    with pytest.raises(WatchlistFull):
        index.follow("a", [f"{i:064x}" for i in range(MAX_WATCH_KEYS + 1)])
    assert index.prev("a") == 7 and len(index.keys_of("a")) == MAX_WATCH_KEYS


def test_watch_and_unwatch_need_a_watchlist() -> None:
    index: Interest[str] = Interest()
    with pytest.raises(NotWatching):
        index.watch("a", KEYS[:1])
    with pytest.raises(NotWatching):
        index.unwatch("a", KEYS[:1])
    index.follow("a", [])  # an empty watchlist is a watchlist
    index.watch("a", KEYS[:2])
    index.unwatch("a", [KEYS[0], KEYS[5]])
    assert index.keys_of("a") == {KEYS[1]} and index.watchers(KEYS[1]) == {"a"}
    assert index.watchers(KEYS[0]) == set() and index.keys == 1


def test_follow_replaces_and_forget_clears_both_directions() -> None:
    index: Interest[str] = Interest()
    index.follow("a", KEYS[:3])
    index.follow("b", KEYS[2:4])
    index.follow("a", KEYS[1:2])
    assert index.watchers(KEYS[0]) == set() and index.watchers(KEYS[2]) == {"b"}
    assert (index.clients, index.keys, index.pairs) == (2, 3, 3)
    index.forget("b")
    index.forget("b")
    index.forget("a")
    assert (index.clients, index.keys, index.pairs, index.bytes) == (0, 0, 0, 0)


def test_route_gives_each_watcher_its_keys_with_a_chained_prev() -> None:
    index: Interest[str] = Interest()
    index.follow("a", KEYS[:2])
    index.follow("b", KEYS[1:3])
    index.follow("late", KEYS[:3])  # no snapshot sent yet: no updates
    index.sent("a", 10)
    index.sent("b", 11)
    one = (KEYS[1], AWAY)
    routed = index.route(12, [(KEYS[0], DEFAULT)], [one], [KEYS[0], KEYS[7]])
    assert routed == {
        "a": Changes.of(12, 10, [(KEYS[0], DEFAULT)], [one], [KEYS[0]]),
        "b": Changes.of(12, 11, [], [one], []),
    }
    assert index.route(13, [], [], [KEYS[7]]) == {}  # nobody watches it
    assert index.route(14, [], [], [KEYS[2]]) == {"b": Changes.of(14, 12, [], [], [KEYS[2]])}
    assert index.prev("a") == 12 and index.prev("b") == 14 and index.prev("late") is None
    index.sent("b", 20)  # a snapshot already holding update 20
    assert index.route(20, [], [], [KEYS[2]]) == {}
    index.watch("a", KEYS[3:4])  # a fresh snapshot is due: no updates until it is sent
    assert index.prev("a") is None and index.route(21, [], [], [KEYS[0]]) == {}


class Counted:
    """A client handle that counts how often it is hashed (each set or dict step)."""

    hashes = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        Counted.hashes += 1
        return self.n


def test_route_costs_the_watchers_of_the_changed_keys_not_all_clients() -> None:
    index: Interest[Counted] = Interest()
    clients = [Counted(n) for n in range(5000)]
    for client in clients:
        index.follow(client, [f"{client.n:064x}"])
        index.sent(client, 0)
    Counted.hashes = 0
    routed = index.route(1, [], [(f"{7:064x}", AWAY)], [f"{9:064x}", f"{99999:064x}"])
    assert {c.n for c in routed} == {7, 9}
    assert Counted.hashes <= 10


def test_the_byte_estimate_is_near_what_tracemalloc_measures() -> None:
    pool = [os.urandom(32).hex() for _ in range(4000)]
    tracemalloc.start()
    try:
        index: Interest[int] = Interest()
        before = tracemalloc.get_traced_memory()[0]
        for client in range(200):
            index.follow(client, pool[client * 13 : client * 13 + 100])
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.66 < index.bytes / measured < 1.5, (index.bytes, measured)


# ------------------------------------------------------------------ property

_few = KEYS[:4]
_keys = st.lists(st.sampled_from(_few), min_size=1, max_size=3)
_entries = st.lists(
    st.tuples(st.sampled_from(_few), st.sampled_from([DEFAULT, AWAY])),
    max_size=4,
    unique_by=lambda e: e[0],
)
_client = st.sampled_from("abc")
_step = st.one_of(
    st.tuples(st.just("follow"), _client, _keys),
    st.tuples(st.just("watch"), _client, _keys),
    st.tuples(st.just("unwatch"), _client, _keys),
    st.tuples(st.just("forget"), _client, st.just([])),
    st.tuples(st.just("sent"), _client, st.just([])),
    st.tuples(st.just("update"), _entries, _entries, _keys),
    st.tuples(st.just("update"), _entries, _entries, _keys),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_step, min_size=8, max_size=25))
def test_clients_get_exactly_their_watched_changes_and_prevs_chain(steps: list) -> None:
    index: Interest[str] = Interest()
    lists: dict[str, set[str]] = {}
    last: dict[str, int] = {}  # clients sent a snapshot: the seq of their last frame
    seq = 0
    for step in steps:
        seq += 1
        kind = step[0]
        if kind == "update":
            joined, updated, left = step[1], step[2], step[3]
            routed = index.route(seq, joined, updated, left)
            for client, watched in lists.items():
                got = _only(watched, joined, updated, left)
                if client not in last or not (got[0] or got[1] or got[2]):
                    assert client not in routed
                    continue
                assert routed[client] == Changes.of(seq, last[client], *got)
                last[client] = seq
            assert set(routed) <= set(last)
        else:
            _change(index, lists, last, seq, step)
        for client in "abc":
            assert index.keys_of(client) == lists.get(client, set())
            assert index.prev(client) == last.get(client)
        for key in KEYS:
            assert index.watchers(key) == {c for c, w in lists.items() if key in w}
        assert index.pairs == sum(map(len, lists.values())) and index.clients == len(lists)


def _change(
    index: Interest[str],
    lists: dict[str, set[str]],
    last: dict[str, int],
    seq: int,
    step: tuple[str, str, list[str]],
) -> None:
    """Carry out a step that changes the index, and the same on the model."""
    kind, client, keys = step
    if kind == "sent":
        index.sent(client, seq)
        if client in lists:
            last[client] = seq
        return
    if kind in ("watch", "unwatch") and client not in lists:
        with pytest.raises(NotWatching):
            getattr(index, kind)(client, keys)
        return
    last.pop(client, None)  # a new watchlist: no updates before its snapshot
    if kind == "follow":
        index.follow(client, keys)
        lists[client] = set(keys)
    elif kind == "watch":
        index.watch(client, keys)
        lists[client] |= set(keys)
    elif kind == "unwatch":
        index.unwatch(client, keys)
        lists[client] -= set(keys)
    else:
        index.forget(client)
        lists.pop(client, None)


def _only(
    watched: set[str], joined: list[Entry], updated: list[Entry], left: list[str]
) -> tuple[list[Entry], list[Entry], list[str]]:
    return (
        [e for e in joined if e[0] in watched],
        [e for e in updated if e[0] in watched],
        [k for k in left if k in watched],
    )


def test_a_watchlist_of_20_keys_costs_the_index_under_3_kib() -> None:
    """The scale shape (every user watches 20 contacts): each client's list is a tuple,
    not a set (2.2 KiB for 20 keys); each key's watchers stay a set (routing reads it)."""
    pool = [os.urandom(32).hex() for _ in range(2000)]
    tracemalloc.start()
    try:
        index: Interest[int] = Interest()
        before = tracemalloc.get_traced_memory()[0]
        for client in range(2000):
            index.follow(client, [pool[(client * 7 + j * 31) % 2000] for j in range(20)])
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert measured / 2000 < 3 * 1024
    index.watch(5, [pool[0]])
    index.unwatch(5, [pool[35]])
    want = {pool[(5 * 7 + j * 31) % 2000] for j in range(20)} - {pool[35]} | {pool[0]}
    assert index.keys_of(5) == want
    assert set(index.route(1, [], [], [pool[0]])) == set()  # no snapshot sent yet
