"""The agent's ops of the ``scale`` scenario (:class:`ScaleOps`, a part of
:class:`~scripts.loadtest.agent.Agent`; the scenario is :mod:`scripts.loadtest.scale`):
following contacts or the count, the mix of presence changes, and checking every
client's view, contacts and count alike.

Presence changes are timed as the other scenarios time them: a status change through
the status names of :mod:`scripts.loadtest.records` (each sampled watcher that follows
the key notes when it sees it), a leave or a rejoin through the agent's causes (each
sampled watcher of the key notes when its view shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from typing import Any

from scripts.loadtest.client import LoadClient
from scripts.loadtest.clientv2 import LoadClientV2
from scripts.loadtest.messaging import sleep_until
from scripts.loadtest.records import SETTLE_POLL, schedule, status_name
from scripts.loadtest.resumeops import _delta
from scripts.loadtest.stats import Histogram
from scripts.loadtest.surface import AgentSurface
from scripts.loadtest.tallies import ConnectStats

COUNT: dict[str, Any] = {"scope": "count"}
FREEZE_S = 1.0
"""Seconds between two :func:`gc.freeze` while changes are made: the clients that
rejoin and the records that arrive live on, and the collector would walk them all
again and again (a tenth of the process's CPU at 10,000 users). What the clients
that left leave behind is collected when the clients close (``op_close_all``), as
after :meth:`~scripts.loadtest.agent.Agent.op_reset`'s freeze."""


class ScaleOps(AgentSurface):
    """Ops of an agent: what they use of it is declared here."""

    counting: bool
    watchers_fixed: tuple[dict[str, int], int] | None
    _changed_at: dict[int, float] | None

    # ------------------------------------------------------------------ following

    async def op_scale_follow(
        self, watch: dict[int, list[int]], counters: list[int]
    ) -> dict[str, Any]:
        """What each client's connections follow: the keys of the users ``watch``
        names, or (``counters``) only the count."""
        for index, users in watch.items():
            keys = [self.pub(u) for u in users]
            self.watchlists[index] = frozenset(keys)
            self.follows[index] = {"scope": "watch", "keys": keys}
        for index in counters:
            self.watchlists.pop(index, None)
            self.follows[index] = COUNT
        return {}

    async def op_scale_unwatch(self) -> dict[str, Any]:
        """The count followers connected as watchers: not watchers of the sample."""
        for index in self.clients:
            if self._is_counter(index):
                self.watching.discard(index)
                self.measuring.discard(index)
        return {}

    def _is_counter(self, index: int) -> bool:
        return self.follows.get(index) is COUNT

    # ------------------------------------------------------------------ changes

    async def op_scale_changes(
        self, rate: float, duration: float, start_at: float, leave_share: float, seed: int = 0
    ) -> dict[str, Any]:
        """``rate`` presence changes a second for ``duration`` seconds over this
        process's users, each in turn once a round (so one user changes once every
        ``users / rate`` seconds): a user offline rejoins (a new connection and its
        snapshot); one online leaves (closes) with probability ``leave_share``, else
        sets another status. Sampled watchers do not leave (they time what they see). A
        user whose rejoin is still connecting when its turn comes again skips the turn
        (``skipped_rejoining``): no second connection of one key."""
        self.status_sent, self.status_latency, self.status_seen = {}, {}, 0
        for i in self.measuring:
            client = self.clients[i]
            assert isinstance(client, LoadClientV2)
            client.record_hook = self._on_record
        self.watchers_fixed = self._count_watchers()  # sampled watchers never leave here
        self.counting = True
        rng = random.Random(seed)
        order = schedule(list(self.clients), seed)
        tasks: set[asyncio.Task[Any]] = set()
        lag = Histogram()
        made = {
            "status": 0,
            "leave": 0,
            "rejoin": 0,
            "rejoin_failed": 0,
            "status_failed": 0,
            "skipped_rejoining": 0,
        }
        owed = {"status": 0, "presence": 0}
        statuses: dict[int, str | None] = {}
        offline: set[int] = set()
        stats = ConnectStats()
        issued_last = start_at

        async def rejoin(index: int) -> None:
            client = await self._connect(index, stats)
            if client is None:
                made["rejoin_failed"] += 1
                return
            self._adopt(index, client, watch=not self._is_counter(index))
            if index in self.measuring:
                assert isinstance(client, LoadClientV2)
                client.record_hook = self._on_record

        async def status_change(client: LoadClientV2, status: str) -> None:
            try:
                await client.set_record(status=status)
            except Exception:  # a connection lost is counted, and fails the checks
                made["status_failed"] += 1

        async def leave(client: LoadClient) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10.0)

        def spawn(coro: Any) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        every = max(1, int(rate * FREEZE_S))
        for n in range(int(rate * duration)):
            due = start_at + n / rate
            await sleep_until(due)
            if n % every == 0:
                gc.freeze()  # what lived through the last stretch: walked no more
            now = time.time()
            lag.add(now - due)
            index = order[n % len(order)]
            pub = self.pub(index)
            if index not in offline and index not in self.clients:
                made["skipped_rejoining"] += 1  # its rejoin is still connecting (or failed)
            elif index in offline:
                offline.discard(index)
                owed["presence"] += self._watchers_of(pub)
                statuses[index] = None  # a new connection has no status set
                made["rejoin"] += 1
                spawn(rejoin(index))
            elif index not in self.measuring and rng.random() < leave_share:
                owed["presence"] += self._watchers_of(pub)
                self._mark_leave(index)
                gone = self._retire(index)
                offline.add(index)
                statuses.pop(index, None)
                made["leave"] += 1
                if gone is not None:
                    spawn(leave(gone))
            else:
                status = status_name(self.index, self.status_made)
                self.status_made += 1
                waiting = self._watchers_of(pub)
                if waiting:
                    self.status_sent[(pub, status)] = [now, waiting]
                owed["status"] += waiting
                statuses[index] = status
                made["status"] += 1
                client = self.clients[index]
                assert isinstance(client, LoadClientV2)
                spawn(status_change(client, status))
            issued_last = now
            self.progress += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60.0)
        self.counting = False
        self.watchers_fixed = None
        return {
            "issued_last": issued_last,
            "made": made,
            "owed": owed,
            "statuses": {i: s for i, s in statuses.items() if s is not None},
            "reset": [i for i, s in statuses.items() if s is None],
            "connect": stats.result(),
            "schedule_lag": lag.to_dict(),
        }

    def _count_watchers(self) -> tuple[dict[str, int], int]:
        """The measuring watchers of each key (by their watchlists), and how many
        follow every key (no watchlist): what ``_watchers_of`` counts, once."""
        by_key: Counter[str] = Counter()
        every = 0
        for index in self.measuring:
            keys = self.watchlists.get(index)
            if keys is None:
                every += 1
            else:
                by_key.update(keys)
        return dict(by_key), every

    # ------------------------------------------------------------------ checking

    def _wrong(
        self, index: int, client: LoadClient, online: set[str], n: int, st: dict[str, str]
    ) -> str:
        """What is wrong with ``client``'s view ('' when it is right): its watchlist's
        keys online with the statuses ``st`` (default ``online``), or the count ``n``."""
        assert isinstance(client, LoadClientV2)
        if client.closed:
            return f"{index}: closed ({client.close_code})"
        if self._is_counter(index):
            return "" if client.count == n else f"{index} (count): {client.count}, not {n}"
        want = online & self.watchlists.get(index, frozenset())
        records = client.records
        have = records.keys()
        if have != want:
            return f"{index} (watch): {len(want - have)} missing, {len(have - want)} extra"
        bad = sum(1 for k, r in records.items() if r.status != st.get(k, "online"))
        return f"{index} (watch): {bad} wrong statuses" if bad else ""

    async def op_scale_check(
        self,
        truth: list[int],
        statuses: dict[int, str],
        timeout: float,
        reconnected: list[int] | None = None,
    ) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds until every client's view is right: the keys
        of its watchlist among ``truth`` (the users online) with the statuses of
        ``statuses`` (others ``online``), or the count of ``truth``. The wrong ones,
        the clients closed by the server, and for the clients of ``reconnected``
        (brought back after a kill) their new connections' bytes and when their views
        last changed."""
        online = {self.pub(i) for i in truth}
        st = {self.pub(i): s for i, s in statuses.items()}
        n = len(truth)
        deadline = time.monotonic() + timeout
        bad = [i for i, c in self.clients.items() if self._wrong(i, c, online, n, st)]
        while bad and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL)
            bad = [i for i in bad if i in self.clients]
            bad = [i for i in bad if self._wrong(i, self.clients[i], online, n, st)]
        examples = [self._wrong(i, self.clients[i], online, n, st) for i in bad[:5]]
        closed = [c.close_code for c in self.clients.values() if c.closed]
        back: dict[str, Any] = {
            "clients": 0,
            "counters": 0,
            "asked": 0,
            "resumed": 0,
            "bytes": 0,
            "view_bytes": 0,
            "delta_joined": 0,
            "delta_updated": 0,
            "delta_left": 0,
        }
        changed = self._changed_at or {}
        back["changed_last"] = 0.0
        for index in reconnected or ():
            client = self.clients.get(index)
            if not isinstance(client, LoadClientV2):
                continue
            back["clients"] += 1
            back["counters"] += self._is_counter(index)
            back["asked"] += client.session.resume is not None
            if client.resumed:
                for k, v in _delta(client).items():
                    back[f"delta_{k}"] += v
            back["resumed"] += client.resumed
            back["bytes"] += client.frame_bytes
            back["view_bytes"] += client.tally.first_view_bytes
            back["changed_last"] = max(back["changed_last"], changed.get(index, 0.0))
        return {
            "checked": len(self.clients),
            "counters": sum(1 for i in self.clients if self._is_counter(i)),
            "wrong": len(bad),
            "examples": examples,
            "closed": len(closed),
            "close_codes": {str(k): closed.count(k) for k in set(closed)},
            "back": back,
        }

    async def op_scale_disagree(self, lobby: list[str], truth: list[int]) -> list[str]:
        """This agent's users that the lobby (``lobby``: the keys a whole-lobby view
        holds) and ``truth`` (the indices online) disagree on, each with its client's
        state."""
        online, want = set(lobby), set(truth)
        out = []
        for index in sorted(self.clients):
            if (self.pub(index) in online) == (index in want):
                continue
            where = (
                "online in the truth, not in the lobby" if index in want else "in the lobby only"
            )
            client = self.clients[index]
            out.append(f"{index} ({self.pub(index)[:12]}): {where}; client {_describe(client)}")
        return out

    async def op_scale_view_bytes(self, indices: list[int]) -> dict[str, Any]:
        """The bytes of the first view (a snapshot or a count) of the current
        connection of each client of ``indices``: what a snapshot of its scope costs."""
        total = 0
        for index in indices:
            client = self.clients.get(index)
            if isinstance(client, LoadClientV2):
                total += client.tally.first_view_bytes
        return {"bytes": total, "clients": len(indices)}


def _describe(client: LoadClient) -> str:
    """A client's state in a few words: open or closed (with its close), how often it
    reconnected, its source address, and for version 2 whether it resumed."""
    state = "open" if not client.closed else f"closed {client.close_code} {client.close_reason!r}"
    resumed = f", resumed={client.resumed}" if isinstance(client, LoadClientV2) else ""
    address = "?"
    with contextlib.suppress(Exception):  # a closed connection may have no address
        address = str(client.local_address)
    return (
        f"{state}, status={client.status}, reconnects={client.reconnects}{resumed}, from {address}"
    )
