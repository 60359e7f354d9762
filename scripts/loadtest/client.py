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

What makes it cheap: one generator process holds hundreds of clients, and the server
sends every one of them the very same text for lobby update ``seq`` N. Parsing and
validating a frame is a pure function of its text, so a process does it once per
distinct text (:func:`decode`, its result cached by text as an :class:`Update`) and each
client then runs only its own checks: the sequence number and the consistency of the
delta with its view (:meth:`LoadView.apply_parsed`). Keys are validated once per
spelling per process and stored once (interned).

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

import asyncio
import importlib
import itertools
import json
import random
import ssl as ssl_module
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final, Literal, cast

from nacl.signing import SigningKey
from websockets.frames import Frame, Opcode

import shared.client as lib
from scripts.loadtest import fastws
from shared import protocol
from shared.client import (
    ConnectionRefusedByServer,
    DuplicateUpdate,
    InconsistentSnapshot,
    ListenerFailed,
    LobbyChange,
    LobbyClient,
    LobbyClientError,
    LobbyView,
    ProtocolError,
    ViewError,
)


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
    returns that result or raises its :class:`~shared.client.ProtocolError`; so does an
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
    return lib._parse_frame(frame)


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


# --------------------------------------------------------------------------- updates


class Update:
    """A well-formed ``lobby_update``, parsed once (:meth:`of`): what every client of the
    process checks against its own view. ``clean``: neither list repeats a key and not
    both are empty (the checks that depend on the frame alone)."""

    __slots__ = (
        "clean",
        "growth",
        "joined",
        "joined_set",
        "left",
        "left_set",
        "memo",
        "new",
        "seq",
        "size",
    )

    def __init__(self, seq: int, joined: tuple[str, ...], left: tuple[str, ...]) -> None:
        self.seq = seq
        self.joined = joined
        self.left = left
        self.size = len(joined) + len(left)
        self.memo: Any = None
        """Scratch space for the lobby hook, shared by every client of the process."""
        self.joined_set = frozenset(joined)
        self.left_set = frozenset(left)
        self.new = self.joined_set - self.left_set
        self.clean = bool(joined or left) and (
            len(self.joined_set) == len(joined) and len(self.left_set) == len(left)
        )
        self.growth = len(self.joined_set) - len(self.left_set)
        """How many more keys a view holds once it applied this (clean, consistent)
        update: ``left`` goes first, and every ``left`` key was online."""

    @classmethod
    def of(cls, msg: protocol.LobbyUpdate) -> Update:
        """``msg``'s update, its keys interned (the fast path's already are; those the
        library decoded are not)."""
        return cls(msg.seq, _interned(msg.joined), _interned(msg.left))


def _interned(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple([sys.intern(key) for key in keys])


class UpdateCache:
    """Parsed updates by frame text, the oldest forgotten past ``max_chars`` of text."""

    def __init__(self, max_chars: int = 32 * 2**20, max_frame: int = 2**20) -> None:
        self.max_chars = max_chars
        self.max_frame = max_frame
        self.chars = 0
        self.hits = 0
        self.misses = 0
        self._by_text: dict[str, Update] = {}
        self._order: deque[str] = deque()

    def get(self, text: str) -> Update | None:
        update = self._by_text.get(text)
        if update is None:
            self.misses += 1
        else:
            self.hits += 1
        return update

    def put(self, text: str, update: Update) -> None:
        if len(text) > self.max_frame or text in self._by_text:
            return
        self._by_text[text] = update
        self._order.append(text)
        self.chars += len(text)
        while self.chars > self.max_chars:
            old = self._order.popleft()
            del self._by_text[old]
            self.chars -= len(old)

    def clear(self) -> None:
        self._by_text.clear()
        self._order.clear()
        self.chars = 0


UPDATES: Final = UpdateCache()
"""This process's cache: all its clients share it."""


BEHIND_MAX: Final = 2048
"""An unsampled client applies what it noted once it is this many updates behind, or
at a bound drawn from [BEHIND_MAX / 2, BEHIND_MAX) (so catch-ups spread out). In a run
shorter than that (2,000 watchers at 200 changes/s make about 55 updates a second),
all of it happens after the measured phase."""


class Ledger:
    """The updates this process's unsampled clients received and have not applied yet.

    An unsampled client that receives the next ``seq`` only notes it (its "behind"
    mark advances); the update itself is kept once per process here, by ``seq``, as the
    first client to receive that ``seq`` got it. A client whose update for a ``seq`` is
    not that very object (another text, e.g. after a server-side break restarted the
    numbering) does not defer it: it catches up and applies it itself. So what a
    client later applies from here is exactly what it received.

    :meth:`catch_up_all` applies every client's backlog (with the library's checks)
    and empties the ledger; the agent calls it before anything reads a view.
    :meth:`trim` forgets the updates that no client has left to apply, which bounds
    the ledger's memory to about ``keep`` updates (no client is further behind than
    :data:`BEHIND_MAX`)."""

    def __init__(self, keep: int = 2 * BEHIND_MAX) -> None:
        self.keep = keep
        self.by_seq: dict[int, Update] = {}
        self.behind: set[LoadClient] = set()
        self.trim_at = keep
        self.noted = 0
        """Updates noted instead of applied on arrival, over the process's life."""

    def catch_up_all(self) -> None:
        for client in list(self.behind):
            client.catch_up()
        self.behind.clear()
        self.by_seq.clear()
        SHARED.forget_catch_ups()
        self.trim_at = self.keep

    def trim(self) -> None:
        """Forget the updates every client behind has applied already."""
        bases = [client.load_view.seq for client in self.behind]
        low = min((seq for seq in bases if seq is not None), default=None)
        if low is None:
            self.by_seq.clear()
        else:
            for seq in [seq for seq in self.by_seq if seq <= low]:
                del self.by_seq[seq]
        SHARED.forget_catch_ups()
        self.trim_at = len(self.by_seq) + self.keep


LEDGER: Final = Ledger()
"""This process's ledger: all its clients share it."""


class SharedViews:
    """Views that many clients of this process hold alike, kept once.

    Every client receives a ``lobby_snapshot`` of the whole lobby, so N clients joining
    one by one hold N²/2 keys between them: 20,000 idle clients would need some 18 GiB
    of sets in the generator. But the snapshots sent at one ``seq`` are equal, and an
    unsampled client applies its noted updates only later, all from :data:`LEDGER`. So
    a snapshot's keys are kept once per distinct set (:meth:`snapshot`, an equal
    frozenset is looked up, not copied), and a client that catches up from a shared
    set to the same ``seq`` as another one that started from the same set at the same
    ``seq`` gets that one's result (:meth:`caught_up`), which it would have computed
    key for key. A view is thawed into a set of its own the first time it is changed
    in place (an update applied on arrival). Both tables are bounded, and the catch-up
    table is cleared whenever the ledger forgets updates (a ``seq`` may then come back
    with another meaning)."""

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self.snapshots: dict[frozenset[str], frozenset[str]] = {}
        self.catch_ups: dict[tuple[int, int, int], tuple[frozenset[str], frozenset[str]]] = {}

    def snapshot(self, keys: frozenset[str]) -> frozenset[str]:
        shared = self.snapshots.get(keys)
        if shared is None:
            if len(self.snapshots) >= self.keep:
                self.snapshots.clear()
            shared = self.snapshots[keys] = keys
        return shared

    def caught_up(self, base: frozenset[str], seq: int, last: int) -> frozenset[str] | None:
        """The view that catching up from ``base`` at ``seq`` to ``last`` gave before."""
        hit = self.catch_ups.get((id(base), seq, last))
        return hit[1] if hit is not None and hit[0] is base else None

    def remember(self, base: frozenset[str], seq: int, last: int, result: frozenset[str]) -> None:
        if len(self.catch_ups) >= self.keep:
            self.catch_ups.clear()
        self.catch_ups[id(base), seq, last] = (base, result)  # holding base keeps its id

    def forget_catch_ups(self) -> None:
        self.catch_ups.clear()


SHARED: Final = SharedViews()
"""This process's shared views."""

# --------------------------------------------------------------------------- the view


class LoadView(LobbyView):
    """A :class:`LobbyView` that stores each key string once per process (interned) and
    applies a pre-parsed :class:`Update` cheaply.

    Every client parses its own copy of every key (about 110 bytes each); with
    thousands of clients each holding thousands of keys, sharing them is what keeps a
    generator process in memory. The checks are the library's: the fast path takes
    only an update the library would accept (the next ``seq``, a clean delta, every
    ``left`` key online, no new ``joined`` key online), with the library's effect;
    anything else goes to :meth:`LobbyView.apply_update`, which raises its error."""

    __slots__ = ()

    def apply_snapshot(self, seq: int, keys: Iterable[str]) -> None:
        """The library's snapshot, its keys shared with equal snapshots
        (:class:`SharedViews`)."""
        key_list = list(map(sys.intern, keys))
        new = frozenset(key_list)
        if len(new) != len(key_list):
            raise InconsistentSnapshot(f"lobby_snapshot seq {seq} lists a key more than once")
        self.seq = seq
        self._online = SHARED.snapshot(new)

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None:
        self._thaw()
        super().apply_update(seq, map(sys.intern, joined), left)

    def _thaw(self) -> set[str]:
        """The view as a set of its own, to change in place."""
        online = self._online
        if isinstance(online, frozenset):
            online = self._online = set(online)
        return online

    def apply_parsed(self, update: Update) -> None:
        online = self._online
        current = self.seq
        if (
            current is not None
            and update.seq == current + 1
            and update.clean
            and update.left_set <= online
            and online.isdisjoint(update.new)
        ):
            online = self._thaw()
            online.difference_update(update.left_set)
            online.update(update.joined_set)
            self.seq = update.seq
        else:
            self.apply_update(update.seq, update.joined, update.left)

    def catch_up(self, last: int, by_seq: dict[int, Update]) -> None:
        """Apply ``by_seq``'s updates after ``seq`` up to ``last`` (raising the first
        :class:`ViewError`, as on arrival); from a shared view, share the result with
        the clients that catch up from it alike (:class:`SharedViews`)."""
        base, start = self._online, self.seq
        assert start is not None  # noted only after a snapshot
        if isinstance(base, frozenset):
            result = SHARED.caught_up(base, start, last)
            if result is not None:
                self._online, self.seq = result, last
                return
        for seq in range(start + 1, last + 1):
            self.apply_parsed(by_seq[seq])
        if isinstance(base, frozenset):
            result = frozenset(self._online)
            SHARED.remember(base, start, last, result)
            self._online = result


LobbyHook = Callable[["LoadClient", Update | None], None]
"""Called after every applied update (with it) or snapshot (with None)."""

# --------------------------------------------------------------------------- the client


class LoadClient(LobbyClient):
    """A :class:`LobbyClient` that times its ``auth``, counts lobby_update bytes and
    handles well-formed lobby frames through the shared fast path."""

    ws_client: ClassVar[str] = "websockets"
    """The WebSocket library of new connections in this process: ``websockets`` or
    ``picows`` (see :func:`use_ws_client`)."""

    auth_sent_hook: ClassVar[Callable[[str, float], None] | None] = None
    """Called with ``(public_key, time.time())`` right after the ``auth`` frame is
    written (one generator process = one hook, set by its agent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load_view = LoadView()
        self.view = self.load_view
        self.update_bytes = 0
        self.auth_sent_at = 0.0
        self.index = -1
        """The generator's index of this client (set by its agent)."""
        self.lobby_hook: LobbyHook | None = None
        """A cheaper ``lobby_listeners``: called with (client, update or None)."""
        self.in_place = False
        """True once frames are handled as they are parsed (see _handle_in_place)."""
        self.sampled = True
        """True: every update is applied to the view as it arrives (the library's way).
        False: an update in sequence is only noted and applied later from the
        :data:`LEDGER` (see the module docstring); the agent samples which."""
        self.target: int | None = None
        """When set, ``reached_at`` notes when the view first held this many keys."""
        self.reached_at = 0.0
        self._behind_to: int | None = None  # the last seq noted and not applied yet
        self._behind_size = 0  # the view's size once the noted updates are applied
        self._behind_limit = random.randrange(BEHIND_MAX // 2, BEHIND_MAX)
        self._auth_reads = 0

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
        """The library's connect over picows when this process uses it and the
        connection needs nothing picows is not used for here (TLS, a proxy,
        compression, keepalive pings); else the library's own."""
        if (
            cls.ws_client != "picows"
            or not url.startswith("ws://")
            or ssl is not None
            or proxy is not None
            or compression is not None
            or ping_interval is not None
        ):
            return await super()._open(
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
        conn: fastws.PicowsConnection | None = None
        try:
            async with asyncio.timeout(open_timeout):
                try:
                    conn = await fastws.connect(
                        url,
                        open_timeout=open_timeout,
                        max_size=max_size,
                        local_addr=None if _SOURCES is None else (next(_SOURCES), 0),
                    )
                except Exception as exc:
                    status = fastws.handshake_status(exc)
                    if status is not None:
                        code = int(protocol.CloseCode.TRY_AGAIN_LATER) if status == 503 else None
                        raise ConnectionRefusedByServer(code, f"HTTP {status}", status) from exc
                    if fastws.is_picows_error(exc):
                        raise ProtocolError(f"WebSocket handshake failed: {exc}") from exc
                    raise
                client = cls(
                    cast(Any, conn),
                    key,
                    message_queue_size=message_queue_size,
                    resync_on_error=resync_on_error,
                )
                await client._authenticate()
        except BaseException:
            if conn is not None:
                await conn.close()
            raise
        client._reader = asyncio.create_task(client._read_loop(), name=f"lobby-reader-{url}")
        return client

    async def _authenticate(self) -> None:
        await super()._authenticate()
        self._handle_in_place()

    def _handle_offered(self, frame: str | bytes) -> bool:
        """A picows connection offers each frame as it arrives: handled here unless
        someone waits on the view (then the reader takes it, and wakes them)."""
        if self._waiting:
            return False
        try:
            self._handle_frame(frame)
        except LobbyClientError as exc:
            self._record(exc)
        return True

    def _handle_in_place(self) -> None:
        """From now on, handle each complete text frame as websockets parses it, instead
        of queueing it for the reader task to take with ``recv()``: the same handling,
        without a queue, a future and a task switch per frame.

        Only while nothing is queued (so frames keep their order: the reader handles
        what it takes without pausing), nobody waits in ``wait_for_view`` (the reader
        wakes them) and the frame is valid UTF-8 (else ``recv()`` fails the connection
        as it always did); otherwise the frame goes to the queue. The reader still
        sees the end of the connection. Left off with a websockets whose internals
        differ from what this expects. Over picows, the connection offers each frame to
        :meth:`_handle_offered` under the same rules."""
        ws: Any = self._ws
        if isinstance(ws, fastws.PicowsConnection):
            ws.handler = self._handle_offered
            self.in_place = True
            return
        assembler = getattr(self._ws, "recv_messages", None)
        queue = getattr(getattr(assembler, "frames", None), "queue", None)
        put = getattr(assembler, "put", None)
        if not isinstance(queue, deque) or put is None:
            return

        def put_or_handle(frame: Frame) -> None:
            if frame.opcode is Opcode.TEXT and frame.fin and not queue and not self._waiting:
                try:
                    text = str(frame.data, "utf-8")
                except UnicodeDecodeError:
                    put(frame)
                    return
                try:
                    self._handle_frame(text)
                except LobbyClientError as exc:
                    self._record(exc)
            else:
                put(frame)

        assembler.put = put_or_handle  # type: ignore[union-attr]
        self.in_place = True

    async def _recv_during_auth(self, failed_reason: str | None = None) -> protocol.ServerMessage:
        # The second read waits for the answer to ``auth``, which was just written.
        self._auth_reads += 1
        if self._auth_reads == 2:
            self.auth_sent_at = time.time()
            hook = LoadClient.auth_sent_hook
            if hook is not None:
                hook(self.public_key, self.auth_sent_at)
        return await super()._recv_during_auth(failed_reason)

    def _parse(self, frame: str | bytes) -> protocol.ServerMessage:
        """:func:`decode`: also during auth, as the first snapshot is the largest frame a
        client parses."""
        return decode(frame)

    def _handle_frame(self, frame: str | bytes) -> None:
        if not isinstance(frame, str):
            super()._handle_frame(frame)  # refused, as the library refuses it
            return
        update = UPDATES.get(frame)
        if update is None:
            try:
                msg = self._parse(frame)
            except ProtocolError as exc:  # a malformed update still counts its bytes
                cause = exc.__cause__
                if isinstance(cause, protocol.ServerProtocolError) and cause.frame_type == (
                    protocol.LobbyUpdate.TYPE
                ):
                    self.update_bytes += len(frame)
                raise
            if not isinstance(msg, protocol.LobbyUpdate):
                self._handle(msg)
                return
            update = Update.of(msg)
            UPDATES.put(frame, update)
        self.update_bytes += len(frame)
        self.updates_received += 1
        if not self.sampled and self._defer(update):
            return
        self.catch_up()
        try:
            self.load_view.apply_parsed(update)
        except DuplicateUpdate:
            raise
        except ViewError:
            self._request_resync()
            raise
        self._changed_to(update)

    def _defer(self, update: Update) -> bool:
        """Note ``update`` instead of applying it, when it is the next ``seq``, clean,
        and the ledger's update for that ``seq`` (which it becomes if there is none);
        False when it must be applied now. Nobody may be watching the view change."""
        if self._waiting or self.lobby_hook is not None or self.lobby_listeners:
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
        if base is not None and update.seq - base >= self._behind_limit:
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
            self._record(exc)
            self._request_resync()

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

    async def _wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        self.catch_up()  # the condition reads the view; while it waits, nothing is noted
        await super()._wait_until(condition, timeout, what)

    async def _on_closed(self) -> None:
        self.catch_up()
        await super()._on_closed()

    def _handle(self, msg: protocol.ServerMessage) -> None:
        """The library's handling; a snapshot also goes to the lobby hook."""
        if isinstance(msg, protocol.LobbySnapshot):
            self.catch_up()  # check what came before it, before it replaces the view
            self.snapshots_received += 1
            self._resync_requested = False
            self.load_view.apply_snapshot(msg.seq, msg.users)
            self._changed_to(None, msg.seq, msg.users)
            return
        super()._handle(msg)

    def _changed_to(self, update: Update | None, seq: int = 0, keys: tuple[str, ...] = ()) -> None:
        """Tell the hook and the library's listeners about an applied frame."""
        target = self.target
        if target is not None and not self.reached_at and len(self.load_view) >= target:
            self.reached_at = time.time()
        hook = self.lobby_hook
        if hook is not None:
            try:
                hook(self, update)
            except Exception as exc:
                failure = ListenerFailed(f"lobby hook {hook!r} raised {exc!r}")
                failure.__cause__ = exc
                self._record(failure)
        if self.lobby_listeners:
            online = len(self.load_view)
            if update is None:
                self._notify(LobbyChange("snapshot", seq, keys, (), online))
            else:
                self._notify(LobbyChange("update", update.seq, update.joined, update.left, online))

    @property
    def local_address(self) -> tuple[str, int]:
        """This end's (address, port): identifies the connection in /proc/net/tcp."""
        host, port = self._ws.local_address[:2]
        return str(host), int(port)

    def drop(self) -> None:
        """End the connection without a close frame (TCP FIN/RST, no WebSocket close)."""
        self._ws.transport.abort()


_SOURCES: Iterator[str] | None = None
"""The source addresses new picows connections bind to, round robin (None: any)."""


def use_source_addresses(addresses: Sequence[str]) -> None:
    """Bind each new connection of this process to the next address of ``addresses``.

    Patches the ``ws_connect`` that :mod:`shared.client` uses, in this process only
    (each generator process calls it once at start), and sets the addresses picows
    connections use. An empty sequence changes nothing.
    """
    global _SOURCES
    if not addresses:
        return
    original = lib.ws_connect  # type: ignore[attr-defined]
    cycle = itertools.cycle(list(addresses))
    _SOURCES = cycle

    def connect(uri: str, **kwargs: Any) -> Any:
        return original(uri, local_addr=(next(cycle), 0), **kwargs)

    lib.ws_connect = connect  # type: ignore[attr-defined,assignment]


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
