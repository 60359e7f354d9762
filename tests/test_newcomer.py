"""Many addresses holding silent connections against a newcomer, on real processes.

The attack of issue 15 (item 4), scaled down: a worker whose challenge phase holds 8
connections (``--max-pending-auth 8``, so its auth window is 8 too), and twice as many
loopback addresses as that, each holding one connection that never answers its
challenge, reopened the moment it closes, and retried soon after a refusal. A client
from an address the door has never seen must get ``auth_ok`` within 2 s, at its first
or second attempt, while the attack goes on. Nothing sleeps to synchronise: the
attackers' pauses are their pacing, the newcomer's pause is its backoff, and the test
waits on ``/healthz`` figures with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import protocol
from shared.client import generate_signing_key, public_key_hex
from tests.support import Cluster, health, health_until, run, until

pytestmark = pytest.mark.process

ROOM = 8
"""``--max-pending-auth``: the challenge phase, and the auth window's ceiling."""
ATTACKERS = [f"127.0.0.{20 + n}" for n in range(2 * ROOM)]
RETRY = 0.2
"""Seconds an attacker waits after a refusal: faster than the ``Retry-After`` of 1 s."""
BACKOFF = 1.0
"""Seconds the newcomer waits after a refusal (the server's ``Retry-After``)."""
BOUND = 2.0
"""Seconds from the newcomer's first attempt to its ``auth_ok``."""


@pytest.fixture
def crowded_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, workers=1, worker_args=("--max-pending-auth", str(ROOM))) as c:
        yield c


async def _hold(
    url: str,
    source: str,
    stop: asyncio.Event,
    counts: dict[str, int],
    holders: set[str],
    churn: float | None = None,
    garbage: bool = False,
) -> None:
    """One attacking address: hold one silent connection, reopen it when it closes (or,
    with ``churn``, close it after that many seconds and reopen it, so that it never
    waits long; with ``garbage``, answer its challenge with a bad frame instead, which
    the server closes), retry a refusal after :data:`RETRY`, until ``stop``.
    ``holders``: the addresses that have held a connection."""
    while not stop.is_set():
        try:
            ws = await connect(url, local_addr=(source, 0), open_timeout=10)
        except InvalidStatus:
            counts["refused"] += 1
            await asyncio.sleep(RETRY)  # the attacker's pacing
            continue
        except OSError:
            counts["failed"] += 1
            await asyncio.sleep(RETRY)
            continue
        counts["held"] += 1
        holders.add(source)
        try:
            ends = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(ws.wait_closed())]
            if churn is not None:
                ends.append(asyncio.ensure_future(asyncio.sleep(churn)))  # its pacing
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            for end in ends:
                end.cancel()
            if garbage and not stop.is_set():
                with contextlib.suppress(ConnectionClosed):
                    await ws.send("{}")  # auth_failed and 4001 follow
                    await asyncio.wait_for(ws.wait_closed(), 10)
        finally:
            await ws.close()


async def _attempt(url: str, source: str) -> ClientConnection | None:
    """One attempt at authenticating from ``source``: the connection after ``auth_ok``
    and the snapshot, or ``None`` if the door refused it (503, or 1013 before or instead
    of the challenge, or after it: evicted)."""
    sk = generate_signing_key()
    try:
        ws = await connect(url, local_addr=(source, 0), open_timeout=10)
    except InvalidStatus as exc:
        assert exc.response.status_code == 503
        return None
    try:
        challenge = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert challenge["type"] == "challenge"
        sig = sk.sign(protocol.signed_payload(challenge["nonce"])).signature.hex()
        auth = {"type": "auth", "publicKey": public_key_hex(sk), "signature": sig}
        await ws.send(json.dumps(auth))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
            "type": "auth_ok",
            "publicKey": public_key_hex(sk),
        }
    except ConnectionClosed:
        assert ws.close_code == 1013, ws.close_code
        return None
    return ws


async def _newcomer(url: str, source: str) -> tuple[float, int]:
    """A real client from ``source``: at most two attempts, :data:`BACKOFF` apart.
    Returns the seconds from its first attempt to ``auth_ok``, and the attempts taken."""
    start = time.monotonic()
    for attempt in (1, 2):
        ws = await _attempt(url, source)
        if ws is not None:
            took = time.monotonic() - start
            await ws.close()
            return took, attempt
        if attempt == 1:
            await asyncio.sleep(BACKOFF)  # the client's backoff, not synchronisation
    raise AssertionError(f"{source} was refused twice")


def test_many_addresses_holding_silent_connections_cannot_keep_a_newcomer_out(
    crowded_cluster: Cluster,
) -> None:
    """Sixteen addresses against eight places. Once every one of them has had a place
    (the surplus ones take theirs from connections that waited past the grace; with the
    door of before they never get one, and this test fails waiting for it, as a
    newcomer is refused at every attempt), three newcomers in turn each get ``auth_ok``
    within 2 s: the first may find every place younger than the grace and come back a
    second later; after that, an address that lost its place cannot take the top of
    the room, so the place a newcomer leaves by answering is there for the next."""
    url, port = crowded_cluster.url, crowded_cluster.port

    async def scenario() -> None:
        stop = asyncio.Event()
        counts = {"held": 0, "refused": 0, "failed": 0}
        holders: set[str] = set()
        attack = [asyncio.create_task(_hold(url, s, stop, counts, holders)) for s in ATTACKERS]
        try:
            # The attack is on: the room is full of silent connections and turning
            # attackers away, and every attacking address has had its turn.
            await health_until(
                port,
                lambda h: h["challenged"] == ROOM and sum(h["refused"].values()) >= ROOM,
                "the attackers to fill the room",
            )
            await until(lambda: holders == set(ATTACKERS), "every address to get a slot", 20)
            results = []
            for n in range(3):  # three newcomers from three fresh addresses, in turn
                results.append(await _newcomer(url, f"127.0.0.{100 + n}"))
                assert (await health(port))["challenged"] >= ROOM - 1  # still under attack
            print(f"newcomers (seconds, attempts): {results}; attackers: {counts}")
            assert all(took <= BOUND for took, _ in results), results
            assert counts["refused"] > 0 and counts["held"] >= len(ATTACKERS)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*attack, return_exceptions=True), 15)

    run(scenario(), timeout=90)


CHURN = 0.2
"""Seconds a churning attacker keeps a connection before closing and reopening it: well
inside the grace (0.5 s), so none of its connections is ever old enough to give way."""


@pytest.mark.parametrize("garbage", [False, True], ids=["closing", "answering-garbage"])
def test_addresses_that_churn_their_silent_connections_cannot_keep_a_newcomer_out(
    crowded_cluster: Cluster, garbage: bool
) -> None:
    """As many addresses as the room has places, each closing its silent connection
    (or answering it with garbage) before it has waited the grace and reopening it at
    once (40 handshakes a second here): no connection is ever old enough to give way.
    An address that leaves a connection without a valid answer may not take the top
    quarter of the room for a while, so a newcomer finds it."""
    url, port = crowded_cluster.url, crowded_cluster.port
    churners = ATTACKERS[:ROOM]

    async def scenario() -> None:
        stop = asyncio.Event()
        counts = {"held": 0, "refused": 0, "failed": 0}
        holders: set[str] = set()
        attack = [
            asyncio.create_task(_hold(url, s, stop, counts, holders, churn=CHURN, garbage=garbage))
            for s in churners
        ]
        try:
            await until(lambda: holders == set(churners), "every churner to hold")
            await until(lambda: counts["held"] >= 3 * ROOM, "the churn to go round")
            results = []
            for n in range(3):
                results.append(await _newcomer(url, f"127.0.0.{110 + n}"))
            print(f"newcomers (seconds, attempts): {results}; churners: {counts}")
            assert all(took <= BOUND for took, _ in results), results
            assert counts["held"] >= 3 * ROOM
            assert (await health(port))["challenged"] >= ROOM // 2  # still churning
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*attack, return_exceptions=True), 15)

    run(scenario(), timeout=90)
