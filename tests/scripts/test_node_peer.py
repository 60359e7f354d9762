"""The Node.js peer as a load-test target, where it can be checked without running it:
what is missing is named at the start, and its copy is made again only when needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.loadtest.__main__ import main
from scripts.loadtest.target import PEER_FILES, node_peer_missing, peer_copy_stale


def _peer(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in PEER_FILES:
        (path / name).write_text(f"{name}\n")
    return path


def test_what_the_peer_needs_and_lacks_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = _peer(tmp_path / "peer")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("node", "npm"):
        (tools / tool).write_text("#!/bin/sh\n")
        (tools / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    assert node_peer_missing(peer) == []
    (peer / "package-lock.json").unlink()
    assert node_peer_missing(peer) == [str(peer / "package-lock.json")]
    assert node_peer_missing(tmp_path / "nowhere") == [f"the peer's directory {tmp_path}/nowhere"]
    (tools / "npm").unlink()
    assert node_peer_missing(peer)[0] == "npm (not on the PATH)"


def test_a_missing_peer_is_a_usage_error_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--start", "node", "--peer-dir", str(tmp_path / "gone"), "mass-join", "1"])
    assert exit_.value.code == 2
    assert f"--start node: missing the peer's directory {tmp_path}/gone" in capsys.readouterr().err


def test_the_peer_speaks_version_1_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("scripts.loadtest.__main__.node_peer_missing", lambda _dir: [])
    with pytest.raises(SystemExit):
        main(["--start", "node", "--protocol", "2", "mass-join", "1"])
    assert "protocol version 1 only" in capsys.readouterr().err


def test_the_copy_is_made_again_only_when_the_peer_changed_or_npm_never_finished(
    tmp_path: Path,
) -> None:
    source, cache = _peer(tmp_path / "peer"), _peer(tmp_path / "cache")
    assert peer_copy_stale(source, cache)  # npm ci never finished there
    (cache / ".installed").write_text("done\n")
    assert not peer_copy_stale(source, cache)
    (source / "server.js").write_text("changed\n")
    assert peer_copy_stale(source, cache)
    (cache / "server.js").write_text("changed\n")
    (cache / "package.json").unlink()
    assert peer_copy_stale(source, cache)
