"""Control-frame abuse against real processes: one connection's flood of pings (with an
account or without) or of unsolicited pongs must hurt nobody but itself.

A real coordinator and one worker (so every client is on the flooded worker), two
innocent users on it, and three flooders at once, each in its own process
(:mod:`tests.flooder`), each sending 125-byte control frames of its kind as fast as it
can while reading 2 KB/s. While it floods,
the innocents keep measuring their own ping round trip and sending each other direct
messages, and the worker's resident memory is sampled. The checks: no innocent is ever
shown as having left, no message between them is answered anything but ``delivered``,
their round trip stays under 200 ms, the worker grows by less than 64 MiB, and every
flooder is closed with 1008. The innocents go on for longer than the coordinator's
worker timeout after the floods end, so a heartbeat the flood delayed would show as a
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


FLOODS = {"ping-account": ("ping", True), "ping-no-account": ("ping", False)}
FLOODS["pong-no-account"] = ("pong", False)
"""The flooders, all at once: pings with an account (websockets answered each at once,
whatever the backlog), pings without one, and unsolicited pongs (which it parsed for
ever without answering, at the cost of every other client's round trip)."""


async def _flood(cluster: Cluster) -> None:
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
    flooders = {
        name: ManagedProcess(
            "tests.flooder",
            [
                *("--port", str(cluster.port), "--seconds", str(FLOOD_SECONDS)),
                *("--kind", kind, *(["--auth"] if authenticated else [])),
            ],
        )
        for name, (kind, authenticated) in FLOODS.items()
    }
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(a, b, stop))
    try:
        for flooder in flooders.values():
            await until(lambda f=flooder: f.count("FLOODING") > 0, "the flood to start")
        flood_start = time.monotonic()

        def sample() -> bool:
            nonlocal peak
            peak = max(peak, rss_bytes(worker.pid))
            done = all(f.count("RESULT") > 0 for f in flooders.values())
            return done or probe.done()

        await until(sample, "the flooders' results", timeout=FLOOD_SECONDS + 15)
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
        for flooder in flooders.values():
            flooder.stop()
    growth = peak - baseline
    results = {name: RESULT.search(f.output()) for name, f in flooders.items()}
    print(
        f"floods of {time.monotonic() - flood_start:.1f}s: "
        + "; ".join(f"{name}: {m.group(0) if m else None}" for name, m in results.items())
        + f"; worst innocent round trip {worst * 1000:.0f} ms; worker grew "
        f"{growth / 2**20:.1f} MiB"
    )
    assert departures == [], f"innocents shown as gone: {departures}"
    assert wrong == [], f"messages between connected innocents answered {wrong}"
    assert worst < RTT_BOUND, f"innocent round trip {worst * 1000:.0f} ms"
    assert growth < RSS_BOUND, f"worker grew by {growth / 2**20:.0f} MiB"
    for name, match in results.items():
        assert match is not None, (name, flooders[name].output())
        assert match.group("close") == str(CloseCode.POLICY_VIOLATION.value), (name, match[0])
    assert not a.closed and not b.closed
    assert not a.errors and not b.errors
    await a.close()
    await b.close()


def test_control_frame_floods_hurt_only_the_flooders(tmp_path: Path) -> None:
    """Three connections flood one worker at once, each with its own kind of control
    frame: each is closed with 1008, and nobody else notices."""
    with Cluster(tmp_path, workers=1) as cluster:
        run(_flood(cluster), timeout=60)
