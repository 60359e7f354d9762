"""The resume benchmark set of ``make bench``: what a version 2 client costs to bring
back when it resumes the view it held, against a snapshot (the ``blip`` and
``kill-worker`` scenarios of :mod:`scripts.loadtest.resume`).

Both runs are pinned (server on CPU 0, generator on CPU 1). The generator runs two
processes on its CPU (each holds half the connections, under a 20,000 open-file limit)
and binds two loopback addresses (a close and a reconnection of 20,000 outgrow one
address's ephemeral ports).

The blip runs at 20,000 users (about 2 minutes). The kill runs at 6,000 users, 3,000
a worker: at 20,000 on this 2-core machine it does not finish. With the server on one
CPU its workers miss heartbeats (the coordinator gives up a live worker's 10,000 users
at once) while 20,000 clients choose what they follow, and after the kill the lost
clients come back at 30-90 authentications a second (thousands refused with 1013): a
survivor holds at most 16,384 connections under the default ``--memory-budget``, and
the generator's CPU, decoding lobby frames of 20,000 entries for the clients of the
whole lobby, leaves backlogs on the server that make its budget refuse newcomers.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import CLUSTER, PINNED, Row, Run, fmt, metric

USERS = 20_000
GENERATOR = ("--protocol", "2", "--procs", "2", "--source-addresses", "127.0.0.2,127.0.0.3")
"""Version 2 clients, two generator processes, two source addresses (module docstring)."""
BLIP = ("blip", str(USERS), "--probes", "4", "--blips", "3", "--seconds", "5", "--rate", "15")
"""Four probes of the whole lobby and four of a 50-key watchlist, three 5 s blips each,
under 15 background changes a second."""
KILL_USERS = 6_000
KILL = ("kill-worker", str(KILL_USERS), "--whole", "60", "--watch", "50")
"""60 clients of the whole lobby (1 %), the others a watchlist of 50 random keys."""

BLIP_RUN = "blip 20000 pinned"
KILL_RUN = "kill-worker 6000 pinned"

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "resume-blip": (
        "resume: a 5 s blip in a 20,000-user lobby",
        [
            "lobby_snapshot_bytes",
            "lobby_resume_bytes",
            "lobby_resume_pct_p50",
            "lobby_resume_pct_max",
            "lobby_delta_joined",
            "lobby_delta_updated",
            "lobby_delta_left",
            "watch_snapshot_bytes",
            "watch_resume_bytes",
            "watch_resume_pct_max",
            "background_changes",
            "resumed",
        ],
    ),
    "resume-kill": (
        "resume: one of two workers killed under 6,000 users",
        [
            "snapshot_lost",
            "snapshot_bytes",
            "resume_bytes",
            "bytes_ratio",
            "snapshot_whole_s",
            "resume_whole_s",
            "whole_s_ratio",
            "snapshot_lobby_bytes",
            "resume_lobby_bytes",
            "snapshot_watch_bytes",
            "resume_watch_bytes",
            "resume_lobby_delta_updated",
            "resume_lobby_delta_left",
            "resume_watch_delta_updated",
            "resume_watch_delta_left",
            "snapshot_auth_per_s",
            "resume_auth_per_s",
            "snapshot_retried_1013",
            "resume_retried_1013",
        ],
    ),
}


def runs() -> list[Run]:
    target = (*CLUSTER, *GENERATOR, *PINNED)
    return [
        Run(BLIP_RUN, target, BLIP, "resume-blip"),
        Run(KILL_RUN, target, KILL, "resume-kill"),
    ]


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    worst = metric(res, BLIP_RUN, "lobby_resume_pct_max")
    median = metric(res, BLIP_RUN, "lobby_resume_pct_p50")
    watch = metric(res, BLIP_RUN, "watch_resume_pct_max")
    size = metric(res, BLIP_RUN, "lobby_snapshot_bytes")
    rows: list[Row] = [
        (
            "5 s blip in a 20,000-user lobby: bytes to bring it back <= 1% of a snapshot's",
            f"whole-lobby probes: at most {fmt(worst, '%')} (median {fmt(median, '%')}) of "
            f"{fmt(size, ' bytes')}; watchlist probes (50 keys): at most {fmt(watch, '%')}",
            None if worst is None else worst <= 1,
        )
    ]
    ratio = metric(res, KILL_RUN, "bytes_ratio")
    snap, resumed = metric(res, KILL_RUN, "snapshot_bytes"), metric(res, KILL_RUN, "resume_bytes")
    rows.append(
        (
            "kill 1 of 2 workers (3,000 of 6,000 users; 20,000 does not finish here): "
            ">= 20x fewer bytes resuming",
            f"{fmt(ratio, 'x')} ({fmt(resumed, ' bytes')} vs {fmt(snap, ' bytes')} by snapshots)",
            None if ratio is None else ratio >= 20,
        )
    )
    sooner = metric(res, KILL_RUN, "whole_s_ratio")
    a, b = metric(res, KILL_RUN, "resume_whole_s"), metric(res, KILL_RUN, "snapshot_whole_s")
    rows.append(
        (
            "the same kill: whole again >= 2x sooner resuming",
            f"{fmt(sooner, 'x')} ({fmt(a, ' s')} vs {fmt(b, ' s')} by snapshots)",
            None if sooner is None else sooner >= 2,
        )
    )
    return rows
