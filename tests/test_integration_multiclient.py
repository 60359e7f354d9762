"""The whole cluster with real client processes, storms, races and hostile input."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import protocol
from shared.client import LobbyClient, generate_signing_key, public_key_hex
from shared.protocol import CloseCode
from tests.support import Cluster, ManagedProcess, run, until, wait_until

pytestmark = pytest.mark.process


# ------------------------------------------------------------ three client processes


class ClientProcess:
    def __init__(self, cluster: Cluster, key_file: Path) -> None:
        self.proc = ManagedProcess(
            "tests.client_proc", ["--url", cluster.url, "--key-file", str(key_file)]
        )
        self.proc.wait_for_line("AUTHED")
        self.key = next(line.split()[1] for line in self.proc.lines if line.startswith("AUTHED"))

    def view(self) -> set[str] | None:
        lines = [line for line in list(self.proc.lines) if line.startswith("VIEW ")]
        if not lines:
            return None
        parts = lines[-1].split()
        assert parts[-1] == "0" and parts[-2] == "ERRORS", lines[-1]
        return set(parts[2].split(",")) if parts[2] != "ERRORS" else set()

    def wait_view(self, keys: set[str]) -> None:
        wait_until(lambda: self.view() == keys, f"client {self.key[:8]} to see {len(keys)}", 15)


def test_three_client_processes_see_joins_leaves_and_reconnects(
    cluster: Cluster, tmp_path: Path
) -> None:
    files = [tmp_path / f"key{i}" for i in range(3)]
    clients = [ClientProcess(cluster, f) for f in files]
    keys = {c.key for c in clients}
    assert len(keys) == 3
    for c in clients:
        c.wait_view(keys)

    leaver = clients.pop()
    assert leaver.proc.stop() == 0  # SIGTERM: a clean close frame
    assert "CLOSED" in leaver.proc.output()
    for c in clients:
        c.wait_view(keys - {leaver.key})

    # Reconnect the one who left, with its saved key: back once, never twice.
    back = ClientProcess(cluster, files[2])
    assert back.key == leaver.key
    for c in [*clients, back]:
        c.wait_view(keys)

    # An abrupt drop (no close frame) is a leave too.
    clients[0].proc.signal(signal.SIGKILL)
    for c in [clients[1], back]:
        c.wait_view(keys - {clients[0].key})
    for c in [clients[1], back]:
        assert c.proc.stop() == 0
        c.proc.assert_no_traceback()


# ------------------------------------------------------------ storms and races


def test_rapid_joins_and_leaves_leave_no_ghost_and_no_duplicate(cluster: Cluster) -> None:
    async def scenario() -> None:
        rng = random.Random(7)
        watchers = [await LobbyClient.connect(cluster.url) for _ in range(2)]
        keys = [generate_signing_key() for _ in range(40)]
        online: dict[str, LobbyClient] = {}

        async def flip(key: SigningKey) -> None:
            pk = public_key_hex(key)
            if pk in online:
                client = online.pop(pk)
                await client.close()
            else:
                online[pk] = await LobbyClient.connect(cluster.url, key)

        for _ in range(4):  # 4 waves x 40 = 160 joins/leaves, many concurrent
            wave = rng.sample(keys, k=len(keys))
            await asyncio.gather(*(flip(k) for k in wave))
        truth = {w.public_key for w in watchers} | set(online)
        for w in watchers:
            await w.wait_for_view(truth, timeout=20)
        for client in list(online.values()):
            assert client.errors == []
            await client.close()
        for w in watchers:
            await w.wait_for_view({x.public_key for x in watchers}, timeout=20)
            assert w.errors == [], w.errors[:3]
            await w.close()

    run(scenario())


def test_same_key_on_several_workers_at_once_exactly_one_survives(cluster: Cluster) -> None:
    async def scenario() -> None:
        key = generate_signing_key()
        pk = public_key_hex(key)
        async with LobbyClient.connect(cluster.url) as watcher:
            attempts = await asyncio.gather(
                *(LobbyClient.connect(cluster.url, key) for _ in range(10)),
                return_exceptions=True,
            )
            clients = [c for c in attempts if isinstance(c, LobbyClient)]
            assert clients, attempts

            def settled() -> bool:
                return sum(not c.closed for c in clients) <= 1

            await until(settled, "one session to survive", 15)
            survivors = [c for c in clients if not c.closed]
            assert len(survivors) == 1
            for c in clients:
                if c.closed:
                    assert c.close_code == CloseCode.SESSION_REPLACED
            await watcher.wait_for_view({watcher.public_key, pk})
            # The survivor really is the session: a message to the key reaches it.
            result = await watcher.send(pk, "who is it?")
            assert result.delivered
            assert (await survivors[0].next_message()).body == "who is it?"
            await survivors[0].close()
            await watcher.wait_for_view({watcher.public_key})
            assert watcher.errors == []

    run(scenario())


def test_direct_messages_across_workers(cluster: Cluster) -> None:
    async def scenario() -> None:
        clients = [await LobbyClient.connect(cluster.url) for _ in range(6)]
        everyone = {c.public_key for c in clients}
        for c in clients:
            await c.wait_for_view(everyone)
        for sender in clients:
            for receiver in clients:
                result = await sender.send(receiver.public_key, f"{sender.public_key[:6]}>")
                assert result.delivered, result
                msg = await receiver.next_message()
                assert (msg.sender, msg.body) == (sender.public_key, f"{sender.public_key[:6]}>")
        gone = clients.pop()
        await gone.close()
        await clients[0].wait_for_view(everyone - {gone.public_key})
        result = await clients[0].send(gone.public_key, "anyone?")
        assert result.offline
        upper = await clients[0].send(clients[1].public_key.upper(), "case")
        assert upper.delivered
        for c in clients:
            assert c.errors == []
            await c.close()

    run(scenario())


# ------------------------------------------------------------ hostile input


@pytest.fixture
def short_auth_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, workers=2, worker_args=("--auth-timeout", "1.0")) as c:
        yield c


async def _challenge(url: str, **kw: Any) -> tuple[ClientConnection, str]:
    ws = await connect(url, **kw)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "challenge" and hello["version"] == 1
    assert protocol.is_hex_key(hello["nonce"]) and hello["nonce"] == hello["nonce"].lower()
    return ws, str(hello["nonce"])


async def _expect_auth_failure(url: str, frame: str | bytes | None, reason: str) -> None:
    ws, nonce = await _challenge(url)
    if frame is not None:
        await ws.send(frame.replace("NONCE", nonce) if isinstance(frame, str) else frame)
    reply = json.loads(await ws.recv())
    assert reply == {"type": "auth_failed", "reason": reason}, (frame, reply)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == CloseCode.AUTH_FAILED and ws.close_reason == "auth_failed"


def _auth(key: SigningKey, nonce: str, *, as_key: str | None = None) -> str:
    sig = key.sign(protocol.signed_payload(nonce)).signature.hex()
    return json.dumps(
        {"type": "auth", "publicKey": as_key or public_key_hex(key), "signature": sig}
    )


def test_every_bad_input_gets_its_answer_and_nobody_else_notices(
    short_auth_cluster: Cluster,
) -> None:
    url = short_auth_cluster.url

    async def scenario() -> None:
        async with LobbyClient.connect(url) as watcher:
            me, other = generate_signing_key(), generate_signing_key()
            snapshot_before = (watcher.view.seq, watcher.view.online)
            bad_auths: list[tuple[str | bytes, str]] = [
                (b"\x00binary", "malformed"),
                ("not json", "malformed"),
                ("[1,2]", "malformed"),
                ('{"type":"auth"}', "malformed"),
                ('{"type":"auth","publicKey":5,"signature":"00"}', "malformed"),
                ('{"no":"type"}', "malformed"),
                ('{"type":"get_lobby"}', "unexpected_message"),
                (
                    '{"type":"send","to":"' + "a" * 64 + '","id":"1","body":"x"}',
                    "unexpected_message",
                ),
                (
                    '{"type":"auth","publicKey":"xyz","signature":"' + "0" * 128 + '"}',
                    "invalid_public_key",
                ),
                (
                    '{"type":"auth","publicKey":"'
                    + "0" * 63
                    + '","signature":"'
                    + "0" * 128
                    + '"}',
                    "invalid_public_key",
                ),
                (
                    '{"type":"auth","publicKey":"' + public_key_hex(me) + '","signature":"zz"}',
                    "invalid_signature",
                ),
                (
                    '{"type":"auth","publicKey":"'
                    + public_key_hex(me)
                    + '","signature":"'
                    + "0" * 128
                    + '"}',
                    "invalid_signature",
                ),
            ]
            for frame, reason in bad_auths:
                await _expect_auth_failure(url, frame, reason)
            # A signature replayed from an earlier challenge fails against a new nonce.
            ws, nonce = await _challenge(url)
            replay = _auth(me, nonce)
            await ws.close()
            ws, _ = await _challenge(url)
            await ws.send(replay)
            assert json.loads(await ws.recv())["reason"] == "invalid_signature"
            await ws.wait_closed()
            # Signing over a nonce, with the other key claimed: invalid signature.
            ws, nonce = await _challenge(url)
            await ws.send(_auth(other, nonce, as_key=public_key_hex(me)))
            assert json.loads(await ws.recv())["reason"] == "invalid_signature"
            await ws.wait_closed()
            # Silence past the auth deadline: 4003.
            ws, _ = await _challenge(url)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert (ws.close_code, ws.close_reason) == (CloseCode.AUTH_TIMEOUT, "auth_timeout")
            # Upgrade on another path: 404.
            with pytest.raises(InvalidStatus) as refused:
                await connect(url.replace("/ws", "/other"))
            assert refused.value.response.status_code == 404

            # None of that reached the lobby.
            assert (watcher.view.seq, watcher.view.online) == snapshot_before
            await _bad_input_after_auth(url, watcher)
            assert watcher.errors == []

    run(scenario())


async def _bad_input_after_auth(url: str, watcher: LobbyClient) -> None:
    async with LobbyClient.connect(url) as rude:
        await watcher.wait_for_view({watcher.public_key, rude.public_key})
        seq = watcher.view.seq
        errors = [
            ("not json", "malformed"),
            ("[]", "malformed"),
            ('{"type":7}', "malformed"),
            ('{"type":"dance"}', "unknown_type"),
            ('{"type":"send","to":"' + watcher.public_key + '","id":"","body":"x"}', "malformed"),
            (
                '{"type":"send","to":"'
                + watcher.public_key
                + '","id":"'
                + "i" * 65
                + '","body":"x"}',
                "malformed",
            ),
            ('{"type":"send","to":"' + watcher.public_key + '","id":"1"}', "malformed"),
            ('{"type":"send","to":"' + watcher.public_key + '","id":"1","body":3}', "malformed"),
        ]
        for frame, _ in errors:
            await rude.send_raw(frame)
        await rude.send_raw(b"\x01\x02")
        for frame, code in [*errors, ("binary", "malformed")]:
            await until(lambda: bool(rude.error_frames), f"the answer to {frame!r}", 10)
            got = rude.error_frames.pop(0)
            assert (got["type"], got["code"]) == ("error", code), (frame, got)
            assert isinstance(got["message"], str) and got["message"]
        bad = await rude.send("f" * 63, "x")
        assert bad.outcome == "rejected/invalid_recipient"
        big = await rude.send(watcher.public_key, "x" * (protocol.MAX_BODY_BYTES + 1))
        assert big.outcome == "rejected/too_large"
        fits = await rude.send(watcher.public_key, "x" * protocol.MAX_BODY_BYTES)
        assert fits.delivered  # a maximal send fits in the frame limit
        assert len((await watcher.next_message()).body) == protocol.MAX_BODY_BYTES
        # Still connected and in sync after all of it.
        assert await rude.get_lobby() == {watcher.public_key, rude.public_key}
        # A frame over the limit closes with 1009; the watcher sees only a leave.
        await rude.send_raw("x" * (protocol.DEFAULT_MAX_FRAME_BYTES + 1))
        assert await rude.wait_closed() == CloseCode.MESSAGE_TOO_BIG
        assert rude.errors == []
    await watcher.wait_for_view({watcher.public_key})
    assert watcher.view.seq == (seq or 0) + 1


def test_healthz_answers_on_the_public_port(tmp_path: Path) -> None:
    # Beats every 0.1 s and 0.6 s of silence, so the coordinator's death shows at once.
    with Cluster(
        tmp_path,
        2,
        coordinator_args=("--heartbeat-interval", "0.1", "--worker-timeout", "0.6"),
        worker_args=("--heartbeat-interval", "0.1", "--coordinator-timeout", "0.6"),
    ) as cluster:
        _healthz_follows_the_coordinator(cluster)


def _healthz_follows_the_coordinator(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"
    assert cluster.coordinator is not None
    cluster.coordinator.signal(signal.SIGKILL)

    def unhealthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return False
        except urllib.error.HTTPError as err:
            return err.code == 503

    wait_until(unhealthy, "/healthz to answer 503 without a coordinator", 15)
