"""LobbyClient against a tiny in-test server that speaks the protocol from a script.

Each test gives the fake server a handler coroutine; ``handshake`` plays the server's
side of authentication (and really verifies the signature). Synchronisation is by
asyncio events and the client's own waits: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from shared import protocol
from shared.client import (
    AuthFailed,
    ConnectionClosedError,
    ConnectionRefusedByServer,
    DuplicateUpdate,
    IncomingMessage,
    InconsistentSnapshot,
    ListenerFailed,
    LobbyChange,
    LobbyClient,
    MessageQueueFull,
    ProtocolError,
    ReconnectPolicy,
    SequenceGap,
    generate_signing_key,
    load_or_create_signing_key,
    load_signing_key,
    public_key_hex,
    save_signing_key,
)
from shared.protocol import RejectReason, SendResult, SendStatus, ServerProtocolError
from tests.support import run

OTHER = "ab" * 32
THIRD = "cd" * 32
NONCE = "11" * 32

Handler = Callable[[ServerConnection], Awaitable[None]]


async def start(handler: Handler, **kwargs: Any) -> tuple[Server, str]:
    server = await serve(handler, "127.0.0.1", 0, compression=None, **kwargs)
    port = next(iter(server.sockets)).getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws"


async def recv_json(ws: ServerConnection) -> dict[str, Any]:
    obj = json.loads(await ws.recv())
    assert isinstance(obj, dict)
    return obj


async def handshake(ws: ServerConnection) -> str:
    """The server's side of auth up to (not including) auth_ok; returns the key."""
    await ws.send(protocol.challenge(NONCE))
    auth = protocol.parse_client_frame(await ws.recv())
    assert isinstance(auth, protocol.Auth)
    assert protocol.verify_auth(bytes.fromhex(NONCE), auth.public_key, auth.signature) is None
    return auth.public_key


async def welcome(ws: ServerConnection, seq: int, *others: str) -> str:
    pk = await handshake(ws)
    await ws.send(protocol.auth_ok(pk))
    await ws.send(protocol.lobby_snapshot(seq, [pk, *others]))
    return pk


def test_full_session() -> None:
    async def main() -> None:
        sent_message = asyncio.Event()
        got: dict[str, Any] = {}

        async def handler(ws: ServerConnection) -> None:
            pk = await welcome(ws, 10, OTHER)
            await ws.send(protocol.lobby_update(11, [THIRD], []))
            await ws.send(protocol.lobby_update(12, [OTHER], [OTHER]))  # reconnection
            await ws.send(protocol.message(OTHER, "m1", "hello"))
            got["send"] = await ws.recv()
            send = json.loads(got["send"])
            await ws.send(protocol.send_result(send["id"], protocol.SendStatus.DELIVERED))
            rejected = await recv_json(ws)
            await ws.send(
                protocol.send_result(
                    rejected["id"],
                    protocol.SendStatus.REJECTED,
                    protocol.RejectReason.INVALID_RECIPIENT,
                )
            )
            await ws.send(protocol.error(protocol.ErrorCode.UNKNOWN_TYPE, "what?"))
            await ws.send(protocol.lobby_update(13, [], [THIRD]))
            await sent_message.wait()
            assert (await recv_json(ws))["type"] == "get_lobby"
            await ws.send(protocol.lobby_snapshot(50, [pk]))
            await ws.close(4002, "session_replaced")

        server, url = await start(handler)
        async with server:
            key = generate_signing_key()
            client = await LobbyClient.connect(url, key)
            me = public_key_hex(key)
            assert client.public_key == me
            assert client.snapshots_received == 1
            await client.wait_for_view({me, OTHER, THIRD})
            message = await client.next_message(timeout=5)
            assert message == IncomingMessage(OTHER, "m1", "hello")
            result = await client.send(OTHER, "hi there", msg_id="x1")
            assert result == SendResult("x1", SendStatus.DELIVERED) and result.delivered
            assert got["send"] == protocol.send(OTHER, "x1", "hi there")
            rejected = await client.send("nope", "body")
            assert rejected.status is SendStatus.REJECTED
            assert rejected.reason is RejectReason.INVALID_RECIPIENT
            await client.wait_for_view(lambda v: v.seq == 13)
            assert client.view.online == {me, OTHER}
            assert client.updates_received == 3
            assert [f["code"] for f in client.error_frames] == ["unknown_type"]
            sent_message.set()
            assert await client.get_lobby() == {me}
            assert client.view.seq == 50
            assert await client.wait_closed(5) == 4002
            assert client.close_reason == "session_replaced"
            assert client.closed
            assert client.errors == []
            with pytest.raises(ConnectionClosedError):
                await client.next_message(timeout=5)
            with pytest.raises(ConnectionClosedError):
                await client.send(OTHER, "late")
            with pytest.raises(ConnectionClosedError):
                await client.wait_for_view({OTHER}, timeout=5)
            await client.close()  # idempotent after the server closed

    run(main(), timeout=30)


def test_auth_failed_reports_reason_and_code() -> None:
    async def handler(ws: ServerConnection) -> None:
        await handshake(ws)
        await ws.send(protocol.auth_failed(protocol.AuthFailure.INVALID_SIGNATURE))
        await ws.close(4001, "auth_failed")

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(AuthFailed) as info:
                await LobbyClient.connect(url)
            assert info.value.reason == "invalid_signature"
            assert info.value.close_code == 4001

    run(main(), timeout=30)


@pytest.mark.parametrize(
    ("code", "reason", "after_auth"),
    [(1013, "try_again_later", True), (4003, "auth_timeout", False)],
)
def test_close_during_auth_is_a_refusal(code: int, reason: str, after_auth: bool) -> None:
    async def handler(ws: ServerConnection) -> None:
        if after_auth:
            await handshake(ws)
        else:
            await ws.send(protocol.challenge(NONCE))
        await ws.close(code, reason)

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(ConnectionRefusedByServer) as info:
                await LobbyClient.connect(url)
            assert (info.value.code, info.value.reason) == (code, reason)

    run(main(), timeout=30)


def test_http_503_before_the_handshake_is_a_refusal() -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(503, "busy\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("unreachable")

    async def main() -> None:
        server, url = await start(handler, process_request=refuse)
        async with server:
            with pytest.raises(ConnectionRefusedByServer) as info:
                await LobbyClient.connect(url)
            assert (info.value.http_status, info.value.code) == (503, 1013)

    run(main(), timeout=30)


def test_silent_server_times_out() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(TimeoutError):
                await LobbyClient.connect(url, open_timeout=0.3)

    run(main(), timeout=30)


def test_snapshot_without_self_is_a_protocol_error() -> None:
    async def handler(ws: ServerConnection) -> None:
        pk = await handshake(ws)
        await ws.send(protocol.auth_ok(pk))
        await ws.send(protocol.lobby_snapshot(1, [OTHER]))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(ProtocolError):
                await LobbyClient.connect(url)

    run(main(), timeout=30)


def test_gap_is_recorded_and_resynced() -> None:
    async def handler(ws: ServerConnection) -> None:
        pk = await welcome(ws, 5)
        await ws.send(protocol.lobby_update(6, [OTHER], []))
        await ws.send(protocol.lobby_update(6, [OTHER], []))  # duplicate
        await ws.send(protocol.lobby_update(8, [THIRD], []))  # gap: 7 missing
        await ws.send(protocol.lobby_update(9, [], [OTHER]))  # still behind
        assert (await recv_json(ws))["type"] == "get_lobby"  # exactly one resync
        await ws.send(protocol.lobby_snapshot(9, [pk, THIRD]))
        await ws.send(protocol.lobby_update(10, [OTHER], []))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            async with LobbyClient.connect(url) as client:
                await client.wait_for_view(lambda v: v.seq == 10)
                assert client.view.online == {client.public_key, OTHER, THIRD}
                kinds = [type(e) for e in client.errors]
                assert kinds == [DuplicateUpdate, SequenceGap, SequenceGap]
                assert client.error_count == 3
                assert client.snapshots_received == 2
            assert client.closed

    run(main(), timeout=30)


def test_malformed_server_frames_are_recorded_not_fatal() -> None:
    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        await ws.send("not json")
        await ws.send(json.dumps({"type": "lobby_update", "seq": 2, "joined": "x", "left": []}))
        await ws.send(json.dumps({"type": "mystery"}))
        await ws.send(protocol.lobby_update(2, [OTHER], []))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url) as client:
            await client.wait_for_view(lambda v: OTHER in v)
            assert len(client.errors) == 3
            assert all(isinstance(e, ProtocolError) for e in client.errors)
            # The library's error wraps the decoder's, which says what was wrong.
            causes = [e.__cause__ for e in client.errors]
            kinds = [c.frame_type for c in causes if isinstance(c, ServerProtocolError)]
            assert kinds == [None, "lobby_update", "mystery"]

    run(main(), timeout=30)


def test_full_message_queue_drops_and_records() -> None:
    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        for i in range(3):
            await ws.send(protocol.message(OTHER, f"m{i}", "x"))
        await ws.send(protocol.lobby_update(2, [OTHER], []))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url, message_queue_size=2) as client:
            await client.wait_for_view(lambda v: OTHER in v)
            assert client.messages_dropped == 1
            assert [type(e) for e in client.errors] == [MessageQueueFull]
            assert (await client.next_message()).id == "m0"
            assert (await client.next_message()).id == "m1"

    run(main(), timeout=30)


def test_lobby_listeners_see_every_applied_change() -> None:
    async def handler(ws: ServerConnection) -> None:
        pk = await welcome(ws, 1)
        await ws.send(protocol.lobby_update(2, [OTHER], []))
        await ws.send(protocol.lobby_update(4, [THIRD], []))  # gap: refused, not seen
        assert (await recv_json(ws))["type"] == "get_lobby"
        await ws.send(protocol.lobby_snapshot(7, [pk, THIRD]))
        await ws.send(protocol.lobby_update(8, [OTHER], [THIRD]))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url) as client:
            seen: list[LobbyChange] = []
            client.lobby_listeners.append(seen.append)

            def broken(change: LobbyChange) -> None:
                raise RuntimeError("listener bug")

            client.lobby_listeners.append(broken)
            await client.wait_for_view(lambda v: v.seq == 8)
            me = client.public_key
            assert seen == [
                LobbyChange("update", 2, (OTHER,), (), 2),
                LobbyChange("snapshot", 7, (me, THIRD), (), 2),
                LobbyChange("update", 8, (OTHER,), (THIRD,), 2),
            ]
            kinds = [type(e) for e in client.errors]
            assert kinds == [ListenerFailed, SequenceGap, ListenerFailed, ListenerFailed]
            assert isinstance(client.errors[0].__cause__, RuntimeError)

    run(main(), timeout=30)


def test_pending_send_fails_when_the_server_closes() -> None:
    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        await recv_json(ws)
        await ws.close(1001, "going away")

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            client = await LobbyClient.connect(url)
            with pytest.raises(ConnectionClosedError) as info:
                await client.send(OTHER, "never answered")
            assert info.value.code == 1001
            assert client.close_code == 1001

    run(main(), timeout=30)


def test_timeouts_raise_timeout_error() -> None:
    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url) as client:
            with pytest.raises(TimeoutError):
                await client.wait_for_view({OTHER}, timeout=0.05)
            with pytest.raises(TimeoutError):
                await client.next_message(timeout=0.05)
            with pytest.raises(TimeoutError):
                await client.send(OTHER, "x", timeout=0.05)
            with pytest.raises(ValueError):
                await client.send(OTHER, "x", msg_id="i" * 65)

    run(main(), timeout=30)


def test_key_files_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    key, created = load_or_create_signing_key(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = load_or_create_signing_key(path)
    assert not created
    assert public_key_hex(again) == public_key_hex(key)
    other = generate_signing_key()
    save_signing_key(other, path)
    assert public_key_hex(load_signing_key(path)) == public_key_hex(other)
    assert len(public_key_hex(other)) == 64
    (tmp_path / "bad.key").write_text("zz\n")
    with pytest.raises(ValueError, match=r"bad\.key"):
        load_signing_key(tmp_path / "bad.key")


def test_results_and_errors_outside_the_contract() -> None:
    """A send_result whose status or reason the contract does not list is recorded as a
    ProtocolError and answers nothing; an error code it does not list is kept."""

    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        msg_id = json.loads(await ws.recv())["id"]
        await ws.send(json.dumps({"type": "send_result", "id": msg_id, "status": "queued"}))
        bad = {"type": "send_result", "id": msg_id, "status": "delivered", "reason": "x"}
        await ws.send(json.dumps(bad))
        await ws.send(json.dumps({"type": "error", "code": "teapot", "message": "short"}))
        await ws.send(protocol.send_result(msg_id, SendStatus.OFFLINE))
        await ws.send(protocol.send_result(msg_id, SendStatus.OFFLINE))  # a late duplicate
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url) as client:
            assert await client.send(OTHER, "x", msg_id="s1") == SendResult(
                "s1", SendStatus.OFFLINE
            )
            assert [type(e) for e in client.errors] == [ProtocolError, ProtocolError]
            assert "status 'queued' is not one of" in str(client.errors[0])
            assert client.error_frames == [{"type": "error", "code": "teapot", "message": "short"}]
            await client.wait_for_view(lambda _v: bool(client.unmatched_results))
            assert client.unmatched_results == [
                {"type": "send_result", "id": "s1", "status": "offline"}
            ]

    run(main(), timeout=30)


def test_an_unknown_auth_failure_reason_is_reported_as_sent() -> None:
    async def handler(ws: ServerConnection) -> None:
        await handshake(ws)
        await ws.send('{"type":"auth_failed","reason":"banned"}')
        await ws.close(4001, "auth_failed")

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(AuthFailed) as info:
                await LobbyClient.connect(url)
            assert (info.value.reason, info.value.close_code) == ("banned", 4001)

    run(main(), timeout=30)


@pytest.mark.parametrize(
    ("hello", "fragment"),
    [
        ('{"type":"challenge","version":2,"nonce":"' + NONCE + '"}', "unsupported protocol"),
        ('{"type":"challenge","version":1,"nonce":"abc"}', "'nonce' is not 64 hex"),
        (protocol.auth_ok(OTHER), "expected a challenge"),
    ],
)
def test_a_bad_challenge_is_a_protocol_error(hello: str, fragment: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(hello)
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            with pytest.raises(ProtocolError, match=fragment):
                await LobbyClient.connect(url)

    run(main(), timeout=30)


def test_a_snapshot_listing_a_key_twice_is_refused_and_resynced() -> None:
    async def handler(ws: ServerConnection) -> None:
        pk = await welcome(ws, 5)
        await ws.send(protocol.lobby_snapshot(6, [pk, OTHER, OTHER.upper()]))
        assert (await recv_json(ws))["type"] == "get_lobby"
        await ws.send(protocol.lobby_snapshot(7, [pk, OTHER]))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        async with server, LobbyClient.connect(url) as client:
            await client.wait_for_view(lambda v: v.seq == 7)
            assert client.view.online == {client.public_key, OTHER}
            assert [type(e) for e in client.errors] == [InconsistentSnapshot]
            assert client.snapshots_received == 3

    run(main(), timeout=30)


def test_reconnect_fails_pending_sends_refuses_new_ones_and_replaces_the_view() -> None:
    second_may_start = asyncio.Event()
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await welcome(ws, 5)
            assert (await recv_json(ws))["type"] == "send"
            await ws.close(1011, "internal error")  # retried: the server's doing
            return
        await second_may_start.wait()
        await welcome(ws, 40, OTHER)
        await ws.send(protocol.lobby_update(41, [THIRD], []))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        policy = ReconnectPolicy(initial=0.01, maximum=0.01)
        async with server, LobbyClient.connect(url, reconnect=policy) as client:
            changes: list[LobbyChange] = []
            client.lobby_listeners.append(changes.append)
            with pytest.raises(ConnectionClosedError) as lost:
                await client.send(OTHER, "in flight")
            assert lost.value.code == 1011
            assert client.status == "reconnecting" and not client.closed
            with pytest.raises(ConnectionClosedError):
                await client.send(OTHER, "while away")
            second_may_start.set()
            await client.wait_for_view(lambda v: v.seq == 41)
            assert client.view.online == {client.public_key, OTHER, THIRD}
            assert [c.kind for c in changes] == ["snapshot", "update"]
            assert (client.reconnects, client.snapshots_received, client.updates_received) == (
                1,
                2,
                1,
            )
            assert client.status == "online" and client.errors == []
        assert client.closed and client.status == "closed"

    run(main(), timeout=30)


def test_close_while_waiting_to_reconnect_stops_at_once() -> None:
    async def handler(ws: ServerConnection) -> None:
        await welcome(ws, 1)
        await ws.close(1013, "try_again_later")

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            policy = ReconnectPolicy(initial=3600.0, maximum=3600.0, random=lambda: 1.0)
            client = await LobbyClient.connect(url, reconnect=policy)
            await client.wait_for_view(lambda v: client.status == "reconnecting")
            async with asyncio.timeout(5):  # far below the hour it would wait
                await client.close()
            assert client.closed and client.attempts == [] and client.close_code == 1013

    run(main(), timeout=30)


def test_close_while_a_reconnection_is_opening_drops_it() -> None:
    second_arrived = asyncio.Event()
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await welcome(ws, 1)
            await ws.close(1001, "going away")
            return
        second_arrived.set()
        await ws.wait_closed()  # never challenges: the client must not wait for it

    async def main() -> None:
        server, url = await start(handler)
        async with server:
            policy = ReconnectPolicy(initial=0.01, maximum=0.01)
            client = await LobbyClient.connect(url, reconnect=policy, open_timeout=3600)
            await second_arrived.wait()
            assert client.status == "reconnecting"
            async with asyncio.timeout(5):  # far below the open timeout
                await client.close()
            assert client.closed and client.status == "closed" and client.reconnects == 0

    run(main(), timeout=30)
