"""The scenarios: each drives the generator processes through its phases, measures,
checks correctness, and returns a :class:`Result`.

Correctness is checked while loading, and a failed check fails the run: every
client's ``errors`` (sequence gaps, duplicates, inconsistent updates) must stay empty,
every settled view must equal the true online set (the union of the clients the
generators hold open), no client may be closed by the server unless the scenario
caused it, and every change or message caused must be seen exactly as often as
expected. Latencies and "every watcher saw every change" are measured on a sample of
the watchers; every client's updates and view are still checked (see
:mod:`scripts.loadtest.client`, "Sampled checking").
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scripts.loadtest.causes import mid_run as mid_run_cause
from scripts.loadtest.pool import AgentPool, LoadTestError, Progress
from scripts.loadtest.stats import Histogram
from scripts.loadtest.target import Server
from scripts.procfs import alive, peers_by_process
from scripts.procfs import total_cpu_seconds as cpu_seconds

START_DELAY = 0.5
"""Seconds between sending a timed op and its start, so every process starts together."""


@dataclass
class Result:
    """One scenario's outcome: ``metrics`` (name -> value), ``failures`` (empty = pass)."""

    scenario: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    causes: dict[str, int] = field(default_factory=dict)
    """Failed connection attempts by cause (:mod:`scripts.loadtest.causes`)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "params": self.params,
            "metrics": self.metrics,
            "failures": self.failures,
            "notes": self.notes,
            "connect": {"causes": self.causes},
            "ok": self.ok,
        }


@dataclass
class Context:
    """What every scenario needs: the generators, the server, and shared options."""

    pool: AgentPool
    server: Server
    concurrency: int = 100
    settle_timeout: float = 30.0
    quiet: bool = False
    attempts: int = 40
    """Connection attempts per client (1013, timeouts, resets) before the run fails."""
    window: tuple[float, float] | None = None
    causes: Counter[str] = field(default_factory=Counter)
    """Every failed connection attempt of the run, by cause."""
    closed_mid_run: dict[str, int] = field(default_factory=dict)
    """The clients closed mid-run by cause, as the last settle found them."""

    def all_causes(self) -> dict[str, int]:
        """The failed attempts and the clients closed mid-run, by cause."""
        return dict(self.causes + Counter(self.closed_mid_run))

    """(start, end), this machine's clock, of the load a scenario measures, once known."""

    def share(self, indices: Sequence[int]) -> Callable[[int], list[int]]:
        """Agent ``a`` gets every ``procs``-th index starting at ``a``."""
        procs = self.pool.size
        return lambda a: list(indices[a::procs])

    def progress(self, label: str, total: int) -> Progress | None:
        return None if self.quiet else Progress(label, total)

    def server_cpu(self) -> float:
        return cpu_seconds(self.server.pids())

    def generator_cpu(self) -> float:
        return cpu_seconds(self.pool.pids())


# --------------------------------------------------------------------------- shared phases


def _merge_connect(parts: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    firsts = [p["first_ok"] for p in parts if p["first_ok"]]
    return {
        "ok": sum(p["ok"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
        "retried_1013": sum(p["retried_1013"] for p in parts),
        "retried_other": sum(p["retried_other"] for p in parts),
        "reasons": reasons,
        "duration": Histogram.merged(Histogram.from_dict(p["duration"]) for p in parts),
        "first_ok": min(firsts, default=0.0),
        "last_ok": max((p["last_ok"] for p in parts), default=0.0),
    }


def connect(
    ctx: Context,
    indices: Sequence[int],
    label: str,
    *,
    watch: bool = True,
    target_online: int | None = None,
    start_at: float = 0.0,
    extra: dict[str, Any] | None = None,
    result: Result | None = None,
) -> dict[str, Any]:
    """Connect ``indices`` spread over the generators (``extra``: more arguments of the
    agents' ``connect``); fails the run if any could not (with ``result``: fails it and
    goes on). Every failed attempt is counted by cause in ``ctx.causes``."""
    stats = _merge_connect(
        ctx.pool.call(
            "connect",
            lambda a: {
                "indices": ctx.share(indices)(a),
                "watch": watch,
                "start_at": start_at,
                "target_online": target_online,
                "concurrency": ctx.concurrency,
                "attempts": ctx.attempts,
                **(extra or {}),
            },
            progress=ctx.progress(label, len(indices)),
            timeout=120.0 + len(indices) / 20,
        )
    )
    ctx.causes.update(stats["reasons"])
    if stats["failed"] and result is not None:
        result.failures.append(
            f"{stats['failed']} of {len(indices)} clients could not connect: {stats['reasons']}"
        )
    elif stats["failed"]:
        raise LoadTestError(
            f"{stats['failed']} of {len(indices)} clients could not connect: {stats['reasons']}"
        )
    return stats


def counters(ctx: Context) -> dict[str, Any]:
    """Totals over every generator: frames, bytes, errors, latencies, convergence."""
    parts = ctx.pool.call("counters")
    out: dict[str, Any] = {
        k: sum(p[k] for p in parts)
        for k in (
            "updates",
            "update_bytes",
            "changes",
            "frames",
            "frame_bytes",
            "snapshots",
            "error_count",
            "observed",
            "changes_seen",
            "updates_seen",
            "watchers",
            "measuring",
            "sampled",
            "deferred",
            "converged",
            "clients",
        )
    }
    out["errors"] = [e for p in parts for e in p["errors"]][:10]
    out["latency"] = Histogram.merged(Histogram.from_dict(p["latency"]) for p in parts)
    out["converged_last"] = max(p["converged_last"] for p in parts)
    return out


def settle(ctx: Context, result: Result, truth: Sequence[int] | None = None) -> list[int]:
    """Check every open client's view becomes exactly the true online set (``truth``,
    default: the union of open clients) and nothing closed by itself; records failures."""
    if truth is None:
        truth = sorted(i for part in ctx.pool.call("online") for i in part)
    parts = ctx.pool.call(
        "wait_views",
        {"truth": list(truth), "timeout": ctx.settle_timeout},
        timeout=ctx.settle_timeout + 60,
    )
    wrong = sum(p["wrong"] for p in parts)
    closes = sum(p["unexpected_closes"] for p in parts)
    if wrong:
        examples = [e for p in parts for e in p["examples"]][:5]
        result.failures.append(
            f"{wrong} of {sum(p['checked'] for p in parts)} views did not settle to the "
            f"{len(truth)} online keys within {ctx.settle_timeout:.0f}s: {examples}"
        )
    mid_run: Counter[str] = Counter()
    for p in parts:
        for code, count in p["close_codes"].items():
            mid_run[mid_run_cause(code)] += count
    ctx.closed_mid_run = dict(mid_run)
    if closes:
        codes = [p["close_codes"] for p in parts]
        result.failures.append(f"{closes} clients were closed by the server: {codes}")
    return list(truth)


def check_errors(result: Result, totals: dict[str, Any]) -> None:
    """Every protocol violation any client recorded fails the run."""
    if totals["error_count"]:
        result.failures.append(
            f"{totals['error_count']} protocol violations seen by clients: {totals['errors'][:5]}"
        )


def _latency_metrics(result: Result, name: str, hist: Histogram) -> None:
    s = hist.summary_ms()
    for p in ("p50", "p95", "p99", "max"):
        result.metrics[f"{name}_{p}_ms"] = s[f"{p}_ms"]
    result.metrics[f"{name}_samples"] = hist.count


def _per_change(m: dict[str, Any], cpu: float, changes: int) -> None:
    """Server CPU per delivered change: a change (a key joined, left or updated in an
    update) counts once per client that received it; snapshots are not changes."""
    m["changes_delivered"] = changes
    m["server_cpu_us_per_change"] = round(cpu / max(changes, 1) * 1e6, 3)


def close_all(ctx: Context) -> None:
    ctx.pool.call("close_all", timeout=120.0)


# --------------------------------------------------------------------------- scenarios


def mass_join(ctx: Context, n: int) -> Result:
    """N clients authenticate as fast as the server admits them (``concurrency`` per
    generator in flight). Convergence: from the start until every client's view holds
    all N. Join-to-seen: from a joiner's ``auth`` frame to another client's update
    showing it (pairs within one generator process)."""
    result = Result("mass-join", {"clients": n})
    cpu0, gen0 = ctx.server_cpu(), ctx.generator_cpu()
    start = time.time() + START_DELAY
    stats = connect(ctx, range(n), "authenticating", target_online=n, start_at=start, result=result)
    totals = counters(ctx)
    if totals["converged"] < n:
        settle(ctx, result, range(n))
        totals = counters(ctx)
    settle(ctx, result, range(n))
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    check_errors(result, totals)
    auth_time = max(stats["last_ok"] - start, 1e-9)
    m = result.metrics
    m["auth_per_s"] = round(stats["ok"] / auth_time, 1)
    m["auth_time_s"] = round(auth_time, 3)
    m["convergence_s"] = round(max(totals["converged_last"] - start, 0.0), 3)
    _latency_metrics(result, "join_to_seen", totals["latency"])
    m["update_frames"] = totals["updates"]
    m["update_bytes"] = totals["update_bytes"]
    m["frame_bytes_per_client"] = round(totals["frame_bytes"] / max(stats["ok"], 1))
    m["retried_1013"] = stats["retried_1013"]
    m["retried_other"] = stats["retried_other"]
    m["server_cpu_s"] = round(cpu1 - cpu0, 2)
    m["generator_cpu_s"] = round(gen1 - gen0, 2)
    _per_change(m, cpu1 - cpu0, totals["changes"])
    close_all(ctx)
    result.causes = ctx.all_causes()
    return result


def churn(
    ctx: Context,
    watchers: int,
    rate: float,
    duration: float,
    cooldown: float = 3.0,
    watch: int = 0,
) -> Result:
    """W watchers stay; a pool of other keys joins, leaves, drops without a close frame
    and reconnects, ``rate`` changes a second for ``duration`` seconds. The pool is
    sized so each key rests ``cooldown`` seconds between its changes. ``watch``
    (version 2): each watcher follows a watchlist of that many keys of the pool, and
    sees, and is checked against, only those."""
    procs = ctx.pool.size
    result = Result("churn", {"watchers": watchers, "rate": rate, "duration": duration})
    per_agent = max(8, math.ceil(rate / procs * cooldown * 2.5), watch)
    pool_indices = range(watchers, watchers + per_agent * procs)
    if watch:
        result.params["watch"] = watch
    connect(
        ctx,
        range(watchers),
        "watchers",
        target_online=None,
        extra={"watch_keys": watch, "watch_from": list(pool_indices)},
    )
    settle(ctx, result, range(watchers))
    ctx.pool.call("reset")
    before = counters(ctx)
    cpu0, gen0 = ctx.server_cpu(), ctx.generator_cpu()
    start = time.time() + START_DELAY
    parts = ctx.pool.call(
        "churn",
        lambda a: {
            "pool": ctx.share(pool_indices)(a),
            "rate": rate / procs,
            "duration": duration,
            "start_at": start,
            "cooldown": cooldown,
            "seed": a,
        },
        progress=ctx.progress("churning", int(rate / procs) * procs * int(duration)),
        timeout=duration + 120,
    )
    elapsed = time.time() - start
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    ctx.window = (start, start + elapsed)
    during = counters(ctx)  # unsampled clients apply what they noted: after the window
    gen2 = ctx.generator_cpu()
    settle(ctx, result)
    after = counters(ctx)
    check_errors(result, after)
    actions = sum(sum(p["actions"].values()) for p in parts)
    expected = sum(p["expected"] for p in parts)
    frames = during["updates"] - before["updates"]
    joins = sum(p["actions"].get("join", 0) + p["actions"].get("reconnect", 0) for p in parts)
    extra_snapshots = after["snapshots"] - before["snapshots"] - joins  # joins get one each
    if after["observed"] < expected:
        missing = (
            f"watchers saw {after['observed']} of the {expected} changes they should have seen"
        )
        if extra_snapshots > 0:  # the protocol's slow-consumer rule: updates replaced
            result.notes.append(f"{missing}; {extra_snapshots} snapshots replaced the rest")
        else:
            result.failures.append(missing)
    failures: dict[str, int] = {}
    for p in parts:
        for k, v in p["failures"].items():
            failures[k] = failures.get(k, 0) + v
    # The rate made: changes over the time it took to start them (on schedule, that is
    # ``duration``), not counting the wait for the last ones to complete.
    issued = max(p["issued_last"] for p in parts) - start + procs / rate
    m = result.metrics
    m["changes"] = actions
    m["changes_per_s"] = round(actions / max(issued, 1e-9), 1)
    _latency_metrics(result, "update_latency", after["latency"])
    m["frames_delivered"] = frames
    # Everything every client received (the changing ones' handshakes included), per
    # change and watcher: what one watcher costs the network per change, roughly.
    received = during["frame_bytes"] - before["frame_bytes"]
    m["bytes_received"] = received
    m["bytes_per_change_per_watcher"] = round(received / max(actions * watchers, 1), 1)
    m["frames_per_s"] = round(frames / max(elapsed, 1e-9), 1)
    m["changes_per_update"] = round(after["changes_seen"] / max(after["updates_seen"], 1), 2)
    m["server_cpu_s"] = round(cpu1 - cpu0, 2)
    m["server_cpu_s_per_1000_frames"] = round((cpu1 - cpu0) / max(frames, 1) * 1000, 4)
    m["update_bytes"] = during["update_bytes"] - before["update_bytes"]
    _per_change(m, cpu1 - cpu0, during["changes"] - before["changes"])
    m["generator_cpu_s"] = round(gen1 - gen0, 2)
    m["generator_cpu_us_per_frame"] = round((gen1 - gen0) / max(frames, 1) * 1e6, 2)
    m["latency_watchers"] = sum(p["measuring"] for p in parts)
    m["updates_applied_later"] = during["deferred"] - before["deferred"]
    m["generator_catch_up_cpu_s"] = round(gen2 - gen1, 2)
    m["snapshots_resent"] = extra_snapshots
    lag = Histogram.merged(Histogram.from_dict(p["schedule_lag"]) for p in parts)
    m["schedule_lag_p99_ms"] = lag.summary_ms()["p99_ms"]
    if failures:
        result.notes.append(f"changes not made: {failures}")
    if m["changes_per_s"] < 0.95 * rate:
        result.notes.append(
            f"asked for {rate:g} changes/s, made {m['changes_per_s']:g}/s: the generator "
            f"fell behind (schedule lag p99 {m['schedule_lag_p99_ms']:,.0f} ms) or ran out "
            "of keys whose last change every watcher had seen"
        )
    close_all(ctx)
    return result


def reconnect_storm(ctx: Context, n: int) -> Result:
    """N connected clients all drop at once (no close frame) and reconnect with the
    same keys, retrying 1013 with jittered backoff. Whole again: from the drop until
    every client is back with a snapshot and its view holds all N."""
    result = Result("reconnect-storm", {"clients": n})
    connect(ctx, range(n), "connecting", target_online=n)
    settle(ctx, result, range(n))
    pids = ctx.server.pids()
    start = time.time() + START_DELAY
    before = counters(ctx)
    cpu0, gen0 = ctx.server_cpu(), ctx.generator_cpu()
    parts = ctx.pool.call(
        "storm",
        {"start_at": start, "target_online": n, "concurrency": ctx.concurrency},
        progress=ctx.progress("reconnecting", n),
        timeout=180.0 + n / 20,
    )
    stats = _merge_connect(parts)
    ctx.causes.update(stats["reasons"])
    totals = counters(ctx)
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    settle(ctx, result, range(n))
    check_errors(result, counters(ctx))
    if stats["failed"]:
        result.failures.append(f"{stats['failed']} clients never got back in: {stats['reasons']}")
    dead = [p for p in pids if not alive(p)]
    if dead or sorted(ctx.server.pids()) != sorted(pids):
        result.failures.append(f"server processes changed during the storm (gone: {dead})")
    m = result.metrics
    whole = max(totals["converged_last"], stats["last_ok"]) - start
    m["whole_again_s"] = round(whole, 3) if totals["converged"] >= n else None
    m["reconnected"] = stats["ok"]
    # What recovering cost the clients: resumed views (version 2) against snapshots.
    m["resumed"] = sum(p["resumed"] for p in parts)
    m["recovery_snapshots"] = totals["snapshots"] - before["snapshots"]
    m["recovery_bytes"] = totals["frame_bytes"] - before["frame_bytes"]
    m["recovery_bytes_per_client"] = round(m["recovery_bytes"] / max(stats["ok"], 1))
    m["retried_1013"] = stats["retried_1013"]
    m["retried_other"] = stats["retried_other"]
    m["failed"] = stats["failed"]
    # Who had the CPUs during the storm: the server, or the clients it serves.
    m["server_cpu_s"] = round(cpu1 - cpu0, 2)
    m["generator_cpu_s"] = round(gen1 - gen0, 2)
    m["update_frames"] = totals["updates"] - before["updates"]
    m["update_bytes"] = totals["update_bytes"] - before["update_bytes"]
    _per_change(m, cpu1 - cpu0, totals["changes"] - before["changes"])
    if totals["converged"] < n:
        result.failures.append(f"only {totals['converged']} of {n} views became whole")
    close_all(ctx)
    result.causes = ctx.all_causes()
    return result


def _pair(
    clients: dict[int, tuple[str, int]], peers: dict[tuple[str, int], int], want: int
) -> list[tuple[int, int]]:
    """Up to ``want`` pairs of clients, each pair held by two different workers when
    ``peers`` (client address -> worker pid) allows, else any two."""
    by_worker: dict[int, list[int]] = {}
    for index, address in clients.items():
        by_worker.setdefault(peers.get(address, -1), []).append(index)
    groups = sorted(by_worker.values(), key=len, reverse=True)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < want and len(groups) >= 2 and groups[1]:
        pairs.append((groups[0].pop(), groups[1].pop()))
        groups.sort(key=len, reverse=True)
    rest = [i for g in groups for i in g]
    while len(pairs) < want and len(rest) >= 2:
        pairs.append((rest.pop(), rest.pop()))
    return pairs


def messages(
    ctx: Context,
    pairs: int,
    duration: float,
    rate: float,
    window: int,
    body_bytes: int,
    *,
    answer_timeout: float = 10.0,
) -> Result:
    """Pairs of clients, on different workers where the server's processes are known,
    message each other for ``duration`` seconds, ``rate`` a second per direction with
    at most ``window`` unanswered. Round trip: send to ``send_result``; delivery: send to the peer's
    ``message``. Every message must arrive exactly once and be ``delivered``; a send
    unanswered, or a delivered message not arrived, after ``answer_timeout`` seconds
    (10: far past any server's deadline) counts as lost."""
    procs = ctx.pool.size
    result = Result(
        "messages",
        {
            "pairs": pairs,
            "duration": duration,
            "rate": rate,
            "window": window,
            "body_bytes": body_bytes,
        },
    )
    per_agent = math.ceil(pairs / procs)
    # Spare clients, so that enough of each generator's land on each worker.
    total = (per_agent * 2 + max(per_agent, 8)) * procs
    connect(ctx, range(total), "connecting", watch=False)
    addresses: list[dict[int, tuple[str, int]]] = ctx.pool.call("addresses")
    workers = ctx.server.worker_pids()
    peers = peers_by_process(workers) if len(workers) > 1 else {}
    plan = [_pair(a, peers, per_agent) for a in addresses]
    where = {i: peers.get(address) for part in addresses for i, address in part.items()}
    cross = sum(
        1 for part in plan for a, b in part if where[a] is not None and where[a] != where[b]
    )
    start = time.time() + START_DELAY
    cpu0, gen0 = ctx.server_cpu(), ctx.generator_cpu()
    parts = ctx.pool.call(
        "messages",
        lambda a: {
            "pairs": plan[a],
            "duration": duration,
            "start_at": start,
            "rate": rate,
            "window": window,
            "body_bytes": body_bytes,
            "drain": answer_timeout,
        },
        progress=ctx.progress("messaging", int(duration * rate) * 2 * pairs),
        timeout=duration + 60,
    )
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    sent = sum(p["sent"] for p in parts)
    received = sum(p["received"] for p in parts)
    lost = sum(p["lost"] for p in parts)
    status: dict[str, int] = {}
    problems: dict[str, int] = {}
    for p in parts:
        for k, v in p["status"].items():
            status[k] = status.get(k, 0) + v
        for k, v in p["problems"].items():
            problems[k] = problems.get(k, 0) + v
    if lost or problems or set(status) - {"delivered"} or received != sent:
        result.failures.append(
            f"messages: sent {sent}, received {received}, lost {lost}, "
            f"statuses {status}, problems {problems}"
        )
    check_errors(result, counters(ctx))
    m = result.metrics
    m["pairs"] = sum(len(p) for p in plan)
    m["cross_worker_pairs"] = cross
    m["messages"] = received
    # Over the time the answers actually took, not the nominal duration: a server that
    # falls behind the schedule must show a lower rate.
    span = max([duration, *(p.get("span", 0.0) for p in parts)])
    m["messages_per_s"] = round(received / span, 1)
    # What one message costs the server, all processes together (the sender's worker,
    # the coordinator, the recipient's worker); the generator's for comparison.
    m["server_cpu_s"] = round(cpu1 - cpu0, 2)
    m["server_cpu_us_per_message"] = round((cpu1 - cpu0) / max(received, 1) * 1e6, 1)
    m["generator_cpu_s"] = round(gen1 - gen0, 2)
    _latency_metrics(
        result, "round_trip", Histogram.merged(Histogram.from_dict(p["rtt"]) for p in parts)
    )
    _latency_metrics(
        result, "delivery", Histogram.merged(Histogram.from_dict(p["delivery"]) for p in parts)
    )
    if not peers:
        result.notes.append("server processes unknown or one worker: pairs not placed")
    close_all(ctx)
    return result


def fanout(
    ctx: Context, watchers: int, changes: int, rate: float, frame_bytes: int, bare: bool
) -> Result:
    """Server CPU per delivered lobby frame. Against the lobby: W watchers and
    ``changes`` churn changes at ``rate``. Against the bare server: W plain
    connections and ``changes`` broadcasts of a ``frame_bytes`` frame at ``rate``."""
    result = Result(
        "fanout", {"watchers": watchers, "changes": changes, "rate": rate, "bare": bare}
    )
    if bare:
        _fanout_bare(ctx, result, watchers, changes, rate, frame_bytes)
    else:
        sub = churn(ctx, watchers, rate, changes / rate)
        result.failures += sub.failures
        result.metrics.update(
            {
                k: v
                for k, v in sub.metrics.items()
                if k.startswith(("frames", "server_cpu", "changes"))
            }
        )
        frames = sub.metrics["frames_delivered"]
        result.metrics["frame_bytes_mean"] = round(counters(ctx)["update_bytes"] / max(frames, 1))
    frames = result.metrics["frames_delivered"]
    result.metrics["cpu_us_per_frame"] = round(
        result.metrics["server_cpu_s"] / max(frames, 1) * 1e6, 3
    )
    return result


def _fanout_bare(
    ctx: Context, result: Result, watchers: int, changes: int, rate: float, frame_bytes: int
) -> None:
    import asyncio

    from websockets.asyncio.client import connect as ws_connect

    url = ctx.server.url
    ok = sum(
        p["ok"]
        for p in ctx.pool.call(
            "raw_connect",
            lambda a: {"url": url, "count": len(ctx.share(range(watchers))(a))},
            progress=ctx.progress("connecting", watchers),
        )
    )
    if ok != watchers:
        raise LoadTestError(f"only {ok} of {watchers} bare connections opened")
    before = sum(ctx.pool.call("raw_count"))
    cpu0 = ctx.server_cpu()

    async def push() -> str:
        control = url.rsplit("/", 1)[0] + "/control"
        async with ws_connect(control, ping_interval=None) as ws:
            await ws.send(f"push {changes} {rate} {frame_bytes}")
            return str(await asyncio.wait_for(ws.recv(), changes / rate + 60))

    answer = asyncio.run(push())
    expected = changes * watchers
    deadline = time.monotonic() + 30
    delivered = 0
    while time.monotonic() < deadline:
        delivered = sum(ctx.pool.call("raw_count")) - before
        if delivered >= expected:
            break
        time.sleep(0.1)
    cpu1 = ctx.server_cpu()
    if answer != f"done {changes}" or delivered != expected:
        result.failures.append(f"bare server answered {answer!r}, {delivered}/{expected} frames")
    result.metrics["frames_delivered"] = delivered
    result.metrics["server_cpu_s"] = round(cpu1 - cpu0, 3)
    result.metrics["frame_bytes_mean"] = frame_bytes
    ctx.pool.call("raw_close")
