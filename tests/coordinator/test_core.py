"""The coordinator's decisions without sockets: registration, routing, repairs, and a
fuzz of its whole backbone input (no message sequence may crash it or break the lobby)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core import CoordinatorCore, Output, Publish, ToWorker
from coordinator.settings import CoordinatorSettings, Timing
from shared import backbone as bb
from shared import records, timings

A, B = "a" * 64, "b" * 64
E0 = f"{10**18:020d}-00000000"
SETTINGS = CoordinatorSettings(timing=Timing(batch_window=0.0, heartbeat_interval=1.0))


def core(previous: str = "") -> CoordinatorCore:
    return CoordinatorCore(SETTINGS, epoch=E0, now=0.0, previous=previous)


def to(outputs: list[Output], worker: str) -> list[bb.Message]:
    return [o.message for o in outputs if isinstance(o, ToWorker) and o.worker == worker]


def published(outputs: list[Output]) -> list[bb.Message]:
    return [o.message for o in outputs if isinstance(o, Publish)]


def hello(
    name: str,
    *sessions: tuple[int, str, str, int, bool],
    epoch: str = "",
    records: list[tuple[int, str, str]] | None = None,
) -> bb.Hello:
    return bb.Hello(name, epoch, f"ipc:///r/{name}", "", list(sessions), records or [])


def route(n: int, to_key: str, deadline: float = 100.0) -> bb.Route:
    return bb.Route(n, A, to_key, f"m{n}", "hi", deadline)


def test_events_from_a_worker_that_never_said_hello_are_ignored() -> None:
    c = core()
    out = c.handle("stranger", bb.Authed(1, A), now=0.1, wall=0.0)
    assert to(out, "stranger") == [bb.Reannounce()]
    assert c.lobby.get_user(A) is None
    # Asked at most once per beat interval, however much it sends.
    assert to(c.handle("stranger", bb.Closed(1, A), now=0.2, wall=0.0), "stranger") == []
    out = c.handle("stranger", route(7, B), now=0.3, wall=0.0)
    assert to(out, "stranger") == [bb.RouteDone(7, "unavailable")]
    assert to(c.handle("stranger", bb.Heartbeat("s"), now=1.2, wall=0.0), "stranger") == [
        bb.Reannounce()
    ]
    # Its Hello carries the truth: the pending auth is applied and acknowledged.
    out = c.handle("stranger", hello("stranger", (1, A, "", 0, False)), now=1.3, wall=0.0)
    assert to(out, "stranger") == [bb.Welcome(E0), bb.AuthAck(1, E0, 1)]
    assert c.lobby.get_user(A) is not None


def test_a_route_past_its_deadline_is_dropped_and_answered_unavailable() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    c.handle("w1", bb.Authed(1, B), now=0.0, wall=0.0)
    out = c.handle("w1", route(5, B, deadline=9.0), now=1.0, wall=9.5)
    assert to(out, "w1") == [bb.RouteDone(5, "unavailable")]
    assert c.expired_routes == 1
    out = c.handle("w1", route(6, B, deadline=9.0), now=1.0, wall=8.5)
    (deliver,) = to(out, "w1")
    assert isinstance(deliver, bb.Deliver) and deliver.deadline == 9.0
    assert (deliver.reply_to, deliver.origin, deliver.route) == ("ipc:///r/w1", "w1", 6)


def test_offline_only_once_the_lobby_is_rebuilt() -> None:
    """After a restart (a lock file says a coordinator ran before), a key the lobby does
    not show yet may be online on a worker not heard yet: unavailable, not offline."""
    c = core(previous=f"{10**17:020d}-11111111")
    c.handle("w1", hello("w1", epoch=f"{10**17:020d}-11111111"), now=0.1, wall=0.0)
    assert to(c.handle("w1", route(1, B), now=0.2, wall=0.0), "w1") == [
        bb.RouteDone(1, "unavailable")
    ]
    c.handle("w2", bb.Heartbeat("w2"), now=0.3, wall=0.0)  # known, not registered yet
    assert to(c.handle("w1", route(2, B), now=3.0, wall=0.0), "w1") == [
        bb.RouteDone(2, "unavailable")
    ]
    c.handle("w2", hello("w2"), now=3.1, wall=0.0)
    assert to(c.handle("w1", route(3, B), now=3.2, wall=0.0), "w1") == [bb.RouteDone(3, "offline")]


def test_a_kick_tells_the_sessions_worker_to_close_it_and_answers_the_asker() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    c.handle("w2", hello("w2"), now=0.0, wall=0.0)
    c.handle("w2", bb.Authed(4, B), now=0.0, wall=0.0)
    out = c.handle("w1", bb.Eject(9, B.upper(), "spam"), now=0.1, wall=0.0)
    assert to(out, "w2") == [bb.EjectSession(4, "spam")]
    assert to(out, "w1") == [bb.EjectDone(9, "kicked")]
    assert c.lobby.get_user(B) is not None  # it leaves when its worker says it closed
    out = c.handle("w1", bb.Eject(10, A, ""), now=0.2, wall=0.0)
    assert to(out, "w1") == [bb.EjectDone(10, "offline")]
    out = c.handle("w1", bb.Eject(11, "xyz", ""), now=0.2, wall=0.0)
    assert to(out, "w1") == [bb.EjectDone(11, "offline")]
    out = c.handle("stranger", bb.Eject(12, B, ""), now=0.3, wall=0.0)
    assert bb.EjectDone(12, "unavailable") in to(out, "stranger")


def test_a_kick_while_the_lobby_rebuilds_is_unavailable_not_offline() -> None:
    c = core(previous=f"{10**17:020d}-11111111")
    c.handle("w1", hello("w1", epoch=f"{10**17:020d}-11111111"), now=0.1, wall=0.0)
    out = c.handle("w1", bb.Eject(1, B, ""), now=0.2, wall=0.0)
    assert to(out, "w1") == [bb.EjectDone(1, "unavailable")]


def test_a_first_start_has_nothing_to_rebuild() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.1, wall=0.0)
    assert to(c.handle("w1", route(1, B), now=0.2, wall=0.0), "w1") == [bb.RouteDone(1, "offline")]


def test_a_lost_reply_makes_its_worker_re_register_and_is_repaired() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    out = c.handle("w1", bb.Authed(1, A), now=0.1, wall=0.0)
    (ack,) = to(out, "w1")
    c.undelivered("w1", ack)  # its queue was full
    assert c.dropped == {"authack": 1}
    out = c.tick(now=0.2, wall=0.0)
    assert bb.Reannounce() in to(out, "w1")
    out = c.handle("w1", hello("w1", (1, A, E0, 0, False)), now=0.3, wall=0.0)
    assert to(out, "w1") == [bb.Welcome(E0), bb.AuthAck(1, E0, 1)]
    # A lost Deliver needs no repair: the origin's deadline answers for it.
    c.undelivered("w1", bb.Deliver("w2", "", "", 1, 1, A, "m", "b", 0.0))
    assert to(c.tick(now=0.4, wall=0.0), "w1") == []


def test_a_worker_reporting_an_epoch_not_older_than_ours_moves_us_above_it() -> None:
    """A coordinator whose clock is behind an earlier one's: it moves to a generation
    above every epoch it hears of and re-acks its own sessions with the new epoch."""
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    c.handle("w1", bb.Authed(1, A), now=0.1, wall=0.0)
    ahead = f"{10**18 + 5:020d}-99999999"
    out = c.handle("w2", hello("w2", (4, B, ahead, 7, True), epoch=ahead), now=0.2, wall=0.0)
    assert c.epoch > ahead and bb.epoch_generation(c.epoch) > bb.epoch_generation(ahead)
    assert c.epoch_changes == 1
    assert to(out, "w1") == [bb.AuthAck(1, c.epoch, 1)]
    assert to(out, "w2")[-1] == bb.Welcome(c.epoch)
    (update,) = [m for m in published(out) if isinstance(m, bb.Update)]
    assert update.epoch == c.epoch


def test_silent_workers_expire_and_their_sessions_leave() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    c.handle("w1", bb.Authed(1, A), now=0.0, wall=0.0)
    while c.due < SETTINGS.timing.worker_timeout - 0.01:  # the loop ticks when due
        c.tick(now=c.due, wall=0.0)
    assert c.tick(now=SETTINGS.timing.worker_timeout - 0.01, wall=0.0) is not None
    assert c.lobby.get_user(A) is not None
    out = c.tick(now=SETTINGS.timing.worker_timeout + 0.01, wall=0.0)
    assert c.lobby.get_user(A) is None and "w1" not in c.registry
    assert any(isinstance(m, bb.Update) and m.left == [A] for m in published(out))
    assert (c.workers_expired, c.ghosts_reaped) == (1, 1)


def test_a_snapshot_is_made_once_per_epoch_and_seq() -> None:
    """A resync storm (every worker asks at once) costs one snapshot: the same message
    until the lobby publishes again, then a new one that shows the change."""
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    c.handle("w2", hello("w2"), now=0.0, wall=0.0)
    c.handle("w1", bb.Authed(1, A), now=0.1, wall=0.0)
    (first,) = to(c.handle("w1", bb.SnapshotRequest(), now=0.2, wall=0.0), "w1")
    (again,) = to(c.handle("w2", bb.SnapshotRequest(), now=0.2, wall=0.0), "w2")
    assert first == bb.Snapshot(E0, 1, 1, [A]) and again is first
    c.handle("w2", bb.Authed(1, B), now=0.3, wall=0.0)  # published at once (no window)
    (after,) = to(c.handle("w1", bb.SnapshotRequest(), now=0.4, wall=0.0), "w1")
    assert after == bb.Snapshot(E0, 2, 2, [A, B])


def test_tick_is_due_for_a_flush_a_beat_or_the_check_for_silent_workers() -> None:
    windowed = dataclasses.replace(SETTINGS.timing, batch_window=0.05)
    c = CoordinatorCore(
        dataclasses.replace(SETTINGS, timing=windowed), epoch=E0, now=0.0, rebuild=False
    )
    c.tick(now=0.0, wall=0.0)  # the first beat
    assert c.due == timings.EXPIRY_CHECK  # the next check; the next beat is at 1.0
    c.handle("w1", hello("w1"), now=0.01, wall=0.0)
    out = c.handle("w1", bb.Authed(1, A), now=0.02, wall=0.0)
    assert published(out) == [] and c.due == 0.02 + 0.05  # the batch window's flush
    out = c.tick(now=c.due, wall=0.0)
    assert published(out) == [bb.Update(E0, 1, 1, [A], [], 0.0)]
    assert c.due == 0.07 + timings.EXPIRY_CHECK
    # A lost reply that needs a repair makes the next turn ask for it at once.
    (ack,) = to(out, "w1")
    c.undelivered("w1", ack)
    assert c.due == float("-inf")
    assert to(c.tick(now=0.08, wall=0.0), "w1") == [bb.Reannounce()]
    assert c.due == 0.08 + timings.EXPIRY_CHECK


def test_counts_for_the_metrics() -> None:
    """What the shell records: each update carries its publication's wall clock; a
    replaced session, a flap and a goodbye (no ghost: it said so) are counted."""
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    out = c.handle("w1", bb.Authed(1, A), now=1.0, wall=1234.5)
    (update,) = [m for m in published(out) if isinstance(m, bb.Update)]
    assert (update.joined, update.at) == ([A], 1234.5)
    assert c.lobby.online == 1
    # The same key again: replaced, and clients see it leave and join in one update.
    c.handle("w1", bb.Authed(2, A), now=2.0, wall=0.0)
    assert (c.lobby.replacements, c.flaps.total) == (1, 1)
    c.handle("w1", bb.Closed(2, A), now=3.0, wall=0.0)
    assert c.lobby.online == 0 and c.flaps.total == 1
    c.handle("w1", bb.Authed(3, A), now=4.0, wall=0.0)  # back within 10 s
    assert c.flaps.total == 2
    c.handle("w1", bb.Goodbye("w1"), now=5.0, wall=0.0)
    assert (c.workers_expired, c.ghosts_reaped, c.lobby.online) == (0, 0, 0)


def test_records_reach_the_workers_and_a_change_alone_keeps_mseq() -> None:
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    out = c.handle("w1", bb.Authed(1, A, "busy", '{"a":1}'), now=0.1, wall=7.0)
    assert published(out) == [bb.Update(E0, 1, 1, [A], [], 7.0, [], [(A, "busy", '{"a":1}')])]
    out = c.handle("w1", bb.SetRecord(1, A, "away", "{}"), now=0.2, wall=8.0)
    assert published(out) == [bb.Update(E0, 2, 1, [], [], 8.0, [(A, "away", "{}")])]
    assert to(out, "w1") == []  # nothing to acknowledge
    (snap,) = to(c.handle("w1", bb.SnapshotRequest(), now=0.3, wall=0.0), "w1")
    assert snap == bb.Snapshot(E0, 2, 1, [A], [(A, "away", "{}")])
    # Another connection's change for the key changes nothing.
    assert published(c.handle("w1", bb.SetRecord(2, A, "busy", "{}"), now=0.4, wall=0.0)) == []


def test_a_malformed_record_from_a_worker_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker checks records before it sends them: one that is not a record (a bug,
    or a foreign peer) is refused with a warning, and an auth keeps the default."""
    c = core()
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    out = c.handle("w1", bb.Authed(1, A, "away", '{"a": 1}'), now=0.1, wall=0.0)
    assert published(out) == [bb.Update(E0, 1, 1, [A], [], 0.0)]
    for bad in [bb.SetRecord(1, A, "", "{}"), bb.SetRecord(1, A, "away", "[]")]:
        assert published(c.handle("w1", bad, now=0.2, wall=0.0)) == []
    assert published(c.handle("w1", bb.SetRecord(1, "k", "away", "{}"), now=0.3, wall=0.0)) == []
    assert c.lobby.record_of(A) == records.DEFAULT
    assert "malformed key or record" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_restarted_coordinator_keeps_the_records_its_workers_announce() -> None:
    c = core(previous=f"{10**15:020d}-abcdef01")
    session = (1, A, f"{10**15:020d}-abcdef01", 3, True)
    c.handle("w1", hello("w1", session, records=[(1, "busy", '{"x":[]}')]), now=0.0, wall=0.0)
    (snap,) = to(c.handle("w1", bb.SnapshotRequest(), now=0.1, wall=0.0), "w1")
    assert isinstance(snap, bb.Snapshot)
    assert (snap.users, snap.records) == ([A], [(A, "busy", '{"x":[]}')])


# ------------------------------------------------------------ fuzz

WORKERS = ["w1", "w2", "w3"]
KEYS = [A, B, "C" * 64, "not-a-key", ""]
EPOCHS = [
    "",
    E0,
    f"{10**18 + 9:020d}-12345678",
    f"{10**15:020d}-abcdef01",
    f"{10**19 - 1:020d}-ffffffff",  # the last generation: nothing can be made above it
    "9" * 20 + "-00000000",
    "junk",
]

ints = st.integers(-3, 6)
texts = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))


def _field(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is list:
        return st.lists(_field(typing.get_args(tp)[0]), max_size=4)
    if origin is tuple:
        return st.tuples(*(_field(t) for t in typing.get_args(tp)))
    if tp is int:
        return ints
    if tp is float:
        return st.floats(-10, 200, allow_nan=False)
    if tp is bool:
        return st.booleans()
    return st.one_of(texts, st.sampled_from(EPOCHS))


def up_messages() -> st.SearchStrategy[bb.Message]:
    """Any message a worker (or anything on its socket) could send, including the ones a
    worker never sends and contents no honest worker would produce."""

    def build(cls: type[Any]) -> st.SearchStrategy[Any]:
        hints = typing.get_type_hints(cls)
        fields = {f.name: _field(hints[f.name]) for f in dataclasses.fields(cls)}
        return st.builds(cls, **fields)

    return st.one_of(*(build(cls) for cls in typing.get_args(bb.Message)))


conns = st.integers(0, 3)
keys = st.sampled_from([A, B, "c" * 64, "C" * 64])
stamps = st.tuples(st.sampled_from(EPOCHS), st.integers(0, 5))
claims = st.tuples(conns, keys, st.sampled_from(EPOCHS), st.integers(0, 5), st.booleans())
RECORDS = [
    records.DEFAULT,
    ("away", "{}"),
    ("busy", '{"a":1}'),
    ("", "{}"),  # the rest are not records: a worker never sends them
    ("away", "{bad"),
    ("away", '{"a": 1}'),
    ("x" * 33, "{}"),
]
some_record = st.sampled_from(RECORDS)
likely = st.one_of(
    st.builds(lambda c, k, r: bb.Authed(c, k, *r), conns, keys, some_record),
    st.builds(lambda c, k, r: bb.SetRecord(c, k, *r), conns, keys, some_record),
    st.builds(bb.Closed, conns, keys),
    st.builds(
        bb.Hello,
        st.sampled_from(WORKERS),
        st.sampled_from(EPOCHS),
        st.just("ipc:///r"),
        st.just(""),
        st.lists(claims, max_size=4),
        st.lists(st.builds(lambda c, r: (c, *r), conns, some_record), max_size=3),
    ),
    st.builds(bb.Route, st.integers(0, 9), keys, keys, st.just("m"), st.just("b"), st.floats(0, 9)),
    st.builds(bb.Heartbeat, st.sampled_from(WORKERS)),
    st.builds(bb.SnapshotRequest),
    st.builds(bb.Goodbye, st.sampled_from(WORKERS)),
    st.builds(bb.Eject, st.integers(0, 9), keys, st.just("r")),
)
step = st.one_of(
    st.tuples(st.just("msg"), st.sampled_from(WORKERS), likely),
    st.tuples(st.just("msg"), st.sampled_from(WORKERS), likely),
    st.tuples(st.just("msg"), st.sampled_from(WORKERS), up_messages()),
    st.tuples(st.just("tick"), st.floats(0, 3)),
    st.tuples(st.just("lose"), st.integers(0, 5)),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(step, max_size=60), st.sampled_from(["", E0, f"{10**19:020d}-00000001"]))
def test_no_message_sequence_crashes_the_coordinator_or_breaks_the_lobby(
    steps: list[tuple[Any, ...]], previous: str
) -> None:
    c = CoordinatorCore(SETTINGS, epoch=E0, now=0.0, previous=previous)
    now = 0.0
    last: list[Output] = []
    snapshot_seq = snapshot_mseq = 0
    lobby_at: dict[tuple[str, int], list[str]] = {}  # every (epoch, seq) seen, uncached

    def note() -> None:
        seq, _, users, _ = c.lobby.snapshot()
        assert lobby_at.setdefault((c.epoch, seq), users) == users

    for kind, *args in steps:
        note()
        if kind == "msg":
            worker, msg = args
            last = c.handle(worker, msg, now=now, wall=now)
        elif kind == "tick":
            now += args[0]
            last = c.tick(now=now, wall=now)
        else:
            replies = [o for o in last if isinstance(o, ToWorker)]
            if replies:
                lost = replies[args[0] % len(replies)]
                c.undelivered(lost.worker, lost.message)
            last = []
        c.lobby.check()
        for out in last:
            message = out.message
            bb.decode(bb.encode(message))  # whatever it says is well formed
            if isinstance(message, bb.Update | bb.Snapshot):
                assert message.epoch == c.epoch
            if isinstance(message, bb.Snapshot):  # exactly the lobby as of its seq
                assert message.users == lobby_at[message.epoch, message.seq]
            if isinstance(message, bb.Update):
                assert message.seq == snapshot_seq + 1
                snapshot_seq = message.seq
                if message.joined or message.left:  # what protocol 1 sees: consecutive
                    assert message.mseq == snapshot_mseq + 1
                else:
                    assert message.mseq == snapshot_mseq and message.updated
                snapshot_mseq = message.mseq
                entries = message.updated + message.records
                assert all(records.is_record(status, data) for _, status, data in entries)
        seq, _, users, _ = c.lobby.snapshot()
        assert seq == snapshot_seq and all(len(u) == 64 and u == u.lower() for u in users)


def test_the_welcome_lists_the_worker_keys_the_coordinator_admits() -> None:
    """Each worker's results socket takes these keys alone (issue 15, item 7)."""
    c = core()
    c.peer_keys = ["K1" * 20, "K2" * 20]
    out = c.handle("w1", hello("w1"), now=0.1, wall=0.0)
    assert to(out, "w1") == [bb.Welcome(E0, ["K1" * 20, "K2" * 20])]
    assert bb.decode(bb.encode(to(out, "w1")[0])) == to(out, "w1")[0]


def test_a_large_busy_lobby_keeps_its_widest_window() -> None:
    """Changes that keep coming to a lobby of 2,000 (what the default lets widen all
    the way): once publications are --max-batch-window apart they stay so. Judged by
    the gap between flushes, the window fell back to the floor each time it got there."""
    timing = dataclasses.replace(SETTINGS.timing, batch_window=0.005, max_batch_window=0.05)
    c = CoordinatorCore(
        dataclasses.replace(SETTINGS, timing=timing), epoch=E0, now=0.0, rebuild=False
    )
    keys = [f"{i:064x}" for i in range(2001)]
    c.handle("w1", hello("w1"), now=0.0, wall=0.0)
    for conn, key in enumerate(keys[:2000], 1):
        c.handle("w1", bb.Authed(conn, key), now=0.0, wall=0.0)

    def flush() -> float:
        while True:
            now = c.due
            if any(isinstance(m, bb.Update) for m in published(c.tick(now=now, wall=0.0))):
                return now

    last = flush()
    gaps = []
    for n in range(10):  # one key joins and leaves, each change 1 ms after a publication
        msg = bb.Authed(5000 + n, keys[-1]) if n % 2 == 0 else bb.Closed(5000 + n - 1, keys[-1])
        c.handle("w1", msg, now=last + 0.001, wall=0.0)
        now = flush()
        gaps.append(round(now - last, 3))
        last = now
    assert gaps[4:] == [0.051] * 6
    assert gaps[:4] == [0.011, 0.021, 0.041, 0.051]  # 1 ms, then 10, 20, 40, 50 ms windows
