"""Connections under :class:`shared.client.LobbyClient`: what it needs of a WebSocket
(:class:`Transport`), how one is opened (:data:`Opener`, by default websockets'), and
the handshake of one connection driven through a :class:`~shared.session.Session`
(:func:`open_session`), retried per a policy for the first one (:func:`connect_first`).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import defaults
from shared.session import (
    LobbyChange,
    LobbyClientError,
    Online,
    ReconnectPolicy,
    Session,
    State,
    http_refusal,
    retryable,
)

if TYPE_CHECKING:
    from shared.client import LobbyClient


class Transport(Protocol):
    """One WebSocket connection, as the client uses it: websockets'
    ``ClientConnection`` is one. ``recv`` returns a text frame as ``str`` (binary as
    ``bytes``) and raises websockets' ``ConnectionClosed`` once the connection has
    ended; ``close_code``/``close_reason`` are then the close's (1006: no close frame).
    ``transport`` is the TCP transport underneath.

    A transport that can hand over frames as they arrive also has a ``handler``
    attribute: the client sets it once online, to a callable that takes a frame and
    returns False to have it queued for ``recv`` instead (as when someone waits on the
    view, so frames keep their order and the waiter is woken)."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    @property
    def transport(self) -> Any: ...

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str | bytes) -> None: ...

    async def close(self) -> None: ...


Opener = Callable[[str], Awaitable[Transport]]
"""Opens a transport to a URL; raises :class:`ConnectionRefusedByServer` (see
:func:`~shared.session.http_refusal`) for a refused upgrade, or OSError/TimeoutError."""


def websockets_opener(
    *,
    open_timeout: float = 10.0,
    max_size: int | None = 64 * 2**20,
    ping_interval: float | None = defaults.PING_INTERVAL,
    ping_timeout: float | None = defaults.PING_TIMEOUT,
    compression: str | None = None,
    proxy: str | Literal[True] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    local_addr: Callable[[], tuple[str, int] | None] | None = None,
    subprotocols: list[str] | None = None,
) -> Opener:
    """The default :data:`Opener`: websockets' client with these options (see
    :meth:`LobbyClient.connect`); ``local_addr`` names the source address of each
    new connection (None: any); ``subprotocols`` are offered in the upgrade (the
    connection's ``subprotocol`` is then the one the server selected, or None)."""
    tls: dict[str, Any] = {} if ssl is None else {"ssl": ssl}
    if subprotocols is not None:
        tls["subprotocols"] = subprotocols  # passed along with the TLS options

    async def open_websocket(url: str) -> Transport:
        bind = None if local_addr is None else local_addr()
        extra: dict[str, Any] = {} if bind is None else {"local_addr": bind}
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
                **extra,
            )
        except InvalidStatus as exc:
            raise http_refusal(exc.response.status_code) from exc
        return ws

    return open_websocket


async def open_session(
    url: str, opener: Opener, session: Session, open_timeout: float
) -> tuple[Transport, Session, LobbyChange]:
    """One connection, authenticated and with its first snapshot applied."""
    ws: Transport | None = None
    change: LobbyChange | None = None
    try:
        async with asyncio.timeout(open_timeout):
            ws = await opener(url)
            while session.state is not State.OPEN:
                try:
                    frame = await ws.recv()
                except ConnectionClosed:
                    raise session.connection_closed(ws.close_code, ws.close_reason) from None
                for event in session.receive(frame):
                    if isinstance(event, Online):
                        change = event.change
                for out in session.data_to_send():
                    try:
                        await ws.send(out)
                    except ConnectionClosed:
                        raise session.connection_closed(ws.close_code, ws.close_reason) from None
    except BaseException:
        if ws is not None:
            await ws.close()
        raise
    assert change is not None  # the session is open: its first snapshot was applied
    return ws, session, change


async def connect_first(
    open_one: Callable[[], Awaitable[tuple[Transport, Session, LobbyChange]]],
    policy: ReconnectPolicy | None,
) -> tuple[Transport, Session, LobbyChange]:
    """The first connection; with a policy, retried while the failure is retryable."""
    attempt = 0
    while True:
        try:
            return await open_one()
        except (LobbyClientError, OSError, TimeoutError) as exc:
            if policy is None or not retryable(exc) or policy.gives_up(attempt + 1):
                raise
        await asyncio.sleep(policy.delay(attempt))  # the backoff itself, not a sync
        attempt += 1


@dataclass(frozen=True, slots=True)
class Attempt:
    """One reconnection attempt: when it started (``time.monotonic()``), the backoff
    waited before it (seconds), and the error it ended with (None: online)."""

    started: float
    delay: float
    error: BaseException | None


C = TypeVar("C", bound="LobbyClient")


class Connecting(Generic[C]):
    """What :meth:`LobbyClient.connect` returns: awaitable, or an async context manager
    that closes the client on exit."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, C]]) -> None:
        self._factory = factory
        self._client: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._factory().__await__()

    async def __aenter__(self) -> C:
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
