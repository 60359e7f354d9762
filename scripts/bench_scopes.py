"""The benchmark set of what version 2 clients follow (a part of ``make bench``; see
``scripts/bench.py``): watchlists against the whole lobby at 20,000 clients, and status
changes against joins and leaves under 2,000 whole-lobby watchers.

Both runs are pinned (the server on CPU 0, the generator on CPU 1), where their targets
are judged, and each compares its two loads on the same clients of one server, back to
back (``python -m scripts.loadtest watchlists``/``status-churn``).

A whole lobby of 20,000 followers cannot be loaded on this machine with its own
generator: each change goes to all 20,000, and each of them joins with a snapshot of
all 20,000 (a version 2 mass join of 5,000 whole-lobby clients alone takes the
generator 50 s). So the watchlist run has four windows on its 20,000 clients: idle,
then the same status changes followed by nobody (empty watchlists), by 50-key
watchlists, and by 1,000 whole-lobby followers (the others on empty watchlists). The
whole lobby's CPU per change at 20,000 is estimated from these, linear in its
followers: what a change costs that nobody follows, plus 20,000 times what one
whole-lobby follower adds to it. Every window's CPU is counted above the idle one's.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import CLUSTER, PINNED, Row, Run, fmt, metric

V2 = ("--protocol", "2")
SOURCES = ("--source-addresses", "127.0.0.4,127.0.0.5", "--procs", "2")
"""20,000 connections and their TIME_WAITs from two addresses (each has ~28,000
ephemeral ports), held by two generator processes (a process may hold 20,000 files
where the hard limit is that)."""
CLIENTS, LOBBY_WATCHERS = 20_000, 1_000
WATCHLISTS = (
    "watchlists",
    str(CLIENTS),
    "--watch",
    "50",
    "--rate",
    "200",
    "--duration",
    "8",
    "--lobby-watchers",
    str(LOBBY_WATCHERS),
)
STATUS = ("status-churn", "--users", "2000", "--every", "10", "--duration", "8")
"""Each user changes status every 10 s: within the server's record rate (1/s, a burst
of 5), which refuses (``rate_limited``) faster changes; the run counts refusals."""
WATCH_RUN, STATUS_RUN = "watchlists 20000 pinned", "status-churn 2000 pinned"

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "watchlists": (
        "watchlists against the whole lobby (20,000 clients x 50 keys, 200 status changes/s)",
        [
            "idle_server_cpu_s_per_s",
            "none_cpu_us_per_change_above_idle",
            "watch_changes_per_s",
            "watch_cpu_us_per_change_above_idle",
            "watch_watch_latency_p99_ms",
            "watch_watch_frames_per_change_per_watcher",
            "watch_watch_bytes_per_change_per_watcher",
            "watch_generator_cpu_s",
            "lobby_changes_per_s",
            "lobby_cpu_us_per_change_above_idle",
            "lobby_lobby_latency_p99_ms",
            "lobby_lobby_frames_per_change_per_watcher",
            "lobby_lobby_bytes_per_change_per_watcher",
            "lobby_generator_cpu_s",
            "lobby_cpu_us_per_change_per_watcher",
            "whole_lobby_cpu_us_per_change_at_n",
            "watch_over_whole_lobby",
        ],
    ),
    "status-churn": (
        "status changes against joins and leaves (2,000 whole-lobby users, 200 changes/s)",
        [
            "status_changes_per_s",
            "status_refused",
            "status_cpu_us_per_change",
            "status_lobby_latency_p99_ms",
            "status_lobby_frames_per_change_per_watcher",
            "status_lobby_bytes_per_change_per_watcher",
            "presence_changes_per_s",
            "presence_cpu_us_per_change",
            "presence_lobby_latency_p99_ms",
            "presence_lobby_frames_per_change_per_watcher",
            "presence_lobby_bytes_per_change_per_watcher",
            "status_over_presence",
        ],
    ),
}


def runs() -> list[Run]:
    return [
        Run(WATCH_RUN, (*CLUSTER, *V2, *SOURCES, *PINNED), WATCHLISTS, "watchlists"),
        Run(STATUS_RUN, (*CLUSTER, *V2, *PINNED), STATUS, "status-churn"),
    ]


def _checks(res: dict[str, dict[str, Any]], name: str) -> str:
    run = res.get(name)
    return "checks passed" if run is not None and run.get("ok") else "checks FAILED"


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    def m(name: str, key: str) -> Any:
        return metric(res, name, key)

    ratio = m(WATCH_RUN, "watch_over_whole_lobby")
    cpu = (
        f"{fmt(ratio, 'x')} ({fmt(m(WATCH_RUN, 'watch_cpu_us_per_change_above_idle'), ' µs')} "
        f"vs {fmt(m(WATCH_RUN, 'whole_lobby_cpu_us_per_change_at_n'), ' µs')} for the whole "
        f"lobby, from {fmt(m(WATCH_RUN, 'lobby_watchers'))} of its followers: made "
        f"{fmt(m(WATCH_RUN, 'lobby_changes_per_s'), '/s')}, p99 "
        f"{fmt(m(WATCH_RUN, 'lobby_lobby_latency_p99_ms'), ' ms')}, generator "
        f"{fmt(m(WATCH_RUN, 'lobby_generator_cpu_s'), ' s')})"
    )
    p99 = m(WATCH_RUN, "watch_watch_latency_p99_ms")
    ok = bool(res.get(WATCH_RUN, {}).get("ok"))
    status = m(STATUS_RUN, "status_over_presence")
    return [
        (
            "watchlists, 20,000 clients x 50 keys, 200 changes/s, pinned: server CPU per "
            "change <= 1/20 (0.05x) of the whole lobby's at the same size",
            cpu,
            None if ratio is None else ratio <= 0.05,
        ),
        (
            "watchlists, same run: change-to-seen p99 <= 100 ms, no gaps, views and "
            "statuses equal the truth (sampled)",
            f"p50 {fmt(m(WATCH_RUN, 'watch_watch_latency_p50_ms'), ' ms')}, p99 "
            f"{fmt(p99, ' ms')}, made {fmt(m(WATCH_RUN, 'watch_changes_per_s'), '/s')}, "
            f"{_checks(res, WATCH_RUN)}",
            None if p99 is None else p99 <= 100 and ok,
        ),
        (
            "status churn, 2,000 whole-lobby users each every 10 s, pinned: a status "
            "change costs the server no more than a join or leave (<= 1.0x)",
            f"{fmt(status, 'x')} ({fmt(m(STATUS_RUN, 'status_cpu_us_per_change'), ' µs')} vs "
            f"{fmt(m(STATUS_RUN, 'presence_cpu_us_per_change'), ' µs')}), "
            f"{fmt(m(STATUS_RUN, 'status_refused'))} refused, {_checks(res, STATUS_RUN)}",
            None if status is None else status <= 1.0,
        ),
    ]
