"""One machine per role, through the launcher: ``make run ROLE=coordinator`` and
``make run ROLE=workers COORDINATOR=host:port``, over tcp with CURVE (on loopback here;
tests/test_machines.py runs them on separate network namespaces)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scripts.backbone_keys import make_cluster
from shared.client import LobbyClient
from tests.support import ManagedProcess, free_port, run

pytestmark = pytest.mark.process


def test_a_coordinator_machine_and_two_worker_machines_make_one_lobby(tmp_path: Path) -> None:
    coordinator_keys, host_a, host_b = make_cluster(tmp_path / "keys", ["host-a", "host-b"])
    backbone = free_port()
    while not _free(backbone + 1):  # the updates socket takes the next port
        backbone = free_port()
    public_a, public_b = free_port(), free_port()
    launchers = []
    try:
        coordinator = ManagedProcess(
            "scripts.cluster",
            ["--role", "coordinator", "--backbone", f"127.0.0.1:{backbone}",
             "--keys", str(coordinator_keys)],
        )  # fmt: skip
        launchers.append(coordinator)
        status = coordinator.wait_ready(timeout=30)
        assert f"COORDINATOR=THIS_HOST:{backbone}" in status
        for keys, port in ((host_a, public_a), (host_b, public_b)):
            machine = ManagedProcess(
                "scripts.cluster",
                ["--role", "workers", "--coordinator", f"127.0.0.1:{backbone}",
                 "--keys", str(keys), "--name", keys.name, "--workers", "1",
                 "--port", str(port)],
            )  # fmt: skip
            launchers.append(machine)
            assert "all 1 processes ready" in machine.wait_ready(timeout=30)

        async def scenario() -> None:
            a = await LobbyClient.connect(f"ws://127.0.0.1:{public_a}/ws")
            b = await LobbyClient.connect(f"ws://127.0.0.1:{public_b}/ws")
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
        output = "\n".join(m.output() for m in launchers)
        assert "started host-a-w1-1" in output and "started host-b-w1-1" in output
        assert "secret" not in output.lower().replace("key_secret", "")
    finally:
        for launcher in reversed(launchers):
            assert launcher.stop(timeout=30) == 0, launcher.output()
            launcher.assert_no_traceback()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
