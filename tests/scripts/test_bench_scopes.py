"""The benchmark set of what version 2 clients follow (pure): how its targets are
judged, and the generator's choices of watchlists, statuses and order of changes."""

from __future__ import annotations

from typing import Any

from scripts import bench, bench_scopes
from scripts.loadtest.records import schedule, status_name, watchlist


def _result(name: str, ok: bool = True, **metrics: float) -> dict[str, Any]:
    return {"name": name, "ok": ok, "metrics": metrics, "params": {}}


def _rows(*results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    return bench_scopes.targets({r["name"]: r for r in results})


def test_the_set_plugs_into_the_suite_with_its_sections() -> None:
    names = [run.name for run in bench.suite()]
    assert bench_scopes.WATCH_RUN in names and bench_scopes.STATUS_RUN in names
    assert {"watchlists", "status-churn"} <= set(bench.all_sections())


def test_targets_are_met_missed_or_failed() -> None:
    watch = _result(
        bench_scopes.WATCH_RUN,
        watch_over_whole_lobby=0.04,
        watch_watch_latency_p99_ms=120.0,
    )
    status = _result(bench_scopes.STATUS_RUN, status_over_presence=0.5, status_refused=0)
    cpu, latency, churn = _rows(watch, status)
    assert cpu[2] is True and latency[2] is False and churn[2] is True
    broken = _result(bench_scopes.WATCH_RUN, ok=False, watch_watch_latency_p99_ms=10.0)
    cpu, latency, churn = _rows(broken)
    assert cpu[2] is latency[2] is churn[2] is None  # a failed run is never a number
    assert "failed" in latency[1]


def test_every_status_is_its_own_and_within_the_protocols_bound() -> None:
    names = {status_name(a, n) for a in range(3) for n in (0, 1, 10**13)}
    assert len(names) == 9
    assert max(len(s.encode()) for s in names) <= 32


def test_watchlists_are_drawn_by_index_and_each_client_changes_once_a_round() -> None:
    universe = [f"{i:064x}" for i in range(100)]
    assert watchlist(7, universe, 50) == watchlist(7, universe, 50) != watchlist(8, universe, 50)
    assert len(set(watchlist(7, universe, 50))) == 50
    assert len(watchlist(7, universe[:10], 50)) == 10
    order = schedule([5, 3, 9, 1], seed=2)
    assert sorted(order) == [1, 3, 5, 9] and order == schedule([9, 1, 5, 3], seed=2)
