"""scripts/coordinator_costs.py: the pure-core part at a tiny size produces sane figures
and the JSON that bench.py renders (timings are measured, never asserted), and bench.py
replaces only its own section of a report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from scripts import bench, coordinator_costs
from scripts.coordinator_bench.pure import EVENT_KINDS

TINY = [
    "--pure-only",
    "--sizes",
    "20,60",
    "--rounds",
    "2",
    "--round-events",
    "30",
    "--batch",
    "10",
    "--flush-keys",
    "1,5",
    "--quiet",
]


MACHINE = {"cpu": "test", "python": "3", "zmq": "4", "commit": "abc", "date": "today"}


@pytest.fixture(autouse=True)
def no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """The script asks git for the commit, a process these tests may not start."""
    monkeypatch.setattr(coordinator_costs, "describe_machine", lambda: MACHINE)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_pure_part_writes_positive_figures_under_the_expected_keys(tmp_path: Path) -> None:
    out = tmp_path / "costs.json"
    assert coordinator_costs.main([*TINY, "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    assert {"machine", "command", "pure", "derived", "wall_s"} <= set(result)
    assert result["machine"] == MACHINE
    assert "process" not in result
    assert result["command"] == "python scripts/coordinator_costs.py " + " ".join(
        a for a in TINY if a != "--quiet"
    )
    pure = result["pure"]
    assert pure["sizes"] == [20, 60]
    assert set(pure["events"]) == set(EVENT_KINDS)
    for kind, by_size in pure["events"].items():
        assert set(by_size) == {"20", "60"}, kind
        for figures in by_size.values():
            assert positive(figures["us"]) and positive(figures["core_us"]), (kind, figures)
        assert positive(pure["scaling"][kind])
    assert [f["keys"] for f in pure["flush"]] == [1, 5]
    for flush in pure["flush"]:
        for name in ("join_flush_us", "leave_flush_us", "update_encode_us", "update_bytes"):
            assert positive(flush[name]), (name, flush)
    # A snapshot holds every online user: one 64-character key (66 bytes packed) each.
    assert [s["users"] for s in pure["snapshot"]] == [20, 60]
    for snap in pure["snapshot"]:
        assert snap["bytes"] > 64 * snap["users"] and positive(snap["us"])
        assert positive(snap["cached_us"])  # another worker asking at the same seq
    derived = result["derived"]
    for name in ("pure_join_leave_us", "pure_route_us", "update_bytes_per_key"):
        assert positive(derived[name]), name
    assert derived["users_at_max_message_bytes"] > 100_000


def test_the_report_renders_and_replaces_only_its_own_section(tmp_path: Path) -> None:
    out = tmp_path / "costs.json"
    coordinator_costs.main([*TINY, "--json", str(out)])
    run = {"name": bench.COORDINATOR_RUN, "group": "coordinator", "ok": True}
    section = bench.coordinator_section({**run, "metrics": json.loads(out.read_text())})
    assert section[0] == bench.SECTION_BEGIN and section[-1] == bench.SECTION_END
    assert "## Coordinator capacity" in section
    assert any(line.startswith("| join (Authed)") for line in section)

    report = f"# Benchmarks\n\nbefore\n\n{bench.NOTES_TITLE}\n\nnotes\n"
    first = bench.splice_section(report, section)
    assert first.index("before") < first.index(bench.SECTION_BEGIN) < first.index("notes")
    failed = bench.coordinator_section({**run, "ok": False, "failures": ["exit 2"]})
    second = bench.splice_section(first, failed)
    assert second.count(bench.SECTION_BEGIN) == 1 and "The measurement failed" in second
    assert second.replace("\n".join(failed), "\n".join(section)) == first
    assert bench.existing_section(second) == failed
