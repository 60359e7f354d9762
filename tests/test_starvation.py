"""What others send a user cannot starve its lobby view, and a worker's buffers have a
ceiling (issue 15, items 2 and 3), against real processes.

A slow reader is a client with a small receive buffer that reads at a set pace (its
link: the pause between frames is the link's speed, not synchronisation); everything
else waits on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.procfs import rss_bytes
from shared import protocol
from shared.client import LobbyClient
from tests.support import Cluster, health, health_until, run, until
from tests.test_abuse import RawClient

pytestmark = pytest.mark.process

LAG = 64 * 1024
RATE = 64 * 1024  # the victim's link, bytes a second
BODY = "a" * 8000  # the attacker's messages (base64 of 6 KB, say)
FRESH = 3.0  # "a couple of seconds"


@pytest.fixture
def starve_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        workers=1,
        worker_args=(
            *("--lag-bytes", str(LAG)),
            *("--msg-rate", "1000", "--msg-burst", "1000"),  # the attacker sends a lot
        ),
    ) as c:
        yield c


def test_direct_messages_cannot_starve_a_slow_readers_lobby_view(
    starve_cluster: Cluster,
) -> None:
    """An attacker sends a slow reader as many large messages as it is allowed. Users
    join and leave meanwhile: each join reaches the victim's view within FRESH seconds
    of the join, every message of an innocent sender reported delivered arrives within
    FRESH seconds, and the attacker is told rate_limited for what does not fit."""
    url = starve_cluster.url

    async def scenario() -> None:
        async with LobbyClient.connect(url) as attacker, LobbyClient.connect(url) as friend:
            victim = await RawClient.login(url)
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            arrived: dict[str, float] = {}  # message id -> when the victim read it
            shown: dict[str, float] = {}  # key -> when the victim's view first showed it
            waiting: set[str] = set()

            async def read_slowly() -> None:
                while not stop.is_set():
                    frame = await victim.ws.recv()
                    now = loop.time()
                    obj = json.loads(frame)
                    victim.apply(obj)
                    if obj["type"] == "message":
                        arrived[obj["id"]] = now
                    for key in [k for k in waiting if k in victim.view]:
                        shown[key] = now
                        waiting.discard(key)
                    await asyncio.sleep(len(frame) / RATE)  # the link's pace

            statuses: list[str] = []

            async def flood() -> None:
                n = 0
                while not stop.is_set():
                    result = await attacker.send(victim.key, BODY, msg_id=f"a{n}")
                    statuses.append(result.status.value)
                    if result.rejected:
                        assert result.reason is protocol.RejectReason.RATE_LIMITED, result
                    n += 1
                    await asyncio.sleep(1 / 20)  # the attacker's pace: 20 a second

            reader = asyncio.create_task(read_slowly())
            flooder = asyncio.create_task(flood())
            # Five times the lag bound sent, or refused: the victim is behind.
            await until(lambda: len(statuses) >= 40 or "rejected" in statuses, "a backlog")
            lags, late = [], []
            for i in range(6):
                async with LobbyClient.connect(url) as joiner:
                    joined = loop.time()  # auth_ok: the lobby shows it
                    waiting.add(joiner.public_key)
                    sent = loop.time()
                    result = await friend.send(victim.key, f"hello {i}", msg_id=f"f{i}")
                    await until(lambda: joiner.public_key in shown, "the victim's view", 20)
                    lags.append(shown[joiner.public_key] - joined)
                    if result.delivered:
                        await until(lambda i=i: f"f{i}" in arrived, "the friend's message", 20)
                        late.append(arrived[f"f{i}"] - sent)
                await until(lambda: len(victim.view) == 3, "the joiner to leave the view", 20)
            stop.set()
            flooder.cancel()
            reader.cancel()
            await asyncio.gather(flooder, reader, return_exceptions=True)
            assert max(lags) <= FRESH, f"the victim's view lagged {lags}"
            assert late, "no message of the innocent sender was delivered"
            assert max(late) <= FRESH, f"delivered messages arrived {late} s late"
            assert "delivered" in statuses and "rejected" in statuses
            victim.ws.transport.abort()

    run(scenario())


# --------------------------------------------------------------------------- memory

BUDGET = 3 * 1024 * 1024
FILLERS = 20
FILL_BODY = "f" * 16_000
FILL_SENDS = 400  # 6.4 MB each: 128 MB in all without a ceiling


@pytest.fixture
def budget_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        workers=1,
        worker_args=(
            *("--memory-budget", str(BUDGET)),
            *("--msg-rate", "1000", "--msg-burst", "1000"),
        ),
    ) as c:
        yield c


async def _next_of(client: RawClient, kind: str) -> dict[str, Any]:
    """The client's next frame of ``kind`` (lobby frames meanwhile are applied)."""
    async with asyncio.timeout(10):
        while True:
            obj = json.loads(await client.ws.recv())
            if obj["type"] == kind:
                return dict(obj)
            client.apply(obj)


async def _settled(port: int) -> None:
    """Until the worker's backlog figure stops changing (the sends were all handled)."""
    seen: list[int] = []

    async def steady() -> bool:
        seen.append((await health(port))["buffered"])
        return len(seen) >= 5 and len(set(seen[-5:])) == 1

    await until(steady, "the backlog to settle", 30, interval=0.2)


def test_memory_has_a_ceiling_and_returns_after_the_load_leaves(
    budget_cluster: Cluster,
) -> None:
    """Many keys from one address each fill their own backlog (messages to themselves,
    never reading). The worker's RSS grows by far less than what they sent, the budget
    holds, a light user is still served meanwhile, and once they leave the budget's
    accounting and the RSS come back."""
    url, port = budget_cluster.url, budget_cluster.port
    pid = budget_cluster.workers[0].proc.pid

    async def scenario() -> None:
        # Two light users from other addresses than the fillers' (fair by address).
        alice = await RawClient.login(url, local_addr="127.0.0.2")
        bob = await RawClient.login(url, local_addr="127.0.0.3")
        before = rss_bytes(pid)
        fillers = await asyncio.gather(*(RawClient.login(url) for _ in range(FILLERS)))

        async def fill(filler: RawClient) -> None:
            for n in range(FILL_SENDS):
                frame = {"type": "send", "to": filler.key, "id": f"x{n}", "body": FILL_BODY}
                await filler.ws.send(json.dumps(frame))

        await asyncio.gather(*(fill(f) for f in fillers))
        await _settled(port)
        grown = rss_bytes(pid) - before
        sent = FILLERS * FILL_SENDS * len(FILL_BODY)
        figures = await health(port)
        memory = figures.get("memory", {})
        # A light user is still served.
        light = {"type": "send", "to": alice.key, "id": "light", "body": "still here?"}
        await bob.ws.send(json.dumps(light))
        answer = await _next_of(bob, "send_result")
        assert answer["status"] == "delivered", answer
        assert (await _next_of(alice, "message"))["body"] == "still here?"
        assert grown < 24 * 1024 * 1024, f"RSS grew {grown >> 20} MiB for {sent >> 20} MB"
        assert memory["used"] <= BUDGET, memory
        assert memory["refusedMessages"] > 0, memory
        # The load leaves: the accounting is back to the two users, and the memory.
        for filler in fillers:
            filler.ws.transport.abort()
        await health_until(port, lambda h: h["clients"] == 2, "the fillers to be gone")
        after = await health(port)
        assert after["memory"]["backlog"] == 0, after["memory"]
        assert after["memory"]["reserved"] <= 2 * 64 * 1024, after["memory"]
        await until(
            lambda: rss_bytes(pid) - before < 12 * 1024 * 1024,
            f"the RSS to come back (grown {grown >> 20} MiB)",
            10,
        )
        for client in (alice, bob):
            client.ws.transport.abort()

    run(scenario())


def test_past_the_budget_new_connections_get_503(tmp_path: Path) -> None:
    """Each connection reserves its kernel send buffer; once reservations take half the
    budget, the door answers 503 before the handshake, and a place frees when one
    leaves."""
    with Cluster(tmp_path, workers=1, worker_args=("--memory-budget", str(1024 * 1024))) as c:

        async def scenario() -> None:
            clients: list[LobbyClient] = []
            refused = None
            for _ in range(64):  # 512 KiB of reservations: 32 connections of 16 KiB
                try:
                    clients.append(await LobbyClient.connect(c.url))
                except Exception as exc:  # the client reports a 503 as refused
                    refused = exc
                    break
            assert refused is not None and 4 <= len(clients) <= 32, (len(clients), refused)
            figures = (await health(c.port))["memory"]
            assert figures["refusedConnections"] >= 1, figures
            await clients.pop().close()
            await health_until(
                c.port, lambda h: h["clients"] == len(clients), "a place to be freed"
            )
            clients.append(await LobbyClient.connect(c.url))
            for client in clients:
                await client.close()

        run(scenario())


def test_connections_that_never_finish_the_upgrade_hold_no_large_headers(
    starve_cluster: Cluster,
) -> None:
    """Connections send most of a megabyte of header lines (under websockets' own
    bounds: 100 lines of 8 KB) and never finish the request. Each is dropped at once,
    not held until the open timeout, and the worker's RSS does not grow with them."""
    port = starve_cluster.port
    pid = starve_cluster.workers[0].proc.pid
    line = b"X-Pad: " + b"p" * 8000 + b"\r\n"

    async def one() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            for _ in range(100):
                writer.write(line)
                await writer.drain()
            await reader.read()  # until the worker drops it (EOF or reset)
        except ConnectionError:
            pass
        finally:
            writer.close()
        return time.monotonic() - started

    async def scenario() -> None:
        before = rss_bytes(pid)
        held = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(30))), 30)
        grown = rss_bytes(pid) - before
        assert max(held) < 5, f"held for {max(held):.1f} s"
        assert grown < 8 * 1024 * 1024, f"RSS grew {grown >> 20} MiB"
        async with LobbyClient.connect(starve_cluster.url) as client:
            assert client.public_key in await client.get_lobby()

    run(scenario())
