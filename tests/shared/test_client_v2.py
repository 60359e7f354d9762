"""LobbyClientV2 (shared/client_v2.py) against an in-test websockets server that selects
``presence.v2`` and plays a scripted version 2 server (and really verifies the v2
signature, bound to the URL dialed). Synchronisation is by the client's own waits and
the server's reads: nothing sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from shared import v2
from shared.client import LobbyClient, ReconnectPolicy
from shared.client_v2 import SUBPROTOCOL, LobbyClientV2, NotVersion2
from shared.v2 import Record, Scope
from tests.support import run

OTHER = "ab" * 32
THIRD = "cd" * 32
NONCE = "11" * 32
ADA = Record("away", '{"name":"Ada"}')


async def start(handler: Any, v2_server: bool = True) -> tuple[Server, str]:
    extra: dict[str, Any] = {"subprotocols": [SUBPROTOCOL]} if v2_server else {}
    server = await serve(handler, "127.0.0.1", 0, compression=None, **extra)
    port = next(iter(server.sockets)).getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws"


async def recv_json(ws: ServerConnection) -> dict[str, Any]:
    obj = json.loads(await ws.recv())
    assert isinstance(obj, dict)
    return obj


async def handshake(ws: ServerConnection) -> tuple[str, dict[str, Any]]:
    """Challenge, read and check the v2 auth; returns the key and the auth's fields."""
    await ws.send(v2.challenge_v2(NONCE))
    text = await ws.recv()
    auth = v2.parse_client_frame_v2(text)
    assert isinstance(auth, v2.AuthV2), auth
    port = ws.local_address[1]
    assert auth.server == f"ws://127.0.0.1:{port}/ws"
    assert (
        v2.verify_auth_v2(bytes.fromhex(NONCE), auth.public_key, auth.signature, auth.server)
        is None
    )
    assert isinstance(text, str)
    return auth.public_key, json.loads(text)


def snapshot(seq: int, *entries: tuple[str, Record], scope: Scope = Scope.LOBBY) -> bytes:
    return v2.encode_snapshot("e1", seq, scope, list(entries))


def test_a_v2_session_records_scopes_and_errors() -> None:
    asked: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        pk, auth = await handshake(ws)
        asked.append(auth)
        await ws.send(v2.auth_ok_v2(pk, "e1", 7, False))
        await ws.send(snapshot(7, (pk, Record("busy")), (OTHER, ADA)))
        await ws.send(v2.encode_update(8, 7, [(THIRD, Record())], [(OTHER, Record())], []))
        asked.append(await recv_json(ws))  # set_record
        asked.append(await recv_json(ws))  # follow
        await ws.send(snapshot(9, (OTHER, Record()), scope=Scope.WATCH))
        await ws.send(v2.error_v2(v2.ErrorCodeV2.RATE_LIMITED, "slow down"))
        asked.append(await recv_json(ws))  # follow count
        await ws.send(v2.count("e1", 10, 1234))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        record = {"status": "busy"}
        async with server, LobbyClient.connect(url, version=2, record=record) as client:
            assert isinstance(client, LobbyClientV2)
            assert client.records == {client.public_key: Record("busy"), OTHER: ADA}
            await client.wait_for_view(lambda v: v.seq == 8)
            assert client.records[OTHER] == Record() and THIRD in client.records
            await client.set_record(data={"name": "Ada"})
            await client.follow_watch([OTHER])
            await client.wait_for_view(lambda v: v.scope is Scope.WATCH)
            assert client.records == {OTHER: Record()}
            await client.follow_count()
            await client.wait_for_view(lambda v: v.count == 1234)
            assert client.error_frames == [
                {"type": "error", "code": "rate_limited", "message": "slow down"}
            ]
            assert client.errors == []
        assert asked[0]["record"] == {"status": "busy"} and "follow" not in asked[0]
        assert asked[1:] == [
            {"type": "set_record", "data": {"name": "Ada"}},
            {"type": "follow", "scope": "watch", "keys": [OTHER]},
            {"type": "follow", "scope": "count"},
        ]

    run(main(), timeout=30)


def test_a_server_without_version_2_is_refused_clearly() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler, v2_server=False)
        async with server:
            with pytest.raises(NotVersion2, match="does not speak protocol version 2"):
                await LobbyClientV2.connect(url, reconnect=ReconnectPolicy(max_attempts=3))

    run(main(), timeout=30)


def test_a_reconnection_resumes_with_the_record_and_scope_asked_for() -> None:
    auths: list[dict[str, Any]] = []
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        pk, auth = await handshake(ws)
        auths.append(auth)
        if connections == 1:
            await ws.send(v2.auth_ok_v2(pk, "e1", 5, False))
            await ws.send(snapshot(5, (OTHER, ADA), scope=Scope.WATCH))
            await ws.send(v2.encode_update(6, 5, [], [(OTHER, Record())], []))
            await recv_json(ws)  # set_record
            await ws.close(1001, "going away")
            return
        await ws.send(v2.auth_ok_v2(pk, "e1", 9, True))
        await ws.send(v2.encode_update(9, 6, [(THIRD, Record())], [], [OTHER]))
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        policy = ReconnectPolicy(initial=0.01, maximum=0.01)
        follow = {"scope": "watch", "keys": [OTHER, THIRD.upper()]}
        async with server, LobbyClientV2.connect(url, follow=follow, reconnect=policy) as client:
            await client.wait_for_view(lambda v: v.seq == 6)
            await client.set_record(status="away")
            await client.wait_for_view(lambda v: v.seq == 9)
            assert client.records == {THIRD: Record()} and client.reconnects == 1
            assert client.errors == []
        assert auths[1]["resume"] == {"epoch": "e1", "seq": 6}
        assert auths[1]["record"] == {"status": "away"}
        assert auths[1]["follow"] == {"scope": "watch", "keys": [OTHER, THIRD]}

    run(main(), timeout=30)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"version": 3}, ValueError, "version must be 1 or 2"),
        ({"record": {"status": "away"}}, TypeError, "need version=2"),
        ({"version": 2, "record": {"status": ""}}, ValueError, "status must be"),
        ({"version": 2, "record": {"mood": "x"}}, ValueError, "mood"),
        ({"version": 2, "follow": {"scope": "all"}}, ValueError, "follow must be"),
        ({"version": 2, "follow": {"scope": "watch", "keys": ["x"]}}, ValueError, "64-hex"),
    ],
)
def test_bad_options_are_refused_before_dialing(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def main() -> None:
        with pytest.raises(error, match=match):
            LobbyClient.connect("ws://127.0.0.1:9/ws", **options)

    asyncio.run(main())


def test_a_url_that_is_no_server_identity_is_refused_before_dialing() -> None:
    with pytest.raises(ValueError, match="ftp://x/ws"):
        LobbyClientV2.connect("ftp://x/ws")


def test_what_is_asked_while_a_reconnection_opens_is_asked_once_online() -> None:
    opened, go, caught_up = asyncio.Event(), asyncio.Event(), asyncio.Event()
    frames: list[dict[str, Any]] = []
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 2:
            opened.set()  # the client made this connection's session already
            await go.wait()
        pk, auth = await handshake(ws)
        frames.append(auth)
        await ws.send(v2.auth_ok_v2(pk, "e1", 5, False))
        await ws.send(snapshot(5, (pk, Record())))
        if connections == 1:
            await ws.close(1001, "going away")
            return
        frames.append(await recv_json(ws))
        frames.append(await recv_json(ws))
        caught_up.set()
        await ws.wait_closed()

    async def main() -> None:
        server, url = await start(handler)
        policy = ReconnectPolicy(initial=0.01, maximum=0.01)
        async with server, LobbyClientV2.connect(url, reconnect=policy) as client:
            await opened.wait()
            assert client.status == "reconnecting"
            await client.set_record(status="busy")
            await client.follow_count()
            go.set()
            await caught_up.wait()
            assert client.errors == [] and client.reconnects == 1
        assert "record" not in frames[1]  # a resume states the view's choice (the lobby)
        assert frames[1]["follow"] == {"scope": "lobby"} and "resume" in frames[1]
        assert frames[2:] == [
            {"type": "set_record", "status": "busy"},
            {"type": "follow", "scope": "count"},
        ]

    run(main(), timeout=30)


def test_a_misspelt_option_is_named() -> None:
    for version in (1, 2):
        with pytest.raises(TypeError, match="unexpected keyword arguments \\['recrod'\\]"):
            LobbyClient.connect("ws://127.0.0.1:9/ws", version=version, recrod={})
