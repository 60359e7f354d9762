"""Keepalive against a real coordinator and worker: a client that stops answering pings
is dropped with 1011 and shown as left, and nobody who answers is.

The worker pings every 0.3 s and waits 0.3 s for a pong. Three users: one on the
project's client (websockets answers pings itself), one on a raw socket that answers
every ping by hand with its payload (what a client that writes its own framing does),
and one on a raw socket that authenticates and then reads nothing, so answers nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from shared import protocol
from shared.client import LobbyClient
from tests.flooder import CLOSE, PING, PONG, TEXT, Frames, handshake, masked, next_text
from tests.support import Cluster, run

pytestmark = pytest.mark.process

INTERVAL = 0.3
ROUNDS = 10
"""Pings the answering raw client must see (and answer) while the silent one is gone."""


class RawUser:
    """An authenticated version 1 user on a blocking raw socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames = Frames()
        self.pending = self.frames.feed(handshake(self.sock, port))
        challenge = next_text(self.sock, self.frames, self.pending)
        key = SigningKey.generate()
        self.public = key.verify_key.encode().hex()
        signature = key.sign(protocol.signed_payload(challenge["nonce"])).signature.hex()
        auth = {"type": "auth", "publicKey": self.public, "signature": signature}
        self.sock.sendall(masked(TEXT, json.dumps(auth).encode()))
        assert next_text(self.sock, self.frames, self.pending)["type"] == "auth_ok"

    def answer_pings(self, stop: threading.Event, pings: list[float]) -> None:
        """Read everything; answer each ping with a pong carrying its payload."""
        self.sock.settimeout(0.05)
        while not stop.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, "the server closed a client that answers its pings"
            for opcode, payload in self.frames.feed(chunk):
                assert opcode != CLOSE, f"closed: {payload!r}"
                if opcode == PING:
                    pings.append(time.monotonic())
                    self.sock.sendall(masked(PONG, payload))

    def read_to_close(self) -> tuple[int, list[int], bytes]:
        """Pings read, every opcode, and the close frame's payload."""
        opcodes: list[int] = []
        self.sock.settimeout(10)
        while True:
            chunk = self.sock.recv(65536)
            assert chunk, "no close frame before the end of the stream"
            for opcode, payload in [*self.pending, *self.frames.feed(chunk)]:
                opcodes.append(opcode)
                if opcode == CLOSE:
                    return opcodes.count(PING), opcodes, payload
            self.pending = []


def test_a_client_that_stops_answering_pings_is_dropped_and_nobody_else(tmp_path: Path) -> None:
    args = ("--ping-interval", str(INTERVAL), "--ping-timeout", str(INTERVAL))
    with Cluster(tmp_path, workers=1, worker_args=args) as cluster:
        run(scenario(cluster), timeout=60)


async def scenario(cluster: Cluster) -> None:
    watcher = await LobbyClient.connect(cluster.url)
    answering = await asyncio.to_thread(RawUser, cluster.port)
    silent = await asyncio.to_thread(RawUser, cluster.port)
    both = {answering.public, silent.public}
    await watcher.wait_for_view(lambda view: both <= view.online)
    stop = threading.Event()
    pings: list[float] = []
    answerer = asyncio.create_task(asyncio.to_thread(answering.answer_pings, stop, pings))
    try:
        # The silent user reads nothing: its pings go unanswered, and it is dropped.
        await watcher.wait_for_view(
            lambda view: silent.public not in view.online and answering.public in view.online
        )
        count, opcodes, close = await asyncio.to_thread(silent.read_to_close)
        assert count >= 1, opcodes
        code = struct.unpack("!H", close[:2])[0]
        assert (code, close[2:].decode()) == (1011, "keepalive ping timeout")
        # The others stay through round after round.
        seen = len(pings)
        deadline = time.monotonic() + 30
        while len(pings) < seen + ROUNDS and not answerer.done():
            assert time.monotonic() < deadline, f"{len(pings)} pings"
            await asyncio.sleep(0.05)
        assert not answerer.done(), answerer.exception()
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert min(gaps) >= INTERVAL * 0.5, gaps
        assert answering.public in watcher.view.online
        assert watcher.errors == []
    finally:
        stop.set()
        await answerer
        for user in (answering, silent):
            user.sock.close()
        await watcher.close()
