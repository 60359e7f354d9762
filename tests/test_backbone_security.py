"""The backbone is not an open door: private by default, CURVE beyond loopback."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from shared import backbone as bb
from shared import curve, endpoints
from shared.client import LobbyClient
from tests.support import ROOT, ManagedProcess, free_port


@pytest.mark.parametrize(
    ("endpoint", "private"),
    [
        ("ipc:///tmp/x/events", True),
        ("inproc://x", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.9.9.9:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://eth0:5555", False),
        ("pgm://x", False),
    ],
)
def test_which_endpoints_count_as_private(endpoint: str, private: bool) -> None:
    assert curve.is_private(endpoint) is private


def test_default_ipc_directory_is_private(tmp_path: Path) -> None:
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path)
    try:
        ends = endpoints.default_endpoints(4242)
        endpoints.prepare(ends.events)
    finally:
        del os.environ["XDG_RUNTIME_DIR"]
    directory = tmp_path / "presence-4242"
    assert ends.events == f"ipc://{directory}/events"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.process
def test_coordinator_refuses_an_exposed_backbone_without_curve() -> None:
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--events-endpoint",
            f"tcp://0.0.0.0:{port}",
            "--updates-endpoint",
            f"tcp://0.0.0.0:{port + 1}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on tcp://0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


def _keys(tmp: Path) -> tuple[Path, Path, Path]:
    """Key pairs for the coordinator, one admitted worker and one stranger."""
    keys = tmp / "keys"
    subprocess.run(
        [sys.executable, "scripts/backbone_keys.py", str(keys), "coordinator", "w1", "stranger"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=30,
    )
    admitted = tmp / "admitted"
    admitted.mkdir()
    (admitted / "w1.key").write_bytes((keys / "w1.key").read_bytes())
    assert stat.S_IMODE((keys / "w1.key_secret").stat().st_mode) == 0o600
    return keys, admitted, keys / "stranger.key_secret"


@pytest.mark.process
def test_curve_admits_only_listed_workers_and_never_logs_secrets(tmp_path: Path) -> None:
    keys, admitted, stranger = _keys(tmp_path)
    p1, p2, web = free_port(), free_port(), free_port()
    events, updates = f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}"
    backbone = ["--events-endpoint", events, "--updates-endpoint", updates]
    coordinator = ManagedProcess(
        "coordinator",
        [
            *backbone,
            "--curve-secret-key",
            str(keys / "coordinator.key_secret"),
            "--curve-clients",
            str(admitted),
            "--log-level",
            "DEBUG",
        ],
    )
    worker: ManagedProcess | None = None
    try:
        coordinator.wait_ready()
        worker = ManagedProcess(
            "workers",
            [
                *backbone,
                "--port",
                str(web),
                "--worker-id",
                "w1",
                "--log-level",
                "DEBUG",
                "--curve-secret-key",
                str(keys / "w1.key_secret"),
                "--curve-server-key",
                str(keys / "coordinator.key"),
            ],
        )
        worker.wait_ready()

        async def join() -> None:
            async with LobbyClient.connect(f"ws://127.0.0.1:{web}/ws") as client:
                assert client.view.online == {client.public_key}

        asyncio.run(join())
        server_public = curve.load_public(str(keys / "coordinator.key"))
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            # No CURVE at all, and CURVE with a key the coordinator does not list:
            # neither gets an answer (an unknown worker would be asked to reannounce).
            plain = ctx.socket(zmq.DEALER)
            intruder = ctx.socket(zmq.DEALER)
            curve.make_client(intruder, curve.load_keypair(str(stranger)), server_public)
            for name, sock in (("plain", plain), ("intruder", intruder)):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ROUTING_ID, name.encode())
                sock.connect(events)
                sock.send(bb.encode(bb.Heartbeat(name)))
            assert not plain.poll(1500) and not intruder.poll(10)
            assert coordinator.count("unknown worker plain") == 0
            assert coordinator.count("unknown worker intruder") == 0
        finally:
            ctx.destroy(linger=0)
        logs = coordinator.output() + worker.output()
        for secret_file in keys.glob("*.key_secret"):
            _, secret = zmq.auth.load_certificate(secret_file)
            assert secret is not None and secret.decode() not in logs
    finally:
        for proc in (worker, coordinator):
            if proc is not None:
                assert proc.stop() == 0
                proc.assert_no_traceback()
