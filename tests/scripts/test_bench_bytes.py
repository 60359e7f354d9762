"""The bytes-per-entry benchmark set measures the worker's encoders (pure)."""

from __future__ import annotations

from scripts import bench_bytes


def test_entries_cost_what_the_frames_hold() -> None:
    v1, v2 = bench_bytes.measure(1, "online"), bench_bytes.measure(2, "online")
    # protocol 1: {"publicKey":"<64 hex>"} and a comma; protocol 2: 32 key bytes, flags
    assert v1["lobby_snapshot_b_per_entry"] == 81
    assert v2["lobby_snapshot_b_per_entry"] == v2["watch_snapshot_b_per_entry"] == 33
    # (a batch's frame header is 2 bytes longer than an empty one's: 0.02 B an entry)
    assert v2["batch_left_b_per_entry"] == 32.02
    custom = bench_bytes.measure(2, "custom")
    status, data = bench_bytes.RECORDS["custom"]
    assert custom["lobby_snapshot_b_per_entry"] == 33 + 2 + len(status) + len(data)
    # a watcher's routed update of one key is the whole lobby's, byte for byte
    assert v2["watch_join_delta_b"] == v2["join_delta_b"]


def test_targets_judge_version_2_against_version_1() -> None:
    res = {
        run.name: {
            "ok": True,
            "metrics": bench_bytes.measure(int(run.scenario[1]), run.scenario[3]),
        }
        for run in bench_bytes.runs()
    }
    rows = bench_bytes.targets(res)
    assert rows and all(met for _label, _shown, met in rows)
    res["bytes v2 online"] = {"ok": False, "metrics": {}}
    assert all(met is None for _label, _shown, met in bench_bytes.targets(res))
