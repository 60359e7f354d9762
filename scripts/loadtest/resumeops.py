"""The agent's ops of the resume scenarios (:class:`ResumeOps`, a part of
:class:`~scripts.loadtest.agent.Agent`; the scenarios are in
:mod:`scripts.loadtest.resume`): choosing what clients follow, background changes,
blips of probe clients, and reconnecting the clients of a killed worker.

Each reconnecting client is a new :class:`~scripts.loadtest.clientv2.LoadClientV2`
whose tally counts only its own connection, so "the bytes to bring it back" are those
of its handshake, its first view (a snapshot, or the update that resumed it) and what
followed; :func:`_delta` reads what a resuming update carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from typing import Any

from scripts.loadtest.client import LoadClient
from scripts.loadtest.clientv2 import LoadClientV2
from scripts.loadtest.surface import AgentSurface
from scripts.loadtest.tallies import ConnectStats
from shared.session_v2 import parse_frame_v2

STATUSES = ("online", "away", "busy")
"""What a background status change sets (another than the client's last one)."""


def _discard(keys: set[int], key: int, _task: object) -> None:
    keys.discard(key)


def _delta(client: LoadClientV2) -> dict[str, int]:
    """What the update that resumed ``client``'s view carried (zeros for a snapshot)."""
    frame = client.tally.first_update
    if frame is None:
        return {"joined": 0, "updated": 0, "left": 0}
    update = parse_frame_v2(frame)
    return {"joined": len(update.joined), "updated": len(update.updated), "left": len(update.left)}


def _first_bytes(client: LoadClientV2) -> dict[str, Any]:
    """The new connection's bytes: all of them so far and its first view's."""
    return {
        "bytes": client.frame_bytes,
        "view_bytes": client.tally.first_view_bytes,
        "resumed": client.resumed,
        **_delta(client),
    }


class ResumeOps(AgentSurface):
    """Ops of an agent: what they use of it is declared here."""

    resume_from: dict[int, LoadClientV2]
    _background: asyncio.Task[None] | None = None
    _background_tasks: set[asyncio.Task[None]] | None = None
    _made: Counter[str] | None = None
    _changed_at: dict[int, float] | None = None

    def _v2(self, index: int) -> LoadClientV2:
        client = self.clients[index]
        assert isinstance(client, LoadClientV2)
        return client

    # ------------------------------------------------------------------ following

    def _follow_of(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A follow from the parent's spec: watchlists name client indices."""
        if spec["scope"] == "watch":
            return {"scope": "watch", "keys": [self.pub(i) for i in spec["indices"]]}
        return {"scope": spec["scope"]}

    async def op_set_follows(self, follows: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """What the next connection of each index follows (``{"scope": "watch",
        "indices": [...]}``, ``{"scope": "lobby"}`` or ``{"scope": "count"}``)."""
        for index, spec in follows.items():
            self.follows[index] = self._follow_of(spec)
        return {}

    async def op_follow(
        self, follows: dict[int, dict[str, Any]], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Connected clients change what they follow (as :meth:`op_set_follows`), and
        wait for the snapshot that follows; their later connections follow it too."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int, spec: dict[str, Any]) -> None:
            follow = self.follows[index] = self._follow_of(spec)
            client = self._v2(index)
            before = client.snapshots_received
            async with gate:
                if follow["scope"] == "watch":
                    await client.follow_watch(follow["keys"])
                else:
                    await client.follow_lobby()
                await client.wait_for_view(
                    lambda _view: client.snapshots_received > before, timeout
                )
            self.progress += 1

        await asyncio.gather(*(one(i, s) for i, s in follows.items()))
        return {"followed": len(follows)}

    # ------------------------------------------------------------------ background

    async def op_background(
        self, rate: float, changers: list[int], spares: list[int], seed: int = 0
    ) -> dict[str, Any]:
        """Start changing the lobby ``rate`` times a second until :meth:`op_quiet`:
        two changes in three set another status on one of ``changers`` (connected
        clients), one in three is a join or leave of one of ``spares``."""
        rng = random.Random(seed)
        made = self._made = self._made or Counter()
        tasks: set[asyncio.Task[None]] = set()
        stats = ConnectStats()

        async def status(index: int) -> None:
            client = self._v2(index)
            current = client.session.record.status if client.session.record else None
            await client.set_record(rng.choice([s for s in STATUSES if s != current]))
            made["status"] += 1

        async def toggle(index: int) -> None:
            client = self._retire(index)
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10.0)
                made["leave"] += 1
                return
            joined = await self._connect(index, stats)
            if joined is None:
                made["failed"] += 1
            else:
                self._adopt(index, joined, watch=False)
                made["join"] += 1

        async def run() -> None:
            busy: set[int] = set()
            start = time.monotonic()
            for n in range(10**9):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if n % 3 == 2 and spares:
                    index, work = rng.choice(spares), toggle
                else:
                    index, work = rng.choice(changers), status
                if index in busy:
                    continue
                busy.add(index)
                task = asyncio.create_task(work(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(functools.partial(_discard, busy, index))

        if rate > 0 and (changers or spares):
            self._background = asyncio.create_task(run())
        self._background_tasks = tasks
        return {}

    async def op_quiet(self) -> dict[str, Any]:
        """Stop the background changes; wait for those in flight; what was made so far."""
        task, self._background = self._background, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = self._background_tasks
        if pending:
            await asyncio.wait(pending, timeout=15.0)
        return dict(self._made or {})

    # ------------------------------------------------------------------ blips

    async def op_blip(self, indices: list[int], start_at: float, blip: float) -> list[Any]:
        """At ``start_at`` drop ``indices`` (no close frame), and ``blip`` seconds later
        reconnect each resuming the view it held. Per client: its new connection's
        bytes, whether it resumed and what the resuming update carried."""
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for index in indices:
            client = self._retire(index)
            if client is not None:
                client.drop()
                assert isinstance(client, LoadClientV2)
                self.resume_from[index] = client
        await asyncio.sleep(blip)
        stats = ConnectStats()
        clients = await asyncio.gather(*(self._connect(i, stats) for i in indices))
        out = []
        for index, client in zip(indices, clients, strict=True):
            self.resume_from.pop(index, None)
            if client is None:
                out.append({"index": index, "failed": True})
                continue
            self._adopt(index, client, watch=False)
            assert isinstance(client, LoadClientV2)
            out.append({"index": index, "failed": False, **_first_bytes(client)})
        return out

    async def op_probe_check(self, indices: list[int], truth: list[int]) -> list[Any]:
        """For each client of ``indices``: whether its view (resumed, then kept up)
        equals a fresh snapshot of the same scope at the same ``seq`` (``get_lobby``;
        asked again if the lobby moved in between) and the truth (``truth``: the
        indices online, restricted to the client's watchlist); the snapshot's bytes."""
        online = {self.pub(i) for i in truth}
        out = []
        for index in indices:
            client = self._v2(index)
            follow = self.follows.get(index, {"scope": "lobby"})
            want = online & set(follow["keys"]) if follow["scope"] == "watch" else online
            for _ in range(5):
                held, seq = dict(client.view.records), client.view.seq
                before = client.frame_bytes
                await client.get_lobby()
                if client.view.seq == seq:
                    break
            fresh = client.view.records
            differ = sorted(k for k in held.keys() | fresh.keys() if held.get(k) != fresh.get(k))
            out.append(
                {
                    "index": index,
                    "snapshot_bytes": client.frame_bytes - before,
                    "same_seq": client.view.seq == seq,
                    "equal": not differ,
                    "differ": [k[:8] for k in differ[:3]],
                    "true": held.keys() == want,
                    "keys": len(held),
                }
            )
        return out

    # ------------------------------------------------------------------ killed worker

    def _note_change(self, client: LoadClient, _update: Any) -> None:
        if self._changed_at is not None:
            self._changed_at[client.index] = time.time()

    async def op_track(self) -> dict[str, Any]:
        """From now on note when each client's view last changed (a frame applied)."""
        self._changed_at = {}
        for client in self.clients.values():
            client.lobby_hook = self._note_change
        return {}

    async def op_recover(
        self, indices: list[int], resume: bool, timeout: float = 120.0
    ) -> dict[str, Any]:
        """The clients of ``indices`` lost their worker: as each sees its connection
        end, it reconnects at once (the same key; resuming the view it held when
        ``resume``), retrying with jitter whatever the client library's reconnection
        retries (a dropped connection too, however often). Those not back within
        ``timeout`` seconds count as failed."""
        stats = ConnectStats()
        gate = asyncio.Semaphore(self.concurrency)
        lost_at: list[float] = []
        until = time.monotonic() + timeout  # each retries as a real client, until then

        async def one(index: int) -> None:
            old = self.clients[index]
            with contextlib.suppress(TimeoutError):
                await old.wait_closed(30.0)
            lost_at.append(time.time())
            self._retire(index)
            if resume:
                assert isinstance(old, LoadClientV2)
                self.resume_from[index] = old
            async with gate:
                client = await self._connect(index, stats, until)
            self.resume_from.pop(index, None)
            if client is not None:
                self._adopt(index, client, watch=False)
                client.lobby_hook = self._note_change
                if self._changed_at is not None:
                    self._changed_at[index] = time.time()
            self.progress += 1

        tasks = [asyncio.ensure_future(one(i)) for i in indices]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            stats.failed += len(pending)
            if pending:
                stats.reasons["not back in time"] += len(pending)
            for index in indices:
                self.resume_from.pop(index, None)
        return {**stats.result(), "lost_last": max(lost_at, default=0.0)}

    async def op_whole(self, truth: list[int], reconnected: list[int]) -> dict[str, Any]:
        """Each open client's view against the truth (``truth``: the indices online,
        restricted to its watchlist); per scope, when the views last changed (those of
        ``reconnected`` and all), and what the new connections of ``reconnected`` were
        sent."""
        online = {self.pub(i) for i in truth}
        mine = set(reconnected)
        wrong: list[str] = []
        scopes: dict[str, dict[str, Any]] = {}
        changed = self._changed_at or {}
        for index, client in self.clients.items():
            assert isinstance(client, LoadClientV2)
            follow = self.follows.get(index, {"scope": "lobby"})
            scope = follow["scope"]
            want = online & set(follow["keys"]) if scope == "watch" else online
            if client.closed or client.view.records.keys() != want:
                have = client.view.records.keys()
                wrong.append(
                    f"{index} ({scope}): {'closed, ' if client.closed else ''}"
                    f"{len(want - have)} missing, {len(have - want)} extra"
                )
            s = scopes.setdefault(
                scope,
                {
                    "clients": 0,
                    "reconnected": 0,
                    "resumed": 0,
                    "bytes": 0,
                    "view_bytes": 0,
                    "joined": 0,
                    "updated": 0,
                    "left": 0,
                    "changed_last": 0.0,
                    "reconnected_changed_last": 0.0,
                },
            )
            s["clients"] += 1
            at = changed.get(index, 0.0)
            s["changed_last"] = max(s["changed_last"], at)
            if index in mine:
                s["reconnected"] += 1
                s["reconnected_changed_last"] = max(s["reconnected_changed_last"], at)
                for k, v in _first_bytes(client).items():
                    s[k] += v
        return {"wrong": len(wrong), "examples": wrong[:5], "scopes": scopes}
