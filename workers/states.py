"""The states of one client connection, the events that move it, and the table of every
legal move: the data of :class:`~workers.connection.Connection`'s machine.

Theory of operation
-------------------
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

:data:`TRANSITIONS` lists every legal ``(state, event) -> next state``; the machine
refuses any other move (a test walks the table). An authenticated client's lobby
fan-out has a sub-state, :class:`Flow`; what one update does to it is a
:class:`Fanout`, and what became of a direct message for it a :class:`Delivery`.
"""

from __future__ import annotations

import enum
from typing import Final


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
    PIPELINE_FULL = "pipeline_full"  # more frames before auth_ok than are held
    STALL = "stall"  # a backlog and no reading progress for stall_timeout
    FLOOD = "flood"  # over the message rate for too long
    CUTOFF = "cutoff"  # the worker lost its coordinator for longer than the grace
    EVICTED = "evicted"  # door full: a heavier source's oldest, or one that waited, makes room
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


class Delivery(enum.Enum):
    """What became of a direct message for this client (the ``RouteDone`` status)."""

    DELIVERED = "delivered"  # handed to the connection (or held for auth_ok)
    OFFLINE = "offline"  # no session here any more
    FULL = "rate_limited"  # over the recipient's bound: the sender is told rate_limited


S, E = State, Event

TRANSITIONS: Final[dict[tuple[State, Event], frozenset[State]]] = {
    (S.CHALLENGED, E.AUTH_VALID): frozenset({S.VERIFIED, S.AUTHENTICATING}),
    (S.CHALLENGED, E.AUTH_INVALID): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.KICK): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.CUTOFF): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.EVICTED): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.FLOOD): frozenset({S.CLOSING}),
    (S.CHALLENGED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.VERIFIED, E.LINK_UP): frozenset({S.AUTHENTICATING}),
    (S.VERIFIED, E.PIPELINE_FULL): frozenset({S.CLOSING}),
    (S.VERIFIED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.VERIFIED, E.KICK): frozenset({S.CLOSING}),
    (S.VERIFIED, E.CUTOFF): frozenset({S.CLOSING}),
    (S.VERIFIED, E.FLOOD): frozenset({S.CLOSING}),
    (S.VERIFIED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.ACK): frozenset({S.ACKED}),
    (S.AUTHENTICATING, E.PIPELINE_FULL): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.DEADLINE): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.KICK): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.CUTOFF): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.FLOOD): frozenset({S.CLOSING}),
    (S.AUTHENTICATING, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.ACKED, E.CAUGHT_UP): frozenset({S.AUTHENTICATED}),
    (S.ACKED, E.PIPELINE_FULL): frozenset({S.CLOSING}),
    (S.ACKED, E.DEADLINE): frozenset({S.CLOSING}),
    (S.ACKED, E.UNANNOUNCED): frozenset({S.CLOSING}),
    (S.ACKED, E.KICK): frozenset({S.CLOSING}),
    (S.ACKED, E.CUTOFF): frozenset({S.CLOSING}),
    (S.ACKED, E.FLOOD): frozenset({S.CLOSING}),
    (S.ACKED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.KICK): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.STALL): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.FLOOD): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.CUTOFF): frozenset({S.CLOSING}),
    (S.AUTHENTICATED, E.TRANSPORT_CLOSED): frozenset({S.CLOSING}),
}
"""Every legal ``(state, event) -> next state``. Pairs not listed leave the state alone
(for example a late ``AuthAck`` after a close, or a frame while ``CLOSING``)."""
