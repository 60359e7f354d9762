"""Worker settings refuse values that would make a bound meaningless."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from workers.settings import WorkerSettings


@pytest.mark.parametrize("field", ["msg_burst", "auth_rate", "lag_bytes", "auth_wait"])
def test_non_positive_limits_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        WorkerSettings(events_endpoint="ipc://e", updates_endpoint="ipc://u", **{field: 0})


@pytest.mark.process
def test_command_line_reports_a_bad_value_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--msg-burst", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--msg-burst must be positive" in result.stderr
    assert "Traceback" not in result.stderr
