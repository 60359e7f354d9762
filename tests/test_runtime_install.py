"""The production install: ``make install-runtime`` (what ``make run`` depends on) makes
a virtualenv with the project and its runtime dependencies alone, and the launcher
started from it serves the page, the metrics and an authenticated client, with no test
package importable there (``make watch`` and ``make keys`` use it too).

The virtualenv is made by the Makefile's own rule, in the test's directory (pip's cache
makes it a few seconds once ``make install`` ran).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.client import LobbyClient
from tests.support import ROOT, ManagedProcess, free_port, http, run

pytestmark = pytest.mark.process

TEST_ONLY = ("pytest", "hypothesis", "mypy", "ruff", "trustme", "playwright", "picows", "yaml")
"""The test extra's packages (pyproject.toml): none may be needed to serve."""


def test_the_runtime_install_serves_without_any_test_package(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    make = ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={sys.executable}"]
    made = subprocess.run(
        [*make, "install-runtime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    python = str(venv / "bin" / "python")
    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run(
        [python, "-c", probe, *TEST_ONLY], capture_output=True, text=True, timeout=30
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [], "test packages in the runtime install"
    for script in ("watch_lobby.py", "backbone_keys.py"):  # make watch, make keys
        helped = subprocess.run(
            [python, f"scripts/{script}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert helped.returncode == 0, helped.stderr

    port, metrics = free_port(), free_port()
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = ""  # the tests' own packages must not leak in
    launcher = ManagedProcess(
        "scripts.cluster",
        ["--workers", "1", "--port", str(port), "--metrics-port", str(metrics)],
        env=env,
        python=python,
    )
    try:
        launcher.wait_ready(timeout=30)
        run(scenario(port, metrics))
    finally:
        code = launcher.stop(timeout=20)
    assert code == 0, launcher.output()
    launcher.assert_no_traceback()


async def scenario(port: int, metrics: int) -> None:
    status, _, page = await http(port, path="/")
    assert status == 200 and b"<html" in page.lower()
    async with LobbyClient.connect(f"ws://127.0.0.1:{port}/ws") as me:
        assert me.public_key in me.view.online
    status, _, scrape = await http(metrics, path="/metrics")
    assert status == 200
    assert b'process_resident_memory_bytes{process="w1"}' in scrape
    assert b"presence_authentications_total" in scrape
