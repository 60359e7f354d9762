"""An asyncio client for the lobby wire protocol, version 1 (see docs/PROTOCOL.md).

Two layers:

* :class:`LobbyView` is pure bookkeeping, no I/O: the lobby sequence number and the set
  of online public keys, with every rule of the contract about snapshots and updates
  checked (no gap, no duplicate, ``left`` applied before ``joined``, a key online at
  most once). Whatever it refuses leaves it unchanged.
* :class:`LobbyClient` is one authenticated connection. ``await LobbyClient.connect(url)``
  (or ``async with LobbyClient.connect(url) as client``) answers the challenge, waits for
  ``auth_ok`` and the first ``lobby_snapshot``, then a background reader keeps
  :attr:`LobbyClient.view` current, queues incoming direct messages, resolves
  :meth:`LobbyClient.send` calls (each with its typed
  :class:`~shared.protocol.SendResult`) and records the close code.

Every frame it writes comes from the client encoders of :mod:`shared.protocol`, and
every frame it reads goes through :func:`shared.protocol.parse_server_frame`; what that
refuses becomes a :class:`ProtocolError` here, whose ``__cause__`` is the
:class:`~shared.protocol.ServerProtocolError`.

The client is also a test instrument, so it never hides a broken contract: every
violation it sees is appended to :attr:`LobbyClient.errors` (the view stays consistent
because a refused update changes nothing), and callers assert that list is empty.

Key helpers at the bottom store an identity as the hex of its 32-byte Ed25519 seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_module
import uuid
from collections.abc import Callable, Coroutine, Generator, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import defaults, protocol

__all__ = [
    "AuthFailed",
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
    "ProtocolError",
    "SequenceGap",
    "ViewError",
    "generate_signing_key",
    "load_or_create_signing_key",
    "load_signing_key",
    "public_key_hex",
    "save_signing_key",
]

DEFAULT_URL: Final = f"ws://{defaults.HOST}:{defaults.PORT}{protocol.WS_PATH}"

# --------------------------------------------------------------------------- errors


class LobbyClientError(Exception):
    """Root of every error this module raises or records."""


class ProtocolError(LobbyClientError):
    """The server sent something the contract does not allow (bad JSON, wrong fields,
    an unknown or out-of-place message type). For a frame
    :func:`~shared.protocol.parse_server_frame` refused, ``__cause__`` is its
    :class:`~shared.protocol.ServerProtocolError`."""


class ViewError(ProtocolError):
    """A snapshot or update the :class:`LobbyView` refused; the view is unchanged."""


class SequenceGap(ViewError):
    """An update whose ``seq`` is beyond ``view.seq + 1`` (or arrived before any
    snapshot, then ``expected`` is None): at least one update was missed."""

    def __init__(self, expected: int | None, received: int) -> None:
        self.expected = expected
        self.received = received
        if expected is None:
            super().__init__(f"lobby_update seq {received} before any lobby_snapshot")
        else:
            super().__init__(f"lobby_update seq {received}, expected {expected}")


class DuplicateUpdate(ViewError):
    """An update whose ``seq`` is at or below the view's: already applied (or older)."""

    def __init__(self, current: int, received: int) -> None:
        self.current = current
        self.received = received
        super().__init__(f"lobby_update seq {received} at or below current seq {current}")


class InconsistentUpdate(ViewError):
    """An update in sequence that contradicts the view: a key ``joined`` while already
    online (and not also in ``left``), a key ``left`` while not online, a key listed
    twice in one list, or both lists empty."""


class InconsistentSnapshot(ViewError):
    """A snapshot that lists one key more than once."""


class ListenerFailed(LobbyClientError):
    """A lobby listener raised; the exception is the ``__cause__``. The view is fine."""


class MessageQueueFull(LobbyClientError):
    """A direct message was dropped because the local queue was full (nobody called
    :meth:`LobbyClient.next_message` fast enough)."""


class AuthFailed(LobbyClientError):
    """The server answered ``auth_failed`` (``reason`` is its reason string)."""

    def __init__(self, reason: str, close_code: int | None) -> None:
        self.reason = reason
        self.close_code = close_code
        super().__init__(f"authentication failed: {reason} (close code {close_code})")


class ConnectionRefusedByServer(LobbyClientError):
    """The server closed the connection before authentication completed (for example
    1013 ``try_again_later`` or 4003 ``auth_timeout``), or refused the HTTP upgrade
    (then ``http_status`` is set, and ``code`` is 1013 for a 503, else None)."""

    def __init__(self, code: int | None, reason: str, http_status: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.http_status = http_status
        where = f"HTTP {http_status}" if http_status is not None else f"close code {code}"
        super().__init__(f"server refused the connection: {where} {reason!r}")


class ConnectionClosedError(LobbyClientError):
    """An operation needed an open connection; ``code``/``reason`` are the close's."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed (code {code}, reason {reason!r})")


# --------------------------------------------------------------------------- the view


class LobbyView:
    """The lobby as a client sees it: ``seq`` and the set of online keys. No I/O.

    ``seq`` is None until the first snapshot. Every ``apply_*`` method either applies
    the whole frame or raises a :class:`ViewError` and changes nothing.
    """

    __slots__ = ("_online", "seq")

    def __init__(self) -> None:
        self.seq: int | None = None
        # A frozenset only where a subclass shares one view between clients; the
        # in-place operators below rebind it then, so this class works either way.
        self._online: set[str] | frozenset[str] = set()

    @property
    def online(self) -> frozenset[str]:
        """A copy of the online keys (O(n); use ``in`` and ``len`` for cheap checks)."""
        return frozenset(self._online)

    def __contains__(self, key: object) -> bool:
        return key in self._online

    def __len__(self) -> int:
        return len(self._online)

    def __repr__(self) -> str:
        return f"LobbyView(seq={self.seq}, online={len(self._online)})"

    def matches(self, keys: AbstractSet[str]) -> bool:
        """True when exactly ``keys`` are online."""
        return self._online == keys

    def apply_snapshot(self, seq: int, keys: Iterable[str]) -> None:
        """Replace everything: ``keys`` are online at ``seq``."""
        key_list = list(keys)
        new = set(key_list)
        if len(new) != len(key_list):
            raise InconsistentSnapshot(f"lobby_snapshot seq {seq} lists a key more than once")
        self.seq = seq
        self._online = new

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None:
        """Apply the delta ``seq``: remove ``left``, then add ``joined``.

        Raises :class:`SequenceGap` unless ``seq == self.seq + 1`` (and
        :class:`DuplicateUpdate` when ``seq <= self.seq``), :class:`InconsistentUpdate`
        when the delta contradicts the view.
        """
        if self.seq is None:
            raise SequenceGap(None, seq)
        if seq <= self.seq:
            raise DuplicateUpdate(self.seq, seq)
        if seq != self.seq + 1:
            raise SequenceGap(self.seq + 1, seq)
        joined_list, left_list = list(joined), list(left)
        joined_set, left_set = set(joined_list), set(left_list)
        if not joined_list and not left_list:
            raise InconsistentUpdate(f"lobby_update seq {seq} has empty joined and left")
        if len(joined_set) != len(joined_list) or len(left_set) != len(left_list):
            raise InconsistentUpdate(f"lobby_update seq {seq} lists a key twice in one list")
        not_online = left_set - self._online
        if not_online:
            raise InconsistentUpdate(
                f"lobby_update seq {seq}: left but not online: {sorted(not_online)[:3]}"
            )
        already = (joined_set - left_set) & self._online
        if already:
            raise InconsistentUpdate(
                f"lobby_update seq {seq}: joined but already online: {sorted(already)[:3]}"
            )
        self._online -= left_set
        self._online |= joined_set
        self.seq = seq


# --------------------------------------------------------------------------- the client


IncomingMessage = protocol.Message
"""A ``message`` frame: a direct message from ``sender`` (lowercase hex key), ``id`` and
``body`` as the sender wrote them; the decoder's own type."""


@dataclass(frozen=True, slots=True)
class LobbyChange:
    """What a lobby listener receives after the view applied a frame: a ``snapshot``
    (``joined`` holds every online key, ``left`` is empty) or an ``update``. ``online``
    is the count after applying it."""

    kind: Literal["snapshot", "update"]
    seq: int
    joined: tuple[str, ...]
    left: tuple[str, ...]
    online: int


LobbyListener = Callable[[LobbyChange], None]
ViewTarget = Callable[[LobbyView], bool] | AbstractSet[str]


def _parse_frame(frame: str | bytes) -> protocol.ServerMessage:
    """:func:`~shared.protocol.parse_server_frame`, refusing with this module's error."""
    try:
        return protocol.parse_server_frame(frame)
    except protocol.ServerProtocolError as exc:
        raise ProtocolError(f"malformed server frame: {exc}") from exc


def _error_dict(frame: protocol.ErrorFrame) -> dict[str, Any]:
    code = frame.code.value if isinstance(frame.code, protocol.ErrorCode) else frame.code
    return {"type": frame.TYPE, "code": code, "message": frame.message}


def _result_dict(result: protocol.SendResult) -> dict[str, Any]:
    obj = {"type": result.TYPE, "id": result.id, "status": result.status.value}
    if result.reason is not None:
        obj["reason"] = result.reason.value
    return obj


class LobbyClient:
    """One authenticated lobby connection. Create it with :meth:`connect`.

    Public state, all updated by the background reader:

    * ``view``: the :class:`LobbyView`; ``wait_for_view`` waits on it.
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
      ``messages_dropped``: counters.
    * ``close_code``/``close_reason``: set once the connection is closed (1006 when it
      ended without a close frame), whoever closed it.
    """

    def __init__(
        self,
        ws: ClientConnection,
        signing_key: SigningKey,
        *,
        message_queue_size: int,
        resync_on_error: bool,
        max_recorded_errors: int = 1000,
        max_error_frames: int = 100,
    ) -> None:
        """Use :meth:`connect`; this wraps an already authenticated connection."""
        self._ws = ws
        self.signing_key = signing_key
        self.public_key = public_key_hex(signing_key)
        self.view = LobbyView()
        self.errors: list[LobbyClientError] = []
        self.error_count = 0
        self.error_frames: list[dict[str, Any]] = []
        self.unmatched_results: list[dict[str, Any]] = []
        self.snapshots_received = 0
        self.updates_received = 0
        self.messages_received = 0
        self.messages_dropped = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._max_errors = max_recorded_errors
        self._max_error_frames = max_error_frames
        self._resync_on_error = resync_on_error
        self._resync_requested = False
        self._messages: asyncio.Queue[IncomingMessage | None] = asyncio.Queue(
            maxsize=message_queue_size
        )
        self._pending: dict[str, asyncio.Future[protocol.SendResult]] = {}
        self._changed = asyncio.Condition()
        self._waiting = 0  # coroutines in _wait_until: the reader notifies only then
        self._closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # keeps resync sends alive
        self.lobby_listeners: list[LobbyListener] = []

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
    ) -> _Connecting:
        """Connect, authenticate and wait for the first snapshot.

        Use as ``client = await LobbyClient.connect(url)`` or
        ``async with LobbyClient.connect(url) as client:`` (closes on exit).

        * ``signing_key``: the identity; a fresh one is generated when None.
        * ``open_timeout`` (10 s): covers the TCP/WebSocket handshake and the whole auth
          exchange; above the server's few seconds before it answers 1013 when the
          coordinator is unavailable, so that answer is seen rather than a timeout.
          Raises :class:`TimeoutError` when it passes.
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

        Raises :class:`AuthFailed`, :class:`ConnectionRefusedByServer`,
        :class:`ProtocolError`, :class:`TimeoutError` or :class:`OSError`.
        """
        key = signing_key if signing_key is not None else generate_signing_key()

        async def factory() -> LobbyClient:
            return await cls._open(
                url,
                key,
                open_timeout=open_timeout,
                message_queue_size=message_queue_size,
                resync_on_error=resync_on_error,
                max_size=max_size,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                compression=compression,
                proxy=proxy,
                ssl=ssl,
            )

        return _Connecting(factory)

    @classmethod
    async def _open(
        cls,
        url: str,
        key: SigningKey,
        *,
        open_timeout: float,
        message_queue_size: int,
        resync_on_error: bool,
        max_size: int | None,
        ping_interval: float | None,
        ping_timeout: float | None,
        compression: str | None,
        proxy: str | Literal[True] | None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> LobbyClient:
        ws: ClientConnection | None = None
        tls: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
        try:
            async with asyncio.timeout(open_timeout):
                try:
                    ws = await ws_connect(
                        url,
                        open_timeout=open_timeout,
                        max_size=max_size,
                        ping_interval=ping_interval,
                        ping_timeout=ping_timeout,
                        compression=compression,
                        proxy=proxy,
                        **tls,
                    )
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    code = int(protocol.CloseCode.TRY_AGAIN_LATER) if status == 503 else None
                    raise ConnectionRefusedByServer(code, f"HTTP {status}", status) from exc
                client = cls(
                    ws,
                    key,
                    message_queue_size=message_queue_size,
                    resync_on_error=resync_on_error,
                )
                await client._authenticate()
        except BaseException:
            if ws is not None:
                await ws.close()
            raise
        client._reader = asyncio.create_task(client._read_loop(), name=f"lobby-reader-{url}")
        return client

    def _refusal(self, failed_reason: str | None = None) -> LobbyClientError:
        """The error for a close before authentication completed."""
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        if failed_reason is not None or code == protocol.CloseCode.AUTH_FAILED:
            return AuthFailed(failed_reason or reason, code)
        return ConnectionRefusedByServer(code, reason)

    async def _recv_during_auth(self, failed_reason: str | None = None) -> protocol.ServerMessage:
        try:
            return self._parse(await self._ws.recv())
        except ConnectionClosed:
            raise self._refusal(failed_reason) from None

    async def _authenticate(self) -> None:
        hello = await self._recv_during_auth()
        if not isinstance(hello, protocol.Challenge):
            raise ProtocolError(f"expected a challenge, got {hello!r:.120}")
        if hello.version != protocol.VERSION:
            raise ProtocolError(f"unsupported protocol version {hello.version!r}")
        signature = protocol.sign_challenge(self.signing_key, hello.nonce)
        try:
            await self._ws.send(protocol.auth(self.public_key, signature))
        except ConnectionClosed:
            raise self._refusal() from None
        answer = await self._recv_during_auth()
        if isinstance(answer, protocol.AuthFailedFrame):
            reason = answer.reason
            text = reason.value if isinstance(reason, protocol.AuthFailure) else reason
            # The server closes with 4001 right after; report that code too.
            await self._recv_during_auth(failed_reason=text)
            raise ProtocolError(f"frame after auth_failed instead of a close ({text})")
        if not isinstance(answer, protocol.AuthOk):
            raise ProtocolError(f"expected auth_ok, got {answer!r:.120}")
        if answer.public_key != self.public_key:
            raise ProtocolError(f"auth_ok names another key: {answer.public_key!r}")
        snapshot = await self._recv_during_auth()
        if not isinstance(snapshot, protocol.LobbySnapshot):
            raise ProtocolError(f"expected lobby_snapshot after auth_ok, got {snapshot!r:.120}")
        self._handle(snapshot)
        if self.public_key not in self.view:
            raise ProtocolError("the first lobby_snapshot does not contain the client itself")

    # ----------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    frame = await self._ws.recv()
                except ConnectionClosed:
                    break
                try:
                    self._handle_frame(frame)
                except LobbyClientError as exc:
                    self._record(exc)
                if self._waiting:  # nobody waits: skip the lock (a waiter checks first)
                    async with self._changed:
                        self._changed.notify_all()
        finally:
            await self._on_closed()

    async def _on_closed(self) -> None:
        self.close_code = self._ws.close_code
        self.close_reason = self._ws.close_reason
        error = ConnectionClosedError(self.close_code, self.close_reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._closed.set()
        # Wake a waiting next_message. Nobody waits on a full queue, and next_message
        # checks _closed before waiting, so a full queue needs no marker.
        with contextlib.suppress(asyncio.QueueFull):
            self._messages.put_nowait(None)
        async with self._changed:
            self._changed.notify_all()

    def _handle_frame(self, frame: str | bytes) -> None:
        """Decode and handle one frame received after authentication (subclasses may
        handle some frames faster, with the same checks)."""
        self._handle(self._parse(frame))

    def _parse(self, frame: str | bytes) -> protocol.ServerMessage:
        """Decode one server frame, raising :class:`ProtocolError` (subclasses may decode
        some frames faster, to the same result)."""
        return _parse_frame(frame)

    def _record(self, error: LobbyClientError) -> None:
        self.error_count += 1
        if len(self.errors) < self._max_errors:
            self.errors.append(error)

    def _handle(self, msg: protocol.ServerMessage) -> None:
        if isinstance(msg, protocol.LobbyUpdate):
            self.updates_received += 1
            try:
                self.view.apply_update(msg.seq, msg.joined, msg.left)
            except DuplicateUpdate:
                raise
            except ViewError:
                self._request_resync()
                raise
            self._notify(LobbyChange("update", msg.seq, msg.joined, msg.left, len(self.view)))
        elif isinstance(msg, protocol.LobbySnapshot):
            self.snapshots_received += 1
            self._resync_requested = False
            self.view.apply_snapshot(msg.seq, msg.users)
            self._notify(LobbyChange("snapshot", msg.seq, msg.users, (), len(self.view)))
        elif isinstance(msg, protocol.Message):
            self.messages_received += 1
            try:
                self._messages.put_nowait(msg)
            except asyncio.QueueFull:
                self.messages_dropped += 1
                raise MessageQueueFull(f"dropped message {msg.id!r}") from None
        elif isinstance(msg, protocol.SendResult):
            future = self._pending.pop(msg.id, None)
            if future is None or future.done():
                self.unmatched_results.append(_result_dict(msg))
            else:
                future.set_result(msg)
        elif isinstance(msg, protocol.ErrorFrame):
            self.error_frames.append(_error_dict(msg))
            del self.error_frames[: -self._max_error_frames]
        else:
            raise ProtocolError(f"unexpected {msg.TYPE!r} frame after authentication")

    def _notify(self, change: LobbyChange) -> None:
        for listener in self.lobby_listeners:
            try:
                listener(change)
            except Exception as exc:
                failure = ListenerFailed(f"lobby listener {listener!r} raised {exc!r}")
                failure.__cause__ = exc
                self._record(failure)

    def _request_resync(self) -> None:
        if self._resync_on_error and not self._resync_requested and not self._closed.is_set():
            self._resync_requested = True
            task = asyncio.get_running_loop().create_task(self._send_quietly(protocol.get_lobby()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_quietly(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(text)

    # ----------------------------------------------------------------- API

    @property
    def closed(self) -> bool:
        """True once the connection has ended (the reader has recorded the close)."""
        return self._closed.is_set()

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as is (for tests of the server's error handling).

        Raises :class:`ConnectionClosedError` when the connection is closed.
        """
        try:
            await self._ws.send(frame)
        except ConnectionClosed:
            raise ConnectionClosedError(self._ws.close_code, self._ws.close_reason) from None

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
        ends first.
        """
        if msg_id is None:
            msg_id = uuid.uuid4().hex
        if not 1 <= len(msg_id) <= protocol.MAX_ID_CHARS:
            raise ValueError(f"msg_id must be 1-{protocol.MAX_ID_CHARS} characters")
        if msg_id in self._pending:
            raise ValueError(f"a send with id {msg_id!r} is already waiting for its result")
        if self._closed.is_set():
            raise ConnectionClosedError(self.close_code, self.close_reason)
        future: asyncio.Future[protocol.SendResult] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self.send_raw(protocol.send(to, msg_id, body))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if self._pending.get(msg_id) is future:
                del self._pending[msg_id]

    async def next_message(self, timeout: float | None = 10.0) -> IncomingMessage:
        """The next direct message, in arrival order.

        Waits up to ``timeout`` (10 s; None waits for ever) and raises
        :class:`TimeoutError`; raises :class:`ConnectionClosedError` once the connection
        is closed and every message that arrived before has been returned.
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

        Re-checked after every frame (no polling). ``timeout`` (10 s) raises
        :class:`TimeoutError`; a closed connection raises :class:`ConnectionClosedError`.
        """
        if isinstance(target, AbstractSet):
            wanted = target

            def condition() -> bool:
                return self.view.matches(wanted)

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
        return self.view.online

    async def wait_closed(self, timeout: float | None = 10.0) -> int | None:
        """Wait until the connection has ended (default up to 10 s, then
        :class:`TimeoutError`; None waits for ever); returns the close code."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        return self.close_code

    async def close(self) -> None:
        """Close with 1000 and wait for the reader to finish. Idempotent."""
        await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Connecting:
    """What :meth:`LobbyClient.connect` returns: awaitable, or an async context manager
    that closes the client on exit."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, LobbyClient]]) -> None:
        self._factory = factory
        self._client: LobbyClient | None = None

    def __await__(self) -> Generator[Any, None, LobbyClient]:
        return self._factory().__await__()

    async def __aenter__(self) -> LobbyClient:
        self._client = await self._factory()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


# --------------------------------------------------------------------------- keys


def generate_signing_key() -> SigningKey:
    """A fresh Ed25519 identity."""
    return SigningKey.generate()


def public_key_hex(signing_key: SigningKey) -> str:
    """The identity's public key as the protocol writes it: 64 lowercase hex chars."""
    return bytes(signing_key.verify_key).hex()


def save_signing_key(signing_key: SigningKey, path: str | os.PathLike[str]) -> None:
    """Write the 32-byte seed as hex to ``path`` with mode 0600 (only the owner can
    read a secret key), replacing any existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(bytes(signing_key).hex() + "\n")


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key written by :func:`save_signing_key` (64 hex chars; whitespace ignored).

    Raises :class:`ValueError` naming the file when the contents are not a seed.
    """
    text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    if not protocol.is_hex_key(text):
        raise ValueError(f"{path}: expected the 64-hex seed of an Ed25519 key")
    return SigningKey(bytes.fromhex(text))


def load_or_create_signing_key(path: str | os.PathLike[str]) -> tuple[SigningKey, bool]:
    """Load the key at ``path``, or create and save a new one; returns (key, created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_signing_key(path), False
    key = generate_signing_key()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(bytes(key).hex() + "\n")
    return key, True
