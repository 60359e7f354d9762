"""Pre-framed writes (workers.frames, wsinternals.write_all) give websockets' bytes and guarantees.

The pure part checks the frame bytes against websockets' own framing. The rest runs a
real websockets server in the test's event loop, with raw clients that record every byte
they receive, and checks that a shared frame reaches each client byte-identical to what
``broadcast()`` sends it, valid, in order, and only where ``broadcast()`` would write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Generator
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from tests.support import run
from workers.frames import SharedFrame
from workers.wsinternals import takes_shared, write_all

T = TypeVar("T")
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200_000]
"""Payload lengths on both sides of each header size class (7-bit, 16-bit, 64-bit)."""


def websockets_framing(text: str) -> bytes:
    """What websockets' sans-I/O server writes for ``send_text`` (no extensions)."""
    protocol = ServerProtocol(state=State.OPEN)
    protocol.send_text(text.encode())
    (data,) = protocol.data_to_send()
    return data


@pytest.mark.parametrize("size", SIZES)
def test_a_shared_frame_is_the_frame_websockets_writes(size: int) -> None:
    text = "x" * size
    assert SharedFrame(text).data == websockets_framing(text)
    assert len(SharedFrame(text)) == len(websockets_framing(text))


@given(st.text(max_size=300))
def test_any_text_frames_the_same(text: str) -> None:
    assert SharedFrame(text).data == websockets_framing(text)


@pytest.mark.parametrize("size", SIZES)
def test_a_shared_binary_frame_is_the_frame_websockets_writes(size: int) -> None:
    """Protocol version 2's lobby frames are binary."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    protocol = ServerProtocol(state=State.OPEN)
    protocol.send_binary(payload)
    (data,) = protocol.data_to_send()
    assert SharedFrame(payload).data == data


# --------------------------------------------------------------------------- real sockets


class RawClient:
    """A WebSocket client that performs the opening handshake by hand and then keeps
    every byte the server sends, for byte-level comparison and parsing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def read(self, count: int) -> None:
        """Read until ``count`` bytes have been received in all."""
        while len(self.received) < count:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), 5)
            assert chunk, "the server closed the connection"
            self.received += chunk

    async def read_until(self, condition: Callable[[RawClient], bool]) -> None:
        """Read until ``condition`` holds for what was received (5 s at most)."""
        async with asyncio.timeout(5):
            while not condition(self):
                chunk = await self.reader.read(1 << 16)
                assert chunk, "the server closed the connection"
                self.received += chunk

    def frames(self) -> list[Frame]:
        """Parse what was received as server frames (unmasked), checking each."""
        stream = StreamReader()
        stream.feed_data(bytes(self.received))
        stream.feed_eof()
        frames = []
        while not _result(stream.at_eof()):
            frames.append(_result(Frame.parse(stream.read_exact, mask=False)))
        return frames

    def close(self) -> None:
        self.writer.close()


def _result(gen: Generator[None, None, T]) -> T:
    """Run one of websockets' generator-based parsers over data already fed."""
    try:
        while True:
            next(gen)
    except StopIteration as done:
        value: T = done.value
        return value


class Server:
    """A websockets server whose connections stay open until the test ends."""

    def __init__(self) -> None:
        self.connections: list[ServerConnection] = []
        self.arrived = asyncio.Event()
        self.done = asyncio.Event()
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        self.arrived.set()
        await self.done.wait()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.connections) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def server(**kwargs: object) -> AsyncIterator[Server]:
    s = Server()
    async with serve(s.handler, "127.0.0.1", 0, **kwargs) as ws_server:  # type: ignore[arg-type]
        s.port = ws_server.sockets[0].getsockname()[1]
        try:
            yield s
        finally:
            s.done.set()


MESSAGES = ['{"type":"lobby_update","seq":1}', "é" * 130, "y" * 70_000, ""]


def test_clients_receive_byte_identical_valid_frames_either_way() -> None:
    async def scenario() -> None:
        async with server(compression=None) as s:
            shared, normal = await RawClient.open(s.port), await RawClient.open(s.port)
            await s.wait_for(2)
            to_shared, to_normal = s.connections
            expected = 0
            for text in MESSAGES:
                frame = SharedFrame(text)
                assert write_all([to_shared], [frame]) == 1
                broadcast([to_normal], text)
                expected += len(frame.data)
            await shared.read(expected)
            await normal.read(expected)
            assert shared.received == normal.received
            frames = shared.frames()
            assert [(f.opcode, f.fin, f.data.decode()) for f in frames] == [
                (Opcode.TEXT, True, text) for text in MESSAGES
            ]
            for client in (shared, normal):
                client.close()

    run(scenario())


def test_frames_due_together_arrive_as_if_written_one_by_one() -> None:
    """Several frames in one write_all: one write of their concatenated bytes to a
    client that takes the shared path, each frame by broadcast() to one that does not,
    and both receive exactly the bytes of writing them one after the other."""

    async def scenario() -> None:
        async with server(compression=None) as s:
            shared, normal = await RawClient.open(s.port), await RawClient.open(s.port)
            await s.wait_for(2)
            to_shared, to_normal = s.connections
            frames = [SharedFrame(text) for text in MESSAGES]
            writes: list[bytes] = []
            write = to_shared.transport.write
            to_shared.transport.write = lambda data: (writes.append(data), write(data))[1]  # type: ignore[method-assign]
            assert write_all([to_shared], frames) == 1
            assert writes == [b"".join(websockets_framing(text) for text in MESSAGES)]
            for text in MESSAGES:
                broadcast([to_normal], text)
            expected = sum(len(f.data) for f in frames)
            await shared.read(expected)
            await normal.read(expected)
            assert shared.received == normal.received
            assert [(f.opcode, f.fin, f.data.decode()) for f in shared.frames()] == [
                (Opcode.TEXT, True, text) for text in MESSAGES
            ]
            assert write_all([to_shared], []) == 0
            for client in (shared, normal):
                client.close()

    run(scenario())


def test_a_client_with_compression_takes_websockets_path_and_decodes() -> None:
    async def scenario() -> None:
        async with (
            server(compression="deflate") as s,
            connect(f"ws://127.0.0.1:{s.port}", compression="deflate") as client,
        ):
            await s.wait_for(1)
            (ws,) = s.connections
            assert ws.protocol.extensions and not takes_shared(ws)
            for text in MESSAGES:
                assert write_all([ws], [SharedFrame(text)]) == 0
            assert write_all([ws], [SharedFrame(text) for text in MESSAGES]) == 0
            for text in MESSAGES * 2:
                assert await asyncio.wait_for(client.recv(), 5) == text

    run(scenario())


def test_nothing_is_written_into_a_fragmented_message_or_a_closing_connection() -> None:
    async def scenario() -> None:
        async with server(compression=None) as s:
            fragmented, closing, plain = [await RawClient.open(s.port) for _ in range(3)]
            await s.wait_for(3)
            in_fragments, in_closing, in_plain = s.connections
            # A fragmented message in progress: its first fragment is out, the rest waits.
            release = asyncio.Event()

            async def fragments() -> AsyncIterator[str]:
                yield "first-"
                await release.wait()
                yield "last"

            sending = asyncio.create_task(in_fragments.send(fragments()))
            await asyncio.wait_for(_until(lambda: in_fragments.send_in_progress is not None), 5)
            assert not takes_shared(in_fragments)
            closing_task = asyncio.create_task(in_closing.close())
            await asyncio.wait_for(_until(lambda: in_closing.protocol.state is State.CLOSING), 5)
            frame = SharedFrame("update")
            assert write_all([in_fragments, in_closing, in_plain], [frame]) == 1
            release.set()
            await sending
            await plain.read(len(frame.data))
            assert [f.data for f in plain.frames()] == [b"update"]
            # The fragmented message arrives whole, with nothing in between.
            await fragmented.read_until(_ends_message)
            parts = fragmented.frames()
            assert parts[0].opcode is Opcode.TEXT
            assert all(f.opcode is Opcode.CONT for f in parts[1:])
            assert [f.fin for f in parts] == [False] * (len(parts) - 1) + [True]
            assert b"".join(f.data for f in parts) == b"first-last"
            # The closing connection got its close frame and nothing else.
            await closing.read(2)
            assert closing.frames()[0].opcode is Opcode.CLOSE
            for client in (fragmented, closing, plain):
                client.close()
            closing_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closing_task

    run(scenario())


def _ends_message(client: RawClient) -> bool:
    frames = client.frames()
    return bool(frames) and frames[-1].fin


async def _until(condition: object) -> None:
    assert callable(condition)
    while not condition():
        await asyncio.sleep(0.001)  # polling, bounded by the caller's wait_for


def test_the_state_read_without_its_property_is_the_state() -> None:
    protocol = ServerProtocol(state=State.OPEN)
    assert protocol._state is protocol.state is State.OPEN
    protocol.send_close()
    assert protocol._state is protocol.state is State.CLOSING
