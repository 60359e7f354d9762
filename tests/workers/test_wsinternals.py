"""Assumptions :mod:`workers.wsinternals` makes about websockets' internals that the
other tests of it do not pin (test_lean_connection: the lazy deques, the keepalive
timers, the forgotten handshake; test_fanout_groups: the pressured set; test_frames:
pre-framed writes): the first-frame limit and the ``TCP_INFO`` offset."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from workers.outputs import FrameLimits
from workers.wsinternals import FirstFrameLimited, limit_frames, tcp_bytes_acked

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


def test_the_protocol_becomes_first_frame_limited_with_the_pre_auth_limit() -> None:
    proto = _limited()
    assert type(proto) is FirstFrameLimited
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


def test_a_closed_transports_socket_reads_as_unknown() -> None:
    """uvloop's pseudo-socket of a transport that was just closed raises ValueError (a
    negative descriptor): the tick samples such a client before its handler has ended,
    and must take it as unknown, not fail."""

    class Closed:
        def getsockopt(self, *args: object) -> bytes:
            raise ValueError("negative file descriptor")

    assert tcp_bytes_acked(Closed()) is None
