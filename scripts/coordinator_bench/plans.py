"""The runs against the coordinator process, and what each one measures."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from scripts.coordinator_bench.common import IDLE_SECONDS, W1, W2
from scripts.coordinator_bench.driver import Driver
from scripts.coordinator_bench.harness import CoordinatorProcess, Keys


def measure_process(
    sizes: Sequence[int],
    *,
    rate: float,
    duration: float,
    fanout_rate: float,
    fanout_subscribers: Sequence[int] = (1, 2, 4),
    fanout_rounds: int = 3,
    fanout_duration: float = 2.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every figure of the real coordinator process (see ``scripts/coordinator_costs.py``)."""
    result: dict[str, Any] = {
        "rate": rate,
        "duration_s": duration,
        "fanout_rate": fanout_rate,
        "fanout_rounds": fanout_rounds,
        "fanout_duration_s": fanout_duration,
    }
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="coordinator-costs-") as tmp:
            workdir = Path(tmp)
            result.update(_memory_run(ctx, workdir / "memory", sizes, log))
            result.update(_main_runs(ctx, workdir / "main", sizes, rate, duration, log))
            fanout: list[dict[str, Any]] = []
            transfer: list[dict[str, Any]] = []
            for transport in ("ipc", "tcp+curve"):
                rows, sent = _fanout_runs(
                    ctx,
                    workdir / transport,
                    transport,
                    fanout_subscribers,
                    fanout_rate,
                    fanout_duration,
                    max(sizes),
                    fanout_rounds,
                    log,
                )
                fanout += rows
                transfer.append(sent)
            result["fanout"] = fanout
            result["transfer"] = transfer
            result["fanout_us_per_subscriber"] = {
                transport: _slope(
                    [
                        (r["subscribers"], r["cpu_us_per_update"])
                        for r in fanout
                        if r["transport"] == transport
                    ]
                )
                for transport in ("ipc", "tcp+curve")
            }
    finally:
        ctx.destroy(linger=0)
    return result


def snapshot_count(users: int) -> int:
    """Enough snapshots of a lobby of ``users`` for a CPU figure well above /proc's
    10 ms clock tick."""
    return max(20, 2_000_000 // max(1, users))


def _started(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    extra: Sequence[str] = (),
    keys: Keys | None = None,
    workers: Sequence[str] = (W1, W2),
) -> Driver:
    """A fresh coordinator with ``workers`` registered and one subscriber each."""
    workdir.mkdir(mode=0o700)
    driver = Driver(CoordinatorProcess(workdir, extra, keys), ctx)
    try:
        for worker in workers:
            driver.add_worker(worker)
        for _ in workers:
            driver.add_sub()
    except BaseException:
        driver.close()
        raise
    return driver


def _memory_run(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    sizes: Sequence[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """RSS of a fresh coordinator (default settings, two workers) as sessions join: a
    process of its own, so nothing else it did (snapshots, churn) weighs on the figure."""
    log("  coordinator process: memory")
    driver = _started(ctx, workdir)
    coordinator = driver.coordinator
    try:
        rss = [{"sessions": 0, "rss_mib": coordinator.rss() / 2**20}]
        users = 0
        for size in sizes:
            driver.run(driver.joins(size - users), rate=None, duration=None, window=10_000)
            users = size
            rss.append({"sessions": size, "rss_mib": coordinator.rss() / 2**20})
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    base, top = rss[0], rss[-1]
    return {
        "rss": rss,
        "kib_per_session": 1024 * (top["rss_mib"] - base["rss_mib"]) / top["sessions"],
    }


def _main_runs(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    sizes: Sequence[int],
    rate: float,
    duration: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The coordinator with its default settings, two workers, two subscribers."""
    driver = _started(ctx, workdir)
    coordinator = driver.coordinator
    try:
        idle = driver.idle(IDLE_SECONDS)
        fixed: list[dict[str, Any]] = []
        snapshots: list[dict[str, Any]] = []
        users = 0
        for size in sizes:
            log(f"  coordinator process: {size:,} users")
            driver.run(driver.joins(size - users), rate=None, duration=None, window=10_000)
            users = size
            stats = driver.run(driver.churn(W1), rate=rate, duration=duration, window=10_000)
            fixed.append(stats.as_dict(users=size, load="join/leave", offered=rate))
            stats = driver.run(driver.routes(), rate=rate, duration=duration, window=10_000)
            fixed.append(stats.as_dict(users=size, load="direct messages", offered=rate))
            snap = driver.snapshots(snapshot_count(size))
            snapshots.append({"users": size, **snap})
        log(f"  coordinator process: saturation at {users:,} users")
        window = max(1, min(10_000, users // 4))
        saturation = [
            driver.run(driver.churn(W1), rate=None, duration=duration, window=window).as_dict(
                users=users, load="join/leave", window=window
            ),
            driver.run(driver.routes(), rate=None, duration=duration, window=10_000).as_dict(
                users=users, load="direct messages", window=10_000
            ),
        ]
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    return {
        "idle_cpu_pct": idle["cpu_pct"],
        "fixed_rate": fixed,
        "snapshot": snapshots,
        "saturation": saturation,
    }


def _fanout_runs(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    transport: str,
    subscribers: Sequence[int],
    rate: float,
    duration: float,
    users: int,
    rounds: int,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A coordinator that publishes every event as its own update (batch window 0), at
    ``rate`` events/s, with 1, 2, 4 ... subscribers: the cost of each copy of an update.
    Then the cost of bytes to one worker over ``transport``: snapshots of ``users``."""
    keys = None
    if transport != "ipc":
        (workdir.parent / "keys").mkdir(mode=0o700)
        keys = Keys.make(workdir.parent / "keys")
    driver = _started(ctx, workdir, ["--batch-window", "0"], keys, workers=[W1])
    coordinator = driver.coordinator
    runs: dict[int, list[dict[str, float]]] = {count: [] for count in subscribers}
    try:
        driver.run(driver.joins(1000), rate=None, duration=None, window=1000)
        log(f"  PUB fan-out over {transport}: {rounds} x {list(subscribers)} subscribers")
        for _ in range(rounds):  # interleaved, so a noisy moment does not hit one count
            for count in subscribers:
                driver.set_subscribers(count)
                before = driver.updates[0]
                sizes_before = len(driver.update_bytes)
                stats = driver.run(driver.churn(W1), rate=rate, duration=duration, window=10_000)
                updates = max(1, driver.updates[0] - before)
                frames = driver.update_bytes[sizes_before:]
                runs[count].append(
                    {
                        "updates_per_s": updates / stats.wall_s,
                        "update_bytes_mean": statistics.mean(frames) if frames else 0.0,
                        "cpu_pct": 100 * stats.cpu_s / stats.wall_s,
                        "cpu_us_per_update": 1e6 * stats.cpu_s / updates,
                        "main_us_per_update": 1e6 * stats.main_cpu_s / updates,
                        "others_cpu_pct": stats.as_dict()["others_cpu_pct"],
                    }
                )
        log(f"  snapshots of {users:,} users over {transport}")
        driver.set_subscribers(0)  # the lobby fills without 4 copies of every join
        driver.run(driver.joins(max(0, users - 1000)), rate=None, duration=None, window=10_000)
        snap = driver.snapshots(snapshot_count(users), worker=W1)
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    rows = [
        {
            "transport": transport,
            "subscribers": count,
            "runs": len(samples),
            **{name: statistics.median(r[name] for r in samples) for name in samples[0]},
            "cpu_us_per_update_all": [r["cpu_us_per_update"] for r in samples],
        }
        for count, samples in runs.items()
    ]
    per_kib = 1000 * snap["cpu_ms_per_snapshot"] / (snap["bytes"] / 1024)
    return rows, {"transport": transport, "users": users, **snap, "us_per_kib": per_kib}


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0
