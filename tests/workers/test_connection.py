"""The per-connection state machine, driven without any I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import backbone as bb
from shared import protocol
from shared.protocol import AuthFailure, CloseCode, ErrorCode, RejectReason, SendStatus
from workers.connection import MAX_HELD_FRAMES, Connection
from workers.limits import Limits
from workers.outputs import (
    Answer,
    AuthOutcome,
    Close,
    Emit,
    FrameLimits,
    Lesser,
    Output,
    SendOutcome,
    SnapshotCause,
    StartRoute,
    Write,
    WriteSnapshot,
)
from workers.ratelimit import RateLimits
from workers.replica import SyncState
from workers.states import TRANSITIONS, Delivery, Event, Fanout, Flow, Link, State

NONCE = bytes(range(32))
LIMITS = Limits(auth_timeout=10.0, auth_wait=5.0, lag_bytes=1000, max_queue_bytes=4000)
SK = SigningKey(bytes(range(1, 33)))
PK = SK.verify_key.encode().hex()
OTHER = SigningKey(bytes(range(2, 34))).verify_key.encode().hex()


@dataclass
class FakeReplica:
    epoch: str | None = "e1"
    seq: int = 0
    sync: SyncState = SyncState.LIVE
    users: set[str] = field(default_factory=set)
    snapshot_bytes: int = 100


def auth_frame(pk: str = PK, nonce: bytes = NONCE, sk: SigningKey = SK) -> str:
    sig = sk.sign(protocol.signed_payload(nonce.hex())).signature.hex()
    return json.dumps({"type": "auth", "publicKey": pk, "signature": sig})


def fresh(limits: Limits = LIMITS) -> Connection:
    return Connection.open(7, NONCE, now=100.0, limits=limits)


def feed(
    conn: Connection,
    frame: str | bytes,
    now: float = 101.0,
    link: Link = Link.UP,
    buffered: int = 0,
    replica: FakeReplica | None = None,
) -> list[Output]:
    """A frame from the client (the replica at epoch e1, seq 0 unless given)."""
    return conn.on_frame(frame, now, link, replica or FakeReplica(), buffered)


def ack(conn: Connection, epoch: str, seq: int, replica: FakeReplica) -> list[Output]:
    return conn.on_ack(epoch, seq, replica, 101.0, Link.UP)


def caught_up(conn: Connection, replica: FakeReplica) -> list[Output]:
    return conn.on_replica(replica, 101.0, Link.UP)


def resync(conn: Connection, replica: FakeReplica, announced: frozenset[int]) -> list[Output]:
    return conn.on_resync(replica, announced, 101.0, Link.UP)


AUTH_OK = [Write(protocol.auth_ok(PK), AuthOutcome.OK), WriteSnapshot(SnapshotCause.JOIN)]
GET_LOBBY = [WriteSnapshot(SnapshotCause.GET_LOBBY)]
DRAINED = [WriteSnapshot(SnapshotCause.SLOW_CONSUMER)]


def reach(state: State, limits: Limits = LIMITS) -> Connection:
    """A connection driven into ``state`` through the normal path."""
    conn = fresh(limits)
    if state is State.CHALLENGED:
        return conn
    if state is State.CLOSING:
        conn.on_kick()
        return conn
    if state is State.VERIFIED:
        feed(conn, auth_frame(), link=Link.DOWN)
        return conn
    feed(conn, auth_frame())
    if state is State.AUTHENTICATING:
        return conn
    ack(conn, "e1", 10, FakeReplica(seq=9))
    if state is State.ACKED:
        return conn
    caught_up(conn, FakeReplica(seq=10, users={PK}))
    assert conn.state is State.AUTHENTICATED
    return conn


def writes(outputs: list[Output]) -> list[dict[str, object]]:
    return [json.loads(a.frame) for a in outputs if isinstance(a, Write)]


def emitted(outputs: list[Output]) -> list[bb.UpMessage]:
    return [a.message for a in outputs if isinstance(a, Emit)]


def closes(outputs: list[Output]) -> list[CloseCode]:
    return [a.code for a in outputs if isinstance(a, Close)]


# --------------------------------------------------------------------------- transition table


def stall(conn: Connection) -> list[Output]:
    """A backlog whose peer acknowledges nothing, sampled until past the stall timeout."""
    conn.on_progress(5, 100, 0.0)
    return conn.on_progress(5, 100, LIMITS.stall_timeout)


def pipeline_overflow(conn: Connection) -> list[Output]:
    for _ in range(LIMITS.max_pipelined + 1):
        outputs = feed(conn, '{"type":"get_lobby"}')
    return outputs


FIRE: dict[Event, Callable[[Connection], list[Output]]] = {
    Event.AUTH_VALID: lambda c: feed(c, auth_frame()),
    Event.AUTH_INVALID: lambda c: feed(c, "not json"),
    Event.DEADLINE: lambda c: c.on_deadline(float("inf")),
    Event.LINK_UP: lambda c: c.on_link_up(FakeReplica()),
    Event.ACK: lambda c: ack(c, "e1", 10, FakeReplica(seq=9)),
    Event.CAUGHT_UP: lambda c: caught_up(c, FakeReplica(seq=10)),
    Event.UNANNOUNCED: lambda c: resync(c, FakeReplica(epoch="e2"), frozenset()),
    Event.KICK: lambda c: c.on_kick(),
    Event.PIPELINE_FULL: pipeline_overflow,
    Event.STALL: stall,
    Event.CUTOFF: lambda c: c.on_cutoff(),
    Event.EVICTED: lambda c: c.on_evicted(),
    Event.TRANSPORT_CLOSED: lambda c: c.on_transport_closed(),
    Event.FLOOD: lambda c: flood(c) if c.state is State.AUTHENTICATED else ping_flood(c),
}


def flood(conn: Connection, frame: str = '{"type":"dance"}') -> list[Output]:
    """Send ``frame`` at one instant until the machine does something other than answer."""
    for _ in range(10_000):
        outputs = feed(conn, frame, now=300.0)
        if not all(isinstance(a, Write) for a in outputs):
            return outputs
    raise AssertionError("never closed")


def ping_flood(conn: Connection, kind: Lesser = Lesser.PING) -> list[Output]:
    """Ping at one instant until the machine closes (a flood in any state)."""
    for _ in range(10_000):
        outputs, answer = conn.on_lesser(kind, 300.0, pressured=False)
        if answer is Answer.STOP:
            return outputs
        assert outputs == []
    raise AssertionError("never closed")


@pytest.mark.parametrize(("state", "event"), list(TRANSITIONS), ids=lambda v: v.value)
def test_every_transition_in_the_table(state: State, event: Event) -> None:
    conn = reach(state)
    FIRE[event](conn)
    assert conn.trace[-1][:2] == (state, event)
    assert conn.state in TRANSITIONS[(state, event)]


# Events decided by the machine from a frame (a frame in another state means something else).
_FRAME_EVENTS = (Event.AUTH_VALID, Event.AUTH_INVALID, Event.FLOOD, Event.PIPELINE_FULL)
OUTSIDE = [
    (state, event)
    for state in State
    for event in Event
    if (state, event) not in TRANSITIONS and event not in _FRAME_EVENTS
]


@pytest.mark.parametrize(("state", "event"), OUTSIDE, ids=lambda v: v.value)
def test_events_outside_the_table_change_nothing(state: State, event: Event) -> None:
    conn = reach(state)
    before = list(conn.trace)
    assert FIRE[event](conn) == []
    assert conn.state is state
    assert conn.trace == before


# --------------------------------------------------------------------------- authentication


def test_challenge_carries_the_nonce_as_lowercase_hex() -> None:
    frame = json.loads(fresh().challenge())
    assert frame == {"type": "challenge", "version": 1, "nonce": NONCE.hex()}


def test_valid_auth_emits_authed_with_the_lowercase_key() -> None:
    conn = fresh()
    outputs = feed(conn, auth_frame(PK.upper()))
    assert outputs == [Emit(bb.Authed(7, PK))]
    assert conn.state is State.AUTHENTICATING
    assert conn.deadline == 101.0 + LIMITS.auth_wait


def test_valid_auth_while_coordinator_down_waits_then_sends_authed() -> None:
    conn = fresh()
    assert feed(conn, auth_frame(), link=Link.DOWN) == []
    assert conn.state is State.VERIFIED
    assert conn.on_link_up(FakeReplica()) == [Emit(bb.Authed(7, PK))]
    assert conn.state is State.AUTHENTICATING


def _sig(nonce: bytes, sk: SigningKey = SK) -> str:
    return sk.sign(protocol.signed_payload(nonce.hex())).signature.hex()


AUTH_FAILURES: list[tuple[str, str | bytes, AuthFailure]] = [
    ("not-json", "{nope", AuthFailure.MALFORMED),
    ("binary", auth_frame().encode(), AuthFailure.MALFORMED),
    ("array", "[1,2]", AuthFailure.MALFORMED),
    ("no-type", json.dumps({"publicKey": PK}), AuthFailure.MALFORMED),
    ("missing-sig", json.dumps({"type": "auth", "publicKey": PK}), AuthFailure.MALFORMED),
    (
        "int-key",
        json.dumps({"type": "auth", "publicKey": 1, "signature": "a"}),
        AuthFailure.MALFORMED,
    ),
    ("unknown-type", json.dumps({"type": "hello"}), AuthFailure.MALFORMED),
    ("get_lobby", json.dumps({"type": "get_lobby"}), AuthFailure.UNEXPECTED_MESSAGE),
    (
        "send",
        json.dumps({"type": "send", "to": PK, "id": "1", "body": "x"}),
        AuthFailure.UNEXPECTED_MESSAGE,
    ),
    ("key-not-hex", auth_frame(pk="z" * 64), AuthFailure.INVALID_PUBLIC_KEY),
    ("key-short", auth_frame(pk=PK[:62]), AuthFailure.INVALID_PUBLIC_KEY),
    ("key-not-a-point", auth_frame(pk="00" * 32), AuthFailure.INVALID_PUBLIC_KEY),
    (
        "sig-not-hex",
        json.dumps({"type": "auth", "publicKey": PK, "signature": "g" * 128}),
        AuthFailure.INVALID_SIGNATURE,
    ),
    (
        "sig-short",
        json.dumps({"type": "auth", "publicKey": PK, "signature": _sig(NONCE)[:126]}),
        AuthFailure.INVALID_SIGNATURE,
    ),
    ("sig-other-nonce", auth_frame(nonce=bytes(32)), AuthFailure.INVALID_SIGNATURE),
    ("sig-other-key", auth_frame(pk=OTHER), AuthFailure.INVALID_SIGNATURE),
]


@pytest.mark.parametrize(
    ("frame", "reason"), [c[1:] for c in AUTH_FAILURES], ids=[c[0] for c in AUTH_FAILURES]
)
def test_auth_failures_send_reason_then_close_4001(frame: str | bytes, reason: AuthFailure) -> None:
    conn = fresh()
    outputs = feed(conn, frame)
    failed = Write(protocol.auth_failed(reason), AuthOutcome(reason.value))
    assert outputs == [failed, Close(CloseCode.AUTH_FAILED)]
    assert conn.state is State.CLOSING
    assert outputs[1].reason == "auth_failed"  # type: ignore[union-attr]


def test_an_auth_in_upper_case_hex_is_accepted() -> None:
    conn = fresh()
    feed(conn, protocol.auth(PK.upper(), _sig(NONCE).upper()))
    assert conn.state is State.AUTHENTICATING and conn.key == PK


@pytest.mark.parametrize("state", [State.VERIFIED, State.AUTHENTICATING, State.ACKED])
def test_frames_pipelined_before_auth_ok_are_answered_in_order_after_it(state: State) -> None:
    conn = reach(state)
    for frame in ('{"type":"get_lobby"}', auth_frame(), "garbage", _send(to=OTHER)):
        assert feed(conn, frame, now=102.0) == []
    if state is State.VERIFIED:
        conn.on_link_up(FakeReplica())
    if state is not State.ACKED:
        ack(conn, "e1", 10, FakeReplica(seq=9))
    outputs = caught_up(conn, FakeReplica(seq=10, users={PK}))
    assert outputs[:3] == [*AUTH_OK, *GET_LOBBY]
    assert writes(outputs[3:5]) == [
        json.loads(protocol.error(ErrorCode.MALFORMED, "already authenticated")),
        json.loads(protocol.error(ErrorCode.MALFORMED, "frame is not valid JSON")),
    ]
    assert outputs[5:] == [StartRoute(OTHER, "m1", "hi")]
    assert conn.guard.messages.level(101.0) == LIMITS.rate.msg_burst - 4  # they count


@pytest.mark.parametrize("state", [State.VERIFIED, State.AUTHENTICATING, State.ACKED])
def test_pipelined_frames_are_bounded_in_count_then_1008(state: State) -> None:
    conn = reach(state)
    for _ in range(LIMITS.max_pipelined):
        assert feed(conn, '{"type":"get_lobby"}') == []
    outputs = feed(conn, '{"type":"get_lobby"}')
    assert closes(outputs) == [CloseCode.POLICY_VIOLATION]
    assert conn.trace[-1][1] is Event.PIPELINE_FULL


def test_pipelined_frames_are_bounded_in_bytes_then_1008() -> None:
    conn = reach(State.AUTHENTICATING)
    big = _send(body="x" * 60_000)
    held = LIMITS.max_pipelined_bytes // len(big)
    for _ in range(held):
        assert feed(conn, big) == []
    assert closes(feed(conn, big)) == [CloseCode.POLICY_VIOLATION]


def test_pipelined_frames_are_dropped_when_the_auth_fails() -> None:
    conn = reach(State.AUTHENTICATING)
    feed(conn, _send(to=OTHER))
    assert conn.on_deadline(200.0) == [
        Close(CloseCode.TRY_AGAIN_LATER, AuthOutcome.UNAVAILABLE),
        Emit(bb.Closed(7, PK)),
    ]
    assert caught_up(conn, FakeReplica(seq=10, users={PK})) == []


def test_auth_deadline_closes_4003_without_frame() -> None:
    conn = fresh()
    assert conn.on_deadline(109.9) == []
    assert conn.on_deadline(110.0) == [Close(CloseCode.AUTH_TIMEOUT, AuthOutcome.TIMEOUT)]
    assert conn.state is State.CLOSING


@pytest.mark.parametrize("state", [State.VERIFIED, State.AUTHENTICATING, State.ACKED])
def test_auth_wait_deadline_closes_1013(state: State) -> None:
    conn = reach(state)
    assert conn.on_deadline(101.0 + LIMITS.auth_wait - 0.01) == []
    outputs = conn.on_deadline(101.0 + LIMITS.auth_wait)
    expected: list[Output] = [Close(CloseCode.TRY_AGAIN_LATER, AuthOutcome.UNAVAILABLE)]
    if state is not State.VERIFIED:
        expected.append(Emit(bb.Closed(7, PK)))
    assert outputs == expected


def test_authenticated_connection_has_no_deadline() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.deadline is None
    assert conn.on_deadline(10**9) == []


# --------------------------------------------------------------------------- ack and replica


def test_auth_ok_is_held_until_the_replica_applies_the_acked_seq() -> None:
    conn = reach(State.AUTHENTICATING)
    assert ack(conn, "e1", 10, FakeReplica(seq=9)) == []
    assert conn.state is State.ACKED
    assert caught_up(conn, FakeReplica(seq=10, sync=SyncState.SYNCING)) == []
    assert caught_up(conn, FakeReplica(epoch="e0", seq=12)) == []
    assert caught_up(conn, FakeReplica(seq=10)) == AUTH_OK
    assert conn.state is State.AUTHENTICATED


def test_ack_for_a_seq_already_applied_releases_at_once() -> None:
    conn = reach(State.AUTHENTICATING)
    assert ack(conn, "e1", 10, FakeReplica(seq=11)) == AUTH_OK


def test_a_second_ack_replaces_the_stamp_it_is_announced_with() -> None:
    """A coordinator that moved to a new epoch re-acknowledges its sessions; a lost ack
    is sent again. Either way the session keeps going, with the newest stamp."""
    conn = reach(State.AUTHENTICATED)
    assert ack(conn, "e2", 99, FakeReplica()) == []
    assert conn.state is State.AUTHENTICATED and conn.claim() == (7, PK, "e2", 99, True)
    waiting = reach(State.ACKED)
    assert ack(waiting, "e3", 4, FakeReplica(seq=3)) == []  # now waits for e3 seq 4
    assert caught_up(waiting, FakeReplica(seq=10)) == []
    assert caught_up(waiting, FakeReplica(epoch="e3", seq=4)) == AUTH_OK
    closed = reach(State.CLOSING)
    assert ack(closed, "e1", 1, FakeReplica()) == []


def test_resync_after_restart_releases_an_announced_ack_once_our_key_is_back() -> None:
    conn = reach(State.ACKED)
    new = FakeReplica(epoch="e2", seq=0, users=set())
    assert resync(conn, new, frozenset({7})) == []
    assert conn.state is State.ACKED
    assert caught_up(conn, FakeReplica(epoch="e2", seq=1, users={PK})) == AUTH_OK


def test_resync_after_restart_gives_up_on_an_unannounced_ack() -> None:
    conn = reach(State.ACKED)
    outputs = resync(conn, FakeReplica(epoch="e2"), frozenset())
    unavailable = Close(CloseCode.TRY_AGAIN_LATER, AuthOutcome.UNAVAILABLE)
    assert outputs == [unavailable, Emit(bb.Closed(7, PK))]


def test_a_stale_client_resumes_with_a_snapshot_caused_by_the_resync() -> None:
    conn = reach(State.AUTHENTICATED)
    resync(conn, FakeReplica(epoch="e2", users=set()), frozenset())
    resumed = conn.on_sweep(0, FakeReplica(epoch="e2", users={PK}))
    assert resumed == [WriteSnapshot(SnapshotCause.RESYNC)] and conn.flow is Flow.CURRENT


def test_resync_in_the_same_epoch_keeps_the_ack_target() -> None:
    conn = reach(State.ACKED)
    assert resync(conn, FakeReplica(seq=9, users={PK}), frozenset()) == []
    assert resync(conn, FakeReplica(seq=10), frozenset())[0] == AUTH_OK[0]


def test_resync_makes_clients_stale_until_their_key_is_in_the_replica() -> None:
    conn = reach(State.AUTHENTICATED)
    assert resync(conn, FakeReplica(epoch="e2", users=set()), frozenset()) == []
    assert conn.flow is Flow.STALE
    assert conn.on_sweep(0, FakeReplica(epoch="e2", users=set())) == []
    assert conn.on_update(0, FakeReplica(epoch="e2", seq=1, users={OTHER})) is Fanout.SKIP
    assert conn.on_update(0, FakeReplica(epoch="e2", seq=2, users={PK})) is Fanout.SNAPSHOT
    assert conn.flow is Flow.CURRENT


# --------------------------------------------------------------------------- kick and close


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_kick_in_every_state(state: State) -> None:
    conn = reach(state)
    outputs = conn.on_kick()
    if state is State.CLOSING:
        assert outputs == []
        return
    expected: list[Output] = [Close(CloseCode.SESSION_REPLACED)]
    if state in (State.AUTHENTICATING, State.ACKED, State.AUTHENTICATED):
        expected.append(Emit(bb.Closed(7, PK)))
    assert outputs == expected
    assert outputs[0].reason == "session_replaced"  # type: ignore[union-attr]
    assert conn.state is State.CLOSING


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_transport_closed_reports_closed_exactly_once(state: State) -> None:
    conn = reach(state)
    outputs = conn.on_transport_closed()
    recorded = state in (State.AUTHENTICATING, State.ACKED, State.AUTHENTICATED)
    assert outputs == ([Emit(bb.Closed(7, PK))] if recorded else [])
    assert conn.on_transport_closed() == []
    assert conn.on_kick() == []


def test_every_session_that_sent_authed_is_claimed() -> None:
    assert reach(State.CHALLENGED).claim() is None
    assert reach(State.VERIFIED).claim() is None  # Authed not sent: the coordinator can't know
    # Waiting for its ack: with the replica's (epoch, seq) when Authed was sent.
    assert reach(State.AUTHENTICATING).claim() == (7, PK, "e1", 0, False)
    # With the stamp of its ack ("e1", 10), so a coordinator can order sessions.
    assert reach(State.ACKED).claim() == (7, PK, "e1", 10, True)
    assert reach(State.AUTHENTICATED).claim() == (7, PK, "e1", 10, True)
    assert reach(State.CLOSING).claim() is None
    later = reach(State.VERIFIED)
    later.on_link_up(FakeReplica(epoch="e5", seq=42))
    assert later.claim() == (7, PK, "e5", 42, False)


# --------------------------------------------------------------------------- direct messages


LIVE = FakeReplica(seq=11, users={PK})


def test_deliver_to_authenticated_writes_the_message() -> None:
    conn = reach(State.AUTHENTICATED)
    outputs, status = conn.on_deliver(OTHER, "m1", "hi", 0, LIVE)
    assert outputs == [Write(protocol.message(OTHER, "m1", "hi"))]
    assert status is Delivery.DELIVERED


def test_a_message_over_the_recipients_bound_is_refused_and_the_recipient_stays() -> None:
    conn = reach(State.AUTHENTICATED)
    frame = protocol.message(OTHER, "m1", "hi")
    # The message room: half the lag limit (the other half is the lobby's).
    assert conn.message_room(LIVE) == LIMITS.lag_bytes // 2 < LIMITS.max_queue_bytes
    fits = conn.message_room(LIVE) - len(frame)
    assert conn.on_deliver(OTHER, "m1", "hi", fits + 1, LIVE) == ([], Delivery.FULL)
    assert conn.on_deliver(OTHER, "m1", "hi", fits, LIVE) == ([Write(frame)], Delivery.DELIVERED)
    assert conn.state is State.AUTHENTICATED
    assert Delivery.FULL.value == "rate_limited"  # what the sender is told


@pytest.mark.parametrize("state", [State.CHALLENGED, State.VERIFIED, State.AUTHENTICATING])
def test_deliver_before_ack_is_offline(state: State) -> None:
    assert reach(state).on_deliver(OTHER, "m", "b", 0, LIVE) == ([], Delivery.OFFLINE)


def test_held_messages_follow_auth_ok_and_snapshot() -> None:
    conn = reach(State.ACKED)
    assert conn.on_deliver(OTHER, "m1", "one", 0, LIVE) == ([], Delivery.DELIVERED)
    assert conn.on_deliver(OTHER, "m2", "two", 0, LIVE) == ([], Delivery.DELIVERED)
    outputs = caught_up(conn, FakeReplica(seq=10))
    assert outputs == [
        *AUTH_OK,
        Write(protocol.message(OTHER, "m1", "one")),
        Write(protocol.message(OTHER, "m2", "two")),
    ]


def test_held_messages_are_bounded_in_bytes() -> None:
    conn = reach(State.ACKED)
    assert conn.on_deliver(OTHER, "m1", "x" * 300, 0, LIVE)[1] is Delivery.DELIVERED
    assert conn.on_deliver(OTHER, "m2", "x" * 100, 0, LIVE) == ([], Delivery.FULL)
    assert conn.state is State.ACKED


def test_held_messages_are_bounded_in_count() -> None:
    conn = reach(State.ACKED, Limits(max_queue_bytes=10**9, lag_bytes=10**9))
    for i in range(MAX_HELD_FRAMES):
        assert conn.on_deliver(OTHER, str(i), "", 0, LIVE)[1] is Delivery.DELIVERED
    assert conn.on_deliver(OTHER, "last", "", 0, LIVE)[1] is Delivery.FULL
    assert conn.state is State.ACKED


# --------------------------------------------------------------------------- after auth


def _send(to: str = PK, msg_id: str = "m1", body: str = "hi") -> str:
    return json.dumps({"type": "send", "to": to, "id": msg_id, "body": body})


def _error(code: str) -> Callable[[list[Output]], bool]:
    return lambda outputs: [w["code"] for w in writes(outputs)] == [code]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("nope", "malformed"),
        (b"\x00\x01", "malformed"),
        ("42", "malformed"),
        (json.dumps({"type": 5}), "malformed"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"type": "send", "to": PK, "id": "", "body": "x"}), "malformed"),
        (json.dumps({"type": "send", "to": PK, "id": "x" * 65, "body": "x"}), "malformed"),
        (json.dumps({"type": "send", "to": PK, "id": "a", "body": 3}), "malformed"),
        (auth_frame(), "malformed"),
        ('{"type":"send","to":"' + PK + '","id":"a","body":"\\ud800"}', "malformed"),
    ],
)
def test_bad_frames_after_auth_get_error_and_keep_the_connection(
    frame: str | bytes, code: str
) -> None:
    conn = reach(State.AUTHENTICATED)
    outputs = feed(conn, frame, now=200.0)
    assert _error(code)(outputs)
    assert writes(outputs)[0]["type"] == "error"
    assert isinstance(writes(outputs)[0]["message"], str)
    assert conn.state is State.AUTHENTICATED


def test_get_lobby_writes_the_snapshot_and_resumes_updates() -> None:
    conn = reach(State.AUTHENTICATED)
    conn.flow = Flow.LAGGING
    assert feed(conn, '{"type":"get_lobby"}', now=200.0) == GET_LOBBY
    assert conn.flow is Flow.CURRENT


def test_get_lobby_past_the_lag_bound_waits_for_the_backlog_to_drain() -> None:
    """A snapshot per get_lobby to a client that does not read would pile up without
    bound: past lag_bytes it is lagging instead, and gets one fresh snapshot later."""
    conn = reach(State.AUTHENTICATED)
    lagging = feed(conn, '{"type":"get_lobby"}', now=200.0, buffered=LIMITS.lag_bytes + 1)
    assert lagging == [] and conn.flow is Flow.LAGGING
    assert conn.on_sweep(LIMITS.lag_bytes // 4, FakeReplica(users={PK})) == DRAINED


@pytest.mark.parametrize(
    ("frame", "link", "expected"),
    [
        (_send(body="x" * 65537), Link.UP, RejectReason.TOO_LARGE),
        (_send(body="é" * 32769), Link.UP, RejectReason.TOO_LARGE),
        (_send(to="abc"), Link.UP, RejectReason.INVALID_RECIPIENT),
        (_send(to="g" * 64), Link.UP, RejectReason.INVALID_RECIPIENT),
        (_send(), Link.DOWN, RejectReason.UNAVAILABLE),
    ],
)
def test_send_rejections(frame: str, link: Link, expected: RejectReason) -> None:
    conn = reach(State.AUTHENTICATED)
    outputs = feed(conn, frame, now=200.0, link=link)
    frame = protocol.send_result("m1", SendStatus.REJECTED, expected)
    assert outputs == [Write(frame, SendOutcome(SendStatus.REJECTED, expected))]


def test_send_routes_to_the_lowercase_key_at_the_body_limit() -> None:
    conn = reach(State.AUTHENTICATED)
    body = "x" * protocol.MAX_BODY_BYTES
    outputs = feed(conn, _send(to=OTHER.upper(), body=body), now=200.0)
    assert outputs == [StartRoute(OTHER, "m1", body)]


# --------------------------------------------------------------------------- lobby flow


def test_lagging_client_skips_updates_then_gets_one_snapshot() -> None:
    conn = reach(State.AUTHENTICATED)
    replica = FakeReplica(seq=11, users={PK})
    assert conn.on_update(LIMITS.lag_bytes, replica) is Fanout.UPDATE
    assert conn.on_update(LIMITS.lag_bytes + 1, replica) is Fanout.SKIP
    assert conn.flow is Flow.LAGGING
    assert conn.on_update(LIMITS.lag_bytes // 4 + 1, replica) is Fanout.SKIP
    assert conn.on_sweep(LIMITS.lag_bytes // 4 + 1, replica) == []
    assert conn.on_sweep(LIMITS.lag_bytes // 4, replica) == DRAINED
    assert conn.flow is Flow.CURRENT
    assert conn.on_sweep(0, replica) == []
    assert conn.on_update(0, replica) is Fanout.UPDATE


def test_lagging_client_recovers_on_the_next_update() -> None:
    conn = reach(State.AUTHENTICATED)
    conn.on_update(LIMITS.lag_bytes + 1, FakeReplica())
    assert conn.on_update(0, FakeReplica(seq=12)) is Fanout.SNAPSHOT


def test_no_snapshot_for_lagging_client_while_replica_syncs() -> None:
    conn = reach(State.AUTHENTICATED)
    conn.on_update(LIMITS.lag_bytes + 1, FakeReplica())
    assert conn.on_sweep(0, FakeReplica(sync=SyncState.SYNCING)) == []


@pytest.mark.parametrize("state", [s for s in State if s is not State.AUTHENTICATED])
def test_only_authenticated_clients_get_updates(state: State) -> None:
    assert reach(state).on_update(0, FakeReplica()) is Fanout.SKIP


# --------------------------------------------------------------------------- totality

frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["type", "publicKey", "signature", "to", "id", "body", "x"]),
            st.one_of(
                st.sampled_from(["auth", "get_lobby", "send", PK, "", "A" * 64]),
                st.text(max_size=80),
                st.integers(),
                st.none(),
                st.lists(st.integers(), max_size=3),
            ),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(state=st.sampled_from(list(State)), frame=frames, link=st.sampled_from(list(Link)))
def test_no_frame_raises_in_any_state(state: State, frame: str | bytes, link: Link) -> None:
    conn = reach(state)
    outputs = feed(conn, frame, now=150.0, link=link)
    for output in outputs:
        if isinstance(output, Write):
            decoded = json.loads(output.frame)
            assert decoded["type"] in {"auth_failed", "error", "send_result"}
            output.frame.encode("utf-8")  # always writable as a text frame
        elif isinstance(output, Close):
            assert output.code in (CloseCode.AUTH_FAILED, CloseCode.POLICY_VIOLATION)
        elif isinstance(output, StartRoute):
            assert protocol.is_hex_key(output.to) and output.to == output.to.lower()
            bb.encode(bb.Route(1, PK, output.to, output.msg_id, output.body, 0.0))
    if state is not State.AUTHENTICATED and state is not State.CLOSING:
        assert conn.state is not State.AUTHENTICATED


# --------------------------------------------------------------------------- abuse bounds

SLOW_RATE = Limits(
    lag_bytes=1000,
    max_queue_bytes=4000,
    rate=RateLimits(msg_rate=1.0, msg_burst=2.0, flood_rejects=3.0, flood_window=3.0),
)


def test_greeting_sets_both_frame_limits_before_the_challenge() -> None:
    conn = fresh(Limits(pre_auth_frame_bytes=512, max_frame_bytes=9000))
    assert conn.greeting() == [FrameLimits(512, 9000), Write(conn.challenge())]


def test_frames_over_the_rate_are_answered_then_a_flood_closes_1008() -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    now = 500.0
    assert feed(conn, _send(), now) == [StartRoute(PK, "m1", "hi")]
    assert feed(conn, '{"type":"get_lobby"}', now) == GET_LOBBY
    # Over the burst: a send gets its one send_result, anything else an error.
    assert feed(conn, _send(), now) == [
        Write(
            protocol.send_result("m1", SendStatus.REJECTED, RejectReason.RATE_LIMITED),
            SendOutcome(SendStatus.REJECTED, RejectReason.RATE_LIMITED),
        )
    ]
    limited = Write(protocol.error(ErrorCode.RATE_LIMITED, "too many messages; slow down"))
    assert feed(conn, '{"type":"get_lobby"}', now) == [limited]
    bad_id = '{"type":"send","to":"' + PK + '","id":"\\ud800","body":"x"}'
    assert feed(conn, bad_id, now) == [limited]  # no id to answer with
    assert conn.state is State.AUTHENTICATED
    # The fourth rejection within the window is a flood.
    outputs = feed(conn, b"\x00", now)
    assert outputs == [Close(CloseCode.POLICY_VIOLATION), Emit(bb.Closed(7, PK))]
    assert conn.trace[-1] == (State.AUTHENTICATED, Event.FLOOD, State.CLOSING)
    assert feed(conn, _send(), now + 100) == []


def test_a_client_that_slows_down_when_told_is_never_closed() -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    now = 500.0
    for _ in range(1000):
        outputs = feed(conn, '{"type":"get_lobby"}', now)
        if outputs != GET_LOBBY:
            assert writes(outputs)[0]["code"] == "rate_limited"
            now += 1.0  # told: waits for one token
    assert conn.state is State.AUTHENTICATED


def test_rate_limit_applies_only_after_auth_ok() -> None:
    conn = reach(State.CHALLENGED, SLOW_RATE)
    for _ in range(5):
        assert conn.guard.messages.level(500.0) == 2.0  # untouched before auth
    assert closes(feed(conn, "nope", 500.0)) == [CloseCode.AUTH_FAILED]


# ------------------------------------------------------------- pings, pongs, fragments


def test_a_ping_is_answered_at_once_unless_the_backlog_is_past_the_write_limit() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.on_lesser(Lesser.PING, 500.0, pressured=False) == ([], Answer.PONG)
    assert conn.on_lesser(Lesser.PING, 501.0, pressured=True) == ([], Answer.LATER)


@pytest.mark.parametrize("kind", [Lesser.PONG, Lesser.FRAGMENT])
def test_pongs_and_fragments_get_no_answer_but_count(kind: Lesser) -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    assert conn.on_lesser(kind, 500.0, pressured=False) == ([], Answer.NONE)
    assert conn.guard.messages.level(500.0) == 1.0


def test_pings_and_messages_share_one_budget() -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    for _ in range(2):  # the burst
        assert conn.on_lesser(Lesser.PING, 500.0, pressured=False) == ([], Answer.PONG)
    assert writes(feed(conn, '{"type":"get_lobby"}', 500.0))[0]["code"] == "rate_limited"


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSING])
@pytest.mark.parametrize("kind", list(Lesser))
def test_a_flood_of_control_frames_or_fragments_closes_1008_in_any_state(
    state: State, kind: Lesser
) -> None:
    """With an account or without: a flood closes with 1008 (telling the coordinator if
    it holds the session), and nothing more is read from the connection."""
    conn = reach(state, SLOW_RATE)
    recorded = conn.claim() is not None
    outputs = ping_flood(conn, kind)
    assert outputs[0] == Close(CloseCode.POLICY_VIOLATION)
    assert outputs[1:] == ([Emit(bb.Closed(7, PK))] if recorded else [])
    assert conn.trace[-1] == (state, Event.FLOOD, State.CLOSING)
    # Still flooding while the close goes out: still not read, and closed only once.
    assert conn.on_lesser(kind, 300.0, pressured=False) == ([], Answer.STOP)


def test_the_default_budget_closes_a_ping_flood_within_two_hundred_pings() -> None:
    """The default path (the process test runs with the default limits too): a burst,
    then the rejections a flood is allowed, then 1008."""
    conn = reach(State.CHALLENGED, Limits())
    rate = Limits().rate
    allowed = int(rate.msg_burst + rate.flood_rejects)
    for _ in range(allowed):
        assert conn.on_lesser(Lesser.PING, 300.0, pressured=False) == ([], Answer.PONG)
    outputs, answer = conn.on_lesser(Lesser.PING, 300.0, pressured=False)
    assert (closes(outputs), answer) == ([CloseCode.POLICY_VIOLATION], Answer.STOP)


def test_a_closing_connection_still_answers_pings_within_the_rate() -> None:
    """RFC 6455 allows control frames during the closing handshake."""
    conn = reach(State.CLOSING)
    assert conn.on_lesser(Lesser.PING, 500.0, pressured=False) == ([], Answer.PONG)


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.floats(1.0, 30.0), max_size=200),
    kinds=st.lists(st.sampled_from(list(Lesser)), min_size=1),
    pressured=st.booleans(),
)
def test_control_frames_within_the_rate_never_close(
    gaps: list[float], kinds: list[Lesser], pressured: bool
) -> None:
    """A keepalive (or anything no faster than the rate) is never closed, in any state,
    and every ping is answered: at once, or once the backlog drains."""
    for state in (State.CHALLENGED, State.AUTHENTICATED):
        conn = reach(state, SLOW_RATE)
        now = 500.0
        for i, gap in enumerate(gaps):
            now += gap
            kind = kinds[i % len(kinds)]
            outputs, answer = conn.on_lesser(kind, now, pressured)
            assert outputs == []
            if kind is Lesser.PING:
                assert answer is (Answer.LATER if pressured else Answer.PONG)
            else:
                assert answer is Answer.NONE
        assert conn.state is state


def test_send_result_is_always_written_after_auth_ok() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.on_result("m1", SendStatus.DELIVERED, None) == [
        Write(protocol.send_result("m1", SendStatus.DELIVERED), SendOutcome(SendStatus.DELIVERED))
    ]


@pytest.mark.parametrize("state", [s for s in State if s is not State.AUTHENTICATED])
def test_send_result_before_auth_ok_or_after_close_is_dropped(state: State) -> None:
    assert reach(state).on_result("m", SendStatus.DELIVERED, None) == []


@settings(max_examples=200, deadline=None)
@given(
    backlogs=st.lists(
        st.tuples(st.sampled_from(["update", "sweep", "deliver"]), st.integers(0, 9000)),
        max_size=60,
    )
)
def test_backlog_never_grows_past_its_bounds(backlogs: list[tuple[str, int]]) -> None:
    """Whatever the backlog does, a frame is only written within the bound that applies
    to it: lobby traffic below lag_bytes (or a quarter of it to resume), a direct message
    only to a current view and if it fits in the message room (half the lag limit);
    past that it is refused, and the recipient is never closed for it."""
    conn = reach(State.AUTHENTICATED)
    replica = FakeReplica(seq=11, users={PK})
    for kind, buffered in backlogs:
        if kind == "update":
            fanout = conn.on_update(buffered, replica)
            if fanout is Fanout.UPDATE:
                assert buffered <= LIMITS.lag_bytes
            elif fanout is Fanout.SNAPSHOT:
                assert buffered <= LIMITS.lag_bytes // 4
        elif kind == "sweep":
            if conn.on_sweep(buffered, replica):
                assert buffered <= LIMITS.lag_bytes // 4
        else:
            current = conn.flow is Flow.CURRENT
            outputs, delivery = conn.on_deliver(OTHER, "m", "x", buffered, replica)
            frame = protocol.message(OTHER, "m", "x")
            if delivery is Delivery.DELIVERED:
                assert current and writes(outputs)
                assert buffered + len(frame) <= LIMITS.lag_bytes // 2
            else:
                assert delivery is Delivery.FULL and outputs == []
        assert conn.state is State.AUTHENTICATED


def test_in_a_big_lobby_a_client_with_a_snapshot_in_flight_still_gets_updates() -> None:
    """A snapshot of thousands of users is larger than lag_bytes: a client that has one
    in its buffer must get the updates that follow, not be sent into a loop of
    snapshots. Updates are skipped only past twice a snapshot."""
    conn = reach(State.AUTHENTICATED)
    big = FakeReplica(seq=11, users={PK}, snapshot_bytes=40 * LIMITS.lag_bytes)
    assert conn.on_update(40 * LIMITS.lag_bytes + 10, big) is Fanout.UPDATE
    assert conn.on_update(80 * LIMITS.lag_bytes + 1, big) is Fanout.SKIP
    assert conn.on_sweep(20 * LIMITS.lag_bytes, big) == DRAINED


# --------------------------------------------------------------------------- stalls, cut-off


def test_a_backlog_without_reading_progress_for_the_stall_timeout_closes_4005() -> None:
    conn = reach(State.AUTHENTICATED)
    t = LIMITS.stall_timeout
    assert conn.on_progress(1000, 50_000, 0.0) == []
    assert conn.on_progress(1000, 60_000, t - 0.1) == []  # more queued, nothing acked
    assert conn.on_progress(1000, 60_000, t) == [
        Close(CloseCode.SLOW_CONSUMER),
        Emit(bb.Closed(7, PK)),
    ]
    assert conn.trace[-1] == (State.AUTHENTICATED, Event.STALL, State.CLOSING)


def test_any_reading_progress_restarts_the_stall_clock() -> None:
    """A phone in a tunnel for a few seconds, or a slow link that keeps reading, is
    never closed: every acknowledged byte, and an empty backlog, count as progress."""
    conn = reach(State.AUTHENTICATED)
    t = LIMITS.stall_timeout
    now = 0.0
    acked = 0
    for _ in range(20):
        assert conn.on_progress(acked, 4_000_000, now) == []
        now += t * 0.9
        acked += 1
    assert conn.on_progress(acked, 0, now + t * 2) == []  # drained: nothing pending
    assert conn.state is State.AUTHENTICATED


def test_without_tcp_info_a_shrinking_backlog_is_progress() -> None:
    conn = reach(State.AUTHENTICATED)
    t = LIMITS.stall_timeout
    assert conn.on_progress(None, 9000, 0.0) == []
    assert conn.on_progress(None, 8000, t - 1) == []  # shrank: progress
    assert conn.on_progress(None, 8500, 2 * t - 2) == []
    assert closes(conn.on_progress(None, 8500, 2 * t - 1)) == [CloseCode.SLOW_CONSUMER]


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSING])
def test_a_cut_off_worker_closes_every_client_1013(state: State) -> None:
    conn = reach(state)
    outputs = conn.on_cutoff()
    assert closes(outputs) == [CloseCode.TRY_AGAIN_LATER]
    recorded = state in (State.AUTHENTICATING, State.ACKED, State.AUTHENTICATED)
    assert emitted(outputs) == ([bb.Closed(7, PK)] if recorded else [])
    # Only an authentication under way ends here, unavailable: a verified client.
    pending = state in (State.VERIFIED, State.AUTHENTICATING, State.ACKED)
    close = outputs[0]
    assert isinstance(close, Close)
    assert close.outcome is (AuthOutcome.UNAVAILABLE if pending else None)


def test_eviction_applies_to_the_challenge_phase_only() -> None:
    assert reach(State.CHALLENGED).on_evicted() == [Close(CloseCode.TRY_AGAIN_LATER)]
    assert reach(State.AUTHENTICATING).on_evicted() == []


def test_the_auth_check_is_the_one_given() -> None:
    """The shell passes a timed verify_auth; the machine calls exactly that, once."""
    calls: list[tuple[bytes, str]] = []

    def verify(nonce: bytes, public_key: str, signature: str) -> AuthFailure | None:
        calls.append((nonce, public_key))
        return protocol.verify_auth(nonce, public_key, signature)

    conn = Connection.open(7, NONCE, now=100.0, limits=LIMITS, verify=verify)
    assert feed(conn, auth_frame()) == [Emit(bb.Authed(7, PK))]
    assert calls == [(NONCE, PK)]


# --------------------------------------------------------------------------- lobby first


THIRD = SigningKey(bytes(range(3, 35))).verify_key.encode().hex()


def test_no_message_is_written_while_the_view_is_behind() -> None:
    """A lagging or stale client gets its snapshot before any more messages: otherwise
    messages could keep its backlog above the point where the snapshot is sent."""
    conn = reach(State.AUTHENTICATED)
    assert conn.on_update(LIMITS.lag_bytes + 1, LIVE) is Fanout.SKIP
    assert conn.flow is Flow.LAGGING
    assert conn.on_deliver(OTHER, "m1", "hi", 0, LIVE) == ([], Delivery.FULL)
    assert conn.on_sweep(0, LIVE) == DRAINED
    assert conn.on_deliver(OTHER, "m2", "hi", 0, LIVE)[1] is Delivery.DELIVERED
    resync(conn, LIVE, frozenset())
    assert conn.flow is Flow.STALE
    assert conn.on_deliver(OTHER, "m3", "hi", 0, LIVE) == ([], Delivery.FULL)


def test_one_sender_gets_at_most_half_the_room_and_another_still_finds_room() -> None:
    limits = Limits(lag_bytes=4000, max_queue_bytes=10**6)
    conn = reach(State.AUTHENTICATED, limits)
    room = conn.message_room(LIVE)
    assert room == 2000
    buffered, delivered = 0, 0
    while conn.on_deliver(OTHER, "a", "x" * 200, buffered, LIVE)[1] is Delivery.DELIVERED:
        buffered += len(protocol.message(OTHER, "a", "x" * 200))
        delivered += 1
    assert 0 < buffered <= room // 2 + 400  # half the room (the first always fits)
    # Another sender finds room, up to its share with one other sender holding bytes.
    assert conn.on_deliver(THIRD, "b", "y" * 200, buffered, LIVE)[1] is Delivery.DELIVERED
    assert conn.senders()[THIRD] > 0 and conn.senders()[OTHER] == buffered
    # The backlog drains: what each holds shrinks in proportion, the first sends again.
    assert conn.on_deliver(OTHER, "a", "x" * 200, 0, LIVE)[1] is Delivery.DELIVERED
    assert set(conn.senders()) == {OTHER}


def test_the_memory_budget_can_allow_less() -> None:
    conn = reach(State.AUTHENTICATED)
    frame = protocol.message(OTHER, "m1", "hi")
    assert conn.on_deliver(OTHER, "m1", "hi", 0, LIVE, len(frame) - 1)[1] is Delivery.FULL
    assert conn.on_deliver(OTHER, "m1", "hi", 0, LIVE, len(frame))[1] is Delivery.DELIVERED
    # No allowance left: the view collapses to a later snapshot, which waits to fit.
    assert conn.on_update(0, LIVE, 0) is Fanout.SKIP and conn.flow is Flow.LAGGING
    assert conn.on_sweep(0, LIVE, LIVE.snapshot_bytes - 1) == []
    assert conn.on_sweep(0, LIVE, LIVE.snapshot_bytes) == DRAINED


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            st.tuples(st.just("deliver"), st.sampled_from([OTHER, THIRD, PK]), st.integers(0, 400)),
            st.tuples(st.just("update"), st.just(""), st.integers(0, 300)),
            st.tuples(st.just("sweep"), st.just(""), st.just(0)),
            st.tuples(st.just("drain"), st.just(""), st.integers(0, 2000)),
        ),
        max_size=80,
    )
)
def test_the_lobby_is_never_stuck_behind_messages(events: list[tuple[str, str, int]]) -> None:
    """A model of the backlog (what is written adds to it, the reader drains it) under
    any order of messages from several senders, lobby updates and sweeps: messages
    never fill more than the message room, so every lobby frame is written behind at
    most the lag limit; once a client lags, no message is written until its snapshot;
    no sender holds more than half the room plus one message."""
    conn = reach(State.AUTHENTICATED)
    room, lag = conn.message_room(LIVE), LIMITS.lag_bytes
    backlog = 0
    for kind, sender, size in events:
        if kind == "deliver":
            behind = conn.flow is not Flow.CURRENT
            outputs, delivery = conn.on_deliver(sender, "m", "x" * size, backlog, LIVE)
            if delivery is Delivery.DELIVERED:
                assert not behind
                (write,) = outputs
                assert isinstance(write, Write)
                backlog += len(write.frame)
                assert backlog <= room
                one = len(protocol.message(sender, "m", "x" * 400))
                assert conn.senders()[sender] <= room // 2 + one
            else:
                assert delivery is Delivery.FULL and outputs == []
        elif kind == "update":
            fanout = conn.on_update(backlog, LIVE)
            if fanout is not Fanout.SKIP:
                assert backlog <= lag  # never behind more than the lag limit
                backlog += size if fanout is Fanout.UPDATE else LIVE.snapshot_bytes
        elif kind == "sweep":
            if conn.on_sweep(backlog, LIVE):
                assert backlog <= lag // 4
                backlog += LIVE.snapshot_bytes
        else:
            backlog = max(0, backlog - size)
        assert conn.state is State.AUTHENTICATED


def test_get_lobby_past_the_budget_waits_for_a_snapshot_that_fits() -> None:
    """A client asking for snapshots it does not read cannot make the worker hold them
    past its allowance: it lags, and the snapshot comes once it fits."""
    conn = reach(State.AUTHENTICATED)
    get = '{"type":"get_lobby"}'
    assert feed(conn, get, replica=LIVE) == GET_LOBBY
    assert conn.on_frame(get, 101.0, Link.UP, LIVE, 0, LIVE.snapshot_bytes - 1) == []
    assert conn.flow is Flow.LAGGING
    assert conn.on_sweep(0, LIVE, LIVE.snapshot_bytes) == DRAINED
