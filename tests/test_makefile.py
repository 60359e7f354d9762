"""What `make run` says before anything starts, and what it writes to its standard output.

These run make itself, with stand-ins for the interpreters where a test would otherwise
install or start a cluster, so each takes a few milliseconds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from scripts.launcher.config import default_metrics_port
from tests.support import ROOT

pytestmark = pytest.mark.process


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in the repository, as a newcomer's shell runs it (not as a sub-make
    of ``make test``, which would add its own lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["TLS_CERT=cert.pem"], ("TLS_CERT", "TLS_KEY")),
        (["TLS_KEY=key.pem"], ("TLS_CERT", "TLS_KEY")),
        (["API_PORT=8766"], ("API_PORT", "API_TOKEN_FILE")),
    ],
)
def test_half_a_configuration_is_refused_naming_the_make_variables(
    given: list[str], named: tuple[str, ...], tmp_path: Path
) -> None:
    # A stand-in for the venv's python: were make to get as far as running it, the
    # test would see what it was given instead of a cluster starting.
    result = make("run", *given, f"VPY={stand_in(tmp_path)}", f"RUNTIME_STAMP={fresh(tmp_path)}")
    assert result.returncode != 0, result
    for name in named:
        assert name in result.stderr, result.stderr
    assert "--tls-key" not in result.stderr and "--api-token-file" not in result.stderr
    assert result.stdout == ""


def stand_in(tmp_path: Path) -> Path:
    """An interpreter that writes one line to stdout for ``-m`` and any script, and
    nothing for ``-c`` (the Makefile's version check)."""
    path = tmp_path / "python"
    path.write_text('#!/bin/sh\ncase "$1" in -c) exit 0;; esac\necho "ran $1"\n')
    path.chmod(0o755)
    return path


def fresh(tmp_path: Path) -> Path:
    """A stamp newer than pyproject.toml: the environment counts as installed."""
    stamp = tmp_path / "stamp"
    stamp.touch()
    return stamp


def test_make_run_writes_only_the_clusters_lines_to_stdout(tmp_path: Path) -> None:
    """With LOG_FORMAT=json every line of stdout must be the launcher's: make echoes no
    command there."""
    python = stand_in(tmp_path)
    result = make("run", "LOG_FORMAT=json", f"VPY={python}", f"RUNTIME_STAMP={fresh(tmp_path)}")
    assert result.returncode == 0, result
    assert result.stdout == "ran scripts/cluster.py\n"


def test_installing_on_the_first_run_writes_nothing_to_stdout(tmp_path: Path) -> None:
    python = stand_in(tmp_path)
    stamp = tmp_path / "missing" / "stamp"
    stamp.parent.mkdir()
    venv = tmp_path / "venv"
    result = make(
        "run", "LOG_FORMAT=json", f"PYTHON={python}", f"VPY={python}", f"VENV={venv}",
        f"RUNTIME_STAMP={stamp}",
    )  # fmt: skip
    assert result.returncode == 0, result
    assert result.stdout == "ran scripts/cluster.py\n"
    assert "ran -m" in result.stderr  # the venv and pip ran, and said so on stderr
    assert stamp.exists()


@pytest.mark.parametrize("role", ["all", "coordinator", "workers"])
def test_make_help_names_the_metrics_port_the_launcher_takes_for_the_role(role: str) -> None:
    result = make("help", f"ROLE={role}")
    assert result.returncode == 0, result
    assert f":{default_metrics_port(role)}/metrics" in result.stdout, result.stdout
