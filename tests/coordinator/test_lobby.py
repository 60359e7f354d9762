"""The pure lobby: race resolution, net-effect batching, numbering, snapshots,
re-registration and the order of sessions across coordinator lives."""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from coordinator.lobby import Claim, Delta, Flush, Lobby, Session, Stamp
from shared import records
from shared.records import Record

A = "a" * 64
B = "b" * 64
W1, W2 = "w1", "w2"


def epoch(generation: int, nonce: str = "00000000") -> str:
    return f"{generation:020d}-{nonce}"


E1, E2, E3 = epoch(100), epoch(200), epoch(300)


def test_add_user_new_entry() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    assert lobby.get_user(A) == Session(W1, 1)
    flush = lobby.flush()
    assert flush.delta == Delta(1, 1, [A], [])
    assert flush.acks == [(Session(W1, 1), (E1, 1))]
    assert lobby.snapshot()[:3] == (1, 1, [A])


def test_add_user_reconnection_replaces() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.add_user(A, Session(W2, 7))
    assert lobby.get_user(A) == Session(W2, 7)
    assert len(lobby) == 1
    flush = lobby.flush()
    # A reconnection is in both lists of one update, and the old connection is kicked.
    assert flush.delta == Delta(2, 2, [A], [A])
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 7), (E1, 2))]
    # The replaced connection's close, arriving late, must not remove the new session.
    assert lobby.remove_user(A, Session(W1, 1)) is False
    assert lobby.get_user(A) == Session(W2, 7)
    assert not lobby.pending


def test_remove_user_deletes_entry() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    assert lobby.remove_user(A, Session(W1, 1)) is True
    assert lobby.get_user(A) is None
    assert lobby.flush().delta == Delta(2, 2, [], [A])
    assert lobby.snapshot()[:3] == (2, 2, [])


def test_remove_nonexistent_user_safe() -> None:
    lobby = Lobby(E1)
    assert lobby.remove_user(A, Session(W1, 1)) is False
    assert not lobby.pending
    assert lobby.flush().delta is None
    assert lobby.seq == 0


def test_get_user_returns_existing() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 3))
    assert lobby.get_user(A) == Session(W1, 3)


def test_get_user_returns_none_for_missing() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 3))
    assert lobby.get_user(B) is None


def test_concurrent_add_remove_safe() -> None:
    """Interleaved events from two workers for one key, in the worst order: the newer
    session's auth is applied before the older session's close is reported."""
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(A, Session(W2, 1))  # same conn id, other worker: a distinct session
    lobby.remove_user(A, Session(W1, 1))  # stale close from the replaced session
    lobby.add_user(B, Session(W1, 2))
    lobby.remove_user(B, Session(W1, 2))
    assert lobby.get_user(A) == Session(W2, 1)
    assert lobby.get_user(B) is None
    flush = lobby.flush()
    # Net effect only: B joined and left inside the batch, so it never appears.
    assert flush.delta == Delta(1, 1, [A], [])
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 1), (E1, 1))]


def test_snapshot_is_as_of_seq_not_live() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.add_user(B, Session(W1, 2))  # unpublished
    assert lobby.snapshot()[:3] == (1, 1, [A])


def test_drop_worker_removes_all_its_sessions_in_one_update() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(B, Session(W2, 1))
    lobby.flush()
    assert lobby.drop_worker(W1) == 1
    assert lobby.flush().delta == Delta(2, 2, [], [A])
    assert lobby.drop_worker(W1) == 0


def test_replaced_before_publication_is_kicked_not_acked() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(A, Session(W1, 2))
    flush = lobby.flush()
    assert flush.delta == Delta(1, 1, [A], [])
    assert flush.acks == [(Session(W1, 2), (E1, 1))]
    assert flush.kicks == [Session(W1, 1)]


def test_one_connection_is_bound_to_one_key() -> None:
    """A worker that reports a second key for a connection (a bug, or worse) replaces
    the first binding: no key can stay online that no session holds."""
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(B, Session(W1, 1))
    lobby.check()
    assert lobby.get_user(A) is None and lobby.get_user(B) == Session(W1, 1)
    assert lobby.drop_worker(W1) == 1
    assert len(lobby) == 0


# ------------------------------------------------------------ re-registration


def test_restore_keeps_the_newer_authentication() -> None:
    """Sessions re-registered with their stamps: the newest authentication of a key
    stays, whichever worker re-registers first, across epochs."""
    lobby = Lobby(E2)
    lobby.restore_user(A, Session(W1, 1), (E1, 9))
    lobby.restore_user(A, Session(W2, 1), (E1, 4))  # older: kicked
    lobby.restore_user(B, Session(W2, 2), (E1, 3))
    lobby.restore_user(B, Session(W1, 2), (E1, 8))  # newer: displaces W2's
    flush = lobby.flush()
    assert lobby.get_user(A) == Session(W1, 1) and lobby.get_user(B) == Session(W1, 2)
    assert flush.kicks == [Session(W2, 1), Session(W2, 2)]
    assert flush.acks == []  # restored sessions were acknowledged long ago
    assert flush.delta == Delta(1, 1, [A, B], [])


def test_fresh_auth_is_newer_than_any_restored_session() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W2, 5))  # authenticated elsewhere while W1 was away
    lobby.restore_user(A, Session(W1, 1), (E1, 0))  # W1 comes back with its old one
    flush = lobby.flush()
    assert lobby.get_user(A) == Session(W2, 5)
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 5), (E1, 1))]


def test_a_session_acked_in_this_life_beats_one_from_a_coordinator_whose_clock_was_ahead() -> None:
    """The earlier coordinator's clock was a day ahead (or ours is behind): its epoch
    sorts above ours. Whatever we acknowledged happened after it stopped."""
    ahead = epoch(10**15)
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W2, 5))
    lobby.flush()
    lobby.restore_user(A, Session(W1, 1), (ahead, 9))  # the stale one comes back
    assert lobby.get_user(A) == Session(W2, 5)
    assert lobby.flush().kicks == [Session(W1, 1)]


def test_reconcile_is_the_whole_truth_about_a_worker() -> None:
    lobby = Lobby(E1)
    for conn, key in ((1, A), (2, B)):
        lobby.add_user(key, Session(W1, conn))
    lobby.flush()
    done = lobby.reconcile(W1, [Claim(2, B, (E1, 1), True)])  # conn 1 ended, Closed lost
    assert (done.claimed, done.removed, done.duplicates) == (1, 1, 0)
    assert lobby.flush().delta == Delta(2, 2, [], [A])


def test_reconcile_keeps_an_auth_in_flight_and_acks_it() -> None:
    """The race behind "auth_ok but absent": the worker re-registers while a session
    still waits for its ack. The session is claimed (unacked), so it stays, and is
    acknowledged, whether or not this coordinator saw its Authed."""
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    first = lobby.flush()
    assert first.acks == [(Session(W1, 1), (E1, 1))]  # the ack is on its way...
    lobby.reconcile(W1, [Claim(1, A, (E1, 0), False)])  # ...when the worker says Hello
    again = lobby.flush()
    assert lobby.get_user(A) == Session(W1, 1)
    assert again.delta is None and again.acks == [(Session(W1, 1), (E1, 1))]
    # An Authed this coordinator never saw (lost, or sent to one that died).
    lobby.reconcile(W2, [Claim(4, B, (E1, 1), False)])
    flush = lobby.flush()
    assert flush.delta == Delta(2, 2, [B], []) and flush.acks == [(Session(W2, 4), (E1, 2))]


def test_reconcile_kicks_again_a_session_replaced_in_this_life() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.add_user(A, Session(W2, 1))
    assert lobby.flush().kicks == [Session(W1, 1)]  # suppose this Kick is lost
    lobby.reconcile(W1, [Claim(1, A, (E1, 1), True)])
    assert lobby.flush().kicks == [Session(W1, 1)]
    lobby.reconcile(W1, [Claim(1, A, (E1, 0), False)])
    assert lobby.flush().kicks == [Session(W1, 1)]
    assert lobby.get_user(A) == Session(W2, 1)


def test_a_connection_claimed_twice_keeps_its_first_claim_and_leaves_no_ghost() -> None:
    lobby = Lobby(E2)
    done = lobby.reconcile(W1, [Claim(1, A, (E1, 3), True), Claim(1, B, (E1, 4), True)])
    assert done.duplicates == 1
    lobby.check()
    assert lobby.get_user(A) == Session(W1, 1) and lobby.get_user(B) is None
    assert lobby.drop_worker(W1) == 1 and len(lobby) == 0
    lobby.restore_user(A, Session(W2, 1), (E1, 5))  # once raised KeyError
    lobby.check()


def test_moving_above_a_reported_epoch_re_acknowledges_our_sessions() -> None:
    """A worker reports an epoch at or above ours (a clock went back): we move above it
    and hand every session we acknowledged the new epoch, same seq, so the next
    coordinator ranks them above the reported one."""
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.restore_user(B, Session(W1, 2), (E2, 7))  # from an earlier life, ranks below
    lobby.flush()
    made = iter([epoch(301, "cafe0000")])
    assert lobby.observe_epoch(E3, lambda above: next(made)) is True
    assert lobby.epoch == epoch(301, "cafe0000") and E1 in lobby.own_epochs
    assert lobby.flush().acks == [(Session(W1, 1), (lobby.epoch, 1))]
    assert lobby.stamp_of(Session(W2, 9)) is None
    assert lobby.observe_epoch(E2, lambda above: "never called") is False
    assert lobby.observe_epoch(lobby.epoch, lambda above: "never called") is False
    # A session of ours re-registered with its old stamp gets the new one.
    lobby.drop_worker(W1)
    lobby.restore_user(A, Session(W1, 1), (E1, 1))
    assert lobby.flush().acks == [(Session(W1, 1), (lobby.epoch, 1))]


# ------------------------------------------------------------ presence records

AWAY: Record = ("away", "{}")
BUSY: Record = ("busy", '{"until":"5pm"}')


def online(lobby: Lobby, *users: tuple[str, Session, Record]) -> Lobby:
    """``lobby`` with ``users`` joined and published (seq 1, mseq 1)."""
    for key, session, record in users:
        lobby.add_user(key, session, record)
    lobby.flush()
    return lobby


def test_a_record_change_takes_a_seq_but_not_an_mseq() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), records.DEFAULT))
    assert lobby.set_record(A, Session(W1, 1), AWAY) is True
    assert lobby.flush().delta == Delta(2, 1, [], [], [(A, *AWAY)])
    assert lobby.snapshot() == (2, 1, [A], [(A, *AWAY)])
    lobby.add_user(B, Session(W1, 2))
    assert lobby.flush().delta == Delta(3, 2, [B], [])


def test_two_changes_in_one_window_publish_the_last() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), records.DEFAULT))
    lobby.set_record(A, Session(W1, 1), AWAY)
    lobby.set_record(A, Session(W1, 1), BUSY)
    assert lobby.flush().delta == Delta(2, 1, [], [], [(A, *BUSY)])


def test_a_change_back_to_the_published_record_publishes_nothing() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), BUSY))
    lobby.set_record(A, Session(W1, 1), AWAY)
    lobby.set_record(A, Session(W1, 1), BUSY)
    assert lobby.flush().delta is None and lobby.seq == 1
    lobby.set_record(A, Session(W1, 1), records.DEFAULT)  # back to the default: updated
    assert lobby.flush().delta == Delta(2, 1, [], [], [(A, *records.DEFAULT)])
    assert lobby.snapshot() == (2, 1, [A], [])


def test_a_change_then_a_leave_publishes_the_leave_only() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), records.DEFAULT))
    lobby.set_record(A, Session(W1, 1), AWAY)
    lobby.remove_user(A, Session(W1, 1))
    assert lobby.flush().delta == Delta(2, 2, [], [A])
    assert lobby.snapshot() == (2, 2, [], [])


def test_a_join_then_a_change_publishes_the_join_with_the_last_record() -> None:
    lobby = Lobby(E1)
    lobby.add_user(A, Session(W1, 1), AWAY)
    lobby.set_record(A, Session(W1, 1), BUSY)
    assert lobby.flush().delta == Delta(1, 1, [A], [], [], [(A, *BUSY)])


def test_a_reconnection_joins_with_the_new_sessions_record() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), BUSY))
    lobby.add_user(A, Session(W2, 5))  # a new session starts with its own record
    flush = lobby.flush()
    assert flush.delta == Delta(2, 2, [A], [A]) and flush.kicks == [Session(W1, 1)]
    assert lobby.snapshot() == (2, 2, [A], [])
    assert lobby.set_record(A, Session(W1, 1), AWAY) is False  # the old one's: nothing
    assert lobby.flush().delta is None and lobby.record_of(A) == records.DEFAULT


def test_a_restored_session_keeps_the_record_its_worker_announces() -> None:
    lobby = online(Lobby(E1), (A, Session(W1, 1), records.DEFAULT))
    lobby.drop_worker(W1)
    lobby.reconcile(W1, [Claim(1, A, (E1, 1), True, AWAY)])
    assert lobby.flush().delta == Delta(2, 1, [], [], [(A, *AWAY)])
    # A re-registration of a worker the lobby still holds: its record is the truth
    lobby.reconcile(W1, [Claim(1, A, (E1, 1), True, BUSY)])
    assert lobby.flush().delta == Delta(3, 1, [], [], [(A, *BUSY)])


# ------------------------------------------------------------ property tests

KEYS = [c * 64 for c in "0123456"]
WORKERS = ["w1", "w2", "w3"]


RECORDS = [records.DEFAULT, ("away", "{}"), ("busy", '{"m":1}'), ("online", '{"m":2}')]


@dataclass
class Model:
    """What really exists: connections that are open, by the workers holding them, and
    the record each of them last set."""

    next_conn: int = 0
    open: dict[Session, str] = field(default_factory=dict)
    authed_at: dict[Session, int] = field(default_factory=dict)
    records: dict[Session, Record] = field(default_factory=dict)
    clock: int = 0

    def expected(self) -> dict[str, Session]:
        newest: dict[str, Session] = {}
        for session, key in self.open.items():
            if key not in newest or self.authed_at[session] > self.authed_at[newest[key]]:
                newest[key] = session
        return newest

    def expected_records(self) -> dict[str, Record]:
        return {key: self.records[session] for key, session in self.expected().items()}


op = st.one_of(
    st.tuples(
        st.just("auth"),
        st.sampled_from(WORKERS),
        st.sampled_from(KEYS),
        st.sampled_from(RECORDS),
    ),
    st.tuples(st.just("close"), st.integers(0, 50)),
    st.tuples(st.just("stale_close"), st.integers(0, 50)),
    st.tuples(st.just("record"), st.integers(0, 50), st.sampled_from(RECORDS)),
    st.tuples(st.just("stale_record"), st.integers(0, 50), st.sampled_from(RECORDS)),
    st.tuples(st.just("drop"), st.sampled_from(WORKERS)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("snapshot")),
)

View = dict[str, Record]
LobbySnapshot = tuple[int, int, list[str], list[tuple[str, str, str]]]


def view_of(snapshot: LobbySnapshot) -> View:
    _, _, users, entries = snapshot
    view = dict.fromkeys(users, records.DEFAULT)
    for key, status, data in entries:
        assert view[key] == records.DEFAULT and (status, data) != records.DEFAULT
        view[key] = (status, data)
    return view


def apply_delta(view: View, delta: Delta) -> None:
    """Apply one delta as a protocol 2 client does (every ``seq``, records too)."""
    for key in delta.left:
        assert key in view, "left for a key that was not online"
        del view[key]
    joined_records = {key: (status, data) for key, status, data in delta.records}
    assert joined_records.keys() <= set(delta.joined)
    assert records.DEFAULT not in joined_records.values()
    for key in delta.joined:
        assert key not in view, "joined for a key that was already online"
        view[key] = joined_records.get(key, records.DEFAULT)
    for key, status, data in delta.updated:
        assert key in view and key not in delta.joined, "updated for a key not online before"
        assert view[key] != (status, data), "an update that changes nothing"
        view[key] = (status, data)


def apply_membership(users: set[str], delta: Delta) -> None:
    """Apply one delta as a protocol 1 client does (only those numbered by ``mseq``)."""
    users.difference_update(delta.left)
    users.update(delta.joined)


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=80))
def test_random_interleavings_keep_invariants(ops: list[tuple[object, ...]]) -> None:
    lobby = Lobby(E1)
    model = Model()
    closed: list[tuple[Session, str]] = []
    deltas: list[Delta] = []
    snapshots: list[LobbySnapshot] = [lobby.snapshot()]

    def flush() -> None:
        result = lobby.flush()
        delta = result.delta
        if delta is not None:
            previous = deltas[-1] if deltas else Delta(0, 0, [], [])
            assert delta.seq == previous.seq + 1
            if delta.joined or delta.left:  # protocol 1 sees it: the next mseq
                assert delta.mseq == previous.mseq + 1
            else:  # records only: protocol 1 sees nothing, and it is not empty
                assert delta.mseq == previous.mseq and delta.updated and not delta.records
            deltas.append(delta)
        published = view_of(lobby.snapshot())
        for session, stamp in result.acks:
            assert stamp == (lobby.epoch, lobby.seq)
            assert lobby.get_published(model.open[session]) == session
        for session in result.kicks:  # the worker closes a kicked connection
            if session in model.open:
                key = model.open.pop(session)
                closed.append((session, key))
                assert lobby.get_user(key) != session
        assert published == view_of(lobby.snapshot())

    for step in ops:
        if step[0] == "auth":
            session = Session(str(step[1]), model.next_conn)
            model.next_conn += 1
            model.clock += 1
            model.open[session] = str(step[2])
            model.authed_at[session] = model.clock
            record = typing.cast(Record, step[3])
            model.records[session] = record
            lobby.add_user(str(step[2]), session, record)
        elif step[0] == "close" and model.open:
            session = sorted(model.open)[int(str(step[1])) % len(model.open)]
            key = model.open.pop(session)
            closed.append((session, key))
            lobby.remove_user(key, session)
        elif step[0] == "stale_close" and closed:
            session, key = closed[int(str(step[1])) % len(closed)]
            assert lobby.remove_user(key, session) is False
        elif step[0] == "record" and model.open:
            session = sorted(model.open)[int(str(step[1])) % len(model.open)]
            record = typing.cast(Record, step[2])
            model.records[session] = record
            current = lobby.get_user(model.open[session]) == session
            assert lobby.set_record(model.open[session], session, record) is current
        elif step[0] == "stale_record" and closed:
            session, key = closed[int(str(step[1])) % len(closed)]
            assert lobby.set_record(key, session, typing.cast(Record, step[2])) is False
        elif step[0] == "drop":
            for session in [s for s in model.open if s.worker == step[1]]:
                closed.append((session, model.open.pop(session)))
            lobby.drop_worker(str(step[1]))
        elif step[0] == "flush":
            flush()
        elif step[0] == "snapshot":
            snapshots.append(lobby.snapshot())
        lobby.check()
    flush()
    # Kicked connections close; their closes must change nothing.
    for session, key in closed:
        assert lobby.remove_user(key, session) is False

    # Every key online at most once, and exactly the newest open session per key.
    expected = model.expected()
    assert {k: lobby.get_user(k) for k in KEYS if lobby.get_user(k)} == expected
    assert {k: lobby.record_of(k) for k in expected} == model.expected_records()
    assert len(lobby) == len(expected)
    # Replaying the published deltas onto any snapshot reproduces the lobby, records
    # included (protocol 2: every seq); and its keys (protocol 1: every mseq).
    membership = [d for d in deltas if d.joined or d.left]
    assert [d.mseq for d in membership] == list(range(1, len(membership) + 1))
    for snapshot in snapshots:
        seq, mseq, users, _ = snapshot
        view = view_of(snapshot)
        for delta in deltas[seq:]:
            apply_delta(view, delta)
        assert view == model.expected_records()
        keys = set(users)
        for delta in membership[mseq:]:
            apply_membership(keys, delta)
        assert keys == set(expected)
    assert lobby.snapshot() == (
        len(deltas),
        len(membership),
        sorted(expected),
        sorted((k, *r) for k, r in model.expected_records().items() if r != records.DEFAULT),
    )


# ------------------------------------------------------------ restarts, partitions, losses


@dataclass
class Conn:
    """A client connection on a worker: which key, when it authenticated (real order),
    and the stamp the worker holds for it (``None`` until acked)."""

    key: str
    authed_at: int
    sent_at: Stamp
    acked: Stamp | None = None
    got_auth_ok: bool = False
    record: Record = records.DEFAULT


@dataclass
class World:
    """Workers with their connections, one coordinator life at a time, and a network
    that can lose any message. Every coordinator starts from the epoch recorded by the
    one before it (the lock file), with a clock that may have gone back."""

    lobby: Lobby
    workers: dict[str, dict[int, Conn]] = field(default_factory=lambda: {w: {} for w in WORKERS})
    clock: int = 0
    conn_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    epochs_made: int = 0
    unregistered: set[str] = field(default_factory=set)
    """Workers the coordinator does not know (given up for dead, or a coordinator that
    started since): it applies none of their events, and asks them to re-register
    (coordinator.core), so the next thing of theirs the lobby sees is a reconcile."""

    def claims(self, worker: str) -> list[Claim]:
        return [
            Claim(conn, c.key, c.acked or c.sent_at, c.acked is not None, c.record)
            for conn, c in self.workers[worker].items()
        ]

    def deliver(self, result: Flush, lose_acks: bool, lose_kicks: bool) -> None:
        """Carry a flush's acks and kicks to the workers (or lose them)."""
        for session, stamp in result.acks:
            conn = self.workers[session.worker].get(session.conn)
            if conn is not None and not lose_acks:
                conn.acked = stamp
                conn.got_auth_ok = True  # the replica reaches its seq: auth_ok
        for session in result.kicks:
            if not lose_kicks:
                self.workers[session.worker].pop(session.conn, None)  # closed 4002


WORLD_KEYS = KEYS[:2]
WORLD_WORKERS = WORKERS[:2]
world_op = st.one_of(
    st.tuples(
        st.just("auth"), st.sampled_from(WORLD_WORKERS), st.sampled_from(WORLD_KEYS), st.booleans()
    ),
    st.tuples(st.just("close"), st.sampled_from(WORLD_WORKERS), st.integers(0, 20), st.booleans()),
    st.tuples(
        st.just("record"),
        st.sampled_from(WORLD_WORKERS),
        st.integers(0, 20),
        st.sampled_from(RECORDS),
        st.booleans(),
    ),
    st.tuples(st.just("flush"), st.booleans(), st.booleans()),
    st.tuples(st.just("expire"), st.sampled_from(WORLD_WORKERS)),
    st.tuples(st.just("hello"), st.sampled_from(WORLD_WORKERS)),
    st.tuples(st.just("restart"), st.integers(-3, 3), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(world_op, max_size=60))
@example([("auth", W1, KEYS[0], False), ("flush", False, False), ("record", W1, 0, AWAY, True)])
def test_restarts_partitions_and_lost_messages_end_in_one_true_lobby(
    ops: list[tuple[object, ...]],
) -> None:
    """Any interleaving of auths, closes, lost messages, workers given up for dead,
    re-registrations and coordinator restarts (with clocks that jump either way), then
    every worker re-registers once everything settles:

    * the lobby holds exactly one session per key that has an open connection, and every
      open connection is that session (the others were kicked: closed with 4002);
    * of two connections of one key that were both acknowledged, the one acknowledged
      later in real time is the one that stays, across any number of restarts;
    * a client that got auth_ok and is still open is in the lobby."""
    generations = itertools.count(1000, 1000)
    world = World(Lobby(epoch(next(generations))))

    def make_epoch(above: int) -> str:
        world.epochs_made += 1
        return epoch(above + 1, f"{world.epochs_made:08x}")

    acked_at: dict[Session, int] = {}  # when the coordinator accepted an ack, in real time

    def flush(lose_acks: bool = False, lose_kicks: bool = False) -> None:
        result = world.lobby.flush()
        world.clock += 1
        for session, _ in result.acks:
            acked_at.setdefault(session, world.clock)
        world.deliver(result, lose_acks, lose_kicks)

    for step in ops:
        kind = step[0]
        world.clock += 1
        if kind == "auth":
            worker, key, lost = str(step[1]), str(step[2]), bool(step[3])
            conn = next(world.conn_ids)
            world.workers[worker][conn] = Conn(
                key, world.clock, (world.lobby.epoch, world.lobby.seq)
            )
            if not lost and worker not in world.unregistered:
                world.lobby.add_user(key, Session(worker, conn))
        elif kind == "close":
            worker, pick, lost = str(step[1]), int(str(step[2])), bool(step[3])
            conns = sorted(world.workers[worker])
            if conns:
                conn = conns[pick % len(conns)]
                gone = world.workers[worker].pop(conn)
                if not lost and worker not in world.unregistered:
                    world.lobby.remove_user(gone.key, Session(worker, conn))
        elif kind == "record":  # a session changes its record (the SetRecord may be lost)
            worker, pick, lost = str(step[1]), int(str(step[2])), bool(step[4])
            conns = sorted(world.workers[worker])
            if conns:
                conn = conns[pick % len(conns)]
                changed = world.workers[worker][conn]
                changed.record = typing.cast(Record, step[3])
                if not lost and worker not in world.unregistered:
                    world.lobby.set_record(changed.key, Session(worker, conn), changed.record)
        elif kind == "flush":
            flush(bool(step[1]), bool(step[2]))
        elif kind == "expire":
            world.lobby.drop_worker(str(step[1]))  # partitioned: its connections stay open
            world.unregistered.add(str(step[1]))
        elif kind == "hello":  # a worker re-registers (and Hello carries its epoch)
            worker = str(step[1])
            for claim in world.claims(worker):
                world.lobby.observe_epoch(claim.stamp[0], make_epoch)
            world.lobby.reconcile(worker, world.claims(worker))
            world.unregistered.discard(worker)
        elif kind == "restart":
            previous = world.lobby.epoch
            skew = int(str(step[1])) * 700  # the new clock: behind, same or ahead
            fresh = Lobby(epoch(max(1, next(generations) + skew), f"{world.clock:08x}"))
            if step[2]:  # the lock file's last epoch (else: another host, or state lost)
                fresh.observe_epoch(previous, make_epoch)
            world.lobby = fresh
            world.unregistered = set(WORLD_WORKERS)  # a new coordinator knows no worker yet
        world.lobby.check()

    # Of a key's open connections, when all of them hold an ack, the last one accepted
    # must be the one that stays.
    winners: dict[str, Session] = {}
    for key in WORLD_KEYS:
        held = [
            Session(w, conn)
            for w, conns in world.workers.items()
            for conn, c in conns.items()
            if c.key == key
        ]
        acked = [s for s in held if world.workers[s.worker][s.conn].acked and s in acked_at]
        if len(held) >= 2 and len(acked) == len(held):
            winners[key] = max(acked, key=acked_at.__getitem__)

    # Everything settles: workers re-register (kicks closing connections) until stable.
    for _ in range(4):
        for worker in WORLD_WORKERS:
            for claim in world.claims(worker):
                world.lobby.observe_epoch(claim.stamp[0], make_epoch)
            world.lobby.reconcile(worker, world.claims(worker))
        flush()
        world.lobby.check()

    open_sessions = {
        Session(w, conn): c for w, conns in world.workers.items() for conn, c in conns.items()
    }
    holders = {world.lobby.get_user(k) for k in WORLD_KEYS} - {None}
    assert holders == set(open_sessions), "an open connection the lobby does not show"
    assert len({c.key for c in open_sessions.values()}) == len(open_sessions)
    for session, conn in open_sessions.items():
        assert world.lobby.get_user(conn.key) == session
        assert conn.acked is not None  # everyone still open was acknowledged in the end
        assert world.lobby.record_of(conn.key) == conn.record, "a record lost or stale"
    published = {key: (status, data) for key, status, data in world.lobby.snapshot()[3]}
    for conn in open_sessions.values():
        assert published.get(conn.key, records.DEFAULT) == conn.record
    for key, winner in winners.items():
        assert world.lobby.get_user(key) == winner, "an older acknowledged session won"


def test_three_coordinator_lives_with_a_clock_set_back_keep_the_newest_session() -> None:
    """Life 1 acks A on w1, then gives w1 up for dead (its connection stays open). Life 2
    starts on a host whose clock is far behind, and acks A on w2. Life 3 hears both:
    w2's, acknowledged later, must win, although life 2's clock made a smaller epoch."""
    one = Lobby(epoch(5000))
    one.add_user(A, Session(W1, 1))
    w1_stamp = one.flush().acks[0][1]
    one.drop_worker(W1)

    two = Lobby(epoch(10))  # clock far behind
    assert two.observe_epoch(one.epoch, lambda above: epoch(above + 1, "00000002"))
    two.add_user(A, Session(W2, 1))
    w2_stamp = two.flush().acks[0][1]
    assert w2_stamp[0] > w1_stamp[0]  # moved above life 1 before acknowledging anything

    three = Lobby(epoch(20))
    for claimed in (epoch(10), two.epoch):
        three.observe_epoch(claimed, lambda above: epoch(above + 1, "00000003"))
    three.reconcile(W1, [Claim(1, A, w1_stamp, True)])
    three.reconcile(W2, [Claim(1, A, w2_stamp, True)])
    flush = three.flush()
    assert three.get_user(A) == Session(W2, 1) and flush.kicks == [Session(W1, 1)]


def test_a_life_that_learns_of_an_epoch_above_it_late_re_acks_before_the_next_life() -> None:
    """Life 2 (clock behind, no lock file) acks A on w2 before any worker reports life 1's
    higher epoch; when w1 reports it, life 2 moves above it and re-acks A, so life 3
    orders them right."""
    one = Lobby(epoch(5000))
    one.add_user(A, Session(W1, 1))
    w1_stamp = one.flush().acks[0][1]
    two = Lobby(epoch(10))
    two.add_user(A, Session(W2, 1))
    early = two.flush().acks[0][1]
    assert early[0] < w1_stamp[0]
    assert two.observe_epoch(w1_stamp[0], lambda above: epoch(above + 1, "00000002"))
    two.reconcile(W1, [Claim(1, A, w1_stamp, True)])
    flush = two.flush()
    assert flush.kicks == [Session(W1, 1)]
    ((session, w2_stamp),) = flush.acks
    assert session == Session(W2, 1) and w2_stamp[0] > w1_stamp[0]
    three = Lobby(epoch(20))
    three.reconcile(W1, [Claim(1, A, w1_stamp, True)])
    three.reconcile(W2, [Claim(1, A, w2_stamp, True)])
    assert three.get_user(A) == Session(W2, 1)
