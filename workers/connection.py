"""One client connection's protocol state machine (sans-I/O).

Theory of operation
-------------------
A :class:`Connection` owns everything the wire contract says about one client and
nothing else: no sockets, no clock, no tasks. The worker's core (:mod:`workers.core`)
feeds it events (a frame, an ``AuthAck``, a ``Kick``, the replica catching up, a
deadline, the coordinator coming back, a sample of the transport's progress, the
transport ending) and carries out the :data:`~workers.outputs.Output` list it returns,
in order: frames to write, a close code, backbone messages to emit, a route to start.

Authentication crosses two parties, so it has more states than "in" and "out"
(:mod:`workers.states` describes each, and holds the transition table).

From ``VERIFIED`` to ``ACKED`` one deadline applies: ``auth_wait`` (5 s) from the
verified signature, then 1013 (the server's fault, so "try again later", not 4003).
Once ``Authed`` was emitted, leaving for ``CLOSING`` for any reason emits ``Closed``
exactly once, so the coordinator never keeps a key online without a connection. Every
session that emitted ``Authed`` is listed when the worker re-registers
(:meth:`Connection.claim`), acknowledged or not, so a coordinator never acknowledges a
session and then forgets it. A later ``AuthAck`` (a coordinator that moved to a new
epoch re-acknowledges its sessions) replaces the stamp the session is listed with.

Pipelining (protocol 1.1): frames that follow a valid ``auth`` before ``auth_ok`` are
held, at most ``max_pipelined`` of them and ``max_pipelined_bytes`` in all (past either:
1008), and handled in order right after ``auth_ok`` and the snapshot, exactly as if they
had arrived then. If the auth fails they are dropped with the connection.

Lobby flow (``AUTHENTICATED`` only): ``CURRENT`` clients get every update. One whose
transport buffer passes ``lag_bytes`` (or twice the size of a snapshot, in a big lobby)
becomes ``LAGGING`` and is skipped; once its buffer drains below a quarter of that it
gets one fresh snapshot and is ``CURRENT`` again, so it never sees a gap. ``STALE``
(after a resync) waits for a replica state that contains the client's own key, then gets
the fresh snapshot.

Bounds on what one client can cost, and who pays at the bound:

* Lobby state is re-sendable, so a lagging client's updates are dropped (above) and its
  backlog stops growing at about ``lag_bytes``.
* Lobby state has priority over direct messages. A view stays fresh while the backlog
  in front of it is at most the lag limit, so messages may fill only the *message room*:
  half the lag limit (and at most ``max_queue_bytes``), leaving the other half to lobby
  updates. A message that would take the backlog past the room, or arrives while the
  client's view is ``LAGGING`` or ``STALE`` (its catch-up snapshot comes first), is not
  written, and its sender is told ``rejected``/``rate_limited`` (protocol 1.1,
  :data:`Delivery.FULL`). So the backlog in front of any lobby frame is at most the lag
  limit (plus the kernel's send buffer, which the shell keeps small): at the client's
  own reading rate, a view is never more than that far behind.
* One sender gets a fair share of a recipient's room: the bytes of the backlog are
  attributed to their senders (drained in proportion as the backlog shrinks), and a
  sender already holding bytes may hold at most ``room / (other senders holding bytes
  + 2)``, so one sender never holds more than half of it (or one message) and a
  newcomer always finds room.
* The worker-wide memory budget (:mod:`workers.budget`) may allow a recipient less
  than its own rules would (``allowance``): then a message is refused the same way,
  and a lobby update or snapshot that does not fit is skipped (the view collapses to a
  later snapshot). The recipient is never closed for what others send it.
* Answers to the client's own frames are written with backpressure by the shell (it
  reads the next frame only once the backlog is below the write limit), so a client that
  does not read stalls only itself.
* A client with a backlog that makes no reading progress (the peer acknowledges no
  bytes) for ``stall_timeout`` (30 s) is closed with 4005 ``slow_consumer``: a phone in
  a tunnel for a few seconds stays connected.
* Incoming frame size: ``pre_auth_frame_bytes`` (4 KiB; an ``auth`` is ~250 bytes) for
  the first frame, then ``max_frame_bytes`` (:class:`FrameLimits`). Over the limit the
  WebSocket layer closes with 1009 (the machine then sees the transport end).
* Incoming rate (``AUTHENTICATED``): every frame goes through a
  :class:`~workers.ratelimit.FloodGuard` first. ``PASS`` frames are handled as usual; a
  ``THROTTLE`` frame is answered and dropped (a well-formed ``send`` gets ``send_result``
  ``rejected``/``rate_limited``, anything else ``error``/``rate_limited``); ``FLOOD``
  closes with 1008 ``policy_violation``. Admission to the challenge phase is the
  core's per-worker :class:`~workers.admission.Admission`.
* Control frames and fragments (:meth:`Connection.on_lesser`, in every state, with or
  without an account): a ping, a pong, and a data frame that does not end its message
  each take a token from the same guard as a message, as the WebSocket layer parses
  them, before anything is done for them. ``FLOOD`` closes with 1008 and the layer reads
  nothing more from the connection, so a flood costs the worker a few hundred frames,
  not the rest of the read. A ping's pong is the answer the client made the server
  write, so it is bounded like any other: written at once while the transport is below
  its write limit, else held (only the latest ping is answered, which RFC 6455 allows)
  and written once it drains. A backlog of pongs is then at most the write limit plus
  the pongs of one read (the transport is paused only after a read's answers are
  written; the guard allows at most ``msg_burst + flood_rejects`` of them), and the
  stall rule applies to it as to any backlog. (Before, websockets answered every
  ping at once, outside every bound: one connection pinging fast and reading a trickle
  grew a worker by hundreds of MiB and held its loop for seconds.)
* A worker cut off from its coordinator for longer than its grace period closes every
  client with 1013 (:meth:`Connection.on_cutoff`), so they reconnect where the lobby is
  visible instead of showing a frozen view while everyone else sees them gone.

What the machine returns, and what each item carries for the shell's metrics, is in
:mod:`workers.outputs`; its bounds are :class:`~workers.limits.Limits`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from shared import backbone as bb
from shared import protocol, records
from shared.protocol import (
    AuthFailure,
    CloseCode,
    ErrorCode,
    RejectReason,
    SendStatus,
    ViolationKind,
)
from shared.records import Record
from shared.v2 import AuthFailureV2, auth_failed_v2, challenge_v2
from workers.limits import Limits as Limits  # (where the settings have always found it)
from workers.outputs import (
    Answer,
    AuthOutcome,
    Close,
    Emit,
    FrameLimits,
    Lesser,
    Output,
    SendOutcome,
    SnapshotCause,
    StartRoute,
    Write,
    WriteSnapshot,
)
from workers.ratelimit import FloodGuard, RateLimits, Verdict
from workers.replica import ReplicaView, SyncState
from workers.speaking_v2 import Parsed, Speaker, V2Config
from workers.states import TRANSITIONS, Delivery, Event, Fanout, Flow, Link, State

MAX_HELD_FRAMES: Final = 1024
"""Direct messages held for a client between ``AuthAck`` and ``auth_ok`` (also bounded
by ``max_queue_bytes``). Past either bound a new one is refused to its sender
(:data:`Delivery.FULL`)."""


Verifier = Callable[[bytes, str, str], AuthFailure | None]
"""The auth check, :func:`shared.protocol.verify_auth` (the shell may wrap it, to time it)."""

S, E = State, Event
_PENDING: Final = (S.VERIFIED, S.AUTHENTICATING, S.ACKED)
_RECORDED: Final = (S.AUTHENTICATING, S.ACKED, S.AUTHENTICATED)  # Authed was emitted


# --------------------------------------------------------------------------- checks
# The auth check is the contract's: shared.protocol.verify_auth.


def _utf8_ok(text: str) -> bool:
    """JSON may carry lone surrogates, which no UTF-8 frame or msgpack string can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- machine


Stamp = tuple[str, int]
"""``(epoch, seq)``: see :meth:`Connection.claim`."""


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
    record: Record = records.DEFAULT  # the session's presence record (protocol 1: the default)
    trace: list[tuple[State, Event, State]] = field(default_factory=list)
    guard: FloodGuard = field(default_factory=lambda: FloodGuard.of(RateLimits()))
    _ack: _Ack | None = None
    _sent_at: Stamp = ("", 0)  # the replica's (epoch, seq) when Authed was sent
    _held: list[str] = field(default_factory=list)  # direct messages before auth_ok
    _held_bytes: int = 0
    _pipelined: list[str | bytes] = field(default_factory=list)  # frames before auth_ok
    _pipelined_bytes: int = 0
    _progress: tuple[int, float] | None = None  # (acked or -buffered, since when)
    _senders: dict[str, int] = field(default_factory=dict)  # backlog bytes by sender
    _attributed: int = 0  # their sum
    verify: Verifier = protocol.verify_auth
    v2: Speaker | None = None  # protocol version 2 (workers.speaking_v2), else 1

    @classmethod
    def open(
        cls,
        conn_id: int,
        nonce: bytes,
        now: float,
        limits: Limits,
        verify: Verifier = protocol.verify_auth,
        v2: V2Config | None = None,
    ) -> Connection:
        return cls(
            conn_id=conn_id,
            nonce=nonce,
            limits=limits,
            deadline=now + limits.auth_timeout,
            guard=FloodGuard.of(limits.rate),
            verify=verify,
            v2=None if v2 is None else Speaker(v2, conn_id),
        )

    def challenge(self) -> str:
        return (protocol.challenge if self.v2 is None else challenge_v2)(self.nonce.hex())

    def greeting(self) -> list[Output]:
        """What to do right after the handshake: the frame limits, the challenge."""
        limits = self.limits
        return [
            FrameLimits(limits.pre_auth_frame_bytes, limits.max_frame_bytes),
            Write(self.challenge()),
        ]

    def claim(self) -> tuple[int, str, str, int, bool] | None:
        """``(conn, key, epoch, seq, acked)`` for ``Hello``: every session that sent
        ``Authed``. Acknowledged ones carry their ack's stamp, which lets a coordinator
        tell which of two sessions of one key is newer, even one acked by an earlier
        coordinator; the others carry the replica's stamp when ``Authed`` was sent."""
        if self.state not in _RECORDED or self.key is None:
            return None
        if self._ack is not None:
            return (self.conn_id, self.key, self._ack.epoch, self._ack.seq, True)
        return (self.conn_id, self.key, *self._sent_at, False)

    # ------------------------------------------------------------------ client frames

    def on_frame(
        self,
        frame: str | bytes,
        now: float,
        link: Link,
        replica: ReplicaView,
        buffered: int,
        allowance: int | None = None,
    ) -> list[Output]:
        """A frame from the client; ``buffered`` is its transport backlog, ``allowance``
        what the memory budget still allows it (``None``: no limit)."""
        v2 = self.v2
        if self.state is S.AUTHENTICATED:
            verdict = self.guard.check(now)
            parsed = protocol.parse_client_frame(frame) if v2 is None else v2.parse(frame)
            if verdict is Verdict.FLOOD:
                return self._close(E.FLOOD, CloseCode.POLICY_VIOLATION)
            if verdict is Verdict.THROTTLE:
                return [(v2 and v2.throttled(parsed)) or _throttled(parsed)]
            if v2 is not None:
                parsed = v2.choose(parsed)  # a follow, watch or unwatch: made here
            if isinstance(parsed, protocol.ClientMessage | protocol.ProtocolViolation):
                return self._frame_authenticated(parsed, link, buffered, replica, allowance)
            assert v2 is not None  # only version 2 parses to anything else
            return self._answer_v2(v2, parsed, now)
        if self.state is S.CHALLENGED and v2 is not None:
            auth = v2.check_auth(frame, self.nonce)
            if isinstance(auth, AuthFailureV2):
                return self._fail_auth(auth)
            self.record = (auth.record.status, auth.record.data_json)
            return self._verified(auth.public_key, now, link, replica)
        if self.state is S.CHALLENGED:
            return self._frame_challenged(protocol.parse_client_frame(frame), now, link, replica)
        if self.state in _PENDING:
            return self._hold(frame)
        return []

    def on_lesser(self, kind: Lesser, now: float, pressured: bool) -> tuple[list[Output], Answer]:
        """A ping, a pong or a fragment, as it is parsed (in any state, closing too);
        ``pressured``: the transport is past its write limit. It takes a token of the
        message rate; a flood closes with 1008 and stops the reading
        (:data:`Answer.STOP`); a ping is answered at once, or once the backlog drains
        (:data:`Answer.LATER`)."""
        if self.guard.check(now) is Verdict.FLOOD:
            if self.state is S.CLOSING:
                return [], Answer.STOP
            return self._close(E.FLOOD, CloseCode.POLICY_VIOLATION), Answer.STOP
        if kind is not Lesser.PING:
            return [], Answer.NONE
        return [], Answer.LATER if pressured else Answer.PONG

    def _frame_challenged(
        self,
        parsed: protocol.ClientMessage | protocol.ProtocolViolation,
        now: float,
        link: Link,
        replica: ReplicaView,
    ) -> list[Output]:
        if not isinstance(parsed, protocol.Auth):
            return self._fail_auth(_pre_auth_failure(parsed))
        failure = self.verify(self.nonce, parsed.public_key, parsed.signature)
        if failure is not None:
            return self._fail_auth(failure)
        return self._verified(parsed.public_key, now, link, replica)

    def _verified(self, key: str, now: float, link: Link, replica: ReplicaView) -> list[Output]:
        self.key = protocol.normalise_key(key)
        self.deadline = now + self.limits.auth_wait
        if link is Link.DOWN:
            self._goto(E.AUTH_VALID, S.VERIFIED)
            return []
        self._goto(E.AUTH_VALID, S.AUTHENTICATING)
        return self._authed(replica)

    def _authed(self, replica: ReplicaView) -> list[Output]:
        assert self.key is not None
        self._sent_at = (replica.epoch or "", replica.seq)
        return [Emit(bb.Authed(self.conn_id, self.key, *self.record))]

    def _hold(self, frame: str | bytes) -> list[Output]:
        """A frame pipelined behind the ``auth``: keep it for after ``auth_ok``."""
        size = len(frame)
        too_many = len(self._pipelined) >= self.limits.max_pipelined
        if too_many or self._pipelined_bytes + size > self.limits.max_pipelined_bytes:
            return self._close(E.PIPELINE_FULL, CloseCode.POLICY_VIOLATION)
        self._pipelined.append(frame)
        self._pipelined_bytes += size
        return []

    def _fail_auth(self, reason: AuthFailure | AuthFailureV2) -> list[Output]:
        outputs = self._close(E.AUTH_INVALID, CloseCode.AUTH_FAILED)
        if isinstance(reason, AuthFailureV2):
            return [Write(auth_failed_v2(reason), AuthOutcome(reason.value)), *outputs]
        return [Write(protocol.auth_failed(reason), AuthOutcome(reason.value)), *outputs]

    def _answer_v2(self, v2: Speaker, parsed: Parsed, now: float) -> list[Output]:
        answer = v2.answer(parsed, self.record, now)
        if isinstance(answer, Write):
            return [answer]
        assert self.key is not None
        self.record = answer  # it comes back to everyone as an updated entry
        return [Emit(bb.SetRecord(self.conn_id, self.key, *answer))]

    def _frame_authenticated(
        self,
        parsed: protocol.ClientMessage | protocol.ProtocolViolation,
        link: Link,
        buffered: int,
        replica: ReplicaView,
        allowance: int | None = None,
    ) -> list[Output]:
        if isinstance(parsed, protocol.ProtocolViolation):
            return [Write(protocol.error(_ERROR_CODES[parsed.kind], parsed.detail))]
        if isinstance(parsed, protocol.Auth):
            # Not unknown_type (auth is a known type) and not fatal: the session stands.
            return [Write(protocol.error(ErrorCode.MALFORMED, "already authenticated"))]
        if isinstance(parsed, protocol.GetLobby):
            over_budget = allowance is not None and replica.snapshot_bytes > allowance
            if buffered > self._lag_limit(replica) or over_budget:
                self.flow = Flow.LAGGING  # a fresh snapshot comes once it drains (and fits)
                return []
            self.flow = Flow.CURRENT  # the snapshot is the current state: updates follow on
            return [WriteSnapshot(SnapshotCause.GET_LOBBY)]
        return self._send(parsed, link)

    def _send(self, msg: protocol.Send, link: Link) -> list[Output]:
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

    def on_deadline(self, now: float) -> list[Output]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.state is S.CHALLENGED:
            return self._close(E.DEADLINE, CloseCode.AUTH_TIMEOUT, AuthOutcome.TIMEOUT)
        if self.state in _PENDING:
            return self._close(E.DEADLINE, CloseCode.TRY_AGAIN_LATER, AuthOutcome.UNAVAILABLE)
        return []

    def on_link_up(self, replica: ReplicaView) -> list[Output]:
        if self.state is not S.VERIFIED or self.key is None:
            return []
        self._goto(E.LINK_UP, S.AUTHENTICATING)
        return self._authed(replica)

    def on_cutoff(self) -> list[Output]:
        """The worker has been cut off from its coordinator for longer than its grace
        period: go and reconnect where the lobby is visible (1013)."""
        if self.state is S.CLOSING:
            return []
        outcome = AuthOutcome.UNAVAILABLE if self.state in _PENDING else None
        return self._close(E.CUTOFF, CloseCode.TRY_AGAIN_LATER, outcome)

    def on_evicted(self) -> list[Output]:
        """The door gave this connection's challenge-phase slot to a client from a
        source holding fewer (see :class:`~workers.admission.Admission`): 1013."""
        if self.state is not S.CHALLENGED:
            return []
        return self._close(E.EVICTED, CloseCode.TRY_AGAIN_LATER)

    # ------------------------------------------------------------------ coordinator

    def on_ack(
        self, epoch: str, seq: int, replica: ReplicaView, now: float, link: Link
    ) -> list[Output]:
        """The coordinator recorded this session as of ``(epoch, seq)``. A second ack
        (re-sent after a lost one, or with a new epoch) replaces the first."""
        if self.state is S.AUTHENTICATING:
            self._ack = _Ack(epoch, seq)
            self._goto(E.ACK, S.ACKED)
            return self.on_replica(replica, now, link)
        if self.state in (S.ACKED, S.AUTHENTICATED):
            self._ack = _Ack(epoch, seq)
            return self.on_replica(replica, now, link)
        return []  # we already gave up on it

    def on_replica(self, replica: ReplicaView, now: float, link: Link) -> list[Output]:
        """The replica changed: release ``auth_ok`` if it now shows this session, then
        the held direct messages, then the pipelined frames' answers."""
        if self.state is not S.ACKED or not self._caught_up(replica):
            return []
        assert self.key is not None
        self._goto(E.CAUGHT_UP, S.AUTHENTICATED)
        self.deadline = None
        held, self._held, self._held_bytes = self._held, [], 0
        if self.v2 is None:
            ok = protocol.auth_ok(self.key)
            outputs: list[Output] = [Write(ok, AuthOutcome.OK), WriteSnapshot(SnapshotCause.JOIN)]
        else:  # a snapshot, or a resume's update (workers.speaking_v2)
            outputs = [*self.v2.welcome(self.key, replica, now)]
        outputs += map(Write, held)
        pipelined, self._pipelined, self._pipelined_bytes = self._pipelined, [], 0
        for frame in pipelined:
            outputs += self.on_frame(frame, now, link, replica, 0)  # ignored once closing
        return outputs

    def _caught_up(self, replica: ReplicaView) -> bool:
        ack = self._ack
        if ack is None or replica.sync is not SyncState.LIVE:
            return False
        if ack.rebased:
            return self.key in replica.users
        return replica.epoch == ack.epoch and replica.seq >= ack.seq

    def on_resync(
        self, replica: ReplicaView, announced: frozenset[int], now: float, link: Link
    ) -> list[Output]:
        """The replica is live again from a snapshot (continuity broken). ``announced``
        holds the connections listed in the last ``Hello``."""
        if self.state is S.AUTHENTICATED:
            self.flow = Flow.STALE
            return []
        if self.state is S.ACKED and self._ack is not None and replica.epoch != self._ack.epoch:
            if self.conn_id not in announced:
                return self._close(
                    E.UNANNOUNCED, CloseCode.TRY_AGAIN_LATER, AuthOutcome.UNAVAILABLE
                )
            self._ack.rebased = True  # restored by our Hello: shows up as our key
        return self.on_replica(replica, now, link)

    def on_kick(self, code: CloseCode = CloseCode.SESSION_REPLACED) -> list[Output]:
        if self.state is S.CLOSING:
            return []
        return self._close(E.KICK, code)

    def on_deliver(
        self,
        sender: str,
        msg_id: str,
        body: str,
        buffered: int,
        replica: ReplicaView,
        allowance: int | None = None,
    ) -> tuple[list[Output], Delivery]:
        """A direct message for this client; ``buffered`` is its transport backlog,
        ``allowance`` what the worker's memory budget still allows it (``None``: no
        limit). A message is refused (``FULL``: the sender pays, never the recipient)
        when it would take the backlog (or the messages held for ``auth_ok``) past the
        :meth:`message_room`, when the view is behind (its snapshot comes first), when
        its sender would hold more than its fair share of the room, or when it is more
        than the allowance. Sizes are counted in characters, which is bytes for the
        ASCII (base64 or hex) bodies that end-to-end encrypting clients send."""
        frame = protocol.message(sender, msg_id, body)
        size = len(frame)
        if self.state not in (S.AUTHENTICATED, S.ACKED):
            return [], Delivery.OFFLINE
        room = self.message_room(replica)
        if allowance is not None and size > allowance:
            return [], Delivery.FULL
        if self.state is S.AUTHENTICATED:
            if self.flow is not Flow.CURRENT or buffered + size > room:
                return [], Delivery.FULL
            self._drain_senders(buffered)
            held = self._senders.get(sender, 0)
            others = len(self._senders) - (sender in self._senders)
            if held and held + size > room // (others + 2):
                return [], Delivery.FULL
            self._senders[sender] = held + size
            self._attributed += size
            return [Write(frame)], Delivery.DELIVERED
        if self._held_bytes + size > room or len(self._held) >= MAX_HELD_FRAMES:
            return [], Delivery.FULL
        self._held.append(frame)
        self._held_bytes += size
        return [], Delivery.DELIVERED

    def message_room(self, replica: ReplicaView) -> int:
        """The backlog direct messages may fill: half the lag limit (the other half is
        the lobby's), and at most ``max_queue_bytes``."""
        return min(self.limits.max_queue_bytes, self._lag_limit(replica) // 2)

    def _drain_senders(self, buffered: int) -> None:
        """The backlog shrank to ``buffered``: what each sender holds shrinks in
        proportion (the lobby's bytes drain too, so this only ever over-counts)."""
        if buffered >= self._attributed:
            return
        if buffered <= 0:
            self._senders.clear()
            self._attributed = 0
            return
        kept: dict[str, int] = {}
        for sender, held in self._senders.items():
            if (share := held * buffered // self._attributed) > 0:
                kept[sender] = share
        self._senders = kept
        self._attributed = sum(kept.values())

    def senders(self) -> dict[str, int]:
        """The backlog's bytes attributed to each sender (for tests and figures)."""
        return dict(self._senders)

    def on_result(
        self, msg_id: str, status: SendStatus, reason: RejectReason | None
    ) -> list[Output]:
        """The outcome of one of this client's sends (always written: the shell stops
        reading a client whose backlog is past its write limit, so these stay few)."""
        if self.state is not S.AUTHENTICATED:
            return []
        return [Write(protocol.send_result(msg_id, status, reason), SendOutcome(status, reason))]

    # ------------------------------------------------------------------ lobby flow

    def on_update(
        self, buffered: int, replica: ReplicaView, allowance: int | None = None
    ) -> Fanout:
        """Lobby update ``replica.seq`` was just applied: what does this client get?
        A ``CURRENT`` client at or below ``lag_bytes`` always gets ``UPDATE``; the core
        relies on that to ask only clients whose transport passed its write limit.
        ``allowance`` is what the memory budget still allows the client (``None``: no
        limit); with none left its view collapses to a later snapshot (``LAGGING``)."""
        if self.state is not S.AUTHENTICATED:
            return Fanout.SKIP
        if self.flow is Flow.CURRENT:
            if buffered > self._lag_limit(replica) or (allowance is not None and allowance <= 0):
                self.flow = Flow.LAGGING
                return Fanout.SKIP
            return Fanout.UPDATE
        return Fanout.SNAPSHOT if self._resume(buffered, replica, allowance) else Fanout.SKIP

    def on_sweep(
        self, buffered: int, replica: ReplicaView, allowance: int | None = None
    ) -> list[Output]:
        """A lagging or stale client that can take a snapshot gets one (the core asks
        periodically, and on every update, with the same answer :meth:`on_update` gives
        for such a client, and the cause): once its backlog drained below a quarter of
        the lag limit, and the snapshot fits the memory budget's ``allowance``."""
        if self.state is not S.AUTHENTICATED or self.flow is Flow.CURRENT:
            return []
        cause = SnapshotCause.RESYNC if self.flow is Flow.STALE else SnapshotCause.SLOW_CONSUMER
        return [WriteSnapshot(cause)] if self._resume(buffered, replica, allowance) else []

    def _resume(self, buffered: int, replica: ReplicaView, allowance: int | None) -> bool:
        if replica.sync is not SyncState.LIVE or buffered > self._lag_limit(replica) // 4:
            return False
        if allowance is not None and replica.snapshot_bytes > allowance:
            return False  # no room for the snapshot now: a later one
        if self.flow is Flow.STALE and self.key not in replica.users:
            return False  # wait for the rebuilt lobby to include us (or for a Kick)
        self.flow = Flow.CURRENT
        return True

    def _lag_limit(self, replica: ReplicaView) -> int:
        """The backlog past which lobby updates are skipped: ``lag_bytes``, or twice a
        snapshot when that is more. Skipping updates only saves anything while a fresh
        snapshot costs less than the backlog; with a lobby of thousands, one snapshot is
        larger than ``lag_bytes``, and a client that just got one must not be sent into
        a loop of snapshots."""
        return max(self.limits.lag_bytes, 2 * replica.snapshot_bytes)

    def on_progress(self, acked: int | None, buffered: int, now: float) -> list[Output]:
        """A sample of the transport: ``acked`` is how many bytes the peer has
        acknowledged so far (``None`` where the platform cannot tell; then a shrinking
        backlog counts as progress), ``buffered`` the backlog. A backlog without
        progress for ``stall_timeout`` closes the client with 4005."""
        if self.state is not S.AUTHENTICATED:
            return []
        mark = acked if acked is not None else -buffered
        if buffered == 0 or self._progress is None or mark > self._progress[0]:
            self._progress = (mark, now)
            return []
        if now - self._progress[1] >= self.limits.stall_timeout:
            return self._close(E.STALL, CloseCode.SLOW_CONSUMER)
        if acked is None:
            self._progress = (max(mark, self._progress[0]), self._progress[1])
        return []

    # ------------------------------------------------------------------ ending

    def on_transport_closed(self) -> list[Output]:
        return [] if self.state is S.CLOSING else self._end(E.TRANSPORT_CLOSED)

    def _close(
        self, event: Event, code: CloseCode, outcome: AuthOutcome | None = None
    ) -> list[Output]:
        return [Close(code, outcome), *self._end(event)]

    def _end(self, event: Event) -> list[Output]:
        """Go to ``CLOSING``; emit ``Closed`` if the coordinator may hold the session."""
        recorded = self.state in _RECORDED
        if self.v2 is not None:
            self.v2.forget()
        self._goto(event, S.CLOSING)
        self.deadline = None
        self._held, self._held_bytes = [], 0
        self._pipelined, self._pipelined_bytes = [], 0
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


def _throttled(parsed: object) -> Write:
    """The answer to a frame over the rate: a ``send`` still gets its one result."""
    if isinstance(parsed, protocol.Send) and _utf8_ok(parsed.id):
        return _result(parsed.id, RejectReason.RATE_LIMITED)
    return Write(protocol.error(ErrorCode.RATE_LIMITED, "too many messages; slow down"))


def _result(msg_id: str, reason: RejectReason) -> Write:
    frame = protocol.send_result(msg_id, SendStatus.REJECTED, reason)
    return Write(frame, SendOutcome(SendStatus.REJECTED, reason))


_ERROR_CODES: Final = {
    ViolationKind.MALFORMED: ErrorCode.MALFORMED,
    ViolationKind.UNKNOWN_TYPE: ErrorCode.UNKNOWN_TYPE,
}


class Announcement(NamedTuple):
    """What ``Hello`` lists about the sessions (its last two fields, in order)."""

    sessions: list[tuple[int, str, str, int, bool]]
    records: list[tuple[int, str, str]]
    """``(conn, status, data)`` of the listed sessions whose record is not the default."""


def announcement(machines: Iterable[Connection]) -> Announcement:
    """Every session that sent ``Authed`` (:meth:`Connection.claim`), with its record."""
    sessions: list[tuple[int, str, str, int, bool]] = []
    kept: list[tuple[int, str, str]] = []
    for machine in machines:
        claim = machine.claim()
        if claim is not None:
            sessions.append(claim)
            if machine.record != records.DEFAULT:
                kept.append((machine.conn_id, *machine.record))
    return Announcement(sessions, kept)
