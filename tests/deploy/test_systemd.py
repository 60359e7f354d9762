"""The shipped systemd units (docs/deploy/systemd/): ``systemd-analyze verify`` finds
nothing to say about them (an unknown key or a bad value is only a warning there, so
any output fails), ``systemd-analyze security`` rates their hardening OK, and each
runs the launcher as the notification protocol and the runtime directory require.

The units name /opt/presence-lobby; ``verify`` needs the programs to exist, so each is
checked in a copy naming this checkout and this interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from scripts import cluster
from scripts.backbone_keys import make_cluster
from shared import options
from shared.endpoints import RUNTIME_ENV
from tests.deploy.conftest import DEPLOY, tool
from tests.support import ROOT
from workers.settings import WorkerSettings

UNITS = ("presence.service", "presence-coordinator.service", "presence-workers.service")
INSTALLED = "/opt/presence-lobby"
EXPOSURE = 20
"""``systemd-analyze security``'s scale times ten: 2.0 and below is "OK"."""


def local_copy(name: str, tmp: Path) -> Path:
    text = (DEPLOY / "systemd" / name).read_text()
    assert text.count(f"ExecStart={INSTALLED}/.venv/bin/python scripts/cluster.py") == 1
    text = text.replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    copy = tmp / name
    copy.write_text(text.replace(INSTALLED, str(ROOT)))
    return copy


def settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().replace("\\\n", " ").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.process
@pytest.mark.parametrize("name", UNITS)
def test_the_unit_is_valid_and_hardened(name: str, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    unit = local_copy(name, tmp_path)
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    rated = subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={EXPOSURE}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rated.returncode == 0, rated.stdout + rated.stderr


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_runs_the_launcher_as_it_expects(name: str) -> None:
    s = settings(name)
    # The launcher itself (the main process) says READY=1 and STOPPING=1.
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    # SIGTERM to the launcher alone, which stops its children in order.
    assert s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["2"]
    # The backbone's directory is the service's runtime directory.
    runtime = s["RuntimeDirectory"]
    assert runtime == ["presence"] and f"{RUNTIME_ENV}=/run/presence" in s["Environment"]
    assert s["RuntimeDirectoryMode"] == ["0700"]
    assert s["User"] == ["presence"] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["PrivateTmp"] == ["yes"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    role = {"presence.service": "all", "presence-coordinator.service": "coordinator"}
    words = s["ExecStart"][0].split()
    expected = role.get(name, "workers")
    assert (words[words.index("--role") + 1] if "--role" in words else "all") == expected


ROLES = {
    "presence.service": ("all", None),
    "presence-coordinator.service": ("coordinator", "coordinator"),
    "presence-workers.service": ("workers", "web1"),
}
"""Each unit's role, and the key directory its machine gets from ``make keys``."""


@pytest.mark.parametrize("name", UNITS)
def test_the_launcher_accepts_the_units_command_line_and_environment(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``ExecStart=`` is a command line the launcher takes (with key directories
    made here, and this machine's address for the example's), and each ``PRESENCE_``
    variable is an option of the workers or the coordinator that they accept."""
    role, machine = ROLES[name]
    make_cluster(tmp_path / "keys", ["web1"])
    line = settings(name)["ExecStart"][0]
    if machine is not None:
        line = line.replace("/etc/presence/keys", str(tmp_path / "keys" / machine))
    words = line.replace("10.0.0.1", "127.0.0.1").split()
    config = cluster.parse_args(words[words.index("scripts/cluster.py") + 1 :])
    assert config.role == role
    names = {options.env_name(f.name) for _, f in options._options(WorkerSettings)}
    names |= {options.env_name(f.name) for _, f in options._options(CoordinatorSettings)}
    for assignment in settings(name)["Environment"]:
        variable, _, value = assignment.partition("=")
        if variable.startswith("PRESENCE_") and variable != RUNTIME_ENV:
            assert variable in names, f"{variable} is no option"
        monkeypatch.setenv(variable, value)
    if role != "coordinator":
        worker, _ = options.parse_args(WorkerSettings, [], prog="workers", description="")
        assert worker.network.trusted_proxies  # the proxy's address is believed
