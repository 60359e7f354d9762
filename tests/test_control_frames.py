"""Control-frame abuse against real processes: one connection's flood of pings (with an
account or without) or of unsolicited pongs must hurt nobody but itself.

A real coordinator and one worker (so every client is on the flooded worker), two
innocent users on it, and a flooder in its own process (:mod:`tests.flooder`) that
sends 125-byte control frames as fast as it can while reading 2 KB/s. While it floods,
the innocents keep measuring their own ping round trip and sending each other direct
messages, and the worker's resident memory is sampled. The checks: no innocent is ever
shown as having left, no message between them is answered anything but ``delivered``,
their round trip stays under 200 ms, the worker grows by less than 64 MiB, and the
flooder is closed with 1008. The innocents go on for longer than the coordinator's
worker timeout after the flood ends, so a heartbeat the flood delayed would show as a
false leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import cast

import pytest
from websockets.asyncio.client import ClientConnection

from scripts.procfs import rss_bytes
from shared import timings
from shared.client import LobbyClient
from shared.protocol import CloseCode, SendStatus
from shared.session import LobbyChange
from tests.support import Cluster, ManagedProcess, run, until

pytestmark = pytest.mark.process

RTT_BOUND = 0.2
RSS_BOUND = 64 * 2**20
FLOOD_SECONDS = 6.0
"""The longest the flooder floods (the server should end it long before)."""
RESULT = re.compile(
    r"RESULT close=(?P<close>\S+) ended=(?P<ended>\S+) pongs=(?P<pongs>\d+) "
    r"last_answered=(?P<last>\S+) sent=(?P<sent>\d+)"
)


async def _probe(a: LobbyClient, b: LobbyClient, stop: asyncio.Event) -> tuple[float, list[str]]:
    """Until ``stop``: ``a``'s ping round trip, and messages both ways; returns the
    longest round trip and every result that was not ``delivered``."""
    worst, wrong = 0.0, []
    ws = cast(ClientConnection, a.connection)
    while not stop.is_set():
        started = time.monotonic()
        pong = await ws.ping()
        await asyncio.wait_for(pong, 5)
        worst = max(worst, time.monotonic() - started)
        for sender, to in ((a, b), (b, a)):
            result = await sender.send(to.public_key, "still here?", timeout=5)
            if result.status is not SendStatus.DELIVERED:
                wrong.append(f"{result.status.value}/{result.reason}")
        with contextlib.suppress(TimeoutError):  # the probes' pace (50 ms between rounds)
            await asyncio.wait_for(stop.wait(), 0.05)
    return worst, wrong


async def _flood(cluster: Cluster, authenticated: bool, kind: str = "ping") -> None:
    worker = cluster.workers[0]
    a = await LobbyClient.connect(cluster.url, ping_interval=None)
    b = await LobbyClient.connect(cluster.url, ping_interval=None)
    await a.wait_for_view(lambda view: b.public_key in view.online)
    departures: list[str] = []
    innocents = {a.public_key, b.public_key}
    for client in (a, b):

        def seen(change: LobbyChange) -> None:
            departures.extend(key for key in change.left if key in innocents)

        client.lobby_listeners.append(seen)
    baseline = rss_bytes(worker.pid)
    peak = baseline
    flooder = ManagedProcess(
        "tests.flooder",
        [
            "--port",
            str(cluster.port),
            "--seconds",
            str(FLOOD_SECONDS),
            "--kind",
            kind,
            *(["--auth"] if authenticated else []),
        ],
    )
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(a, b, stop))
    try:
        await until(lambda: flooder.count("FLOODING") > 0, "the flood to start")
        flood_start = time.monotonic()

        def sample() -> bool:
            nonlocal peak
            peak = max(peak, rss_bytes(worker.pid))
            return flooder.count("RESULT") > 0 or probe.done()

        await until(sample, "the flooder's result", timeout=FLOOD_SECONDS + 15)
        flood_end = time.monotonic()
        # A heartbeat the flood held up would make the coordinator give the worker up
        # within its worker timeout (plus a check) after the last beat it heard.
        await until(
            lambda: sample() and time.monotonic() > flood_end + timings.WORKER_TIMEOUT + 0.5,
            "the coordinator's worker timeout to pass",
        )
    finally:
        stop.set()
        worst, wrong = await probe
        flooder.stop()
    match = RESULT.search(flooder.output())
    assert match is not None, flooder.output()
    growth = peak - baseline
    print(
        f"flood of {time.monotonic() - flood_start:.1f}s: {match.group(0)}; worst innocent "
        f"round trip {worst * 1000:.0f} ms; worker grew {growth / 2**20:.1f} MiB"
    )
    assert departures == [], f"innocents shown as gone: {departures}"
    assert wrong == [], f"messages between connected innocents answered {wrong}"
    assert worst < RTT_BOUND, f"innocent round trip {worst * 1000:.0f} ms"
    assert growth < RSS_BOUND, f"worker grew by {growth / 2**20:.0f} MiB"
    assert match.group("close") == str(CloseCode.POLICY_VIOLATION.value), match.group(0)
    assert not a.closed and not b.closed
    assert not a.errors and not b.errors
    await a.close()
    await b.close()


@pytest.mark.parametrize(
    ("kind", "authenticated"),
    [("ping", True), ("ping", False), ("pong", False)],
    ids=["ping-account", "ping-no-account", "pong-no-account"],
)
def test_a_control_frame_flood_hurts_only_the_flooder(
    tmp_path: Path, kind: str, authenticated: bool
) -> None:
    """Pings (each of which websockets answered at once, whatever the backlog) and
    unsolicited pongs (which it parsed for ever without answering, at the cost of every
    other client's round trip) from one connection."""
    with Cluster(tmp_path, workers=1) as cluster:
        run(_flood(cluster, authenticated, kind), timeout=60)
