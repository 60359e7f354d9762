"""Metrics on a real cluster started by the launcher, as ``make run`` starts it: one
scrape of ``GET /metrics`` covers every process, and its figures match what was done.

Short timings (beats every 0.2 s) so the workers know the coordinator's clock early and
a killed worker is presumed dead within a second.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from scripts.procfs import environ, start_time
from shared import protocol
from shared.client import LobbyClient, generate_signing_key, public_key_hex
from shared.protocol import SendStatus
from tests import support
from tests.support import free_port, http, run, until
from workers.admission import AdmissionLimits

pytestmark = pytest.mark.process

COORDINATOR = ("--heartbeat-interval", "0.2", "--worker-timeout", "1.0")
WORKER = ("--heartbeat-interval", "0.2", "--coordinator-timeout", "1.0")
HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Launched(support.Launched):
    """``scripts/cluster.py`` with a metrics port, in a private runtime dir."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.metrics_port = free_port()
        extra = ("--metrics-port", str(self.metrics_port))
        super().__init__(tmp, workers, coordinator=COORDINATOR, worker=WORKER, extra=extra)

    async def scrape(self) -> tuple[str, Samples]:
        status, headers, body = await http(self.metrics_port, path="/metrics")
        assert status == 200, body
        assert headers["content-type"].startswith("text/plain")
        text = body.decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def failed_auth(url: str) -> str:
    """An auth signed by another key than the one it names: invalid_signature, 4001."""
    key = public_key_hex(generate_signing_key())
    async with connect(url) as ws:
        nonce = json.loads(await ws.recv())["nonce"]
        forged = generate_signing_key().sign(protocol.signed_payload(nonce)).signature.hex()
        await ws.send(json.dumps({"type": "auth", "publicKey": key, "signature": forged}))
        assert json.loads(await ws.recv())["reason"] == "invalid_signature"
        await ws.wait_closed()
        assert ws.close_code == 4001
    return key


def settled(clients: list[LobbyClient]) -> bool:
    """Every open client sees exactly the open clients."""
    alive = [c for c in clients if not c.closed]
    return all(c.view.online == {a.public_key for a in alive} for c in alive)


def test_one_scrape_covers_every_process_and_tells_what_happened(tmp_path: Path) -> None:
    launched = Launched(tmp_path, 2)
    try:
        # The children write to the launcher's private directory, mode 0700.
        directory = Path(environ(launched.pid("w1-1"))["PROMETHEUS_MULTIPROC_DIR"])
        assert environ(launched.pid("coordinator"))["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        run(scenario(launched))
    finally:
        launched.stop()
    assert not directory.exists()  # removed at exit


async def scenario(launched: Launched) -> None:
    async def scraped(what: str, condition: Callable[[Samples], bool]) -> Samples:
        """Scrape until ``condition`` holds for the samples (the workers record the
        connection counts once per tick, the coordinator its counts once per turn)."""
        found: Samples = {}

        async def holds() -> bool:
            nonlocal found
            _, found = await launched.scrape()
            return condition(found)

        await until(holds, what, timeout=10, interval=0.1)
        return found

    keys: list[str] = []
    clients = [await LobbyClient.connect(launched.url) for _ in range(5)]
    keys += [c.public_key for c in clients]
    for c in clients:
        await c.wait_for_view(set(keys))
    keys.append(await failed_auth(launched.url))
    result = await clients[0].send(clients[1].public_key, "a recognisable body")
    assert result.status is SendStatus.DELIVERED
    assert (await clients[1].next_message()).body == "a recognisable body"

    s = await scraped(
        "5 users and the failed auth's close",
        lambda s: (
            value(s, "presence_lobby_users") == 5
            and value(s, "presence_closes_total", code="4001", by="server") == 1
        ),
    )
    assert value(s, "presence_authentications_total", result="ok") == 5
    assert value(s, "presence_authentications_total", result="invalid_signature") == 1
    assert value(s, "presence_authentications_total", result="timeout") == 0
    assert value(s, "presence_direct_messages_total", status="delivered", reason="none") == 1
    assert value(s, "presence_snapshots_sent_total", cause="join") == 5
    assert value(s, "presence_replica_resyncs_total", reason="start") >= 2
    assert value(s, "presence_coordinator_epoch_changes_total", reason="start") == 1
    assert value(s, "presence_lobby_updates_total") >= 5
    assert value(s, "presence_lobby_update_keys_sum") >= 5
    # Each join reached every client already online: 0 + 1 + 2 + 3 + 4.
    assert value(s, "presence_fanout_frames_total") == 10
    assert value(s, "presence_fanout_bytes_total") > value(s, "presence_fanout_frames_total")
    assert value(s, "presence_auth_verify_seconds_count") == 6
    assert value(s, "presence_direct_message_route_seconds_count", status="delivered") == 1
    assert 0 < value(s, "presence_lobby_batch_window_seconds") <= 0.05
    # What the alerts compare (docs/deploy/alerts.yml): the lag and its target, the link.
    assert value(s, "presence_lag_target_seconds") == AdmissionLimits().lag_target
    assert ("presence_event_loop_lag_seconds", frozenset()) in s
    assert ("presence_workers_coordinator_unreachable", frozenset()) in s
    assert value(s, "presence_workers_coordinator_unreachable") == 0
    # Each process's own figures, as a Prometheus client exports them, by position.
    pids = {"launcher": launched.proc.pid, "coordinator": launched.pid("coordinator")}
    pids |= {"w1": launched.pid("w1-1"), "w2": launched.pid("w2-1")}
    for name, pid in pids.items():
        assert value(s, "process_start_time_seconds", process=name) == start_time(pid), name
        assert value(s, "process_cpu_seconds_total", process=name) > 0, name
        assert value(s, "process_resident_memory_bytes", process=name) > 10 << 20, name
        assert 3 <= value(s, "process_open_fds", process=name) < 1000, name
        assert value(s, "process_max_fds", process=name) >= 1024, name

    await clients[4].close()
    s = await scraped(
        "4 users, 4 online connections",
        lambda s: (
            value(s, "presence_lobby_users") == 4
            and value(s, "presence_connections", state="online") == 4
        ),
    )
    assert value(s, "presence_closes_total", code="1000", by="client") == 1
    assert value(s, "presence_connections", state="challenged") == 0
    assert value(s, "presence_connections", state="authenticating") == 0
    assert value(s, "presence_flaps_total") == 0

    # A killed worker: the coordinator reaps its ghosts, and the launcher marks it dead,
    # so its connections no longer count. (16 more clients: all on one worker has odds of
    # 1 in 30,000.)
    more = [await LobbyClient.connect(launched.url) for _ in range(16)]
    keys += [c.public_key for c in more]
    everyone = [*clients[:4], *more]
    await until(lambda: settled(everyone), "everyone to see everyone")
    os.kill(launched.pid("w1-1"), signal.SIGKILL)
    await until(lambda: any(c.closed for c in everyone), "the kill to drop clients")
    await until(lambda: settled(everyone), "the killed worker's users to leave")
    alive = sum(not c.closed for c in everyone)
    assert 0 < alive < len(everyone), "the clients all landed on one worker"
    s = await scraped(
        f"{alive} users and connections, from the survivors",
        lambda s: (
            value(s, "presence_lobby_users") == alive
            and value(s, "presence_connections", state="online") == alive
            # Seconds in, a worker has had the beats that tell it the coordinator's clock,
            # and the ghosts' update was timed.
            and value(s, "presence_lobby_update_latency_seconds_count") >= 1
        ),
    )
    assert value(s, "presence_workers_expired_total") == 1
    assert value(s, "presence_ghosts_reaped_total") == len(everyone) - alive

    text, _ = await launched.scrape()
    for key in keys:  # no public key, in any case, anywhere in the scrape
        assert key.lower() not in text.lower()
    assert not HEX_KEY.search(text)
    for c in everyone:
        await c.close()
