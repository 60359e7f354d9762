"""Tests of the shipped deployment files (docs/deploy/). Those that run a tool (nginx,
promtool, systemd-analyze) skip where it is missing, saying why, except under CI
(``PRESENCE_REQUIRE_TOOLS=1``, set by ``.ci/run``, which installs them), where they fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import ROOT

DEPLOY = ROOT / "docs" / "deploy"


def tool(name: str, package: str) -> str:
    """The path of the program ``name`` (from Debian's ``package``), or skip (fail
    under CI)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is not None:
        return found
    why = f"{name} is missing (Debian: apt-get install {package})"
    if os.environ.get("PRESENCE_REQUIRE_TOOLS"):
        pytest.fail(f"{why}; the deployment tests must run here: PRESENCE_REQUIRE_TOOLS")
    pytest.skip(why)


def deploy_file(name: str) -> Path:
    path = DEPLOY / name
    assert path.is_file(), path
    return path
