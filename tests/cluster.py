"""A real cluster for tests: one coordinator and N workers, each its own process."""

from __future__ import annotations

from pathlib import Path

from tests.procs import ManagedProcess, free_port


class Cluster:
    """Start with :meth:`start`; every process is checked for tracebacks on :meth:`stop`."""

    def __init__(
        self,
        tmp: Path,
        workers: int = 2,
        *,
        coordinator_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.events = f"ipc://{tmp}/events"
        self.updates = f"ipc://{tmp}/updates"
        self.n_workers = workers
        self.coordinator_args = coordinator_args
        self.worker_args = worker_args
        self.coordinator: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []

    def _backbone(self) -> list[str]:
        return ["--events-endpoint", self.events, "--updates-endpoint", self.updates]

    def start(self) -> Cluster:
        self.coordinator = ManagedProcess(
            "coordinator",
            [*self._backbone(), "--port", str(self.port), *self.coordinator_args],
        )
        self.coordinator.wait_for_line("coordinator ready")
        for i in range(self.n_workers):
            self.add_worker(f"w{i + 1}")
        return self

    def add_worker(self, name: str) -> ManagedProcess:
        worker = ManagedProcess(
            "workers",
            [*self._backbone(), "--port", str(self.port), "--worker-id", name, *self.worker_args],
        )
        worker.wait_for_line(f"worker {name} ready")
        self.workers.append(worker)
        return worker

    def processes(self) -> list[ManagedProcess]:
        return [p for p in [self.coordinator, *self.workers] if p is not None]

    def stop(self) -> None:
        codes = {p.module + str(i): p.stop() for i, p in enumerate(reversed(self.processes()))}
        for p in self.processes():
            p.assert_no_traceback()
        assert all(code in (0, -9) for code in codes.values()), codes
