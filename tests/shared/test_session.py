"""The sans-I/O session (shared/session.py) on its own: frames in, events and frames
out, no sockets. The view's rules are in tests/vectors/view.json (test_vectors.py);
these tests cover the handshake's states, sends, resyncs and the endings."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey

from shared import protocol
from shared.session import (
    AuthFailed,
    ConnectionClosedError,
    ConnectionRefusedByServer,
    DuplicateUpdate,
    InconsistentSnapshot,
    LobbyChange,
    Online,
    ProtocolError,
    ReconnectPolicy,
    SendAnswered,
    SequenceGap,
    Session,
    State,
)

KEY = SigningKey(bytes(range(32)))
ME = bytes(KEY.verify_key).hex()
OTHER = "ab" * 32
NONCE = "11" * 32


def opened() -> Session:
    session = Session(KEY)
    assert session.receive(protocol.challenge(NONCE)) == []
    (auth,) = session.data_to_send()
    assert json.loads(auth) == {
        "type": "auth",
        "publicKey": ME,
        "signature": protocol.sign_challenge(KEY, NONCE),
    }
    assert session.state is State.AUTH
    assert session.receive(protocol.auth_ok(ME)) == []
    assert session.state is State.SNAPSHOT
    (online,) = session.receive(protocol.lobby_snapshot(5, [ME, OTHER]))
    assert online == Online(LobbyChange("snapshot", 5, (ME, OTHER), (), 2))
    assert session.state is State.OPEN and session.data_to_send() == []
    return session


def test_the_handshake_goes_through_its_states_and_writes_only_the_auth() -> None:
    session = opened()
    assert session.view.seq == 5 and session.snapshots_received == 1


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        ([protocol.auth_ok(ME)], "expected a challenge"),
        ([json.dumps({"type": "challenge", "version": 2, "nonce": NONCE})], "version 2"),
        ([protocol.challenge(NONCE), protocol.lobby_snapshot(1, [ME])], "expected auth_ok"),
        ([protocol.challenge(NONCE), protocol.auth_ok(OTHER)], "another key"),
        (
            [protocol.challenge(NONCE), protocol.auth_ok(ME), protocol.lobby_update(1, [ME], [])],
            "expected lobby_snapshot",
        ),
        (
            [protocol.challenge(NONCE), protocol.auth_ok(ME), protocol.lobby_snapshot(1, [OTHER])],
            "does not contain the client itself",
        ),
        (
            [
                protocol.challenge(NONCE),
                protocol.auth_failed(protocol.AuthFailure.INVALID_SIGNATURE),
                protocol.auth_ok(ME),
            ],
            "after auth_failed",
        ),
    ],
)
def test_a_broken_handshake_is_a_protocol_error(frames: list[str], fragment: str) -> None:
    session = Session(KEY)
    for frame in frames[:-1]:
        session.receive(frame)
    with pytest.raises(ProtocolError, match=fragment):
        session.receive(frames[-1])
    assert session.state is not State.OPEN


def test_endings_before_and_after_the_handshake() -> None:
    refused = Session(KEY).connection_closed(1013, "try_again_later")
    assert isinstance(refused, ConnectionRefusedByServer) and refused.code == 1013
    failing = Session(KEY)
    failing.receive(protocol.challenge(NONCE))
    failing.receive(protocol.auth_failed(protocol.AuthFailure.INVALID_SIGNATURE))
    failed = failing.connection_closed(4001, "auth_failed")
    assert isinstance(failed, AuthFailed)
    assert (failed.reason, failed.close_code) == ("invalid_signature", 4001)
    session = opened()
    session.send(OTHER, "hi", "m1")
    closed = session.connection_closed(1006, "")
    assert isinstance(closed, ConnectionClosedError) and closed.code == 1006
    assert session.state is State.CLOSED and not session.pending
    assert session.data_to_send() == []  # nothing left to write on a closed connection
    with pytest.raises(ConnectionClosedError):
        session.send(OTHER, "late", "m2")


def test_sends_wait_for_their_own_results() -> None:
    session = opened()
    session.send(OTHER, "hello", "m1")
    assert session.data_to_send() == [protocol.send(OTHER, "m1", "hello")]
    with pytest.raises(ValueError, match="already waiting"):
        session.send(OTHER, "again", "m1")
    with pytest.raises(ValueError, match="1-64"):
        session.send(OTHER, "x", "")
    delivered = protocol.send_result("m1", protocol.SendStatus.DELIVERED)
    (answer,) = session.receive(delivered)
    assert isinstance(answer, SendAnswered) and answer.expected and answer.result.delivered
    (late,) = session.receive(delivered)  # nobody waits for m1 any more
    assert isinstance(late, SendAnswered) and not late.expected
    session.send(OTHER, "given up", "m2")
    session.forget("m2")
    (forgotten,) = session.receive(protocol.send_result("m2", protocol.SendStatus.OFFLINE))
    assert isinstance(forgotten, SendAnswered) and not forgotten.expected


def test_a_stale_view_asks_for_one_snapshot_until_one_is_applied() -> None:
    session = opened()
    with pytest.raises(DuplicateUpdate):
        session.receive(protocol.lobby_update(5, [], [OTHER]))
    assert session.data_to_send() == []  # a repeat loses nothing
    with pytest.raises(SequenceGap):
        session.receive(protocol.lobby_update(7, [], [OTHER]))
    with pytest.raises(SequenceGap):
        session.receive(protocol.lobby_update(8, [], [OTHER]))
    assert session.data_to_send() == [protocol.get_lobby()]  # once
    with pytest.raises(InconsistentSnapshot):  # not applied: still waiting for one
        session.receive(protocol.lobby_snapshot(8, [ME, ME]))
    assert session.data_to_send() == [] and session.resync_requested
    assert session.epoch == 1  # the refused snapshot started nothing
    (change,) = session.receive(protocol.lobby_snapshot(8, [ME]))
    assert change == LobbyChange("snapshot", 8, (ME,), (), 1)
    assert not session.resync_requested and session.epoch == 2
    with pytest.raises(SequenceGap):
        session.receive(protocol.lobby_update(10, [OTHER], []))
    assert session.data_to_send() == [protocol.get_lobby()]  # a new break asks again


def test_frames_after_the_handshake_become_events() -> None:
    session = opened()
    (update,) = session.receive(protocol.lobby_update(6, [], [OTHER]))
    assert update == LobbyChange("update", 6, (), (OTHER,), 1)
    (message,) = session.receive(protocol.message(OTHER, "m", "body"))
    assert message == protocol.Message(OTHER, "m", "body")
    (error,) = session.receive(protocol.error(protocol.ErrorCode.MALFORMED, "no"))
    assert isinstance(error, protocol.ErrorFrame)
    with pytest.raises(ProtocolError, match="unexpected 'challenge'"):
        session.receive(protocol.challenge(NONCE))
    assert (session.updates_received, session.messages_received) == (1, 1)


def test_the_backoff_doubles_up_to_its_maximum_and_may_give_up() -> None:
    policy = ReconnectPolicy(initial=0.5, maximum=4.0, max_attempts=3, random=lambda: 1.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [policy.gives_up(n) for n in range(5)] == [False, False, False, True, True]
    assert not ReconnectPolicy().gives_up(10**6)
