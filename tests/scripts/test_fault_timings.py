"""scripts/fault_timings.py runs end to end on a tiny cluster (timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.process


def test_fault_timings_measures_both_faults(tmp_path: Path) -> None:
    out = tmp_path / "timings.json"
    result = subprocess.run(
        [sys.executable, "scripts/fault_timings.py", "--clients", "20", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    timings = json.loads(out.read_text())
    assert 0 < timings["ghosts_removed"] < 20
    assert timings["ghost_removal_after_worker_kill_s"] > 0
    assert timings["full_resync_after_coordinator_kill_s"] > 0
