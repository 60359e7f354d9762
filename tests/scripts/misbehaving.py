"""A TCP proxy in front of a lobby server that misbehaves on every ``every``-th
connection, for tests of the load generator's connect causes. It runs its own event
loop in a thread of the test process.

* ``drop``: the chosen connection is reset before the upgrade is answered (the first
  time right after accept, then after reading the request, in turn);
* ``reset``: the chosen connection gets the server's ``101`` answer, then is reset.

Every other connection is passed through untouched, until :meth:`reset_open` resets
them all (mid-run). ``misbehaved`` counts the connections it dropped or reset at the
upgrade, ``passed`` the others."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit


def _reset(writer: asyncio.StreamWriter) -> None:
    """End the connection with a TCP reset (no FIN, no close frame)."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


class Misbehaving:
    def __init__(self, upstream_url: str, mode: str, every: int = 3) -> None:
        assert mode in ("drop", "reset")
        self.mode, self.every = mode, every
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._parts = parts
        self.connections = self.misbehaved = self.passed = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._open: list[asyncio.StreamWriter] = []

    def __enter__(self) -> Misbehaving:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def reset_open(self) -> int:
        """Reset every connection passed through so far (mid-run); returns how many."""

        async def reset() -> int:
            writers, self._open = self._open, []
            for writer in writers:
                _reset(writer)
            return len(writers)

        return asyncio.run_coroutine_threadsafe(reset(), self._loop).result(5)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return urlunsplit(self._parts._replace(netloc=f"127.0.0.1:{port}"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        chosen = self.connections % self.every == 0
        if chosen and self.mode == "drop":
            self.misbehaved += 1
            if self.misbehaved % 2 == 0:  # during the upgrade: the request was read
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    await reader.readuntil(b"\r\n\r\n")
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        if chosen:  # reset: pass the upgrade through, then reset both sides
            self.misbehaved += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                up_writer.write(await reader.readuntil(b"\r\n\r\n"))
                writer.write(await up_reader.readuntil(b"\r\n\r\n"))
                await writer.drain()
            _reset(writer)
            _reset(up_writer)
            return
        self.passed += 1
        self._open.append(writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
