"""The generator's WebSocket connections over picows, when it is installed.

A generator process reads every lobby update once per client, and with websockets
most of its CPU per frame goes to websockets' own frame parsing, written in Python.
picows (the ``bench`` extra) parses frames in C and hands each complete frame to a
callback, where a load client handles it on the spot. :class:`PicowsConnection` is a
:class:`shared.client.Transport` (the part of websockets' ``ClientConnection`` that
:class:`~shared.client.LobbyClient` uses: ``recv``, ``send``, ``close``,
``close_code``, ``close_reason``, ``transport``; and ``local_address``), with the same
meaning:

* ``recv()`` returns each text frame as ``str`` and each binary frame as ``bytes``, in
  order, and raises websockets' ``ConnectionClosed`` once the connection has ended and
  nothing is left to read;
* a close frame from the server is answered with the same code, after which the
  connection ends; ``close_code`` is the code the server sent (1005 when its close frame
  had none, 1006 when the connection ended without one), ``close_reason`` its reason;
* a text frame that is not valid UTF-8 fails the connection with 1007, as websockets
  does;
* a ``handler`` (set by the client once it is online) is offered each
  complete frame first, while nothing is queued; it answers False to have the frame
  queued for ``recv()`` instead (as when someone waits on the view).

Pings from the server are answered by picows. Only plain ``ws://`` URLs without a
proxy, compression or keepalive pings of our own take this path; anything else, and
every process without picows, uses websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from websockets.exceptions import ConnectionClosed

try:
    _picows: Any = importlib.import_module("picows")
except ImportError:  # the bench extra is not installed: websockets it is
    _picows = None

AVAILABLE = _picows is not None
"""True when picows can be imported here."""

_Listener: Any = _picows.WSListener if AVAILABLE else object
if AVAILABLE:
    _TEXT = _picows.WSMsgType.TEXT
    _BINARY = _picows.WSMsgType.BINARY
    _CONTINUATION = _picows.WSMsgType.CONTINUATION
    _CLOSE = _picows.WSMsgType.CLOSE

NO_STATUS = 1005
ABNORMAL = 1006
INVALID_TEXT = 1007
CLOSE_TIMEOUT = 10.0
"""Seconds :meth:`PicowsConnection.close` waits for the server to end the connection."""

Handler = Callable[[str | bytes], bool]


def _close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


class PicowsConnection(_Listener):  # type: ignore[misc]
    """One client connection over picows (its listener), used like websockets'."""

    def __init__(self) -> None:
        super().__init__()
        self._transport: Any = None
        self._queue: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._close_sent = False
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handler: Handler | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.subprotocol: str | None = None
        """The subprotocol the server selected (its ``Sec-WebSocket-Protocol``)."""

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: Any) -> None:
        self._transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind is _TEXT and frame.fin and self._fragments is None:
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(INVALID_TEXT, "invalid UTF-8")
                return
            self._deliver(text)
        elif kind is _BINARY and frame.fin and self._fragments is None:
            self._deliver(frame.get_payload_as_bytes())
        elif kind is _TEXT or kind is _BINARY or kind is _CONTINUATION:
            self._fragment(kind, frame)
        elif kind is _CLOSE:
            payload = frame.get_payload_as_bytes()
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
                self.close_reason = payload[2:].decode("utf-8", "replace")
            else:
                self.close_code, self.close_reason = NO_STATUS, ""
            if not self._close_sent:
                self._close_sent = True
                transport.send(_CLOSE, payload[:2])
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = ABNORMAL, ""
        if not self._ended.done():
            self._ended.set_result(None)
        self._wake()

    # ------------------------------------------------------------------ frames

    def _fragment(self, kind: Any, frame: Any) -> None:
        if kind is not _CONTINUATION:  # the first fragment of a message
            if self._fragments is not None:
                self._fail(1002, "new message before the last one ended")
                return
            self._fragments = []
            self._fragments_text = kind is _TEXT
        elif self._fragments is None:
            self._fail(1002, "continuation without a message")
            return
        self._fragments.append(frame.get_payload_as_bytes())
        if frame.fin:
            data = b"".join(self._fragments)
            self._fragments = None
            if not self._fragments_text:
                self._deliver(data)
                return
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(INVALID_TEXT, "invalid UTF-8")
                return
            self._deliver(text)

    def _deliver(self, data: str | bytes) -> None:
        handler = self.handler
        if handler is not None and not self._queue and handler(data):
            return
        self._queue.append(data)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        """End the connection with ``code``, as websockets fails one."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self._close_sent and self._transport is not None:
            self._close_sent = True
            self._transport.send(_CLOSE, _close_payload(code, reason))
        if self._transport is not None:
            self._transport.disconnect()

    # ------------------------------------------------------------------ websockets' API

    @property
    def ended(self) -> bool:
        return self._ended.done()

    async def recv(self) -> str | bytes:
        while not self._queue:
            if self._ended.done():
                raise ConnectionClosed(None, None)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def send(self, message: str | bytes) -> None:
        if self._ended.done() or self._close_sent:
            raise ConnectionClosed(None, None)
        if isinstance(message, str):
            self._transport.send(_TEXT, message.encode())
        else:
            self._transport.send(_BINARY, message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (unless one was sent) and wait for the end of the
        connection, at most :data:`CLOSE_TIMEOUT` seconds; then cut it."""
        if self._ended.done():
            return
        if not self._close_sent:
            self._close_sent = True
            self._transport.send(_CLOSE, _close_payload(code, reason))
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), CLOSE_TIMEOUT)
        except TimeoutError:
            self._transport.disconnect(False)
            await self._ended

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP transport (``abort()`` ends the connection without a close frame)."""
        transport: asyncio.Transport = self._transport.underlying_transport
        return transport

    @property
    def local_address(self) -> Any:
        return self.transport.get_extra_info("sockname")


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux's option (since 4.2) that defers a bound socket's port to ``connect()``."""


def source_socket(address: str, port: int = 0) -> socket.socket:
    """An unconnected TCP socket bound to ``address`` (and ``port``; 0: the port is
    chosen by ``connect()``).

    Binding to an address with port 0 makes the kernel pick a port at ``bind()``, when
    it does not know the destination yet: it must find a port no other socket of that
    address holds, a search over every socket bound there. With tens of thousands of
    connections per source address that search was 37 % of a generator process's CPU
    (``inet_bind2_bucket_find``, ``inet_bhash2_conflict``, measured with perf at
    100,000 users). ``IP_BIND_ADDRESS_NO_PORT`` leaves the port to ``connect()``,
    which only needs the four-tuple to be unique. Where the option is missing the
    socket is bound as before."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET and port == 0:
            with contextlib.suppress(OSError):  # not Linux: bind() picks the port
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(
    url: str,
    *,
    open_timeout: float,
    max_size: int | None,
    local_addr: tuple[str, int] | None,
    subprotocols: Sequence[str] = (),
) -> PicowsConnection:
    """Open a connection to ``url`` (``ws://``), offering ``subprotocols``; raises
    picows' errors (``WSHandshakeError`` with the server's ``response`` when it refused
    the upgrade), :class:`OSError` or :class:`TimeoutError`."""
    extra: dict[str, Any] = {}
    if local_addr is not None:
        source, port = local_addr
        extra["socket_factory"] = lambda _url: source_socket(source, port)
    if subprotocols:
        extra["extra_headers"] = {"Sec-WebSocket-Protocol": ", ".join(subprotocols)}
    transport, listener = await _picows.ws_connect(
        PicowsConnection,
        url,
        websocket_handshake_timeout=open_timeout,
        max_frame_size=max_size if max_size is not None else 2**31 - 1,
        enable_auto_pong=True,
        use_aiofastnet=False,
        max_redirects=0,
        **extra,
    )
    if not isinstance(listener, PicowsConnection):  # the server dropped it mid-handshake
        raise ConnectionResetError("the connection ended during the WebSocket handshake")
    if subprotocols:
        response = getattr(transport, "response", None)
        headers = getattr(response, "headers", None) or {}
        listener.subprotocol = headers.get("Sec-WebSocket-Protocol")
    return listener


def handshake_status(exc: BaseException) -> int | None:
    """The HTTP status of a refused upgrade, or None when ``exc`` is not one."""
    if not AVAILABLE or not isinstance(exc, _picows.WSHandshakeError):
        return None
    response = exc.response
    return None if response is None else int(response.status)


def is_picows_error(exc: BaseException) -> bool:
    return AVAILABLE and isinstance(exc, _picows.WSError)


def leftovers_dropped(loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` drop what picows leaves behind when a handshake fails: :func:`connect`
    raises the failure (and the scenario counts it by cause), but picows' own handshake
    future holds the same exception unread, and the loop would log each one as "Future
    exception was never retrieved" with a traceback. Every other report goes to the
    handler that was there before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        unread = context.get("message") == "Future exception was never retrieved"
        if unread and isinstance(exc, (TimeoutError, OSError, *_HANDSHAKE_ERRORS)):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)


_HANDSHAKE_ERRORS: tuple[type[BaseException], ...] = (_picows.WSError,) if AVAILABLE else ()
