"""The real coordinator: ``python -m coordinator`` on private endpoints, ready when it
says so, and what it costs (CPU, memory) as the kernel counts it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from scripts.coordinator_bench.common import MeasureError
from scripts.fake_worker import CurveClient
from scripts.procfs import cpu_seconds, free_port, rss_bytes
from shared import curve
from shared.notify import Listener

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Keys:
    """CURVE key files for a tcp:// backbone: the coordinator's and one worker's."""

    coordinator_secret: str
    clients: str
    worker: curve.KeyPair
    server_public: bytes

    @classmethod
    def make(cls, directory: Path) -> Keys:
        clients = directory / "clients"
        clients.mkdir(mode=0o700)
        _, secret = zmq.auth.create_certificates(str(directory), "coordinator")
        _, worker_secret = zmq.auth.create_certificates(str(clients), "worker")
        for private in (secret, worker_secret):
            os.chmod(private, 0o600)  # a secret key others could read is refused
        return cls(
            coordinator_secret=str(secret),
            clients=str(clients),
            worker=curve.load_keypair(str(worker_secret)),
            server_public=curve.load_public(str(secret)),
        )

    @property
    def client(self) -> CurveClient:
        """What a fake worker connects with."""
        return CurveClient(self.worker, self.server_public)


class CoordinatorProcess:
    """``python -m coordinator`` on private endpoints, ready when it says so (sd_notify)."""

    def __init__(self, workdir: Path, extra: Sequence[str], tcp_keys: Keys | None) -> None:
        if tcp_keys is None:
            self.events, self.updates = f"ipc://{workdir}/events", f"ipc://{workdir}/updates"
            security: list[str] = []
        else:
            self.events = f"tcp://127.0.0.1:{free_port()}"
            self.updates = f"tcp://127.0.0.1:{free_port()}"
            security = [
                "--curve-secret-key",
                tcp_keys.coordinator_secret,
                "--curve-clients",
                tcp_keys.clients,
            ]
        self.keys = tcp_keys
        self.log = workdir / "coordinator.log"
        self.notify = Listener()
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=self.notify.address)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "coordinator",
            "--events-endpoint",
            self.events,
            "--updates-endpoint",
            self.updates,
            "--port",
            str(free_port()),
            *security,
            *extra,
        ]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.notify.count("READY"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise MeasureError(f"coordinator not ready after {timeout}s:\n{self.tail()}")
            self.notify.receive(0.05)  # returns as soon as a notification arrives

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise MeasureError(f"the coordinator exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-30:])
        return ""

    def cpu(self) -> tuple[float, float]:
        """(every thread, main thread) CPU seconds so far."""
        return cpu_seconds(self.pid), cpu_seconds(self.pid, self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.notify.close()
