"""One load-generator process: holds a share of the simulated clients, runs the
parent's commands on them and answers with plain picklable data.

The parent (:mod:`scripts.loadtest.pool`) sends ``(op, kwargs)``; the agent answers
``("progress", n)`` while a long op runs and then ``("done", result)`` or
``("error", traceback)``. Ops run one at a time. Every op is bounded: waits carry
timeouts and loops a count, so an agent never runs on by itself.

Latencies are measured inside one process: when a client of this agent causes a
change (its ``auth`` went out, or it closed or dropped), the agent notes a
:class:`Cause` per public key, and when a sampled watching client of the same agent
(``--verify-sample``; see :mod:`scripts.loadtest.client`) sees that key in a
``lobby_update`` the difference goes into a
:class:`~scripts.loadtest.stats.Histogram`. During churn a cause also counts the
watchers still to see it, and the key is not changed again before they all have (or
the cause is :data:`STALE` seconds old), so a watcher that lags behind by more than a
key's rest still matches each sighting to the change that caused it.
Keys are derived from the client index and a per-run salt, so every process can name
any client's public key without shipping keys around.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import os
import random
import resource
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection

from scripts.loadtest import fastws
from scripts.loadtest.causes import TRY_AGAIN_LATER, classify, retry
from scripts.loadtest.client import (
    LEDGER,
    LoadClient,
    Update,
    use_source_addresses,
    use_ws_client,
)
from scripts.loadtest.clientv2 import LoadClientV2
from scripts.loadtest.messaging import MessageOps, sleep_until
from scripts.loadtest.records import RecordOps
from scripts.loadtest.resumeops import ResumeOps
from scripts.loadtest.scaleops import ScaleOps
from scripts.loadtest.stats import Histogram
from scripts.loadtest.tallies import Cause, ConnectStats, Totals
from shared.session import backoff_delay

MAX_ATTEMPTS = 40
"""Connection attempts per client before it counts as failed (1013/503; transport
failures stop sooner, see :mod:`scripts.loadtest.causes`)."""
BACKOFF_BASE, BACKOFF_CAP = 0.05, 2.0
"""Retry delay: the core's backoff (:func:`shared.session.backoff_delay`), full jitter
over ``min(cap, base * 2**attempt)`` seconds, so a storm of refused clients spreads out
instead of coming back in lock step."""
PROGRESS_EVERY = 0.25
"""Seconds between progress reports to the parent."""
GC_THRESHOLDS = (10_000, 20, 20)
"""Cyclic garbage collection: a generator process allocates a few objects per frame
and holds large, long-lived ones (clients, their views); the defaults (700, 10, 10)
spend a fifth of its CPU walking them. Before a measured phase the process also
freezes what it holds (:func:`gc.freeze`), and thaws it when the clients close."""
MIN_SAMPLED = 2
"""Watchers per generator process whose every update is applied on arrival and timed,
whatever the sample fraction."""
STALE = 15.0
"""Seconds after which a churn key may change again although some watchers of its
agent have not seen its last change yet (they are then counted as not having seen it)."""


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; returns it.

    Every client holds a socket, and the common soft default (1024) is far below the
    tens of thousands a load test needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def signing_key(salt: bytes, index: int) -> SigningKey:
    """Client ``index``'s identity: a seed hashed from the run's salt and the index."""
    return SigningKey(hashlib.sha256(salt + index.to_bytes(8, "big")).digest())


def _discard(keys: set[int], key: int, _task: object) -> None:
    keys.discard(key)


class Agent(MessageOps, RecordOps, ResumeOps, ScaleOps):
    """The clients of one generator process and the ops the parent can run on them."""

    def __init__(
        self, index: int, url: str, salt: bytes, sample: float = 1.0, protocol: int = 1
    ) -> None:
        self.index = index
        # LoadClientV2 offers all that this agent reads of a LoadClient.
        self.watchlists: dict[int, frozenset[str]] = {}
        """The keys each watcher with a watchlist follows (``--watch``; version 2)."""
        self.follows: dict[int, dict[str, Any]] = {}
        """What each client's next connection follows, where set (version 2)."""
        self.resume_from: dict[int, LoadClientV2] = {}
        """Dropped clients whose views the next connection of their key resumes."""
        self.client_class: Any = LoadClientV2 if protocol == 2 else LoadClient
        """The load client of the protocol version spoken (``--protocol``)."""
        self.url = url
        self.salt = salt
        self.sample = sample
        """The fraction of watchers that apply every update on arrival and time it (at
        least :data:`MIN_SAMPLED`); the other clients note updates and apply them later
        (:class:`~scripts.loadtest.client.Ledger`). 1.0: every client, as before."""
        self._sampled: dict[int, bool] = {}
        self._taken = 0  # how many of ``_sampled`` are True
        self.clients: dict[int, LoadClient] = {}
        self.watching: set[int] = set()
        self.measuring: set[int] = set()
        """The sampled watchers: their lobby hook measures latencies."""
        self.watchers_fixed: tuple[dict[str, int], int] | None = None
        """While set: the measuring watchers of each key, and those of every key."""
        self.retired = Totals()
        self.causes: dict[str, Cause] = {}
        self._causes_version = 0  # changes whenever ``causes`` does
        self.counting = False
        """While True (churn), causes count the watchers still to see them."""
        self.latency = Histogram()
        self.observed = 0
        self.changes_seen = 0
        self.updates_seen = 0
        self.target_online: int | None = None
        self.converged_at: dict[int, float] = {}
        self.progress = 0
        self.concurrency = 100
        self.attempts = MAX_ATTEMPTS
        self.open_timeout = 30.0
        self._keys: dict[int, SigningKey] = {}
        self._pubs: dict[int, str] = {}
        self.status_sent: dict[tuple[str, str], list[float]] = {}
        self.status_latency: dict[str, Histogram] = {}
        self.status_seen = self.status_made = 0
        self.raw: list[ClientConnection] = []
        self.raw_frames = 0
        self._raw_tasks: set[asyncio.Task[None]] = set()
        LoadClient.auth_sent_hook = self._on_auth_sent

    # ------------------------------------------------------------------ keys

    def key(self, index: int) -> SigningKey:
        key = self._keys.get(index)
        if key is None:
            key = self._keys[index] = signing_key(self.salt, index)
        return key

    def pub(self, index: int) -> str:
        pub = self._pubs.get(index)
        if pub is None:
            pub = self._pubs[index] = bytes(self.key(index).verify_key).hex()
        return pub

    # ------------------------------------------------------------------ observing

    def _cause(self, public_key: str, joined: bool, at: float) -> None:
        # A reconnect shows as ``left`` and ``joined``: only the ``joined`` is its own.
        waiting = self._watchers_of(public_key) if self.counting else None
        self.causes[public_key] = Cause(joined, at, waiting)
        self._causes_version += 1

    def _on_auth_sent(self, public_key: str, at: float) -> None:
        self._cause(public_key, True, at)

    def _mark_leave(self, index: int) -> None:
        self._cause(self.pub(index), False, time.time())

    def _watchers_of(self, public_key: str) -> int:
        """How many measuring watchers follow ``public_key`` (all but watchlists without it)."""
        fixed = self.watchers_fixed
        if fixed is not None:  # the sample does not change: counted once
            return fixed[1] + fixed[0].get(public_key, 0)
        lists = self.watchlists
        return sum(1 for i in self.measuring if i not in lists or public_key in lists[i])

    def _settled(self, index: int, now: float) -> bool:
        """True unless watchers are still to see the last change of key ``index``."""
        cause = self.causes.get(self.pub(index))
        return cause is None or cause.waiting is None or now - cause.at > STALE

    def _matched(self, update: Update) -> tuple[list[tuple[str, Cause]], list[float]]:
        """The causes ``update`` shows, and their times. Every watcher of this process
        applies the same parsed update: worked out once per state of ``causes``."""
        memo = update.memo
        if memo is not None and memo[0] == self._causes_version:
            return memo[1], memo[2]
        causes = self.causes
        matched = [(k, c) for k in update.joined if (c := causes.get(k)) is not None and c.joined]
        matched += [
            (k, c) for k in update.left if (c := causes.get(k)) is not None and not c.joined
        ]
        starts = [c.at for _, c in matched]
        update.memo = (self._causes_version, matched, starts)
        return matched, starts

    def _on_lobby(self, client: LoadClient, update: Update | None) -> None:
        """A sampled watching client applied ``update`` (None: a snapshot)."""
        if update is not None:
            now = time.time()
            if self.causes:
                matched, starts = self._matched(update)
                if matched:
                    self.latency.add_since(now, starts)
                    self.observed += len(matched)
                    for k, cause in matched:
                        if cause.waiting is not None:
                            cause.waiting -= 1
                            if cause.waiting == 0:
                                del self.causes[k]
                                self._causes_version += 1
            self.changes_seen += update.size
            self.updates_seen += 1

    def _is_sampled(self, index: int) -> bool:
        """Whether watcher ``index`` is in the sample: the first :data:`MIN_SAMPLED`
        watchers of this process, and a ``sample`` fraction of the rest (by a hash of
        the index, so a client that reconnects keeps its part)."""
        sampled = self._sampled.get(index)
        if sampled is None:
            spread = (index * 2654435761 % 2**32) / 2**32  # Knuth's multiplicative hash
            sampled = self._sampled[index] = self._taken < MIN_SAMPLED or spread < self.sample
            self._taken += sampled
        return sampled

    def _harvest(self, index: int, client: LoadClient) -> None:
        """Keep when watcher ``index`` first converged, also past its client."""
        if client.reached_at and index in self.watching:
            self.converged_at.setdefault(index, client.reached_at)

    def _adopt(self, index: int, client: LoadClient, watch: bool) -> None:
        old = self.clients.get(index)
        if old is not None:
            self._harvest(index, old)
            self.retired.add(old)
        self.clients[index] = client
        client.index = index
        sampled = self.sample >= 1.0 or (watch and self._is_sampled(index))
        client.sampled = sampled
        if watch:
            self.watching.add(index)
            client.aim(self.target_online)
            if sampled:
                self.measuring.add(index)
                client.lobby_hook = self._on_lobby
            else:
                self.measuring.discard(index)
        else:
            self.watching.discard(index)
            self.measuring.discard(index)

    def _retire(self, index: int) -> LoadClient | None:
        client = self.clients.pop(index, None)
        if client is not None:
            self._harvest(index, client)
        self.watching.discard(index)
        self.measuring.discard(index)
        if client is not None:
            self.retired.add(client)
        return client

    def _aim(self, target_online: int | None) -> None:
        """Note when each watcher's view first holds ``target_online`` keys."""
        self.target_online = target_online
        for index in self.watching:
            client = self.clients[index]
            self._harvest(index, client)
            client.aim(target_online)

    # ------------------------------------------------------------------ connecting

    async def _connect(
        self, index: int, stats: ConnectStats, until: float | None = None
    ) -> LoadClient | None:
        """Connect client ``index``, retrying as :func:`~scripts.loadtest.causes.retry`
        says, at most :attr:`attempts` times; with ``until`` (``time.monotonic()``), a
        client coming back after losing its server, retrying as the client library
        does until then, however many attempts that takes."""
        transport_failures = 0
        attempt = 0
        while attempt < self.attempts if until is None else time.monotonic() < until:
            started = time.perf_counter()
            try:
                watchlist = self.watchlists.get(index)
                follow = self.follows.get(index)
                if follow is None and watchlist is not None:
                    follow = {"scope": "watch", "keys": [*watchlist]}
                v2: dict[str, Any] = {} if follow is None else {"follow": follow}
                if index in self.resume_from:
                    v2["resume_from"] = self.resume_from[index]
                client: LoadClient = await self.client_class.connect(
                    self.url,
                    self.key(index),
                    **v2,
                    open_timeout=self.open_timeout,
                    ping_interval=None,
                    ping_timeout=None,
                    message_queue_size=1_000_000,
                )
            except Exception as exc:  # any server behaviour is a cause, not a traceback
                cause = classify(exc)
                stats.reasons[cause] += 1
                transport_failures += cause not in TRY_AGAIN_LATER
                if not retry(cause, transport_failures, exc, returning=until is not None):
                    break
                if cause in TRY_AGAIN_LATER:
                    stats.retried_1013 += 1
                else:
                    stats.retried_other += 1
            else:
                now = time.time()
                stats.duration.add(time.perf_counter() - started)
                stats.ok += 1
                stats.first_ok = stats.first_ok or now
                stats.last_ok = now
                return client
            await asyncio.sleep(backoff_delay(attempt, random.random(), BACKOFF_BASE, BACKOFF_CAP))
            attempt += 1
        stats.failed += 1
        return None

    async def _connect_many(self, indices: Iterable[int], watch: bool) -> ConnectStats:
        stats = ConnectStats()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(index: int) -> None:
            async with gate:
                client = await self._connect(index, stats)
            if client is not None:
                self._adopt(index, client, watch)
            self.progress += 1

        await asyncio.gather(*(one(i) for i in indices))
        return stats

    # ------------------------------------------------------------------ ops: generic

    async def op_connect(
        self,
        indices: list[int],
        watch: bool = True,
        start_at: float = 0.0,
        target_online: int | None = None,
        concurrency: int = 100,
        open_timeout: float = 30.0,
        attempts: int = MAX_ATTEMPTS,
        watch_keys: int = 0,
        watch_from: list[int] | None = None,
    ) -> dict[str, Any]:
        """Connect ``indices`` (from ``start_at``, wall clock), ``concurrency`` in flight.

        With ``target_online`` set, note when each watching client's view first holds
        that many keys (convergence). With ``watch_keys``, each watcher follows a
        watchlist of that many keys of ``watch_from`` (drawn by its index)."""
        if watch and watch_keys:
            pool = [self.pub(i) for i in watch_from or ()]
            for i in indices:
                self.watchlists[i] = frozenset(random.Random(i).sample(pool, watch_keys))
        self.concurrency, self.open_timeout = concurrency, open_timeout
        self.attempts = attempts
        if target_online != self.target_online:
            self._aim(target_online)
        await sleep_until(start_at)
        return (await self._connect_many(indices, watch)).result()

    async def op_reset(self, target_online: int | None = None) -> dict[str, Any]:
        """Forget latencies and convergence so far (the start of a measured phase), and
        take the clients held now out of garbage collection until they close."""
        gc.collect()
        gc.freeze()
        self._forget(target_online)
        return {}

    def _forget(self, target_online: int | None) -> None:
        self.latency = Histogram()
        self.observed = self.changes_seen = self.updates_seen = 0
        self._aim(target_online)
        self.converged_at.clear()

    async def op_counters(self) -> dict[str, Any]:
        """Totals over every client this agent ever had, plus this phase's latencies."""
        LEDGER.catch_up_all()
        for index in self.watching:
            self._harvest(index, self.clients[index])
        totals = Totals(
            **{
                k: getattr(self.retired, k)
                for k in (
                    "updates",
                    "update_bytes",
                    "changes",
                    "frames",
                    "frame_bytes",
                    "snapshots",
                    "error_count",
                )
            }
        )
        totals.errors = list(self.retired.errors)
        for client in self.clients.values():
            totals.add(client)
        return {
            "updates": totals.updates,
            "update_bytes": totals.update_bytes,
            "changes": totals.changes,
            "frames": totals.frames,
            "frame_bytes": totals.frame_bytes,
            "snapshots": totals.snapshots,
            "error_count": totals.error_count,
            "errors": totals.errors,
            "latency": self.latency.to_dict(),
            "observed": self.observed,
            "changes_seen": self.changes_seen,
            "updates_seen": self.updates_seen,
            "watchers": len(self.watching),
            "measuring": len(self.measuring),
            "sampled": sum(c.sampled for c in self.clients.values()),
            "deferred": LEDGER.noted,
            "converged": len(self.converged_at),
            "converged_last": max(self.converged_at.values(), default=0.0),
            "clients": len(self.clients),
        }

    async def op_online(self) -> list[int]:
        """Indices of this agent's clients whose connection is open."""
        return [i for i, c in self.clients.items() if not c.closed]

    async def op_wait_views(self, truth: list[int], timeout: float = 20.0) -> dict[str, Any]:
        """Wait until every open client's view is exactly ``truth`` (client indices).

        Returns how many did not get there, with a few examples, and the clients that
        were closed without this agent closing them."""
        LEDGER.catch_up_all()
        keys = frozenset(self.pub(i) for i in truth)
        closed = {i: c.close_code for i, c in self.clients.items() if c.closed}
        open_clients = [(i, c) for i, c in self.clients.items() if not c.closed]
        lists = self.watchlists
        wants = [keys & lists[i] if i in lists else keys for i, _ in open_clients]
        outcomes = await asyncio.gather(
            *(c.wait_for_view(w, timeout) for (_, c), w in zip(open_clients, wants, strict=True)),
            return_exceptions=True,
        )
        wrong: list[str] = []
        for (_, client), want, outcome in zip(open_clients, wants, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                online, keys = client.view.online, want
                wrong.append(
                    f"{client.public_key[:8]}: {len(online)} online, "
                    f"{len(keys - online)} missing, {len(online - keys)} extra"
                )
        return {
            "checked": len(open_clients),
            "wrong": len(wrong),
            "examples": wrong[:5],
            "unexpected_closes": len(closed),
            "close_codes": dict(Counter(closed.values())),
        }

    async def op_addresses(self) -> dict[int, tuple[str, int]]:
        """Each open client's local (address, port), to find its worker in /proc."""
        return {i: c.local_address for i, c in self.clients.items() if not c.closed}

    async def op_close_all(self, drop: bool = False) -> dict[str, Any]:
        """Close (or drop) every client and wait for the readers to finish."""
        gc.unfreeze()  # what closes now must be collectable
        indices = list(self.clients)
        clients = [c for i in indices if (c := self._retire(i)) is not None]

        async def end(client: LoadClient) -> None:
            with contextlib.suppress(Exception):
                if drop:
                    client.drop()
                    await client.wait_closed(10.0)
                else:
                    await asyncio.wait_for(client.close(), 10.0)

        await asyncio.gather(*(end(c) for c in clients))
        return {"closed": len(clients)}

    # ------------------------------------------------------------------ ops: scenarios

    async def op_storm(
        self, start_at: float, target_online: int, concurrency: int = 100
    ) -> dict[str, Any]:
        """At ``start_at`` drop every client at once, then reconnect them all (same
        keys), retrying 1013 with jitter; convergence counts from the drop. Version 2
        clients resume the views they held; ``resumed`` counts those the server let."""
        await sleep_until(start_at)
        gc.unfreeze()  # what drops now must be collectable
        indices = list(self.clients)
        for i in indices:
            client = self._retire(i)
            if client is not None:
                client.drop()
                if isinstance(client, LoadClientV2):
                    self.resume_from[i] = client
        self.concurrency = concurrency
        self._forget(target_online)
        stats = await self._connect_many(indices, watch=True)
        self.resume_from.clear()
        resumed = sum(getattr(self.clients.get(i), "resumed", False) for i in indices)
        return {**stats.result(), "resumed": resumed}

    async def op_churn(
        self,
        pool: list[int],
        rate: float,
        duration: float,
        start_at: float,
        cooldown: float = 3.0,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Change the lobby ``rate`` times a second for ``duration`` seconds using the
        keys of ``pool``: join, leave (close frame), drop (no close frame) and reconnect
        (same key on a new connection). A key rests ``cooldown`` seconds after each
        change, so the watchers see every change as its own (batching cannot cancel it),
        and until every watcher of this agent has seen it, so each latency is matched
        to the change that caused it. A change that finds no key free is not made (and
        counted under ``failures``); ``issued_last`` tells when the last one started,
        so the parent can report the rate actually made."""
        rng = random.Random(seed)
        rest_until: dict[int, float] = {}
        busy: set[int] = set()  # keys with a change still in flight: never two at once
        actions: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        owed: Counter[str] = Counter()  # "seen": the sightings the changes made owe
        stats = ConnectStats()
        tasks: set[asyncio.Task[None]] = set()
        lag = Histogram()

        async def join(index: int, kind: str) -> None:
            client = await self._connect(index, stats)
            if client is None:
                failures[kind] += 1
                return
            old = self.clients.get(index)
            self._adopt(index, client, watch=False)
            actions[kind] += 1
            owed["seen"] += self._watchers_of(self.pub(index))
            if old is not None:  # the server closes the replaced session with 4002
                with contextlib.suppress(TimeoutError):
                    await old.wait_closed(10.0)

        async def leave(index: int, kind: str) -> None:
            client = self._retire(index)
            if client is None:
                failures[kind] += 1
                return
            self._mark_leave(index)
            if kind == "drop":
                client.drop()
                with contextlib.suppress(TimeoutError):
                    await client.wait_closed(10.0)
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10.0)
            actions[kind] += 1
            owed["seen"] += self._watchers_of(self.pub(index))

        def free(i: int, now: float) -> bool:
            return i not in busy and rest_until.get(i, 0.0) <= now and self._settled(i, now)

        total = int(rate * duration)
        issued_last = start_at
        self.counting = True
        for n in range(total):
            due = start_at + n / rate
            await sleep_until(due)
            now = time.time()
            lag.add(now - due)
            # A free key, uniformly: a few random draws usually find one, else a scan.
            index = -1
            for _ in range(32):
                index = rng.choice(pool)
                if free(index, now):
                    break
                index = -1
            if index < 0:
                free_keys = [i for i in pool if free(i, now)]
                if not free_keys:
                    failures["no_free_key"] += 1
                    continue
                index = rng.choice(free_keys)
            # An offline key joins, an online one changes: about half the pool stays on.
            if index not in self.clients:
                work = join(index, "join")
            else:
                kind = rng.choice(("leave", "drop", "reconnect"))
                work = join(index, kind) if kind == "reconnect" else leave(index, kind)
            rest_until[index] = now + cooldown
            busy.add(index)
            task = asyncio.create_task(work)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(functools.partial(_discard, busy, index))
            issued_last = now
            self.progress += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30.0)
        self.counting = False
        return {
            "issued_last": issued_last,
            "actions": dict(actions),
            "expected": owed["seen"],
            "failures": dict(failures),
            "connect": stats.result(),
            "schedule_lag": lag.to_dict(),
            "watchers": len(self.watching),
            "measuring": len(self.measuring),
        }

    # ------------------------------------------------------------------ serving the parent

    async def serve(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        fastws.leftovers_dropped(loop)  # a failed picows handshake is counted, not logged
        while True:
            message = await loop.run_in_executor(None, conn.recv)
            if message is None:
                break
            op, kwargs = message
            handler: Callable[..., Awaitable[Any]] = getattr(self, f"op_{op}")
            self.progress = 0
            reporter = asyncio.create_task(self._report_progress(conn))
            try:
                result = await handler(**kwargs)
            except Exception:
                conn.send(("error", f"agent {self.index} op {op}: {traceback.format_exc()}"))
            else:
                conn.send(("done", result))
            finally:
                reporter.cancel()
        await self.op_close_all()
        await self.op_raw_close()

    async def _report_progress(self, conn: Connection) -> None:
        sent = -1
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if self.progress != sent:
                sent = self.progress
                conn.send(("progress", sent))


def agent_main(
    conn: Connection,
    index: int,
    url: str,
    salt: bytes,
    sources: list[str],
    cpus: frozenset[int] | None = None,
    sample: float = 1.0,
    ws_client: str = "websockets",
    protocol: int = 1,
) -> None:
    """Entry point of a generator process (uvloop when installed); ``cpus``: pin this
    process to them (it inherits its parent's set otherwise); ``sample``: see
    :attr:`Agent.sample`; ``ws_client``: the WebSocket library of its clients
    (:func:`~scripts.loadtest.client.use_ws_client`); ``protocol``: 1 or 2."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # before any thread starts: they inherit it
    raise_fd_limit()
    use_source_addresses(sources)
    use_ws_client(ws_client)
    gc.set_threshold(*GC_THRESHOLDS)
    agent = Agent(index, url, salt, sample, protocol)
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            asyncio.run(agent.serve(conn))
        else:
            uvloop.run(agent.serve(conn))
