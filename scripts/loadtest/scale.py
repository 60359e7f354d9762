"""The ``scale`` scenario (protocol version 2): N users, each watching its contacts,
and what the server costs as N grows.

    python -m scripts.loadtest --start cluster --protocol 2 scale N --contacts K --rate R

Before anything starts, :mod:`scripts.loadtest.limits` works out what N needs (open
files, local ports and source addresses, listen backlog, connection tracking, the
workers' ``--memory-budget`` and ``--max-connections``) and refuses with one message
naming every limit to raise and how; it chooses ``--procs`` and
``--source-addresses`` when they are not given. Then, on one server:

1. **connect**: every user connects following its contacts, a watchlist of K users
   drawn from a skewed graph (:mod:`scripts.loadtest.contacts`), or, for a
   ``--count-fraction`` of them, only the count. Time to connect all, auths a second.
2. **settle**: every client's view against the truth (its contacts online, or the
   count), not a sample: each client's view is small.
3. **idle**: server memory per connection (the server's RSS over its RSS before the
   first connection, per user) and its CPU while nothing changes.
4. **changes**: R presence changes a second for ``--duration`` seconds, each user in
   turn (once every N / R seconds, within the server's record rate of one a second):
   a user offline rejoins, one online leaves with probability :data:`LEAVE_SHARE`,
   else it sets another status (about 2/3 status changes, 1/6 leaves, 1/6 rejoins).
   Server CPU per change above idle, frames and bytes received per change, and
   change-to-seen at the sampled watchers (status changes and presence changes alike);
   then every view against the truth again, statuses included.
5. **kill** (a started cluster of two workers or more): one worker is SIGKILLed; its
   users come back at once through the shared port, resuming the views they held.
   The time until all are back in and until all are whole (every view equal to the
   truth, once the coordinator has given the dead worker up), the bytes sent to them
   against the bytes a snapshot each would have been, and what was refused, by cause.

Every check of the other scenarios holds: no gap in any client's ``prev`` chain (the
client records it as a protocol violation), no error frame, no unexpected close, every
status change and presence change seen by every sampled watcher of its key.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import time
from typing import Any

from scripts.loadtest import limits
from scripts.loadtest.contacts import DEFAULT_COUNT_FRACTION, contacts
from scripts.loadtest.pool import LoadTestError
from scripts.loadtest.resume import GIVEN_UP, RECOVER_TIMEOUT
from scripts.loadtest.scenarios import (
    START_DELAY,
    Context,
    Result,
    check_errors,
    close_all,
    connect,
    counters,
)
from scripts.loadtest.stats import Histogram
from scripts.procfs import alive, peers_by_process
from scripts.procfs import total_cpu_seconds as cpu_seconds
from scripts.procfs import total_rss_bytes as rss_bytes
from shared.client_v2 import LobbyClientV2
from shared.defaults import RESUME_RING_AGE, RESUME_RING_BYTES
from workers.ring import bytes_to_cover

LEAVE_SHARE = 0.2
"""The chance that a user online leaves on its turn (else it changes its status)."""
MIX = (
    "each user in turn once a round: offline -> rejoin; online -> leave with p=0.2, "
    "else a status change (about 2/3 status, 1/6 leave, 1/6 rejoin)"
)
IDLE_S = 5.0
"""Seconds of the idle window, at most (``--duration`` when shorter)."""
MIN_ROUND_S = 1.0
"""Seconds between two changes of one user at least: the server's record rate
(workers ``--record-rate``, one a second)."""
POLL_S = 0.2
"""Seconds between two looks at the views after a kill."""
RECOVER_FLOOR = 50.0
"""Auths a second below which the killed worker's users count as not back in time
(and at least :data:`~scripts.loadtest.resume.RECOVER_TIMEOUT` seconds): at 100,000
users the survivor takes 50,000 back, minutes at a few hundred a second."""


def add_parser(sub: Any) -> None:
    """The ``scale`` subcommand's options."""
    p = sub.add_parser("scale", help="(v2) N users watching their contacts: the cost curve")
    p.add_argument("users", type=int)
    p.add_argument("--contacts", type=int, default=20, help="keys each watches (%(default)s)")
    p.add_argument("--rate", type=float, default=1000.0, help="changes/s (%(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds (%(default)s)")
    p.add_argument(
        "--count-fraction",
        type=float,
        default=DEFAULT_COUNT_FRACTION,
        metavar="F",
        help="users that follow only the count (%(default)s)",
    )
    p.add_argument(
        "--kill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="kill one of two workers at the end (default: when --start cluster has 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="the contact graph's (%(default)s)")


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The scenario's options, checked (exits with a usage error)."""
    if args.protocol != 2:
        parser.error("scale: needs --protocol 2 (watchlists and counts)")
    if args.users < 2 or args.rate <= 0 or args.duration <= 0:
        parser.error("scale: users at least 2, --rate and --duration positive")
    if not 1 <= args.contacts < args.users:
        parser.error("scale: --contacts from 1 to users - 1")
    if not 0.0 <= args.count_fraction < 1.0:
        parser.error("scale: --count-fraction from 0 to below 1")
    if args.users / args.rate < MIN_ROUND_S:
        parser.error(
            f"scale: --rate at most users / {MIN_ROUND_S:g} s ({args.users / MIN_ROUND_S:g}): "
            "each user changes at most once a second (the server's record rate)"
        )
    can_kill = args.start == "cluster" and args.workers >= 2
    if args.kill and not can_kill:
        parser.error("scale --kill: needs --start cluster with --workers 2 or more")
    if args.kill is None:
        args.kill = can_kill


def prepare(args: argparse.Namespace, min_procs: int) -> limits.Plan:
    """Work out what the run needs (:func:`limits.plan`) and, when nothing is in the
    way, raise the open-file limit and fill in the options left open: ``--procs``,
    ``--source-addresses``, ``--concurrency``, and the workers' ``--memory-budget``,
    ``--max-connections`` and ``--resume-ring-bytes`` (unless given with
    ``--worker-arg``)."""
    given = [a.strip() for a in args.source_addresses.split(",") if a.strip()]
    chosen = limits.plan(
        args.users,
        limits.read_system(),
        procs=args.procs,
        min_procs=min_procs,
        sources=given or None,
        concurrency=args.concurrency,
        workers=args.workers,
        cluster=args.start == "cluster",
        kill=bool(args.kill),
    )
    if not chosen.ok:
        return chosen
    denied = limits.apply(chosen)
    if denied is not None:
        chosen.problems.append(denied)
        return chosen
    args.procs, args.concurrency = chosen.procs, chosen.concurrency
    args.source_addresses = ",".join(chosen.sources)
    if args.start == "cluster":
        words = " ".join(args.worker_arg)
        ring = 0
        if "--resume-ring-bytes" not in words:
            # Resume every user of the killed worker while changes go on at the rate:
            # the default ring holds about 15 s of 1,000 changes/s (docs/operating.md).
            returning = math.ceil(args.users / max(args.workers, 1))
            ring = bytes_to_cover(args.rate, RESUME_RING_AGE, returning)
            if ring > RESUME_RING_BYTES:
                args.worker_arg.append(f"--resume-ring-bytes={ring}")
            else:
                ring = 0
        if "--memory-budget" not in words:  # (the ring is charged to the budget)
            args.worker_arg.append(f"--memory-budget={chosen.memory_budget + ring}")
        if "--max-connections" not in words:
            args.worker_arg.append(f"--max-connections={chosen.max_connections}")
    return chosen


def refused(args: argparse.Namespace, chosen: limits.Plan) -> dict[str, Any]:
    """The result of a run the limits refused: no numbers, what to raise."""
    return {
        "target": args.start or args.url,
        "scenario": "scale",
        "params": {"users": args.users},
        "metrics": {},
        "failures": [chosen.refusal()],
        "notes": [],
        "skipped": chosen.short(),
        "limits": [vars(p) for p in chosen.problems],
        "connect": {"causes": {}},
        "ok": False,
    }


# --------------------------------------------------------------------------- phases


def _check(
    ctx: Context,
    result: Result,
    label: str,
    truth: list[int],
    statuses: dict[int, str],
    timeout: float,
    reconnected: list[list[int]] | None = None,
) -> list[dict[str, Any]]:
    parts = ctx.pool.call(
        "scale_check",
        lambda a: {
            "truth": truth,
            "statuses": statuses,
            "timeout": timeout,
            "reconnected": reconnected[a] if reconnected else [],
        },
        timeout=timeout + 120,
    )
    if timeout > 0:
        _record_check(result, label, parts)
    return parts


def _record_check(result: Result, label: str, parts: list[dict[str, Any]]) -> None:
    wrong = sum(p["wrong"] for p in parts)
    if wrong:
        examples = [e for p in parts for e in p["examples"]][:5]
        result.failures.append(
            f"{label}: {wrong} of {sum(p['checked'] for p in parts)} views not equal to "
            f"the truth: {examples}"
        )
    closed = sum(p["closed"] for p in parts)
    if closed:
        codes = [p["close_codes"] for p in parts if p["closed"]]
        result.failures.append(f"{label}: {closed} clients closed by the server: {codes}")


def settle_deadline(kill_at: float, back_at: float, settle: float) -> float:
    """Until when the views may settle after a kill at ``kill_at`` whose users were all
    back (or given up on) at ``back_at``: ``settle`` seconds after the later of their
    return and the coordinator giving the worker up. Counted from the kill, a recovery
    longer than ``settle`` left no time at all, and count followers, sent the number at
    most once a second, were checked before the last returns could reach them."""
    return max(back_at, kill_at + GIVEN_UP) + settle


def _explain(ctx: Context, result: Result, truth: list[int]) -> None:
    """Name the users the lobby and the truth disagree on (from a whole-lobby view
    taken now), with what their clients saw: a count that is off says how many, this
    says who."""
    try:
        lobby = asyncio.run(_lobby_keys(ctx.server.url))
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        result.notes.append(f"could not take the lobby to explain the wrong views: {exc!r}")
        return
    found = [
        d
        for part in ctx.pool.call("scale_disagree", {"lobby": lobby, "truth": truth})
        for d in part
    ]
    result.notes.append(
        f"the lobby holds {len(lobby)} users, the truth {len(truth)}; "
        f"{len(found)} disagree: {found[:10]}"
    )


async def _lobby_keys(url: str) -> list[str]:
    """The keys of a whole-lobby view taken now (without the viewer's own)."""
    client = await LobbyClientV2.connect(url, follow={"scope": "lobby"}, open_timeout=60.0)
    try:
        return sorted(set(client.records) - {client.public_key})
    finally:
        await client.close()


def _status_seen(ctx: Context) -> tuple[int, Histogram, dict[str, int]]:
    """Status changes seen by the sampled watchers, their latencies, and the ``error``
    frames every client got, by code."""
    parts = ctx.pool.call("status_counts")
    hist = Histogram.merged(
        Histogram.from_dict(p["latency"][g]) for p in parts for g in p["latency"]
    )
    codes: dict[str, int] = {}
    for p in parts:
        for code, n in p["error_codes"].items():
            codes[code] = codes.get(code, 0) + n
    return sum(p["seen"] for p in parts), hist, codes


def _latency(m: dict[str, Any], prefix: str, hist: Histogram) -> None:
    s = hist.summary_ms()
    m[f"{prefix}_p50_ms"] = s["p50_ms"]
    m[f"{prefix}_p99_ms"] = s["p99_ms"]
    m[f"{prefix}_samples"] = hist.count


def _connect_all(ctx: Context, result: Result, users: int) -> None:
    """Every user connects following what :func:`op_scale_follow` set (each agent
    holds the users of its share, whatever they follow); the count followers are not
    watchers of the sample. Users that could not connect fail the run, which goes on
    with the others."""
    began = time.time()
    stats = connect(ctx, range(users), "connecting", target_online=None, result=result)
    ctx.pool.call("scale_unwatch")
    wall = stats["last_ok"] - began
    m = result.metrics
    m["connect_all_s"] = round(wall, 3)
    m["auth_per_s"] = round(users / max(wall, 1e-9), 1)
    m["connect_retried_1013"] = stats["retried_1013"]
    m["connect_retried_other"] = stats["retried_other"]


def _changes(
    ctx: Context,
    result: Result,
    rate: float,
    duration: float,
    idle: float,
    statuses: dict[int, str],
) -> None:
    procs = ctx.pool.size
    m = result.metrics
    ctx.pool.call("reset")
    c0 = counters(ctx)
    seen0, _, codes0 = _status_seen(ctx)
    cpu0, gen0, began = ctx.server_cpu(), ctx.generator_cpu(), time.monotonic()
    start = time.time() + START_DELAY
    parts = ctx.pool.call(
        "scale_changes",
        lambda a: {
            "rate": rate / procs,
            "duration": duration,
            "start_at": start,
            "leave_share": LEAVE_SHARE,
            "seed": 7919 * a + 1,
        },
        progress=ctx.progress("presence changes", int(rate / procs * duration) * procs),
        timeout=duration + 180,
    )
    cpu1, gen1 = ctx.server_cpu(), ctx.generator_cpu()
    wall = time.monotonic() - began
    for p in parts:
        for i in p["reset"]:
            statuses.pop(int(i), None)
        statuses.update({int(i): s for i, s in p["statuses"].items()})
        ctx.causes.update(p["connect"]["reasons"])
    truth = sorted(i for part in ctx.pool.call("online") for i in part)
    _check(ctx, result, "after the changes", truth, statuses, ctx.settle_timeout)
    c1 = counters(ctx)
    seen1, status_hist, codes1 = _status_seen(ctx)
    errors = {k: v - codes0.get(k, 0) for k, v in codes1.items() if v > codes0.get(k, 0)}
    if errors:  # rate_limited included: the changes keep within the record rate
        result.failures.append(f"error frames during the changes: {errors}")
    made = {k: sum(p["made"][k] for p in parts) for k in parts[0]["made"]}
    owed = {k: sum(p["owed"][k] for p in parts) for k in ("status", "presence")}
    changes = made["status"] + made["leave"] + made["rejoin"]
    if made["rejoin_failed"]:
        result.failures.append(f"{made['rejoin_failed']} rejoins could not connect")
    if made["status_failed"]:
        result.failures.append(f"{made['status_failed']} status changes could not be sent")
    if made["skipped_rejoining"]:
        result.notes.append(
            f"{made['skipped_rejoining']} turns skipped: the user's rejoin was still retrying "
            "(or had failed) when its turn came again (fewer users than the rate makes a "
            "round short)"
        )
    if seen1 - seen0 < owed["status"]:
        result.failures.append(
            f"sampled watchers saw {seen1 - seen0} of {owed['status']} status changes"
        )
    if c1["observed"] < owed["presence"]:
        result.failures.append(
            f"sampled watchers saw {c1['observed']} of {owed['presence']} leaves and rejoins"
        )
    issued = max(p["issued_last"] for p in parts) - start + procs / rate
    m["changes"] = changes
    m["changes_status"] = made["status"]
    m["changes_leave"] = made["leave"]
    m["changes_rejoin"] = made["rejoin"]
    m["turns_skipped_rejoining"] = made["skipped_rejoining"]
    m["changes_per_s"] = round(changes / max(issued, 1e-9), 1)
    cpu = cpu1 - cpu0
    m["changes_server_cpu_s"] = round(cpu, 3)
    m["server_cpu_us_per_change"] = round(cpu / max(changes, 1) * 1e6, 1)
    above = (cpu - idle * wall) / max(changes, 1) * 1e6
    m["server_cpu_us_per_change_above_idle"] = round(above, 1)
    m["generator_cpu_s"] = round(gen1 - gen0, 2)
    m["frames_per_change"] = round((c1["frames"] - c0["frames"]) / max(changes, 1), 2)
    m["bytes_per_change"] = round((c1["frame_bytes"] - c0["frame_bytes"]) / max(changes, 1), 1)
    both = Histogram.merged([status_hist, c1["latency"]])
    _latency(m, "change_to_seen", both)
    _latency(m, "status_to_seen", status_hist)
    _latency(m, "presence_to_seen", c1["latency"])
    lag = Histogram.merged(Histogram.from_dict(p["schedule_lag"]) for p in parts)
    m["schedule_lag_p99_ms"] = lag.summary_ms()["p99_ms"]
    if m["changes_per_s"] < 0.95 * rate:
        result.notes.append(
            f"asked for {rate:g} changes/s, made {m['changes_per_s']:g}/s (the generator "
            f"fell behind: schedule lag p99 {m['schedule_lag_p99_ms']:,.0f} ms)"
        )


def _kill(ctx: Context, result: Result, statuses: dict[int, str]) -> None:
    """Kill one worker; its users come back resuming; measure until all are whole."""
    m = result.metrics
    workers = ctx.server.worker_pids()
    if len(workers) < 2:
        raise LoadTestError(f"scale: killing a worker needs two or more, found {workers}")
    victim = workers[0]
    on_victim = set(peers_by_process([victim]))
    killed = [
        [i for i, addr in part.items() if tuple(addr) in on_victim]
        for part in ctx.pool.call("addresses")
    ]
    flat = [i for k in killed for i in k]
    truth = sorted(i for part in ctx.pool.call("online") for i in part)
    snapshots = sum(
        p["bytes"] for p in ctx.pool.call("scale_view_bytes", lambda a: {"indices": killed[a]})
    )
    ctx.pool.call("track")
    errors0 = counters(ctx)["error_count"]
    cpu0 = cpu_seconds([p for p in ctx.server.pids() if p != victim])
    kill_at = time.time()
    os.kill(victim, signal.SIGKILL)
    recover = max(RECOVER_TIMEOUT, len(flat) / RECOVER_FLOOR)
    parts = ctx.pool.call(
        "recover",
        lambda a: {"indices": killed[a], "resume": True, "timeout": recover},
        progress=ctx.progress("killed worker's users back", len(flat)),
        timeout=recover + 60,
    )
    for p in parts:
        ctx.causes.update(p["reasons"])
    deadline = settle_deadline(kill_at, time.time(), ctx.settle_timeout)
    while True:  # polling the views until they are right and the worker is given up
        checks = _check(ctx, result, "after the kill", truth, statuses, 0.0, killed)
        wrong = sum(c["wrong"] for c in checks)
        now = time.time()
        if (not wrong and now >= kill_at + GIVEN_UP + 0.5) or now > deadline:
            break
        time.sleep(POLL_S)
    _record_check(result, "after the kill", checks)
    if any(c["wrong"] for c in checks):
        _explain(ctx, result, truth)
    cpu1 = cpu_seconds([p for p in ctx.server.pids() if p != victim])
    back = {
        k: sum(c["back"][k] for c in checks)
        for k in (
            "clients",
            "counters",
            "asked",
            "resumed",
            "bytes",
            "view_bytes",
            "delta_joined",
            "delta_updated",
            "delta_left",
        )
    }
    changed_last = max(c["back"]["changed_last"] for c in checks)
    ok = sum(p["ok"] for p in parts)
    failed = sum(p["failed"] for p in parts)
    if failed:
        result.failures.append(
            f"kill: {failed} users never got back in: {[p['reasons'] for p in parts]}"
        )
    watchers = back["clients"] - back["counters"]
    if back["asked"] < watchers:  # the view was stale when its connection ended
        result.notes.append(
            f"kill: {watchers - back['asked']} of {watchers} watchers could not ask to resume"
        )
    if back["resumed"] < back["asked"]:  # the server's choice (its ring did not cover them)
        result.notes.append(
            f"kill: {back['asked'] - back['resumed']} of {back['asked']} watchers that asked "
            "to resume got a snapshot"
        )
    successors = [p for p in ctx.server.worker_pids() if p not in workers]
    if successors:  # a worker started after the kill holds no update from before it
        on_new = set(peers_by_process(successors))
        lost = [set(k) for k in killed]
        back_on_new = sum(
            1
            for a, part in enumerate(ctx.pool.call("addresses"))
            for i, addr in part.items()
            if tuple(addr) in on_new and i in lost[a]
        )
        m["kill_back_on_restarted"] = back_on_new
        result.notes.append(
            f"kill: {back_on_new} of the killed worker's {len(flat)} users came back to "
            "the worker started in its place, whose resume ring begins when it started "
            "(a view from before cannot resume there)"
        )
    last_ok = max((p["last_ok"] for p in parts), default=kill_at)
    m["kill_lost"] = len(flat)
    m["kill_back"] = ok
    m["kill_asked_resume"] = back["asked"]
    m["kill_resumed"] = back["resumed"]
    m["kill_counters"] = back["counters"]
    for k in ("joined", "updated", "left"):  # what a resuming update carried, on average
        m[f"kill_resume_delta_{k}"] = round(back[f"delta_{k}"] / max(back["resumed"], 1), 2)
    m["kill_back_s"] = round(last_ok - kill_at, 3)
    m["kill_whole_s"] = None if wrong else round(max(changed_last, last_ok) - kill_at, 3)
    m["kill_auth_per_s"] = round(ok / max(last_ok - kill_at, 1e-9), 1)
    m["kill_retried_1013"] = sum(p["retried_1013"] for p in parts)
    m["kill_refused"] = {k: v for p in parts for k, v in p["reasons"].items()}
    m["kill_bytes"] = back["bytes"]
    m["kill_resume_view_bytes"] = back["view_bytes"]
    m["kill_snapshot_view_bytes"] = snapshots
    by_snapshot = back["bytes"] - back["view_bytes"] + snapshots
    m["kill_bytes_by_snapshots"] = by_snapshot
    m["kill_bytes_ratio"] = round(by_snapshot / max(back["bytes"], 1), 2)
    m["kill_view_bytes_ratio"] = round(snapshots / max(back["view_bytes"], 1), 2)
    m["kill_server_cpu_s"] = round(cpu1 - cpu0, 2)
    if counters(ctx)["error_count"] > errors0:
        result.failures.append("kill: protocol violations while the users came back")
    if alive(victim):
        result.failures.append(f"kill: worker {victim} survived SIGKILL")
    result.notes.append(
        "kill bytes: all the bytes the new connections of the killed worker's users "
        "received until whole (challenge, auth_ok, the resuming update, or a count for "
        "those following the count, which has nothing to resume, and what followed); by "
        "snapshots: the same with each user's first view replaced by the snapshot (or "
        "count) its connection before the kill began with"
    )


# --------------------------------------------------------------------------- scenario


def scale(ctx: Context, args: argparse.Namespace, chosen: limits.Plan) -> Result:
    """See the module docstring."""
    users, k = args.users, args.contacts
    result = Result(
        "scale",
        {
            "users": users,
            "contacts": k,
            "rate": args.rate,
            "duration": args.duration,
            "count_fraction": args.count_fraction,
            "kill": args.kill,
            "seed": args.seed,
            "mix": MIX,
            "procs": ctx.pool.size,
            "source_addresses": len(chosen.sources) or 1,
            "concurrency": ctx.concurrency,
            "open_files": chosen.files,
        },
    )
    if args.start == "cluster":
        result.params["worker_args"] = " ".join(args.worker_arg)
    result.notes += chosen.notes
    graph = contacts(users, k, args.seed, args.count_fraction)
    degrees = sorted(graph.in_degrees(), reverse=True)
    result.params["watchers_of_most_watched"] = degrees[0]
    result.params["watchers_of_median"] = degrees[len(degrees) // 2]
    ctx.pool.call(
        "scale_follow",
        lambda a: {
            "watch": {i: graph.watch[i] for i in ctx.share(range(users))(a)},
            "counters": [i for i in ctx.share(range(users))(a) if i in graph.counters],
        },
        timeout=300.0,
    )
    m = result.metrics
    pids = ctx.server.pids()
    rss0 = rss_bytes(pids)
    _connect_all(ctx, result, users)
    statuses: dict[int, str] = {}
    online = sorted(i for part in ctx.pool.call("online") for i in part)
    _check(ctx, result, "after connecting", online, statuses, ctx.settle_timeout)
    rss1 = rss_bytes(ctx.server.pids())
    m["server_rss_mib"] = round(rss1 / 2**20, 1)
    m["server_rss_before_mib"] = round(rss0 / 2**20, 1)
    m["memory_per_connection_kib"] = round((rss1 - rss0) / users / 1024, 2)
    idle_s = min(IDLE_S, args.duration)
    cpu0, began = ctx.server_cpu(), time.monotonic()
    time.sleep(idle_s)  # the idle window, measured
    idle = (ctx.server_cpu() - cpu0) / (time.monotonic() - began)
    m["idle_server_cpu_s_per_s"] = round(idle, 4)
    _changes(ctx, result, args.rate, args.duration, idle, statuses)
    if args.kill:
        _kill(ctx, result, statuses)
    check_errors(result, counters(ctx))
    close_all(ctx)
    return result
