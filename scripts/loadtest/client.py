"""The project's :class:`~shared.client.LobbyClient`, instrumented for load testing.

:class:`LoadClient` adds three things and changes nothing in how the protocol is
spoken or checked (``errors`` still records every gap, duplicate or inconsistency):

* the moment its ``auth`` frame went out, reported through
  :attr:`LoadClient.auth_sent_hook`: the cause of a join, from which the generator
  measures how long the rest of the lobby takes to see it;
* the bytes of the ``lobby_update`` frames it received;
* :meth:`LoadClient.drop`, which ends the TCP connection without a close frame, the
  way a phone losing its network does.

:func:`use_source_addresses` makes every new connection bind to the next of several
loopback addresses, so one machine can open more connections to one server port than
one source address has ephemeral ports (about 28 000 on Linux).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import shared.client as lib
from shared.client import LobbyClient, LobbyView


class SharedKeyView(LobbyView):
    """A :class:`LobbyView` that stores each key string once per process (interned).

    Every client parses its own copy of every key (about 110 bytes each); with
    thousands of clients each holding thousands of keys, sharing them is what keeps a
    generator process in memory. The checks are the library's, unchanged."""

    __slots__ = ()

    def apply_snapshot(self, seq: int, keys: Iterable[str]) -> None:
        super().apply_snapshot(seq, map(sys.intern, keys))

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None:
        super().apply_update(seq, map(sys.intern, joined), left)


class LoadClient(LobbyClient):
    """A :class:`LobbyClient` that times its ``auth`` and counts lobby_update bytes."""

    auth_sent_hook: ClassVar[Callable[[str, float], None] | None] = None
    """Called with ``(public_key, time.time())`` right after the ``auth`` frame is
    written (one generator process = one hook, set by its agent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.view = SharedKeyView()
        self.update_bytes = 0
        self.auth_sent_at = 0.0
        self._auth_reads = 0
        self._last_frame_len = 0
        recv = self._ws.recv

        async def counting_recv(*a: Any, **kw: Any) -> Any:
            frame = await recv(*a, **kw)
            self._last_frame_len = len(frame)
            return frame

        self._ws.recv = counting_recv  # type: ignore[method-assign]

    async def _recv_during_auth(self, failed_reason: str | None = None) -> dict[str, Any]:
        # The second read waits for the answer to ``auth``, which was just written.
        self._auth_reads += 1
        if self._auth_reads == 2:
            self.auth_sent_at = time.time()
            hook = LoadClient.auth_sent_hook
            if hook is not None:
                hook(self.public_key, self.auth_sent_at)
        return await super()._recv_during_auth(failed_reason)

    def _handle(self, obj: dict[str, Any]) -> None:
        if obj["type"] == "lobby_update":
            self.update_bytes += self._last_frame_len
        super()._handle(obj)

    @property
    def local_address(self) -> tuple[str, int]:
        """This end's (address, port): identifies the connection in /proc/net/tcp."""
        host, port = self._ws.local_address[:2]
        return str(host), int(port)

    def drop(self) -> None:
        """End the connection without a close frame (TCP FIN/RST, no WebSocket close)."""
        self._ws.transport.abort()


def use_source_addresses(addresses: Sequence[str]) -> None:
    """Bind each new connection of this process to the next address of ``addresses``.

    Patches the ``ws_connect`` that :mod:`shared.client` uses, in this process only
    (each generator process calls it once at start). An empty sequence changes nothing.
    """
    if not addresses:
        return
    original = lib.ws_connect  # type: ignore[attr-defined]
    cycle = itertools.cycle(list(addresses))

    def connect(uri: str, **kwargs: Any) -> Any:
        return original(uri, local_addr=(next(cycle), 0), **kwargs)

    lib.ws_connect = connect  # type: ignore[attr-defined,assignment]
