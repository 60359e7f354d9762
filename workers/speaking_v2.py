"""What a connection does differently when it speaks protocol version 2 (pure).

Theory of operation
-------------------
A connection is version 2 when its handshake selected the subprotocol ``presence.v2``
(unless ``--v1-only``); its :class:`~workers.connection.Connection` then holds a
:class:`Speaker`, and everything else about it (states, deadlines, pipelining, flow
control, direct messages, ``get_lobby``) is version 1's. This module holds the parts
that differ: the ``auth`` check, and the answers to the frames version 1 does not have.

The ``auth`` check follows the contract's order, so a client learns the first thing
wrong with its ``auth`` whatever else is: the frame's shape (``malformed``); the
``server`` it signed for is one of this worker's identities (``wrong_server``, never
``invalid_signature``: an operator must tell a relay or a misconfigured client from a
broken one); the key; the signature over the payload built with that ``server``; then
``record``, ``follow`` and ``resume``. The parser (:func:`shared.v2.parse_client_frame_v2`)
refuses a bad ``record``, ``follow`` or ``resume`` before it looks at anything else, so
for those the frame is parsed again without them, and the earlier checks run first.

What a connection follows (its *scope*) is kept here, its watchlist in the worker's
shared :class:`~workers.scopes.Scopes` (by connection id). A ``follow`` frame, a
``watch`` or an ``unwatch`` that changes it asks for what ``get_lobby`` asks for: a
fresh snapshot of the new choice (or a ``count``), which the shell builds for the
scope; one that is refused (``watchlist_full``, ``not_watching``, ``bad_follow``, or
``rate_limited`` over the message rate) changes nothing. Those applied are counted
(:meth:`~workers.scopes.Scopes.applied_one`; those in ``auth`` are not): every snapshot
and count carries the count, and the ``error`` refusing one carries it too, so the
client knows which of its requests its view reflects (the contract's "Resume").

A ``set_record`` costs a token of the connection's record bucket (``--record-rate``,
``--record-burst``) besides its message token; over it the change is refused with
``error`` ``rate_limited`` and not applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final, TypeVar

from shared.protocol import GetLobby
from shared.v2 import (
    AuthFailureV2,
    AuthV2,
    ClientMessageV2,
    ErrorCodeV2,
    FollowFrame,
    Resume,
    Scope,
    SetRecord,
    Unwatch,
    Violation,
    ViolationV2,
    Watch,
    auth_ok_v2,
    error_v2,
    parse_client_frame_v2,
    verify_auth_v2,
)
from shared.v2 import Record as RecordV2
from workers.interest import InterestError, NotWatching
from workers.outputs import AuthOutcome, SnapshotCause, Write, WriteSnapshot
from workers.ratelimit import TokenBucket
from workers.replica import ReplicaView
from workers.scopes import Refused, Scopes

SUBPROTOCOL: Final = "presence.v2"
"""The WebSocket subprotocol a version 2 client offers."""

_LATER_CHECKS: Final = {
    ViolationV2.BAD_RECORD: AuthFailureV2.BAD_RECORD,
    ViolationV2.BAD_FOLLOW: AuthFailureV2.BAD_FOLLOW,
    ViolationV2.BAD_RESUME: AuthFailureV2.BAD_RESUME,
}
"""Refusals of an ``auth`` that come after its signature is checked."""
_ERRORS: Final = {
    ViolationV2.MALFORMED: ErrorCodeV2.MALFORMED,
    ViolationV2.UNKNOWN_TYPE: ErrorCodeV2.UNKNOWN_TYPE,
    ViolationV2.BAD_RECORD: ErrorCodeV2.BAD_RECORD,
    ViolationV2.BAD_FOLLOW: ErrorCodeV2.BAD_FOLLOW,
    ViolationV2.BAD_RESUME: ErrorCodeV2.MALFORMED,  # (resume exists in auth alone)
    ViolationV2.WATCHLIST_FULL: ErrorCodeV2.WATCHLIST_FULL,
}

_SCOPE_REFUSALS: Final = frozenset((ViolationV2.BAD_FOLLOW, ViolationV2.WATCHLIST_FULL))
"""Violations that only a ``follow``, ``watch`` or ``unwatch`` can make."""


@dataclass(frozen=True, slots=True)
class V2Config:
    """What every version 2 connection of a worker shares: the worker's public
    identities (:mod:`workers.identities`), the record rate, and the indexes of who
    follows what (:mod:`workers.scopes`)."""

    identities: frozenset[str]
    record_rate: float = 1.0
    record_burst: int = 5
    scopes: Scopes = field(default_factory=Scopes, compare=False)


Record = tuple[str, str]
"""A record as the backbone carries it: ``(status, data)`` (:mod:`shared.records`)."""


@dataclass(frozen=True, slots=True)
class _NotWatching:
    """A ``watch`` or ``unwatch`` from a connection that follows no watchlist."""

    detail: str


Parsed = ClientMessageV2 | Violation | _NotWatching
P = TypeVar("P")


@dataclass(slots=True)
class Speaker:
    """One version 2 connection's own state: its record bucket, the ``server`` its
    ``auth`` named (for the log of a ``wrong_server``), and what it follows."""

    config: V2Config
    conn: int = 0
    bucket: TokenBucket = field(init=False)
    claimed: str = ""
    scope: Scope = Scope.LOBBY
    resume: Resume | None = None  # the view the auth asked to resume, until auth_ok

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.config.record_rate, self.config.record_burst)

    # ------------------------------------------------------------------ auth

    def check_auth(self, frame: str | bytes, nonce: bytes) -> AuthV2 | AuthFailureV2:
        """The first frame: an ``auth`` the worker accepts (its ``follow`` the lobby),
        or why not, in the contract's order."""
        parsed = parse_client_frame_v2(frame)
        later: AuthFailureV2 | None = None
        if isinstance(parsed, Violation) and parsed.kind in _LATER_CHECKS:
            later = _LATER_CHECKS[parsed.kind]
            parsed = parse_client_frame_v2(_without_options(frame))
        if isinstance(parsed, Violation):
            return AuthFailureV2.MALFORMED
        if not isinstance(parsed, AuthV2):
            return AuthFailureV2.UNEXPECTED_MESSAGE
        self.claimed = parsed.server
        if parsed.server not in self.config.identities:
            return AuthFailureV2.WRONG_SERVER
        failure = verify_auth_v2(nonce, parsed.public_key, parsed.signature, parsed.server)
        if failure is not None:
            return failure
        if later is not None:
            return later
        self.scope = parsed.follow.scope
        self.config.scopes.choose(self.conn, parsed.follow, checked=False)
        self.resume = parsed.resume
        return parsed

    def welcome(self, key: str, replica: ReplicaView, now: float) -> list[Write | WriteSnapshot]:
        """``auth_ok`` at the replica's state, then the update from the view the
        ``auth`` resumes when the ring covers it, else a snapshot (or a count)."""
        resume, self.resume = self.resume, None
        epoch = replica.epoch or ""
        if resume is not None:
            update = self.config.scopes.resume(self.conn, self.scope, resume, replica, now)
            if update is not None:
                ok = auth_ok_v2(key, epoch, replica.seq, True)
                return [Write(ok, AuthOutcome.OK), Write(update)]
        ok = auth_ok_v2(key, epoch, replica.seq, False)
        return [Write(ok, AuthOutcome.OK), WriteSnapshot(SnapshotCause.JOIN)]

    # ------------------------------------------------------------------ after auth

    @staticmethod
    def parse(frame: str | bytes) -> Parsed:
        """A frame after ``auth_ok`` (see :meth:`choose` once it is let through)."""
        return parse_client_frame_v2(frame)

    def choose(self, parsed: P) -> P | GetLobby | Violation | _NotWatching:
        """A frame let through the rate: a change of choice or watchlist is made here,
        and asks for what ``get_lobby`` asks for (a fresh snapshot of the new choice); a
        refused one is answered by :meth:`answer`, and changes nothing."""
        scopes = self.config.scopes
        try:
            if isinstance(parsed, FollowFrame):
                scopes.choose(self.conn, parsed.follow)
                self.scope = parsed.follow.scope
            elif isinstance(parsed, Watch):
                scopes.watch(self.conn, parsed.keys)
            elif isinstance(parsed, Unwatch):
                scopes.unwatch(self.conn, parsed.keys)
            else:
                return parsed
            scopes.applied_one(self.conn)
            return GetLobby()
        except Refused as refused:
            return Violation(ViolationV2.WATCHLIST_FULL, str(refused))
        except NotWatching as refused:
            return _NotWatching(str(refused))
        except InterestError as refused:  # WatchlistFull
            return Violation(ViolationV2.WATCHLIST_FULL, str(refused))

    def throttled(self, parsed: object) -> Write | None:
        """The ``error`` refusing a scope request over the message rate (else None)."""
        if not isinstance(parsed, FollowFrame | Watch | Unwatch):
            return None
        return self._error(ErrorCodeV2.RATE_LIMITED, "too many messages; slow down")

    def _error(self, code: ErrorCodeV2, text: str) -> Write:
        """An ``error`` refusing a scope request: it says how many were applied."""
        return Write(error_v2(code, text, self.config.scopes.applied.get(self.conn, 0)))

    def forget(self) -> None:
        """The connection ended: it follows nothing any more."""
        self.config.scopes.forget(self.conn)

    def answer(self, parsed: Parsed, record: Record, now: float) -> Record | Write:
        """Answer a frame version 1 does not have (or a refused one): the session's new
        record (nothing is written: the change comes back as an ``updated`` entry), or
        what to write."""
        if isinstance(parsed, SetRecord):
            if not self.bucket.take(now):
                return _error(ErrorCodeV2.RATE_LIMITED, "too many record changes; slow down")
            new = parsed.change.apply(RecordV2(*record))
            return (new.status, new.data_json)
        if isinstance(parsed, Violation):
            if parsed.kind in _SCOPE_REFUSALS:
                return self._error(_ERRORS[parsed.kind], parsed.detail)
            return _error(_ERRORS[parsed.kind], parsed.detail)
        if isinstance(parsed, AuthV2):
            return _error(ErrorCodeV2.MALFORMED, "already authenticated")
        if isinstance(parsed, _NotWatching):
            return self._error(ErrorCodeV2.NOT_WATCHING, parsed.detail)
        # parse answers every other frame of version 2 (as get_lobby)
        return _error(ErrorCodeV2.MALFORMED, "unexpected frame")


def _error(code: ErrorCodeV2, text: str) -> Write:
    return Write(error_v2(code, text))


def _without_options(frame: str | bytes) -> str:
    """An ``auth`` frame without its ``record``, ``follow`` and ``resume`` (called for
    a frame the parser read as a JSON object; anything else stays malformed)."""
    try:
        obj = json.loads(frame)
        for name in ("record", "follow", "resume"):
            obj.pop(name, None)
        return json.dumps(obj)
    except (ValueError, TypeError, AttributeError, RecursionError):
        return ""
