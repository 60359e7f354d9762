"""Every script runs as ``.venv/bin/python scripts/X.py`` from the repository root, and
with a Python that lacks the project's dependencies it says which Python to use instead
of printing a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.process

STDLIB_ONLY = ("scripts/webhook_receiver.py",)
"""Examples for other machines, written to need nothing but Python's standard library."""
SCRIPTS = sorted(
    path.relative_to(ROOT).as_posix()
    for path in (ROOT / "scripts").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
    and path.relative_to(ROOT).as_posix() not in STDLIB_ONLY
)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_without_the_dependencies_is_told_which_to_use(script: str) -> None:
    result = run_script("-S", script, "--help")  # -S: no site-packages, so no dependency
    assert result.returncode == 1, result
    assert "run it with .venv/bin/python (make install first)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script", STDLIB_ONLY)
def test_a_standard_library_example_runs_on_a_python_without_the_dependencies(script: str) -> None:
    result = run_script("-S", script, "--help")
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: "), result.stdout


def test_the_venvs_python_runs_a_script_as_a_file() -> None:
    result = run_script("scripts/page_timings.py", "--help")
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: page_timings.py")
