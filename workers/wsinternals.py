"""Everything that reaches into websockets' internals, in one place.

Theory of operation
-------------------
websockets 17 is pinned below 18 (pyproject.toml): the worker relies on parts of it
that are not its public API, and this module is the one place to re-check on an
upgrade. ``tests/workers/test_wsinternals.py``, ``test_lean_connection.py``,
``test_fanout_groups.py`` and ``test_frames.py`` pin each assumption made here.

Frame limits (:func:`limit_frames`): the first data message a client sends may be at
most the pre-auth limit, every later one the full limit. The connection's protocol
object becomes a :class:`FirstFrameLimited` (a subclass of websockets'
``ServerProtocol``), which switches ``max_message_size`` as the first message is parsed,
before the frames behind it in the same read.

Pings, pongs and fragments (:class:`Guarded`, :func:`watch_lesser`): websockets answers
every ping in ``recv_frame``, at once, and parses a flood for as long as it comes; one
connection pinging fast and reading a trickle grew a worker by hundreds of MiB and held
its loop for seconds. So the connection's protocol is made :class:`Guarded` before its
first byte is read (:func:`watched_connection`), and each ping, pong and fragment goes to
the core as it is parsed (:meth:`~workers.core.WorkerCore.lesser`, the connection's
machine deciding): a pong now, a pong once the transport drains (only the latest ping's,
held here and written by :func:`release_pong` from ``resume_writing``), nothing, or stop
reading (a flood: the protocol fails with the close the worker decided,
:func:`note_close`, and discards the rest of its input as websockets does after a close
frame). Pongs from the client still reach websockets, which settles its keepalive with
them.

Pressure (:func:`watched_connection`, :func:`write_limit`): a client can only be past
``lag_bytes`` once its transport passed the write limit, which is kept at or below
``lag_bytes``; websockets then pauses writing (``pause_writing``), and the connection
class keeps itself in a *pressured* set until it resumes. The worker asks about those
clients alone, with the same answer it would give if asked about every client. The
same set is sampled each tick for reading progress: the bytes the peer has
acknowledged (:func:`acked_bytes`, Linux ``TCP_INFO`` at a fixed offset), so a client
whose backlog does not move for ``stall_timeout`` is closed with 4005.

Idle clients: most clients are idle most of the time, so what one holds between frames
is what a worker's memory is made of, and what one costs while idle is its keepalive.
The connection class keeps no empty deques (:class:`LazyDeque`) and no keepalive task:
one :class:`Pinger` pings every connection from one timer (:mod:`workers.keepalive`
decides when, and which to drop); its logger adapter and UUID, which websockets reads
only to log an error, are made when asked for;
the handshake's headers are dropped once admission has read the source
(:func:`forget_handshake`). websockets' bounds (``max_queue``, the write limit) are
unchanged.

Pre-framed writes (:func:`write_all`): the bytes of a frame built once
(:class:`~workers.frames.SharedFrame`) are handed to each client's transport, only where
``broadcast()`` would produce exactly these bytes and do exactly this write:

* only connections whose protocol is ``OPEN`` get anything (as ``broadcast`` does:
  one that is closing is skipped);
* never in the middle of another message: a connection sending a fragmented message
  (``send_in_progress``), or whose protocol expects a continuation frame, or still
  holds unsent protocol output (``writes``), takes the normal path, which skips or
  orders it exactly as before;
* a connection with extensions (permessage-deflate) frames differently: normal path;
* when websockets logs frames (its logger at DEBUG), the normal path, so the log shows
  every frame as before.

Backpressure and lag accounting are untouched: the bytes go into the same transport
buffer, whose size the worker reads and whose high-water mark pauses the same
protocol (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode as WsCloseCode
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from workers.keepalive import GRAIN, Schedule
from workers.outputs import Answer, FrameLimits, Lesser

if TYPE_CHECKING:
    from workers.frames import SharedFrame

_T = TypeVar("_T")
_OPEN: Final = State.OPEN


def write_limit(lag_bytes: int) -> int:
    """The transport high-water mark: it must not exceed ``lag_bytes`` so that fan-out
    may skip asking about unpaused clients."""
    return min(lag_bytes, max(1024, lag_bytes // 4))


LesserHook = Callable[[Lesser], Answer]
"""What the worker does with a ping, a pong or a fragment: its core's decision."""

_LESSER: Final = {Opcode.PING: Lesser.PING, Opcode.PONG: Lesser.PONG}
_DATA: Final = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class Guarded(ServerProtocol):
    """websockets' server protocol with two more rules.

    * The first data message may be at most ``max_message_size`` (the pre-auth limit),
      every later one ``rest``. The switch happens as the first message is parsed,
      before the frames behind it in the same read, so frames pipelined behind the
      ``auth`` get the full limit.
    * Every ping, pong and fragment goes to ``lesser`` (the core) as it is parsed, before
      websockets does anything with it (websockets would answer a ping at once, outside
      every bound). The answer says what to do: a pong now; a pong later (``held``: only
      the latest ping's payload, written by :func:`release_pong` once the transport
      drains); nothing; or stop reading (a flood: the rest of the input is discarded,
      as websockets does after a close frame). Until the core is wired in (the
      handshake's few turns of the loop) a ping is held.

    Its own state is one :class:`GuardState`: a protocol holds its attributes inline
    while their names fit the class's shared keys, and a second new name makes Python
    build the instance a dictionary of its own (1.5 KiB a connection)."""

    guard_state: GuardState

    def stop(self) -> None:
        """Read nothing more: fail the connection with the close the worker decided
        (its close frame, unless one went out already, then the end of the stream; the
        rest of the input is discarded, as websockets does after a close frame)."""
        state = self.guard_state
        state.held = None
        # A stop always follows a close the worker decided; 1011 is only a safety net.
        self.fail(*(state.closing or (WsCloseCode.INTERNAL_ERROR, "")))

    def recv_frame(self, frame: Any) -> None:
        opcode = frame.opcode
        kind = _LESSER.get(opcode)
        if kind is None and not frame.fin and opcode in _DATA:
            kind = Lesser.FRAGMENT
        state = self.guard_state
        if kind is not None:
            hook = state.lesser
            if hook is not None:
                answer = hook(kind)
            else:
                answer = Answer.LATER if kind is Lesser.PING else Answer.NONE
            if answer is Answer.STOP:
                self.stop()
                return
            if kind is not Lesser.FRAGMENT:
                if answer is Answer.PONG:
                    state.held = None
                    self.send_frame(Frame(Opcode.PONG, frame.data))
                elif answer is Answer.LATER:
                    state.held = bytes(frame.data)
                self.events.append(frame)  # a pong still settles websockets' keepalive
                return
        super().recv_frame(frame)
        if state.rest is not None and frame.fin and opcode in _DATA:
            self.max_message_size, state.rest = state.rest, None


class GuardState:
    """A :class:`Guarded` protocol's own state: the message limit after the first
    (``rest``), the core's hook, the held ping's payload, the close the worker decided
    (:func:`note_close`, for :meth:`Guarded.stop`)."""

    __slots__ = ("closing", "held", "lesser", "rest")

    def __init__(self) -> None:
        self.rest: int | None = None
        self.lesser: LesserHook | None = None
        self.held: bytes | None = None
        self.closing: tuple[int, str] | None = None


def guard(proto: Any) -> None:
    """Make ``proto`` (websockets' ``ServerProtocol``) a :class:`Guarded` one."""
    if type(proto) is ServerProtocol:
        guarded: Any = proto  # (narrowed to ServerProtocol above)
        guarded.__class__ = Guarded
        guarded.guard_state = GuardState()


def limit_frames(ws: ServerConnection, limits: FrameLimits) -> None:
    proto: Any = ws.protocol
    guard(proto)
    proto.max_message_size = limits.first
    if isinstance(proto, Guarded):
        proto.guard_state.rest = limits.rest


def note_close(ws: ServerConnection, code: int, reason: str) -> None:
    """The worker decided to close ``ws`` with ``code`` (the first such decision
    counts): what :meth:`Guarded.stop` sends if it stops reading before the closing
    handshake has begun."""
    proto: Any = ws.protocol
    if isinstance(proto, Guarded) and proto.guard_state.closing is None:
        proto.guard_state.closing = (code, reason)


def watch_lesser(ws: ServerConnection, hook: LesserHook) -> None:
    """From now on ``hook`` decides about ``ws``'s pings, pongs and fragments; a ping
    held until now is decided at once."""
    proto: Any = ws.protocol
    guard(proto)
    proto.guard_state.lesser = hook
    if proto.guard_state.held is not None:
        answer = hook(Lesser.PING)
        if answer is Answer.PONG:
            release_pong(ws)
        elif answer is Answer.STOP:
            proto.stop()
            ws.send_data()


def release_pong(ws: ServerConnection) -> None:
    """Write the held ping's pong (the transport is below its write limit again)."""
    proto: Any = ws.protocol
    state: GuardState | None = getattr(proto, "guard_state", None)
    held = None if state is None else state.held
    if state is None or held is None:
        return  # nothing held
    if proto.state not in (State.OPEN, State.CLOSING) or proto.eof_sent:
        return  # nothing may be written any more
    state.held = None
    proto.send_pong(held)
    try:
        ws.send_data()
    except Exception as exc:  # as websockets' data_received: the connection ends
        ws.set_connection_exc(exc)


def forget_handshake(ws: ServerConnection) -> None:
    """Drop the headers of the handshake's request and response, which websockets keeps
    for the life of the connection (about 1.5 KiB per client); nothing reads them after
    admission has taken the client's source from them. The request itself stays:
    websockets tells the handshake from later frames by whether it has one."""
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers = Headers()


class LazyDeque(Generic[_T]):
    """The part of :class:`collections.deque` that websockets uses for a connection's
    received frames and drain waiters, holding no deque while empty.

    An empty deque still holds one 64-slot block (about 600 bytes); an idle connection
    has two, empty nearly all the time. This holds ``None`` instead and makes a deque
    when an item arrives, dropping it when the last one leaves. Same order, same
    errors, same bounds (websockets' own: ``max_queue`` pauses reading)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[_T] | None = None

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self) -> Iterator[_T]:
        return iter(()) if self._items is None else iter(self._items)

    def append(self, item: _T) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def extendleft(self, items: Iterable[_T]) -> None:
        if self._items is None:
            self._items = deque()
        self._items.extendleft(items)
        self._drop_if_empty()

    def popleft(self) -> _T:
        if self._items is None:
            raise IndexError("pop from an empty deque")
        item = self._items.popleft()
        self._drop_if_empty()
        return item

    def remove(self, item: _T) -> None:
        if self._items is None:
            raise ValueError(f"{item!r} is not in deque")
        self._items.remove(item)
        self._drop_if_empty()

    def _drop_if_empty(self) -> None:
        if not self._items:
            self._items = None


_NO_ID: Final = uuid.UUID(int=0)
"""The id of every watched connection's protocol (nothing reads it): the connection
makes its own if asked."""

PING_PAYLOAD: Final = b""
"""The keepalive ping's payload. One for all: a pong answers the ping it echoes, and a
connection has at most one keepalive ping out (an empty one is the shortest frame)."""
_PING_FRAME: Final = b"\x89\x00"
"""A server's (unmasked) ping frame with :data:`PING_PAYLOAD`."""


class Pinger:
    """One timer for the keepalive of every connection of a server: it asks the
    :class:`~workers.keepalive.Schedule` what is due at most every
    :data:`~workers.keepalive.GRAIN` seconds, writes the pings and fails the
    connections that did not answer (1011 ``keepalive ping timeout``, as websockets).
    ``paused``: the connections whose writes are paused (they are not pinged; see
    :mod:`workers.keepalive`)."""

    __slots__ = ("_ran", "_timer", "paused", "schedule")

    def __init__(self, schedule: Schedule[ServerConnection], paused: set[ServerConnection]) -> None:
        self.schedule = schedule
        self.paused = paused
        self._timer: asyncio.TimerHandle | None = None
        self._ran = float("-inf")

    def add(self, ws: ServerConnection) -> None:
        """``ws`` finished its handshake: its first ping is one interval from now."""
        loop = ws.loop
        self.schedule.add(ws, loop.time())
        if self._timer is None:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        at = self.schedule.next_at()
        if at is not None:
            self._timer = loop.call_at(max(at, self._ran + GRAIN), self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = self._ran = loop.time()
        due = self.schedule.due(now, self.paused)
        for ws in due.ping:
            ping(ws)
        for ws in due.drop:
            drop_unanswered(ws)
        self._arm(loop)


def ping(ws: ServerConnection) -> None:
    """Write a keepalive ping to ``ws``, if it is open. Its frame is written as is
    where websockets would write exactly these bytes now (no unsent protocol output
    before it, no frame logging); a control frame may go between the fragments of a
    message, and permessage-deflate does not touch control frames."""
    protocol = ws.protocol
    if protocol._state is not _OPEN:
        return
    try:
        if protocol.writes or protocol.debug:
            protocol.send_ping(PING_PAYLOAD)
            ws.send_data()
        else:
            ws.transport.write(_PING_FRAME)
    except Exception as exc:  # as websockets' data_received: the connection ends
        ws.set_connection_exc(exc)


def drop_unanswered(ws: ServerConnection) -> None:
    """Close ``ws``, whose pong did not come in time, as websockets' keepalive does
    (1011 ``keepalive ping timeout``, then the closing handshake's timeout). The task is
    kept where websockets keeps its keepalive task: ``connection_lost`` cancels it."""
    if ws.protocol.state is _OPEN:
        ws.keepalive_task = ws.loop.create_task(_fail_keepalive(ws))


async def _fail_keepalive(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async with ws.send_context():
            ws.protocol.fail(WsCloseCode.INTERNAL_ERROR, "keepalive ping timeout")


HANDSHAKE_BYTES: Final = 16 * 1024
"""Bytes a connection may send before its handshake completes (the upgrade request: a
browser's is under 2 KiB). websockets alone would hold up to 128 header lines of 8 KiB
each, 1 MiB, for every connection that never finishes; past this the connection is
dropped."""


def watched_connection(
    pressured: set[ServerConnection], send_buffer_bytes: int | None = None
) -> type[ServerConnection]:
    """A connection class that keeps itself in ``pressured`` while websockets has paused
    writing to it (transport buffer past the high-water mark, until it drains).

    Its socket gets a fixed kernel send buffer of ``send_buffer_bytes`` (``SO_SNDBUF``;
    ``None`` leaves the kernel's autotuning, which grows it to megabytes for a slow
    reader), and it is dropped once it sent :data:`HANDSHAKE_BYTES` without completing
    its handshake.

    It also trims what an idle connection holds and costs: no empty deques
    (:class:`LazyDeque`), and no keepalive task. websockets runs a task per connection
    that sleeps ``ping_interval``, pings, and waits up to ``ping_timeout`` for the pong;
    here one :class:`Pinger` per class (the ``ping_interval`` and ``ping_timeout`` the
    server gave its first connection) pings every connection of it from one timer
    (:mod:`workers.keepalive`), with the same 1011 ``keepalive ping timeout``."""

    pinger: Pinger | None = None

    class Watched(ServerConnection):
        pinger: Pinger | None = None
        """The keepalive of every connection of this class, from the first handshake."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.drain_waiters = cast("deque[asyncio.Future[None]]", LazyDeque())
            proto = self.protocol
            # websockets wrapped the protocol's logger in an adapter holding a weak proxy
            # of this connection, and gave it a UUID, for logs (about 330 bytes): the
            # protocol logs through the logger itself, the connection's adapter and id
            # are made if asked for (websockets asks only to log an error).
            logger = proto.logger
            if isinstance(logger, logging.LoggerAdapter):
                proto.logger = logger.logger
            proto.id = _NO_ID

        @property
        def logger(self) -> logging.LoggerAdapter[Any]:
            return logging.LoggerAdapter(self.protocol.logger, {"websocket": self})

        @logger.setter
        def logger(self, value: Any) -> None:
            """websockets' adapter, set in ``__init__``: not kept (see ``__init__``)."""

        @property
        def id(self) -> uuid.UUID:
            made: uuid.UUID | None = self.__dict__.get("_lazy_id")
            if made is None:
                made = self.__dict__["_lazy_id"] = uuid.uuid4()
            return made

        @id.setter
        def id(self, value: Any) -> None:
            """websockets' copy of the protocol's id: not kept (see ``__init__``)."""

        def start_keepalive(self) -> None:
            nonlocal pinger
            if self.ping_interval is None:
                return
            if pinger is None:  # every connection of a server has the same settings
                pinger = Pinger(Schedule(self.ping_interval, self.ping_timeout), pressured)
                Watched.pinger = pinger
            pinger.add(self)

        def acknowledge_pings(self, data: bytes) -> None:
            if pinger is not None and data == PING_PAYLOAD:
                pinger.schedule.answered(self)
            super().acknowledge_pings(data)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            guard(self.protocol)  # before any byte is read: every ping goes through it
            self.handshake_bytes = 0
            sock = transport.get_extra_info("socket")
            if send_buffer_bytes is not None and sock is not None:
                with contextlib.suppress(OSError):  # else the kernel's own buffer
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
            super().connection_made(transport)
            frames = self.recv_messages.frames
            frames.queue = cast("deque[Frame]", LazyDeque())

        def data_received(self, data: bytes) -> None:
            if self.protocol.state is State.CONNECTING:
                self.handshake_bytes += len(data)
                if self.handshake_bytes > HANDSHAKE_BYTES:
                    self.transport.abort()  # websockets would hold up to 1 MiB of headers
                    return
            super().data_received(data)

        def pause_writing(self) -> None:
            super().pause_writing()
            pressured.add(self)

        def resume_writing(self) -> None:
            super().resume_writing()
            pressured.discard(self)
            release_pong(self)

        def connection_lost(self, exc: Exception | None) -> None:
            pressured.discard(self)
            if pinger is not None:
                pinger.schedule.discard(self)
            super().connection_lost(exc)

    return Watched


_TCPI_BYTES_ACKED: Final = struct.Struct("=Q")
_TCPI_BYTES_ACKED_AT: Final = 120  # offset of tcpi_bytes_acked in Linux's struct tcp_info


def acked_bytes(ws: ServerConnection) -> int | None:
    """How many bytes the peer has acknowledged on this connection's TCP socket (Linux
    ``TCP_INFO``), or ``None`` where that cannot be read."""
    transport = ws.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    return None if sock is None else tcp_bytes_acked(sock)


def send_buffer(ws: ServerConnection) -> int:
    """The kernel send buffer granted to ``ws``'s socket (0 where it cannot be read)."""
    transport = ws.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except (OSError, ValueError):  # ValueError: uvloop's socket of a closed transport
        return 0


def trim_memory() -> None:
    """Give the memory the C allocator keeps after frees back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). Freed buffers of a load that has left would
    otherwise stay in the worker's RSS."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def tcp_bytes_acked(sock: Any) -> int | None:
    """``tcpi_bytes_acked`` of ``sock`` (a socket or the transport's socket-like
    wrapper), or ``None`` where the platform has no ``TCP_INFO`` or it is too short."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    except (OSError, ValueError):  # ValueError: uvloop's socket of a closed transport
        return None
    if len(info) < _TCPI_BYTES_ACKED_AT + 8:
        return None
    return int(_TCPI_BYTES_ACKED.unpack_from(info, _TCPI_BYTES_ACKED_AT)[0])


def takes_shared(ws: ServerConnection) -> bool:
    """Whether writing a shared frame's bytes to ``ws``'s transport is exactly what
    ``broadcast()`` would do for it (see the module docstring)."""
    protocol = ws.protocol
    return not (
        protocol.extensions
        or protocol.writes
        or protocol.expect_continuation_frame
        or protocol.debug
        or ws.send_in_progress is not None
    )


def write_all(
    connections: Iterable[ServerConnection],
    frames: Sequence[SharedFrame],
    left: list[tuple[ServerConnection, int]] | None = None,
) -> int:
    """Write ``frames``, in order, to every open connection of ``connections``,
    synchronously: the shared bytes where they are exactly right (several frames as
    one write of their concatenated bytes, which is what writing them one after the
    other puts on the wire), and ``broadcast()`` of each elsewhere. Returns how many
    connections took the shared bytes. ``left``, if given, gets every connection whose
    transport holds a backlog after the write, with that backlog (for the memory
    budget, which is then charged without asking the transport again).

    This loop runs once per client per lobby update, so :func:`takes_shared` is
    inlined and the protocol's state read without its property (a tenth of the loop's
    cost); ``tests/workers/test_frames.py`` pins both to websockets' behaviour."""
    if not frames:
        return 0
    shared = 0
    data = frames[0].data if len(frames) == 1 else b"".join(f.data for f in frames)
    normal: list[ServerConnection] = []
    for ws in connections:
        protocol = ws.protocol
        if protocol._state is not _OPEN:
            continue
        if (
            protocol.extensions
            or protocol.writes
            or protocol.expect_continuation_frame
            or protocol.debug
            or ws.send_in_progress is not None
        ):
            normal.append(ws)
        else:
            transport = ws.transport
            transport.write(data)
            shared += 1
            if left is not None and (backlog := transport.get_write_buffer_size()):
                left.append((ws, backlog))
    for frame in frames if normal else ():
        broadcast(normal, frame.text)
    if left is not None:
        for ws in normal:
            if backlog := ws.transport.get_write_buffer_size():
                left.append((ws, backlog))
    return shared
