"""The scenarios of what version 2 clients follow: watchlists against the whole lobby,
and status changes against joins and leaves (:func:`watchlists`, :func:`status_churn`).

Each runs its two loads back to back on the same clients of one server, so a noisy
machine cannot fake the comparison, and checks what every scenario checks (no gap in
any client's ``prev`` chain, views equal to the truth, no unexpected close), plus the
records: every sampled view shows the last status each user set, and every status
change reaches every sampled watcher that follows its key (see
:mod:`scripts.loadtest.records`). A status change the server refuses (``rate_limited``)
fails the run: the generator keeps within the server's record rate.
"""

from __future__ import annotations

import math
import time
from typing import Any

from scripts.loadtest.scenarios import (
    START_DELAY,
    Context,
    Result,
    check_errors,
    close_all,
    connect,
    counters,
    settle,
)
from scripts.loadtest.stats import Histogram


def _merged(parts: list[dict[str, Any]], key: str) -> Histogram:
    return Histogram.merged(Histogram.from_dict(p[key]) for p in parts)


def _status_counts(ctx: Context) -> dict[str, Any]:
    parts = ctx.pool.call("status_counts")
    codes: dict[str, int] = {}
    for p in parts:
        for k, v in p["error_codes"].items():
            codes[k] = codes.get(k, 0) + v
    tally = {
        g: [sum(p["tally"][g][n] for p in parts) for n in range(3)] for g in ("lobby", "watch")
    }
    latency = {
        g: Histogram.merged(
            Histogram.from_dict(p["latency"][g]) for p in parts if g in p["latency"]
        )
        for g in ("lobby", "watch")
    }
    return {
        "seen": sum(p["seen"] for p in parts),
        "codes": codes,
        "tally": tally,
        "latency": latency,
    }


def _check_records(ctx: Context, result: Result, truth: dict[int, str], label: str) -> None:
    parts = ctx.pool.call(
        "wait_records",
        {"truth": truth, "timeout": ctx.settle_timeout},
        timeout=ctx.settle_timeout + 60,
    )
    wrong = sum(p["wrong"] for p in parts)
    if wrong:
        examples = [e for p in parts for e in p["examples"]][:5]
        result.failures.append(
            f"{label}: {wrong} of {sum(p['checked'] for p in parts)} sampled views "
            f"did not show the last statuses within {ctx.settle_timeout:.0f}s: {examples}"
        )


def status_phase(
    ctx: Context, result: Result, prefix: str, rate: float, duration: float, truth: dict[int, str]
) -> None:
    """``rate`` status changes a second for ``duration`` seconds, measured into
    ``result.metrics`` under ``prefix``; ``truth`` gets each client's last status."""
    procs = ctx.pool.size
    ctx.pool.call("reset")
    before, snaps0 = _status_counts(ctx), counters(ctx)["snapshots"]
    cpu0, gen0, began = ctx.server_cpu(), ctx.generator_cpu(), time.monotonic()
    start = time.time() + START_DELAY
    parts = ctx.pool.call(
        "status_churn",
        lambda a: {"rate": rate / procs, "duration": duration, "start_at": start, "seed": a},
        progress=ctx.progress(f"{prefix} status changes", int(rate / procs * duration) * procs),
        timeout=duration + 120,
    )
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    wall = time.monotonic() - began
    for p in parts:
        truth.update(p["statuses"])
    settle(ctx, result)
    _check_records(ctx, result, truth, prefix)
    after, snaps1 = _status_counts(ctx), counters(ctx)["snapshots"]
    changes = sum(p["changes"] for p in parts)
    expected = sum(p["expected"] for p in parts)
    refused = after["codes"].get("rate_limited", 0) - before["codes"].get("rate_limited", 0)
    if refused:
        result.failures.append(f"{prefix}: the server refused {refused} status changes")
    other = {k: v for k, v in after["codes"].items() if k != "rate_limited"}
    if other:
        result.failures.append(f"{prefix}: error frames {other}")
    if after["seen"] < expected:
        missing = f"{prefix}: sampled watchers saw {after['seen']} of {expected} status changes"
        if snaps1 > snaps0:  # the protocol's slow-consumer rule: updates replaced
            result.notes.append(f"{missing}; {snaps1 - snaps0} snapshots replaced the rest")
        else:
            result.failures.append(missing)
    issued = max(p["issued_last"] for p in parts) - start + procs / rate
    m = result.metrics
    m[f"{prefix}_changes"] = changes
    m[f"{prefix}_changes_per_s"] = round(changes / max(issued, 1e-9), 1)
    m[f"{prefix}_refused"] = refused
    m[f"{prefix}_server_cpu_s"] = round(cpu1 - cpu0, 3)
    m[f"{prefix}_wall_s"] = round(wall, 3)
    m[f"{prefix}_cpu_us_per_change"] = round((cpu1 - cpu0) / max(changes, 1) * 1e6, 1)
    m[f"{prefix}_generator_cpu_s"] = round(gen1 - gen0, 2)
    m[f"{prefix}_snapshots_resent"] = snaps1 - snaps0
    for group in ("lobby", "watch"):
        hist = after["latency"][group]
        if hist.count:
            s = hist.summary_ms()
            m[f"{prefix}_{group}_latency_p50_ms"] = s["p50_ms"]
            m[f"{prefix}_{group}_latency_p99_ms"] = s["p99_ms"]
            m[f"{prefix}_{group}_latency_samples"] = hist.count
        _, f0, b0 = before["tally"][group]
        n1, f1, b1 = after["tally"][group]
        if n1:
            per = max(changes * n1, 1)
            m[f"{prefix}_{group}_watchers"] = n1
            m[f"{prefix}_{group}_frames_per_change_per_watcher"] = round((f1 - f0) / per, 4)
            m[f"{prefix}_{group}_bytes_per_change_per_watcher"] = round((b1 - b0) / per, 2)
    lag = _merged(parts, "schedule_lag").summary_ms()["p99_ms"]
    if m[f"{prefix}_changes_per_s"] < 0.95 * rate:
        result.notes.append(
            f"{prefix}: asked for {rate:g} changes/s, made {m[f'{prefix}_changes_per_s']:g}/s "
            f"(the generator fell behind: schedule lag p99 {lag:,.0f} ms)"
        )


def churn_phase(
    ctx: Context, result: Result, prefix: str, watchers: int, rate: float, duration: float
) -> None:
    """Other users (not the ``watchers`` first clients) join, leave, drop and reconnect
    ``rate`` times a second for ``duration`` seconds (the ``churn`` scenario's load),
    measured into ``result.metrics`` under ``prefix``."""
    procs, cooldown = ctx.pool.size, 3.0
    per_agent = max(8, math.ceil(rate / procs * cooldown * 2.5))
    pool = range(watchers, watchers + per_agent * procs)
    ctx.pool.call("reset")
    before, tally0 = counters(ctx), _status_counts(ctx)["tally"]["lobby"]
    cpu0, gen0 = ctx.server_cpu(), ctx.generator_cpu()
    start = time.time() + START_DELAY
    parts = ctx.pool.call(
        "churn",
        lambda a: {
            "pool": ctx.share(pool)(a),
            "rate": rate / procs,
            "duration": duration,
            "start_at": start,
            "cooldown": cooldown,
            "seed": a,
        },
        progress=ctx.progress(f"{prefix} joins and leaves", int(rate / procs * duration) * procs),
        timeout=duration + 120,
    )
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    tally1 = _status_counts(ctx)["tally"]["lobby"]
    settle(ctx, result)
    after = counters(ctx)
    changes = sum(sum(p["actions"].values()) for p in parts)
    expected = sum(p["expected"] for p in parts)
    joins = sum(p["actions"].get("join", 0) + p["actions"].get("reconnect", 0) for p in parts)
    resent = after["snapshots"] - before["snapshots"] - joins
    if after["observed"] < expected:
        missing = f"{prefix}: watchers saw {after['observed']} of {expected} joins and leaves"
        if resent > 0:
            result.notes.append(f"{missing}; {resent} snapshots replaced the rest")
        else:
            result.failures.append(missing)
    issued = max(p["issued_last"] for p in parts) - start + procs / rate
    m = result.metrics
    m[f"{prefix}_changes"] = changes
    m[f"{prefix}_changes_per_s"] = round(changes / max(issued, 1e-9), 1)
    m[f"{prefix}_server_cpu_s"] = round(cpu1 - cpu0, 2)
    m[f"{prefix}_cpu_us_per_change"] = round((cpu1 - cpu0) / max(changes, 1) * 1e6, 1)
    m[f"{prefix}_generator_cpu_s"] = round(gen1 - gen0, 2)
    m[f"{prefix}_snapshots_resent"] = max(resent, 0)
    s = after["latency"].summary_ms()
    m[f"{prefix}_lobby_latency_p50_ms"] = s["p50_ms"]
    m[f"{prefix}_lobby_latency_p99_ms"] = s["p99_ms"]
    per = max(changes * tally1[0], 1)
    m[f"{prefix}_lobby_watchers"] = tally1[0]
    m[f"{prefix}_lobby_frames_per_change_per_watcher"] = round((tally1[1] - tally0[1]) / per, 4)
    m[f"{prefix}_lobby_bytes_per_change_per_watcher"] = round((tally1[2] - tally0[2]) / per, 2)
    if m[f"{prefix}_changes_per_s"] < 0.95 * rate:
        result.notes.append(
            f"{prefix}: asked for {rate:g} changes/s, made {m[f'{prefix}_changes_per_s']:g}/s"
        )


def watchlists(
    ctx: Context, clients: int, watch: int, rate: float, duration: float, lobby_watchers: int
) -> Result:
    """N clients, random ones of which change status ``rate`` times a second, in four
    windows of ``duration`` seconds: idle (what holding the connections costs; every
    load's CPU is counted above it); ``none``: the changes with every client following
    an empty watchlist (what a change costs that nobody follows); ``watch``: each
    client follows ``watch`` random keys of the N; ``lobby``: ``lobby_watchers`` of
    them (the sampled first) follow the whole lobby, the others an empty watchlist.

    The whole lobby of N followers, per change, is then estimated as what a change
    costs that nobody follows plus N times what one whole-lobby follower adds (the
    ``lobby`` load's cost over the ``none`` one's, over ``lobby_watchers``): a whole
    lobby of N followers cannot be loaded on one machine with its generator (each
    change goes to every one of them, and each joins with a snapshot of all N)."""
    procs = ctx.pool.size
    result = Result(
        "watchlists",
        {
            "clients": clients,
            "watch": watch,
            "rate": rate,
            "duration": duration,
            "lobby_watchers": lobby_watchers,
            "changes": "status",
        },
    )
    indices = range(clients)
    ctx.pool.call("prepare_watch", lambda a: {"indices": ctx.share(indices)(a)})
    connect(ctx, indices, "connecting", target_online=None)
    settle(ctx, result, indices)
    m = result.metrics
    cpu0, idle_start = ctx.server_cpu(), time.monotonic()
    time.sleep(duration)  # the idle window, measured
    idle = (ctx.server_cpu() - cpu0) / (time.monotonic() - idle_start)
    m["idle_server_cpu_s_per_s"] = round(idle, 3)
    truth: dict[int, str] = {}
    status_phase(ctx, result, "none", rate, duration, truth)
    ctx.pool.call("follow_watch", {"universe": list(indices), "size": watch}, timeout=300.0)
    settle(ctx, result, indices)
    status_phase(ctx, result, "watch", rate, duration, truth)
    share = math.ceil(lobby_watchers / procs)
    moved = ctx.pool.call("follow_lobby", {"count": share}, timeout=300.0)
    ctx.pool.call("follow_watch", {"universe": [], "size": 0}, timeout=300.0)
    settle(ctx, result, indices)
    status_phase(ctx, result, "lobby", rate, duration, truth)
    check_errors(result, counters(ctx))
    lobby = sum(p["lobby"] for p in moved)
    m["lobby_watchers"] = lobby
    above = {
        p: (m[f"{p}_server_cpu_s"] - idle * m[f"{p}_wall_s"]) / max(m[f"{p}_changes"], 1) * 1e6
        for p in ("none", "watch", "lobby")
    }
    for p, value in above.items():
        m[f"{p}_cpu_us_per_change_above_idle"] = round(value, 1)
    per_watcher = (above["lobby"] - above["none"]) / max(lobby, 1)
    m["lobby_cpu_us_per_change_per_watcher"] = round(per_watcher, 3)
    estimate = above["none"] + per_watcher * clients
    m["whole_lobby_cpu_us_per_change_at_n"] = round(estimate, 1)
    m["watch_over_whole_lobby"] = round(above["watch"] / estimate, 4) if estimate > 0 else None
    close_all(ctx)
    return result


def status_churn(ctx: Context, users: int, every: float, duration: float) -> Result:
    """U users follow the whole lobby and each changes its status every ``every``
    seconds (U / ``every`` changes a second) for ``duration`` seconds; then other users
    join and leave at the same rate under the same U watchers (the ``churn`` load). The
    server's CPU per change of each, and their ratio."""
    rate = users / every
    result = Result(
        "status-churn", {"users": users, "every": every, "rate": rate, "duration": duration}
    )
    connect(ctx, range(users), "connecting", target_online=None)
    settle(ctx, result, range(users))
    truth: dict[int, str] = {}
    status_phase(ctx, result, "status", rate, duration, truth)
    churn_phase(ctx, result, "presence", users, rate, duration)
    check_errors(result, counters(ctx))
    m = result.metrics
    presence = m.get("presence_cpu_us_per_change")
    status = m.get("status_cpu_us_per_change")
    ratio = None if not presence or status is None else round(status / presence, 3)
    m["status_over_presence"] = ratio
    close_all(ctx)
    return result
