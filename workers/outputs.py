"""What the worker's pure parts return: a client connection's state machine
(:class:`~workers.connection.Connection`), and the core (:mod:`workers.core`).

The core carries out the :data:`Output` list a machine call returns, in order: frames
to write, a close code, backbone messages to emit, a route to start, frame limits (it
routes, and hands the rest to the shell). The core's own outputs (:class:`Broadcast`,
:class:`Report`, :class:`Synced`, :class:`AdmitPeers`, :class:`Trim`, with
:class:`Emit`) are :data:`CoreOutput`, which it hands to its :class:`Shell`, the
protocol of what the core asks of the I/O around it.

What happened, for the shell's metrics: the outputs say it, so the machine needs no
clock and no counters. A :class:`Write` or :class:`Close` that ends an authentication
carries its :class:`AuthOutcome`, a ``send_result`` its :class:`SendOutcome`, a
:class:`WriteSnapshot` its :class:`SnapshotCause`. The auth check itself is a function
the shell may pass in (:data:`~workers.connection.Verifier`), so that it can time it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from shared import backbone as bb
from shared.protocol import CLOSE_REASONS, AuthFailure, CloseCode, RejectReason, SendStatus

if TYPE_CHECKING:
    from workers.clients import Client
    from workers.replica import Forward

H = TypeVar("H", bound=Hashable)


class SnapshotCause(enum.Enum):
    """Why a client gets a ``lobby_snapshot``."""

    JOIN = "join"  # right after auth_ok
    GET_LOBBY = "get_lobby"  # it asked
    RESYNC = "resync"  # the replica resynced (continuity broken): a fresh start
    SLOW_CONSUMER = "slow_consumer"  # it lagged, updates were skipped, and it drained


class AuthOutcome(enum.Enum):
    """How an authentication ended, as the client is told: ``auth_ok``, ``auth_failed``
    with one of its reasons, 4003 (no valid auth in time) or 1013 (verified, but the
    coordinator could not record it in time). An auth overtaken by a newer session of
    the key, a pipeline overflow or a dropped transport has no outcome."""

    OK = "ok"
    MALFORMED = AuthFailure.MALFORMED.value
    INVALID_PUBLIC_KEY = AuthFailure.INVALID_PUBLIC_KEY.value
    INVALID_SIGNATURE = AuthFailure.INVALID_SIGNATURE.value
    UNEXPECTED_MESSAGE = AuthFailure.UNEXPECTED_MESSAGE.value
    WRONG_SERVER = "wrong_server"  # protocol version 2's reasons (shared.v2.AuthFailureV2)
    BAD_RECORD = "bad_record"
    BAD_FOLLOW = "bad_follow"
    BAD_RESUME = "bad_resume"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"


class SendOutcome(NamedTuple):
    """A ``send_result`` as written to the sender."""

    status: SendStatus
    reason: RejectReason | None = None


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Write:
    frame: str | bytes  # bytes: a binary frame (protocol 2's resumed update)
    outcome: AuthOutcome | SendOutcome | None = None
    """What the frame tells the client, when it ends an authentication or answers a
    ``send``: the shell counts it."""


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    """Write the replica's current ``lobby_snapshot`` (encoded once per state)."""

    cause: SnapshotCause


@dataclass(frozen=True, slots=True)
class Close:
    code: CloseCode
    outcome: AuthOutcome | None = None
    """The authentication this close ends, if it ends one (4003, or 1013 once verified)."""

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
class FrameLimits:
    """The largest frames the client may send (over them: 1009): ``first`` for its first
    frame (the ``auth``), ``rest`` for every later one. The switch happens as the first
    frame is parsed, so frames pipelined behind the ``auth`` get the full limit."""

    first: int
    rest: int


class Lesser(enum.Enum):
    """A frame read from a client that is not a whole message: what the WebSocket layer
    hands the machine as it parses (:meth:`~workers.connection.Connection.on_lesser`)."""

    PING = "ping"
    PONG = "pong"
    FRAGMENT = "fragment"  # a data frame that does not end its message


class Answer(enum.Enum):
    """What the WebSocket layer does with a :class:`Lesser` frame, as the machine
    decided."""

    PONG = "pong"  # a ping: answer it now
    LATER = "later"  # a ping while the backlog is past the write limit: its pong waits
    NONE = "none"  # nothing to answer (a pong, a fragment)
    STOP = "stop"  # a flood: no answer, and nothing more is read from the connection


Output = Write | WriteSnapshot | Close | Emit | StartRoute | FrameLimits
"""What a machine returns."""

ClientOutput = Write | WriteSnapshot | Close | FrameLimits
"""What a machine asks of its own connection (the core takes the rest)."""


# --------------------------------------------------------------------------- the core's


@dataclass(frozen=True, slots=True)
class Broadcast(Generic[H]):
    """Write ``updates``' frames, in order, to every client of ``clients`` (the
    ``CURRENT`` group's own mapping, as it stands while this is carried out), and
    their version 2 frames to every client of ``clients_v2``."""

    clients: Mapping[H, Client[H]]
    updates: Sequence[Forward]
    clients_v2: Mapping[H, Client[H]] = dataclasses.field(default_factory=dict)
    """The ``CURRENT_V2`` group's mapping: the same updates, in protocol version 2."""


@dataclass(frozen=True, slots=True)
class Report:
    """Queue ``result`` for the worker behind ``peer`` (a handle from the shell's
    :meth:`~workers.core.Shell.peer`, which said it can take it)."""

    peer: object
    result: bb.RouteDone


@dataclass(frozen=True, slots=True)
class Synced:
    """The replica is live (from a snapshot): the worker is ready to serve."""


@dataclass(frozen=True, slots=True)
class AdmitPeers:
    """The coordinator's list of worker keys (:class:`~shared.backbone.Welcome`): from
    now on the results socket takes those workers alone."""

    keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class Trim:
    """The buffers' load has left: give the memory the allocator keeps back to the
    system (see :mod:`workers.budget`)."""


CoreOutput = Emit | Report | Broadcast[Any] | Synced | AdmitPeers | Trim
"""What the core hands its shell besides clients' outputs (:data:`ClientOutput`);
:class:`Emit` goes to the coordinator. :mod:`workers.core` calls it ``Output``."""


class Shell(Protocol[H]):
    """What the core asks of its shell: to carry out outputs at once, and the facts
    only I/O knows."""

    def to_client(self, client: Client[H], output: ClientOutput) -> None: ...

    def carry_out(self, output: CoreOutput) -> None: ...

    def buffered(self, handle: H) -> int:
        """Bytes waiting in the connection's transport buffer."""
        ...

    def acked(self, handle: H) -> int | None:
        """Bytes the peer has acknowledged on the connection (``None``: unknown)."""
        ...

    def send_buffer(self, handle: H) -> int:
        """The kernel send buffer the connection's socket was granted (its reservation
        in the memory budget)."""
        ...

    def peer(self, endpoint: str, key: str) -> object | None:
        """A handle for the results endpoint of another worker if a result can be
        queued for it now, else ``None``."""
        ...
