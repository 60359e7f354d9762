"""The Python client's reconnect policy against a real cluster: a dropped client comes
back with a correct view, a refused one backs off until there is room, and one whose
credentials are refused (or that a newer session replaced) never loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from shared.client import AuthFailed, LobbyChange, LobbyClient, ReconnectPolicy
from shared.protocol import CloseCode
from tests.support import Cluster, health, run, until

pytestmark = pytest.mark.process


class Draws:
    """A reconnect policy's jitter that records when each backoff was drawn (one draw
    per failed attempt) and always draws its maximum, so each wait is exact."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> float:
        self.at.append(time.monotonic())
        return 1.0


def test_a_dropped_client_reconnects_and_sees_a_correct_view(cluster: Cluster) -> None:
    async def scenario() -> None:
        draws = Draws()
        policy = ReconnectPolicy(initial=0.05, maximum=0.5, random=draws)
        watcher = await LobbyClient.connect(cluster.url)
        async with LobbyClient.connect(cluster.url, reconnect=policy) as me:
            changes: list[LobbyChange] = []
            me.lobby_listeners.append(changes.append)
            await me.wait_for_view({me.public_key, watcher.public_key})
            me.drop()  # the network goes: no close frame
            # While it is away, the lobby changes; its view must follow once back.
            newcomer = await LobbyClient.connect(cluster.url)
            await watcher.close()
            everyone = {me.public_key, newcomer.public_key}
            await me.wait_for_view(everyone)
            assert me.reconnects == 1 and me.status == "online" and not me.closed
            assert me.close_code == 1006  # how the first connection ended
            assert [a.error for a in me.attempts] == [None] and len(draws.at) == 1
            snapshots = [change for change in changes if change.kind == "snapshot"]
            assert len(snapshots) == 1 and me.public_key in snapshots[0].joined  # its return
            # The new connection is a full one: sends go through, others see it.
            result = await me.send(newcomer.public_key, "back")
            assert result.delivered
            assert (await newcomer.next_message()).body == "back"
            await newcomer.wait_for_view(everyone)
            assert me.errors == [] and newcomer.errors == [] and watcher.errors == []
            await newcomer.close()
        assert me.closed and me.status == "closed" and me.reconnects == 1

    run(scenario())


@pytest.fixture
def one_seat(tmp_path: Path) -> Iterator[Cluster]:
    """One worker that holds one connection at most: the next is refused with 1013."""
    with Cluster(tmp_path, workers=1, worker_args=("--max-connections", "1")) as c:
        yield c


def test_a_refused_client_backs_off_until_there_is_room(one_seat: Cluster) -> None:
    async def scenario() -> None:
        holder = await LobbyClient.connect(one_seat.url)
        draws = Draws()
        policy = ReconnectPolicy(initial=0.05, maximum=0.4, random=draws)
        task = asyncio.ensure_future(LobbyClient.connect(one_seat.url, reconnect=policy))
        await until(lambda: len(draws.at) >= 4, "four refusals", 20)
        assert not task.done()
        await holder.close()
        me = await task
        async with me:
            await me.wait_for_view({me.public_key})
            assert me.errors == [] and me.status == "online"
        refused = (await health(one_seat.port))["refused"]["full"]
        assert refused >= len(draws.at) >= 4
        # Each attempt waited its backoff after the refusal before it: 0.05, 0.1, 0.2,
        # then 0.4 s (the maximum), doubling.
        for n, (before, after) in enumerate(zip(draws.at, draws.at[1:], strict=False)):
            assert after - before >= min(0.4, 0.05 * 2**n)

    run(scenario())


def test_a_client_refused_for_its_credentials_does_not_retry(cluster: Cluster) -> None:
    async def scenario() -> None:
        draws = Draws()
        policy = ReconnectPolicy(initial=0.01, maximum=0.01, random=draws)
        impostor = SigningKey.generate()
        impostor.verify_key = SigningKey.generate().verify_key  # claims a key it lacks
        with pytest.raises(AuthFailed) as failed:
            await LobbyClient.connect(cluster.url, impostor, reconnect=policy)
        assert (failed.value.reason, failed.value.close_code) == ("invalid_signature", 4001)
        assert draws.at == []  # no backoff drawn: no second attempt

    run(scenario())


def test_a_replaced_client_does_not_reconnect(cluster: Cluster) -> None:
    async def scenario() -> None:
        draws = Draws()
        key = SigningKey.generate()
        first = await LobbyClient.connect(
            cluster.url, key, reconnect=ReconnectPolicy(initial=0.01, random=draws)
        )
        second = await LobbyClient.connect(cluster.url, key)  # the newer session wins
        assert await first.wait_closed() == CloseCode.SESSION_REPLACED
        assert first.status == "closed" and first.reconnects == 0 and draws.at == []
        await second.wait_for_view({second.public_key})
        assert not second.closed and second.errors == []
        await second.close()

    run(scenario())
