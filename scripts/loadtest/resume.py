"""The resume scenarios (protocol version 2): what bringing a client back costs when it
resumes the view it held instead of taking a snapshot.

``blip``: a lobby of N users, each present and following a watchlist that is empty
(so the lobby is full while the generator receives nearly nothing: N clients of the
whole lobby would cost N snapshots of up to N entries each); probe clients hold the
whole lobby or a watchlist. In each blip every probe drops (no close frame) and comes
back ``blip`` seconds later resuming its view, while the lobby changes in the
background at ``rate`` a second. Measured per probe and blip: the bytes that brought it
back (challenge, ``auth_ok`` and the resuming update) against those of a fresh snapshot
of its scope taken just after, and the check that its view equals that snapshot and
the truth.

``kill-worker``: N clients, most following a watchlist of ``watch`` random keys of
the lobby, ``whole`` of them the whole lobby, over the cluster's workers. One worker
is killed (SIGKILL); its clients reconnect at once through the shared port, to the
survivor (or the launcher's replacement). Done twice on the same server: first the
way a version 1 client does (a snapshot each), then resuming; between the two every
client closes and connects again, so both start from an even split. Measured per
scope: the bytes sent to the reconnecting clients, and the time from the kill until
every one of them is whole again (its view equals the truth for good: the last time
it changed, read once every view is right and the coordinator has given the dead
worker up). Both paths check every view against the truth and count gaps.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Sequence
from typing import Any

from scripts.loadtest.pool import LoadTestError
from scripts.loadtest.scenarios import (
    START_DELAY,
    Context,
    Result,
    close_all,
    connect,
    counters,
)
from scripts.procfs import alive, peers_by_process
from scripts.procfs import total_cpu_seconds as cpu_seconds
from shared.timings import EXPIRY_CHECK, WORKER_TIMEOUT

EMPTY: dict[str, Any] = {"scope": "watch", "indices": []}
"""A watchlist of nobody: present in the lobby, sent nothing about it."""
RECOVER_TIMEOUT = 120.0
"""Seconds the lost clients have to get back in; those that did not fail the run."""
GIVEN_UP = WORKER_TIMEOUT + EXPIRY_CHECK
"""Seconds after which the coordinator has presumed a killed worker dead."""


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"min": 0.0, "p50": 0.0, "max": 0.0}
    return {"min": ordered[0], "p50": ordered[len(ordered) // 2], "max": ordered[-1]}


def _open(ctx: Context) -> list[int]:
    return sorted(i for part in ctx.pool.call("online") for i in part)


# --------------------------------------------------------------------------- blip


def blip(
    ctx: Context,
    users: int,
    probes: int = 4,
    watch: int = 50,
    blips: int = 3,
    seconds: float = 5.0,
    rate: float = 15.0,
) -> Result:
    """See the module docstring. ``probes`` of each scope (the whole lobby; a watchlist
    of ``watch`` keys among the changing users and the spares); the users include the
    probes; ``rate`` background changes a second: two in three a status change of a
    user, one in three a join or leave of one of ``users // 100`` spare keys."""
    result = Result(
        "blip",
        {"users": users, "probes": probes, "watch": watch, "blips": blips, "blip_s": seconds},
    )
    result.params["background_per_s"] = rate
    share = ctx.share
    bulk = range(users - 2 * probes)
    lobby_probes = list(range(users - 2 * probes, users - probes))
    watch_probes = list(range(users - probes, users))
    spares = list(range(users, users + max(4, users // 100)))
    changers = list(bulk)[: max(watch, len(bulk) // 10)]
    keys_from = changers + spares
    follows: dict[int, dict[str, Any]] = {i: EMPTY for i in [*bulk, *spares]}
    follows.update({i: {"scope": "lobby"} for i in lobby_probes})
    follows.update(
        {
            i: {"scope": "watch", "indices": random.Random(i).sample(keys_from, watch)}
            for i in watch_probes
        }
    )
    ctx.pool.call(
        "set_follows",
        lambda a: {
            "follows": {
                i: follows[i] for i in share([*bulk, *spares, *lobby_probes, *watch_probes])(a)
            }
        },
    )
    connect(ctx, bulk, "users", watch=False)
    connect(ctx, spares[::2], "spares", watch=False)  # half the spares are on
    probe_list = [*lobby_probes, *watch_probes]
    connect(ctx, probe_list, "probes", watch=False)
    cpu0 = ctx.server_cpu()
    rows: list[dict[str, Any]] = []
    made: dict[str, int] = {}
    for n in range(blips):
        agents = range(ctx.pool.size)
        background = [
            {
                "rate": rate / ctx.pool.size,
                "changers": share(changers)(a),
                "spares": share(spares)(a),
                "seed": 1000 * n + a,
            }
            for a in agents
        ]
        ctx.pool.call("background", background.__getitem__)
        start = time.time() + START_DELAY
        ops = [
            {"indices": share(probe_list)(a), "start_at": start, "blip": seconds} for a in agents
        ]
        parts = ctx.pool.call(
            "blip",
            ops.__getitem__,
            progress=ctx.progress(f"blip {n + 1}/{blips}", len(probe_list)),
            timeout=seconds + 120,
        )
        for part in ctx.pool.call("quiet"):
            for k, v in part.items():
                made[k] = made.get(k, 0) + v
        truth = _open(ctx)
        asked = [{"indices": share(probe_list)(a), "truth": truth} for a in agents]
        checks = ctx.pool.call("probe_check", asked.__getitem__, timeout=120)
        by_index = {c["index"]: c for part in checks for c in part}
        for part in parts:
            for row in part:
                row.update(by_index.get(row["index"], {}))
                row["scope"] = "lobby" if row["index"] in lobby_probes else "watch"
                row["blip"] = n
                rows.append(row)
    cpu1 = ctx.server_cpu()
    failed = [r for r in rows if r.get("failed")]
    if failed:
        result.failures.append(f"{len(failed)} probes could not reconnect")
    rows = [r for r in rows if not r.get("failed")]
    unequal = [r for r in rows if not r.get("equal") or not r.get("true")]
    if unequal:
        result.failures.append(
            f"{len(unequal)} resumed views differ from a fresh snapshot or the truth: "
            f"{[(r['index'], r['blip'], r['differ'], r['same_seq']) for r in unequal[:5]]}"
        )
    not_resumed = [r for r in rows if not r["resumed"]]
    if not_resumed:  # the server's choice (its ring did not cover them): a snapshot each
        result.notes.append(f"{len(not_resumed)} of {len(rows)} probes got a snapshot")
    totals = counters(ctx)
    if totals["error_count"]:
        result.failures.append(
            f"{totals['error_count']} protocol violations seen by clients: {totals['errors'][:5]}"
        )
    m = result.metrics
    for scope in ("lobby", "watch"):
        mine = [r for r in rows if r["scope"] == scope]
        if not mine:
            continue
        ratios = [
            r["bytes"] / max(r["bytes"] - r["view_bytes"] + r["snapshot_bytes"], 1) for r in mine
        ]
        q = _quantiles(ratios)
        m[f"{scope}_snapshot_bytes"] = round(sum(r["snapshot_bytes"] for r in mine) / len(mine))
        m[f"{scope}_resume_bytes"] = round(sum(r["bytes"] for r in mine) / len(mine))
        m[f"{scope}_resume_pct_p50"] = round(q["p50"] * 100, 3)
        m[f"{scope}_resume_pct_max"] = round(q["max"] * 100, 3)
        for k in ("joined", "updated", "left"):
            m[f"{scope}_delta_{k}"] = round(sum(r[k] for r in mine) / len(mine), 1)
    m["resumed"] = len(rows) - len(not_resumed)
    m["probes_checked"] = len(rows)
    m["background_changes"] = sum(v for k, v in made.items() if k != "failed")
    m["server_cpu_s"] = round(cpu1 - cpu0, 2)
    result.notes.append(
        "bytes of a resume: the new connection's challenge, auth_ok and resuming update; "
        "the fresh snapshot's: the same handshake and the snapshot get_lobby brought "
        f"just after; background changes made: {made}"
    )
    close_all(ctx)
    return result


# --------------------------------------------------------------------------- kill


def _setup(ctx: Context, users: int, follows: dict[int, dict[str, Any]]) -> None:
    """Connect every user following nobody, then each changes to its own follow (so
    nobody receives the lobby's mass join, only one snapshot of what it follows)."""
    share = ctx.share
    ctx.pool.call("set_follows", lambda a: {"follows": {i: EMPTY for i in share(range(users))(a)}})
    connect(ctx, range(users), "users", watch=False)
    ctx.pool.call(
        "follow",
        lambda a: {"follows": {i: follows[i] for i in share(range(users))(a)}},
        progress=ctx.progress("following", users),
        timeout=300.0,
    )


def _kill_phase(
    ctx: Context, result: Result, users: int, resume: bool, name: str
) -> dict[str, Any]:
    """Kill one worker; its clients reconnect (resuming or not); measure until whole."""
    workers = ctx.server.worker_pids()
    if len(workers) < 2:
        raise LoadTestError(f"kill-worker needs two workers or more, found {workers}")
    victim = workers[0]
    on_victim = set(peers_by_process([victim]))
    addresses = ctx.pool.call("addresses")
    killed = [[i for i, addr in part.items() if tuple(addr) in on_victim] for part in addresses]
    lost = sum(len(k) for k in killed)
    ctx.pool.call("track")
    notify = ctx.server.notify
    ready = notify.count("READY") if notify is not None else 0
    before = counters(ctx)
    # The killed worker's CPU time goes with it: count the others' (and its successor's).
    cpu0 = cpu_seconds([p for p in ctx.server.pids() if p != victim])
    kill_at = time.time()
    os.kill(victim, signal.SIGKILL)
    parts = ctx.pool.call(
        "recover",
        lambda a: {"indices": killed[a], "resume": resume, "timeout": RECOVER_TIMEOUT},
        progress=ctx.progress(f"{name}: back", lost),
        timeout=RECOVER_TIMEOUT + 60,
    )
    reconnected = [i for k in killed for i in k]
    truth = list(range(users))
    deadline = time.monotonic() + ctx.settle_timeout
    while True:
        wholes = ctx.pool.call("whole", {"truth": truth, "reconnected": reconnected})
        wrong = sum(w["wrong"] for w in wholes)
        given_up = time.time() >= kill_at + GIVEN_UP + 0.5
        if (not wrong and given_up) or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling the views until they are right
    cpu1 = ctx.server_cpu()
    after = counters(ctx)
    if wrong:
        examples = [e for w in wholes for e in w["examples"]][:5]
        result.failures.append(f"{name}: {wrong} views not equal to the truth: {examples}")
    failed = sum(p["failed"] for p in parts)
    if failed:
        reasons = [p["reasons"] for p in parts]
        result.failures.append(f"{name}: {failed} clients never got back in: {reasons}")
    scopes: dict[str, dict[str, Any]] = {}
    for w in wholes:
        for scope, s in w["scopes"].items():
            t = scopes.setdefault(scope, {k: 0 for k in s})
            for k, v in s.items():
                t[k] = max(t[k], v) if k.endswith("changed_last") else t[k] + v
    m = result.metrics
    prefix = "resume" if resume else "snapshot"
    m[f"{prefix}_lost"] = lost
    m[f"{prefix}_reconnected"] = sum(p["ok"] for p in parts)
    m[f"{prefix}_retried_1013"] = sum(p["retried_1013"] for p in parts)
    last_ok = max(p["last_ok"] for p in parts)
    m[f"{prefix}_back_s"] = round(last_ok - kill_at, 3)
    # What bounds both paths: how fast the server lets the lost clients authenticate.
    m[f"{prefix}_auth_per_s"] = round(m[f"{prefix}_reconnected"] / max(last_ok - kill_at, 1e-9), 1)
    whole_all = 0.0
    total_bytes = 0
    for scope, s in sorted(scopes.items()):
        whole = max(s["reconnected_changed_last"], last_ok) - kill_at
        whole_all = max(whole_all, whole)
        total_bytes += s["bytes"]
        m[f"{prefix}_{scope}_clients"] = s["reconnected"]
        m[f"{prefix}_{scope}_bytes"] = s["bytes"]
        m[f"{prefix}_{scope}_resumed"] = s["resumed"]
        m[f"{prefix}_{scope}_whole_s"] = round(whole, 3)
        if resume and s["reconnected"]:
            for k in ("joined", "updated", "left"):
                m[f"{prefix}_{scope}_delta_{k}"] = round(s[k] / s["reconnected"], 1)
    m[f"{prefix}_bytes"] = total_bytes
    m[f"{prefix}_whole_s"] = round(whole_all, 3) if not wrong else None
    m[f"{prefix}_all_quiet_s"] = round(max(s["changed_last"] for s in scopes.values()) - kill_at, 3)
    m[f"{prefix}_server_cpu_s"] = round(cpu1 - cpu0, 2)
    if after["error_count"] > before["error_count"]:
        result.failures.append(
            f"{name}: {after['error_count'] - before['error_count']} protocol violations: "
            f"{after['errors'][:5]}"
        )
    if alive(victim):
        result.failures.append(f"{name}: worker {victim} survived SIGKILL")
    return {"victim": victim, "ready": ready, "workers": len(workers)}


def _wait_workers(ctx: Context, killed: dict[str, Any], timeout: float = 30.0) -> None:
    """Wait until the launcher says the cluster is whole again after the kill (its
    ``READY=1`` after the restart; without a launcher, the worker count is back)."""
    notify = ctx.server.notify
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = ctx.server.worker_pids()
        if notify is not None:
            if notify.count("READY") > killed["ready"] and killed["victim"] not in pids:
                return
            notify.receive(0.2)
        elif len(pids) >= killed["workers"] and killed["victim"] not in pids:
            return
        else:
            time.sleep(0.2)  # polling the process table
    raise LoadTestError(f"the cluster was not whole again within {timeout:.0f}s of a kill")


def kill_worker(ctx: Context, users: int, whole: int = 200, watch: int = 50) -> Result:
    """See the module docstring: ``whole`` of ``users`` follow the whole lobby, the
    others a watchlist of ``watch`` random keys of the lobby."""
    result = Result("kill-worker", {"users": users, "whole": whole, "watch": watch})
    step = max(1, users // max(whole, 1))
    lobby = set(range(0, users, step)[:whole])
    follows: dict[int, dict[str, Any]] = {
        i: {"scope": "lobby"}
        if i in lobby
        else {"scope": "watch", "indices": random.Random(i).sample(range(users), watch)}
        for i in range(users)
    }
    for resume in (False, True):
        name = "resuming" if resume else "snapshots"
        _setup(ctx, users, follows)
        killed = _kill_phase(ctx, result, users, resume, name)
        close_all(ctx)
        if not resume:
            _wait_workers(ctx, killed)
    m = result.metrics
    for key in ("bytes", "whole_s"):
        a, b = m.get(f"snapshot_{key}"), m.get(f"resume_{key}")
        if a is not None and b:
            m[f"{key}_ratio"] = round(a / b, 2)
    return result
