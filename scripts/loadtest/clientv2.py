"""The load client for protocol version 2: :class:`~shared.client_v2.LobbyClientV2`,
instrumented like :class:`~scripts.loadtest.client.LoadClient`.

It offers ``presence.v2``, signs for the URL it dials and decodes the binary
``snapshot``/``update`` frames with the library, once per process and frame
(:class:`Decoded`), and applies them with the library's session (:mod:`shared.session_v2`, whose
:class:`~shared.session_v2.RecordView` applies an update only when its ``prev`` is the
view's ``seq``). What it adds is what the generator's agent reads of a load client:

* ``frames`` and ``frame_bytes``: every frame received and its bytes (text or binary,
  the handshake's included: :class:`Counted`), so both protocols report bytes per
  change the same way; ``update_bytes``: the bytes of the ``update`` frames, as the
  v1 client counts its ``lobby_update`` frames. It connects over picows when the
  process uses it (:mod:`scripts.loadtest.fastws`), else over websockets;
* ``index``, ``lobby_hook``, :meth:`aim` and ``reached_at``, as the v1 client has them;
* every frame is applied on arrival (:meth:`catch_up` does nothing); a client not
  ``sampled`` (nobody times what it sees) applies its binary ``update`` frames
  straight from their bytes (:mod:`scripts.loadtest.leanv2`), with the same checks,
  and hands the library whatever that declines.

The hook gets each applied update as a v1 :class:`~scripts.loadtest.views.Update` of
its joined and left keys (a record change is neither), so the agent's latency matching
is the same for both protocols.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, cast

from nacl.signing import SigningKey

from scripts.loadtest.client import LoadClient, _next_source, _picows_opener
from scripts.loadtest.leanv2 import apply_update
from scripts.loadtest.views import Update
from shared import protocol
from shared.client import Connecting, ListenerFailed, Transport, websockets_opener
from shared.client_v2 import LobbyClientV2, parse_follow, version2_opener
from shared.session import Online, State
from shared.session_v2 import SUBPROTOCOL, SessionV2, ViewChange, parse_frame_v2
from shared.v2 import ErrorV2
from shared.v2.server import UPDATE

UPDATE_TAG = bytes((UPDATE,))
_OPEN = State.OPEN


class Decoded:
    """This process's decoded binary lobby frames, by their bytes: every follower of
    the whole lobby receives the very same bytes for one update, so a process decodes
    them once (:func:`shared.session_v2.parse_frame_v2`, whose result is immutable) and
    each client applies the result with its own view's checks. Bounded; text frames
    and refused frames are decoded each time."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self.frames: dict[bytes, Any] = {}

    def decode(self, frame: str | bytes) -> Any:
        if isinstance(frame, str):
            return parse_frame_v2(frame)
        frames = self.frames
        msg = frames.get(frame)
        if msg is None:
            msg = parse_frame_v2(frame)
            if len(frames) >= self.keep:
                frames.clear()
            frames[frame] = msg
        return msg


DECODED = Decoded()


class Tally:
    """What the connections of one client received: frames, their bytes, and the bytes
    of the binary ``update`` frames."""

    __slots__ = ("first_update", "first_view_bytes", "frame_bytes", "frames", "update_bytes")

    def __init__(self) -> None:
        self.frames = 0
        self.frame_bytes = 0
        self.update_bytes = 0
        self.first_view_bytes = 0
        """The bytes of the first binary frame: the connection's first view (a
        snapshot, or the update that resumed it)."""
        self.first_update: bytes | None = None
        """That frame when it is an update (a resumed view): what the resume carried."""


class Counted:
    """A transport (:class:`shared.client.Transport`) that counts what it receives in a
    :class:`Tally`: the handshake's frames, and every reconnection's, included; frames
    read by ``recv`` and frames its ``handler`` takes as they arrive (over picows,
    :mod:`scripts.loadtest.fastws`) alike. Its first frame sent is the ``auth``: the
    moment goes to :attr:`LoadClient.auth_sent_hook
    <scripts.loadtest.client.LoadClient.auth_sent_hook>` with ``public_key``, as the v1
    client reports its own."""

    def __init__(self, ws: Any, tally: Tally, public_key: str) -> None:
        self._inner = ws
        self._tally = tally
        self._auth_of: str | None = public_key
        self._handler: Callable[[str | bytes], bool] | None = None

    async def send(self, frame: str | bytes) -> None:
        await self._inner.send(frame)
        public_key, self._auth_of = self._auth_of, None
        hook = LoadClient.auth_sent_hook
        if public_key is not None and hook is not None:
            hook(public_key, time.time())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def handler(self) -> Callable[[str | bytes], bool] | None:
        """The inner connection's frame handler (AttributeError when it has none: a
        websockets connection), which this one counts the frames of."""
        if not hasattr(self._inner, "handler"):
            raise AttributeError("handler")
        return self._handler

    @handler.setter
    def handler(self, handler: Callable[[str | bytes], bool] | None) -> None:
        self._handler = handler
        self._inner.handler = None if handler is None else self._offered

    def _offered(self, frame: str | bytes) -> bool:
        handler = self._handler
        if handler is None or not handler(frame):
            return False  # queued: ``recv`` counts it
        self._count(frame)
        return True

    async def recv(self) -> str | bytes:
        frame: str | bytes = await self._inner.recv()
        self._count(frame)
        return frame

    def _count(self, frame: str | bytes) -> None:
        tally = self._tally
        tally.frames += 1
        tally.frame_bytes += len(frame)
        if not isinstance(frame, str):
            if not tally.first_view_bytes:
                tally.first_view_bytes = len(frame)
                if frame[:1] == UPDATE_TAG:
                    tally.first_update = frame
            if frame[:1] == UPDATE_TAG:
                tally.update_bytes += len(frame)


class LoadClientV2(LobbyClientV2):
    """A :class:`LobbyClientV2` counting what it receives, with the agent's hooks."""

    @classmethod
    def connect(  # type: ignore[override]
        cls,
        url: str,
        signing_key: SigningKey | None = None,
        *,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        follow: Mapping[str, Any] | None = None,
        resume_from: LoadClientV2 | None = None,
        **kwargs: Any,
    ) -> Connecting[LoadClientV2]:
        """:meth:`LobbyClientV2.connect` over picows when this process uses it (as
        :meth:`LoadClient.connect` chooses), else websockets, counting every frame, with no
        record (the server's default) and ``follow``. ``resume_from``: a client of the
        same key whose connection is gone; this one's ``auth`` resumes from its view,
        when that view is live (:meth:`~shared.session_v2.SessionV2.next_connection`)."""
        key = signing_key if signing_key is not None else SigningKey.generate()
        public_key = key.verify_key.encode().hex()
        tally = Tally()
        if LoadClient.ws_client == "picows" and url.startswith("ws://") and ping_interval is None:
            plain = _picows_opener(open_timeout, None, [SUBPROTOCOL])
        else:
            plain = websockets_opener(
                open_timeout=open_timeout,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                local_addr=_next_source,
                subprotocols=[SUBPROTOCOL],
            )

        async def opener(url: str) -> Transport:
            return cast(Transport, Counted(await plain(url), tally, public_key))

        scope = parse_follow(follow)

        def session(key: SigningKey) -> SessionV2:
            follow, resume, view, resend, record = scope, None, None, [], None
            if resume_from is not None:  # the choice its view is of, and what to ask again
                record = resume_from.session.record  # the same user goes on: its record too
                stated, resume, again = resume_from.session.next_connection()
                if resume is not None:
                    follow, view, resend = stated, resume_from.session.view, again
            session = SessionV2(
                key, url, record=record, follow=follow, resume=resume, view=view, resend=resend
            )
            session.decode = DECODED.decode
            return session

        # LobbyClient's connect with these sessions: the one-connection client this is.
        base = super(LobbyClientV2, cls).connect(
            url,
            key,
            open_timeout=open_timeout,
            opener=version2_opener(opener),
            session_factory=session,
            **kwargs,
        )

        async def factory() -> LoadClientV2:
            client = await base
            client.tally = tally
            return client

        return Connecting(factory)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tally = Tally()
        self.changes_received = 0
        """The keys of every update applied (joined, left, updated), as the v1 client
        counts its ``lobby_update`` keys."""
        self.index = -1
        self.sampled = True
        self.target: int | None = None
        self.reached_at = 0.0
        self.lobby_hook: Callable[[Any, Update | None], None] | None = None
        self.record_hook: Callable[[LoadClientV2, ViewChange], None] | None = None
        """Called with every applied ``update`` that sets records (joined or updated)."""
        self.error_codes: Counter[str] = Counter()
        """The ``error`` frames received, by code (``rate_limited``: a refused change)."""

    local_address = LoadClient.local_address

    @property
    def resumed(self) -> bool:
        """Whether this client's connection resumed a view (``auth_ok``'s ``resumed``)."""
        return self.session.resumed is True

    @property
    def frames(self) -> int:
        return self.tally.frames

    @property
    def frame_bytes(self) -> int:
        return self.tally.frame_bytes

    @property
    def update_bytes(self) -> int:
        return self.tally.update_bytes

    def receive(self, frame: str | bytes) -> None:
        """The library's handling; for a client nobody watches (not sampled, no hook,
        listener or waiter), an update applied from its bytes when it is one
        :func:`~scripts.loadtest.leanv2.apply_update` handles."""
        if (
            not self.sampled
            and type(frame) is bytes
            and self.lobby_hook is None
            and self.record_hook is None
            and not self.lobby_listeners
            and not self.watched
        ):
            session = self.session
            if session.state is _OPEN:
                changed = apply_update(session.view, frame)
                if changed is not None:
                    session.updates_received += 1
                    self.changes_received += changed
                    if self.target is not None:
                        self._changed_to(None)
                    return
        super().receive(frame)

    def dispatch(self, event: Any) -> None:
        super().dispatch(event)
        if isinstance(event, Online):
            self._changed_to(None)
        elif isinstance(event, ViewChange):
            update = None
            if event.kind == "update":
                self.changes_received += len(event.joined) + len(event.left) + len(event.updated)
                if self.lobby_hook is not None:  # only the hook reads it
                    update = Update.of(protocol.LobbyUpdate(event.seq, event.joined, event.left))
                hook = self.record_hook
                if hook is not None and event.entries:
                    hook(self, event)
            self._changed_to(update)
        elif isinstance(event, ErrorV2):
            self.error_codes[event.code if isinstance(event.code, str) else event.code.value] += 1

    def _changed_to(self, update: Update | None) -> None:
        target = self.target
        if target is not None and not self.reached_at and len(self.view) >= target:
            self.reached_at = time.time()
        hook = self.lobby_hook
        if hook is not None:
            try:
                hook(self, update)
            except Exception as exc:
                failure = ListenerFailed(f"lobby hook {hook!r} raised {exc!r}")
                failure.__cause__ = exc
                self.record(failure)

    @property
    def size(self) -> int:
        return len(self.view)

    def aim(self, target: int | None) -> None:
        """From now on note in ``reached_at`` when the view first holds ``target`` keys
        (None: stop); forgets an earlier ``reached_at``."""
        self.target = target
        self.reached_at = time.time() if target is not None and self.size >= target else 0.0

    def catch_up(self) -> None:
        """Nothing to do: every frame is applied on arrival."""
