"""The shell's fan-out shortcuts: client groups, and the paused-transport rule that lets
fan-out ask the machine only about clients whose transport passed the write limit."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, broadcast, serve

from tests.support import raw_upgrade
from workers.clients import Group, group_of
from workers.connection import Connection
from workers.limits import Limits
from workers.states import Flow, State
from workers.wsinternals import watched_connection, write_limit


@given(st.integers(min_value=1, max_value=2**40))
def test_write_limit_never_exceeds_lag_bytes(lag_bytes: int) -> None:
    assert 1 <= write_limit(lag_bytes) <= lag_bytes


def test_groups_follow_state_and_flow() -> None:
    machine = Connection.open(1, b"n" * 32, 0.0, Limits())
    expected = {
        State.CHALLENGED: None,
        State.VERIFIED: Group.VERIFIED,
        State.AUTHENTICATING: Group.AUTHENTICATING,
        State.ACKED: Group.ACKED,
        State.CLOSING: None,
    }
    for state, group in expected.items():
        machine.state = state
        assert group_of(machine) is group
    machine.state = State.AUTHENTICATED
    for flow in Flow:
        machine.flow = flow
        assert group_of(machine) is (Group.CURRENT if flow is Flow.CURRENT else Group.BEHIND)


LAG = 64 * 1024
FRAME = "x" * 8192


async def _paused_rule() -> None:
    """A client that stops reading: whenever its backlog is past the write limit (so
    whenever it could be past ``lag_bytes``), its connection is in ``pressured``; once
    it reads everything, it leaves the set."""
    pressured: set[ServerConnection] = set()
    connected: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        connected.set_result(ws)
        await done.wait()

    limit = write_limit(LAG)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        write_limit=limit,
        create_connection=watched_connection(pressured),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        raw = await raw_upgrade(port, rcvbuf=4096)
        loop = asyncio.get_running_loop()
        response = b""
        while b"\r\n\r\n" not in response:
            response += await loop.sock_recv(raw, 4096)
        ws = await asyncio.wait_for(connected, 5)
        assert ws.transport is not None
        seen_paused = False
        for _ in range(LAG * 4 // len(FRAME)):  # the client reads nothing meanwhile
            broadcast([ws], FRAME)
            buffered = ws.transport.get_write_buffer_size()
            assert buffered <= limit or ws in pressured, buffered
            seen_paused |= ws in pressured
        assert seen_paused
        assert ws.transport.get_write_buffer_size() > LAG  # the rule was really tested
        async with asyncio.timeout(10):  # now it reads: the backlog drains
            while ws in pressured:
                await loop.sock_recv(raw, 1 << 16)
        raw.close()
        done.set()


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_only_paused_transports_can_be_past_the_write_limit(
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    runner(_paused_rule())
