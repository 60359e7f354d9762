"""Process faults on a real cluster: SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restarts.

Fault timings are short through configuration (heartbeats every 0.1-0.2 s, a worker
presumed dead after 0.6-1 s). Each test prints what it measured, for the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from scripts.fake_worker import FakeWorker
from shared import backbone as bb
from shared.client import (
    ConnectionRefusedByServer,
    LobbyClient,
    generate_signing_key,
    public_key_hex,
)
from shared.protocol import CloseCode, SendResult
from tests.support import Cluster, Launched, ManagedProcess, run, until

pytestmark = pytest.mark.process

FAST_COORDINATOR = ("--heartbeat-interval", "0.1", "--worker-timeout", "0.6")
FAST_WORKER = ("--heartbeat-interval", "0.1", "--coordinator-timeout", "0.6")


async def connect_many(url: str, n: int) -> list[LobbyClient]:
    return list(await asyncio.gather(*(LobbyClient.connect(url) for _ in range(n))))


def open_ones(clients: list[LobbyClient]) -> list[LobbyClient]:
    return [c for c in clients if not c.closed]


def all_views_are(clients: list[LobbyClient], keys: set[str]) -> bool:
    return all(c.view.online == keys for c in clients)


def settled(clients: list[LobbyClient]) -> bool:
    """Every open client sees exactly the open clients (dead ones closed, no ghosts)."""
    alive = open_ones(clients)
    return all_views_are(alive, {c.public_key for c in alive})


async def close_all(clients: list[LobbyClient]) -> None:
    for c in clients:
        assert c.errors == [], c.errors[:3]
        await c.close()


# ------------------------------------------------------------ the launcher (make run)


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    cluster = Launched(
        tmp_path,
        2,
        coordinator=("--heartbeat-interval", "0.2", "--worker-timeout", "1.0"),
        worker=("--heartbeat-interval", "0.2", "--coordinator-timeout", "1.0"),
    )
    yield cluster
    cluster.stop()


def test_killed_worker_users_leave_everywhere_and_launcher_replaces_it(
    launched: Launched,
) -> None:
    async def scenario() -> None:
        clients = await connect_many(launched.url, 20)
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        os.kill(launched.pid("w1-1"), signal.SIGKILL)
        start = time.monotonic()
        # Its clients see their connections drop (20 clients: all on one worker has odds
        # of about 1 in 500,000), then everyone else sees them leave.
        await until(lambda: any(c.closed for c in clients), "the kill to drop clients", 10)
        await until(lambda: settled(clients), "the killed worker's users to leave", 10)
        took = time.monotonic() - start
        dead = [c for c in clients if c.closed]
        print(f"\nworker SIGKILL: {len(dead)} ghosts removed from every view in {took:.2f}s")
        assert 0 < len(dead) < len(clients), "clients all landed on one worker"
        launched.proc.wait_ready(timeout=20, count=2)  # whole again
        newcomers = await connect_many(launched.url, 6)  # spread over both workers
        survivors = [*open_ones(clients), *newcomers]
        await until(lambda: settled(survivors), "newcomers to be seen", 10)
        await close_all(survivors)

    run(scenario())


def test_killed_coordinator_is_restarted_and_every_client_resyncs(launched: Launched) -> None:
    async def scenario() -> None:
        clients = await connect_many(launched.url, 12)
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        before = {id(c): c.snapshots_received for c in clients}
        os.kill(launched.pid("coordinator"), signal.SIGKILL)

        def resynced() -> bool:
            fresh = all(c.snapshots_received > before[id(c)] for c in clients)
            return fresh and all_views_are(clients, everyone)

        took = await until(resynced, "a fresh snapshot equal to the online set everywhere", 5)
        print(f"\ncoordinator SIGKILL: every client resynced in {took:.2f}s")
        assert open_ones(clients) == clients  # nobody was disconnected
        late = await LobbyClient.connect(launched.url)
        await until(lambda: settled([*clients, late]), "a join after the restart", 10)
        await close_all([*clients, late])

    run(scenario())


# ------------------------------------------------------------ coordinator outage


@pytest.fixture
def fast_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(
        tmp_path,
        2,
        coordinator_args=FAST_COORDINATOR,
        worker_args=(*FAST_WORKER, "--auth-wait", "1.0", "--route-timeout", "1.0"),
    ) as c:
        yield c


def test_outage_auths_get_1013_sends_get_unavailable_and_restart_rebuilds(
    fast_cluster: Cluster,
) -> None:
    async def scenario() -> None:
        clients = await connect_many(fast_cluster.url, 8)
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        assert fast_cluster.coordinator is not None
        fast_cluster.coordinator.signal(signal.SIGKILL)
        fast_cluster.coordinator.proc.wait(5)

        # An auth during the outage waits (bounded), then gets 1013; never hangs.
        with pytest.raises(ConnectionRefusedByServer) as refused:
            await LobbyClient.connect(fast_cluster.url, open_timeout=10)
        assert refused.value.code == CloseCode.TRY_AGAIN_LATER
        # A direct message during the outage gets rejected/unavailable, never silence.
        result = await clients[0].send(clients[1].public_key, "hello?", timeout=10)
        assert result.outcome == "rejected/unavailable"
        assert not [c for c in clients if c.closed], "clients must stay connected"

        before = {id(c): c.snapshots_received for c in clients}
        fast_cluster.coordinator = ManagedProcess(
            "coordinator",
            [
                "--events-endpoint",
                fast_cluster.events,
                "--updates-endpoint",
                fast_cluster.updates,
                *FAST_COORDINATOR,
            ],
        )
        start = time.monotonic()

        def rebuilt() -> bool:
            fresh = all(c.snapshots_received > before[id(c)] for c in clients)
            return fresh and all_views_are(clients, everyone)

        await until(rebuilt, "the lobby to be rebuilt from the workers", 10)
        print(f"\ncoordinator restart: lobby rebuilt in {time.monotonic() - start:.2f}s")
        result = await clients[0].send(clients[1].public_key, "back")
        assert result.delivered
        await close_all(clients)

    run(scenario())


# ------------------------------------------------------------ truthful send results


@dataclass
class Ledger:
    """Every send and its answer, and every message that arrived, by id."""

    answers: dict[str, str] = field(default_factory=dict)  # id -> status or status/reason
    arrived: dict[str, list[str]] = field(default_factory=dict)  # recipient -> ids

    def record(self, msg_id: str, result: SendResult) -> None:
        self.answers[msg_id] = result.outcome

    def ids(self, *statuses: str) -> set[str]:
        return {i for i, a in self.answers.items() if a in statuses}

    def assert_truthful(self) -> None:
        """delivered arrived; rejected never did (now or later), nor anything unasked."""
        got = {i for ids in self.arrived.values() for i in ids}
        assert len(got) == sum(len(ids) for ids in self.arrived.values()), "a duplicate"
        assert self.ids("delivered") <= got, "a delivered message did not arrive"
        rejected = {i for i, a in self.answers.items() if a.startswith("rejected")}
        assert not rejected & got, f"rejected but arrived: {sorted(rejected & got)[:5]}"
        assert got <= set(self.answers), "a message nobody sent"


async def collect(client: LobbyClient, ledger: Ledger, stop: asyncio.Event) -> None:
    ids = ledger.arrived.setdefault(client.public_key, [])
    while not stop.is_set():
        try:
            ids.append((await client.next_message(timeout=0.2)).id)
        except TimeoutError:
            continue


async def send_loop(senders: list[LobbyClient], ledger: Ledger, stop: asyncio.Event) -> None:
    """Each sender sends to the next, one message at a time, until ``stop``."""
    n = 0
    while not stop.is_set():
        ids = [f"m{n}-{i}" for i in range(len(senders))]
        results = await asyncio.gather(
            *(
                sender.send(senders[(i + 1) % len(senders)].public_key, ids[i], ids[i], 15)
                for i, sender in enumerate(senders)
            )
        )
        for msg_id, result in zip(ids, results, strict=True):
            ledger.record(msg_id, result)
        n += 1
        await asyncio.sleep(0.03)  # the senders' pace: within their message rate


async def settle_messages(senders: list[LobbyClient], ledger: Ledger) -> None:
    """Once every route that could still be in a queue has been processed: a marker
    from each sender's worker, behind everything it sent, has arrived."""
    for i, sender in enumerate(senders):
        to, marker = senders[(i + 1) % len(senders)].public_key, f"marker-{i}"
        result = await sender.send(to, marker, marker)
        assert result.delivered, result
        ledger.answers[marker] = "delivered"
        arrived = ledger.arrived[to]
        await until(lambda a=arrived, m=marker: m in a, "the marker", 10)


@contextlib.asynccontextmanager
async def exchanging(
    cluster: Cluster, n: int = 6
) -> AsyncIterator[tuple[list[LobbyClient], Ledger]]:
    """``n`` clients that send to each other all along, and the ledger of it all. On
    leaving, sending stops, every message still in a queue is let through, and the
    ledger must be truthful: delivered arrived, rejected never did."""
    clients = await connect_many(cluster.url, n)
    everyone = {c.public_key for c in clients}
    for c in clients:
        await c.wait_for_view(everyone)
    ledger, stop, done = Ledger(), asyncio.Event(), asyncio.Event()
    collectors = [asyncio.create_task(collect(c, ledger, done)) for c in clients]
    sending = asyncio.create_task(send_loop(clients, ledger, stop))
    await until(lambda: len(ledger.ids("delivered")) >= 30, "some deliveries", 10)
    yield clients, ledger
    await until(lambda: settled(clients), "the lobby to settle", 15)
    stop.set()
    await sending
    await settle_messages(clients, ledger)
    done.set()
    await asyncio.gather(*collectors)
    ledger.assert_truthful()
    assert open_ones(clients) == clients, "nobody was disconnected"
    await close_all(clients)


def test_a_stalled_coordinator_never_delivers_what_was_answered_rejected(
    fast_cluster: Cluster,
) -> None:
    """The coordinator stops (SIGSTOP) for three route timeouts while clients send to
    each other. Whatever was answered rejected is never delivered, not even once the
    coordinator runs again and works through its queue; whatever was answered delivered
    arrived; nobody is disconnected."""
    assert fast_cluster.coordinator is not None
    coordinator = fast_cluster.coordinator

    async def scenario() -> None:
        async with exchanging(fast_cluster) as (_, ledger):
            coordinator.signal(signal.SIGSTOP)
            try:
                await until(lambda: len(ledger.ids("rejected/unavailable")) >= 30, "refusals", 15)
            finally:
                coordinator.signal(signal.SIGCONT)
        assert set(ledger.answers.values()) <= {"delivered", "rejected/unavailable"}
        print(
            f"\ncoordinator SIGSTOP: {len(ledger.ids('delivered'))} delivered, "
            f"{len(ledger.ids('rejected/unavailable'))} rejected, none of them later"
        )

    run(scenario())


def test_no_offline_for_users_who_never_left_while_the_coordinator_restarts(
    fast_cluster: Cluster,
) -> None:
    """The coordinator is killed and started again while connected users keep sending
    to each other: until the lobby is rebuilt a recipient the new coordinator has not
    heard of yet is rejected/unavailable, never offline."""

    async def scenario() -> None:
        async with exchanging(fast_cluster) as (clients, ledger):
            assert fast_cluster.coordinator is not None
            fast_cluster.coordinator.signal(signal.SIGKILL)
            fast_cluster.coordinator.proc.wait(5)
            before = {id(c): c.snapshots_received for c in clients}
            fast_cluster.coordinator = ManagedProcess(
                "coordinator",
                [
                    *("--events-endpoint", fast_cluster.events),
                    *("--updates-endpoint", fast_cluster.updates),
                    *FAST_COORDINATOR,
                ],
            )
            killed_at = len(ledger.answers)

            def rebuilt() -> bool:
                fresh = all(c.snapshots_received > before[id(c)] for c in clients)
                return fresh and all_views_are(clients, {c.public_key for c in clients})

            await until(rebuilt, "the lobby to be rebuilt", 15)
            mark = len(ledger.ids("delivered"))  # and on a while, as clients do
            await until(lambda: len(ledger.ids("delivered")) >= mark + 30, "deliveries", 10)
        assert "offline" not in ledger.answers.values()
        print(
            f"\ncoordinator restart: {len(ledger.answers) - killed_at} sends after the "
            f"kill, none answered offline"
        )

    run(scenario())


# ------------------------------------------------------------ partition


async def connect_retrying(url: str, key: Any, attempts: int = 20) -> LobbyClient:
    """Connect, retrying attempts that land on a stopped worker (SO_REUSEPORT still
    hands it connections; they hang until the timeout)."""
    for _ in range(attempts):
        try:
            return await LobbyClient.connect(url, key, open_timeout=1.0)
        except (TimeoutError, ConnectionRefusedByServer, OSError):
            continue
    raise AssertionError(f"no worker accepted {public_key_hex(key)[:8]} in {attempts} tries")


def test_partitioned_worker_comes_back_and_newest_session_wins(fast_cluster: Cluster) -> None:
    stopped = fast_cluster.workers[0]

    async def scenario() -> None:
        keys = [generate_signing_key() for _ in range(16)]
        clients = list(
            await asyncio.gather(*(LobbyClient.connect(fast_cluster.url, k) for k in keys))
        )
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        seen_at = {id(c): c.updates_received for c in clients}
        stopped.signal(signal.SIGSTOP)

        # The others see the partitioned worker's users leave: each client of the live
        # worker gets an update and then sees exactly the live worker's clients. (Those
        # of the stopped worker get nothing, so "got an update" tells the two apart,
        # once every one of them has read it.)
        def outside_now() -> list[LobbyClient]:
            return [c for c in clients if c.updates_received > seen_at[id(c)]]

        def partitioned() -> bool:
            outside = outside_now()
            keys = {c.public_key for c in outside}
            return bool(outside) and all(c.view.online == keys for c in outside)

        await until(partitioned, "the partitioned worker's users to leave", 10)
        outside = outside_now()
        inside = [c for c in clients if c not in outside]
        assert inside, "clients all landed on one worker"
        # Half of the cut-off users authenticate again, on the other worker.
        movers = inside[: (len(inside) + 1) // 2]
        stayers = inside[len(movers) :]
        moved = [await connect_retrying(fast_cluster.url, m.signing_key) for m in movers]
        stopped.signal(signal.SIGCONT)
        start = time.monotonic()

        # Their old connections lose to the newer sessions; the others come back.
        for old in movers:
            assert await old.wait_closed(10) == CloseCode.SESSION_REPLACED
        live = [*outside, *stayers, *moved]
        await until(lambda: settled(live), "one consistent lobby after the partition", 10)
        took = time.monotonic() - start
        print(f"\npartition healed: views consistent {took:.2f}s after SIGCONT")
        assert len({c.public_key for c in live}) == len(live) == len(everyone)
        await close_all(live)

    try:
        run(scenario())
    finally:
        stopped.signal(signal.SIGCONT)


# ------------------------------------------------------------ graceful stop, rolling restart


@pytest.fixture
def slow_expiry_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Heartbeat expiry far away, so only a graceful Goodbye can remove users quickly."""
    with Cluster(tmp_path, 2, coordinator_args=("--worker-timeout", "60")) as c:
        yield c


def test_sigterm_closes_with_1001_and_rolling_restart_keeps_service(
    slow_expiry_cluster: Cluster,
) -> None:
    cluster = slow_expiry_cluster

    async def probe() -> None:
        """The service is up: a new client authenticates (retrying a connection that
        raced a closing listener) and sees itself."""
        for _ in range(5):
            try:
                async with LobbyClient.connect(cluster.url, open_timeout=5) as c:
                    assert c.public_key in c.view
                    return
            except (OSError, ConnectionRefusedByServer, TimeoutError):
                continue
        raise AssertionError("service down during the rolling restart")

    async def scenario() -> None:
        clients = await connect_many(cluster.url, 12)
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        first = cluster.workers[0]
        first.signal(signal.SIGTERM)
        start = time.monotonic()
        await until(lambda: any(c.closed for c in clients), "the stop to close clients", 5)
        await until(lambda: settled(clients), "the stopped worker's users to leave", 5)
        took = time.monotonic() - start
        print(f"\nworker SIGTERM: its users left everywhere in {took:.2f}s")
        closed = [c for c in clients if c.closed]
        assert closed and all(c.close_code == CloseCode.GOING_AWAY for c in closed)
        assert first.proc.wait(10) == 0
        # Rolling restart: start a replacement, then stop the oldest running worker,
        # twice; a new client gets in at every step.
        running = [cluster.workers[1]]
        for name in ("w3", "w4"):
            await probe()
            running.append(await asyncio.to_thread(cluster.add_worker, name))
            await probe()
            oldest = running.pop(0)
            oldest.signal(signal.SIGTERM)
            assert await asyncio.to_thread(oldest.proc.wait, 10) == 0
            await probe()
        await close_all(open_ones(clients))

    run(scenario())


# ------------------------------------------------------------ lost backbone messages


def test_updates_lost_at_the_high_water_mark_heal_with_a_fresh_snapshot(tmp_path: Path) -> None:
    """A stopped worker with a tiny SUB high-water mark misses most of a burst of
    10,000 updates; when it runs again it resyncs and its client sees no gap."""
    cluster = Cluster(
        tmp_path,
        1,
        coordinator_args=("--batch-window", "0", "--hwm", "10"),
        worker_args=("--hwm", "10"),
    ).start()
    worker = cluster.workers[0]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:

        async def scenario() -> None:
            async with LobbyClient.connect(cluster.url) as client:
                snapshots = client.snapshots_received
                worker.signal(signal.SIGSTOP)
                last = burst(ctx, cluster, 5000)
                worker.signal(signal.SIGCONT)
                await client.wait_for_view({client.public_key, last})
                assert client.snapshots_received > snapshots  # a resync, not a gap
                assert client.errors == []

        run(scenario())
        worker.wait_for_line("resynced at seq", timeout=5)  # updates were really lost
    finally:
        worker.signal(signal.SIGCONT)
        ctx.destroy(linger=0)
        cluster.stop()


def burst(ctx: zmq.Context[zmq.Socket[bytes]], cluster: Cluster, n: int) -> str:
    """Play a worker that authenticates and closes ``n`` sessions, then keeps one;
    returns its key once the coordinator has published it."""
    worker = FakeWorker(ctx, "burst", cluster.events)
    worker.send(bb.Hello("burst", "", "", "", []))
    for i in range(n):
        key = f"{i:064x}"
        worker.send(bb.Authed(i, key))
        worker.send(bb.Closed(i, key))
    last = "f" * 64
    worker.send(bb.Authed(n, last))
    # Replies (acks) pass a high-water mark of 10 too, so most are lost: the coordinator
    # then asks this "worker" to re-register, and it answers with its whole truth, as a
    # worker does. Ask until a snapshot shows the last session.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        worker.send(bb.SnapshotRequest())
        for msg in worker.replies(0.2):  # as they come: a frame may carry a batch
            if isinstance(msg, bb.Reannounce):
                worker.send(bb.Hello("burst", "", "", "", [(n, last, "", 0, False)]))
            if isinstance(msg, bb.Snapshot) and last in msg.users:
                return last
    raise AssertionError("the burst was never published")


# ------------------------------------------------------------ the coordinator's own stall


def test_a_coordinator_stopped_past_the_worker_timeout_makes_nobody_leave(
    tmp_path: Path,
) -> None:
    """The coordinator stops (SIGSTOP) three times for longer than the worker timeout
    (less than the worker's coordinator timeout): its own stall is no worker's silence.
    Nobody leaves, nobody is closed, and the worker announced once (at start) and never
    again."""
    with Cluster(
        tmp_path,
        1,
        coordinator_args=("--heartbeat-interval", "0.1", "--worker-timeout", "0.3"),
        worker_args=("--heartbeat-interval", "0.1", "--coordinator-timeout", "2.0"),
    ) as cluster:
        assert cluster.coordinator is not None
        coordinator, worker = cluster.coordinator, cluster.workers[0]

        async def scenario() -> None:
            clients = await connect_many(cluster.url, 2)
            keys = {c.public_key for c in clients}
            for c in clients:
                await c.wait_for_view(keys)
            for _ in range(3):  # (each stall ends in a race: the beats may be read first)
                coordinator.signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(0.35)  # the fault itself: stopped this long
                finally:
                    coordinator.signal(signal.SIGCONT)
                await asyncio.sleep(0.1)  # and running this long
            newcomer = await LobbyClient.connect(cluster.url)  # the coordinator works again
            everyone = [*clients, newcomer]
            await until(lambda: settled(everyone), "the newcomer seen by all", 5)
            assert open_ones(clients) == clients
            await close_all(everyone)

        run(scenario())
        assert "silent for" not in coordinator.output()
        assert worker.count("announcing") == 1, worker.output()
