"""What the shell trims from a websockets connection to make an idle client cheap
(workers/wsinternals.py: :class:`LazyDeque`, the ``Watched`` connection class): the same
behaviour and the same bounds as websockets' own deques."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.server import ServerProtocol

from tests.support import raw_upgrade
from workers.wsinternals import PING_PAYLOAD, LazyDeque, forget_handshake, watched_connection

# ---------------------------------------------------------------------------- LazyDeque

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 5)),
        st.tuples(st.just("extendleft"), st.lists(st.integers(0, 5), max_size=4)),
        st.tuples(st.just("popleft"), st.none()),
        st.tuples(st.just("remove"), st.integers(0, 5)),
    ),
    max_size=60,
)


def _apply(target: Any, op: str, arg: Any) -> object:
    try:
        return getattr(target, op)(*([] if arg is None else [arg]))
    except (IndexError, ValueError) as exc:
        return type(exc)


@given(_OPS)
def test_lazy_deque_behaves_like_a_deque_and_holds_nothing_while_empty(
    ops: list[tuple[str, Any]],
) -> None:
    lazy: LazyDeque[int] = LazyDeque()
    real: deque[int] = deque()
    for op, arg in ops:
        assert _apply(lazy, op, arg) == _apply(real, op, arg), (op, arg)
        assert list(lazy) == list(real)
        assert len(lazy) == len(real)
        assert bool(lazy) == bool(real)
        assert (lazy._items is None) == (not real)  # an empty one holds no deque


# ---------------------------------------------------------------------------- connection

FRAMES = 64
MAX_QUEUE = 4


async def _received_frames_stay_bounded() -> None:
    """With the lazy frame queue, websockets still stops reading a client whose frames
    are not consumed (``max_queue``), hands them over in order, resumes, and keeps no
    deque once they are consumed."""
    pressured: set[ServerConnection] = set()
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    consume = asyncio.Event()
    received: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        connected.set_result(ws)
        await consume.wait()
        received.extend([str(await ws.recv()) for _ in range(FRAMES)])
        await ws.send("done")

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        max_queue=MAX_QUEUE,
        create_connection=watched_connection(pressured),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            ws = await asyncio.wait_for(connected, 5)
            assert isinstance(ws.recv_messages.frames.queue, LazyDeque)
            assert isinstance(ws.drain_waiters, LazyDeque)
            assert not ws.recv_messages.frames.queue  # nothing received: nothing held
            for i in range(FRAMES):
                await client.send(f"frame {i}")
            transport = ws.transport
            assert transport is not None
            async with asyncio.timeout(10):  # the bound: reading paused, frames held
                while transport.is_reading():
                    await asyncio.sleep(0.01)
            held = len(ws.recv_messages.frames)
            assert MAX_QUEUE <= held < FRAMES
            consume.set()
            assert await asyncio.wait_for(client.recv(), 10) == "done"
            assert received == [f"frame {i}" for i in range(FRAMES)]
            assert transport.is_reading()
            assert ws.recv_messages.frames.queue._items is None  # type: ignore[attr-defined]


async def _a_send_waits_for_the_drain_then_completes() -> None:
    """``send`` past the write limit waits on a drain waiter (in the lazy deque) until
    the client reads; the waiter is gone afterwards."""
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    sent = asyncio.Event()
    frame = "x" * 8192

    async def handler(ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        connected.set_result(ws)
        for _ in range(64):
            await ws.send(frame)
        sent.set()
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        write_limit=16 * 1024,
        create_connection=watched_connection(set()),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        raw = await raw_upgrade(port, rcvbuf=4096)
        loop = asyncio.get_running_loop()
        ws = await asyncio.wait_for(connected, 5)
        async with asyncio.timeout(10):  # the client reads nothing: send() must wait
            while not ws.drain_waiters:
                await asyncio.sleep(0.01)
        assert len(ws.drain_waiters) == 1
        assert not sent.is_set()
        total = 0
        async with asyncio.timeout(10):  # now it reads: every send completes
            while not sent.is_set():
                with contextlib.suppress(TimeoutError):
                    total += len(await asyncio.wait_for(loop.sock_recv(raw, 1 << 16), 0.05))
        assert total > 0
        assert not ws.drain_waiters
        assert ws.drain_waiters._items is None  # type: ignore[attr-defined]
        raw.close()


RUNNERS = pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@RUNNERS
def test_received_frames_stay_bounded_and_in_order(
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    runner(_received_frames_stay_bounded())


@RUNNERS
def test_a_send_past_the_write_limit_waits_for_the_drain(
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    runner(_a_send_waits_for_the_drain_then_completes())


async def _handshake_forgotten() -> None:
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.request.headers["X-Test"] == "1"
        forget_handshake(ws)
        connected.set_result(ws)
        await ws.send(str(await ws.recv()))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", additional_headers={"X-Test": "1"}) as client:
            ws = await asyncio.wait_for(connected, 5)
            assert ws.request is not None and ws.response is not None
            assert ws.request.path == "/"
            assert not ws.request.headers and not ws.response.headers
            await client.send("still served")
            assert await asyncio.wait_for(client.recv(), 5) == "still served"


def test_a_connection_is_served_after_its_handshake_is_forgotten() -> None:
    uvloop.run(_handshake_forgotten())


# ---------------------------------------------------------------------------- keepalive

INTERVAL = 0.05


def _counting(pongs: list[float]) -> type[ServerConnection]:
    class Counting(watched_connection(set())):  # type: ignore[misc]
        def acknowledge_pings(self, data: bytes) -> None:
            if data == PING_PAYLOAD:
                pongs.append(asyncio.get_running_loop().time())
            super().acknowledge_pings(data)

    return Counting


async def _keepalive_answered() -> None:
    """A client that answers pings stays connected, ping after ping, with no
    keepalive task: one schedule holds it while it is open, and forgets it at its
    close."""
    pongs: list[float] = []
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        connected.set_result(ws)
        await ws.wait_closed()

    counting = _counting(pongs)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        ping_interval=INTERVAL,
        ping_timeout=5,
        create_connection=counting,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as client:
            ws = await asyncio.wait_for(connected, 5)
            async with asyncio.timeout(10):
                while len(pongs) < 4:
                    await asyncio.sleep(0.01)
            assert ws.protocol.state.name == "OPEN"
            assert ws.keepalive_task is None and not ws.pending_pings
            assert all(b - a >= INTERVAL * 0.5 for a, b in itertools.pairwise(pongs))
            pinger = counting.pinger
            assert pinger is not None and ws in pinger.schedule
            await client.close()
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws not in pinger.schedule
        assert ws.keepalive_task is None


async def _keepalive_unanswered() -> None:
    """A client that never answers is closed with 1011 keepalive ping timeout, as
    websockets' own keepalive does."""
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        connected.set_result(ws)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        ping_interval=INTERVAL,
        ping_timeout=INTERVAL,
        close_timeout=0.2,
        create_connection=watched_connection(set()),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        raw = await raw_upgrade(port)
        ws = await asyncio.wait_for(connected, 5)
        async with asyncio.timeout(10):  # it reads nothing, so answers no ping
            await ws.wait_closed()
        close = ws.protocol.close_sent
        assert close is not None
        assert (close.code, close.reason) == (1011, "keepalive ping timeout")
        pinger = type(ws).pinger
        assert pinger is not None and not pinger.schedule
        raw.close()


@RUNNERS
def test_keepalive_pings_a_client_that_answers_from_one_schedule_without_a_task(
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    runner(_keepalive_answered())


@RUNNERS
def test_keepalive_closes_a_client_that_does_not_answer_with_1011(
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    runner(_keepalive_unanswered())


async def _no_adapter_until_asked() -> None:
    connection_class = watched_connection(set())
    ws = connection_class(ServerProtocol(), server=None)  # type: ignore[arg-type]
    held = [*vars(ws).values(), *vars(ws.protocol).values()]
    assert not any(isinstance(v, (logging.LoggerAdapter, weakref.ProxyType)) for v in held)
    assert ws.protocol.logger is logging.getLogger("websockets.server")
    assert ws.protocol.id.int == 0  # websockets reads neither; the connection's is its own
    # Asked for, they are what websockets gives: an adapter naming the connection, and
    # one id for the connection's whole life.
    assert ws.logger.extra == {"websocket": ws}
    assert ws.logger.logger is ws.protocol.logger
    assert ws.id == ws.id and ws.id.int != 0


def test_a_connection_makes_its_log_adapter_and_id_only_when_asked() -> None:
    """websockets gives each connection a logger adapter holding a weak proxy of it and
    a UUID (about 470 bytes); a watched connection holds neither until asked."""
    uvloop.run(_no_adapter_until_asked())
