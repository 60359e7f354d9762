"""A connection in protocol version 2, without sockets: the auth check's order, auth_ok
and the record it carries, the frames after it, and the binary lobby frames the worker
builds (workers/speaking_v2.py, workers/lobby_v2.py, and their place in the machine)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import backbone as bb
from shared import v2
from shared.protocol import CloseCode
from tests.workers.test_connection import LIMITS, NONCE, PK, SK, FakeReplica, ack, feed
from tests.workers.test_core import E1, E2, SKS, A, C, Seen, Worker
from tests.workers.test_core import LIMITS as CORE_LIMITS
from workers.clients import Client, Group, group_of
from workers.connection import Connection
from workers.lobby_v2 import Entries, snapshot_frame, update_frame
from workers.outputs import (
    AuthOutcome,
    Broadcast,
    Close,
    Emit,
    SnapshotCause,
    StartRoute,
    Write,
    WriteSnapshot,
)
from workers.replica import Replica
from workers.speaking_v2 import V2Config
from workers.states import State

HERE = "ws://127.0.0.1:8765/ws"
ELSEWHERE = "wss://relay.example:443/ws"
CONFIG = V2Config(frozenset({HERE, "ws://localhost:8765/ws"}), record_rate=1.0, record_burst=2)
OTHER_SK = SigningKey(bytes(range(3, 35)))


def fresh() -> Connection:
    return Connection.open(7, NONCE, now=100.0, limits=LIMITS, v2=CONFIG)


def auth(
    *, server: str = HERE, signed_for: str | None = None, sk: SigningKey = SK, **extra: Any
) -> str:
    signature = v2.sign_challenge_v2(sk, signed_for or server, NONCE.hex())
    obj = {"type": "auth", "publicKey": PK, "signature": signature, "server": server, **extra}
    return json.dumps(obj)


def refused(frame: str | bytes) -> str:
    conn = fresh()
    outputs = feed(conn, frame)
    assert conn.state is State.CLOSING
    assert isinstance(outputs[0], Write) and isinstance(outputs[1], Close)
    assert outputs[1].code == CloseCode.AUTH_FAILED
    answer = v2.decode_server_frame_v2(outputs[0].frame)
    assert isinstance(answer, v2.AuthFailedV2)
    assert isinstance(answer.reason, v2.AuthFailureV2)
    assert outputs[0].outcome is AuthOutcome(answer.reason.value)  # counted by reason
    return answer.reason.value


def online(replica: FakeReplica, frame: str | None = None) -> tuple[Connection, list[Any]]:
    conn = fresh()
    feed(conn, frame or auth(), replica=replica)
    replica.seq += 1
    replica.users.add(PK)
    return conn, ack(conn, "e1", replica.seq, replica)


# --------------------------------------------------------------------------- auth


def test_the_challenge_is_version_2() -> None:
    challenge = json.loads(fresh().challenge())
    assert challenge == {"type": "challenge", "version": 2, "nonce": NONCE.hex()}


BAD_RECORD = {"record": {"status": ""}}
BAD_FOLLOW = {"follow": {"scope": "everyone"}}
BAD_RESUME = {"resume": {"epoch": "", "seq": -1}}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"binary", "malformed"),
        ('{"type":"auth","publicKey":"' + PK + '","signature":"00"}', "malformed"),
        ('{"type":"get_lobby"}', "unexpected_message"),
        (auth(server=ELSEWHERE, **BAD_RECORD, **BAD_FOLLOW), "wrong_server"),
        (auth(server="ws://127.0.0.1:8766/ws"), "wrong_server"),
        (auth(sk=OTHER_SK, **BAD_RECORD).replace(PK, "zz" * 32), "invalid_public_key"),
        (auth(sk=OTHER_SK, **BAD_RECORD, **BAD_RESUME), "invalid_signature"),
        (auth(signed_for=ELSEWHERE), "invalid_signature"),  # signed for another, names us
        (auth(**BAD_RECORD, **BAD_FOLLOW, **BAD_RESUME), "bad_record"),
        (auth(**BAD_FOLLOW, **BAD_RESUME), "bad_follow"),
        (auth(**BAD_RESUME), "bad_resume"),
    ],
)
def test_auth_is_checked_in_the_contracts_order(frame: str | bytes, reason: str) -> None:
    assert refused(frame) == reason


@given(wrong=st.booleans(), bad_sig=st.booleans(), record=st.booleans(), follow=st.booleans())
def test_the_first_failing_check_is_the_one_reported(
    wrong: bool, bad_sig: bool, record: bool, follow: bool
) -> None:
    extra: dict[str, Any] = {**(BAD_RECORD if record else {}), **(BAD_FOLLOW if follow else {})}
    frame = auth(server=ELSEWHERE if wrong else HERE, sk=OTHER_SK if bad_sig else SK, **extra)
    expected = ["wrong_server", "invalid_signature", "bad_record", "bad_follow"]
    flags = [wrong, bad_sig, record, follow]
    if any(flags):
        assert refused(frame) == expected[flags.index(True)]
    else:
        assert feed(fresh(), frame) == [Emit(bb.Authed(7, PK))]


def test_the_claimed_server_is_kept_for_the_log() -> None:
    conn = fresh()
    feed(conn, auth(server=ELSEWHERE))
    assert conn.v2 is not None and conn.v2.claimed == ELSEWHERE


def test_a_good_auth_carries_its_record_and_auth_ok_names_the_state_shown() -> None:
    replica = FakeReplica(seq=4)
    record = {"status": "away", "data": {"b": 1, "a": "é"}}
    conn = fresh()
    outputs = feed(conn, auth(record=record, resume={"epoch": "e1", "seq": 2}), replica=replica)
    assert outputs == [Emit(bb.Authed(7, PK, "away", '{"b":1,"a":"é"}'))]
    replica.seq, replica.users = 5, {PK}
    outputs = ack(conn, "e1", 5, replica)
    assert outputs[0] == Write(v2.auth_ok_v2(PK, "e1", 5, False), AuthOutcome.OK)  # no resume
    assert outputs[1] == WriteSnapshot(SnapshotCause.JOIN)
    assert group_of(conn) is Group.CURRENT_V2


def test_a_version_1_connection_is_in_the_version_1_group() -> None:
    conn = Connection.open(7, NONCE, now=100.0, limits=LIMITS)
    assert conn.v2 is None and json.loads(conn.challenge())["version"] == 1


# --------------------------------------------------------------------------- after auth


def errors(outputs: list[Any]) -> list[str]:
    codes = []
    for output in outputs:
        assert isinstance(output, Write)
        answer = v2.decode_server_frame_v2(output.frame)
        assert isinstance(answer, v2.ErrorV2)
        codes.append(getattr(answer.code, "value", answer.code))
    return codes


def test_set_record_is_sent_to_the_coordinator_within_its_rate() -> None:
    replica = FakeReplica()
    conn, _ = online(replica, auth(record={"status": "busy"}))
    first = feed(conn, v2.set_record(data={"x": 1}), now=101.0, replica=replica)
    assert first == [Emit(bb.SetRecord(7, PK, "busy", '{"x":1}'))]  # status kept
    second = feed(conn, v2.set_record(status="away"), now=101.0, replica=replica)
    assert second == [Emit(bb.SetRecord(7, PK, "away", '{"x":1}'))]
    assert errors(feed(conn, v2.set_record(status="x"), now=101.0, replica=replica)) == [
        "rate_limited"
    ]
    assert conn.record == ("away", '{"x":1}')  # the refused change is not applied
    assert feed(conn, v2.set_record(status="x"), now=102.0, replica=replica) != []  # refilled
    assert conn.record == ("x", '{"x":1}')


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"set_record"}', "bad_record"),
        ('{"type":"set_record","data":[]}', "bad_record"),
        ('{"type":"follow"}', "bad_follow"),
        ('{"type":"watch","keys":[]}', "not_watching"),
        ('{"type":"unwatch","keys":[]}', "not_watching"),
        ('{"type":"nope"}', "unknown_type"),
        ("[]", "malformed"),
        (b"\x01", "malformed"),
    ],
)
def test_what_is_not_served_or_not_valid_is_an_error_and_the_session_stays(
    frame: str | bytes, code: str
) -> None:
    replica = FakeReplica()
    conn, _ = online(replica)
    assert errors(feed(conn, frame, replica=replica)) == [code]
    assert conn.state is State.AUTHENTICATED and conn.record == ("online", "{}")


@pytest.mark.parametrize("follow", [{"scope": "count"}, {"scope": "watch", "keys": [PK]}])
def test_an_auth_may_follow_a_watchlist_or_the_count(follow: dict[str, Any]) -> None:
    conn = fresh()
    assert feed(conn, auth(follow=follow)) == [Emit(bb.Authed(7, PK))]
    assert conn.v2 is not None and conn.v2.scope.value == follow["scope"]
    assert CONFIG.scopes.interest.follows(7) is (follow["scope"] == "watch")
    conn.on_transport_closed()  # gone before auth_ok: it follows nothing any more
    assert not CONFIG.scopes.interest.follows(7) and 7 not in CONFIG.scopes.counts


def test_a_change_of_choice_or_watchlist_gets_a_fresh_snapshot_and_a_refused_one_none() -> None:
    replica = FakeReplica()
    conn, _ = online(replica)
    fresh_one = [WriteSnapshot(SnapshotCause.GET_LOBBY)]
    interest = CONFIG.scopes.interest
    assert feed(conn, v2.follow(v2.Follow(v2.Scope.WATCH, (K1,))), replica=replica) == fresh_one
    assert feed(conn, v2.watch([K2]), replica=replica) == fresh_one
    assert set(interest.keys_of(7)) == {K1, K2}
    many = [f"{i:064x}" for i in range(999)]
    assert errors(feed(conn, v2.watch(many), replica=replica)) == ["watchlist_full"]
    assert set(interest.keys_of(7)) == {K1, K2}  # nothing changed
    assert feed(conn, v2.unwatch([K1]), replica=replica) == fresh_one
    assert set(interest.keys_of(7)) == {K2}
    room, CONFIG.scopes.room = CONFIG.scopes.room, lambda extra: False  # under pressure
    try:
        assert errors(feed(conn, v2.watch([K3]), replica=replica)) == ["watchlist_full"]
        assert feed(conn, v2.unwatch([K2]), replica=replica) == fresh_one  # shrinking is fine
    finally:
        CONFIG.scopes.room = room
    assert feed(conn, v2.follow(v2.Follow(v2.Scope.COUNT)), replica=replica) == fresh_one
    assert conn.v2 is not None and conn.v2.scope is v2.Scope.COUNT and not interest.follows(7)
    assert errors(feed(conn, v2.watch([K1]), replica=replica)) == ["not_watching"]
    conn.on_transport_closed()
    assert 7 not in CONFIG.scopes.counts


def test_a_follow_of_the_lobby_and_get_lobby_get_a_fresh_snapshot() -> None:
    replica = FakeReplica()
    conn, _ = online(replica)
    for frame in ('{"type":"follow","scope":"lobby"}', '{"type":"get_lobby"}'):
        assert feed(conn, frame, replica=replica) == [WriteSnapshot(SnapshotCause.GET_LOBBY)]


# --------------------------------------------------------------------------- lobby frames

K1, K2, K3 = ("11" * 32, "22" * 32, "33" * 32)


def test_an_update_is_framed_from_the_backbones_update() -> None:
    update = bb.Update(
        "e1", 9, 4, [K1, K2], [K3], 0.0, [(K3, "away", "{}")], [(K2, "busy", '{"a":1}')]
    )
    decoded = v2.decode_server_frame_v2(update_frame(update))
    assert isinstance(decoded, v2.Update)
    assert (decoded.seq, decoded.prev) == (9, 8)  # seq, not protocol 1's mseq
    assert [(e.key, e.record) for e in decoded.joined] == [
        (K1, v2.Record()),
        (K2, v2.Record("busy", '{"a":1}')),
    ]
    assert [(e.key, e.record) for e in decoded.updated] == [(K3, v2.Record("away"))]
    assert decoded.left == (K3,)


def test_a_change_of_records_alone_is_an_update_too() -> None:
    update = bb.Update("e1", 10, 4, [], [], 0.0, [(K1, "online", '{"n":2}')])
    decoded = v2.decode_server_frame_v2(update_frame(update))
    assert isinstance(decoded, v2.Update) and decoded.prev == 9
    assert not decoded.joined and not decoded.left and len(decoded.updated) == 1


def test_a_snapshot_lists_every_online_key_with_its_record_at_seq() -> None:
    replica = Replica()
    replica.on_welcome(bb.Welcome("e1"))
    replica.on_snapshot(bb.Snapshot("e1", 7, 3, [K1, K2], [(K2, "busy", '{"z":0}')]))
    replica.on_update(bb.Update("e1", 8, 3, [], [], 0.0, [(K1, "away", "{}")]))
    decoded = v2.decode_server_frame_v2(snapshot_frame(replica))
    assert isinstance(decoded, v2.Snapshot)
    assert (decoded.epoch, decoded.seq, decoded.scope) == ("e1", 8, v2.Scope.LOBBY)
    assert {e.key: e.record for e in decoded.entries} == {
        K1: v2.Record("away"),
        K2: v2.Record("busy", '{"z":0}'),
    }


# --------------------------------------------------------------------------- in the core


def v2_online(w: Worker, sk: SigningKey) -> Client[str]:
    """A version 2 client authenticated and acknowledged at the next seq."""
    w.handles += 1
    handle = f"h{w.handles}"
    w.shell.seen[handle] = Seen()
    client = w.core.connect(handle, f"10.0.1.{w.handles}", "peer", w.now, CONFIG)
    assert client is not None
    nonce = client.machine.nonce.hex()
    key = sk.verify_key.encode().hex()
    signature = v2.sign_challenge_v2(sk, HERE, nonce)
    w.frame(client, v2.auth_v2(key, signature, HERE))
    seq = w.core.replica.seq + 1
    w.batch(bb.Update(E1, seq, seq, [key], [], w.wall))
    w.batch(bb.AuthAck(client.machine.conn_id, E1, seq))
    assert client.machine.state is State.AUTHENTICATED
    return client


def broadcasts(w: Worker) -> list[Broadcast[str]]:
    return [o for _, o in w.shell.log if isinstance(o, Broadcast)]


def snapshots(w: Worker, client: Client[str]) -> list[SnapshotCause]:
    return [o.cause for h, o in w.shell.log if h == client.handle and isinstance(o, WriteSnapshot)]


def test_updates_go_to_each_version_in_its_own_group_records_alone_too() -> None:
    w = Worker()
    w.live()
    old, new = w.online(SKS[0]), v2_online(w, SKS[1])
    assert (old.group, new.group) == (Group.CURRENT, Group.CURRENT_V2)
    w.shell.log.clear()
    w.batch(bb.Update(E1, 8, 7, [], [], w.wall, [(A, "away", "{}")]))
    [sent] = broadcasts(w)
    assert list(sent.clients) == [old.handle] and list(sent.clients_v2) == [new.handle]
    assert sent.updates[0].frame == "" and sent.updates[0].update is not None
    w.core.clients.check()


def test_a_lagging_version_2_client_resumes_with_a_snapshot_and_a_new_epoch_sends_one() -> None:
    w = Worker()
    w.live()
    slow = v2_online(w, SKS[0])
    w.core.clients.pressured.add(slow.handle)
    w.shell.buffers[slow.handle] = CORE_LIMITS.lag_bytes + 1
    w.batch(bb.Update(E1, 7, 7, [C], [], w.wall))
    assert slow.group is Group.BEHIND
    assert slow.handle not in broadcasts(w)[-1].clients_v2
    w.shell.buffers[slow.handle] = 0
    w.tick()
    assert slow.group is Group.CURRENT_V2
    assert snapshots(w, slow) == [SnapshotCause.JOIN, SnapshotCause.SLOW_CONSUMER]
    w.batch(bb.Welcome(E2))  # a new coordinator: resync, and a fresh snapshot once it shows us
    w.awake(3.5)
    w.batch(bb.Welcome(E2), bb.Snapshot(E2, 1, 1, [A]))
    w.tick()
    assert snapshots(w, slow)[-1] is SnapshotCause.RESYNC
    w.core.clients.check()


def test_entries_kept_between_snapshots_follow_every_change_of_record() -> None:
    replica = Replica()
    replica.on_welcome(bb.Welcome("e1"))
    replica.on_snapshot(bb.Snapshot("e1", 1, 1, [K1, K2], []))
    entries = Entries()
    assert entries.snapshot(replica) == snapshot_frame(replica)
    replica.on_update(bb.Update("e1", 2, 1, [], [], 0.0, [(K1, "busy", "{}")]))
    replica.on_update(bb.Update("e1", 3, 2, [K3], [K2], 0.0, [], [(K3, "x", '{"a":1}')]))
    assert entries.snapshot(replica) == snapshot_frame(replica)
    decoded = v2.decode_server_frame_v2(entries.snapshot(replica))
    assert isinstance(decoded, v2.Snapshot)
    assert {e.key: e.record.status for e in decoded.entries} == {K1: "busy", K3: "x"}


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
TYPES = ["auth", "set_record", "follow", "watch", "unwatch", "get_lobby", "send", "x"]
FIELDS = ["status", "data", "scope", "keys", "record", "follow", "resume", "server", "to"]


@st.composite
def hostile(draw: st.DrawFn) -> str | bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=40) | st.text(max_size=40))
    obj = draw(st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=4))
    obj["type"] = draw(st.sampled_from(TYPES))
    return json.dumps(obj)


@given(frames=st.lists(hostile(), max_size=12), first=hostile())
def test_no_frame_crashes_a_version_2_connection(frames: list[str | bytes], first: str) -> None:
    """Before auth: one frame, refused with a reason or taken; after: each is answered,
    emits a record, asks for a snapshot or routes a send; the session stays."""
    conn = fresh()
    feed(conn, first)
    replica = FakeReplica()
    conn, _ = online(replica)
    for i, frame in enumerate(frames):
        outputs = feed(conn, frame, now=200.0 + i, replica=replica)
        assert len(outputs) == 1, outputs
        assert conn.state is State.AUTHENTICATED
        (output,) = outputs
        if isinstance(output, Write):
            assert json.loads(output.frame)["type"] in ("error", "send_result")
        else:
            assert isinstance(output, Emit | WriteSnapshot | StartRoute), output


def refusal(outputs: list[Any]) -> v2.ErrorV2:
    (output,) = outputs
    assert isinstance(output, Write)
    answer = v2.decode_server_frame_v2(output.frame)
    assert isinstance(answer, v2.ErrorV2)
    return answer


def test_scope_requests_applied_are_counted_and_a_refusal_says_how_many() -> None:
    replica = FakeReplica()
    conn, _ = online(replica, auth(follow={"scope": "watch", "keys": [K1]}))
    applied = CONFIG.scopes.applied
    assert applied.get(7, 0) == 0  # the auth's follow is none of them
    feed(conn, v2.watch([K2]), replica=replica)
    feed(conn, '{"type":"get_lobby"}', replica=replica)  # not a scope request
    feed(conn, v2.unwatch([K1]), replica=replica, now=102.0)
    assert applied[7] == 2
    full = refusal(feed(conn, v2.watch([f"{i:064x}" for i in range(1000)]), now=104.0))
    assert (full.code, full.applied) == (v2.ErrorCodeV2.WATCHLIST_FULL, 2)
    bad = refusal(feed(conn, '{"type":"follow","scope":"all"}', replica=replica, now=106.0))
    assert (bad.code, bad.applied) == (v2.ErrorCodeV2.BAD_FOLLOW, 2)
    other = refusal(feed(conn, '{"type":"set_record"}', replica=replica, now=108.0))
    assert (other.code, other.applied) == (v2.ErrorCodeV2.BAD_RECORD, None)  # no request's
    feed(conn, v2.follow(v2.Follow(v2.Scope.COUNT)), replica=replica, now=110.0)
    lost = refusal(feed(conn, v2.watch([K1]), replica=replica, now=112.0))
    assert (lost.code, lost.applied) == (v2.ErrorCodeV2.NOT_WATCHING, 3)
    for _ in range(500):  # over the message rate: refused, and said so with the count
        outputs = feed(conn, v2.follow(v2.Follow()), replica=replica, now=114.0)
        if outputs != [WriteSnapshot(SnapshotCause.GET_LOBBY)]:
            break
    throttled = refusal(outputs)
    assert throttled.code is v2.ErrorCodeV2.RATE_LIMITED
    assert throttled.applied == applied[7]
    conn.on_transport_closed()
    assert 7 not in applied


def test_snapshots_and_counts_carry_the_connections_count_of_requests_applied() -> None:
    scopes = CONFIG.scopes
    replica: Any = FakeReplica(users={K1})
    replica.record_of = lambda key: ("away", "{}")
    scopes.applied[9] = 4
    scopes.choose(9, v2.Follow(v2.Scope.WATCH, (K1,)))
    try:
        frame = v2.decode_server_frame_v2(scopes.fresh(9, v2.Scope.WATCH, replica, 0.0))
        assert isinstance(frame, v2.Snapshot) and frame.applied == 4
        scopes.choose(9, v2.Follow(v2.Scope.COUNT))
        count = v2.decode_server_frame_v2(scopes.fresh(9, v2.Scope.COUNT, replica, 0.0))
        assert isinstance(count, v2.Count) and count.applied == 4
        assert [v2.decode_server_frame_v2(text).applied for _, text in scopes.due("e", 9.0)] in (
            [],
            [4],
        )
    finally:
        scopes.forget(9)
    lobby = v2.encode_snapshot("e1", 7, v2.Scope.LOBBY, [(K1, v2.Record("away"))])
    patched = v2.server.with_applied(lobby, 70000)
    assert patched == v2.encode_snapshot("e1", 7, v2.Scope.LOBBY, [(K1, v2.Record("away"))], 70000)
