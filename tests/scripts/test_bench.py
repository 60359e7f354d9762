"""The benchmark suite's plumbing (pure): which runs it makes, how a bare run matches
its cluster twin's frames, and how targets are judged. Nothing here measures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts import bench


def test_every_pinned_run_pins_and_no_other_run_does() -> None:
    for run in bench.suite():
        pinned = run.name.endswith(" pinned")
        assert (run.target[-len(bench.PINNED) :] == bench.PINNED) == pinned, run.name
        assert run.target.count("--server-cpus") == int(pinned), run.name


def test_every_bare_run_follows_its_cluster_twin() -> None:
    names = [run.name for run in bench.suite()]
    bare = [n for n in names if " bare" in n]
    assert bare
    for name in bare:
        twin = name.replace(" bare", " cluster")
        assert names.index(twin) < names.index(name), name


def test_a_bare_run_pushes_the_frames_its_twin_delivered() -> None:
    run = next(r for r in bench.suite() if r.name == "churn fanout bare pinned")
    done = [
        {"name": "churn fanout cluster", "ok": True, "metrics": {"frame_bytes_mean": 111}},
        {"name": "churn fanout cluster pinned", "ok": True, "metrics": {"frame_bytes_mean": 222}},
    ]
    assert bench.same_frame(run, done).scenario[-2:] == ("--frame-bytes", "222")
    assert bench.same_frame(run, done[:1]) == run  # no twin measured: unchanged


def _result(name: str, **metrics: float) -> dict[str, Any]:
    return {"name": name, "ok": True, "metrics": metrics, "params": {"clients": 5000}}


def test_targets_are_judged_on_the_pinned_runs() -> None:
    runs = [
        _result("fanout cluster pinned", cpu_us_per_frame=7.0),
        _result("fanout bare pinned", cpu_us_per_frame=10.0),
        _result("fanout cluster", cpu_us_per_frame=20.0),  # shared: would miss
        _result("fanout bare", cpu_us_per_frame=10.0),
        _result("messages cluster pinned", messages_per_s=10_240.0, round_trip_p99_ms=60.0),
        _result("messages cluster", messages_per_s=10_240.0, round_trip_p99_ms=20.0),
        _result("reconnect-storm cluster", whole_again_s=9.5, retried_1013=0),
    ]
    rows = {
        target: (shown, met) for target, shown, met in bench.targets({r["name"]: r for r in runs})
    }
    fanout = next(k for k in rows if k.startswith("fan-out"))
    assert rows[fanout][1] is True
    assert "shared CPUs: 2x" in rows[fanout][0]
    messages = next(k for k in rows if k.startswith("messages"))
    assert rows[messages][1] is False  # the pinned p99 misses, whatever the shared one did
    storm = next(k for k in rows if k.startswith("reconnect-storm"))
    assert rows[storm][1] is True and "5000" in storm
    idle = next(k for k in rows if k.startswith("idle"))
    assert rows[idle][1] is None  # not run: neither met nor missed


def test_the_plot_has_a_line_for_every_plotted_run() -> None:
    lines = {label for label, _style in bench.PLOT_LINES}
    plotted = [r.name.split(" ", 1)[1] for r in bench.suite() if r.group == "plot"]
    assert set(plotted) == lines


def test_a_report_from_saved_results_names_the_commit_they_measured(tmp_path: Path) -> None:
    measured = {"cpu": "some CPU", "commit": "abc1234", "date": "2026-01-01 00:00 UTC"}
    result = {**_result("idle cluster", kib_per_connection=12.0), "group": "idle"}
    result.update(command="python -m scripts.loadtest idle", wall_s=1.0, machine=measured)
    out = tmp_path / "BENCHMARKS.md"
    bench.write_report([result], out, None, "make bench", "")
    text = out.read_text()
    assert "| commit | abc1234 |" in text and "| date | 2026-01-01 00:00 UTC |" in text


def test_the_peer_rows_judge_cpu_per_change_and_latencies_against_the_node_peer() -> None:
    from scripts import bench_peer

    names = [run.name for run in bench_peer.runs()]
    assert len(names) == len(set(names)) == 6
    runs = [
        _result(bench_peer.cluster_run("mass-join"), server_cpu_us_per_change=0.7,
                convergence_s=2.0, join_to_seen_p50_ms=100.0, join_to_seen_p99_ms=300.0),
        _result(bench_peer.node_run("mass-join"), server_cpu_us_per_change=1.0,
                convergence_s=2.5, join_to_seen_p50_ms=100.0, join_to_seen_p99_ms=299.0),
        _result(bench_peer.cluster_run("churn"), server_cpu_us_per_change=0.9),
        _result(bench_peer.node_run("churn"), server_cpu_us_per_change=1.0),
    ]  # fmt: skip
    rows = {t: met for t, _shown, met in bench_peer.targets({r["name"]: r for r in runs})}

    def row(start: str) -> bool | None:
        return next(met for target, met in rows.items() if target.startswith(start))

    assert row("mass-join: server CPU") is True  # 0.7x
    assert row("churn: server CPU") is False  # 0.9x
    assert row("reconnect-storm: server CPU") is None  # not run
    assert row("mass-join 2000: converged") is True
    assert row("mass-join 2000: join-to-seen p50") is False  # level is not ahead
    assert row("mass-join 2000: join-to-seen p99") is False


def test_the_resume_targets_judge_the_ratios_and_a_failed_run_is_neither() -> None:
    from scripts import bench_resume

    blip = _result(bench_resume.BLIP_RUN, lobby_resume_pct_max=0.4, lobby_resume_pct_p50=0.3)
    kill = _result(bench_resume.KILL_RUN, bytes_ratio=25.0, whole_s_ratio=1.2)
    rows = bench_resume.targets({r["name"]: r for r in (blip, kill)})
    assert [met for _, _, met in rows] == [True, True, False]
    assert "0.4%" in rows[0][1]
    failed = {**kill, "ok": False}
    rows = bench_resume.targets({bench_resume.KILL_RUN: failed})
    assert [met for _, _, met in rows] == [None, None, None]
    assert "failed" in rows[1][1]


def test_the_auth_rows_show_the_rate_per_core_and_a_failed_run_is_neither() -> None:
    from scripts import bench_auth

    paced = _result(
        bench_auth.PACED, watch_auths_per_s_per_core=800.0, watch_worker_cpu_us_per_auth=1250.0
    )
    rows = bench_auth.targets({bench_auth.PACED: paced})
    assert [met for _, _, met in rows] == [True, None, None]  # the lobby load and the storm: none
    assert "800/s per core" in rows[0][1] and "1,250 µs" in rows[0][1]
    rows = bench_auth.targets({bench_auth.PACED: {**paced, "ok": False}})
    assert [met for _, _, met in rows] == [None, None, None]
    assert "failed" in rows[0][1]


def test_a_report_from_runs_at_several_commits_names_each_with_its_runs() -> None:
    from scripts.bench import commits_of

    def run(name: str, commit: str) -> dict[str, Any]:
        return {"name": name, "machine": {"commit": commit}}

    assert commits_of([run("a", "c1"), run("b", "c1")], "c1") == "c1"
    mixed = [run("a", "c1"), run("b", "c2"), run("c", "c1"), run("d", "c3")]
    assert commits_of(mixed, "c1") == "c1 (the other runs); c2 (b); c3 (d)"
