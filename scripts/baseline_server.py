#!/usr/bin/env python3
"""The baseline for ``make bench``: docs/PROTOCOL.md served the direct way, in one process.

    python scripts/baseline_server.py [--host H] [--port P]

This is the design the cluster is measured against, as the original design describes
it: one process, a dict from public key to connection, and for every join or leave one
``lobby_update`` encoded once and broadcast at once to every other client, with no
batching. A joining client gets its snapshot encoded for it alone. Nothing is bounded
(no slow-consumer rules, no admission control): that is the point of a baseline, not a
server to deploy. It speaks the whole contract (auth, session replacement with 4002,
snapshots, get_lobby, direct messages, errors, /healthz) so the load tester's
correctness checks hold against it too. ``--fault`` breaks it on purpose, for the tests
that prove those checks catch a broken server. It prints ``baseline ready at ws://...`` once
listening (and sends ``READY=1`` to ``$NOTIFY_SOCKET``, see ``shared.notify``) and stops on
SIGTERM/SIGINT, closing every client with 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scripts  # noqa: F401  (first: this Python has the dependencies, or it says so)

# isort: split
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from shared import defaults, notify, protocol
from shared.protocol import (
    AuthFailure,
    CloseCode,
    ErrorCode,
    RejectReason,
    SendStatus,
)
from workers.server import LISTEN_BACKLOG

AUTH_TIMEOUT = defaults.AUTH_TIMEOUT
"""Seconds from the challenge to a valid ``auth`` (the protocol's default)."""
FAULTS = ("none", "gap", "lose-leave", "lose-message")
"""Deliberate bugs for tests: ``gap`` skips a sequence number every 5th update,
``lose-leave`` never publishes a leave, ``lose-message`` answers ``delivered`` without
delivering."""


class Baseline:
    """The whole server state: who is online where, and the lobby sequence number."""

    def __init__(self, fault: str = "none") -> None:
        self.sessions: dict[str, ServerConnection] = {}
        self.seq = 0
        self.fault = fault

    def publish(self, joined: list[str], left: list[str], skip: ServerConnection | None) -> None:
        """One change, one update, one broadcast to every client but ``skip``."""
        if self.fault == "lose-leave" and not joined:
            return
        self.seq += 1
        if self.fault == "gap" and self.seq % 5 == 0:
            self.seq += 1
        frame = protocol.lobby_update(self.seq, joined, left)
        websockets.broadcast([ws for ws in self.sessions.values() if ws is not skip], frame)

    def snapshot(self) -> str:
        return protocol.lobby_snapshot(self.seq, list(self.sessions))

    async def handle(self, ws: ServerConnection) -> None:
        key = await self.authenticate(ws)
        if key is None:
            return
        try:
            async for frame in ws:
                self.on_frame(ws, key, frame)
        except ConnectionClosed:
            pass
        finally:
            if self.sessions.get(key) is ws:
                del self.sessions[key]
                self.publish([], [key], skip=None)

    async def authenticate(self, ws: ServerConnection) -> str | None:
        """Challenge, verify, record; the key on success, else None (closed)."""
        nonce = secrets.token_bytes(protocol.NONCE_BYTES)
        try:
            await ws.send(protocol.challenge(nonce.hex()))
            async with asyncio.timeout(AUTH_TIMEOUT):
                frame = await ws.recv()
        except TimeoutError:
            await ws.close(CloseCode.AUTH_TIMEOUT, "auth_timeout")
            return None
        except ConnectionClosed:
            return None
        msg = protocol.parse_client_frame(frame)
        if isinstance(msg, protocol.Auth):
            failure = protocol.verify_auth(nonce, msg.public_key, msg.signature)
        elif isinstance(msg, protocol.ProtocolViolation):
            failure = AuthFailure.MALFORMED
        else:
            failure = AuthFailure.UNEXPECTED_MESSAGE
        if failure is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(protocol.auth_failed(failure))
                await ws.close(CloseCode.AUTH_FAILED, "auth_failed")
            return None
        assert isinstance(msg, protocol.Auth)
        key = protocol.normalise_key(msg.public_key)
        old = self.sessions.get(key)
        # Publish first: the newcomer's snapshot then already holds this very update.
        self.publish([key], [key] if old is not None else [], skip=old)
        self.sessions[key] = ws
        if old is not None:
            asyncio.get_running_loop().create_task(
                old.close(CloseCode.SESSION_REPLACED, "session_replaced")
            )
        websockets.broadcast([ws], protocol.auth_ok(key))
        websockets.broadcast([ws], self.snapshot())
        return key

    def on_frame(self, ws: ServerConnection, key: str, frame: str | bytes) -> None:
        msg = protocol.parse_client_frame(frame)
        if isinstance(msg, protocol.ProtocolViolation):
            code = ErrorCode(msg.kind.value)
            websockets.broadcast([ws], protocol.error(code, msg.detail))
        elif isinstance(msg, protocol.GetLobby):
            websockets.broadcast([ws], self.snapshot())
        elif isinstance(msg, protocol.Send):
            websockets.broadcast([ws], self.route(key, msg))
        else:
            websockets.broadcast([ws], protocol.error(ErrorCode.MALFORMED, "already authenticated"))

    def route(self, sender: str, msg: protocol.Send) -> str:
        """Deliver a direct message; the ``send_result`` frame for the sender."""
        if len(msg.body.encode("utf-8", "surrogatepass")) > protocol.MAX_BODY_BYTES:
            return protocol.send_result(msg.id, SendStatus.REJECTED, RejectReason.TOO_LARGE)
        if not protocol.is_hex_key(msg.to):
            return protocol.send_result(msg.id, SendStatus.REJECTED, RejectReason.INVALID_RECIPIENT)
        target = self.sessions.get(protocol.normalise_key(msg.to))
        if target is None:
            return protocol.send_result(msg.id, SendStatus.OFFLINE)
        if self.fault != "lose-message":
            websockets.broadcast([target], protocol.message(sender, msg.id, msg.body))
        return protocol.send_result(msg.id, SendStatus.DELIVERED)


def process_request(conn: ServerConnection, request: Request) -> Response | None:
    path = urlsplit(request.path).path
    if path == protocol.HEALTH_PATH:
        return conn.respond(HTTPStatus.OK, '{"status":"ok"}\n')
    if path != protocol.WS_PATH:
        return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    return None


async def run(host: str, port: int, fault: str = "none") -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    baseline = Baseline(fault)
    async with serve(
        baseline.handle,
        host,
        port,
        process_request=process_request,
        compression=None,
        max_size=protocol.DEFAULT_MAX_FRAME_BYTES,
        backlog=LISTEN_BACKLOG,  # the workers': a storm meets the same kernel queue
    ) as server:
        print(f"baseline ready at ws://{host}:{port}{protocol.WS_PATH}", flush=True)
        notify.ready(f"baseline ready at ws://{host}:{port}{protocol.WS_PATH}")
        await stop.wait()
        notify.stopping()
        server.close(code=CloseCode.GOING_AWAY, reason="going away")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=defaults.HOST, help="interface (%(default)s)")
    parser.add_argument("--port", type=int, default=defaults.PORT, help="port (%(default)s)")
    parser.add_argument(
        "--fault",
        choices=FAULTS,
        default="none",
        help="break the server on purpose, for tests (%(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args.host, args.port, args.fault))
    return uvloop.run(run(args.host, args.port, args.fault))


if __name__ == "__main__":
    sys.exit(main())
