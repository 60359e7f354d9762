"""The backend API's event stream, bulk lookup and kick on a real cluster (one module
cluster: one worker, a tiny event ring so that resuming too late is cheap to cause)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from shared import events
from shared.client import LobbyChange, LobbyClient
from shared.records import Record
from tests.support import Cluster, ManagedProcess, free_port, http, run, until
from workers.apiserver import MAX_READING

pytestmark = pytest.mark.process

TOKEN = "c2f1a0d9e8b7c6a5f4e3d2c1b0a99887"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, int]]:
    tmp = tmp_path_factory.mktemp("events")
    token = tmp / "api-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    worker_args = (
        "--api-port", str(port), "--api-token-file", str(token),
        "--events-ring-bytes", "2048",
        "--send-buffer-bytes", "4096", "--events-keepalive", "0.5",
        "--heartbeat-interval", "0.2", "--coordinator-timeout", "1",
    )  # fmt: skip
    with Cluster(
        tmp,
        workers=1,
        worker_args=worker_args,
        coordinator_args=("--heartbeat-interval", "0.2"),
    ) as started:
        yield started, port


# --------------------------------------------------------------------------- a consumer


class Stream:
    """One SSE consumer over a raw connection: every frame, parsed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.keepalives = 0

    @classmethod
    async def open(cls, port: int, last: str | None = None) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = f"Last-Event-ID: {last}\r\n" if last is not None else ""
        writer.write(f"GET /v1/events HTTP/1.1\r\nHost: x\r\n{AUTH}{extra}\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"Content-Type: text/event-stream" in head
        return cls(reader, writer)

    async def frame(self) -> tuple[str, dict[str, Any], str | None]:
        """``(kind, data, id)`` of the next frame (comments counted, skipped)."""
        while True:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
            lines = raw.decode().strip("\n").split("\n")
            if all(line.startswith(":") for line in lines):
                self.keepalives += 1
                continue
            fields = dict(line.split(": ", 1) for line in lines)
            return fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")

    async def keepalive(self) -> None:
        """Read until a keep-alive comment comes (the stream is idle)."""
        while True:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
            if raw.startswith(b":"):
                return

    def close(self) -> None:
        self.writer.close()


class Follower:
    """What a backend keeps: a view of the lobby from the stream, repaired from
    ``/v1/lobby`` at each reset as docs/API.md says."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.view: dict[str, Record] = {}
        self.last: str | None = None  # the id of the last event applied
        self.seqs: list[int] = []
        self.resets: list[str] = []

    async def follow(self, stream: Stream, until_true: Any) -> None:
        """Read and apply until ``until_true(self)``."""
        held: list[events.Event] = []
        repairing: tuple[str, int] | None = None
        while not until_true(self) or repairing is not None:
            kind, data, event_id = await stream.frame()
            if kind == "reset":
                self.resets.append(data["reason"])
                repairing = (data["epoch"], data["seq"])
                held = []
                lobby_epoch, lobby_seq, users = await self._lobby()
                while lobby_epoch != repairing[0] or lobby_seq < repairing[1]:
                    lobby_epoch, lobby_seq, users = await self._lobby()
                self.view = users
                self.last = events.event_id(lobby_epoch, lobby_seq)
                repairing = None
                continue
            assert kind == "message", (kind, data)
            event = events.from_json(data)
            assert event_id == event.id
            held.append(event)
            for item in held:
                epoch, seq = events.parse_event_id(self.last or ":0")
                if item.epoch == epoch and item.seq <= seq:
                    continue  # the lobby we repaired from includes it
                assert (item.epoch, item.seq) == (epoch, seq + 1), (self.last, item.id)
                events.apply(self.view, item)
                self.last = item.id
                self.seqs.append(item.seq)
            held = []

    async def _lobby(self) -> tuple[str, int, dict[str, Record]]:
        status, lobby = await api(self.port, "GET", "/v1/lobby")
        assert status == 200, lobby
        epoch, seq = events.parse_event_id(lobby["lastEventId"])
        users = {
            u["publicKey"]: (u["status"], json.dumps(u["data"], separators=(",", ":")))
            for u in lobby["users"]
        }
        return epoch, seq, users


async def api(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: {len(raw)}\r\n\r\n"
    writer.write(head.encode() + raw)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(payload)


async def lobby_now(port: int) -> tuple[str, set[str]]:
    status, lobby = await api(port, "GET", "/v1/lobby")
    assert status == 200
    return lobby["lastEventId"], {u["publicKey"] for u in lobby["users"]}


async def settled(follower: Follower, stream: Stream, port: int) -> None:
    """Follow until the view is the lobby's at the same event, and check they agree."""

    async def same() -> bool:
        last, users = await lobby_now(port)
        if follower.last != last:
            await follower.follow(stream, lambda f: f.last == last)
        return follower.last == last and set(follower.view) == users

    await until(same, "the stream's view to be the lobby's")


# --------------------------------------------------------------------------- tests


def test_a_consumer_that_resumes_sees_every_event_once_in_order(
    cluster: tuple[Cluster, int],
) -> None:
    lobby, port = cluster

    async def scenario() -> None:
        follower = Follower(port)
        stream = await Stream.open(port)
        clients = [await LobbyClient.connect(lobby.url) for _ in range(3)]
        await settled(follower, stream, port)
        assert follower.resets == ["start"]
        stream.close()
        await clients.pop().close()  # while it is away
        clients.append(await LobbyClient.connect(lobby.url))
        resumed = await Stream.open(port, follower.last)
        await settled(follower, resumed, port)
        assert follower.resets == ["start"], "resumed, not reset"
        assert follower.seqs == list(range(follower.seqs[0], follower.seqs[-1] + 1))
        assert set(follower.view) >= {c.public_key for c in clients}
        for client in clients:
            await client.close()
        await settled(follower, resumed, port)
        await resumed.keepalive()  # an idle stream is kept alive (every 0.5 s here)
        resumed.close()

    run(scenario())


def test_a_consumer_that_resumes_too_late_is_told_and_repairs_from_the_lobby(
    cluster: tuple[Cluster, int],
) -> None:
    lobby, port = cluster

    async def scenario() -> None:
        follower = Follower(port)
        stream = await Stream.open(port)
        await settled(follower, stream, port)
        stream.close()
        for _ in range(8):  # more than the 2 KiB ring holds
            client = await LobbyClient.connect(lobby.url)
            await client.close()
        stayer = await LobbyClient.connect(lobby.url)
        late = await Stream.open(port, follower.last)
        await settled(follower, late, port)
        assert follower.resets == ["start", "too_old"]
        fresh = await LobbyClient.connect(lobby.url)
        await settled(follower, late, port)
        assert set(follower.view) == set(fresh.view.online)
        assert {stayer.public_key, fresh.public_key} <= set(follower.view)
        for client in (stayer, fresh):
            await client.close()
        late.close()

    run(scenario())


def test_connections_that_send_slowly_hold_at_most_the_reading_cap(
    cluster: tuple[Cluster, int],
) -> None:
    """A peer opening connections that never finish their request holds no more than
    MAX_READING of the worker's sockets: the rest are dropped at once, long before the
    5 s a request may take; once they go, requests are answered again."""
    _, port = cluster
    extra = 20
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_READING + extra)]
    try:
        for sock in held:
            sock.sendall(b"GET /v1/lobby HTTP/1.1\r\n")  # and never the rest
            sock.setblocking(False)

        def dropped() -> int:
            count = 0
            for sock in held:
                try:
                    count += sock.recv(1) == b""
                except BlockingIOError:
                    pass  # still open
                except ConnectionResetError:
                    count += 1
            return count

        async def cut() -> None:
            await until(lambda: dropped() >= extra, f"{extra} connections dropped", 2.0)

        run(cut())
    finally:
        for sock in held:
            sock.close()

    async def answered() -> None:
        async def ok() -> bool:
            status, _, _ = await http(
                port, path="/v1/lobby", headers=[("Authorization", f"Bearer {TOKEN}")]
            )
            return status == 200

        await until(ok, "the API to answer again", 5.0)

    run(answered())


def test_bulk_lookup_agrees_with_a_clients_view_at_the_same_seq(
    cluster: tuple[Cluster, int],
) -> None:
    lobby, port = cluster

    async def scenario() -> None:
        watcher = await LobbyClient.connect(lobby.url)
        seen: dict[int, frozenset[str]] = {}

        def record(change: LobbyChange) -> None:
            seen[change.seq] = watcher.view.online

        watcher.lobby_listeners.append(record)
        record(LobbyChange("snapshot", watcher.view.seq or 0, (), (), 0))
        others = [await LobbyClient.connect(lobby.url) for _ in range(3)]
        keys = [c.public_key for c in others] + ["e" * 64, watcher.public_key.upper()]
        leaving = others.pop()
        closing = asyncio.create_task(leaving.close())
        for _ in range(8):
            status, answer = await api(port, "POST", "/v1/users:lookup", {"publicKeys": keys})
            assert status == 200, answer
            seq = answer["seq"]
            await watcher.wait_for_view(lambda v, s=seq: (v.seq or 0) >= s)
            online = {u["publicKey"] for u in answer["users"] if u["online"]}
            assert online == seen[seq] & {k.lower() for k in keys}, (seq, online)
            assert [u["publicKey"] for u in answer["users"]] == [k.lower() for k in keys]
        await closing
        status, answer = await api(port, "POST", "/v1/users:lookup", {"publicKeys": ["x"]})
        assert (status, answer["error"]) == (400, "invalid_public_key")
        for client in [watcher, *others]:
            await client.close()

    run(scenario())


def test_a_kicked_user_is_closed_with_4006_does_not_reconnect_and_the_stream_shows_it(
    cluster: tuple[Cluster, int],
) -> None:
    lobby, port = cluster

    async def scenario() -> None:
        follower = Follower(port)
        stream = await Stream.open(port)
        user = await LobbyClient.connect(lobby.url, reconnect=True)
        await settled(follower, stream, port)
        assert user.public_key in follower.view
        status, answer = await api(
            port, "POST", f"/v1/users/{user.public_key}:kick", {"reason": "test"}
        )
        assert (status, answer) == (200, {"publicKey": user.public_key, "kicked": True})
        await follower.follow(stream, lambda f: user.public_key not in f.view)
        await until(lambda: user.status == "closed", "the kicked client to stop")
        assert user.close_code == 4006 and user.reconnects == 0
        status, answer = await api(port, "POST", f"/v1/users/{user.public_key}:kick")
        assert (status, answer["kicked"]) == (200, False)
        await settled(follower, stream, port)
        assert user.public_key not in follower.view
        stream.close()

    run(scenario())


def test_a_slow_consumer_is_cut_off_and_others_are_not(cluster: tuple[Cluster, int]) -> None:
    lobby, port = cluster

    async def scenario() -> None:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        slow.setblocking(False)
        await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", port))
        slow.send(f"GET /v1/events HTTP/1.1\r\n{AUTH}\r\n".encode())
        follower = Follower(port)
        stream = await Stream.open(port)
        clients: list[LobbyClient] = []

        async def churn() -> None:
            for _ in range(50):  # far more than the slow one's buffers and the ring hold
                clients.append(await LobbyClient.connect(lobby.url))

        done = False
        reading = asyncio.create_task(follower.follow(stream, lambda _: done))
        churning = asyncio.create_task(churn())
        worker = lobby.workers[0]
        await until(lambda: "consumer cut off: slow_consumer" in worker.output(), "a cut-off")
        reader, writer = await asyncio.open_connection(sock=slow)
        tail = await asyncio.wait_for(reader.read(), 5)  # the rest, and its final frame
        writer.close()
        assert tail.endswith(b'event: cut_off\ndata: {"reason":"slow_consumer"}\n\n'), tail[-200:]
        await churning
        done = True
        for client in clients:
            await client.close()
        await reading
        await settled(follower, stream, port)
        assert follower.resets == ["start"]  # the quick one saw every event
        stream.close()

    run(scenario())
    assert "Traceback" not in cluster[0].workers[0].output()


def test_a_coordinator_restart_is_an_epoch_reset_never_silent_loss(
    cluster: tuple[Cluster, int],
) -> None:
    """Last in the module: it restarts the coordinator."""
    lobby, port = cluster
    assert lobby.coordinator is not None

    async def scenario() -> None:
        follower = Follower(port)
        stream = await Stream.open(port)
        user = await LobbyClient.connect(lobby.url, reconnect=True)
        await settled(follower, stream, port)
        before = follower.last
        assert lobby.coordinator is not None
        lobby.coordinator.stop()
        lobby.coordinator = ManagedProcess(
            "coordinator",
            [*lobby._backbone(), "--port", str(lobby.port), *lobby.coordinator_args],
        )
        await asyncio.to_thread(lobby.coordinator.wait_ready)
        await follower.follow(stream, lambda f: "epoch" in f.resets)
        assert follower.last is not None and before is not None
        assert follower.last.split(":")[0] != before.split(":")[0]
        await settled(follower, stream, port)
        assert user.public_key in follower.view  # rebuilt from the workers
        await user.close()
        await settled(follower, stream, port)
        stream.close()

    run(scenario())
