"""scripts/loadtest: the statistics, every scenario at tiny sizes against a real
cluster, and the correctness checks failing against a deliberately broken server.
No timing is asserted here: ``make bench`` measures, the tests only check it runs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.loadtest import scenarios
from scripts.loadtest.__main__ import main
from scripts.loadtest.pool import AgentPool, LoadTestError
from scripts.loadtest.stats import Histogram
from scripts.loadtest.target import Server, alive, free_port, start_baseline, start_cluster

# --------------------------------------------------------------------------- pure


def test_histogram_percentiles_are_within_one_percent() -> None:
    h = Histogram()
    for i in range(1, 1001):
        h.add(i / 1000)  # 1 ms .. 1 s
    assert h.count == 1000
    assert h.percentile(50) == pytest.approx(0.5, rel=0.011)
    assert h.percentile(99) == pytest.approx(0.99, rel=0.011)
    assert h.percentile(100) == h.max == 1.0
    assert h.summary_ms()["p50_ms"] == pytest.approx(500, rel=0.011)


def test_histograms_merge_through_their_dict_form() -> None:
    a, b = Histogram(), Histogram()
    for _ in range(100):
        a.add(0.001)
        b.add(0.1)
    b.add(-1.0)  # clock granularity: counts as zero
    merged = Histogram.merged([Histogram.from_dict(a.to_dict()), Histogram.from_dict(b.to_dict())])
    assert merged.count == 201
    assert merged.percentile(25) == pytest.approx(0.001, rel=0.011)
    assert merged.percentile(75) == pytest.approx(0.1, rel=0.011)
    assert Histogram().percentile(99) == 0.0


# --------------------------------------------------------------------------- scenarios


@pytest.fixture(scope="module")
def cluster() -> Iterator[Server]:
    server = start_cluster(2, free_port())
    yield server
    pids = server.pids()
    server.stop()
    assert not any(alive(p) for p in pids), "the cluster outlived stop()"


@pytest.fixture
def ctx(cluster: Server) -> Iterator[scenarios.Context]:
    with AgentPool(2, cluster.url, os.urandom(16)) as pool:
        yield scenarios.Context(pool, cluster, concurrency=20, settle_timeout=10.0, quiet=True)


def assert_ok(result: scenarios.Result) -> None:
    assert result.ok, result.failures


def test_mass_join_reports_convergence_and_frames(ctx: scenarios.Context) -> None:
    result = scenarios.mass_join(ctx, 12)
    assert_ok(result)
    m = result.metrics
    assert m["auth_per_s"] > 0 and m["convergence_s"] >= 0
    assert m["update_frames"] > 0 or m["join_to_seen_samples"] == 0
    assert m["server_cpu_s"] >= 0


def test_churn_sees_every_change(ctx: scenarios.Context) -> None:
    result = scenarios.churn(ctx, watchers=6, rate=10, duration=1.5, cooldown=0.5)
    assert_ok(result)
    assert result.metrics["changes"] > 0
    assert result.metrics["update_latency_samples"] > 0
    assert result.metrics["frames_delivered"] > 0


def test_reconnect_storm_brings_the_lobby_back(ctx: scenarios.Context) -> None:
    result = scenarios.reconnect_storm(ctx, 10)
    assert_ok(result)
    assert result.metrics["reconnected"] == 10
    assert result.metrics["whole_again_s"] is not None


def test_messages_pairs_clients_on_different_workers(ctx: scenarios.Context) -> None:
    result = scenarios.messages(ctx, pairs=2, duration=1.0, rate=10, window=4, body_bytes=32)
    assert_ok(result)
    assert result.metrics["messages"] == 2 * 2 * 10
    assert result.metrics["cross_worker_pairs"] >= 1  # placement is the kernel's choice


def test_pairs_prefer_clients_on_different_workers() -> None:
    clients = {i: ("127.0.0.1", 1000 + i) for i in range(6)}
    peers = {("127.0.0.1", 1000 + i): (7 if i < 4 else 8) for i in range(6)}
    pairs = scenarios._pair(clients, peers, 3)
    assert len(pairs) == 3
    assert sum(peers[clients[a]] != peers[clients[b]] for a, b in pairs) == 2
    assert len({i for p in pairs for i in p}) == 6


def test_idle_measures_memory_per_connection(ctx: scenarios.Context) -> None:
    result = scenarios.idle(ctx, 8, hold=0.5)
    assert_ok(result)
    assert result.metrics["server_processes"] == 3
    assert result.metrics["rss_connected_mib"] > 0


def test_fanout_against_the_cluster(ctx: scenarios.Context) -> None:
    result = scenarios.fanout(ctx, watchers=5, changes=6, rate=12, frame_bytes=120, bare=False)
    assert_ok(result)
    assert result.metrics["cpu_us_per_frame"] > 0


# --------------------------------------------------------------------------- the CLI


def test_cli_against_the_bare_server_writes_json_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bare.json"
    argv = [
        "--start",
        "bare",
        "--procs",
        "1",
        "--quiet",
        "--json",
        str(out),
        "fanout",
        "--watchers",
        "4",
        "--changes",
        "5",
        "--rate",
        "50",
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["ok"] and result["metrics"]["frames_delivered"] == 20


def test_cli_refuses_scenarios_the_bare_server_cannot_serve(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert (
        main(["--start", "bare", "--procs", "1", "--quiet", "--json", str(out), "mass-join", "3"])
        == 1
    )
    assert not json.loads(out.read_text())["ok"]


# --------------------------------------------------------------------------- the checks fail


@pytest.mark.parametrize(
    ("fault", "scenario", "complaint"),
    [
        ("gap", "mass-join", "protocol violations"),
        ("lose-leave", "churn", "did not settle"),
        ("lose-message", "messages", "lost"),
    ],
)
def test_checks_fail_against_a_broken_server(fault: str, scenario: str, complaint: str) -> None:
    server = start_baseline(free_port(), fault=fault)
    try:
        with AgentPool(2, server.url, os.urandom(16)) as pool:
            ctx = scenarios.Context(pool, server, concurrency=20, settle_timeout=2.0, quiet=True)
            if scenario == "mass-join":
                result = scenarios.mass_join(ctx, 12)
            elif scenario == "churn":
                result = scenarios.churn(ctx, watchers=4, rate=10, duration=1.0, cooldown=0.3)
            else:
                result = scenarios.messages(
                    ctx, pairs=1, duration=0.5, rate=10, window=2, body_bytes=16
                )
    finally:
        server.stop()
    assert not result.ok
    assert any(complaint in failure for failure in result.failures), result.failures


def test_a_client_that_cannot_connect_fails_the_run() -> None:
    server = start_baseline(free_port())
    url = server.url
    server.stop()  # nothing listens there any more
    with AgentPool(1, url, os.urandom(16)) as pool:
        ctx = scenarios.Context(pool, server, concurrency=5, quiet=True, attempts=2)
        with pytest.raises(LoadTestError, match="could not connect"):
            scenarios.connect(ctx, range(2), "x", watch=False)
