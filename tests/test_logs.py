"""Structured logs: a cluster started by the launcher with ``--log-format json`` at DEBUG
writes one JSON object per line, with the keys every line must have, and never a secret
key, a signature or a message body (the text logs' test is in tests/test_abuse.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from shared import logs, protocol
from shared.client import generate_signing_key, public_key_hex
from tests.support import ManagedProcess, free_port, run

pytestmark = pytest.mark.process

BODY = "a body nobody may log: 7f3a-recognisable-1c9e"


async def frames_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """Read until a frame of type ``kind`` (lobby frames may come first)."""
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] == kind:
            return frame


async def login(url: str, key: SigningKey, secrets: list[str]) -> ClientConnection:
    ws = await connect(url)
    nonce = json.loads(await ws.recv())["nonce"]
    signature = key.sign(protocol.signed_payload(nonce)).signature.hex()
    secrets.append(signature)
    await ws.send(protocol.auth(public_key_hex(key), signature))
    await frames_until(ws, "auth_ok")
    return ws


def test_json_logs_are_one_object_per_line_with_no_secret(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    args = ["--workers", "2", "--port", str(port), "--metrics-port", "0"]
    args += ["--log-format", "json", "--log-level", "DEBUG"]
    launcher = ManagedProcess("scripts.cluster", args, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    secrets: list[str] = [BODY]

    async def scenario() -> None:
        keys = [generate_signing_key() for _ in range(3)]
        secrets.extend(bytes(k).hex() for k in keys)
        clients = [await login(url, k, secrets) for k in keys]
        # A failing auth: a signature over the nonce by another key.
        async with connect(url) as bad:
            nonce = json.loads(await bad.recv())["nonce"]
            forged = generate_signing_key().sign(protocol.signed_payload(nonce)).signature.hex()
            secrets.append(forged)
            await bad.send(protocol.auth(public_key_hex(keys[0]), forged))
            assert json.loads(await bad.recv())["reason"] == "invalid_signature"
        to = public_key_hex(keys[1])
        await clients[0].send(protocol.send(to, "m1", BODY))
        assert (await frames_until(clients[0], "send_result"))["status"] == "delivered"
        assert (await frames_until(clients[1], "message"))["body"] == BODY
        for ws in clients:
            await ws.close()

    try:
        launcher.wait_ready(timeout=30)
        run(scenario())
    finally:
        assert launcher.stop(timeout=20) == 0, launcher.output()

    lines = [json.loads(line) for line in launcher.lines]  # every line is JSON...
    assert all(isinstance(line, dict) for line in lines)  # ...and an object
    for line in lines:
        assert set(logs.JSON_KEYS) <= set(line), line
        assert line["level"] in logs.LEVELS, line
        assert line["role"] in ("launcher", "coordinator", "worker"), line
        assert line["id"] and line["event"], line
    ids = {line["role"]: set() for line in lines}
    for line in lines:
        ids[line["role"]].add(line["id"])
    assert ids["worker"] == {"w1-1", "w2-1"}
    (epoch,) = ids["coordinator"]
    assert len(epoch) == 29  # GENERATION-NONCE
    events = {(line["role"], line["event"]) for line in lines}
    assert {("coordinator", "worker_registered"), ("worker", "conn_opened")} <= events
    assert {("launcher", "ready"), ("worker", "worker_ready")} <= events
    failed = [line for line in lines if line["event"] == "conn_closing" and line["code"] == 4001]
    assert failed and failed[0]["reason"] == "auth_failed"
    assert any(line["level"] == "DEBUG" for line in lines)  # DEBUG output really is there

    text = launcher.output().lower()
    for secret in secrets:
        assert secret.lower() not in text, f"logged a secret: {secret[:16]}..."
    launcher.assert_no_traceback()
