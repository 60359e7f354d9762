"""Webhooks on a real cluster, through the real example receiver
(scripts/webhook_receiver.py): signed, in order, no gap, through a wrong secret, failing
answers, a receiver down and restarted, and a coordinator restart (a new epoch) whose
outbox overflows while the receiver is down (the loss is reported and repaired from
GET /v1/lobby)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shared.client import LobbyClient
from tests.support import Cluster, ManagedProcess, free_port, until

pytestmark = pytest.mark.process

SECRET = "whsec_5f0c2a9e7b1d4c3a8e6f0b2d4a6c8e0f"
TOKEN = "c2f1a0d9e8b7c6a5f4e3d2c1b0a99887"
FAST_COORDINATOR = ("--heartbeat-interval", "0.1", "--worker-timeout", "0.6")
FAST_WORKER = ("--heartbeat-interval", "0.1", "--coordinator-timeout", "0.6")


def private(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


class Receiver:
    """The example receiver on ``port``, keeping its view in ``state``."""

    def __init__(self, port: int, secret: Path, state: Path, api: int, token: Path) -> None:
        self.args = [
            "--port", str(port), "--secret-file", str(secret), "--state", str(state),
            "--lobby-url", f"http://127.0.0.1:{api}/v1/lobby", "--api-token-file", str(token),
        ]  # fmt: skip
        self.state = state
        self.runs: list[ManagedProcess] = []

    def start(self, *extra: str) -> ManagedProcess:
        run = ManagedProcess("scripts.webhook_receiver", [*self.args, *extra])
        run.wait_for_line("listening on")
        self.runs.append(run)
        return run

    def stop(self) -> None:
        self.runs[-1].stop()

    @staticmethod
    def reports(run: ManagedProcess) -> list[dict[str, Any]]:
        return [json.loads(line) for line in run.lines if line.startswith("{")]

    def view(self) -> tuple[str | None, set[str]]:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return None, set()
        return state["epoch"], set(state["users"])


def test_deliveries_arrive_signed_in_order_through_failures_and_restarts(tmp_path: Path) -> None:
    secret = private(tmp_path / "secret", SECRET)
    wrong = private(tmp_path / "wrong", SECRET[::-1])
    token = private(tmp_path / "token", TOKEN)
    port, api = free_port(), free_port()
    hooks = (
        "--webhook-url", f"http://127.0.0.1:{port}/hook", "--webhook-secret-file", str(secret),
        "--webhook-backoff", "0.02", "--webhook-max-backoff", "0.1",
    )  # fmt: skip
    receiver = Receiver(port, secret, tmp_path / "state.json", api, token)
    impostor = Receiver(port, wrong, tmp_path / "impostor.json", api, token)
    impostor.start()  # holds another secret: every delivery fails its verification
    try:
        run_scenario(tmp_path, receiver, impostor, hooks, api, token)
    finally:
        for run in receiver.runs + impostor.runs:
            run.stop()
    for run in impostor.runs:
        assert {r["verdict"] for r in Receiver.reports(run)} == {"bad_signature"}
    first, second, third = (Receiver.reports(run) for run in receiver.runs)
    assert [r["verdict"] for r in first[:2]] == ["failing", "failing"]
    # Every event of the first epoch, once and in order, across the receiver's restart.
    old_epoch = [r for r in first[2:] + second if r["epoch"] == first[2]["epoch"]]
    applied = [seq for r in old_epoch for seq in r["applied"]]
    assert applied == list(range(1, len(applied) + 1)) and len(applied) >= 4
    # (A delivery applied just before the receiver stopped may not have had its answer:
    # it comes again, and is a duplicate.)
    assert old_epoch[0]["verdict"] == "reset"
    assert {r["verdict"] for r in old_epoch[1:]} <= {"applied", "duplicate"}
    # The coordinator restart: the new epoch starts at its seq 1 from an empty lobby;
    # the event its outbox dropped is reported, and repaired from GET /v1/lobby.
    assert third[0]["verdict"] == "reset" and third[0]["applied"][0] == 1
    assert "repaired" in {r["verdict"] for r in third[1:]}
    for run in receiver.runs + impostor.runs:
        run.assert_no_traceback()


def run_scenario(
    tmp_path: Path,
    receiver: Receiver,
    impostor: Receiver,
    hooks: tuple[str, ...],
    api: int,
    token: Path,
) -> None:
    with Cluster(
        tmp_path,
        workers=1,
        coordinator_args=(*FAST_COORDINATOR, *hooks),
        worker_args=(*FAST_WORKER, "--api-port", str(api), "--api-token-file", str(token)),
    ) as cluster:
        coordinator = cluster.coordinator
        assert coordinator is not None

        async def scenario() -> None:
            watcher = await LobbyClient.connect(cluster.url)
            others = [await LobbyClient.connect(cluster.url) for _ in range(2)]

            async def received(who: Receiver) -> bool:
                return who.view()[1] == set(watcher.view.online)

            impostor.runs[-1].wait_for_line('"bad_signature"', timeout=5)
            impostor.stop()  # now nobody listens: connections are refused
            coordinator.wait_for_line("unreachable", timeout=5)
            others.append(await LobbyClient.connect(cluster.url))
            receiver.start("--fail-first", "2")  # 500 twice, then applies
            await until(lambda: received(receiver), "the first receiver to catch up", 5)
            receiver.stop()  # restarted: its view is in its state file
            await others.pop(0).close()
            await until(lambda: len(watcher.view) == 3, "the leave", 5)
            receiver.start()
            await until(lambda: received(receiver), "the restarted receiver to catch up", 5)

            epoch = receiver.view()[0]
            receiver.stop()  # down while the next coordinator's events pile up
            coordinator.stop()  # a new coordinator: a new epoch, its lobby rebuilt,
            cluster.coordinator = restarted = ManagedProcess(  # with room for 1 event
                "coordinator",
                [
                    *cluster._backbone(), "--port", str(cluster.port), *FAST_COORDINATOR,
                    *hooks, "--webhook-outbox-events", "1",
                ],
            )  # fmt: skip
            restarted.wait_for_line("unreachable", timeout=5)  # its seq 1 waits, in flight
            await others.pop(0).close()  # seq 2, dropped for...
            await until(lambda: len(watcher.view) == 2, "the leave", 5)
            others.append(await LobbyClient.connect(cluster.url))  # ...seq 3
            await until(lambda: len(watcher.view) == 3, "the join", 5)
            third = receiver.start()

            async def repaired() -> bool:
                new = receiver.view()[0] not in (None, epoch)
                return new and third.count('"repaired"') > 0 and await received(receiver)

            await until(repaired, "the receiver to repair the new epoch from the lobby", 5)
            restarted.wait_for_line("webhook outbox full", timeout=5)
            for client in [watcher, *others]:
                await client.close()

        asyncio.run(asyncio.wait_for(scenario(), 30))
        coordinator.assert_no_traceback()


def test_a_coordinator_refuses_a_webhook_secret_other_users_can_read_at_start(
    tmp_path: Path,
) -> None:
    open_secret = tmp_path / "open-secret"
    open_secret.write_text(SECRET)
    open_secret.chmod(0o644)
    coordinator = ManagedProcess(
        "coordinator",
        [
            "--events-endpoint", f"ipc://{tmp_path}/events",
            "--updates-endpoint", f"ipc://{tmp_path}/updates",
            "--webhook-url", "http://127.0.0.1:9/", "--webhook-secret-file", str(open_secret),
        ],
    )  # fmt: skip
    assert coordinator.proc.wait(timeout=15) == 2
    coordinator.stop()
    assert f"--webhook-secret-file {open_secret} is open to other users" in coordinator.output()
    coordinator.assert_no_traceback()
