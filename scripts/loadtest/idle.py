"""The ``idle`` scenario: server memory per held connection, and whether it stays flat.

Clients speak protocol 1, or with ``--protocol 2`` follow the whole lobby, a watchlist
of ``--watch K`` of the others (the shape of a large lobby: each user follows its
contacts), or ``--count`` only. Watch clients connect following an empty watchlist and
then each follows its K keys, so nobody receives the whole lobby's join on the way.
Every view is checked against the truth before and after the hold: a watch client's
holds exactly its watched keys online, a count follower's number is N.
"""

from __future__ import annotations

import time

from scripts.loadtest.scenarios import (
    Context,
    Result,
    check_errors,
    close_all,
    connect,
    counters,
    settle,
)
from scripts.procfs import total_rss_bytes as rss_bytes


def idle(ctx: Context, n: int, hold: float, watch: int = 0, count: bool = False) -> Result:
    """Hold N authenticated connections for ``hold`` seconds; server RSS per connection
    (all server processes, from /proc) and whether it stays flat while idle."""
    params = {"clients": n, "hold": hold, "watch": watch, "count": count}
    result = Result("idle", params)
    indices = range(n)
    if watch:
        ctx.pool.call("prepare_watch", lambda a: {"indices": ctx.share(indices)(a)})
    elif count:
        share, spec = ctx.share(indices), {"scope": "count"}
        ctx.pool.call("set_follows", lambda a: {"follows": {i: spec for i in share(a)}})
    pids = ctx.server.pids()
    rss0 = rss_bytes(pids)
    connect(ctx, indices, "connecting", watch=False)
    if watch:
        ctx.pool.call("follow_watch", {"universe": list(indices), "size": watch}, timeout=300.0)
    check(ctx, result, n, count)
    rss1 = rss_bytes(ctx.server.pids())
    samples = [rss1]
    end = time.monotonic() + hold
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        samples.append(rss_bytes(ctx.server.pids()))
    check(ctx, result, n, count)
    check_errors(result, counters(ctx))
    m = result.metrics
    m["server_processes"] = len(pids)
    m["rss_before_mib"] = round(rss0 / 2**20, 1)
    m["rss_connected_mib"] = round(rss1 / 2**20, 1)
    m["rss_end_mib"] = round(samples[-1] / 2**20, 1)
    m["kib_per_connection"] = round((rss1 - rss0) / max(n, 1) / 1024, 2)
    m["rss_growth_while_idle_pct"] = round((samples[-1] - rss1) / max(rss1, 1) * 100, 2)
    if samples[-1] > rss1 * 1.10:
        result.failures.append(f"server memory grew {m['rss_growth_while_idle_pct']}% while idle")
    close_all(ctx)
    return result


def check(ctx: Context, result: Result, n: int, count: bool) -> None:
    """Every view equals the truth: N online (watch clients: their keys of them), or
    count followers holding the number N."""
    if not count:
        settle(ctx, result, range(n))
        return
    parts = ctx.pool.call(
        "wait_counts",
        {"online": n, "timeout": ctx.settle_timeout},
        timeout=ctx.settle_timeout + 60,
    )
    wrong = sum(p["wrong"] for p in parts)
    checked = sum(p["checked"] for p in parts)
    if wrong or checked != n:
        examples = [e for p in parts for e in p["examples"]][:5]
        result.failures.append(
            f"{wrong} of {checked} count followers (of {n}) did not hold {n}: {examples}"
        )
