"""One machine per role, through the launcher: ``make run ROLE=coordinator`` and
``make run ROLE=workers COORDINATOR=host:port``, over tcp with CURVE (on loopback here;
tests/test_machines.py runs them on separate network namespaces). Every worker machine
here has the same host name, as on loopback it must: their ids come from the names
their key directories carry."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.backbone_keys import make_cluster
from shared.client import LobbyClient
from tests.support import ManagedProcess, free_port, health, run

pytestmark = pytest.mark.process


@dataclass
class Machines:
    keys: Path
    backbone: int
    coordinator: ManagedProcess
    public: dict[str, int]
    launchers: list[ManagedProcess]

    def workers(self, keys: Path, port: int) -> ManagedProcess:
        """A worker machine with the key directory ``keys`` (and no ``--name``)."""
        machine = ManagedProcess(
            "scripts.cluster",
            ["--role", "workers", "--coordinator", f"127.0.0.1:{self.backbone}",
             "--keys", str(keys), "--workers", "1", "--port", str(port)],
        )  # fmt: skip
        self.launchers.append(machine)
        return machine


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    keys = tmp_path_factory.mktemp("roles") / "keys"
    coordinator_keys, *hosts = make_cluster(keys, ["host-a", "host-b"])
    backbone = free_port()
    while not _free(backbone + 1):  # the updates socket takes the next port
        backbone = free_port()
    coordinator = ManagedProcess(
        "scripts.cluster",
        ["--role", "coordinator", "--backbone", f"127.0.0.1:{backbone}",
         "--keys", str(coordinator_keys)],
    )  # fmt: skip
    cluster = Machines(keys, backbone, coordinator, {}, [coordinator])
    try:
        status = coordinator.wait_ready(timeout=30)
        assert f"COORDINATOR=THIS_HOST:{backbone}" in status
        for host in hosts:
            cluster.public[host.name] = port = free_port()
            assert "all 1 processes ready" in cluster.workers(host, port).wait_ready(timeout=30)
        yield cluster
    finally:
        for launcher in reversed(cluster.launchers):
            assert launcher.stop(timeout=30) == 0, launcher.output()
            launcher.assert_no_traceback()


def test_a_coordinator_machine_and_two_worker_machines_make_one_lobby(machines: Machines) -> None:
    async def scenario() -> None:
        a = await LobbyClient.connect(f"ws://127.0.0.1:{machines.public['host-a']}/ws")
        b = await LobbyClient.connect(f"ws://127.0.0.1:{machines.public['host-b']}/ws")
        both = {a.public_key, b.public_key}
        await a.wait_for_view(both)
        await b.wait_for_view(both)
        result = await a.send(b.public_key, "across machines")
        assert result.status.value == "delivered"
        message = await b.next_message(timeout=5)
        assert message.body == "across machines"
        for client in (a, b):
            assert client.errors == []
            await client.close()

    run(scenario())
    output = "\n".join(m.output() for m in machines.launchers)
    assert "started host-a-w1-1" in output and "started host-b-w1-1" in output
    assert "secret" not in output.lower().replace("key_secret", "")


def test_a_second_machine_with_the_same_name_is_refused_loudly_on_both_sides(
    machines: Machines, tmp_path: Path
) -> None:
    """host-a's key directory copied to another machine: same name, same ids."""
    copy = shutil.copytree(machines.keys / "host-a", tmp_path / "copied")
    twin = machines.workers(copy, port := free_port())
    twin.wait_for_line("the coordinator refuses this worker: worker id host-a-w1-1 is held")
    answer = run(health(port))  # a load balancer's check says it too
    assert answer["status"] == "unavailable" and answer["sync"] == "awaiting_welcome"
    assert answer["joinRefused"].startswith("worker id host-a-w1-1 is held by a live worker")
    machines.coordinator.wait_for_line(
        "refusing worker host-a-w1-1 from 127.0.0.1 with key host-a: a live worker from "
        "127.0.0.1 with key host-a holds that id (two machines with one name"
    )
    assert "give each its own key directory, which make keys names, or its own --name" in (
        twin.output()
    )
    assert machines.coordinator.count("worker host-a-w1-1 registered") == 1
    assert twin.stop(timeout=30) == 0
    twin.assert_no_traceback()
    machines.launchers.remove(twin)


def test_a_key_mismatch_is_logged_on_the_side_that_sees_it(
    machines: Machines, tmp_path: Path
) -> None:
    """A machine whose keys come from another `make keys` (it pins another coordinator),
    and one the coordinator does not admit (its key was never copied there)."""
    _, other = make_cluster(tmp_path / "other", ["host-c"])
    _, unknown = make_cluster(tmp_path / "unknown", ["host-d"])
    shutil.copyfile(machines.keys / "coordinator" / "coordinator.key", unknown / "coordinator.key")
    pins_another = machines.workers(other, free_port())
    not_admitted = machines.workers(unknown, free_port())
    events = f"tcp://127.0.0.1:{machines.backbone}"
    pins_another.wait_for_line(
        f"the CURVE handshake with the coordinator at {events} failed: the peer closed the "
        f"handshake (it does not hold the key pinned here); --curve-server-key {other}"
    )
    machines.coordinator.wait_for_line(
        f"a worker's CURVE handshake on {events} failed: the peer's handshake was not "
        "encrypted to this key"
    )
    key = (unknown / "worker.key").read_text().split('public-key = "')[1].split('"')[0]
    machines.coordinator.wait_for_line(
        f"refusing a worker at 127.0.0.1: its public key {key} is not in --curve-clients"
    )
    not_admitted.wait_for_line(
        f"the CURVE handshake with the coordinator at {events} failed: refused by the "
        f"authenticator (status 400: the key is not admitted); this machine's public key {key}"
    )
    for launcher in (pins_another, not_admitted):
        assert launcher.stop(timeout=30) == 0
        launcher.assert_no_traceback()
        machines.launchers.remove(launcher)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
