"""The asyncio client for protocol version 2: :class:`LobbyClientV2`.

It is :class:`shared.client.LobbyClient` (same reader, sends, waits, errors and
reconnection) around a :class:`shared.session_v2.SessionV2` per connection. What it adds:

* It offers the WebSocket subprotocol ``presence.v2`` and checks the server selected it;
  a server that did not is refused with :class:`NotVersion2` ("the server does not
  speak protocol version 2"), which is not retried.
* ``view`` is a :class:`~shared.session_v2.RecordView`: :attr:`LobbyClientV2.records`
  (key -> :class:`~shared.v2.Record`) and :attr:`LobbyClientV2.count`.
* :meth:`~LobbyClientV2.set_record`, :meth:`~LobbyClientV2.follow_lobby`,
  :meth:`~LobbyClientV2.follow_watch`, :meth:`~LobbyClientV2.follow_count`,
  :meth:`~LobbyClientV2.watch` and :meth:`~LobbyClientV2.unwatch` check their arguments
  (:class:`ValueError` before anything is written) and write the frame when online.
  While reconnecting, a record goes into the next ``auth``, and a scope request is
  written once the next connection is online. :attr:`LobbyClientV2.following` is the
  choice asked for; a request the server refuses is taken back.
* With ``reconnect``, each new connection's ``auth`` carries the record last asked
  for, and ``resume`` with the epoch and seq of the view it holds (unless that view is
  stale or a count) with ``follow`` the choice that view is of; the scope requests the
  view did not reflect are asked again after ``auth_ok``
  (:meth:`~shared.session_v2.SessionV2.next_connection`). Without a resume, ``follow``
  is the choice asked for. A short blip costs one small update.

``LobbyClient.connect(url, version=2, record=..., follow=...)`` is the same as
``LobbyClientV2.connect(url, record=..., follow=...)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

from nacl.signing import SigningKey

from shared import protocol, v2
from shared.client import DEFAULT_URL, LobbyClient, _error_dict
from shared.session import ProtocolError, State
from shared.session_v2 import (
    SUBPROTOCOL,
    CountChange,
    RecordView,
    SessionV2,
    check_keys,
    record_change,
)
from shared.transport import Connecting, Opener, Transport, websockets_opener
from shared.v2.following import Request, apply_all

__all__ = ["SUBPROTOCOL", "CountChange", "LobbyClientV2", "NotVersion2", "RecordView"]

_OPENER_OPTIONS = ("open_timeout", "max_size", "ping_interval", "ping_timeout", "compression")


class NotVersion2(ProtocolError):
    """The server selected no ``presence.v2`` subprotocol: it speaks version 1 only."""


def version2_opener(opener: Opener) -> Opener:
    """``opener``, refusing a connection whose server did not select ``presence.v2``."""

    async def open_v2(url: str) -> Transport:
        ws = await opener(url)
        selected = getattr(ws, "subprotocol", None)
        if selected != SUBPROTOCOL:
            await ws.close()
            raise NotVersion2(
                f"the server does not speak protocol version 2 ({url} selected "
                f"subprotocol {selected!r}, not {SUBPROTOCOL!r})"
            )
        return ws

    return open_v2


def parse_follow(follow: v2.Follow | Mapping[str, Any] | None) -> v2.Follow | None:
    """A ``follow`` as :meth:`LobbyClientV2.connect` takes it: a :class:`~shared.v2.Follow`
    or its JSON shape (``{"scope": "watch", "keys": [...]}``); :class:`ValueError` else."""
    if follow is None or isinstance(follow, v2.Follow):
        return follow
    fields = set(follow) if isinstance(follow, Mapping) else None
    scope = follow.get("scope") if isinstance(follow, Mapping) else None
    if scope in ("lobby", "count") and fields == {"scope"}:
        return v2.Follow(v2.Scope(scope))
    if scope == "watch" and fields == {"scope", "keys"}:
        return v2.Follow(v2.Scope.WATCH, check_keys(follow["keys"], "follow"))
    raise ValueError(f"follow must be lobby, count or watch with keys, not {follow!r:.120}")


class _Wanted:
    """What each new connection's ``auth`` asks for: the record and scope the client
    last asked for, and a resume from the view the client holds."""

    def __init__(
        self,
        url: str,
        record: Mapping[str, Any] | None,
        follow: v2.Follow | Mapping[str, Any] | None,
        resync_on_error: bool,
    ) -> None:
        v2.server_identity(url)  # a bad URL is refused now, naming it
        self.url = url
        if record is not None and not isinstance(record, Mapping):
            raise ValueError(f"record must be a mapping of status and data, not {record!r:.80}")
        extra = set(record or {}) - {"status", "data"}
        if extra:
            raise ValueError(f"record has fields other than status and data: {sorted(extra)}")
        self.record = (
            None if record is None else record_change(record.get("status"), record.get("data"))
        )
        self.follow = parse_follow(follow)
        self.resync_on_error = resync_on_error
        self.client: LobbyClientV2 | None = None
        self.held: list[Request] = []
        """Scope requests asked for while offline: sent once the next connection is."""

    def session(self, key: SigningKey) -> SessionV2:
        client, follow, resume, view = self.client, self.follow, None, None
        resend: list[Request] = []
        if client is not None:  # a reconnection: continue from the last session's view
            follow, resume, resend = client.session.next_connection()
            view = None if resume is None else client.session.view
        return SessionV2(
            key,
            self.url,
            record=self.record,
            follow=follow,
            resume=resume,
            view=view,
            resend=resend,
            resync_on_error=self.resync_on_error,
        )


class LobbyClientV2(LobbyClient):
    """A :class:`~shared.client.LobbyClient` speaking protocol version 2 (see the
    module docstring). Create it with :meth:`connect`."""

    session: SessionV2
    _wanted: _Wanted | None = None  # set once the first connection is online

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_URL,
        signing_key: SigningKey | None = None,
        *,
        record: Mapping[str, Any] | None = None,
        follow: v2.Follow | Mapping[str, Any] | None = None,
        opener: Opener | None = None,
        resync_on_error: bool = True,
        **options: Any,
    ) -> Connecting[Self]:
        """:meth:`LobbyClient.connect <shared.client.LobbyClient.connect>` for version
        2, with the same options, and:

        * ``record``: ``{"status": ..., "data": {...}}`` (both optional) for the
          ``auth``; None: the server's default (online, {}).
        * ``follow``: ``{"scope": "lobby"}`` (the default), ``{"scope": "count"}`` or
          ``{"scope": "watch", "keys": [...]}`` (or a :class:`shared.v2.Follow`).

        Raises :class:`ValueError` at once for a URL that is not ``ws``/``wss``, a bad
        record or follow; :class:`NotVersion2` when the server does not select
        ``presence.v2``; else as version 1.
        """
        wanted = _Wanted(url, record, follow, resync_on_error)
        if opener is None:
            chosen = {k: options[k] for k in (*_OPENER_OPTIONS, "proxy", "ssl") if k in options}
            opener = websockets_opener(subprotocols=[SUBPROTOCOL], **chosen)
        base = super().connect(
            url,
            signing_key,
            opener=version2_opener(opener),
            resync_on_error=resync_on_error,
            session_factory=wanted.session,
            **options,
        )

        async def factory() -> Self:
            client = await base
            wanted.client = client
            client._wanted = wanted
            return client

        return Connecting(factory)

    # ----------------------------------------------------------------- state

    @property
    def records(self) -> dict[str, v2.Record]:
        """Who is online in the scope followed, with their records (do not change it)."""
        records: dict[str, v2.Record] = self.view.records
        return records

    @property
    def count(self) -> int:
        """The users online: the count frame's number in the count scope, else the
        number of records."""
        count: int = self.view.count
        return count

    def dispatch(self, event: Any) -> None:
        if isinstance(event, v2.ErrorV2):
            code = event.code if isinstance(event.code, str) else event.code.value
            frame = protocol.ErrorFrame(code, event.message)
            self.error_frames.append(_error_dict(frame))
            del self.error_frames[: -self._max_error_frames]
        elif not isinstance(event, CountChange):  # a count is in the view already
            super().dispatch(event)

    # ----------------------------------------------------------------- API

    async def set_record(
        self, status: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Change this session's record (``status`` and/or ``data``; at least one)."""
        self.session.set_record(status, data)
        await self._write_asked()

    async def follow_lobby(self) -> None:
        """Follow the whole lobby; a fresh snapshot follows."""
        self._scoped(lambda session: session.follow_lobby())
        await self._write_asked()

    async def follow_watch(self, keys: Iterable[str]) -> None:
        """Follow exactly ``keys`` (at most 1,000); a fresh snapshot follows."""
        self._scoped(lambda session: session.follow_watch(keys))
        await self._write_asked()

    async def follow_count(self) -> None:
        """Follow only the number of users online; a count frame follows."""
        self._scoped(lambda session: session.follow_count())
        await self._write_asked()

    async def watch(self, keys: Iterable[str]) -> None:
        """Add ``keys`` to the watchlist followed; a fresh snapshot follows."""
        self._scoped(lambda session: session.watch(keys))
        await self._write_asked()

    async def unwatch(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from the watchlist followed; a fresh snapshot follows."""
        self._scoped(lambda session: session.unwatch(keys))
        await self._write_asked()

    def _scoped(self, ask: Callable[[SessionV2], None]) -> None:
        """Ask for a change of scope: now while online, else once the next connection
        is (a session that is not live records it, for the asking)."""
        session, wanted = self.session, self._wanted
        if self.status == "online" or wanted is None:
            ask(session)
            return
        spare = SessionV2(session.signing_key, session.url, follow=self.following, state=State.AUTH)
        ask(spare)  # checked against the choice asked for, kept to send later
        wanted.held += spare.unsent

    @property
    def following(self) -> v2.Follow | None:
        """The choice asked for (the view's, with the requests not yet reflected)."""
        wanted, follow = self._wanted, self.session.follow
        if wanted is None or not wanted.held:
            return follow
        return apply_all(follow or v2.Follow(), wanted.held)

    def _went_online(self) -> None:
        """Online again: ask for what was asked while this connection was opening
        (its ``auth`` was written before)."""
        super()._went_online()
        wanted, session = self._wanted, self.session
        if wanted is None:
            return
        record = wanted.record
        if record is not None and record != session.record:
            data = None if record.data_json is None else json.loads(record.data_json)
            session.set_record(record.status, data)
        held, wanted.held = wanted.held, []
        for request in held:
            session.request(request)
        self.flush()

    async def _write_asked(self) -> None:
        session, wanted = self.session, self._wanted
        if wanted is not None:  # what later connections ask for
            wanted.record = session.record
        frames = session.data_to_send()
        if self.status != "online":
            return  # the next connection's auth asks for it
        for frame in frames:
            await self.send_raw(frame)


def connect_version(version: int, arguments: dict[str, Any]) -> Connecting[LobbyClientV2]:
    """:meth:`LobbyClient.connect` for a ``version`` other than 1 (``arguments`` are
    its own)."""
    extra = arguments.pop("v2")
    unknown = sorted(set(extra) - {"record", "follow"})
    if unknown:
        raise TypeError(f"LobbyClient.connect() got unexpected keyword arguments {unknown}")
    if version == 1:
        raise TypeError(f"{sorted(extra)}: these options need version=2")
    if version != 2:
        raise ValueError(f"version must be 1 or 2, not {version!r}")
    if arguments.pop("session_factory") is not None:
        raise TypeError("session_factory: version 2 makes its own sessions")
    arguments = {k: v for k, v in arguments.items() if k not in ("cls", "version")}
    return LobbyClientV2.connect(**arguments, **extra)
