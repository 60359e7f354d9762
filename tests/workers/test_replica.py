"""The lobby replica: slow-joiner rule, gaps, epochs, and what clients get to see."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import backbone as bb
from shared import protocol, records
from workers.replica import (
    MAX_BUFFERED_UPDATES,
    Announce,
    EncodedUsers,
    Forward,
    Output,
    Replica,
    RequestSnapshot,
    Resynced,
    ResyncReason,
    SyncState,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64


def live(epoch: str = "e1", seq: int = 5, users: tuple[str, ...] = (A,)) -> Replica:
    r = Replica()
    assert r.start() == [Announce()]
    r.on_welcome(bb.Welcome(epoch))
    assert r.on_snapshot(bb.Snapshot(epoch, seq, seq, list(users))) == [
        Resynced(None, ResyncReason.START)
    ]
    return r


def upd(
    seq: int, joined: tuple[str, ...] = (), left: tuple[str, ...] = (), epoch: str = "e1"
) -> bb.Update:
    return bb.Update(epoch, seq, seq, list(joined), list(left), 0.0)


def test_snapshot_before_welcome_is_ignored() -> None:
    r = Replica()
    r.start()
    assert r.on_snapshot(bb.Snapshot("e1", 3, 3, [A])) == []
    assert r.sync is SyncState.AWAITING_WELCOME
    r.on_welcome(bb.Welcome("e1"))
    assert r.sync is SyncState.SYNCING
    assert r.on_snapshot(bb.Snapshot("e1", 3, 3, [A])) == [Resynced(None, ResyncReason.START)]
    assert (r.epoch, r.seq, set(r.users), r.sync) == ("e1", 3, {A}, SyncState.LIVE)


def test_slow_joiner_drops_buffered_updates_at_or_below_the_snapshot() -> None:
    r = Replica()
    r.start()
    r.on_welcome(bb.Welcome("e1"))
    for u in (upd(4, (B,)), upd(5, (C,)), upd(6, (), (A,))):
        assert r.on_update(u) == []
    assert r.on_snapshot(bb.Snapshot("e1", 5, 5, [A, B, C])) == [Resynced(None, ResyncReason.START)]
    assert (r.seq, set(r.users)) == (6, {B, C})


def test_in_order_updates_are_forwarded_once_encoded() -> None:
    r = live()
    (output,) = r.on_update(upd(6, (B,), (A,)))
    assert isinstance(output, Forward)
    assert json.loads(output.frame) == {
        "type": "lobby_update",
        "seq": 6,
        "joined": [{"publicKey": B}],
        "left": [{"publicKey": A}],
    }
    assert set(r.users) == {B}


def test_duplicate_and_stale_updates_are_ignored() -> None:
    r = live()
    assert r.on_update(upd(5, (B,))) == []
    assert r.on_update(upd(2, (C,))) == []
    assert set(r.users) == {A}


def test_gap_asks_for_a_snapshot_and_resyncs() -> None:
    r = live()
    assert r.on_update(upd(7, (C,))) == [RequestSnapshot()]
    assert r.sync is SyncState.SYNCING
    assert r.on_update(upd(8, (), (C,))) == []
    assert r.on_snapshot(bb.Snapshot("e1", 6, 6, [A, B])) == [Resynced("e1", ResyncReason.GAP)]
    assert (r.seq, set(r.users), r.sync) == (8, {A, B}, SyncState.LIVE)


def test_gap_inside_the_buffer_asks_again() -> None:
    r = live()
    r.on_update(upd(7))
    r.on_update(upd(9))
    assert r.on_snapshot(bb.Snapshot("e1", 6, 6, [A])) == [RequestSnapshot()]
    assert r.sync is SyncState.SYNCING


def test_a_reannouncement_in_the_same_epoch_resyncs_as_a_start() -> None:
    """The coordinator asked for our sessions again (or was silent): no update was lost,
    so the resync is a start, not a gap; the publication time is forwarded."""
    r = live()
    r.on_update(upd(7, (C,)))  # a gap, healed below by a re-announcement
    assert r.start() == [Announce()]
    r.on_welcome(bb.Welcome("e1"))
    assert r.on_snapshot(bb.Snapshot("e1", 7, 7, [A, C])) == [Resynced("e1", ResyncReason.START)]
    update = bb.Update("e1", 8, 8, [B], [], 1234.5)
    (forward,) = r.on_update(update)
    assert isinstance(forward, Forward) and (forward.seq, forward.at) == (8, 1234.5)


AWAY = ("away", '{"note":"back at 5"}')


def test_a_change_of_records_alone_sends_protocol_1_clients_nothing() -> None:
    """It moves the replica to its seq (auth_oks held for that seq are released) with no
    protocol 1 frame: their seq is mseq, which it keeps, so their snapshot is the same."""
    r = live(seq=5, users=(A, B))
    before = r.snapshot_frame()
    change = bb.Update("e1", 6, 5, [], [], 2.5, [(A, *AWAY)])
    assert r.on_update(change) == [Forward(6, "", 2.5, change, {A: records.DEFAULT})]
    assert (r.seq, r.mseq, r.record_of(A), r.record_of(B)) == (6, 5, AWAY, records.DEFAULT)
    assert r.snapshot_frame() is before  # the same frame: seq 5, as before
    assert json.loads(before)["seq"] == 5
    # The next membership update is protocol 1's next one.
    (forward,) = r.on_update(bb.Update("e1", 7, 6, [C], [], 0.0))
    assert isinstance(forward, Forward)
    assert forward.frame == protocol.lobby_update(6, [C], [])
    assert json.loads(r.snapshot_frame())["seq"] == 6
    # Back to the default, and a gap in seq is a gap even if mseq follows on.
    r.on_update(bb.Update("e1", 8, 6, [], [], 0.0, [(A, *records.DEFAULT)]))
    assert r.record_of(A) == records.DEFAULT
    assert r.on_update(bb.Update("e1", 10, 7, [B], [], 0.0)) == [RequestSnapshot()]


def test_records_come_with_snapshots_and_joins_and_go_with_sessions() -> None:
    r = Replica()
    r.start()
    r.on_welcome(bb.Welcome("e1"))
    r.on_snapshot(bb.Snapshot("e1", 9, 4, [A, B], [(B, *AWAY)]))
    assert (r.seq, r.mseq, r.record_of(A), r.record_of(B)) == (9, 4, records.DEFAULT, AWAY)
    assert json.loads(r.snapshot_frame())["seq"] == 4
    (forward,) = r.on_update(bb.Update("e1", 10, 5, [C], [], 0.0, [], [(C, "busy", "{}")]))
    assert isinstance(forward, Forward) and forward.frame == protocol.lobby_update(5, [C], [])
    assert r.record_of(C) == ("busy", "{}")
    r.on_update(bb.Update("e1", 11, 6, [B], [B], 0.0))  # a new session of B: its own record
    assert r.record_of(B) == records.DEFAULT
    r.on_update(bb.Update("e1", 12, 7, [], [C], 0.0))
    assert r.record_of(C) == records.DEFAULT and C not in r.users


def test_a_late_older_snapshot_does_not_rewind() -> None:
    r = live(seq=5)
    r.on_beat(bb.Beat("e1", 7, 0.0))
    assert r.on_snapshot(bb.Snapshot("e1", 4, 4, [])) == []
    assert r.on_snapshot(bb.Snapshot("e1", 7, 7, [B])) == [Resynced("e1", ResyncReason.GAP)]


def test_beat_ahead_means_lost_updates() -> None:
    r = live()
    assert r.on_beat(bb.Beat("e1", 5, 0.0)) == []
    assert r.on_beat(bb.Beat("e1", 3, 0.0)) == []
    assert r.on_beat(bb.Beat("e1", 6, 0.0)) == [RequestSnapshot()]


def test_new_epoch_anywhere_means_announce_again() -> None:
    for poke in (
        lambda r: r.on_update(upd(1, epoch="e2")),
        lambda r: r.on_beat(bb.Beat("e2", 0, 0.0)),
        lambda r: r.on_snapshot(bb.Snapshot("e2", 0, 0, [])),
        lambda r: r.observe_epoch("e2"),
    ):
        r = live()
        assert poke(r) == [Announce()]
        assert r.sync is SyncState.AWAITING_WELCOME


def test_old_epoch_leftovers_while_syncing_to_a_new_one_are_ignored() -> None:
    r = live()
    r.observe_epoch("e2")
    r.on_welcome(bb.Welcome("e2"))
    assert r.on_beat(bb.Beat("e1", 9, 0.0)) == []
    assert r.on_update(upd(6, epoch="e1")) == []
    assert r.on_snapshot(bb.Snapshot("e1", 9, 9, [])) == []
    assert r.on_beat(bb.Beat("e3", 0, 0.0)) == [Announce()]


def test_snapshot_of_the_new_epoch_completes_the_restart() -> None:
    r = live()
    r.observe_epoch("e2")
    r.on_welcome(bb.Welcome("e2"))
    r.on_update(upd(1, (B,), epoch="e2"))
    assert r.on_snapshot(bb.Snapshot("e2", 0, 0, [A])) == [Resynced("e1", ResyncReason.NEW_EPOCH)]
    assert (r.epoch, r.seq, set(r.users)) == ("e2", 1, {A, B})


def test_retry_resends_what_is_missing() -> None:
    r = Replica()
    r.start()
    assert r.retry() == [Announce()]
    r.on_welcome(bb.Welcome("e1"))
    assert r.retry() == [RequestSnapshot()]
    r.on_snapshot(bb.Snapshot("e1", 0, 0, []))
    assert r.retry() == []


def test_snapshot_frame_is_encoded_once_per_state() -> None:
    r = live(users=(B, A))
    first = r.snapshot_frame()
    assert r.snapshot_frame() is first
    assert json.loads(first) == {
        "type": "lobby_snapshot",
        "seq": 5,
        "users": [{"publicKey": A}, {"publicKey": B}],
    }
    r.on_update(upd(6, (C,)))
    assert r.snapshot_frame() is not first
    assert json.loads(r.snapshot_frame())["seq"] == 6


# Any text, not just hex: quotes, backslashes, control and non-ASCII characters must be
# escaped exactly as the whole-lobby encoder escapes them.
odd_keys = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    start=st.lists(odd_keys, max_size=8),
    ops=st.lists(st.tuples(st.booleans(), odd_keys), max_size=40),
    seq=st.integers(min_value=0, max_value=2**63),
)
def test_encoded_users_match_the_whole_lobby_encoder(
    start: list[str], ops: list[tuple[bool, str]], seq: int
) -> None:
    encoded, truth = EncodedUsers(start), set(start)
    assert encoded.frame(seq) == protocol.lobby_snapshot(seq, sorted(truth))
    for add, key in ops:
        if add:
            encoded.add(key)
            truth.add(key)
        else:
            encoded.discard(key)
            truth.discard(key)
        assert len(encoded) == len(truth)
        assert encoded.frame(seq) == protocol.lobby_snapshot(seq, sorted(truth))


@settings(max_examples=200, deadline=None)
@given(
    users=st.sets(st.sampled_from([A, B, C, "d" * 64, "e" * 64]), max_size=5),
    changes=st.lists(
        st.tuples(
            st.sets(st.sampled_from([A, B, C, "d" * 64]), max_size=3),
            st.sets(st.sampled_from([A, B, C, "e" * 64]), max_size=3),
            st.booleans(),
        ),
        max_size=12,
    ),
)
def test_snapshot_frame_after_updates_is_the_whole_lobby_encoding(
    users: set[str], changes: list[tuple[set[str], set[str], bool]]
) -> None:
    """Asked after some updates only: the encoding is built when first asked for, then
    kept up to date by every update, asked for or not."""
    r = live(seq=0, users=tuple(users))
    for seq, (joined, left, asked) in enumerate(changes, start=1):
        r.on_update(upd(seq, tuple(sorted(joined)), tuple(sorted(left))))
        if asked:
            assert r.snapshot_frame() == protocol.lobby_snapshot(seq, sorted(r.users))


def test_update_buffer_is_bounded_and_overflow_heals_by_resync() -> None:
    r = live(seq=0, users=())
    r.on_update(upd(2))  # gap: syncing
    for seq in range(3, MAX_BUFFERED_UPDATES + 4):
        r.on_update(upd(seq))
    assert r.on_snapshot(bb.Snapshot("e1", 1, 1, [])) == [RequestSnapshot()]
    last = MAX_BUFFERED_UPDATES + 3
    assert r.on_snapshot(bb.Snapshot("e1", last, last, [])) == [Resynced("e1", ResyncReason.GAP)]
    assert r.seq == last


# --------------------------------------------------------------------------- model check


@dataclass
class Coordinator:
    """The truth: epochs, numbered states, and what is in flight to the worker."""

    epoch: int = 1
    seq: int = 0
    users: set[str] = field(default_factory=set)
    history: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict)
    up: list[str] = field(default_factory=list)  # "hello" / "snapreq" from the worker
    down: list[bb.Message] = field(default_factory=list)  # ROUTER replies, in order
    pub: list[bb.Message] = field(default_factory=list)  # PUB, in order

    def __post_init__(self) -> None:
        self.record()

    @property
    def tag(self) -> str:
        return f"e{self.epoch}"

    def record(self) -> None:
        self.history[(self.tag, self.seq)] = frozenset(self.users)

    def publish(self, key: str, lost: bool) -> None:
        joined, left = ([], [key]) if key in self.users else ([key], [])
        self.users ^= {key}
        self.seq += 1
        self.record()
        if not lost:
            self.pub.append(bb.Update(self.tag, self.seq, self.seq, joined, left, 0.0))

    def serve_one(self) -> None:
        request = self.up.pop(0)
        if request == "hello":
            self.down.append(bb.Welcome(self.tag))
        else:
            self.down.append(bb.Snapshot(self.tag, self.seq, self.seq, sorted(self.users)))

    def restart(self, keep_requests: bool) -> None:
        self.epoch += 1
        self.seq = 0
        self.users = set()
        self.record()
        self.pub.clear()  # the old PUB is gone; so is anything it still held for us
        if not keep_requests:
            self.up.clear()


@dataclass
class Client:
    """What one authenticated client sees: snapshots, then consecutive updates."""

    seq: int | None = None
    users: set[str] = field(default_factory=set)

    def apply(self, frame: str) -> None:
        msg = json.loads(frame)
        keys = {u["publicKey"] for u in msg.get("users", [])}
        if msg["type"] == "lobby_snapshot":
            self.seq, self.users = msg["seq"], keys
            return
        assert self.seq is not None and msg["seq"] == self.seq + 1, "gap or duplicate"
        self.seq = msg["seq"]
        self.users -= {u["publicKey"] for u in msg["left"]}
        self.users |= {u["publicKey"] for u in msg["joined"]}


def run_outputs(
    outputs: list[Output], coord: Coordinator, replica: Replica, client: Client
) -> None:
    for output in outputs:
        if isinstance(output, Announce):
            coord.up += ["hello", "snapreq"]
        elif isinstance(output, RequestSnapshot):
            coord.up.append("snapreq")
        elif isinstance(output, Forward):
            client.apply(output.frame)
        elif isinstance(output, Resynced):
            client.apply(replica.snapshot_frame())


def deliver(msg: bb.Message, replica: Replica) -> list[Output]:
    if isinstance(msg, bb.Welcome):
        return replica.on_welcome(msg)
    if isinstance(msg, bb.Snapshot):
        return replica.on_snapshot(msg)
    if isinstance(msg, bb.Update):
        return replica.on_update(msg)
    assert isinstance(msg, bb.Beat)
    return replica.on_beat(msg)


def check(coord: Coordinator, replica: Replica, client: Client) -> None:
    if replica.sync is SyncState.LIVE:
        assert replica.epoch is not None
        # A live replica is exactly some published state of the coordinator...
        assert coord.history[(replica.epoch, replica.seq)] == set(replica.users)
        # ...and the client, which never saw a gap, sees that very state.
        assert (client.seq, client.users) == (replica.seq, set(replica.users))
        # The incrementally kept snapshot is the one encoded from scratch, byte for byte.
        expected = protocol.lobby_snapshot(replica.seq, sorted(replica.users))
        assert replica.snapshot_frame() == expected


KINDS = ["publish"] * 4 + ["pub"] * 4 + ["beat", "serve", "down", "round_trip", "restart", "retry"]
steps = st.lists(
    st.tuples(st.sampled_from(KINDS), st.sampled_from([A, B, C]), st.booleans()),
    max_size=80,
)


def round_trip(coord: Coordinator, replica: Replica, client: Client) -> None:
    while coord.up or coord.down:
        if coord.up:
            coord.serve_one()
        if coord.down:
            run_outputs(deliver(coord.down.pop(0), replica), coord, replica, client)


@settings(max_examples=500, deadline=None)
@given(steps=steps)
def test_replica_follows_the_coordinator_or_knows_it_does_not(
    steps: list[tuple[str, str, bool]],
) -> None:
    coord, replica, client = Coordinator(), Replica(), Client()
    run_outputs(replica.start(), coord, replica, client)
    round_trip(coord, replica, client)
    for kind, key, flag in steps:
        if kind == "publish":
            coord.publish(key, lost=flag)
        elif kind == "beat" and not flag:
            coord.pub.append(bb.Beat(coord.tag, coord.seq, 0.0))
        elif kind == "serve" and coord.up:
            coord.serve_one()
        elif kind == "down" and coord.down:
            run_outputs(deliver(coord.down.pop(0), replica), coord, replica, client)
        elif kind == "round_trip":
            round_trip(coord, replica, client)
        elif kind == "pub" and coord.pub:
            run_outputs(deliver(coord.pub.pop(0), replica), coord, replica, client)
        elif kind == "restart" and flag:  # half as often as the other kinds
            coord.restart(keep_requests=key == A)
        elif kind == "retry" and replica.sync is not SyncState.LIVE:
            run_outputs(replica.retry(), coord, replica, client)
        check(coord, replica, client)

    # Quiesce: periodic Beats, everything delivered, and the retries a stuck worker makes.
    # The replica must end live on the coordinator's latest state.
    for _ in range(3):
        coord.pub.append(bb.Beat(coord.tag, coord.seq, 0.0))
        while coord.pub or coord.up or coord.down:
            if coord.pub:
                run_outputs(deliver(coord.pub.pop(0), replica), coord, replica, client)
            if coord.up:
                coord.serve_one()
            if coord.down:
                run_outputs(deliver(coord.down.pop(0), replica), coord, replica, client)
            check(coord, replica, client)
        run_outputs(replica.retry(), coord, replica, client)
    assert replica.sync is SyncState.LIVE
    assert (replica.epoch, replica.seq, set(replica.users)) == (coord.tag, coord.seq, coord.users)
    assert (client.seq, client.users) == (coord.seq, coord.users)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text("0123456789abcdef", min_size=64, max_size=64), max_size=300))
def test_the_snapshot_size_estimate_is_close_to_the_frame(users: set[str]) -> None:
    r = Replica()
    r.start()
    r.on_welcome(bb.Welcome("e1"))
    r.on_snapshot(bb.Snapshot("e1", 12345, 12345, sorted(users)))
    actual = len(r.snapshot_frame())
    assert actual - 64 <= r.snapshot_bytes <= actual + 64
