"""A scripted lobby server for measuring and testing clients, not for production.

It serves the real lobby page (``workers/static``) and speaks the wire protocol at
``/ws`` from a script instead of from a coordinator: it accepts any auth (it checks no
signature), then sends a snapshot of ``users`` (plus the client) and whatever updates the
caller pushes, numbered as the caller says, so a test can skip a number (a gap no real
server would make) and a measurement can show a client thousands of users without
thousands of connections. A ``get_lobby`` is answered with a snapshot of the current
state. Used by ``scripts/page_timings.py`` and the browser tests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from shared import protocol
from workers import pages


@dataclass
class FakeLobby:
    users: set[str] = field(default_factory=set)
    seq: int = 100
    clients: dict[str, ServerConnection] = field(default_factory=dict)
    requests: list[dict[str, object]] = field(default_factory=list)
    """Every frame the clients sent after their auth, in order."""
    online: asyncio.Event = field(default_factory=asyncio.Event)
    _server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeLobby:
        static = pages.load()

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            page = static.get(request.path.split("?")[0])
            if page is None:
                return None
            response = conn.respond(200, "")
            del response.headers["Content-Type"], response.headers["Content-Length"]
            response.headers["Content-Type"] = page.content_type
            response.headers["Content-Length"] = str(len(page.body))
            response.body = page.body
            return response

        self._server = await serve(
            self._serve, host, port, process_request=process_request, max_size=None
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, ws: ServerConnection) -> None:
        await ws.send(protocol.challenge(secrets.token_hex(protocol.NONCE_BYTES)))
        try:
            auth = json.loads(await ws.recv())
        except ConnectionClosed:
            return  # gone before its auth: the lobby page's probe for version 2 does that
        key = str(auth["publicKey"]).lower()
        self.users.add(key)
        self.clients[key] = ws
        await ws.send(protocol.auth_ok(key))
        await ws.send(self.snapshot())
        self.online.set()
        try:
            async for frame in ws:
                obj = json.loads(frame)
                self.requests.append(obj)
                if obj.get("type") == "get_lobby":
                    await ws.send(self.snapshot())
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(key, None)

    def snapshot(self) -> str:
        return protocol.lobby_snapshot(self.seq, sorted(self.users))

    def update(self, joined: Iterable[str] = (), left: Iterable[str] = (), *, skip: int = 0) -> int:
        """Publish the next update to every client (``skip`` numbers left out first, to
        make a gap); returns its seq."""
        joined, left = list(joined), list(left)
        self.seq += 1 + skip
        self.users -= set(left)
        self.users |= set(joined)
        broadcast(self.clients.values(), protocol.lobby_update(self.seq, joined, left))
        return self.seq


def random_keys(n: int) -> list[str]:
    return [secrets.token_hex(32) for _ in range(n)]
