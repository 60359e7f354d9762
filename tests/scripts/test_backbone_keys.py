"""``backbone_keys.py --cluster``: one key directory per machine, as the launcher wants."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth

from scripts.backbone_keys import main, make_cluster
from scripts.launcher.config import Keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_machine_gets_what_its_role_needs_and_nothing_else(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    coordinator, host_a, host_b = make_cluster(keys, ["host-a", "host-b"])
    assert Keys(coordinator).missing("coordinator") == []
    assert Keys(host_a).missing("workers") == [] and Keys(host_b).missing("workers") == []
    # Only the coordinator holds its secret; only a machine holds its own.
    assert sorted(p.name for p in coordinator.rglob("*")) == [
        "coordinator.key", "coordinator.key_secret", "host-a.key", "host-b.key", "workers",
    ]  # fmt: skip
    assert sorted(p.name for p in host_a.iterdir()) == [
        "coordinator.key", "name", "worker.key", "worker.key_secret",
    ]  # fmt: skip
    assert Keys(host_a).machine_name() == "host-a"  # its workers' ids begin with it
    # The coordinator admits exactly the machines' public keys; they pin its key.
    public, _ = zmq.auth.load_certificate(str(coordinator / "coordinator.key_secret"))
    for host in (host_a, host_b):
        own, secret = zmq.auth.load_certificate(str(host / "worker.key_secret"))
        assert secret is not None
        assert (
            zmq.auth.load_certificate(str(coordinator / "workers" / f"{host.name}.key"))[0] == own
        )
        assert zmq.auth.load_certificate(str(host / "coordinator.key"))[0] == public
    assert len({zmq.auth.load_certificate(str(h / "worker.key"))[0] for h in (host_a, host_b)}) == 2
    for secret_file in keys.rglob("*.key_secret"):
        assert mode(secret_file) == 0o600
    for directory in (keys, coordinator, coordinator / "workers", host_a):
        assert mode(directory) == 0o700


def test_keys_are_never_overwritten_and_names_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_cluster(tmp_path / "keys", ["a"])
    for names, complaint in [
        (["a"], "exists already"),
        (["b", "b"], "named once"),
        (["c", "a"], "exists already"),
        (["../x"], "cannot name"),
        (["coordinator"], "cannot name"),
    ]:
        with pytest.raises(SystemExit):
            main(["--cluster", str(tmp_path / "keys"), *names])
        assert complaint in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["a", "coordinator"]


def test_a_machine_added_later_pins_the_existing_coordinator_and_is_let_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    coordinator, web1 = make_cluster(keys, ["web1"])
    before = {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()}
    assert main(["--cluster", str(keys), "web3"]) == 0  # make keys KEYS=keys MACHINES=web3
    said = capsys.readouterr().out
    assert f"{coordinator}/workers/web3.key into the coordinator machine's workers/" in said
    assert "restart its coordinator" in said and f"copy {keys}/web3 to worker machine" in said
    assert {p: p.read_bytes() for p in before} == before  # nothing rewritten
    web3 = keys / "web3"
    assert (web3 / "coordinator.key").read_bytes() == (web1 / "coordinator.key").read_bytes()
    own, _ = zmq.auth.load_certificate(str(web3 / "worker.key_secret"))
    assert zmq.auth.load_certificate(str(coordinator / "workers" / "web3.key"))[0] == own
    assert Keys(web3).missing("workers") == [] and Keys(web3).machine_name() == "web3"
    assert mode(web3 / "worker.key_secret") == 0o600 and mode(web3) == 0o700


def test_an_existing_coordinator_directory_not_made_by_cluster_is_refused(tmp_path: Path) -> None:
    (tmp_path / "coordinator").mkdir()
    with pytest.raises(ValueError, match="not a directory made by --cluster"):
        make_cluster(tmp_path, ["web1"])
    assert not (tmp_path / "web1").exists()
