"""The agent's ops on what version 2 clients follow and on their presence records
(:class:`RecordOps`, a part of :class:`~scripts.loadtest.agent.Agent`).

A status change is timed like a join: the changing client's agent notes when it sent
``set_record`` with a status no other change uses (``s<agent>.<n>``), and each of the
agent's sampled watchers that follows the key notes when an ``update`` set that status
(:attr:`~scripts.loadtest.clientv2.LoadClientV2.record_hook`). Every change owes a
sighting to each of them; the parent fails the run when sightings are missing and no
snapshot replaced them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from scripts.loadtest.clientv2 import LoadClientV2
from scripts.loadtest.messaging import sleep_until
from scripts.loadtest.stats import Histogram
from scripts.loadtest.surface import AgentSurface
from shared.session_v2 import ViewChange

SETTLE_POLL = 0.05
"""Seconds between two looks at the sampled views while they settle."""


def status_name(agent: int, n: int) -> str:
    """The status of change ``n`` of generator process ``agent``: no two changes of a
    run share one, so a watcher that sees it knows which change it sees (at most 32
    bytes, the protocol's bound, for any agent and change below 10**14)."""
    return f"s{agent}.{n}"


def watchlist(index: int, universe: list[str], size: int) -> list[str]:
    """The keys client ``index`` watches: ``size`` of ``universe`` drawn by its index
    (the same in every process and run of the same universe)."""
    return random.Random(index).sample(universe, min(size, len(universe)))


def schedule(indices: list[int], seed: int) -> list[int]:
    """The order in which ``indices`` change, round after round: each once a round."""
    order = sorted(indices)
    random.Random(seed).shuffle(order)
    return order


class RecordOps(AgentSurface):
    """Ops of an agent: what they use of it is declared here."""

    clients: dict[Any, Any]  # version 2 clients: their own methods, unchecked

    async def op_prepare_watch(self, indices: list[int]) -> dict[str, Any]:
        """Clients ``indices`` connect following an empty watchlist (no lobby frames
        while the others join); :meth:`op_follow_watch` fills it."""
        for i in indices:
            self.watchlists[i] = frozenset()
        return {}

    async def op_follow_watch(self, universe: list[int], size: int) -> dict[str, Any]:
        """Every client with a watchlist follows ``size`` keys of clients ``universe``
        (0: an empty watchlist)."""
        pubs = [self.pub(i) for i in universe]
        clients = [(i, c) for i, c in self.clients.items() if i in self.watchlists]
        for i, _ in clients:
            self.watchlists[i] = frozenset(watchlist(i, pubs, size))
        await asyncio.gather(*(c.follow_watch(sorted(self.watchlists[i])) for i, c in clients))
        return {"following": len(clients)}

    async def op_follow_lobby(self, count: int) -> dict[str, Any]:
        """``count`` clients (the sampled ones first) follow the whole lobby instead."""
        ranked = sorted(self.clients, key=lambda i: (i not in self.measuring, i))[:count]
        for i in ranked:
            self.watchlists.pop(i, None)
        await asyncio.gather(*(self.clients[i].follow_lobby() for i in ranked))
        return {"lobby": len(ranked), "measuring": len(set(ranked) & self.measuring)}

    def _on_record(self, client: LoadClientV2, event: ViewChange) -> None:
        sent = self.status_sent
        now = time.time()
        for entry in event.entries:
            mark = sent.get((entry.key, entry.record.status))
            if mark is not None:
                group = "watch" if client.index in self.watchlists else "lobby"
                self.status_latency.setdefault(group, Histogram()).add(now - mark[0])
                self.status_seen += 1
                mark[1] -= 1
                if mark[1] <= 0:
                    del sent[(entry.key, entry.record.status)]

    async def op_status_churn(
        self, rate: float, duration: float, start_at: float, seed: int = 0
    ) -> dict[str, Any]:
        """Change the status of this process's clients ``rate`` times a second for
        ``duration`` seconds, each client once a round (a round of ``n`` clients lasts
        ``n / rate`` seconds)."""
        self.status_sent, self.status_latency, self.status_seen = {}, {}, 0
        for i in self.measuring:
            self.clients[i].record_hook = self._on_record
        order = schedule(list(self.clients), seed)
        tasks: set[asyncio.Task[None]] = set()
        lag = Histogram()
        owed = made = 0
        last: dict[int, str] = {}
        issued_last = start_at
        for n in range(int(rate * duration)):
            due = start_at + n / rate
            await sleep_until(due)
            now = time.time()
            lag.add(now - due)
            index = order[n % len(order)]
            client = self.clients[index]
            status = status_name(self.index, self.status_made)
            self.status_made += 1
            waiting = self._watchers_of(self.pub(index))
            if waiting:
                self.status_sent[(self.pub(index), status)] = [now, waiting]
            owed += waiting
            task = asyncio.create_task(client.set_record(status=status))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            last[index] = status
            made += 1
            issued_last = now
            self.progress += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30.0)
        return {
            "issued_last": issued_last,
            "changes": made,
            "expected": owed,
            "statuses": last,
            "schedule_lag": lag.to_dict(),
        }

    async def op_status_counts(self) -> dict[str, Any]:
        """The sightings and latencies of the status changes, the ``error`` codes the
        clients got, and the frames and bytes received by the lobby followers and by the
        watchlist followers (watchers only: not the clients that join and leave)."""
        codes: Counter[str] = Counter()
        tally = {"lobby": [0, 0, 0], "watch": [0, 0, 0]}
        for i, client in self.clients.items():
            codes.update(client.error_codes)
            if i not in self.watching:
                continue
            group = tally["watch" if i in self.watchlists else "lobby"]
            group[0] += 1
            group[1] += client.frames
            group[2] += client.frame_bytes
        return {
            "seen": self.status_seen,
            "latency": {k: h.to_dict() for k, h in self.status_latency.items()},
            "error_codes": dict(codes),
            "tally": tally,
        }

    async def op_wait_records(self, truth: dict[int, str], timeout: float) -> dict[str, Any]:
        """Wait until every sampled client's view holds the status ``truth`` gives each
        key it shows (clients not in ``truth``: ``online``); the wrong ones, after
        ``timeout`` seconds."""
        statuses = {self.pub(i): status for i, status in truth.items()}
        sampled = [c for i, c in self.clients.items() if i in self.measuring]

        def wrong(client: LoadClientV2) -> int:
            records = client.records
            return sum(1 for k, r in records.items() if r.status != statuses.get(k, "online"))

        deadline = time.monotonic() + timeout
        bad = [c for c in sampled if wrong(c)]
        while bad and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL)
            bad = [c for c in bad if wrong(c)]
        return {
            "checked": len(sampled),
            "wrong": len(bad),
            "examples": [f"{c.public_key[:8]}: {wrong(c)} wrong statuses" for c in bad[:3]],
        }

    async def op_wait_counts(self, online: int, timeout: float) -> dict[str, Any]:
        """Wait until every open count follower holds the number ``online``; the wrong
        ones, after ``timeout`` seconds."""
        followers = [
            c
            for i, c in self.clients.items()
            if not c.closed and self.follows.get(i, {}).get("scope") == "count"
        ]
        deadline = time.monotonic() + timeout
        bad = [c for c in followers if c.count != online]
        while bad and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL)
            bad = [c for c in bad if c.count != online]
        return {
            "checked": len(followers),
            "wrong": len(bad),
            "examples": [f"{c.public_key[:8]}: count {c.count}" for c in bad[:3]],
        }
