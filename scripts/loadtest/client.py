"""The project's :class:`~shared.client.LobbyClient`, instrumented and made cheap per
frame for load testing.

:class:`LoadClient` adds three things and changes nothing in how the protocol is
checked (``errors`` still records every gap, duplicate or inconsistency, and every
frame still goes through its own client's sequence and view checks):

* the moment its ``auth`` frame went out, reported through
  :attr:`LoadClient.auth_sent_hook`: the cause of a join, from which the generator
  measures how long the rest of the lobby takes to see it;
* the bytes of the ``lobby_update`` frames it received;
* :meth:`LoadClient.drop`, which ends the TCP connection without a close frame, the
  way a phone losing its network does.

It builds on the core, :mod:`shared.session`, through its public interface: a
:class:`LoadSession` is a :class:`~shared.session.Session` whose view is a
:class:`~scripts.loadtest.views.LoadView` and whose decoder is :func:`decode`, and
:class:`LoadClient` is the asyncio adapter :class:`~shared.client.LobbyClient` given
that session and an opener (picows or websockets).

What makes it cheap: one generator process holds hundreds of clients, and the server
sends every one of them the very same text for lobby update ``seq`` N. Parsing and
validating a frame is a pure function of its text, so a process does it once per
distinct text (:func:`decode`, its result cached by text as an :class:`Update`) and each
client then runs only its own checks: the sequence number and the consistency of the
delta with its view (:meth:`~scripts.loadtest.views.LoadView.apply_parsed`). Keys are
validated once per spelling per process and stored once (interned).

:func:`decode` returns what :func:`shared.protocol.parse_server_frame` returns, the
typed messages of the contract, by the same rules (the key check is
:func:`shared.protocol.is_hex_key`, the ``seq`` check :func:`shared.protocol.is_seq`).
It only gets there faster for ``lobby_update`` and ``lobby_snapshot``: a key seen before
costs one dict lookup instead of a hex check, which makes a 500-key snapshot (every
joining client parses one) about four times cheaper than the typed decoder makes it.
Anything it does not accept as plainly valid (malformed JSON, a wrong field), and every
other frame type, goes through the library's decoder, which returns or raises exactly
what it always does; a gap or an inconsistent delta goes through the library's view.
orjson parses when it is installed (the ``bench`` extra), else :mod:`json`.

**Sampled checking.** Applying an update to a view is the part of a client's work
that does not have to happen the moment the frame arrives; timing it does. So an agent
lets a sample of its watchers (``--verify-sample``, at least two per process) apply
every update on arrival, feed the latency measurements and report convergence, and
every other client (``sampled = False``) checks only what must be checked on arrival:
that the frame is a well-formed ``lobby_update`` (the shared decoder) whose ``seq`` is
exactly one more than the last one it received. It then notes the update instead of
applying it: the :data:`LEDGER` keeps, per process and per ``seq``, the update object
the first client received, and a client notes an update only when its own is that
very object (the same text, parsed once); any other update (a gap, a duplicate, an
unclean delta, another text for the same ``seq``) makes it catch up and apply it at
once, with the library's checks, as a sampled client would. Nothing is skipped, only
moved: :meth:`LoadClient.catch_up` applies the noted updates in order with the same
checks, and it runs before anything reads the view (a snapshot, a wait for a view, the
agent's counters and end-of-run view check, a close, retiring the client) and whenever
a client has noted :data:`BEHIND_MAX` updates or somewhat fewer (each client draws its
own bound, so that in a long run the clients catch up at different moments rather than
all at once). Why that is sound:

* gaps and duplicates are found on arrival, for every client, as before;
* a noted update is exactly what the client received (the same object), applied to
  the same view in the same order as on arrival, so an inconsistent delta is found
  by the same check, only later; the first fault is the same fault, and the view ends
  the same (what the client's reference test proves on random frame sequences);
* every client's final view, sampled or not, is compared with the true online set
  at the end of the run (:meth:`~scripts.loadtest.agent.Agent.op_wait_views`), so a
  wrong view fails the run whoever holds it;
* what is sampled is measurement only: latencies and "every watcher saw every
  change" are counted over the sampled watchers, which receive the same update texts
  as the others.

What it costs: an unsampled client's view lags until it catches up, so nothing may
read it meanwhile (hence the catch-ups above and no deferral while a lobby hook,
listener or ``wait_for_view`` watches it), and a fault is reported when it is applied,
not when it arrived.

:func:`use_source_addresses` makes every new connection bind to the next of several
loopback addresses, so one machine can open more connections to one server port than
one source address has ephemeral ports (about 28 000 on Linux).
"""

from __future__ import annotations

import importlib
import itertools
import json
import random
import ssl as ssl_module
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Final, Literal, cast

from nacl.signing import SigningKey
from websockets.frames import Frame, Opcode

from scripts.loadtest import fastws
from scripts.loadtest.views import (
    BEHIND_MAX,
    LEDGER,
    SHARED,
    UPDATES,
    Ledger,
    LoadView,
    SharedViews,
    Update,
    UpdateCache,
)
from shared import protocol
from shared.client import (
    DEFAULT_URL,
    Connecting,
    ListenerFailed,
    LobbyChange,
    LobbyClient,
    LobbyClientError,
    Opener,
    ProtocolError,
    Transport,
    ViewError,
    ViewTarget,
    websockets_opener,
)
from shared.session import Event, Session, State, http_refusal, parse_frame

__all__ = [
    "BEHIND_MAX",
    "LEDGER",
    "SHARED",
    "UPDATES",
    "Ledger",
    "LoadClient",
    "LoadSession",
    "LoadView",
    "SharedViews",
    "Update",
    "UpdateCache",
    "decode",
    "use_source_addresses",
    "use_ws_client",
]


def _json_loads() -> tuple[Callable[[str], Any], str]:
    try:
        module = importlib.import_module("orjson")
    except ImportError:
        return json.loads, "json"
    loads: Callable[[str], Any] = module.loads
    return loads, "orjson"


loads, JSON_LIBRARY = _json_loads()
"""The JSON parser of the fast path and its name. Whatever it refuses (orjson is
stricter than :mod:`json`: no NaN, no integers beyond 64 bits) is handed to the
library, which parses with :mod:`json` and decides."""


def decode(frame: str | bytes) -> protocol.ServerMessage:
    """:func:`shared.protocol.parse_server_frame`'s result, reached faster for a
    well-formed ``lobby_update`` or ``lobby_snapshot`` (parsed by :data:`loads`, keys
    through the process's cache). Everything else goes to the library's decoder, which
    returns that result or raises its :class:`~shared.session.ProtocolError`; so does an
    object with a float field, as orjson reads an integer beyond 64 bits (say, a
    ``seq``) as a float where :mod:`json` reads an int."""
    if isinstance(frame, str):
        try:
            obj = loads(frame)
        except ValueError:
            pass
        else:
            if isinstance(obj, dict) and not any(isinstance(v, float) for v in obj.values()):
                kind = obj.get("type")
                seq = obj.get("seq")
                if kind == "lobby_update" and protocol.is_seq(seq):
                    joined = parse_keys(obj.get("joined"))
                    left = parse_keys(obj.get("left"))
                    if joined is not None and left is not None:
                        return protocol.LobbyUpdate(seq, joined, left)
                elif kind == "lobby_snapshot" and protocol.is_seq(seq):
                    users = parse_keys(obj.get("users"))
                    if users is not None:
                        return protocol.LobbySnapshot(seq, users)
    return parse_frame(frame)


# --------------------------------------------------------------------------- keys

_KEYS: dict[str, str] = {}
"""Every valid key spelling seen in this process -> its canonical (lowercase), interned
form. A hit means the exact string was validated before."""
_MAX_KEYS: Final = 2_000_000


def canonical_key(raw: object) -> str | None:
    """The canonical form of a valid 64-hex key, or None when ``raw`` is not one."""
    if not isinstance(raw, str):
        return None
    key = _KEYS.get(raw)
    if key is None and protocol.is_hex_key(raw):
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        key = _KEYS[raw] = sys.intern(protocol.normalise_key(raw))
    return key


def parse_keys(users: object) -> tuple[str, ...] | None:
    """The keys of a ``[{"publicKey": ...}, ...]`` list, canonical and interned, as
    :func:`shared.protocol.parse_server_frame` reads them; None when anything about it
    is wrong (the library's decoder then names the fault)."""
    if not isinstance(users, list):
        return None
    try:  # the common case, every key seen before: only a dict's key can be found
        return tuple([_KEYS[user["publicKey"]] for user in users])
    except (KeyError, TypeError):
        pass
    known = _KEYS.get
    keys = []
    for user in users:
        if not isinstance(user, dict):
            return None
        raw = user.get("publicKey")
        key = known(raw) if isinstance(raw, str) else None
        if key is None:
            key = canonical_key(raw)
            if key is None:
                return None
        keys.append(key)
    return tuple(keys)


# --------------------------------------------------------------------------- the session


class LoadSession(Session):
    """The core's :class:`~shared.session.Session` with the fast path: frames decode
    through :func:`decode`, the view is a :class:`LoadView`, and once open a
    ``lobby_update`` goes through the process's :data:`UPDATES` cache and its client's
    sampled checking (:meth:`LoadClient.take_update`). ``client`` is set by the
    :class:`LoadClient` that owns the session."""

    def __init__(self, signing_key: SigningKey, **kwargs: Any) -> None:
        super().__init__(signing_key, view=LoadView(), decode=decode, **kwargs)
        self.client: LoadClient | None = None
        self.frames = 0
        self.frame_bytes = 0
        """Every frame received, the handshake's included, and its bytes (characters:
        the server's JSON is ASCII), to compare protocols."""

    def data_to_send(self) -> list[str]:
        out = super().data_to_send()
        if self.state is State.AUTH and out:  # the auth answering the challenge
            hook = LoadClient.auth_sent_hook
            if hook is not None:
                hook(self.public_key, time.time())
        return out

    def receive(self, frame: str | bytes) -> list[Event]:
        """The core's handling; once open, a ``lobby_update`` is parsed into an
        :class:`Update`, kept in :data:`UPDATES` for the other clients of the process
        (:meth:`LoadClient.receive` looks texts up there first), and goes through its
        client's sampled checking (:meth:`LoadClient.take_update`)."""
        self.frames += 1
        self.frame_bytes += len(frame)
        client = self.client
        if client is None or not isinstance(frame, str) or self.state is not State.OPEN:
            return super().receive(frame)
        try:
            msg = self.decode(frame)
        except ProtocolError as exc:  # a malformed update still counts its bytes
            cause = exc.__cause__
            if isinstance(cause, protocol.ServerProtocolError) and cause.frame_type == (
                protocol.LobbyUpdate.TYPE
            ):
                client.update_bytes += len(frame)
            raise
        if not isinstance(msg, protocol.LobbyUpdate):
            return self.handle(msg)
        update = Update.of(msg)
        UPDATES.put(frame, update)
        client.update_bytes += len(frame)
        client.changes_received += update.size
        self.updates_received += 1
        return client.take_update(update)

    def apply_snapshot(self, msg: protocol.LobbySnapshot) -> LobbyChange:
        client = self.client
        if client is None:
            return super().apply_snapshot(msg)
        client.catch_up()  # check what came before it, before it replaces the view
        change = super().apply_snapshot(msg)
        client.changed_to(None)
        return change

    def connection_closed(self, code: int | None, reason: str | None) -> LobbyClientError:
        if self.client is not None:
            self.client.catch_up()
        return super().connection_closed(code, reason)


_OPEN: Final = State.OPEN

LobbyHook = Callable[["LoadClient", Update | None], None]
"""Called after every applied update (with it) or snapshot (with None)."""

# --------------------------------------------------------------------------- the client


class LoadClient(LobbyClient):
    """A :class:`LobbyClient` over a :class:`LoadSession`: it times its ``auth``, counts
    lobby_update bytes, handles well-formed lobby frames through the shared fast path,
    and lets an unsampled client apply updates later."""

    ws_client: ClassVar[str] = "websockets"
    """The WebSocket library of new connections in this process: ``websockets`` or
    ``picows`` (see :func:`use_ws_client`)."""

    auth_sent_hook: ClassVar[Callable[[str, float], None] | None] = None
    """Called with ``(public_key, time.time())`` as the ``auth`` frame is written (one
    generator process = one hook, set by its agent)."""

    def __init__(
        self,
        ws: Any,
        signing_key: SigningKey,
        *,
        message_queue_size: int,
        resync_on_error: bool,
        session: Session | None = None,
        **kwargs: Any,
    ) -> None:
        if session is None:  # authenticated elsewhere (tests)
            session = LoadSession(signing_key, resync_on_error=resync_on_error, state=State.OPEN)
        assert isinstance(session, LoadSession)
        super().__init__(
            ws,
            signing_key,
            message_queue_size=message_queue_size,
            resync_on_error=resync_on_error,
            session=session,
            **kwargs,
        )
        session.client = self
        self.load_session = session
        self.load_view: LoadView = session.view
        self.update_bytes = 0
        self.changes_received = 0
        """The keys of every ``lobby_update`` received (joined and left): the changes
        delivered to this client, each counted once per client that saw it."""
        self.index = -1
        """The generator's index of this client (set by its agent)."""
        self.lobby_hook: LobbyHook | None = None
        """A cheaper ``lobby_listeners``: called with (client, update or None)."""
        self.sampled = True
        """True: every update is applied to the view as it arrives (the library's way).
        False: an update in sequence is only noted and applied later from the
        :data:`LEDGER` (see the module docstring); the agent samples which."""
        self.target: int | None = None
        """When set, ``reached_at`` notes when the view first held this many keys."""
        self.reached_at = 0.0
        self.behind_limit = random.randrange(BEHIND_MAX // 2, BEHIND_MAX)
        """Catch up once this many updates are noted (drawn per client)."""
        self._behind_to: int | None = None  # the last seq noted and not applied yet
        self._behind_size = 0  # the view's size once the noted updates are applied

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_URL,
        signing_key: SigningKey | None = None,
        *,
        open_timeout: float = 10.0,
        max_size: int | None = 64 * 2**20,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: str | None = None,
        proxy: str | Literal[True] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        **kwargs: Any,
    ) -> Connecting[LoadClient]:
        """:meth:`LobbyClient.connect` over a :class:`LoadSession`, over picows when
        this process uses it and the connection needs nothing picows is not used for
        here (TLS, a proxy, compression, keepalive pings); else over websockets, its
        frames handled as websockets parses them (:func:`_in_place`)."""
        if (
            cls.ws_client == "picows"
            and url.startswith("ws://")
            and ssl is None
            and proxy is None
            and compression is None
            and ping_interval is None
        ):
            opener = _picows_opener(open_timeout, max_size)
        else:
            plain = websockets_opener(
                open_timeout=open_timeout,
                max_size=max_size,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                compression=compression,
                proxy=proxy,
                ssl=ssl,
                local_addr=_next_source,
            )

            async def opener(url: str) -> Transport:
                return _in_place(await plain(url))

        connecting = super().connect(
            url,
            signing_key,
            open_timeout=open_timeout,
            opener=opener,
            session_factory=LoadSession,
            **kwargs,
        )
        return connecting

    @property
    def frames(self) -> int:
        return self.load_session.frames

    @property
    def frame_bytes(self) -> int:
        return self.load_session.frame_bytes

    @property
    def in_place(self) -> bool:
        """True while frames are handled as they are parsed, not queued for the reader."""
        return getattr(self.connection, "handler", None) is not None

    def receive(self, frame: str | bytes) -> None:
        """The adapter's handling, with a shortcut for an update text this process
        has parsed before (:data:`UPDATES`): the same checks and effects, without
        decoding it again or going through the session's event list."""
        if type(frame) is str:
            update = UPDATES.get(frame)
            session = self.load_session
            if update is not None and session.state is _OPEN:
                session.frames += 1
                session.frame_bytes += len(frame)
                self.update_bytes += len(frame)
                self.changes_received += update.size
                session.updates_received += 1
                if not self.sampled and self._defer(update):
                    return
                try:
                    events = self._apply(update)
                except LobbyClientError as exc:
                    self.record(exc)
                    self.flush()  # the resync asked for
                    return
                for event in events:
                    self.dispatch(event)
                return
        super().receive(frame)

    def take_update(self, update: Update) -> list[Event]:
        """Handle a well-formed update that just arrived: note it (unsampled, see
        :meth:`_defer`) or apply it with the core's checks."""
        if not self.sampled and self._defer(update):
            return []
        return self._apply(update)

    def _apply(self, update: Update) -> list[Event]:
        self.catch_up()
        try:
            self.load_view.apply_parsed(update)
        except ViewError as exc:
            self.load_session.view_refused(exc)
            raise
        return self.changed_to(update)

    def _defer(self, update: Update) -> bool:
        """Note ``update`` instead of applying it, when it is the next ``seq``, clean,
        and the ledger's update for that ``seq`` (which it becomes if there is none);
        False when it must be applied now. Nobody may be watching the view change."""
        if self.lobby_hook is not None or self.lobby_listeners or self.watched:
            return False
        last = self._behind_to
        if last is None:
            last = self.load_view.seq
            if last is None:
                return False
        if update.seq != last + 1 or not update.clean:
            return False
        ledger = LEDGER
        if ledger.by_seq.setdefault(update.seq, update) is not update:
            return False
        if self._behind_to is None:
            self._behind_size = len(self.load_view)
            ledger.behind.add(self)
        self._behind_to = update.seq
        self._behind_size += update.growth
        ledger.noted += 1
        target = self.target
        if target is not None and not self.reached_at and self._behind_size >= target:
            self.reached_at = time.time()
        if len(ledger.by_seq) > ledger.trim_at:
            ledger.trim()
        base = self.load_view.seq
        if base is not None and update.seq - base >= self.behind_limit:
            self.catch_up()
        return True

    def catch_up(self) -> None:
        """Apply the updates noted and not applied yet, each checked as if it had just
        arrived: a gap, duplicate or inconsistency is recorded (and a resync asked for)
        exactly as it would have been then, and the rest is not applied."""
        last = self._behind_to
        if last is None:
            return
        self._behind_to = None
        LEDGER.behind.discard(self)
        try:
            self.load_view.catch_up(last, LEDGER.by_seq)
        except ViewError as exc:
            self.record(exc)
            self.load_session.view_refused(exc)
            self.flush()

    @property
    def size(self) -> int:
        """How many keys the view holds, counting the updates noted and not applied."""
        return self._behind_size if self._behind_to is not None else len(self.load_view)

    def aim(self, target: int | None) -> None:
        """From now on note in ``reached_at`` when the view first holds ``target`` keys
        (None: stop); forgets an earlier ``reached_at``."""
        self.target = target
        self.reached_at = time.time() if target is not None and self.size >= target else 0.0

    @property
    def behind(self) -> int:
        """How many received updates are noted and not applied yet."""
        last, seq = self._behind_to, self.load_view.seq
        return 0 if last is None or seq is None else last - seq

    async def wait_for_view(self, target: ViewTarget, timeout: float = 10.0) -> None:
        self.catch_up()  # the condition reads the view; while it waits, nothing is noted
        await super().wait_for_view(target, timeout)

    async def get_lobby(self, timeout: float = 10.0) -> frozenset[str]:
        self.catch_up()
        return await super().get_lobby(timeout)

    def changed_to(self, update: Update | None) -> list[Event]:
        """Tell the hook about an applied frame (a snapshot: None); returns the update's
        :class:`LobbyChange` for the listeners, when there are any."""
        view = self.load_view
        target = self.target
        if target is not None and not self.reached_at and len(view) >= target:
            self.reached_at = time.time()
        hook = self.lobby_hook
        if hook is not None:
            try:
                hook(self, update)
            except Exception as exc:
                failure = ListenerFailed(f"lobby hook {hook!r} raised {exc!r}")
                failure.__cause__ = exc
                self.record(failure)
        if update is None or not self.lobby_listeners:
            return []
        return [LobbyChange("update", update.seq, update.joined, update.left, len(view))]

    @property
    def local_address(self) -> tuple[str, int]:
        """This end's (address, port): identifies the connection in /proc/net/tcp."""
        host, port = cast(Any, self.connection).local_address[:2]
        return str(host), int(port)


# --------------------------------------------------------------------------- connections


def _in_place(ws: Any) -> Transport:
    """Make a websockets connection hand each complete text frame to its ``handler``
    (see :class:`shared.client.Transport`) as websockets parses it, instead of queueing
    it for ``recv()``: the same handling, without a queue, a future and a task switch
    per frame. Only while nothing is queued (so frames keep their order) and the frame
    is valid UTF-8 (else ``recv()`` fails the connection as it always did). Left as it
    is with a websockets whose internals differ from what this expects."""
    assembler = getattr(ws, "recv_messages", None)
    queue = getattr(getattr(assembler, "frames", None), "queue", None)
    put = getattr(assembler, "put", None)
    if not isinstance(queue, deque) or put is None:
        return cast(Transport, ws)
    ws.handler = None

    def put_or_handle(frame: Frame) -> None:
        handler = ws.handler
        if handler is not None and frame.opcode is Opcode.TEXT and frame.fin and not queue:
            try:
                text = str(frame.data, "utf-8")
            except UnicodeDecodeError:
                put(frame)
                return
            if handler(text):
                return
        put(frame)

    assembler.put = put_or_handle  # type: ignore[union-attr]
    return cast(Transport, ws)


def _picows_opener(
    open_timeout: float, max_size: int | None, subprotocols: Sequence[str] = ()
) -> Opener:
    async def open_picows(url: str) -> Transport:
        try:
            conn = await fastws.connect(
                url,
                open_timeout=open_timeout,
                max_size=max_size,
                local_addr=_next_source(),
                subprotocols=subprotocols,
            )
        except Exception as exc:
            status = fastws.handshake_status(exc)
            if status is not None:
                raise http_refusal(status) from exc
            if fastws.is_picows_error(exc):
                raise ProtocolError(f"WebSocket handshake failed: {exc}") from exc
            raise
        return cast(Transport, conn)

    return open_picows


_SOURCES: Iterator[str] | None = None
"""The source addresses new connections bind to, round robin (None: any)."""


def _next_source() -> tuple[str, int] | None:
    return None if _SOURCES is None else (next(_SOURCES), 0)


def use_source_addresses(addresses: Sequence[str]) -> None:
    """Bind each new connection of this process to the next address of ``addresses``
    (each generator process calls it once at start). An empty sequence changes
    nothing."""
    global _SOURCES
    if addresses:
        _SOURCES = itertools.cycle(list(addresses))


WS_CLIENTS: Final = ("auto", "picows", "websockets")


def resolve_ws_client(name: str) -> str:
    """``auto`` -> ``picows`` when it is installed, else ``websockets``; raises
    ValueError for ``picows`` when it is not installed."""
    if name not in WS_CLIENTS:
        raise ValueError(f"unknown WebSocket client {name!r}: one of {', '.join(WS_CLIENTS)}")
    if name == "auto":
        return "picows" if fastws.AVAILABLE else "websockets"
    if name == "picows" and not fastws.AVAILABLE:
        raise ValueError("picows is not installed (pip install -e '.[bench]')")
    return name


def use_ws_client(name: str) -> str:
    """Make new :class:`LoadClient` connections of this process use ``name`` (see
    :func:`resolve_ws_client`); returns the library chosen."""
    LoadClient.ws_client = resolve_ws_client(name)
    return LoadClient.ws_client
