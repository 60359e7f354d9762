"""One client connection's protocol state machine (sans-I/O).

Theory of operation
-------------------
A :class:`Connection` owns everything the wire contract says about one client and
nothing else: no sockets, no clock, no tasks. The shell feeds it events (a frame, an
``AuthAck``, a ``Kick``, the replica catching up, a deadline, the coordinator coming
back, the transport ending) and carries out the :data:`Action` list it returns, in
order: frames to write, a close code, backbone messages to emit, a route to start.

Authentication crosses two parties, so it has more states than "in" and "out":

``CHALLENGED``
    Challenge sent; the client has ``auth_timeout`` (10 s) to answer. A bad answer is
    ``auth_failed`` + 4001; silence is 4003.
``VERIFIED``
    Signature good, but the coordinator is unreachable, so ``Authed`` is not sent yet.
``AUTHENTICATING``
    ``Authed`` sent; waiting for ``AuthAck`` (recorded) or ``Kick``.
``ACKED``
    Recorded as of ``(epoch, seq)``; ``auth_ok`` is held until the replica has applied
    that ``seq``, so the snapshot that follows ``auth_ok`` already contains the client.
    (Sending it from the coordinator's live-but-unpublished state would let the client
    later see its own ``joined`` twice.) Direct messages for it are held, bounded.
``AUTHENTICATED``
    Normal service. Lobby fan-out goes through a :class:`Flow` sub-state.
``CLOSING``
    A close was decided; every further event is ignored.

From ``VERIFIED`` to ``ACKED`` one deadline applies: ``auth_wait`` (5 s) from the
verified signature, then 1013 (the server's fault, so "try again later", not 4003).
Once ``Authed`` was emitted, leaving for ``CLOSING`` for any reason emits ``Closed``
exactly once, so the coordinator never keeps a key online without a connection.

Lobby flow (``AUTHENTICATED`` only): ``CURRENT`` clients get every update. One whose
transport buffer passes ``lag_bytes`` becomes ``LAGGING`` and is skipped; once its
buffer drains below a quarter of that it gets one fresh snapshot and is ``CURRENT``
again, so it never sees a gap. ``STALE`` (after a resync) waits for a replica state
that contains the client's own key, then gets the fresh snapshot.

Bounds on what one client can cost (the shell measures, the machine decides):

* Outgoing: lobby state is re-sendable, so a lagging client's updates are dropped (above)
  and its backlog stops growing at about ``lag_bytes``. Direct messages and
  ``send_result`` answers cannot be dropped silently: one that finds the backlog above
  ``max_queue_bytes`` closes the client with 4005 ``slow_consumer`` (``SLOW``) and the
  sender is told ``offline``. Replies to the client's own frames are written with
  backpressure by the shell, so they stall only that client's reader.
* Incoming frame size: ``pre_auth_frame_bytes`` (4 KiB; an ``auth`` is ~250 bytes) until
  ``auth_ok``, then ``max_frame_bytes``; the machine raises the limit with a
  :class:`FrameLimit` action issued together with ``auth_ok``. Over the limit the
  WebSocket layer closes with 1009 (the machine then sees the transport end).
* Incoming rate (``AUTHENTICATED``): every frame goes through a
  :class:`~workers.admission.FloodGuard` first. ``PASS`` frames are handled as usual; a
  ``THROTTLE`` frame is answered and dropped (a well-formed ``send`` gets ``send_result``
  ``rejected``/``rate_limited``, anything else ``error``/``rate_limited``); ``FLOOD``
  closes with 1008 ``policy_violation`` (event ``FLOOD``). Before ``auth_ok`` the client
  has exactly one frame to send (the ``auth``), so no rate applies there; admission to
  the challenge phase is the shell's per-worker :class:`~workers.admission.Admission`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

from shared import backbone as bb
from shared import protocol, timings
from shared.options import at_least, group, option, positive, validate
from shared.protocol import (
    CLOSE_REASONS,
    AuthFailure,
    CloseCode,
    ErrorCode,
    RejectReason,
    SendStatus,
    ViolationKind,
)
from workers.admission import FloodGuard, RateLimits, Verdict
from workers.replica import ReplicaView, SyncState

MAX_HELD_FRAMES: Final = 1024
"""Direct messages held for a client between ``AuthAck`` and ``auth_ok`` (also bounded
by ``max_queue_bytes``). Past either bound the client is a slow consumer (4005)."""


class State(enum.Enum):
    CHALLENGED = "challenged"
    VERIFIED = "verified"
    AUTHENTICATING = "authenticating"
    ACKED = "acked"
    AUTHENTICATED = "authenticated"
    CLOSING = "closing"


class Event(enum.Enum):
    AUTH_VALID = "auth_valid"
    AUTH_INVALID = "auth_invalid"  # bad frame before auth_ok
    DEADLINE = "deadline"
    LINK_UP = "link_up"
    ACK = "ack"
    CAUGHT_UP = "caught_up"
    UNANNOUNCED = "unannounced"  # acked by a coordinator that restarted without us
    KICK = "kick"
    SLOW = "slow"  # outgoing queue bound passed by a frame that cannot be dropped
    FLOOD = "flood"  # over the message rate for too long
    TRANSPORT_CLOSED = "transport_closed"


class Link(enum.Enum):
    """Whether the coordinator is reachable (recent message and replica live)."""

    UP = "up"
    DOWN = "down"


class Flow(enum.Enum):
    CURRENT = "current"
    LAGGING = "lagging"
    STALE = "stale"


class Fanout(enum.Enum):
    """What one authenticated client gets for one lobby update."""

    UPDATE = "update"
    SNAPSHOT = "snapshot"
    SKIP = "skip"


S, E = State, Event
_PENDING: Final = (S.VERIFIED, S.AUTHENTICATING, S.ACKED)
_RECORDED: Final = (S.AUTHENTICATING, S.ACKED, S.AUTHENTICATED)  # Authed was emitted

TRANSITIONS: Final[dict[tuple[State, Event], frozenset[State]]] = {
    (S.CHALLENGED, E.AUTH_VALID): frozenset({S.VERIFIED, S.AUTHENTICATING}),
    (S.CHALLENGED, E.AUTH_INVALID): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.KICK): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.VERIFIED, E.LINK_UP): frozenset({S.AUTHENTICATING}),
    (S.VERIFIED, E.AUTH_INVALID): frozenset({S.CLOSING}),
    (S.VERIFIED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.VERIFIED, E.KICK): frozenset({S.CLOSING}),
    (S.VERIFIED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.ACK): frozenset({S.ACKED}),
    (S.AUTHENTICATING, E.AUTH_INVALID): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.DEADLINE): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.KICK): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.ACKED, E.CAUGHT_UP): frozenset({S.AUTHENTICATED}),
    (S.ACKED, E.AUTH_INVALID): frozenset({S.CLOSING}),
    (S.ACKED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.ACKED, E.UNANNOUNCED): frozenset({S.CLOSING}),
    (S.ACKED, E.KICK): frozenset({S.CLOSING}),
    (S.ACKED, E.SLOW): frozenset({S.CLOSING}),
    (S.ACKED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.KICK): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.SLOW): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.FLOOD): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
}
"""Every legal ``(state, event) -> next state``. Pairs not listed leave the state alone
(for example a late ``AuthAck`` after a close, or a frame while ``CLOSING``)."""


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Write:
    frame: str


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    """Write the replica's current ``lobby_snapshot`` (encoded once per state)."""


@dataclass(frozen=True, slots=True)
class Close:
    code: CloseCode

    @property
    def reason(self) -> str:
        return CLOSE_REASONS[self.code]


@dataclass(frozen=True, slots=True)
class Emit:
    message: bb.UpMessage


@dataclass(frozen=True, slots=True)
class StartRoute:
    """A well-formed ``send`` to route; ``to`` is already lowercase."""

    to: str
    msg_id: str
    body: str


@dataclass(frozen=True, slots=True)
class FrameLimit:
    """Set the largest frame the client may send from now on (over it: 1009)."""

    max_bytes: int


Action = Write | WriteSnapshot | Close | Emit | StartRoute | FrameLimit


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one connection may cost and how long each phase may take."""

    auth_timeout: float = option(
        10.0,
        "seconds from the challenge to a valid auth (then 4003; the protocol's default)",
        check=positive,
    )
    auth_wait: float = option(
        timings.AUTH_WAIT,
        "seconds from a verified signature to auth_ok: coordinator reachable, ack, replica "
        "caught up (then 1013); long enough for a coordinator restart",
        check=positive,
    )
    lag_bytes: int = option(
        256 * 1024,
        "client backlog in bytes above which lobby updates are skipped until it drains "
        "below a quarter of it and gets a fresh snapshot",
        check=at_least(1),
    )
    max_queue_bytes: int = option(
        4 * 1024 * 1024,
        "client backlog in bytes above which a direct message closes it with 4005: direct "
        "messages are never dropped silently",
        check=at_least(1),
    )
    pre_auth_frame_bytes: int = option(
        4096,
        "largest client frame before auth (then 1009): an auth is about 250 bytes, so an "
        "unauthenticated peer cannot make the worker buffer and parse large frames",
        check=at_least(256),
    )
    max_frame_bytes: int = option(
        protocol.DEFAULT_MAX_FRAME_BYTES,
        "largest client frame after auth in bytes (then 1009); the default holds a maximal "
        "send whose body needs no JSON escaping",
        check=at_least(1024),
    )
    rate: RateLimits = group(RateLimits, "Message rate")

    def __post_init__(self) -> None:
        validate(self)


# --------------------------------------------------------------------------- verification


def verify_auth(nonce: bytes, public_key: str, signature: str) -> AuthFailure | None:
    """Check an ``auth`` answer; ``None`` when it proves ``public_key``."""
    if not protocol.is_hex_key(public_key):
        return AuthFailure.INVALID_PUBLIC_KEY
    key_bytes = bytes.fromhex(public_key)
    # libsodium would reject a small-order or off-curve key only as a bad signature;
    # checking the point first gives the client the precise reason.
    if not crypto_core_ed25519_is_valid_point(key_bytes):
        return AuthFailure.INVALID_PUBLIC_KEY
    if not protocol.is_hex_key(signature, 128):
        return AuthFailure.INVALID_SIGNATURE
    try:
        VerifyKey(key_bytes).verify(protocol.AUTH_CONTEXT + nonce, bytes.fromhex(signature))
    except BadSignatureError:
        return AuthFailure.INVALID_SIGNATURE
    except (CryptoError, ValueError, TypeError):
        return AuthFailure.INVALID_PUBLIC_KEY
    return None


def _utf8_ok(text: str) -> bool:
    """JSON may carry lone surrogates, which no UTF-8 frame or msgpack string can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- machine


@dataclass(slots=True)
class _Ack:
    epoch: str
    seq: int
    rebased: bool = False  # coordinator restarted: wait for our key instead of a seq


@dataclass(slots=True)
class Connection:
    """The state of connection ``conn_id`` (unique within this worker process)."""

    conn_id: int
    nonce: bytes
    limits: Limits
    deadline: float | None
    state: State = State.CHALLENGED
    flow: Flow = Flow.CURRENT
    key: str | None = None
    trace: list[tuple[State, Event, State]] = field(default_factory=list)
    guard: FloodGuard = field(default_factory=lambda: FloodGuard.of(RateLimits()))
    _ack: _Ack | None = None
    _held: list[str] = field(default_factory=list)
    _held_bytes: int = 0

    @classmethod
    def open(cls, conn_id: int, nonce: bytes, now: float, limits: Limits) -> Connection:
        return cls(
            conn_id=conn_id,
            nonce=nonce,
            limits=limits,
            deadline=now + limits.auth_timeout,
            guard=FloodGuard.of(limits.rate),
        )

    def challenge(self) -> str:
        return protocol.challenge(self.nonce.hex())

    def greeting(self) -> list[Action]:
        """What to do right after the handshake: the pre-auth frame limit, the challenge."""
        return [FrameLimit(self.limits.pre_auth_frame_bytes), Write(self.challenge())]

    def session(self) -> tuple[int, str, str, int] | None:
        """``(conn, key, epoch, seq)`` for ``Hello`` when the coordinator recorded this
        session: the ack's stamp lets a coordinator tell which of two sessions of one
        key is newer, even one acked by an earlier coordinator."""
        if self.state in (S.ACKED, S.AUTHENTICATED) and self.key and self._ack:
            return (self.conn_id, self.key, self._ack.epoch, self._ack.seq)
        return None

    # ------------------------------------------------------------------ client frames

    def on_frame(self, frame: str | bytes, now: float, link: Link) -> list[Action]:
        parsed = protocol.parse_client_frame(frame)
        if self.state is S.CHALLENGED:
            return self._frame_challenged(parsed, now, link)
        if self.state in _PENDING:
            # Before auth_ok only one auth is expected; anything else fails the auth.
            return self._fail_auth(_pre_auth_failure(parsed))
        if self.state is S.AUTHENTICATED:
            verdict = self.guard.check(now)
            if verdict is Verdict.FLOOD:
                return self._close(E.FLOOD, CloseCode.POLICY_VIOLATION)
            if verdict is Verdict.THROTTLE:
                return [_throttled(parsed)]
            return self._frame_authenticated(parsed, link)
        return []

    def _frame_challenged(
        self, parsed: protocol.ClientMessage | protocol.ProtocolViolation, now: float, link: Link
    ) -> list[Action]:
        if not isinstance(parsed, protocol.Auth):
            return self._fail_auth(_pre_auth_failure(parsed))
        failure = verify_auth(self.nonce, parsed.public_key, parsed.signature)
        if failure is not None:
            return self._fail_auth(failure)
        self.key = protocol.normalise_key(parsed.public_key)
        self.deadline = now + self.limits.auth_wait
        if link is Link.DOWN:
            self._goto(E.AUTH_VALID, S.VERIFIED)
            return []
        self._goto(E.AUTH_VALID, S.AUTHENTICATING)
        return [Emit(bb.Authed(self.conn_id, self.key))]

    def _fail_auth(self, reason: AuthFailure) -> list[Action]:
        actions = self._close(E.AUTH_INVALID, CloseCode.AUTH_FAILED)
        return [Write(protocol.auth_failed(reason)), *actions]

    def _frame_authenticated(
        self, parsed: protocol.ClientMessage | protocol.ProtocolViolation, link: Link
    ) -> list[Action]:
        if isinstance(parsed, protocol.ProtocolViolation):
            return [Write(protocol.error(_ERROR_CODES[parsed.kind], parsed.detail))]
        if isinstance(parsed, protocol.Auth):
            # Not unknown_type (auth is a known type) and not fatal: the session stands.
            return [Write(protocol.error(ErrorCode.MALFORMED, "already authenticated"))]
        if isinstance(parsed, protocol.GetLobby):
            self.flow = Flow.CURRENT  # the snapshot is the current state: updates follow on
            return [WriteSnapshot()]
        return self._send(parsed, link)

    def _send(self, msg: protocol.Send, link: Link) -> list[Action]:
        if not (_utf8_ok(msg.id) and _utf8_ok(msg.body)):
            return [Write(protocol.error(ErrorCode.MALFORMED, "id and body must be valid UTF-8"))]
        if len(msg.body.encode("utf-8")) > protocol.MAX_BODY_BYTES:
            return [_result(msg.id, RejectReason.TOO_LARGE)]
        if not protocol.is_hex_key(msg.to):
            return [_result(msg.id, RejectReason.INVALID_RECIPIENT)]
        if link is Link.DOWN:
            return [_result(msg.id, RejectReason.UNAVAILABLE)]
        return [StartRoute(protocol.normalise_key(msg.to), msg.id, msg.body)]

    # ------------------------------------------------------------------ time and link

    def on_deadline(self, now: float) -> list[Action]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.state is S.CHALLENGED:
            return self._close(E.DEADLINE, CloseCode.AUTH_TIMEOUT)
        if self.state in _PENDING:
            return self._close(E.DEADLINE, CloseCode.TRY_AGAIN_LATER)
        return []

    def on_link_up(self) -> list[Action]:
        if self.state is not S.VERIFIED or self.key is None:
            return []
        self._goto(E.LINK_UP, S.AUTHENTICATING)
        return [Emit(bb.Authed(self.conn_id, self.key))]

    # ------------------------------------------------------------------ coordinator

    def on_ack(self, epoch: str, seq: int, replica: ReplicaView) -> list[Action]:
        if self.state is not S.AUTHENTICATING:
            return []  # duplicate, or we already gave up on it
        self._ack = _Ack(epoch, seq)
        self._goto(E.ACK, S.ACKED)
        return self.on_replica(replica)

    def on_replica(self, replica: ReplicaView) -> list[Action]:
        """The replica changed: release ``auth_ok`` if it now shows this session."""
        if self.state is not S.ACKED or not self._caught_up(replica):
            return []
        assert self.key is not None
        self._goto(E.CAUGHT_UP, S.AUTHENTICATED)
        self.deadline = None
        held, self._held, self._held_bytes = self._held, [], 0
        return [
            FrameLimit(self.limits.max_frame_bytes),
            Write(protocol.auth_ok(self.key)),
            WriteSnapshot(),
            *map(Write, held),
        ]

    def _caught_up(self, replica: ReplicaView) -> bool:
        ack = self._ack
        if ack is None or replica.sync is not SyncState.LIVE:
            return False
        if ack.rebased:
            return self.key in replica.users
        return replica.epoch == ack.epoch and replica.seq >= ack.seq

    def on_resync(self, replica: ReplicaView, announced: frozenset[int]) -> list[Action]:
        """The replica is live again from a snapshot (continuity broken). ``announced``
        holds the connections listed in the last ``Hello``."""
        if self.state is S.AUTHENTICATED:
            self.flow = Flow.STALE
            return []
        if self.state is S.ACKED and self._ack is not None and replica.epoch != self._ack.epoch:
            if self.conn_id not in announced:
                return self._close(E.UNANNOUNCED, CloseCode.TRY_AGAIN_LATER)
            self._ack.rebased = True  # restored by our Hello: shows up as our key
        return self.on_replica(replica)

    def on_kick(self) -> list[Action]:
        if self.state is S.CLOSING:
            return []
        return self._close(E.KICK, CloseCode.SESSION_REPLACED)

    def on_deliver(
        self, sender: str, msg_id: str, body: str, buffered: int
    ) -> tuple[list[Action], SendStatus]:
        """A direct message for this client; ``buffered`` is its transport backlog."""
        frame = protocol.message(sender, msg_id, body)
        if self.state is S.AUTHENTICATED:
            if buffered > self.limits.max_queue_bytes:
                return self._close(E.SLOW, CloseCode.SLOW_CONSUMER), SendStatus.OFFLINE
            return [Write(frame)], SendStatus.DELIVERED
        if self.state is S.ACKED:
            size = len(frame)
            over_bytes = self._held_bytes + size > self.limits.max_queue_bytes
            if over_bytes or len(self._held) >= MAX_HELD_FRAMES:
                return self._close(E.SLOW, CloseCode.SLOW_CONSUMER), SendStatus.OFFLINE
            self._held.append(frame)
            self._held_bytes += size
            return [], SendStatus.DELIVERED
        return [], SendStatus.OFFLINE

    def on_result(
        self, msg_id: str, status: SendStatus, reason: RejectReason | None, buffered: int
    ) -> list[Action]:
        """The outcome of one of this client's sends; ``buffered`` is its backlog. The
        answer cannot be dropped, so past ``max_queue_bytes`` the client is closed."""
        if self.state is not S.AUTHENTICATED:
            return []
        if buffered > self.limits.max_queue_bytes:
            return self._close(E.SLOW, CloseCode.SLOW_CONSUMER)
        return [Write(protocol.send_result(msg_id, status, reason))]

    # ------------------------------------------------------------------ lobby flow

    def on_update(self, buffered: int, replica: ReplicaView) -> Fanout:
        """Lobby update ``replica.seq`` was just applied: what does this client get?
        A ``CURRENT`` client at or below ``lag_bytes`` always gets ``UPDATE``; the shell
        relies on that to ask only clients whose transport passed its write limit."""
        if self.state is not S.AUTHENTICATED:
            return Fanout.SKIP
        if self.flow is Flow.CURRENT:
            if buffered > self.limits.lag_bytes:
                self.flow = Flow.LAGGING
                return Fanout.SKIP
            return Fanout.UPDATE
        return Fanout.SNAPSHOT if self._resume(buffered, replica) else Fanout.SKIP

    def on_sweep(self, buffered: int, replica: ReplicaView) -> list[Action]:
        """Periodic check: a lagging or stale client that can take a snapshot gets one."""
        lagging = self.state is S.AUTHENTICATED and self.flow is not Flow.CURRENT
        return [WriteSnapshot()] if lagging and self._resume(buffered, replica) else []

    def _resume(self, buffered: int, replica: ReplicaView) -> bool:
        if replica.sync is not SyncState.LIVE or buffered > self.limits.lag_bytes // 4:
            return False
        if self.flow is Flow.STALE and self.key not in replica.users:
            return False  # wait for the rebuilt lobby to include us (or for a Kick)
        self.flow = Flow.CURRENT
        return True

    # ------------------------------------------------------------------ ending

    def on_transport_closed(self) -> list[Action]:
        return [] if self.state is S.CLOSING else self._end(E.TRANSPORT_CLOSED)

    def _close(self, event: Event, code: CloseCode) -> list[Action]:
        return [Close(code), *self._end(event)]

    def _end(self, event: Event) -> list[Action]:
        """Go to ``CLOSING``; emit ``Closed`` if the coordinator may hold the session."""
        recorded = self.state in _RECORDED
        self._goto(event, S.CLOSING)
        self.deadline = None
        self._held, self._held_bytes = [], 0
        if recorded and self.key is not None:
            return [Emit(bb.Closed(self.conn_id, self.key))]
        return []

    def _goto(self, event: Event, new: State) -> None:
        allowed = TRANSITIONS.get((self.state, event), frozenset())
        if new not in allowed:
            raise AssertionError(f"illegal transition {self.state} --{event}--> {new}")
        self.trace.append((self.state, event, new))
        self.state = new


def _pre_auth_failure(parsed: protocol.ClientMessage | protocol.ProtocolViolation) -> AuthFailure:
    """The ``auth_failed`` reason for a frame that is not an acceptable ``auth``. An
    unknown type is not "a valid message of another type", so it is malformed; a second
    ``auth`` while the first is being recorded is unexpected."""
    if isinstance(parsed, protocol.ProtocolViolation):
        return AuthFailure.MALFORMED
    return AuthFailure.UNEXPECTED_MESSAGE


def _throttled(parsed: protocol.ClientMessage | protocol.ProtocolViolation) -> Write:
    """The answer to a frame over the rate: a ``send`` still gets its one result."""
    if isinstance(parsed, protocol.Send) and _utf8_ok(parsed.id):
        return _result(parsed.id, RejectReason.RATE_LIMITED)
    return Write(protocol.error(ErrorCode.RATE_LIMITED, "too many messages; slow down"))


def _result(msg_id: str, reason: RejectReason) -> Write:
    return Write(protocol.send_result(msg_id, SendStatus.REJECTED, reason))


_ERROR_CODES: Final = {
    ViolationKind.MALFORMED: ErrorCode.MALFORMED,
    ViolationKind.UNKNOWN_TYPE: ErrorCode.UNKNOWN_TYPE,
}
