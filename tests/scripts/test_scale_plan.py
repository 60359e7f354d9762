"""The scale scenario's pure parts: what N users need of the machine (limits), the
contact graph they watch (contacts), and how its benchmark set judges its targets."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import pytest

from scripts import bench, bench_scale
from scripts.loadtest import limits
from scripts.loadtest.contacts import contacts
from scripts.loadtest.resume import GIVEN_UP
from scripts.loadtest.scale import settle_deadline

# The machine the scenario was written on: 2 CPUs, 20,000 open files, root without
# CAP_SYS_RESOURCE (a container's), so the hard limit stays; and the same as full root.
HERE = limits.System(
    nofile_soft=20_000,
    nofile_hard=20_000,
    nr_open=1_048_576,
    port_range=(32768, 60999),
    somaxconn=4096,
    conntrack_max=262_144,
    root=False,
)
ROOT = dataclasses.replace(HERE, root=True)
USER = limits.System(nofile_soft=1024, nofile_hard=4096, root=False)


def test_ten_thousand_users_fit_the_machine_as_it_is() -> None:
    plan = limits.plan(10_000, HERE)
    assert plan.ok, plan.refusal()
    assert plan.procs == 2
    assert plan.sources == []  # one address's ports carry 10,000 users twice over
    assert plan.files == 10_000 + limits.SERVER_FILES_SPARE  # one worker holds them all
    assert not plan.raise_hard
    assert plan.memory_budget > 10_000 * 32 * 1024  # the survivor reserves them all
    assert plan.max_connections == 50_000


def test_a_hundred_thousand_users_as_root_raise_files_and_take_addresses() -> None:
    plan = limits.plan(100_000, ROOT)
    assert plan.ok, plan.refusal()
    assert plan.raise_hard and plan.files == 100_000 + limits.SERVER_FILES_SPARE
    assert len(plan.sources) == 8  # 14,116 users per address
    assert plan.sources[0] == "127.0.0.2" and len(set(plan.sources)) == 8
    assert plan.max_connections == 100_000 + limits.SERVER_FILES_SPARE
    assert plan.memory_budget >= 100_000 * 32 * 1024


def test_a_fixed_file_limit_asks_for_workers_enough_to_hold_everyone_after_a_kill() -> None:
    two = limits.plan(100_000, HERE)
    assert [p.limit for p in two.problems] == ["open files (per worker)"]
    fit = 20_000 - limits.SERVER_FILES_SPARE
    assert two.problems[0].command.startswith(
        f"--workers 7 (a worker holds at most {fit:,} users, and one"
    )
    seven = limits.plan(100_000, HERE, workers=7)
    assert seven.ok, seven.refusal()
    assert seven.procs == 6  # 100,000 / (20,000 - 64), rounded up
    assert seven.files == 100_000 // 6 + 1 + limits.SERVER_FILES_SPARE  # six survivors
    assert not seven.raise_hard
    assert seven.max_connections == 50_000
    assert seven.memory_budget >= (100_000 // 6) * 32 * 1024
    # Without a kill, seven workers share the users seven ways.
    assert limits.plan(100_000, HERE, workers=6, kill=False).ok


def test_processes_are_chosen_to_stay_under_the_per_process_file_limit() -> None:
    no_cluster = limits.plan(100_000, USER, cluster=False)
    assert no_cluster.ok
    assert no_cluster.procs == 25  # 100,000 / (4096 - 64), rounded up
    assert no_cluster.files <= USER.nofile_hard
    assert limits.plan(1000, USER, cluster=False, min_procs=3).procs == 3


def test_a_user_without_the_limits_gets_every_one_with_its_command() -> None:
    tight = limits.System(
        nofile_soft=1024,
        nofile_hard=4096,
        port_range=(40000, 40999),
        somaxconn=128,
        conntrack_max=65536,
        root=False,
    )
    plan = limits.plan(100_000, tight, sources=["127.0.0.2"])
    assert not plan.ok
    found = {p.limit: p for p in plan.problems}
    assert set(found) == {
        "open files (per worker)",
        "local ports",
        "net.core.somaxconn",
        "net.netfilter.nf_conntrack_max",
    }
    assert found["open files (per worker)"].command.startswith("--workers 34 ")
    assert found["open files (per worker)"].command.endswith(
        "ulimit -n 101024 (as root with CAP_SYS_RESOURCE, in the shell that runs the generator)"
    )
    assert "ip_local_port_range" in found["local ports"].command
    assert found["net.core.somaxconn"].command == "sysctl -w net.core.somaxconn=1024"
    text = plan.refusal()
    assert all(p.command in text for p in plan.problems)
    assert plan.short().startswith("raise open files")


def test_root_past_nr_open_is_told_to_raise_it() -> None:
    untracked = limits.System(nofile_soft=20_000, nofile_hard=20_000, root=True)
    plan = limits.plan(2_000_000, untracked)
    assert [p.limit for p in plan.problems] == ["open files (per worker)"]
    assert plan.problems[0].command.endswith(f"sysctl -w fs.nr_open={2_000_000 + 1024}")


def test_attempts_in_flight_stay_within_the_listen_backlogs() -> None:
    plan = limits.plan(100_000, HERE, procs=8, concurrency=500)
    assert plan.concurrency == 2 * 1024 // 8
    assert any("lowered" in n for n in plan.notes)
    assert limits.plan(1000, HERE, concurrency=500).concurrency == 500


def test_source_addresses_given_are_checked_not_replaced() -> None:
    three = ["127.0.0.7", "127.0.0.8", "127.0.0.9"]
    assert limits.plan(40_000, HERE).sources == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert limits.plan(40_000, HERE, sources=three).sources == three
    short = limits.plan(40_000, HERE, sources=three[:2], workers=4)
    assert [p.limit for p in short.problems] == ["local ports"]
    assert "give 3 --source-addresses" in short.problems[0].command


def test_loopback_addresses_carry_past_a_byte() -> None:
    assert limits.loopback_sources(1) == []
    many = limits.loopback_sources(300)
    assert many[253] == "127.0.0.255" and many[254] == "127.0.1.0"


# --------------------------------------------------------------------------- contacts


def test_contacts_are_distinct_others_and_the_same_for_the_same_seed() -> None:
    graph = contacts(1000, 20, seed=3)
    assert graph == contacts(1000, 20, seed=3)
    assert graph != contacts(1000, 20, seed=4)
    assert len(graph.counters) == 100
    for i, keys in enumerate(graph.watch):
        if i in graph.counters:
            assert keys == []
        else:
            assert len(keys) == 20 and len(set(keys)) == 20 and i not in keys
            assert all(0 <= j < 1000 for j in keys)


def test_a_few_users_are_watched_by_many() -> None:
    degrees = sorted(contacts(5000, 20, seed=1).in_degrees(), reverse=True)
    assert sum(degrees) == 4500 * 20
    assert degrees[0] > 1000  # the most popular: a fifth of the watchers or more
    assert sum(degrees[:50]) > 0.3 * sum(degrees)  # the top 1 % hold a third
    assert statistics.median(degrees) <= 20 / 2  # most are watched by few


def test_small_graphs_still_fill_every_watchlist() -> None:
    graph = contacts(6, 5, count_fraction=0.0)
    for i, keys in enumerate(graph.watch):
        assert sorted(keys) == [j for j in range(6) if j != i]
    with pytest.raises(ValueError):
        contacts(5, 5)


# --------------------------------------------------------------------------- bench set


def _run(users: int, ok: bool = True, skipped: str = "", **metrics: Any) -> dict[str, Any]:
    out = {"name": bench_scale.name(users), "ok": ok, "metrics": metrics, "params": {}}
    return {**out, "skipped": skipped} if skipped else out


def test_the_scale_set_plugs_into_the_suite() -> None:
    runs = {run.name: run for run in bench.suite()}
    assert all(bench_scale.name(n) in runs for n in bench_scale.SIZES)
    assert all(bench_scale.name(n, pinned=True) in runs for n in bench_scale.SIZES)
    assert runs[bench_scale.BIG].timeout > 900
    assert "scale" in bench.all_sections()


def test_scale_targets_are_met_missed_or_skipped_never_numbers() -> None:
    base = {"memory_per_connection_kib": 14.0, "server_cpu_us_per_change_above_idle": 100.0}
    big = _run(
        100_000,
        **{**base, "server_cpu_us_per_change_above_idle": 130.0},
        change_to_seen_p99_ms=400.0,
        kill_whole_s=30.0,
        kill_bytes_ratio=25.0,
    )
    results = {r["name"]: r for r in (_run(10_000, **base), _run(30_000, **base), big)}
    for n in bench_scale.SIZES:  # the pinned runs are shown, and checked, not judged
        results[bench_scale.name(n, pinned=True)] = {
            **_run(n),
            "name": bench_scale.name(n, pinned=True),
        }
    memory, p99, cpu, flat_memory, kill, checks = bench_scale.targets(results)
    assert memory[2] is p99[2] is flat_memory[2] is kill[2] is checks[2] is True
    assert cpu[2] is False and "1.3x" in cpu[1]  # 30% more at 100,000
    pinned = bench_scale.name(100_000, pinned=True)
    assert bench_scale.targets({**results, pinned: {**results[pinned], "ok": False}})[5][2] is False
    skipped = _run(100_000, ok=False, skipped="raise open files (per worker)")
    results[skipped["name"]] = skipped
    rows = bench_scale.targets(results)
    assert all(row[2] is None for row in rows)
    assert "skipped: raise open files" in rows[0][1]
    assert bench.cell(skipped, "kill_whole_s") == "skipped"


def test_views_settle_after_the_last_user_is_back_not_after_the_kill() -> None:
    """A recovery longer than the settle time still leaves views the whole settle time
    after it (count followers get the number at most once a second: checked at once,
    the last returns had not reached them)."""
    assert settle_deadline(100.0, 180.0, 30.0) == 210.0  # 80 s to come back
    assert settle_deadline(100.0, 101.0, 30.0) == 100.0 + GIVEN_UP + 30.0
