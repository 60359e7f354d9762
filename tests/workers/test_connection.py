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
from workers.admission import RateLimits
from workers.connection import (
    MAX_HELD_FRAMES,
    TRANSITIONS,
    Action,
    Close,
    Connection,
    Emit,
    Event,
    Fanout,
    Flow,
    FrameLimit,
    Limits,
    Link,
    StartRoute,
    State,
    Write,
    WriteSnapshot,
    verify_auth,
)
from workers.replica import SyncState

NONCE = bytes(range(32))
LIMITS = Limits(auth_timeout=10.0, auth_wait=5.0, lag_bytes=1000, max_queue_bytes=4000)
SK = SigningKey(bytes(range(1, 33)))
PK = SK.verify_key.encode().hex()
OTHER = SigningKey(bytes(range(2, 34))).verify_key.encode().hex()
RAISE_LIMIT = FrameLimit(LIMITS.max_frame_bytes)


@dataclass
class FakeReplica:
    epoch: str | None = "e1"
    seq: int = 0
    sync: SyncState = SyncState.LIVE
    users: set[str] = field(default_factory=set)


def auth_frame(pk: str = PK, nonce: bytes = NONCE, sk: SigningKey = SK) -> str:
    sig = sk.sign(protocol.signed_payload(nonce.hex())).signature.hex()
    return json.dumps({"type": "auth", "publicKey": pk, "signature": sig})


def fresh(limits: Limits = LIMITS) -> Connection:
    return Connection.open(7, NONCE, now=100.0, limits=limits)


def reach(state: State, limits: Limits = LIMITS) -> Connection:
    """A connection driven into ``state`` through the normal path."""
    conn = fresh(limits)
    if state is State.CHALLENGED:
        return conn
    if state is State.CLOSING:
        conn.on_kick()
        return conn
    if state is State.VERIFIED:
        conn.on_frame(auth_frame(), 101.0, Link.DOWN)
        return conn
    conn.on_frame(auth_frame(), 101.0, Link.UP)
    if state is State.AUTHENTICATING:
        return conn
    conn.on_ack("e1", 10, FakeReplica(seq=9))
    if state is State.ACKED:
        return conn
    conn.on_replica(FakeReplica(seq=10, users={PK}))
    assert conn.state is State.AUTHENTICATED
    return conn


def writes(actions: list[Action]) -> list[dict[str, object]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, Write)]


def emitted(actions: list[Action]) -> list[bb.UpMessage]:
    return [a.message for a in actions if isinstance(a, Emit)]


def closes(actions: list[Action]) -> list[CloseCode]:
    return [a.code for a in actions if isinstance(a, Close)]


# --------------------------------------------------------------------------- transition table

FIRE: dict[Event, Callable[[Connection], list[Action]]] = {
    Event.AUTH_VALID: lambda c: c.on_frame(auth_frame(), 101.0, Link.UP),
    Event.AUTH_INVALID: lambda c: c.on_frame("not json", 101.0, Link.UP),
    Event.DEADLINE: lambda c: c.on_deadline(float("inf")),
    Event.LINK_UP: lambda c: c.on_link_up(),
    Event.ACK: lambda c: c.on_ack("e1", 10, FakeReplica(seq=9)),
    Event.CAUGHT_UP: lambda c: c.on_replica(FakeReplica(seq=10)),
    Event.UNANNOUNCED: lambda c: c.on_resync(FakeReplica(epoch="e2"), frozenset()),
    Event.KICK: lambda c: c.on_kick(),
    Event.SLOW: lambda c: c.on_deliver(OTHER, "m", "x" * 5000, 10**9)[0],
    Event.TRANSPORT_CLOSED: lambda c: c.on_transport_closed(),
    Event.FLOOD: lambda c: flood(c),
}


def flood(conn: Connection, frame: str = '{"type":"dance"}') -> list[Action]:
    """Send ``frame`` at one instant until the machine does something other than answer."""
    for _ in range(10_000):
        actions = conn.on_frame(frame, 300.0, Link.UP)
        if not all(isinstance(a, Write) for a in actions):
            return actions
    raise AssertionError("never closed")


@pytest.mark.parametrize(("state", "event"), list(TRANSITIONS), ids=lambda v: v.value)
def test_every_transition_in_the_table(state: State, event: Event) -> None:
    conn = reach(state)
    FIRE[event](conn)
    assert conn.trace[-1][:2] == (state, event)
    assert conn.state in TRANSITIONS[(state, event)]


_FRAME_EVENTS = (Event.AUTH_VALID, Event.AUTH_INVALID, Event.FLOOD)  # the machine's call
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
    actions = conn.on_frame(auth_frame(PK.upper()), 101.0, Link.UP)
    assert actions == [Emit(bb.Authed(7, PK))]
    assert conn.state is State.AUTHENTICATING
    assert conn.deadline == 101.0 + LIMITS.auth_wait


def test_valid_auth_while_coordinator_down_waits_then_sends_authed() -> None:
    conn = fresh()
    assert conn.on_frame(auth_frame(), 101.0, Link.DOWN) == []
    assert conn.state is State.VERIFIED
    assert conn.on_link_up() == [Emit(bb.Authed(7, PK))]
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
    actions = conn.on_frame(frame, 101.0, Link.UP)
    assert actions == [Write(protocol.auth_failed(reason)), Close(CloseCode.AUTH_FAILED)]
    assert conn.state is State.CLOSING
    assert actions[1].reason == "auth_failed"  # type: ignore[union-attr]


def test_verify_auth_accepts_either_case() -> None:
    sig = _sig(NONCE)
    assert verify_auth(NONCE, PK.upper(), sig.upper()) is None
    assert verify_auth(NONCE, PK, sig) is None


@pytest.mark.parametrize("state", [State.VERIFIED, State.AUTHENTICATING, State.ACKED])
@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (json.dumps({"type": "get_lobby"}), AuthFailure.UNEXPECTED_MESSAGE),
        (auth_frame(), AuthFailure.UNEXPECTED_MESSAGE),
        ("garbage", AuthFailure.MALFORMED),
    ],
)
def test_frames_before_auth_ok_fail_the_auth(state: State, frame: str, reason: AuthFailure) -> None:
    conn = reach(state)
    actions = conn.on_frame(frame, 102.0, Link.UP)
    assert writes(actions) == [json.loads(protocol.auth_failed(reason))]
    assert closes(actions) == [CloseCode.AUTH_FAILED]
    recorded = state is not State.VERIFIED
    assert emitted(actions) == ([bb.Closed(7, PK)] if recorded else [])


def test_auth_deadline_closes_4003_without_frame() -> None:
    conn = fresh()
    assert conn.on_deadline(109.9) == []
    assert conn.on_deadline(110.0) == [Close(CloseCode.AUTH_TIMEOUT)]
    assert conn.state is State.CLOSING


@pytest.mark.parametrize("state", [State.VERIFIED, State.AUTHENTICATING, State.ACKED])
def test_auth_wait_deadline_closes_1013(state: State) -> None:
    conn = reach(state)
    assert conn.on_deadline(101.0 + LIMITS.auth_wait - 0.01) == []
    actions = conn.on_deadline(101.0 + LIMITS.auth_wait)
    expected: list[Action] = [Close(CloseCode.TRY_AGAIN_LATER)]
    if state is not State.VERIFIED:
        expected.append(Emit(bb.Closed(7, PK)))
    assert actions == expected


def test_authenticated_connection_has_no_deadline() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.deadline is None
    assert conn.on_deadline(10**9) == []


# --------------------------------------------------------------------------- ack and replica


def test_auth_ok_is_held_until_the_replica_applies_the_acked_seq() -> None:
    conn = reach(State.AUTHENTICATING)
    assert conn.on_ack("e1", 10, FakeReplica(seq=9)) == []
    assert conn.state is State.ACKED
    assert conn.on_replica(FakeReplica(seq=10, sync=SyncState.SYNCING)) == []
    assert conn.on_replica(FakeReplica(epoch="e0", seq=12)) == []
    actions = conn.on_replica(FakeReplica(seq=10))
    assert actions == [RAISE_LIMIT, Write(protocol.auth_ok(PK)), WriteSnapshot()]
    assert conn.state is State.AUTHENTICATED


def test_ack_for_a_seq_already_applied_releases_at_once() -> None:
    conn = reach(State.AUTHENTICATING)
    actions = conn.on_ack("e1", 10, FakeReplica(seq=11))
    assert actions == [RAISE_LIMIT, Write(protocol.auth_ok(PK)), WriteSnapshot()]


def test_duplicate_or_late_ack_is_ignored() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.on_ack("e1", 99, FakeReplica()) == []
    closed = reach(State.CLOSING)
    assert closed.on_ack("e1", 1, FakeReplica()) == []


def test_resync_after_restart_releases_an_announced_ack_once_our_key_is_back() -> None:
    conn = reach(State.ACKED)
    new = FakeReplica(epoch="e2", seq=0, users=set())
    assert conn.on_resync(new, frozenset({7})) == []
    assert conn.state is State.ACKED
    actions = conn.on_replica(FakeReplica(epoch="e2", seq=1, users={PK}))
    assert actions == [RAISE_LIMIT, Write(protocol.auth_ok(PK)), WriteSnapshot()]


def test_resync_after_restart_gives_up_on_an_unannounced_ack() -> None:
    conn = reach(State.ACKED)
    actions = conn.on_resync(FakeReplica(epoch="e2"), frozenset())
    assert actions == [Close(CloseCode.TRY_AGAIN_LATER), Emit(bb.Closed(7, PK))]


def test_resync_in_the_same_epoch_keeps_the_ack_target() -> None:
    conn = reach(State.ACKED)
    assert conn.on_resync(FakeReplica(seq=9, users={PK}), frozenset()) == []
    assert conn.on_resync(FakeReplica(seq=10), frozenset())[1] == Write(protocol.auth_ok(PK))


def test_resync_makes_clients_stale_until_their_key_is_in_the_replica() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.on_resync(FakeReplica(epoch="e2", users=set()), frozenset()) == []
    assert conn.flow is Flow.STALE
    assert conn.on_sweep(0, FakeReplica(epoch="e2", users=set())) == []
    assert conn.on_update(0, FakeReplica(epoch="e2", seq=1, users={OTHER})) is Fanout.SKIP
    assert conn.on_update(0, FakeReplica(epoch="e2", seq=2, users={PK})) is Fanout.SNAPSHOT
    assert conn.flow is Flow.CURRENT


# --------------------------------------------------------------------------- kick and close


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_kick_in_every_state(state: State) -> None:
    conn = reach(state)
    actions = conn.on_kick()
    if state is State.CLOSING:
        assert actions == []
        return
    expected: list[Action] = [Close(CloseCode.SESSION_REPLACED)]
    if state in (State.AUTHENTICATING, State.ACKED, State.AUTHENTICATED):
        expected.append(Emit(bb.Closed(7, PK)))
    assert actions == expected
    assert actions[0].reason == "session_replaced"  # type: ignore[union-attr]
    assert conn.state is State.CLOSING


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_transport_closed_reports_closed_exactly_once(state: State) -> None:
    conn = reach(state)
    actions = conn.on_transport_closed()
    recorded = state in (State.AUTHENTICATING, State.ACKED, State.AUTHENTICATED)
    assert actions == ([Emit(bb.Closed(7, PK))] if recorded else [])
    assert conn.on_transport_closed() == []
    assert conn.on_kick() == []


def test_session_is_announced_only_once_recorded() -> None:
    assert reach(State.AUTHENTICATING).session() is None
    # With the stamp of its ack ("e1", 10), so a coordinator can order sessions.
    assert reach(State.ACKED).session() == (7, PK, "e1", 10)
    assert reach(State.AUTHENTICATED).session() == (7, PK, "e1", 10)
    assert reach(State.CLOSING).session() is None


# --------------------------------------------------------------------------- direct messages


def test_deliver_to_authenticated_writes_the_message() -> None:
    conn = reach(State.AUTHENTICATED)
    actions, status = conn.on_deliver(OTHER, "m1", "hi", buffered=0)
    assert actions == [Write(protocol.message(OTHER, "m1", "hi"))]
    assert status is SendStatus.DELIVERED


def test_deliver_to_slow_consumer_closes_4005() -> None:
    conn = reach(State.AUTHENTICATED)
    actions, status = conn.on_deliver(OTHER, "m1", "hi", buffered=LIMITS.max_queue_bytes + 1)
    assert actions == [Close(CloseCode.SLOW_CONSUMER), Emit(bb.Closed(7, PK))]
    assert status is SendStatus.OFFLINE


@pytest.mark.parametrize("state", [State.CHALLENGED, State.VERIFIED, State.AUTHENTICATING])
def test_deliver_before_ack_is_offline(state: State) -> None:
    assert reach(state).on_deliver(OTHER, "m", "b", 0) == ([], SendStatus.OFFLINE)


def test_held_messages_follow_auth_ok_and_snapshot() -> None:
    conn = reach(State.ACKED)
    assert conn.on_deliver(OTHER, "m1", "one", 0) == ([], SendStatus.DELIVERED)
    assert conn.on_deliver(OTHER, "m2", "two", 0) == ([], SendStatus.DELIVERED)
    actions = conn.on_replica(FakeReplica(seq=10))
    assert actions == [
        RAISE_LIMIT,
        Write(protocol.auth_ok(PK)),
        WriteSnapshot(),
        Write(protocol.message(OTHER, "m1", "one")),
        Write(protocol.message(OTHER, "m2", "two")),
    ]


def test_held_messages_are_bounded_in_bytes() -> None:
    conn = reach(State.ACKED)
    assert conn.on_deliver(OTHER, "m1", "x" * 3000, 0)[1] is SendStatus.DELIVERED
    actions, status = conn.on_deliver(OTHER, "m2", "x" * 1000, 0)
    assert status is SendStatus.OFFLINE
    assert actions == [Close(CloseCode.SLOW_CONSUMER), Emit(bb.Closed(7, PK))]


def test_held_messages_are_bounded_in_count() -> None:
    conn = reach(State.ACKED, Limits(max_queue_bytes=10**9))
    for i in range(MAX_HELD_FRAMES):
        assert conn.on_deliver(OTHER, str(i), "", 0)[1] is SendStatus.DELIVERED
    assert conn.on_deliver(OTHER, "last", "", 0)[1] is SendStatus.OFFLINE
    assert conn.state is State.CLOSING


# --------------------------------------------------------------------------- after auth


def _send(to: str = PK, msg_id: str = "m1", body: str = "hi") -> str:
    return json.dumps({"type": "send", "to": to, "id": msg_id, "body": body})


def _error(code: str) -> Callable[[list[Action]], bool]:
    return lambda actions: [w["code"] for w in writes(actions)] == [code]


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
    actions = conn.on_frame(frame, 200.0, Link.UP)
    assert _error(code)(actions)
    assert writes(actions)[0]["type"] == "error"
    assert isinstance(writes(actions)[0]["message"], str)
    assert conn.state is State.AUTHENTICATED


def test_get_lobby_writes_the_snapshot_and_resumes_updates() -> None:
    conn = reach(State.AUTHENTICATED)
    conn.flow = Flow.LAGGING
    assert conn.on_frame('{"type":"get_lobby"}', 200.0, Link.UP) == [WriteSnapshot()]
    assert conn.flow is Flow.CURRENT


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
    actions = conn.on_frame(frame, 200.0, link)
    assert actions == [Write(protocol.send_result("m1", SendStatus.REJECTED, expected))]


def test_send_routes_to_the_lowercase_key_at_the_body_limit() -> None:
    conn = reach(State.AUTHENTICATED)
    body = "x" * protocol.MAX_BODY_BYTES
    actions = conn.on_frame(_send(to=OTHER.upper(), body=body), 200.0, Link.UP)
    assert actions == [StartRoute(OTHER, "m1", body)]


# --------------------------------------------------------------------------- lobby flow


def test_lagging_client_skips_updates_then_gets_one_snapshot() -> None:
    conn = reach(State.AUTHENTICATED)
    replica = FakeReplica(seq=11, users={PK})
    assert conn.on_update(LIMITS.lag_bytes, replica) is Fanout.UPDATE
    assert conn.on_update(LIMITS.lag_bytes + 1, replica) is Fanout.SKIP
    assert conn.flow is Flow.LAGGING
    assert conn.on_update(LIMITS.lag_bytes // 4 + 1, replica) is Fanout.SKIP
    assert conn.on_sweep(LIMITS.lag_bytes // 4 + 1, replica) == []
    assert conn.on_sweep(LIMITS.lag_bytes // 4, replica) == [WriteSnapshot()]
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
    actions = conn.on_frame(frame, 150.0, link)
    for action in actions:
        if isinstance(action, Write):
            decoded = json.loads(action.frame)
            assert decoded["type"] in {"auth_failed", "error", "send_result"}
            action.frame.encode("utf-8")  # always writable as a text frame
        elif isinstance(action, StartRoute):
            assert protocol.is_hex_key(action.to) and action.to == action.to.lower()
            bb.encode(bb.Route(1, PK, action.to, action.msg_id, action.body))
    if state is not State.AUTHENTICATED and state is not State.CLOSING:
        assert conn.state is not State.AUTHENTICATED


# --------------------------------------------------------------------------- abuse bounds

SLOW_RATE = Limits(
    lag_bytes=1000,
    max_queue_bytes=4000,
    rate=RateLimits(msg_rate=1.0, msg_burst=2.0, flood_rejects=3.0, flood_window=3.0),
)


def test_greeting_sets_the_pre_auth_frame_limit_before_the_challenge() -> None:
    conn = fresh(Limits(pre_auth_frame_bytes=512, max_frame_bytes=9000))
    assert conn.greeting() == [FrameLimit(512), Write(conn.challenge())]


def test_auth_ok_raises_the_frame_limit_first() -> None:
    conn = reach(State.ACKED, Limits(pre_auth_frame_bytes=512, max_frame_bytes=9000))
    assert conn.on_replica(FakeReplica(seq=10))[0] == FrameLimit(9000)


def test_frames_over_the_rate_are_answered_then_a_flood_closes_1008() -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    now = 500.0
    assert conn.on_frame(_send(), now, Link.UP) == [StartRoute(PK, "m1", "hi")]
    assert conn.on_frame('{"type":"get_lobby"}', now, Link.UP) == [WriteSnapshot()]
    # Over the burst: a send gets its one send_result, anything else an error.
    assert conn.on_frame(_send(), now, Link.UP) == [
        Write(protocol.send_result("m1", SendStatus.REJECTED, RejectReason.RATE_LIMITED))
    ]
    limited = Write(protocol.error(ErrorCode.RATE_LIMITED, "too many messages; slow down"))
    assert conn.on_frame('{"type":"get_lobby"}', now, Link.UP) == [limited]
    bad_id = '{"type":"send","to":"' + PK + '","id":"\\ud800","body":"x"}'
    assert conn.on_frame(bad_id, now, Link.UP) == [limited]  # no id to answer with
    assert conn.state is State.AUTHENTICATED
    # The fourth rejection within the window is a flood.
    actions = conn.on_frame(b"\x00", now, Link.UP)
    assert actions == [Close(CloseCode.POLICY_VIOLATION), Emit(bb.Closed(7, PK))]
    assert conn.trace[-1] == (State.AUTHENTICATED, Event.FLOOD, State.CLOSING)
    assert conn.on_frame(_send(), now + 100, Link.UP) == []


def test_a_client_that_slows_down_when_told_is_never_closed() -> None:
    conn = reach(State.AUTHENTICATED, SLOW_RATE)
    now = 500.0
    for _ in range(1000):
        actions = conn.on_frame('{"type":"get_lobby"}', now, Link.UP)
        if actions != [WriteSnapshot()]:
            assert writes(actions)[0]["code"] == "rate_limited"
            now += 1.0  # told: waits for one token
    assert conn.state is State.AUTHENTICATED


def test_rate_limit_applies_only_after_auth_ok() -> None:
    conn = reach(State.CHALLENGED, SLOW_RATE)
    for _ in range(5):
        assert conn.guard.messages.level(500.0) == 2.0  # untouched before auth
    assert closes(conn.on_frame("nope", 500.0, Link.UP)) == [CloseCode.AUTH_FAILED]


def test_send_result_is_written_or_closes_a_slow_consumer() -> None:
    conn = reach(State.AUTHENTICATED)
    assert conn.on_result("m1", SendStatus.DELIVERED, None, LIMITS.max_queue_bytes) == [
        Write(protocol.send_result("m1", SendStatus.DELIVERED))
    ]
    actions = conn.on_result("m2", SendStatus.OFFLINE, None, LIMITS.max_queue_bytes + 1)
    assert actions == [Close(CloseCode.SLOW_CONSUMER), Emit(bb.Closed(7, PK))]
    assert conn.trace[-1] == (State.AUTHENTICATED, Event.SLOW, State.CLOSING)
    assert conn.on_result("m3", SendStatus.DELIVERED, None, 0) == []


@pytest.mark.parametrize("state", [s for s in State if s is not State.AUTHENTICATED])
def test_send_result_before_auth_ok_or_after_close_is_dropped(state: State) -> None:
    assert reach(state).on_result("m", SendStatus.DELIVERED, None, 0) == []


@settings(max_examples=200, deadline=None)
@given(
    backlogs=st.lists(
        st.tuples(st.sampled_from(["update", "sweep", "deliver", "result"]), st.integers(0, 9000)),
        max_size=60,
    )
)
def test_backlog_never_grows_past_its_bounds(backlogs: list[tuple[str, int]]) -> None:
    """Whatever the backlog does, a frame is only written below the bound that applies
    to it: lobby traffic below lag_bytes (or a quarter of it to resume), direct messages
    and results below max_queue_bytes; past that the client is closed, never queued."""
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
            if kind == "deliver":
                actions, _ = conn.on_deliver(OTHER, "m", "x", buffered)
            else:
                actions = conn.on_result("m", SendStatus.DELIVERED, None, buffered)
            if writes(actions):
                assert buffered <= LIMITS.max_queue_bytes
            elif conn.state is State.CLOSING:
                assert closes(actions) == [CloseCode.SLOW_CONSUMER]
                return
