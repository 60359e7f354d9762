"""The client side of the lobby wire protocol (docs/PROTOCOL.md), without I/O.

Theory of operation
-------------------

A :class:`Session` is one connection's worth of protocol state, the way websockets'
``protocol.py`` or h11 keep theirs: it never touches a socket, a task or a clock.
Whoever owns the connection (the asyncio adapter :mod:`shared.client`, the load
generator, a test) feeds it what arrived and writes what it says to write:

* :meth:`Session.receive` takes one text frame from the server and returns the
  :data:`Event`\\ s it produced, in order. A frame that breaks the contract raises a
  :class:`ProtocolError` (a :class:`ViewError` for a lobby frame the view refused), and
  the session is then exactly as it was before the frame, apart from a resync it may
  have asked for. During the handshake such an error is fatal (the owner closes the
  connection); after it, the owner records it and carries on.
* :meth:`Session.data_to_send` returns the frames to write, in order: the ``auth``
  answering the challenge, ``send`` and ``get_lobby`` frames, and the one ``get_lobby``
  a resync asks for.
* :meth:`Session.connection_closed` says the connection ended, and returns the error
  that describes it: :class:`AuthFailed` or :class:`ConnectionRefusedByServer` before
  the session was open, :class:`ConnectionClosedError` after. :func:`http_refusal` is
  the same for an HTTP upgrade the server refused.

The states (:class:`State`) follow the contract's handshake: ``CHALLENGE`` (waiting
for the challenge) -> ``AUTH`` (our ``auth`` is written, waiting for ``auth_ok``) ->
``SNAPSHOT`` (waiting for the first ``lobby_snapshot``) -> ``OPEN`` -> ``CLOSED``. The
session becomes ``OPEN`` on the first snapshot, which must list the client itself, and
:meth:`Session.receive` returns an :class:`Online` event then.

The lobby is a :class:`LobbyView`: ``seq`` and the set of online keys, checked by the
contract's rules (:func:`snapshot_keys` and :func:`check_update`, pure functions that a
view of another shape can use too). A refused update leaves the view as it was; a gap
or an inconsistent update makes it stale, so the session asks once for a snapshot
(``get_lobby``) and asks again only after a snapshot was applied; a repeated update
(``seq`` at or below the view's) needs no resync. The rules are also written down as
test vectors (tests/vectors/view.json) that the JavaScript client passes too.

Sends: :meth:`Session.send` checks the id, writes the frame and remembers the id as
pending; the ``send_result`` with that id comes back as a :class:`SendAnswered` event
with ``expected`` True, any other one with ``expected`` False.

Reconnecting is the owner's business, but what to do is decided here:
:class:`ReconnectPolicy` says which endings are worth another attempt (:func:`retryable`)
and how long to wait before attempt n (exponential backoff with full jitter), the
same rules lobby.js follows.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from nacl.signing import SigningKey

from shared import protocol

# --------------------------------------------------------------------------- errors


class LobbyClientError(Exception):
    """Root of every error the client raises or records."""


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
    """A snapshot that lists one key more than once (a key is online at most once)."""


class ListenerFailed(LobbyClientError):
    """A lobby listener raised; the exception is the ``__cause__``. The view is fine."""


class MessageQueueFull(LobbyClientError):
    """A direct message was dropped because the local queue was full (nobody called
    :meth:`shared.client.LobbyClient.next_message` fast enough)."""


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


def snapshot_keys(seq: int, keys: Iterable[str]) -> frozenset[str]:
    """The online set a snapshot at ``seq`` describes; raises
    :class:`InconsistentSnapshot` when it lists a key twice."""
    key_list = list(keys)
    online = frozenset(key_list)
    if len(online) != len(key_list):
        raise InconsistentSnapshot(f"lobby_snapshot seq {seq} lists a key more than once")
    return online


def check_update(
    online: AbstractSet[str],
    current: int | None,
    seq: int,
    joined: Iterable[str],
    left: Iterable[str],
) -> tuple[frozenset[str], frozenset[str]]:
    """Check the update ``seq`` against a view at ``current`` holding ``online``;
    returns ``(left, joined)`` as sets, to remove then add.

    Raises :class:`SequenceGap` unless ``seq == current + 1`` (and
    :class:`DuplicateUpdate` when ``seq <= current``), :class:`InconsistentUpdate` when
    the delta contradicts the view."""
    if current is None:
        raise SequenceGap(None, seq)
    if seq <= current:
        raise DuplicateUpdate(current, seq)
    if seq != current + 1:
        raise SequenceGap(current + 1, seq)
    joined_list, left_list = list(joined), list(left)
    joined_set, left_set = frozenset(joined_list), frozenset(left_list)
    if not joined_list and not left_list:
        raise InconsistentUpdate(f"lobby_update seq {seq} has empty joined and left")
    if len(joined_set) != len(joined_list) or len(left_set) != len(left_list):
        raise InconsistentUpdate(f"lobby_update seq {seq} lists a key twice in one list")
    not_online = left_set - online
    if not_online:
        raise InconsistentUpdate(
            f"lobby_update seq {seq}: left but not online: {sorted(not_online)[:3]}"
        )
    already = (joined_set - left_set) & online
    if already:
        raise InconsistentUpdate(
            f"lobby_update seq {seq}: joined but already online: {sorted(already)[:3]}"
        )
    return left_set, joined_set


class View(Protocol):
    """What a :class:`Session` needs of a view (:class:`LobbyView` is one; the load
    generator has one that shares its sets between clients)."""

    @property
    def seq(self) -> int | None: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def apply_snapshot(self, seq: int, keys: Iterable[str]) -> None: ...

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None: ...


class LobbyView:
    """The lobby as a client sees it: ``seq`` and the set of online keys. No I/O.

    ``seq`` is None until the first snapshot. Every ``apply_*`` method either applies
    the whole frame or raises a :class:`ViewError` and changes nothing.
    """

    __slots__ = ("_online", "seq")

    def __init__(self) -> None:
        self.seq: int | None = None
        self._online: set[str] = set()

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
        """Replace everything: ``keys`` are online at ``seq`` (:func:`snapshot_keys`)."""
        self._online = set(snapshot_keys(seq, keys))
        self.seq = seq

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None:
        """Apply the delta ``seq``: remove ``left``, then add ``joined``; the checks
        and errors are :func:`check_update`'s."""
        left_set, joined_set = check_update(self._online, self.seq, seq, joined, left)
        self._online -= left_set
        self._online |= joined_set
        self.seq = seq


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LobbyChange:
    """What the view applied: a ``snapshot`` (``joined`` holds every online key,
    ``left`` is empty) or an ``update``. ``online`` is the count after applying it."""

    kind: Literal["snapshot", "update"]
    seq: int
    joined: tuple[str, ...]
    left: tuple[str, ...]
    online: int


@dataclass(frozen=True, slots=True)
class Online:
    """The handshake is over: authenticated, and the first snapshot (``change``) is
    applied. Returned once per session, in place of that snapshot's
    :class:`LobbyChange`."""

    change: LobbyChange


@dataclass(frozen=True, slots=True)
class SendAnswered:
    """A ``send_result``; ``expected`` is False for an id no :meth:`Session.send`
    waits for (an answer to a raw frame, or to a send its owner gave up on)."""

    result: protocol.SendResult
    expected: bool


Event = Online | LobbyChange | protocol.Message | SendAnswered | protocol.ErrorFrame
"""What :meth:`Session.receive` returns: the first snapshot's :class:`Online`, every
later applied :class:`LobbyChange`, direct messages, send results and the server's
``error`` frames."""


class State(enum.Enum):
    CHALLENGE = "challenge"
    """Connected; waiting for the challenge."""
    AUTH = "auth"
    """Our ``auth`` is written; waiting for ``auth_ok`` (or ``auth_failed``)."""
    SNAPSHOT = "snapshot"
    """Authenticated; waiting for the first ``lobby_snapshot``."""
    OPEN = "open"
    """Online: the view is live."""
    CLOSED = "closed"
    """The connection ended (:meth:`Session.connection_closed`)."""


def parse_frame(frame: str | bytes) -> protocol.ServerMessage:
    """:func:`~shared.protocol.parse_server_frame`, refusing with :class:`ProtocolError`
    (whose ``__cause__`` is the decoder's error)."""
    try:
        return protocol.parse_server_frame(frame)
    except protocol.ServerProtocolError as exc:
        raise ProtocolError(f"malformed server frame: {exc}") from exc


def answer_challenge(signing_key: SigningKey, challenge: protocol.Challenge) -> str:
    """The ``auth`` frame answering ``challenge``; raises :class:`ProtocolError` for a
    version this client does not speak."""
    if challenge.version != protocol.VERSION:
        raise ProtocolError(f"unsupported protocol version {challenge.version!r}")
    public_key = bytes(signing_key.verify_key).hex()
    return protocol.auth(public_key, protocol.sign_challenge(signing_key, challenge.nonce))


# --------------------------------------------------------------------------- the session


class Session:
    """One connection's protocol state (see the module docstring). No I/O.

    * ``view``: the lobby (a :class:`LobbyView` unless another :class:`View` is given).
    * ``decode``: turns a frame into a typed message, raising :class:`ProtocolError`
      (:func:`parse_frame`; the load generator passes a faster one with equal results).
    * ``resync_on_error``: ask for a snapshot after a gap or an inconsistent update.
    * ``pending``: ids of sends waiting for their results.
    * ``snapshots_received``, ``updates_received``, ``messages_received``: counters.
    * ``resync_requested``: a ``get_lobby`` went out for a resync and no snapshot was
      applied since.
    * ``epoch``: how many snapshots the view has applied. Each starts a new run of
      updates numbered from its ``seq`` (which may be lower than before), so
      ``(epoch, seq)`` orders the states of the view, where ``seq`` alone does not.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        *,
        view: View | None = None,
        decode: Callable[[str | bytes], protocol.ServerMessage] = parse_frame,
        resync_on_error: bool = True,
        state: State = State.CHALLENGE,
    ) -> None:
        """``state``: ``OPEN`` for a connection authenticated elsewhere (tests feed
        such a session lobby frames directly)."""
        self.signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key).hex()
        self.view: Any = LobbyView() if view is None else view
        self.decode = decode
        self.resync_on_error = resync_on_error
        self.state = state
        self.pending: set[str] = set()
        self.snapshots_received = 0
        self.updates_received = 0
        self.messages_received = 0
        self.resync_requested = False
        self.epoch = 0
        self.auth_failure: str | None = None
        """The ``auth_failed`` reason, once the server sent one."""
        self._outbox: list[str] = []

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> list[str]:
        """The frames to write now, in order (each returned once)."""
        out, self._outbox = self._outbox, []
        return out

    def send(self, to: str, body: str, msg_id: str) -> None:
        """Write a ``send`` and wait for its result (a :class:`SendAnswered` event).
        Raises :class:`ValueError` for an id out of 1-64 characters or already pending,
        :class:`ConnectionClosedError` unless the session is open."""
        if not 1 <= len(msg_id) <= protocol.MAX_ID_CHARS:
            raise ValueError(f"msg_id must be 1-{protocol.MAX_ID_CHARS} characters")
        if msg_id in self.pending:
            raise ValueError(f"a send with id {msg_id!r} is already waiting for its result")
        if self.state is not State.OPEN:
            raise ConnectionClosedError(None, f"session is {self.state.value}")
        self.pending.add(msg_id)
        self._outbox.append(protocol.send(to, msg_id, body))

    def forget(self, msg_id: str) -> None:
        """Stop waiting for the result of ``msg_id`` (its owner gave up on it); a late
        result then comes as unexpected."""
        self.pending.discard(msg_id)

    def get_lobby(self) -> None:
        """Ask for a fresh snapshot."""
        self._outbox.append(protocol.get_lobby())

    # ----------------------------------------------------------------- input

    def receive(self, frame: str | bytes) -> list[Event]:
        """Handle one frame from the server; returns its events (see the module
        docstring for the errors)."""
        return self.handle(self.decode(frame))

    def handle(self, msg: protocol.ServerMessage) -> list[Event]:
        """:meth:`receive` for a frame already decoded."""
        state = self.state
        if state is State.OPEN:
            return self._handle_open(msg)
        if state is State.CHALLENGE:
            if not isinstance(msg, protocol.Challenge):
                raise ProtocolError(f"expected a challenge, got {msg!r:.120}")
            self._outbox.append(answer_challenge(self.signing_key, msg))
            self.state = State.AUTH
            return []
        if state is State.AUTH:
            if self.auth_failure is not None:
                raise ProtocolError(
                    f"frame after auth_failed instead of a close ({self.auth_failure})"
                )
            if isinstance(msg, protocol.AuthFailedFrame):
                reason = msg.reason
                self.auth_failure = (
                    reason.value if isinstance(reason, protocol.AuthFailure) else reason
                )
                return []
            if not isinstance(msg, protocol.AuthOk):
                raise ProtocolError(f"expected auth_ok, got {msg!r:.120}")
            if msg.public_key != self.public_key:
                raise ProtocolError(f"auth_ok names another key: {msg.public_key!r}")
            self.state = State.SNAPSHOT
            return []
        if state is State.SNAPSHOT:
            if not isinstance(msg, protocol.LobbySnapshot):
                raise ProtocolError(f"expected lobby_snapshot after auth_ok, got {msg!r:.120}")
            change = self.apply_snapshot(msg)
            if self.public_key not in self.view:
                raise ProtocolError("the first lobby_snapshot does not contain the client itself")
            self.state = State.OPEN
            return [Online(change)]
        raise ProtocolError(f"{msg.TYPE!r} frame after the connection closed")

    def _handle_open(self, msg: protocol.ServerMessage) -> list[Event]:
        if isinstance(msg, protocol.LobbyUpdate):
            return [self.apply_update(msg)]
        if isinstance(msg, protocol.LobbySnapshot):
            return [self.apply_snapshot(msg)]
        if isinstance(msg, protocol.Message):
            self.messages_received += 1
            return [msg]
        if isinstance(msg, protocol.SendResult):
            expected = msg.id in self.pending
            self.pending.discard(msg.id)
            return [SendAnswered(msg, expected)]
        if isinstance(msg, protocol.ErrorFrame):
            return [msg]
        raise ProtocolError(f"unexpected {msg.TYPE!r} frame after authentication")

    def apply_snapshot(self, msg: protocol.LobbySnapshot) -> LobbyChange:
        """Count and apply a snapshot; a refused one changes nothing, asks for a
        resync (the view is stale: the server meant to replace it) and raises."""
        self.snapshots_received += 1
        try:
            self.view.apply_snapshot(msg.seq, msg.users)
        except ViewError as exc:
            self.view_refused(exc)
            raise
        self.resync_requested = False
        self.epoch += 1
        return LobbyChange("snapshot", msg.seq, msg.users, (), len(self.view))

    def apply_update(self, msg: protocol.LobbyUpdate) -> LobbyChange:
        """Count and apply an update; a refused one raises, after asking for a resync
        unless it was only a repeat (:meth:`view_refused`)."""
        self.updates_received += 1
        try:
            self.view.apply_update(msg.seq, msg.joined, msg.left)
        except ViewError as exc:
            self.view_refused(exc)
            raise
        return LobbyChange("update", msg.seq, msg.joined, msg.left, len(self.view))

    def view_refused(self, error: ViewError) -> None:
        """The view refused a frame with ``error``: unless it is a repeated update
        (nothing lost), the view is stale, so ask for a snapshot, once until one is
        applied."""
        if isinstance(error, DuplicateUpdate):
            return
        if self.resync_on_error and not self.resync_requested and self.state is State.OPEN:
            self.resync_requested = True
            self.get_lobby()

    # ----------------------------------------------------------------- the end

    def connection_closed(self, code: int | None, reason: str | None) -> LobbyClientError:
        """The connection ended with ``code``/``reason`` (None: no close frame was
        read). Returns the error for whoever waited on it; forgets pending sends."""
        state, self.state = self.state, State.CLOSED
        self.pending.clear()
        self._outbox.clear()
        if state is State.OPEN or state is State.CLOSED:
            return ConnectionClosedError(code, reason)
        if self.auth_failure is not None or code == protocol.CloseCode.AUTH_FAILED:
            return AuthFailed(self.auth_failure or reason or "", code)
        return ConnectionRefusedByServer(code, reason or "")


def http_refusal(status: int) -> ConnectionRefusedByServer:
    """The error for an upgrade the server refused with HTTP ``status`` (a 503 reads
    as close code 1013, the server's "try again later")."""
    code = int(protocol.CloseCode.TRY_AGAIN_LATER) if status == 503 else None
    return ConnectionRefusedByServer(code, f"HTTP {status}", status)


# --------------------------------------------------------------------------- reconnecting

FINAL_CLOSE_CODES: Final = frozenset({4001, 4002, 4006})
"""Close codes after which a client must not reconnect on its own: 4001 (its
credentials are refused, and would be again), 4002 (a newer session of the same key
exists, which a reconnect would knock out) and 4006 (the operator's backend closed the
session on purpose: a kick)."""

RETRIED_HTTP_STATUSES: Final = frozenset({429, 502, 503, 504})
"""Refused upgrades worth another attempt later: the server (or a proxy in front of
it) is busy or restarting. Any other status (404: wrong path) would be refused again."""


def retryable(error: BaseException) -> bool:
    """Whether a connection that ended with ``error`` is worth another attempt.

    Yes for the network's and the server's doing (a refused TCP connection, a timeout,
    1001, 1006, 1011, 1013, HTTP 503), and for a close that says only this connection
    broke a rule (1007-1009, 4003, 4005: a new connection starts clean), as lobby.js
    does. No after :data:`FINAL_CLOSE_CODES`, an ``auth_failed``, a refused upgrade
    outside :data:`RETRIED_HTTP_STATUSES`, or a server that broke the handshake (it
    would again)."""
    if isinstance(error, AuthFailed):
        return False
    if isinstance(error, ConnectionRefusedByServer) and error.http_status is not None:
        return error.http_status in RETRIED_HTTP_STATUSES
    if isinstance(error, ConnectionRefusedByServer | ConnectionClosedError):
        return error.code not in FINAL_CLOSE_CODES
    return isinstance(error, OSError | TimeoutError)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff with full jitter: the wait before attempt ``n`` (from 0,
    counted since the client was last online) is ``random() * min(maximum, initial *
    2**n)`` seconds. ``max_attempts`` (None: no limit) bounds the attempts in a row
    that fail; ``random`` is the jitter's source (tests pass their own)."""

    initial: float = 0.5
    maximum: float = 30.0
    max_attempts: int | None = None
    random: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (0 for the first retry's bound)."""
        return backoff_delay(attempt, self.random(), self.initial, self.maximum)

    def gives_up(self, attempt: int) -> bool:
        """True when ``attempt`` failed attempts in a row are all it may make."""
        return self.max_attempts is not None and attempt >= self.max_attempts


def backoff_delay(attempt: int, jitter: float, initial: float, maximum: float) -> float:
    """``jitter * min(maximum, initial * 2**attempt)``: the backoff, with the random
    draw ``jitter`` in [0, 1) given (lobby.js computes the same)."""
    return jitter * min(maximum, initial * 2.0 ** min(attempt, 64))
