"""The worker's indexes for watch and count clients, and its resume ring, wired
together (workers.scopes)."""

from __future__ import annotations

from shared import backbone as bb
from shared import v2
from workers.counts import Count
from workers.replica import Forward, Replica
from workers.scopes import Scopes

K1, K2 = ("11" * 32, "22" * 32)
WATCH = v2.Scope.WATCH


def live(keys: list[str]) -> Replica:
    replica = Replica()
    replica.on_welcome(bb.Welcome("e1"))
    replica.on_snapshot(bb.Snapshot("e1", 7, 3, keys, [(K1, "away", "{}")]))
    return replica


def publish(scopes: Scopes, replica: Replica, update: bb.Update) -> dict[int, v2.Update]:
    replica.on_update(update)
    routed = scopes.published([Forward(update.seq, "", 0.0, update)], len(replica.users), 1.0)
    assert all(len(frames) == 1 for frames in routed.values())
    decoded = {conn: v2.decode_server_frame_v2(frames[0]) for conn, frames in routed.items()}
    assert all(isinstance(u, v2.Update) for u in decoded.values())
    return decoded  # type: ignore[return-value]


def test_two_updates_of_one_batch_reach_a_watcher_as_two_frames_chained_by_prev() -> None:
    scopes, replica = Scopes(), live([K1])
    scopes.resynced(replica)
    scopes.choose(1, v2.Follow(WATCH, (K1, K2)))
    scopes.fresh(1, WATCH, replica, 0.0)
    batch = [
        bb.Update("e1", 8, 3, [], [], 0.0, [(K1, "busy", "{}")]),
        bb.Update("e1", 9, 4, [K2], [], 0.0),
    ]
    for update in batch:
        replica.on_update(update)
    routed = scopes.published([Forward(u.seq, "", 0.0, u) for u in batch], 2, 1.0)
    frames = [v2.decode_server_frame_v2(frame) for frame in routed[1]]
    assert [(f.seq, f.prev) for f in frames if isinstance(f, v2.Update)] == [(8, 7), (9, 8)]


def test_an_update_reaches_the_watchers_of_its_keys_each_after_its_own_last_frame() -> None:
    scopes, replica = Scopes(), live([K1])
    scopes.resynced(replica)
    scopes.choose(1, v2.Follow(WATCH, (K1,)))
    scopes.choose(2, v2.Follow(WATCH, (K2,)))
    assert publish(scopes, replica, bb.Update("e1", 8, 3, [], [], 0.0)) == {}  # no snapshot yet
    first = v2.decode_server_frame_v2(scopes.fresh(1, WATCH, replica, 0.0))
    assert isinstance(first, v2.Snapshot) and first.scope is WATCH and first.seq == 8
    assert [(e.key, e.record) for e in first.entries] == [(K1, v2.Record("away"))]
    empty = v2.decode_server_frame_v2(scopes.fresh(2, WATCH, replica, 0.0))
    assert isinstance(empty, v2.Snapshot) and empty.entries == ()

    got = publish(scopes, replica, bb.Update("e1", 9, 3, [], [], 0.0, [(K1, "busy", "{}")]))
    assert list(got) == [1] and (got[1].seq, got[1].prev) == (9, 8)
    got = publish(scopes, replica, bb.Update("e1", 10, 4, [K2], [], 0.0))
    assert list(got) == [2] and (got[2].seq, got[2].prev) == (10, 8)
    assert [e.key for e in got[2].joined] == [K2]
    got = publish(scopes, replica, bb.Update("e1", 11, 5, [], [K1], 0.0))
    assert list(got) == [1] and (got[1].seq, got[1].prev, got[1].left) == (11, 9, (K1,))

    # Every update is held for resume, and counted.
    assert (scopes.ring.base, scopes.ring.newest) == (7, 11)
    assert scopes.counts.current == Count(1, 11)
    held = scopes.memory
    assert held > 0
    scopes.forget(1)
    scopes.forget(2)
    assert scopes.memory < held and scopes.interest.clients == 0


def test_a_resync_starts_the_ring_afresh_and_a_count_follower_gets_the_number() -> None:
    scopes, replica = Scopes(), live([K1, K2])
    scopes.resynced(replica)
    publish(scopes, replica, bb.Update("e1", 8, 4, [], [K2], 0.0))
    assert len(scopes.ring) == 1
    scopes.resynced(replica)
    assert len(scopes.ring) == 0 and scopes.ring.base == 8
    count = v2.decode_server_frame_v2(scopes.fresh(3, v2.Scope.COUNT, replica, 0.0))
    assert count == v2.Count("e1", 8, 1)
    assert 3 in scopes.counts


def test_a_resume_is_the_net_effect_for_the_scope_when_the_ring_covers_the_view() -> None:
    scopes, replica = Scopes(ring_age=10.0), live([K1])
    scopes.resynced(replica)
    publish(scopes, replica, bb.Update("e1", 8, 4, [K2], [], 0.0))
    publish(scopes, replica, bb.Update("e1", 9, 5, [], [K1], 0.0))
    scopes.choose(4, v2.Follow(WATCH, (K2,)))
    update = scopes.resume(4, WATCH, v2.Resume("e1", 7), replica, now=1.0)
    assert update is not None
    resumed = v2.decode_server_frame_v2(update)
    assert isinstance(resumed, v2.Update) and (resumed.seq, resumed.prev) == (9, 7)
    assert [e.key for e in resumed.joined] == [K2] and resumed.left == ()  # K1: not watched
    assert scopes.interest.prev(4) == 9  # its next update follows on
    whole = scopes.resume(5, v2.Scope.LOBBY, v2.Resume("e1", 8), replica, now=1.0)
    assert whole is not None
    decoded = v2.decode_server_frame_v2(whole)
    assert isinstance(decoded, v2.Update) and decoded.left == (K1,) and not decoded.joined
    # Not covered: another epoch, a view newer than the replica, too old, or the count.
    for view, now in ((v2.Resume("e0", 8), 1.0), (v2.Resume("e1", 10), 1.0)):
        assert scopes.resume(5, v2.Scope.LOBBY, view, replica, now) is None
    assert scopes.resume(6, v2.Scope.COUNT, v2.Resume("e1", 8), replica, 1.0) is None
    assert scopes.resume(5, v2.Scope.LOBBY, v2.Resume("e1", 8), replica, now=11.5) is None


def test_a_herd_resuming_the_whole_lobby_from_one_view_shares_one_frame() -> None:
    scopes, replica = Scopes(), live([K1])
    scopes.resynced(replica)
    publish(scopes, replica, bb.Update("e1", 8, 4, [K2], [], 0.0))
    first = scopes.resume(5, v2.Scope.LOBBY, v2.Resume("e1", 7), replica, 1.0)
    assert first is not None and scopes.memory >= len(first)
    assert scopes.resume(6, v2.Scope.LOBBY, v2.Resume("e1", 7), replica, 1.0) is first
    publish(scopes, replica, bb.Update("e1", 9, 5, [], [K1], 0.0))  # the lobby moved on
    later = scopes.resume(7, v2.Scope.LOBBY, v2.Resume("e1", 7), replica, 1.0)
    assert later is not None
    decoded = v2.decode_server_frame_v2(later)
    assert isinstance(decoded, v2.Update) and (decoded.seq, decoded.left) == (9, (K1,))


def test_no_resume_while_the_ring_is_behind_the_replica() -> None:
    scopes, replica = Scopes(), live([K1])
    scopes.resynced(replica)
    replica.on_update(bb.Update("e1", 8, 4, [K2], [], 0.0))  # applied, not yet published
    assert scopes.resume(5, v2.Scope.LOBBY, v2.Resume("e1", 7), replica, 0.0) is None


def test_updates_published_together_reach_a_watcher_as_frames_of_their_own() -> None:
    # A worker flushes the updates it applied since its last turn in one call; a
    # watcher touched by two of them gets two binary messages, each one update (one
    # message holding both would be malformed: bytes after the first frame's end).
    scopes, replica = Scopes(), live([K1])
    scopes.resynced(replica)
    scopes.choose(1, v2.Follow(WATCH, (K1, K2)))
    scopes.fresh(1, WATCH, replica, 0.0)
    updates = [bb.Update("e1", 8, 4, [K2], [], 0.0), bb.Update("e1", 9, 5, [], [K1], 0.0)]
    for update in updates:
        replica.on_update(update)
    routed = scopes.published([Forward(u.seq, "", 0.0, u) for u in updates], 1, 1.0)
    frames = [v2.decode_server_frame_v2(frame) for frame in routed[1]]
    assert [(f.seq, f.prev) for f in frames if isinstance(f, v2.Update)] == [(8, 7), (9, 8)]


def test_counts_due_together_share_one_text_per_count_of_requests_applied() -> None:
    scopes, replica = Scopes(), live([K1, K2])
    scopes.resynced(replica)
    for conn in range(1, 101):
        scopes.fresh(conn, v2.Scope.COUNT, replica, 0.0)
    scopes.applied[100] = 2
    publish(scopes, replica, bb.Update("e1", 8, 4, [], [K2], 0.0))
    due = dict(scopes.due("e1", 5.0))
    assert len(due) == 100
    texts = {id(text): text for text in due.values()}  # the shell frames each text once
    assert len(texts) == 2
    assert v2.decode_server_frame_v2(due[1]) == v2.Count("e1", 8, 1)
    assert v2.decode_server_frame_v2(due[100]) == v2.Count("e1", 8, 1, 2)
