"""The auth-rate scenario (version 2): what one authentication costs a worker.

``auth-rate N --watch K --lobby M``: N clients authenticate at once, each following a
watchlist of K keys of the N (the scale shape), then they leave and M other clients
authenticate at once following the whole lobby (a modest lobby: each gets a snapshot of
those already in and is in every later joiner's update). For each load the worker's CPU
(the processes holding the connections, from /proc: never the generator's, and the
coordinator's apart) over the connect phase, from the first ``auth`` to the last
``auth_ok``, divided by the auths: µs per auth, and its inverse, auths per second per
worker core (what one core could admit if it did nothing else); and the wall-clock
auths per second, which the generator and the admission window also bound.

Run it with one worker pinned apart from the generator (``--start cluster --workers 1
--server-cpus 0 --client-cpus 1``): then the worker's CPU per auth is what one core
pays, and the figure the ``auth`` set of ``make bench`` reports. Every view is checked
against the truth after each load (no gap, no wrong view, no unexpected close).
"""

from __future__ import annotations

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
from scripts.procfs import total_cpu_seconds as cpu_seconds


def _load(ctx: Context, result: Result, name: str, indices: range, extra: dict[str, Any]) -> None:
    """Connect ``indices`` at once; the worker's and the coordinator's CPU per auth."""
    workers = ctx.server.worker_pids()
    others = [p for p in ctx.server.pids() if p not in workers]
    w0, c0, g0 = cpu_seconds(workers), cpu_seconds(others), ctx.generator_cpu()
    start = time.time() + START_DELAY
    stats = connect(ctx, indices, name, start_at=start, extra=extra, result=result)
    w1, c1, g1 = cpu_seconds(workers), cpu_seconds(others), ctx.generator_cpu()
    settle(ctx, result, indices)
    ok = max(stats["ok"], 1)
    wall = max(stats["last_ok"] - start, 1e-9)
    per_auth = (w1 - w0) / ok * 1e6
    m = result.metrics
    m[f"{name}_auths"] = stats["ok"]
    m[f"{name}_auth_per_s"] = round(stats["ok"] / wall, 1)
    m[f"{name}_worker_cpu_us_per_auth"] = round(per_auth, 1)
    m[f"{name}_auths_per_s_per_core"] = round(1e6 / per_auth, 1) if per_auth > 0 else None
    m[f"{name}_coordinator_cpu_us_per_auth"] = round((c1 - c0) / ok * 1e6, 1)
    m[f"{name}_generator_cpu_s"] = round(g1 - g0, 2)
    m[f"{name}_retried_1013"] = stats["retried_1013"]
    close_all(ctx)


def auth_rate(ctx: Context, clients: int, watch: int, lobby: int) -> Result:
    """``clients`` watchlist followers (``watch`` keys each), then ``lobby`` whole-lobby
    followers, each load connecting at once (see the module's docstring)."""
    result = Result("auth-rate", {"clients": clients, "watch": watch, "lobby": lobby})
    pool = range(clients)
    _load(ctx, result, "watch", pool, {"watch_keys": watch, "watch_from": list(pool)})
    _load(ctx, result, "lobby", range(clients, clients + lobby), {})
    check_errors(result, counters(ctx))
    result.causes = ctx.all_causes()
    return result
