"""An asyncio client for the lobby wire protocol, version 1 (see docs/PROTOCOL.md).

The protocol itself (the handshake, the view and its checks, pending sends, when to
resync, when to reconnect) is :mod:`shared.session`, which does no I/O; this module is
the asyncio adapter around it, over websockets (or any :class:`Transport`):

* :class:`LobbyClient` is one user's connection. ``await LobbyClient.connect(url)``
  (or ``async with LobbyClient.connect(url) as client``) answers the challenge, waits
  for ``auth_ok`` and the first ``lobby_snapshot``, then a background reader keeps
  :attr:`LobbyClient.view` current, queues incoming direct messages, resolves
  :meth:`LobbyClient.send` calls (each with its typed
  :class:`~shared.protocol.SendResult`) and records the close code.
* With ``reconnect=True`` (or a :class:`~shared.session.ReconnectPolicy`) the client
  also outlives its connections: after a close the contract says to retry after (1001,
  1006, 1013, a refused upgrade with HTTP 503...) it connects again, with exponential
  backoff and jitter, with the same identity, and the next snapshot replaces the view;
  after 4001 (bad credentials), 4002 (replaced by a newer session) or 4006 (kicked) it
  stops. Off by default: a client that reconnects on its own must be one that nobody expects to see
  a close from (a test instrument does), so a user of a production server turns it on.

Every frame it reads goes through :func:`shared.protocol.parse_server_frame`; what that
refuses becomes a :class:`ProtocolError` here, whose ``__cause__`` is the
:class:`~shared.protocol.ServerProtocolError`.

The client is also a test instrument, so it never hides a broken contract: every
violation it sees is appended to :attr:`LobbyClient.errors` (the view stays consistent
because a refused update changes nothing), and callers assert that list is empty.

The key helpers of :mod:`shared.keys` (re-exported here) store an identity as the hex
of its 32-byte Ed25519 seed; :mod:`shared.transport` has the connections underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import time
import uuid
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from types import TracebackType
from typing import Any, Final, Literal, Self

from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed

from shared import defaults, protocol
from shared.keys import (
    generate_signing_key,
    load_or_create_signing_key,
    load_signing_key,
    public_key_hex,
    save_signing_key,
)
from shared.session import (
    AuthFailed,
    ConnectionClosedError,
    ConnectionRefusedByServer,
    DuplicateUpdate,
    InconsistentSnapshot,
    InconsistentUpdate,
    ListenerFailed,
    LobbyChange,
    LobbyClientError,
    LobbyView,
    MessageQueueFull,
    ProtocolError,
    ReconnectPolicy,
    SendAnswered,
    SequenceGap,
    Session,
    State,
    ViewError,
    retryable,
)
from shared.transport import (
    Attempt,
    Connecting,
    Opener,
    Transport,
    connect_first,
    open_session,
    websockets_opener,
)

__all__ = [
    "AuthFailed",
    "Connecting",
    "ConnectionClosedError",
    "ConnectionRefusedByServer",
    "DuplicateUpdate",
    "IncomingMessage",
    "InconsistentSnapshot",
    "InconsistentUpdate",
    "ListenerFailed",
    "LobbyChange",
    "LobbyClient",
    "LobbyClientError",
    "LobbyListener",
    "LobbyView",
    "MessageQueueFull",
    "Opener",
    "ProtocolError",
    "ReconnectPolicy",
    "SequenceGap",
    "Transport",
    "ViewError",
    "ViewTarget",
    "generate_signing_key",
    "load_or_create_signing_key",
    "load_signing_key",
    "public_key_hex",
    "save_signing_key",
    "websockets_opener",
]

DEFAULT_URL: Final = f"ws://{defaults.HOST}:{defaults.PORT}{protocol.WS_PATH}"


IncomingMessage = protocol.Message
"""A ``message`` frame: a direct message from ``sender`` (lowercase hex key), ``id`` and
``body`` as the sender wrote them; the decoder's own type."""

LobbyListener = Callable[[LobbyChange], None]
ViewTarget = Callable[[Any], bool] | AbstractSet[str]


class LobbyClient:
    """One user's lobby connection (or, with ``reconnect``, a series of them). Create
    it with :meth:`connect`.

    Public state, all updated by the background reader:

    * ``view``: the :class:`LobbyView`; ``wait_for_view`` waits on it.
    * ``session``: the current connection's :class:`~shared.session.Session`.
    * ``lobby_listeners``: callables given a :class:`LobbyChange` after every applied
      snapshot or update (run in the reader: keep them quick; what they raise is
      recorded as :class:`ListenerFailed`). The first snapshot is applied before
      :meth:`connect` returns, so read it from ``view``.
    * ``errors``: every contract violation seen (the first ``max_recorded_errors``;
      ``error_count`` counts all of them). Tests assert it is empty.
    * ``error_frames``: the last ``max_error_frames`` ``error`` frames, as dicts of
      their fields as the contract names them (``type``, ``code``, ``message``).
    * ``unmatched_results``: ``send_result`` frames for ids no :meth:`send` waits for
      (answers to :meth:`send_raw`, or late answers to a :meth:`send` that timed out),
      as dicts likewise (``type``, ``id``, ``status`` and, when rejected, ``reason``).
    * ``snapshots_received``, ``updates_received``, ``messages_received``,
      ``messages_dropped``: counters, over every connection.
    * ``close_code``/``close_reason``: set once a connection is closed (1006 when it
      ended without a close frame), whoever closed it: the last one's.
    * ``status``: ``online``, ``reconnecting`` (only with ``reconnect``) or
      ``closed``; ``reconnects`` counts the reconnections that got online, and
      ``attempts`` keeps the last 100 reconnection :class:`Attempt`\\ s.
    """

    def __init__(
        self,
        ws: Transport,
        signing_key: SigningKey,
        *,
        message_queue_size: int,
        resync_on_error: bool,
        max_recorded_errors: int = 1000,
        max_error_frames: int = 100,
        session: Session | None = None,
    ) -> None:
        """Use :meth:`connect`. This wraps the connection ``ws``, whose protocol state
        is ``session`` (by default a fresh one, open: authenticated elsewhere)."""
        self._ws = ws
        self.signing_key = signing_key
        self.public_key = public_key_hex(signing_key)
        if session is None:
            session = Session(signing_key, resync_on_error=resync_on_error, state=State.OPEN)
        self.session = session
        self.view = session.view
        self.errors: list[LobbyClientError] = []
        self.error_count = 0
        self.error_frames: list[dict[str, Any]] = []
        self.unmatched_results: list[dict[str, Any]] = []
        self.messages_dropped = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.status = "online"
        self.reconnects = 0
        self.attempts: list[Attempt] = []
        self._counted = [0, 0, 0]  # counters of the sessions before this one
        self._max_errors = max_recorded_errors
        self._max_error_frames = max_error_frames
        self._resync_on_error = resync_on_error
        self._messages: asyncio.Queue[IncomingMessage | None] = asyncio.Queue(
            maxsize=message_queue_size
        )
        self._futures: dict[str, asyncio.Future[protocol.SendResult]] = {}
        self._changed = asyncio.Condition()
        self._waiting = 0  # coroutines in _wait_until: the reader notifies only then
        self._closed = asyncio.Event()
        self._stopping = asyncio.Event()  # close() was called
        self._reader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # keeps writes alive
        self._reopen: Callable[[Any], Awaitable[tuple[Transport, Session, LobbyChange]]] | None = (
            None
        )
        self._policy: ReconnectPolicy | None = None
        self.lobby_listeners: list[LobbyListener] = []

    # ----------------------------------------------------------------- counters

    @property
    def snapshots_received(self) -> int:
        return self._counted[0] + self.session.snapshots_received

    @property
    def updates_received(self) -> int:
        return self._counted[1] + self.session.updates_received

    @property
    def messages_received(self) -> int:
        return self._counted[2] + self.session.messages_received

    @property
    def connection(self) -> Transport:
        """The current connection."""
        return self._ws

    # ----------------------------------------------------------------- connecting

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_URL,
        signing_key: SigningKey | None = None,
        *,
        open_timeout: float = 10.0,
        message_queue_size: int = 10_000,
        resync_on_error: bool = True,
        max_size: int | None = 64 * 2**20,
        ping_interval: float | None = defaults.PING_INTERVAL,
        ping_timeout: float | None = defaults.PING_TIMEOUT,
        compression: str | None = None,
        proxy: str | Literal[True] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        reconnect: bool | ReconnectPolicy = False,
        opener: Opener | None = None,
        session_factory: Callable[[SigningKey], Session] | None = None,
        version: int = 1,
        **v2: Any,
    ) -> Connecting[Self]:
        """Connect, authenticate and wait for the first snapshot.

        Use as ``client = await LobbyClient.connect(url)`` or
        ``async with LobbyClient.connect(url) as client:`` (closes on exit).

        * ``signing_key``: the identity; a fresh one is generated when None.
        * ``open_timeout`` (10 s): covers the TCP/WebSocket handshake and the whole auth
          exchange of one attempt; above the server's few seconds before it answers
          1013 when the coordinator is unavailable, so that answer is seen rather than
          a timeout. Raises :class:`TimeoutError` when it passes.
        * ``message_queue_size`` (10 000): direct messages buffered for
          :meth:`next_message`; beyond it messages are dropped and each drop is
          recorded as :class:`MessageQueueFull` (the reader never blocks, so the view
          and pending sends stay live even if nobody reads messages).
        * ``resync_on_error`` (True): after a gap or an inconsistent update the view is
          stale, so the client sends one ``get_lobby`` to recover (the error is still
          recorded). Duplicates need no resync: they are ignored.
        * ``max_size`` (64 MiB): largest frame accepted. A snapshot costs about 80 bytes
          per online user, so websockets' 1 MiB default would cut lobbies above ~13 000.
        * ``ping_interval``/``ping_timeout`` (20 s each): websockets keepalive,
          matching the server's defaults.
        * ``compression`` (None): permessage-deflate is off on the server by default;
          pass ``"deflate"`` to offer it.
        * ``proxy`` (None): connect directly; ``True`` uses the environment's proxy
          settings, a string names a proxy.
        * ``ssl`` (None): the TLS context for a ``wss://`` URL (None: the system's
          default, which checks the certificate against the system's authorities).
        * ``reconnect`` (False): True (the default :class:`ReconnectPolicy`: 0.5 s
          doubling up to 30 s, full jitter, no limit) or a policy of your own. Then
          this call itself keeps trying while the server refuses in a way worth
          retrying (1013, HTTP 503, a lost connection), raising only what is not (or
          the last error once ``max_attempts`` attempts failed); and once online the
          client reconnects after such closes (``status`` is ``reconnecting`` in
          between; sends raise :class:`ConnectionClosedError` then, waits go on). It
          never retries after ``auth_failed``/4001, 4002 ``session_replaced`` or 4006 ``kicked``.
          Without ``max_attempts`` this call may wait as long as the server stays
          away: bound it with ``asyncio.timeout`` if that matters.
        * ``opener`` (None): how to open a connection (an :data:`Opener`); by default
          websockets' client with the options above.
        * ``session_factory`` (None): makes each connection's
          :class:`~shared.session.Session` (by default ``Session(key)``).
        * ``version`` (1): 2 speaks protocol version 2, and takes ``record`` and
          ``follow`` too (:meth:`shared.client_v2.LobbyClientV2.connect`).

        Raises :class:`AuthFailed`, :class:`ConnectionRefusedByServer`,
        :class:`ProtocolError`, :class:`TimeoutError` or :class:`OSError`.
        """
        if version != 1 or v2:
            arguments = dict(locals())
            from shared.client_v2 import connect_version  # imports this module

            return connect_version(version, arguments)  # type: ignore[return-value]
        key = signing_key if signing_key is not None else generate_signing_key()
        if opener is None:
            opener = websockets_opener(
                open_timeout=open_timeout,
                max_size=max_size,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                compression=compression,
                proxy=proxy,
                ssl=ssl,
            )
        policy = ReconnectPolicy() if reconnect is True else reconnect or None
        make_session = session_factory or (lambda k: Session(k, resync_on_error=resync_on_error))

        async def open_one(view: Any = None) -> tuple[Transport, Session, LobbyChange]:
            session = make_session(key)
            if view is not None:
                session.view = view  # the next snapshot replaces it
            return await open_session(url, opener, session, open_timeout)

        async def factory() -> Self:
            ws, session, _ = await connect_first(open_one, policy)
            client = cls(
                ws,
                key,
                message_queue_size=message_queue_size,
                resync_on_error=resync_on_error,
                session=session,
            )
            client._reopen = open_one
            client._policy = policy
            client._went_online()
            client._reader = asyncio.create_task(client._run(), name=f"lobby-reader-{url}")
            return client

        return Connecting(factory)

    def _went_online(self) -> None:
        """The connection is authenticated and its first snapshot applied."""
        self.status = "online"
        self.view = self.session.view
        handler = getattr(self._ws, "handler", _MISSING)
        if handler is not _MISSING:
            self._ws.handler = self._offered  # type: ignore[attr-defined]

    def _offered(self, frame: str | bytes) -> bool:
        """A frame handed over as it arrived: handled here unless someone waits on the
        view (then the reader takes it, and wakes them)."""
        if self._waiting:
            return False
        self.receive(frame)
        return True

    # ----------------------------------------------------------------- reading

    async def _run(self) -> None:
        """The reader, for the client's whole life: reads each connection to its end,
        then reconnects when the policy says so."""
        try:
            while True:
                await self._read_loop()
                error = self.session.connection_closed(self.close_code, self.close_reason)
                self._fail_sends(error)
                if not await self._reconnect(error):
                    break
        finally:
            self._finish()

    async def _read_loop(self) -> None:
        ws = self._ws
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                break
            self.receive(frame)
            if self._waiting:  # nobody waits: skip the lock (a waiter checks first)
                async with self._changed:
                    self._changed.notify_all()
        self.close_code = ws.close_code
        self.close_reason = ws.close_reason
        handler = getattr(ws, "handler", None)
        if handler is not None:
            ws.handler = None  # type: ignore[attr-defined]

    def _fail_sends(self, error: LobbyClientError) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()

    async def _reconnect(self, error: LobbyClientError) -> bool:
        """After a connection ended with ``error``: connect again per the policy;
        False when the client stops instead."""
        policy, reopen = self._policy, self._reopen
        if policy is None or reopen is None or self._stopping.is_set() or not retryable(error):
            return False
        self.status = "reconnecting"
        self._counted = [self.snapshots_received, self.updates_received, self.messages_received]
        async with self._changed:  # waiters may watch ``status``
            self._changed.notify_all()
        attempt = 0
        while not policy.gives_up(attempt):
            delay = policy.delay(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return False
            started = time.monotonic()
            try:
                ws, session, change = await reopen(self.view)
            except (LobbyClientError, OSError, TimeoutError) as exc:
                self._note(Attempt(started, delay, exc))
                if not retryable(exc):
                    return False
                continue
            self._note(Attempt(started, delay, None))
            self._ws, self.session = ws, session
            self.reconnects += 1
            self._went_online()
            self._notify(change)
            async with self._changed:  # the view is new: waiters check it again
                self._changed.notify_all()
            if self._stopping.is_set():  # close() came while this one was opening
                await ws.close()
            return True
        return False

    def _note(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        del self.attempts[:-100]

    def _finish(self) -> None:
        self.status = "closed"
        self._closed.set()
        # Wake a waiting next_message. Nobody waits on a full queue, and next_message
        # checks _closed before waiting, so a full queue needs no marker.
        with contextlib.suppress(asyncio.QueueFull):
            self._messages.put_nowait(None)
        if self._waiting:
            task = asyncio.get_running_loop().create_task(self._wake())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def receive(self, frame: str | bytes) -> None:
        """Handle one frame as the reader does: through the session, recording what
        breaks the contract in ``errors``, and writing what the session answers."""
        session = self.session
        try:
            events = session.receive(frame)
        except LobbyClientError as exc:
            self.record(exc)
            events = []
        for event in events:
            self.dispatch(event)
        self.flush()

    def dispatch(self, event: Any) -> None:
        """Act on one of the session's events as the reader does: a
        :class:`LobbyChange` goes to the listeners, a message to the queue, a send
        result to its :meth:`send`, an ``error`` frame to ``error_frames``."""
        if isinstance(event, LobbyChange):
            self._notify(event)
        elif isinstance(event, protocol.Message):
            try:
                self._messages.put_nowait(event)
            except asyncio.QueueFull:
                self.messages_dropped += 1
                self.record(MessageQueueFull(f"dropped message {event.id!r}"))
        elif isinstance(event, SendAnswered):
            future = self._futures.pop(event.result.id, None)
            if future is None or future.done():
                self.unmatched_results.append(_result_dict(event.result))
            else:
                future.set_result(event.result)
        elif isinstance(event, protocol.ErrorFrame):
            self.error_frames.append(_error_dict(event))
            del self.error_frames[: -self._max_error_frames]

    def record(self, error: LobbyClientError) -> None:
        """Note a contract violation (or a failed listener) in ``errors``."""
        self.error_count += 1
        if len(self.errors) < self._max_errors:
            self.errors.append(error)

    def _notify(self, change: LobbyChange) -> None:
        for listener in self.lobby_listeners:
            try:
                listener(change)
            except Exception as exc:
                failure = ListenerFailed(f"lobby listener {listener!r} raised {exc!r}")
                failure.__cause__ = exc
                self.record(failure)

    def flush(self) -> None:
        """Write, in the background, what the session has to send (a resync asked for
        outside :meth:`receive`)."""
        out = self.session.data_to_send()
        if out:
            self._write_soon(out)

    @property
    def watched(self) -> bool:
        """True while someone waits on the view (:meth:`wait_for_view`,
        :meth:`get_lobby`): frames then go through the reader, which wakes them."""
        return self._waiting > 0

    def _write_soon(self, frames: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._write_quietly(self._ws, frames))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _write_quietly(ws: Transport, frames: list[str]) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await ws.send(frame)

    # ----------------------------------------------------------------- API

    @property
    def closed(self) -> bool:
        """True once the client has ended for good (the reader recorded the close and
        will not reconnect)."""
        return self._closed.is_set()

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as is (for tests of the server's error handling).

        Raises :class:`ConnectionClosedError` when the connection is closed.
        """
        ws = self._ws
        if self.status != "online":
            raise ConnectionClosedError(self.close_code, self.close_reason)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            raise ConnectionClosedError(ws.close_code, ws.close_reason) from None

    async def send(
        self, to: str, body: str, msg_id: str | None = None, timeout: float = 10.0
    ) -> protocol.SendResult:
        """Send a direct message and return its ``send_result``.

        ``msg_id`` defaults to a fresh UUID (32 hex chars, within the 64 allowed); it
        must not be pending already. The result's ``status`` is a
        :class:`~shared.protocol.SendStatus`: ``DELIVERED``, ``OFFLINE`` or ``REJECTED``
        with a :class:`~shared.protocol.RejectReason` as ``reason`` (see also
        ``result.delivered`` and ``result.outcome``). A rejection is an answer, not an
        exception. ``timeout`` (10 s) bounds the wait for the answer; raises
        :class:`TimeoutError` then, :class:`ConnectionClosedError` if the connection
        ends first (or there is none: closed, or reconnecting).
        """
        if msg_id is None:
            msg_id = uuid.uuid4().hex
        session = self.session
        try:
            session.send(to, body, msg_id)
        except ConnectionClosedError:
            raise ConnectionClosedError(self.close_code, self.close_reason) from None
        future: asyncio.Future[protocol.SendResult] = asyncio.get_running_loop().create_future()
        self._futures[msg_id] = future
        try:
            for frame in session.data_to_send():
                await self.send_raw(frame)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if self._futures.get(msg_id) is future:
                del self._futures[msg_id]
                session.forget(msg_id)

    async def next_message(self, timeout: float | None = 10.0) -> IncomingMessage:
        """The next direct message, in arrival order.

        Waits up to ``timeout`` (10 s; None waits for ever) and raises
        :class:`TimeoutError`; raises :class:`ConnectionClosedError` once the client is
        closed and every message that arrived before has been returned.
        """
        if self._closed.is_set() and self._messages.empty():
            raise ConnectionClosedError(self.close_code, self.close_reason)
        async with asyncio.timeout(timeout):
            item = await self._messages.get()
        if item is None:
            self._messages.put_nowait(None)  # later calls see the close too
            raise ConnectionClosedError(self.close_code, self.close_reason)
        return item

    async def _wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout), self._changed:
                while not condition():
                    if self._closed.is_set():
                        raise ConnectionClosedError(self.close_code, self.close_reason)
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None
        finally:
            self._waiting -= 1

    async def wait_for_view(self, target: ViewTarget, timeout: float = 10.0) -> None:
        """Wait until the view satisfies ``target``: a predicate on the
        :class:`LobbyView`, or a set meaning exactly those keys online.

        Re-checked after every frame and change of ``status`` (no polling), and across
        reconnections.
        ``timeout`` (10 s) raises :class:`TimeoutError`; a client closed for good
        raises :class:`ConnectionClosedError`.
        """
        if isinstance(target, AbstractSet):
            wanted = target

            def condition() -> bool:
                return bool(self.view.matches(wanted))

            what = f"a view of exactly {len(wanted)} keys"
        else:
            predicate = target

            def condition() -> bool:
                return predicate(self.view)

            what = f"the view to satisfy {getattr(predicate, '__name__', 'the predicate')}"
        await self._wait_until(condition, timeout, f"{what} (now {self.view!r})")

    async def get_lobby(self, timeout: float = 10.0) -> frozenset[str]:
        """Ask for a snapshot, wait for the next one to arrive, return the online keys.

        Any snapshot received after the request counts (the server may send an
        unprompted one first; it is just as fresh). ``timeout`` defaults to 10 s.
        """
        before = self.snapshots_received
        await self.send_raw(protocol.get_lobby())
        await self._wait_until(lambda: self.snapshots_received > before, timeout, "a snapshot")
        online: frozenset[str] = self.view.online
        return online

    async def wait_closed(self, timeout: float | None = 10.0) -> int | None:
        """Wait until the client has ended for good (default up to 10 s, then
        :class:`TimeoutError`; None waits for ever); returns the last close code."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        return self.close_code

    def drop(self) -> None:
        """End the connection without a close frame (TCP FIN/RST, no WebSocket close),
        the way a phone losing its network does; for tests (a client with
        ``reconnect`` then reconnects)."""
        self._ws.transport.abort()

    async def close(self) -> None:
        """Close with 1000, stop reconnecting, and wait for the reader to finish.
        Idempotent."""
        self._stopping.set()
        reader = self._reader
        if reader is not None and self.status == "reconnecting":
            reader.cancel()  # waiting to reconnect, or opening a connection: drop it
            await asyncio.wait([reader])
            return
        await self._ws.close()
        if reader is not None:
            await reader

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


_MISSING: Final = object()


def _error_dict(frame: protocol.ErrorFrame) -> dict[str, Any]:
    code = frame.code.value if isinstance(frame.code, protocol.ErrorCode) else frame.code
    return {"type": frame.TYPE, "code": code, "message": frame.message}


def _result_dict(result: protocol.SendResult) -> dict[str, Any]:
    obj = {"type": result.TYPE, "id": result.id, "status": result.status.value}
    if result.reason is not None:
        obj["reason"] = result.reason.value
    return obj
