"""scripts/baseline_server.py speaks PROTOCOL.md (so the load tester's checks hold
against it), and scripts/bare_broadcast.py pushes what it is told to."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect as ws_connect

from scripts.loadtest.target import Server, start_bare, start_baseline
from scripts.procfs import free_port
from shared import protocol
from shared.client import LobbyClient, generate_signing_key, public_key_hex
from shared.protocol import AuthFailedFrame, AuthFailure, RejectReason, SendStatus

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def baseline() -> Iterator[Server]:
    server = start_baseline(free_port())
    yield server
    server.stop()


def test_joins_leaves_and_snapshots(baseline: Server) -> None:
    async def scenario() -> None:
        async with LobbyClient.connect(baseline.url) as a:
            assert a.view.online == {a.public_key}
            async with LobbyClient.connect(baseline.url) as b:
                assert b.view.online == {a.public_key, b.public_key}
                await a.wait_for_view({a.public_key, b.public_key})
                assert await b.get_lobby() == {a.public_key, b.public_key}
            await a.wait_for_view({a.public_key})
            assert not a.errors and a.view.seq is not None

    asyncio.run(scenario())


def test_direct_messages_and_results(baseline: Server) -> None:
    async def scenario() -> None:
        async with LobbyClient.connect(baseline.url) as a, LobbyClient.connect(baseline.url) as b:
            assert (await a.send(b.public_key.upper(), "hi", "m1")).delivered
            msg = await b.next_message()
            assert (msg.sender, msg.id, msg.body) == (a.public_key, "m1", "hi")
            assert (await a.send("ab" * 32, "x")).offline
            bad = await a.send("nope", "x")
            assert (bad.status, bad.reason) == (SendStatus.REJECTED, RejectReason.INVALID_RECIPIENT)
            big = await a.send(b.public_key, "x" * 65537)
            assert big.reason is RejectReason.TOO_LARGE
            await a.send_raw("{")
            await a.wait_for_view(lambda _v: bool(a.error_frames))
            assert a.error_frames[-1]["code"] == "malformed"

    asyncio.run(scenario())


def test_newest_session_wins(baseline: Server) -> None:
    async def scenario() -> None:
        async with LobbyClient.connect(baseline.url) as watcher:
            old = await LobbyClient.connect(baseline.url)
            new = await LobbyClient.connect(baseline.url, old.signing_key)
            assert await old.wait_closed() == 4002
            assert old.close_reason == "session_replaced"
            await watcher.wait_for_view({watcher.public_key, new.public_key})
            await new.close()
            await watcher.wait_for_view({watcher.public_key})
            assert not watcher.errors

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("public_key", "reason"),
    [
        # Not a point of the curve: the contract's invalid_public_key, from the one check
        # (shared.protocol.verify_auth) the cluster uses too.
        ("ab" * 32, AuthFailure.INVALID_PUBLIC_KEY),
        (public_key_hex(generate_signing_key()), AuthFailure.INVALID_SIGNATURE),
    ],
    ids=["invalid_public_key", "invalid_signature"],  # one name in every collection
)
def test_a_bad_auth_is_refused_with_its_reason_and_4001(
    baseline: Server, public_key: str, reason: AuthFailure
) -> None:
    async def scenario() -> None:
        async with ws_connect(baseline.url) as ws:
            protocol.parse_server_frame(await ws.recv())
            await ws.send(protocol.auth(public_key, "00" * 64))
            assert protocol.parse_server_frame(await ws.recv()) == AuthFailedFrame(reason)
            await ws.wait_closed()
            assert ws.close_code == 4001

    asyncio.run(scenario())


def test_health_and_unknown_paths(baseline: Server) -> None:
    base = baseline.url.replace("ws://", "http://").removesuffix("/ws")
    with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/other", timeout=5)
    assert info.value.code == 404


def test_bare_server_pushes_frames_to_every_connection() -> None:
    server = start_bare(free_port())

    async def scenario() -> None:
        readers = [await ws_connect(server.url, compression=None) for _ in range(3)]
        control_url = server.url.removesuffix("/ws") + "/control"
        async with ws_connect(control_url) as control:
            await control.send("push 4 100 50")
            assert await control.recv() == "done 4"
        for ws in readers:
            frames = [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)]
            assert all(len(f) == 50 for f in frames)
            await ws.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
