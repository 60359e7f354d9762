"""scripts/watch_lobby.py (``make watch``) keeps one identity across runs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from scripts import watch_lobby
from tests.support import free_port


def test_the_watcher_keeps_its_identity_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    nowhere = ["--url", f"ws://127.0.0.1:{free_port()}/ws"]  # nothing listens: exit 1
    assert watch_lobby.main(nowhere) == 1
    key_file = tmp_path / "presence-lobby" / "watch.key"
    assert f"created a new identity in {key_file}" in capsys.readouterr().out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    saved = key_file.read_text()
    assert watch_lobby.main(nowhere) == 1
    assert "created" not in capsys.readouterr().out
    assert key_file.read_text() == saved
    assert watch_lobby.main([*nowhere, "--throwaway"]) == 1
    assert key_file.read_text() == saved
