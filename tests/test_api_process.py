"""The backend API on a real cluster: answers are the lobby exactly as of their seq."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import LobbyChange, LobbyClient
from tests.support import Cluster, ManagedProcess, free_port, http, run, until

pytestmark = pytest.mark.process

TOKEN = "c2f1a0d9e8b7c6a5f4e3d2c1b0a99887"
AUTH = [("Authorization", f"Bearer {TOKEN}")]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def _api_args(port: int, token_file: Path) -> tuple[str, ...]:
    """Workers with the API on ``port``, and quick to notice a coordinator gone."""
    return (
        "--api-port", str(port), "--api-token-file", str(token_file),
        "--heartbeat-interval", "0.2", "--coordinator-timeout", "0.6",
    )  # fmt: skip


@pytest.fixture
def api_cluster(tmp_path: Path, token_file: Path) -> Iterator[tuple[Cluster, int]]:
    port = free_port()
    args = _api_args(port, token_file)
    with Cluster(
        tmp_path, workers=2, worker_args=args, coordinator_args=("--heartbeat-interval", "0.2")
    ) as cluster:
        yield cluster, port


async def api(port: int, path: str, headers: list[tuple[str, str]] = AUTH) -> tuple[int, Any]:
    status, answer_headers, body = await http(port, path=path, headers=headers)
    assert answer_headers["content-type"] == "application/json"
    assert answer_headers["cache-control"] == "no-store"
    return status, json.loads(body)


def test_lobby_and_user_answers_are_exact_as_of_their_seq(
    api_cluster: tuple[Cluster, int],
) -> None:
    cluster, port = api_cluster

    async def scenario() -> None:
        watcher = await LobbyClient.connect(cluster.url)
        seen: dict[int, frozenset[str]] = {}

        def record(change: LobbyChange) -> None:
            assert watcher.view.seq == change.seq
            seen[change.seq] = watcher.view.online

        watcher.lobby_listeners.append(record)
        record(LobbyChange("snapshot", watcher.view.seq or 0, (), (), 0))
        others = [await LobbyClient.connect(cluster.url) for _ in range(4)]
        everyone = {watcher.public_key, *(c.public_key for c in others)}
        await watcher.wait_for_view(everyone)

        async def check(expected: set[str]) -> int:
            """Every worker's answer (several requests land on both) matches the view
            the watcher had at the answer's seq, and eventually ``expected``."""
            last = -1

            async def settled() -> bool:
                nonlocal last
                status, lobby = await api(port, "/v1/lobby")
                assert status == 200, lobby
                seq, users = lobby["seq"], [u["publicKey"] for u in lobby["users"]]
                assert users == sorted(users)
                await watcher.wait_for_view(lambda v: (v.seq or 0) >= seq)
                assert seen[seq] == set(users), (seq, users)
                last = seq
                return set(users) == expected

            await until(settled, f"the API to show {len(expected)} users")
            for _ in range(6):
                await settled()
            return last

        await check(everyone)
        leaver = others.pop()
        await leaver.close()
        seq = await check(everyone - {leaver.public_key})

        status, answer = await api(port, f"/v1/users/{leaver.public_key}")
        assert status == 200
        assert answer["publicKey"] == leaver.public_key
        assert answer["online"] is False and answer["seq"] >= seq
        status, answer = await api(port, f"/v1/users/{watcher.public_key.upper()}")
        assert (status, answer["publicKey"], answer["online"]) == (200, watcher.public_key, True)
        assert seen[answer["seq"]] >= {watcher.public_key}

        for client in [watcher, *others]:
            assert client.errors == []
            await client.close()

    run(scenario())


def test_strangers_get_401_and_bad_requests_a_clear_answer(
    api_cluster: tuple[Cluster, int],
) -> None:
    cluster, port = api_cluster

    async def scenario() -> None:
        for headers in (
            [],
            [("Authorization", "Bearer wrong-token-wrong-token")],
            [("Authorization", TOKEN)],
            [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")],
        ):
            for path in ("/v1/lobby", "/v1/users/" + "a" * 64, "/nothing"):
                status, answer = await api(port, path, headers)
                assert (status, answer) == (401, {"error": "unauthorized"}), (headers, path)
        assert await api(port, "/v1/users/xyz") == (400, {"error": "invalid_public_key"})
        assert await api(port, "/v1/elsewhere") == (404, {"error": "not_found"})
        status, headers, _ = await http(port, "DELETE", "/v1/lobby", headers=AUTH)
        assert (status, headers["allow"]) == (405, "GET")
        # A body is read (up to its bound) and the request answered; one too large is
        # refused unread, and a request cut short is simply closed; nothing is logged
        # (checked below).
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        for request, answer in (
            (b"POST /v1/lobby HTTP/1.1\r\n" + auth + b"Content-Length: 5\r\n\r\nhello", b" 405 "),
            (b"GET /v1/lobby HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}", b" 400 "),
            (
                b"POST /v1/users:lookup HTTP/1.1\r\n" + auth + b"Content-Length: 999999\r\n\r\n",
                b" 400 ",
            ),
            (b"POST /v1/users:lookup HTTP/1.1\r\n" + auth + b"Content-Length: 9\r\n\r\n{", b""),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            if not answer:
                writer.write_eof()
            raw = await asyncio.wait_for(reader.read(), 5)
            assert raw[8:13] == answer if answer else raw == b"", (request, raw)
            writer.close()
        # HTTP/1.0 is answered as HTTP/1.1 is (docs/API.md says so); other versions are not.
        for version, answered in ((b"HTTP/1.0", True), (b"HTTP/2.0", False)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/lobby " + version + b"\r\n" + auth + b"\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)
            assert raw.startswith(b"HTTP/1.1 200 ") if answered else raw == b"", (version, raw)
            writer.close()
        guide = (Path(__file__).parent.parent / "docs" / "API.md").read_text(encoding="utf-8")
        assert "that is not HTTP/1.1 or HTTP/1.0, is not answered" in guide
        # The public port knows nothing of the API, and the API port serves no lobby.
        status, _, _ = await http(cluster.port, path="/v1/lobby", headers=AUTH)
        assert status == 404
        status, _ = await api(port, "/ws")
        assert status == 404

    run(scenario())
    for worker in cluster.workers:
        worker.assert_no_traceback()


def test_the_api_answers_503_while_the_coordinator_is_away(
    tmp_path: Path, token_file: Path
) -> None:
    port = free_port()
    args = _api_args(port, token_file)
    # One worker: with two, which one answers is the kernel's choice.
    with Cluster(
        tmp_path, workers=1, worker_args=args, coordinator_args=("--heartbeat-interval", "0.2")
    ) as cluster:
        assert cluster.coordinator is not None

        async def status() -> int:
            return (await api(port, "/v1/lobby"))[0]

        assert run(status()) == 200
        cluster.coordinator.stop()
        run(until(lambda: status_is(status, 503), "the API to answer 503 without a coordinator"))
        assert run(api(port, "/v1/users/" + "a" * 64)) == (503, {"error": "unavailable"})


async def status_is(status: Any, expected: int) -> bool:
    return await status() == expected


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--api-port", "{port}"], "--api-port needs --api-token-file"),
        (
            ["--api-port", "{port}", "--api-token-file", "{missing}"],
            "cannot start the backend API: --api-token-file",
        ),
        (
            ["--api-port", "{port}", "--api-token-file", "{open}"],
            "is open to other users",
        ),
    ],
)
def test_a_worker_never_serves_the_api_without_a_usable_token(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    open_file = tmp_path / "open-token"
    open_file.write_text(TOKEN)
    open_file.chmod(0o644)
    values = {"port": str(free_port()), "missing": str(tmp_path / "absent"), "open": open_file}
    worker = ManagedProcess(
        "workers",
        [
            "--port", str(free_port()),
            "--events-endpoint", f"ipc://{tmp_path}/events",
            "--updates-endpoint", f"ipc://{tmp_path}/updates",
            *(a.format(**values) for a in args),
        ],
    )  # fmt: skip
    assert worker.proc.wait(timeout=15) == 2
    worker.stop()
    assert complaint in worker.output()
    worker.assert_no_traceback()
