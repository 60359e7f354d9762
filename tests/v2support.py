"""A raw protocol version 2 client for the process tests: websockets and the shared.v2
codec, nothing of the bundled clients. It keeps the view the contract describes (a
snapshot, then updates whose ``prev`` must be the view's ``seq``) and every frame it
was sent, so a test can assert on the frames themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from shared import v2
from shared.v2 import AuthOkV2, Record, ServerMessageV2, Snapshot, Update

SUBPROTOCOL = Subprotocol("presence.v2")


class Refused(Exception):
    """The server answered the auth with ``auth_failed``."""

    def __init__(self, reason: str, code: int | None) -> None:
        super().__init__(f"auth_failed {reason} (close {code})")
        self.reason = reason
        self.code = code


@dataclass
class V2Client:
    ws: ClientConnection
    key: SigningKey
    auth_ok: AuthOkV2 | None = None
    view: dict[str, Record] = field(default_factory=dict)
    seq: int = -1
    frames: list[ServerMessageV2] = field(default_factory=list)
    """Every frame after ``auth_ok``, decoded, in order."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """``(prev, view seq)`` of each update that did not follow on."""
    received: list[float] = field(default_factory=list)
    """When each of ``frames`` arrived (the event loop's clock)."""
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def public_key(self) -> str:
        return self.key.verify_key.encode().hex()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        server: str | None = None,
        key: SigningKey | None = None,
        record: v2.RecordChange | None = None,
        follow: v2.Follow | None = None,
        resume: v2.Resume | None = None,
    ) -> V2Client:
        """Dial ``url`` offering ``presence.v2``, sign for ``server`` (by default the
        identity of ``url``, as an honest client does), wait for ``auth_ok`` and the
        first snapshot, update or count. Raises :class:`Refused` on ``auth_failed``."""
        ws = await connect(url, subprotocols=[SUBPROTOCOL], max_size=None)
        assert ws.subprotocol == SUBPROTOCOL, "the server did not select presence.v2"
        key = key or SigningKey.generate()
        client = cls(ws, key)
        challenge = json.loads(await ws.recv())
        assert challenge["type"] == "challenge" and challenge["version"] == 2, challenge
        identity = server or v2.server_identity(url)
        signature = v2.sign_challenge_v2(key, identity, challenge["nonce"])
        await ws.send(v2.auth_v2(client.public_key, signature, identity, record, follow, resume))
        first = v2.decode_server_frame_v2(await ws.recv())
        if isinstance(first, v2.AuthFailedV2):
            reason = getattr(first.reason, "value", first.reason)
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
            raise Refused(str(reason), ws.close_code)
        assert isinstance(first, AuthOkV2), first
        client.auth_ok = first
        client._reader = asyncio.create_task(client._read())
        await client.until(lambda: bool(client.frames))
        return client

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                message = v2.decode_server_frame_v2(frame)
                self.frames.append(message)
                self.received.append(asyncio.get_running_loop().time())
                if isinstance(message, Snapshot):
                    self.view = {e.key: e.record for e in message.entries}
                    self.seq = message.seq
                elif isinstance(message, Update):
                    if message.prev != self.seq:
                        self.gaps.append((message.prev, self.seq))
                    for key in message.left:
                        self.view.pop(key, None)
                    for entry in (*message.joined, *message.updated):
                        self.view[entry.key] = entry.record
                    self.seq = message.seq
                self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for ``condition`` on what this client was sent, up to ``timeout``."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def send(self, frame: str | dict[str, Any]) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def updates(self) -> list[Update]:
        return [f for f in self.frames if isinstance(f, Update)]

    def counts(self) -> list[v2.Count]:
        return [f for f in self.frames if isinstance(f, v2.Count)]

    def errors(self) -> list[v2.ErrorV2]:
        return [f for f in self.frames if isinstance(f, v2.ErrorV2)]

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader
