"""The pure core: :class:`~coordinator.core.CoordinatorCore` in this process, no sockets."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from coordinator.core import CoordinatorCore, Output
from coordinator.settings import CoordinatorSettings, Timing
from scripts.coordinator_bench.common import BODY, W1, W2, hello, key_of
from shared import backbone as bb

PURE_SETTINGS = CoordinatorSettings(
    # The window never fires by itself: the measurement calls publish() where it wants
    # a flush (after each event, or after each batch). Workers never expire.
    timing=Timing(
        batch_window=3600.0, max_batch_window=3600.0, heartbeat_interval=1.0, worker_timeout=1e9
    )
)
NOW, WALL, FAR = 1.0, 1.0, 1e18

EVENT_KINDS: dict[str, str] = {
    "join": "join (Authed), published alone: Update + AuthAck",
    "join_batch": "join, {batch} per update",
    "leave": "leave (Closed), published alone: Update",
    "leave_batch": "leave, {batch} per update",
    "route": "direct message (Route -> Deliver)",
    "route_offline": "Route to an offline key -> RouteDone",
    "heartbeat": "Heartbeat from a worker",
    "beat": "Beat to all (tick + encode)",
}


class PureBench:
    """A core with ``users`` online (split over two workers, all published)."""

    def __init__(self, users: int) -> None:
        self.core = CoordinatorCore(PURE_SETTINGS, epoch=bb.new_epoch(), now=0.0)
        for worker in (W1, W2):
            self.core.handle(worker, hello(worker), 0.0, 0.0)
        self.on_w2: list[str] = []
        for i in range(users):
            worker = (W1, W2)[i % 2]
            self.core.handle(worker, bb.Authed(i, key_of(i)), 0.0, 0.0)
            if worker == W2:
                self.on_w2.append(key_of(i))
        self.core.publish(0.0, 0.0, [])
        self.users = users
        self.next_id = users
        self.route_id = 0
        self.clock = 1.0

    def fresh(self, m: int) -> range:
        ids = range(self.next_id, self.next_id + m)
        self.next_id += m
        return ids

    def timed(
        self, worker: str, msgs: Sequence[bb.Message], batch: int, codec: bool, flush: bool
    ) -> int:
        """Nanoseconds to apply ``msgs`` from ``worker`` with a flush after every
        ``batch`` (when ``flush``); with ``codec``, decoding each frame and encoding
        every output as the shell does."""
        handle, publish = self.core.handle, self.core.publish
        decode, encode = bb.decode, bb.encode
        if codec:
            frames = [encode(m) for m in msgs]
            chunks = [frames[i : i + batch] for i in range(0, len(frames), batch)]
            start = time.perf_counter_ns()
            for chunk in chunks:
                for frame in chunk:
                    for o in handle(worker, decode(frame), NOW, WALL):
                        encode(o.message)
                if flush:
                    out: list[Output] = []
                    publish(NOW, WALL, out)
                    for o in out:
                        encode(o.message)
            return time.perf_counter_ns() - start
        plain = [list(msgs[i : i + batch]) for i in range(0, len(msgs), batch)]
        start = time.perf_counter_ns()
        for part in plain:
            for msg in part:
                handle(worker, msg, NOW, WALL)
            if flush:
                publish(NOW, WALL, [])
        return time.perf_counter_ns() - start

    def round(self, kind: str, m: int, batch: int, codec: bool) -> int:
        """Nanoseconds for ``m`` events of ``kind``; the lobby ends as it began."""
        if kind in ("join", "join_batch", "leave", "leave_batch"):
            size = 1 if kind in ("join", "leave") else batch
            ids = self.fresh(m)
            joins = [bb.Authed(i, key_of(i)) for i in ids]
            leaves = [bb.Closed(i, key_of(i)) for i in ids]
            joined = self.timed(W1, joins, size, codec, flush=True)
            left = self.timed(W1, leaves, size, codec, flush=True)
            return joined if kind.startswith("join") else left
        if kind in ("route", "route_offline"):
            msgs: list[bb.Message] = []
            for _ in range(m):
                self.route_id += 1
                n = self.route_id
                to = self.on_w2[n % len(self.on_w2)] if kind == "route" else key_of(2**255 + n)
                msgs.append(bb.Route(n, key_of(0), to, f"m{n}", BODY, FAR))
            return self.timed(W1, msgs, m, codec, flush=False)
        if kind == "heartbeat":
            return self.timed(W1, [bb.Heartbeat(W1)] * m, m, codec, flush=False)
        if kind == "beat":
            tick, encode = self.core.tick, bb.encode
            ticks = [self.clock + i for i in range(m)]
            self.clock += m
            start = time.perf_counter_ns()
            for now in ticks:
                for o in tick(now, WALL):
                    if codec:
                        encode(o.message)
            return time.perf_counter_ns() - start
        raise ValueError(kind)

    def flush_costs(self, keys: int, reps: int) -> dict[str, Any]:
        """One update of ``keys`` joins (Update + ``keys`` AuthAcks), then one of as
        many leaves: median µs per flush, encoding included; the Update's encoding alone."""
        join_ns: list[int] = []
        leave_ns: list[int] = []
        encode_ns: list[int] = []
        size = 0
        for _ in range(reps):
            ids = self.fresh(keys)
            for i in ids:
                self.core.handle(W1, bb.Authed(i, key_of(i)), NOW, WALL)
            join_ns.append(self._timed_publish())
            joined = [key_of(i) for i in ids]
            lobby = self.core.lobby
            update = bb.Update(self.core.epoch, lobby.seq, lobby.mseq, joined, [], WALL)
            start = time.perf_counter_ns()
            size = len(bb.encode(update))
            encode_ns.append(time.perf_counter_ns() - start)
            for i in ids:
                self.core.handle(W1, bb.Closed(i, key_of(i)), NOW, WALL)
            leave_ns.append(self._timed_publish())
        join_us = statistics.median(join_ns) / 1000
        leave_us = statistics.median(leave_ns) / 1000
        return {
            "keys": keys,
            "join_flush_us": join_us,
            "join_flush_us_per_key": join_us / keys,
            "leave_flush_us": leave_us,
            "leave_flush_us_per_key": leave_us / keys,
            "update_encode_us": statistics.median(encode_ns) / 1000,
            "update_bytes": size,
        }

    def _timed_publish(self) -> int:
        start = time.perf_counter_ns()
        out: list[Output] = []
        self.core.publish(NOW, WALL, out)
        for o in out:
            bb.encode(o.message)
        return time.perf_counter_ns() - start

    def snapshot_cost(self, reps: int) -> dict[str, Any]:
        """A SnapshotRequest handled and its Snapshot encoded: median µs, and bytes.
        ``us``: the first request at a ``seq`` (the snapshot is made: the core's
        per-seq cache is emptied before each, as a publish would); ``cached_us``:
        another worker asking at the same ``seq`` (the core hands the same one)."""
        made: list[int] = []
        cached: list[int] = []
        size = 0
        for _ in range(reps):
            for times in (made, cached):
                if times is made:
                    self.core._snapshot = None  # what publishing the next seq does
                start = time.perf_counter_ns()
                for o in self.core.handle(W2, bb.SnapshotRequest(), NOW, WALL):
                    size = len(bb.encode(o.message))
                times.append(time.perf_counter_ns() - start)
        return {
            "users": self.users,
            "us": statistics.median(made) / 1000,
            "cached_us": statistics.median(cached) / 1000,
            "bytes": size,
            "bytes_per_user": size / max(1, self.users),
        }


def measure_pure(
    sizes: Sequence[int],
    *,
    rounds: int = 15,
    round_events: int = 1000,
    batch: int = 100,
    flush_keys: Sequence[int] = (1, 10, 100, 1000, 10000),
) -> dict[str, Any]:
    """Every pure-core figure (see ``scripts/coordinator_costs.py``), as plain data."""
    events: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in EVENT_KINDS}
    snapshots: list[dict[str, Any]] = []
    bench: PureBench | None = None
    for users in sizes:
        bench = PureBench(users)
        for kind in EVENT_KINDS:
            bench.round(kind, round_events, batch, codec=True)  # warm-up
            with_codec: list[int] = []
            core_only: list[int] = []
            for _ in range(rounds):
                with_codec.append(bench.round(kind, round_events, batch, codec=True))
                core_only.append(bench.round(kind, round_events, batch, codec=False))
            events[kind][str(users)] = {
                "us": statistics.median(with_codec) / round_events / 1000,
                "core_us": statistics.median(core_only) / round_events / 1000,
            }
        snapshots.append(bench.snapshot_cost(max(3, min(50, 200_000 // max(users, 1)))))
    assert bench is not None, "no sizes"
    flushes = [bench.flush_costs(k, max(3, min(200, 20_000 // k))) for k in flush_keys]
    small, large = str(min(sizes)), str(max(sizes))
    scaling = {
        kind: by_size[large]["us"] / by_size[small]["us"] for kind, by_size in events.items()
    }
    return {
        "sizes": list(sizes),
        "rounds": rounds,
        "round_events": round_events,
        "batch": batch,
        "events": events,
        "scaling": scaling,
        "flush": flushes,
        "flush_at_users": max(sizes),
        "snapshot": snapshots,
    }
