"""Lobby synchronisation across a real cluster (coordinator + 2 workers) and real clients."""

from __future__ import annotations

import pytest

from shared.client import LobbyClient, generate_signing_key
from shared.protocol import CloseCode
from tests.support import Cluster, run

pytestmark = pytest.mark.process


def test_multiple_clients_lobby_consistency(cluster: Cluster) -> None:
    async def scenario() -> None:
        clients = [await LobbyClient.connect(cluster.url) for _ in range(6)]
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
            assert c.public_key in c.view
        seqs = {c.view.seq for c in clients}
        assert len(seqs) == 1, f"settled views disagree on seq: {seqs}"
        for c in clients:
            await c.close()
            assert c.errors == []

    run(scenario(), timeout=60)


def test_user_add_triggers_broadcast(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with LobbyClient.connect(cluster.url) as watcher:
            before = watcher.updates_received
            async with LobbyClient.connect(cluster.url) as newcomer:
                # The newcomer's own snapshot already contains it (auth_ok is held).
                assert newcomer.view.online == {watcher.public_key, newcomer.public_key}
                await watcher.wait_for_view({watcher.public_key, newcomer.public_key})
                assert watcher.updates_received > before
                assert newcomer.errors == []
            assert watcher.errors == []

    run(scenario(), timeout=60)


def test_user_remove_triggers_broadcast(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with LobbyClient.connect(cluster.url) as watcher:
            leaver = await LobbyClient.connect(cluster.url)
            await watcher.wait_for_view({watcher.public_key, leaver.public_key})
            await leaver.close()
            await watcher.wait_for_view({watcher.public_key})
            assert watcher.errors == [] and leaver.errors == []

    run(scenario(), timeout=60)


def test_reconnection_updates_not_duplicates(cluster: Cluster) -> None:
    async def scenario() -> None:
        key = generate_signing_key()
        async with LobbyClient.connect(cluster.url) as watcher:
            first = await LobbyClient.connect(cluster.url, key)
            await watcher.wait_for_view({watcher.public_key, first.public_key})
            updates_before = watcher.updates_received
            second = await LobbyClient.connect(cluster.url, key)
            assert await first.wait_closed() == CloseCode.SESSION_REPLACED
            assert first.close_reason == "session_replaced"
            # The watcher sees the key leave and join again (or nothing), never twice.
            await watcher.get_lobby()
            assert watcher.view.online == {watcher.public_key, second.public_key}
            assert watcher.updates_received <= updates_before + 2
            await second.close()
            await watcher.wait_for_view({watcher.public_key})
            assert watcher.errors == [] and first.errors == [] and second.errors == []

    run(scenario(), timeout=60)
