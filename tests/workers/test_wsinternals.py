"""Assumptions :mod:`workers.wsinternals` makes about websockets' internals that the
other tests of it do not pin (test_lean_connection: the lazy deques, the keepalive
timers, the forgotten handshake; test_fanout_groups: the pressured set; test_frames:
pre-framed writes): the first-frame limit, pings, pongs and fragments going to the
core before websockets answers them, and the ``TCP_INFO`` offset."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from tests.support import raw_upgrade
from workers import wsinternals
from workers.outputs import Answer, FrameLimits, Lesser
from workers.wsinternals import (
    Guarded,
    guard,
    limit_frames,
    note_close,
    release_pong,
    tcp_bytes_acked,
    watch_lesser,
    watched_connection,
)

FIRST, REST = 16, 256


def _frame(size: int, opcode: Opcode = Opcode.TEXT, *, fin: bool = True) -> bytes:
    """A client's (masked) frame of ``size`` payload bytes."""
    return Frame(opcode, b"x" * size, fin=fin).serialize(mask=True, extensions=[])


def _limited() -> ServerProtocol:
    proto = ServerProtocol(state=State.OPEN, max_size=4096)
    limit_frames(SimpleNamespace(protocol=proto), FrameLimits(FIRST, REST))  # type: ignore[arg-type]
    return proto


def _sizes(proto: ServerProtocol) -> list[int]:
    return [len(e.data) for e in proto.events_received() if isinstance(e, Frame)]


def test_the_protocol_becomes_guarded_with_the_pre_auth_limit() -> None:
    proto = _limited()
    assert type(proto) is Guarded
    assert proto.max_message_size == FIRST


def test_a_first_message_over_the_pre_auth_limit_fails_with_1009() -> None:
    proto = _limited()
    proto.receive_data(_frame(FIRST + 1))
    assert _sizes(proto) == []
    assert proto.close_sent is not None and proto.close_sent.code == 1009


def test_frames_pipelined_behind_the_first_in_one_read_get_the_full_limit() -> None:
    proto = _limited()
    proto.receive_data(_frame(FIRST) + _frame(REST) + _frame(REST))
    assert _sizes(proto) == [FIRST, REST, REST]
    assert proto.close_sent is None
    proto.receive_data(_frame(REST + 1))  # the full limit holds from then on
    assert proto.close_sent is not None and proto.close_sent.code == 1009


def test_control_frames_and_fragments_do_not_end_the_first_message() -> None:
    proto = _limited()
    proto.receive_data(_frame(4, Opcode.PING) + _frame(FIRST // 2, fin=False))
    assert proto.max_message_size == FIRST  # still inside the first message
    proto.receive_data(_frame(FIRST // 2, Opcode.CONT))
    assert proto.max_message_size == REST
    assert proto.close_sent is None


def test_a_protocol_of_another_class_is_left_as_it_is() -> None:
    class Other(ServerProtocol):
        pass

    proto = Other(state=State.OPEN)
    limit_frames(SimpleNamespace(protocol=proto), FrameLimits(FIRST, REST))  # type: ignore[arg-type]
    assert type(proto) is Other


# --------------------------------------------------------------------- lesser frames


class Hook:
    """A core's decisions, scripted: ``answers`` in turn (then the last one again)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.seen: list[Lesser] = []

    def __call__(self, kind: Lesser) -> Answer:
        self.seen.append(kind)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def _guarded(hook: Hook | None = None) -> tuple[ServerProtocol, SimpleNamespace]:
    proto = ServerProtocol(state=State.OPEN, max_size=4096)
    guard(proto)
    ws = SimpleNamespace(protocol=proto, send_data=lambda: None)
    if hook is not None:
        watch_lesser(ws, hook)  # type: ignore[arg-type]
    return proto, ws


def _sent(proto: ServerProtocol) -> list[Frame]:
    """The frames the server wrote since last asked (short, unmasked ones)."""
    frames = []
    for data in proto.data_to_send():
        rest = bytearray(data)
        while rest:
            size = rest[1] & 0x7F
            frames.append(Frame(Opcode(rest[0] & 0x0F), bytes(rest[2 : 2 + size])))
            del rest[: 2 + size]
    return frames


def _ping(payload: bytes) -> bytes:
    return Frame(Opcode.PING, payload).serialize(mask=True, extensions=[])


def test_pings_pongs_and_fragments_go_to_the_core_and_whole_messages_do_not() -> None:
    hook = Hook(Answer.NONE)
    proto, _ = _guarded(hook)
    proto.receive_data(
        _frame(3, Opcode.PONG)
        + _frame(5, fin=False)
        + _frame(5, Opcode.CONT, fin=False)
        + _frame(5, Opcode.CONT)
        + _frame(7)
    )
    assert hook.seen == [Lesser.PONG, Lesser.FRAGMENT, Lesser.FRAGMENT]
    # websockets still sees them all: the message is whole, the pong settles keepalive.
    assert [e.opcode for e in proto.events_received() if isinstance(e, Frame)] == [
        Opcode.PONG,
        Opcode.TEXT,
        Opcode.CONT,
        Opcode.CONT,
        Opcode.TEXT,
    ]


def test_a_ping_is_answered_only_as_the_core_says() -> None:
    hook = Hook(Answer.PONG, Answer.NONE)
    proto, _ = _guarded(hook)
    proto.receive_data(_ping(b"one") + _ping(b"two"))
    assert hook.seen == [Lesser.PING, Lesser.PING]
    assert [(f.opcode, f.data) for f in _sent(proto)] == [(Opcode.PONG, b"one")]


def test_pings_held_for_later_get_one_pong_for_the_latest_once_released() -> None:
    hook = Hook(Answer.LATER)
    proto, ws = _guarded(hook)
    proto.receive_data(_ping(b"one") + _ping(b"two") + _ping(b"three"))
    assert _sent(proto) == []
    release_pong(ws)  # type: ignore[arg-type]
    release_pong(ws)  # type: ignore[arg-type]
    assert [(f.opcode, f.data) for f in _sent(proto)] == [(Opcode.PONG, b"three")]


def test_a_held_pong_is_not_written_after_the_connection_failed() -> None:
    hook = Hook(Answer.LATER)
    proto, ws = _guarded(hook)
    proto.receive_data(_ping(b"held") + _frame(5000))  # then a frame over the limit: 1009
    assert proto.close_sent is not None and proto.close_sent.code == 1009
    _sent(proto)
    release_pong(ws)  # type: ignore[arg-type]
    assert _sent(proto) == []


def test_a_ping_answered_at_once_drops_the_older_held_one() -> None:
    hook = Hook(Answer.LATER, Answer.PONG)
    proto, ws = _guarded(hook)
    proto.receive_data(_ping(b"old") + _ping(b"new"))
    release_pong(ws)  # type: ignore[arg-type]
    assert [(f.opcode, f.data) for f in _sent(proto)] == [(Opcode.PONG, b"new")]


def test_stop_sends_the_close_the_worker_decided_and_reads_nothing_more() -> None:
    hook = Hook(Answer.PONG, Answer.STOP)
    proto, ws = _guarded(hook)
    note_close(ws, 1008, "policy_violation")  # type: ignore[arg-type]
    note_close(ws, 1013, "later")  # type: ignore[arg-type]  # the first decision counts
    proto.receive_data(_ping(b"a") + _ping(b"b") + _ping(b"c") + _frame(5))
    assert hook.seen == [Lesser.PING, Lesser.PING]  # nothing after the stop
    assert proto.close_sent is not None
    assert (proto.close_sent.code, proto.close_sent.reason) == (1008, "policy_violation")
    assert proto.eof_sent
    assert [e for e in proto.events_received() if isinstance(e, Frame)][-1].data == b"a"
    proto.receive_data(_ping(b"d"))  # discarded
    assert hook.seen == [Lesser.PING, Lesser.PING]


def test_a_ping_before_the_core_is_wired_in_is_held_then_decided() -> None:
    proto, ws = _guarded()
    proto.receive_data(_ping(b"early") + _frame(3, Opcode.PONG))
    assert _sent(proto) == []
    hook = Hook(Answer.PONG)
    watch_lesser(ws, hook)  # type: ignore[arg-type]
    assert hook.seen == [Lesser.PING]
    assert [(f.opcode, f.data) for f in _sent(proto)] == [(Opcode.PONG, b"early")]


def _poll(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``seconds`` (checked every few milliseconds)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="no TCP_INFO on this platform")
def test_tcp_info_offset_reads_the_bytes_the_peer_acknowledged() -> None:
    """``tcpi_bytes_acked`` at the offset used: at most the SYN's 1 before anything is
    sent, then that plus exactly what was sent once the peer has read it all."""
    size = 100_000
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
        with sender, receiver:
            before = tcp_bytes_acked(sender)
            assert before in (0, 1)
            sender.sendall(b"x" * size)
            got = 0
            while got < size:
                got += len(receiver.recv(1 << 16))
            assert _poll(lambda: tcp_bytes_acked(sender) == before + size)
            assert tcp_bytes_acked(sender) == before + size


# ----------------------------------------------------- held pongs on a real connection

WRITE_LIMIT = 1024
BATCH, BATCHES = 100, 60


async def _pings_without_reading() -> tuple[list[bytes], list[int]]:
    """A real server (the worker's connection class, a small write limit, a core that
    holds pongs while the transport is pressured) and a client that sends batches of
    pings and reads nothing until the end. Returns the pongs' payloads the client got
    and the server's backlog after each batch."""
    pressured: set[ServerConnection] = set()
    seen: list[Lesser] = []
    opened: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # back up soon

        def hook(kind: Lesser) -> Answer:
            seen.append(kind)
            return Answer.LATER if ws in pressured else Answer.PONG

        watch_lesser(ws, hook)
        opened.set_result(ws)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        ping_interval=None,
        write_limit=WRITE_LIMIT,
        create_connection=watched_connection(pressured),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        raw = await raw_upgrade(port, rcvbuf=4096)
        loop = asyncio.get_running_loop()
        try:
            ws = await asyncio.wait_for(opened, 5)
            backlog = []
            for batch in range(BATCHES):
                pings = b"".join(_ping(f"{batch * BATCH + i:06d}".encode()) for i in range(BATCH))
                await loop.sock_sendall(raw, pings)
                async with asyncio.timeout(10):
                    while len(seen) < (batch + 1) * BATCH:
                        await asyncio.sleep(0.002)  # polling with a deadline
                backlog.append(ws.transport.get_write_buffer_size())
            data = bytearray()
            async with asyncio.timeout(10):  # read it all: the held pong comes last
                while True:
                    data += await loop.sock_recv(raw, 65536)
                    pongs = _pongs(data)
                    if pongs and pongs[-1] == f"{BATCH * BATCHES - 1:06d}".encode():
                        return pongs, backlog
        finally:
            raw.close()


def _pongs(data: bytearray) -> list[bytes]:
    """The payloads of the pongs in ``data`` (the server's bytes after its upgrade)."""
    _, _, frames = bytes(data).partition(b"\r\n\r\n")
    payloads, at = [], 0
    while at + 2 <= len(frames):
        size = frames[at + 1] & 0x7F
        if at + 2 + size > len(frames):
            break
        if frames[at] & 0x0F == Opcode.PONG:
            payloads.append(frames[at + 2 : at + 2 + size])
        at += 2 + size
    return payloads


def test_a_client_that_pings_and_does_not_read_holds_one_pong_past_the_write_limit() -> None:
    pongs, backlog = uvloop.run(_pings_without_reading())
    # Answered in order while the transport took them, then held: one pong, the
    # latest ping's, once the client read and the transport drained.
    # (The kernel's buffers take a few hundred KiB first: enough pings to pass them.)
    total = BATCH * BATCHES
    assert pongs[:-1] == [f"{i:06d}".encode() for i in range(len(pongs) - 1)]
    assert pongs[-1] == f"{total - 1:06d}".encode()
    assert len(pongs) < total - BATCH, len(pongs)  # the pings of whole batches were held
    # The backlog never passes the write limit by more than the pongs of one read.
    pong = len(_ping(b"000000")) - 4  # a server frame has no mask
    assert max(backlog) <= WRITE_LIMIT + BATCH * pong, backlog


def test_a_closed_transports_socket_reads_as_unknown() -> None:
    """uvloop's pseudo-socket of a transport that was just closed raises ValueError (a
    negative descriptor): the tick samples such a client before its handler has ended,
    and must take it as unknown, not fail."""

    class Closed:
        def getsockopt(self, *args: object) -> bytes:
            raise ValueError("negative file descriptor")

    assert tcp_bytes_acked(Closed()) is None


def test_guarding_a_protocol_builds_it_no_dictionary_of_its_own() -> None:
    """A protocol keeps its attributes inline while their names fit its class's shared
    keys; a second new name would build each connection a 1.5 KiB dictionary."""
    protos = [ServerProtocol(state=State.OPEN) for _ in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for proto in protos:
            ws: Any = SimpleNamespace(protocol=proto)
            limit_frames(ws, FrameLimits(FIRST, REST))
            watch_lesser(ws, lambda kind: Answer.NONE)
            note_close(ws, 1000, "")
        grown = (tracemalloc.get_traced_memory()[0] - before) / len(protos)
    finally:
        tracemalloc.stop()
    assert grown < 400, grown
    assert all(type(proto) is Guarded for proto in protos)


def test_the_keepalive_ping_written_as_is_is_the_frame_websockets_would_write() -> None:
    proto = ServerProtocol(state=State.OPEN)
    proto.send_ping(wsinternals.PING_PAYLOAD)
    assert b"".join(proto.data_to_send()) == wsinternals._PING_FRAME
