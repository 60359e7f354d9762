"""The client side of protocol version 2 (docs/PROTOCOL.md, "Version 2"), without I/O.

Theory of operation
-------------------

:class:`SessionV2` is :class:`shared.session.Session` for a connection that negotiated
the subprotocol ``presence.v2``: the same states, sends, counters and endings, and the
same :class:`~shared.session.ReconnectPolicy` for its owner; what differs is here.

* It is made for the URL its owner dials: the server identity of that URL
  (:func:`shared.v2.server_identity`, a :class:`ValueError` naming the URL when it is
  not a ``ws``/``wss`` URL) goes into the signed payload and the ``auth``'s ``server``.
  A challenge of any other version than 2 is a :class:`ProtocolError`.
* The ``auth`` carries the record and the scope the owner wants (``record``,
  ``follow``), and, when the owner reconnects holding a view, ``resume``: the epoch and
  seq of that view, and as ``follow`` the choice that view is of.
* Scope requests (``follow``, ``watch``, ``unwatch``) are tracked by a
  :class:`~shared.v2.following.Following`: each snapshot's and count's ``applied`` says
  which of them the view reflects, an ``error`` with ``applied`` which one was refused
  (it is taken back). :meth:`SessionV2.next_connection` gives what the owner's next
  connection asks for: ``follow`` the view's choice and ``resume``, and the requests the
  view did not reflect, which that session sends again once ``auth_ok`` came (as it
  sends those asked for before ``auth_ok``).
* :meth:`SessionV2.receive` takes text frames and the binary ``snapshot``/``update``
  frames (bytes). The view is a :class:`RecordView`: key -> :class:`Record`, with the
  epoch and seq of the last frame applied, or the count in the count scope.
* Gaps are found by ``prev``: an update applies only when its ``prev`` is the view's
  seq (in every scope; in the whole lobby ``prev`` is ``seq - 1``). Otherwise the view
  is stale: the session asks once for a snapshot (``get_lobby``) and ignores updates
  until one is applied. An update at or below the view's seq is a repeat: refused, no
  resync. After ``auth_ok`` with ``resumed: true`` the first frame is an update whose
  ``prev`` must be the resumed seq; if not, the session is online with a stale view
  and has asked for a snapshot.
* Events: :class:`~shared.session.Online` once (its change a :class:`ViewChange`), then
  a :class:`ViewChange` per applied snapshot or update, a :class:`CountChange` per
  count, direct messages, send results and ``error`` frames (:class:`ErrorV2`).
* :meth:`SessionV2.set_record`, :meth:`~SessionV2.follow_lobby`,
  :meth:`~SessionV2.follow_watch`, :meth:`~SessionV2.follow_count`,
  :meth:`~SessionV2.watch` and :meth:`~SessionV2.unwatch` check their arguments with
  the codec's rules and raise :class:`ValueError` before anything is written; they
  also keep ``record`` and ``follow`` current, which is what a reconnection's ``auth``
  carries again.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from shared import protocol
from shared import v2 as codec
from shared.session import (
    DuplicateUpdate,
    InconsistentSnapshot,
    InconsistentUpdate,
    LobbyChange,
    Online,
    ProtocolError,
    SequenceGap,
    Session,
    State,
    ViewError,
)
from shared.v2 import Count, Entry, Follow, Record, Resume, Scope, Snapshot, Update
from shared.v2.client import FollowFrame, Unwatch, Watch
from shared.v2.following import Following, Request, apply, apply_all

SUBPROTOCOL = "presence.v2"
"""The WebSocket subprotocol a version 2 client offers, and the server selects."""


def parse_frame_v2(frame: str | bytes) -> Any:
    """:func:`shared.v2.decode_server_frame_v2`, refusing with :class:`ProtocolError`."""
    try:
        return codec.decode_server_frame_v2(frame)
    except protocol.ServerProtocolError as exc:
        raise ProtocolError(f"malformed server frame: {exc}") from exc


# --------------------------------------------------------------------------- the view


class RecordView:
    """The lobby as a version 2 client sees it: ``records`` (key -> :class:`Record`)
    of the users online in ``scope``, ``epoch`` and ``seq`` of the last frame applied
    (None before any), ``count`` (the users online: the count frame's number in the
    count scope, else ``len(records)``) and ``stale`` (an update was missed: a snapshot
    is needed). Every ``apply_*`` applies the whole frame or raises a
    :class:`ViewError` and changes nothing but ``stale``."""

    __slots__ = ("_count", "epoch", "records", "scope", "seq", "stale")

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.seq: int | None = None
        self.scope: Scope | None = None
        self.records: dict[str, Record] = {}
        self.stale = False
        self._count = 0

    @property
    def count(self) -> int:
        return self._count if self.scope is Scope.COUNT else len(self.records)

    @property
    def online(self) -> frozenset[str]:
        return frozenset(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        scope = None if self.scope is None else self.scope.value
        return f"RecordView(epoch={self.epoch!r}, seq={self.seq}, {scope}, count={self.count})"

    def matches(self, keys: AbstractSet[str]) -> bool:
        """True when exactly ``keys`` are online (in the scope)."""
        return self.records.keys() == keys

    def apply_snapshot(self, snap: Snapshot) -> None:
        records = {entry.key: entry.record for entry in snap.entries}
        if len(records) != len(snap.entries):
            self.stale = True  # the server meant to replace the view
            raise InconsistentSnapshot(f"snapshot seq {snap.seq} lists a key more than once")
        self.epoch, self.seq, self.scope = snap.epoch, snap.seq, snap.scope
        self.records, self.stale = records, False

    def apply_count(self, frame: Count) -> None:
        self.epoch, self.seq, self.scope = frame.epoch, frame.seq, Scope.COUNT
        self.records, self._count, self.stale = {}, frame.online, False

    def apply_update(self, upd: Update) -> None:
        """Remove ``left``, then set ``joined`` and ``updated``. Refused: an update
        before any snapshot, in the count scope or while stale, or whose ``prev`` is not the view's
        seq (:class:`SequenceGap`, the view becomes stale), one at or below the view's
        seq (:class:`DuplicateUpdate`), one that contradicts the view
        (:class:`InconsistentUpdate`, stale)."""
        current = self.seq if self.scope is not Scope.COUNT else None
        try:
            if current is None or self.stale:
                why = (
                    "the view is stale: waiting for a snapshot"
                    if self.stale
                    else "before any snapshot"
                    if self.seq is None
                    else "the count scope has no updates"
                )
                raise _gap(None, upd, why)
            if upd.prev != current:
                if upd.seq <= current:
                    raise DuplicateUpdate(current, upd.seq)
                raise _gap(current, upd, f"prev {upd.prev}, but the view is at {current}")
            self._apply(upd)
        except ViewError as exc:
            if not isinstance(exc, DuplicateUpdate):
                self.stale = True
            raise

    def _apply(self, upd: Update) -> None:
        left = set(upd.left)
        joined = {entry.key for entry in upd.joined}
        updated = {entry.key for entry in upd.updated}
        if len(left) != len(upd.left) or len(joined) != len(upd.joined):
            raise InconsistentUpdate(f"update seq {upd.seq} lists a key twice in one list")
        if len(updated) != len(upd.updated) or updated & (joined | left):
            raise InconsistentUpdate(f"update seq {upd.seq} lists an updated key twice")
        records = self.records
        # Each a walk over the update's keys, never over the view's (``set - keys()``
        # would walk every record of the view).
        problems = (
            ({k for k in left if k not in records}, "left but not online"),
            ({k for k in joined if k in records and k not in left}, "joined but already online"),
            ({k for k in updated if k not in records}, "updated but not online"),
        )
        for keys, what in problems:
            if keys:
                raise InconsistentUpdate(f"update seq {upd.seq}: {what}: {sorted(keys)[:3]}")
        for key in left:
            del records[key]
        for entry in (*upd.joined, *upd.updated):
            records[entry.key] = entry.record
        self.seq = upd.seq


def _gap(current: int | None, upd: Update, why: str) -> SequenceGap:
    gap = SequenceGap(current, upd.prev)
    gap.args = (f"update seq {upd.seq}: {why}",)
    return gap


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ViewChange(LobbyChange):
    """A :class:`~shared.session.LobbyChange` of a :class:`RecordView`: ``joined``
    and ``left`` are keys as in version 1, ``updated`` the keys whose record changed,
    ``entries`` the records set (every one of a snapshot; the joined and updated ones
    of an update), ``epoch`` and ``scope`` the view's."""

    updated: tuple[str, ...] = ()
    entries: tuple[Entry, ...] = ()
    epoch: str = ""
    scope: Scope = Scope.LOBBY


@dataclass(frozen=True, slots=True)
class CountChange:
    """A ``count`` frame applied: ``online`` users at ``seq`` of ``epoch``."""

    epoch: str
    seq: int
    online: int


# --------------------------------------------------------------------------- the session


def check_keys(keys: Iterable[str], what: str) -> tuple[str, ...]:
    """``keys`` lowercase and distinct; :class:`ValueError` for one that is not a key
    or for more than a watchlist holds."""
    if isinstance(keys, str):
        raise ValueError(f"{what}: keys must be a list of keys, not a string")
    seen: dict[str, None] = {}
    for key in keys:
        if not protocol.is_hex_key(key):
            raise ValueError(f"{what}: {key!r:.80} is not a 64-hex public key")
        seen[protocol.normalise_key(key)] = None
    if len(seen) > codec.MAX_WATCH_KEYS:
        raise ValueError(f"{what}: a watchlist holds at most {codec.MAX_WATCH_KEYS} keys")
    return tuple(seen)


def record_change(status: str | None, data: dict[str, Any] | None) -> codec.RecordChange:
    """The change ``status``/``data`` make, checked; :class:`ValueError` names the
    problem."""
    if status is not None:
        problem = codec.check_status(status)
        if problem is not None:
            raise ValueError(problem)
    return codec.RecordChange(status, None if data is None else codec.compact_data(data))


class SessionV2(Session):
    """One version 2 connection's protocol state (see the module docstring). No I/O.

    ``url``: the URL the owner dials. ``record``/``follow``: what the ``auth`` asks for
    (None: the server's defaults, status online and data {}, the whole lobby).
    ``resume``: the view the owner holds, as :meth:`resume_point` of the previous
    session gave it, with that view as ``view`` (``follow`` then is the view's choice).
    ``resend``: scope requests to send once ``auth_ok`` came (:meth:`next_connection`)."""

    def __init__(
        self,
        signing_key: SigningKey,
        url: str,
        *,
        record: codec.RecordChange | None = None,
        follow: Follow | None = None,
        resume: Resume | None = None,
        view: RecordView | None = None,
        resend: Iterable[Request] = (),
        resync_on_error: bool = True,
        state: State = State.CHALLENGE,
    ) -> None:
        super().__init__(
            signing_key,
            decode=parse_frame_v2,
            resync_on_error=resync_on_error,
            state=state,
        )
        self.view: Any = RecordView() if view is None else view
        self.url = url
        self.server = codec.server_identity(url)
        self.record = record
        self._auth_follow = follow
        self.following = Following(follow or Follow())
        """The choice the view is of, and the scope requests sent on this connection."""
        self._unsent = list(resend)  # requests to send once auth_ok came
        if resume is not None and (view is None or view.seq != resume.seq):
            raise ValueError("resume names a view: pass it as view, at that seq")
        self.resume = resume
        self.resumed: bool | None = None
        """``auth_ok``'s ``resumed``, once it came."""
        self.server_epoch: str | None = None
        """The epoch of ``auth_ok``, the server's current numbering of updates."""

    # ----------------------------------------------------------------- owner's calls

    @property
    def follow(self) -> Follow | None:
        """The choice asked for: the view's, with every scope request not refused
        applied (None: none asked for, the server's default)."""
        following, unsent = self.following, self._unsent
        if self._auth_follow is None and not following.sent and not unsent:
            return None
        return apply_all(following.wanted, unsent)

    def resume_point(self) -> Resume | None:
        """What a reconnection's ``auth`` may resume from: the view's epoch and seq,
        while the view is live (not stale, a snapshot applied) and of the whole lobby or
        a watchlist (:meth:`next_connection` gives the choice it is of)."""
        view = self.view
        if view.epoch is None or view.seq is None or view.stale:
            return None
        if view.scope is Scope.COUNT or view.scope is not self.following.view.scope:
            return None  # a count has no updates to resume
        return Resume(view.epoch, view.seq)

    def next_connection(self) -> tuple[Follow | None, Resume | None, list[Request]]:
        """What the owner's next connection asks for: its ``auth``'s ``follow`` and
        ``resume``, and the scope requests it sends once ``auth_ok`` came. Resuming,
        ``follow`` is the choice the view is of and the requests are those the view
        did not reflect; else ``follow`` is the choice asked for, and none."""
        resume = self.resume_point()
        if resume is None:
            return self.follow, None, []
        return self.following.view, resume, [*self.following.sent, *self._unsent]

    @property
    def unsent(self) -> list[Request]:
        """The scope requests waiting for ``auth_ok`` to be sent."""
        return list(self._unsent)

    def request(self, request: Request) -> None:
        """Write a scope request once ``auth_ok`` came (now, if it did); before the
        ``auth`` is written, a request changes its ``follow`` (unless it resumes)."""
        if self.state is State.CHALLENGE and self.resume is None and not self._unsent:
            follow = apply(self.following.view, request)
            self._auth_follow, self.following = follow, Following(follow)
        elif self.state in (State.SNAPSHOT, State.OPEN):
            self.following.send(request)
            self._outbox.append(_frame_of(request))
        else:
            self._unsent.append(request)

    def set_record(self, status: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Write ``set_record`` (at least one of ``status``/``data``)."""
        if status is None and data is None:
            raise ValueError("set_record needs status or data")
        change = record_change(status, data)
        old = self.record or codec.RecordChange()
        self.record = codec.RecordChange(
            change.status or old.status, change.data_json or old.data_json
        )
        self._outbox.append(codec.set_record(status, data))

    def follow_lobby(self) -> None:
        self.follow_as(Follow(Scope.LOBBY))

    def follow_count(self) -> None:
        self.follow_as(Follow(Scope.COUNT))

    def follow_watch(self, keys: Iterable[str]) -> None:
        self.follow_as(Follow(Scope.WATCH, check_keys(keys, "follow_watch")))

    def watch(self, keys: Iterable[str]) -> None:
        """Add ``keys`` to the watchlist (only while following one)."""
        added = check_keys(keys, "watch")
        check_keys(dict.fromkeys((*self._watched(), *added)), "watch")
        self.request(Watch(added))

    def unwatch(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from the watchlist (only while following one)."""
        removed = check_keys(keys, "unwatch")
        self._watched()
        self.request(Unwatch(tuple(sorted(removed))))

    def _watched(self) -> tuple[str, ...]:
        follow = self.follow
        if follow is None or follow.scope is not Scope.WATCH:
            raise ValueError("watch and unwatch need a watchlist: call follow_watch first")
        return follow.keys

    def follow_as(self, follow: Follow) -> None:
        """Write ``follow`` for a scope already checked (``keys`` lowercase, distinct,
        at most 1,000), as another session asked for it."""
        self.request(FollowFrame(follow))

    # ----------------------------------------------------------------- input

    def handle(self, msg: Any) -> list[Any]:
        state = self.state
        if state is State.OPEN:
            return self._open_v2(msg)
        if state is State.CHALLENGE:
            return self._challenge(msg)
        if state is State.AUTH:
            if self.auth_failure is None and isinstance(msg, codec.AuthFailedV2):
                reason = msg.reason
                self.auth_failure = reason if isinstance(reason, str) else reason.value
                return []
            if self.auth_failure is None and isinstance(msg, codec.AuthOkV2):
                return self._auth_ok(msg)
            return super().handle(msg)  # the errors of version 1
        if state is State.SNAPSHOT:
            return self._first_view(msg)
        return super().handle(msg)

    def _challenge(self, msg: Any) -> list[Any]:
        if not isinstance(msg, protocol.Challenge):
            raise ProtocolError(f"expected a challenge, got {msg!r:.120}")
        if msg.version != codec.server.VERSION_2:
            raise ProtocolError(f"asked for protocol version 2, challenged for {msg.version!r}")
        signature = codec.sign_challenge_v2(self.signing_key, self.server, msg.nonce)
        resume = self.resume
        self._outbox.append(
            codec.auth_v2(
                self.public_key, signature, self.server, self.record, self._auth_follow, resume
            )
        )
        self.state = State.AUTH
        return []

    def _auth_ok(self, msg: codec.AuthOkV2) -> list[Any]:
        if msg.public_key != self.public_key:
            raise ProtocolError(f"auth_ok names another key: {msg.public_key!r}")
        if msg.resumed and (self.resume is None or msg.epoch != self.resume.epoch):
            raise ProtocolError(f"auth_ok resumed epoch {msg.epoch!r}, which was not asked for")
        self.resumed, self.server_epoch = msg.resumed, msg.epoch
        self.state = State.SNAPSHOT
        unsent, self._unsent = self._unsent, []
        for request in unsent:  # those asked for before, or not reflected by the view
            self.request(request)
        return []

    def _first_view(self, msg: Any) -> list[Any]:
        if isinstance(msg, Update) and self.resumed:
            self.state = State.OPEN
            try:
                change = self.apply_update(msg)
            except ViewError:
                change = self._unchanged()  # stale: apply_update asked for a snapshot
            return [Online(change)]
        if isinstance(msg, Count) and not self.resumed:
            self.state = State.OPEN
            event = self.apply_count_frame(msg)
            return [
                Online(
                    ViewChange(
                        "snapshot", msg.seq, (), (), msg.online, epoch=msg.epoch, scope=Scope.COUNT
                    )
                ),
                event,
            ]
        if not isinstance(msg, Snapshot):  # a snapshot also replaces a resumed view
            wanted = "an update (resumed)" if self.resumed else "a snapshot or a count"
            raise ProtocolError(f"expected {wanted} after auth_ok, got {msg!r:.120}")
        change = self.apply_snapshot(msg)
        if msg.scope is Scope.LOBBY and self.public_key not in self.view:
            raise ProtocolError(
                "the first snapshot of the lobby does not contain the client itself"
            )
        self.state = State.OPEN
        return [Online(change)]

    def _unchanged(self) -> ViewChange:
        view = self.view
        return ViewChange(
            "update",
            view.seq or 0,
            (),
            (),
            len(view),
            epoch=view.epoch or "",
            scope=view.scope or Scope.LOBBY,
        )

    def _open_v2(self, msg: Any) -> list[Any]:
        if isinstance(msg, Update):
            if self.view.stale:
                self.updates_received += 1
                return []  # a snapshot is on its way
            return [self.apply_update(msg)]
        if isinstance(msg, Snapshot):
            return [self.apply_snapshot(msg)]
        if isinstance(msg, Count):
            return [self.apply_count_frame(msg)]
        if isinstance(msg, codec.ErrorV2):
            if msg.applied is not None:
                self._refused(msg.applied)
            return [msg]
        if isinstance(msg, protocol.Message | protocol.SendResult):
            return self._handle_open(msg)
        raise ProtocolError(f"unexpected {msg.TYPE!r} frame after authentication")

    def _refused(self, applied: int) -> None:
        try:
            self.following.refused(applied)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None

    def _viewed(self, applied: int) -> None:
        try:
            self.following.viewed(applied)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None

    def apply_snapshot(self, msg: Any) -> ViewChange:
        self.snapshots_received += 1
        self._viewed(msg.applied)
        try:
            self.view.apply_snapshot(msg)
        except ViewError as exc:
            self.view_refused(exc)
            raise
        self.resync_requested = False
        self.epoch += 1
        keys = tuple(entry.key for entry in msg.entries)
        return ViewChange(
            "snapshot", msg.seq, keys, (), len(self.view), (), msg.entries, msg.epoch, msg.scope
        )

    def apply_update(self, msg: Any) -> ViewChange:
        self.updates_received += 1
        try:
            self.view.apply_update(msg)
        except ViewError as exc:
            self.view_refused(exc)
            raise
        view = self.view
        return ViewChange(
            "update",
            msg.seq,
            tuple(entry.key for entry in msg.joined),
            msg.left,
            len(view),
            tuple(entry.key for entry in msg.updated),
            (*msg.joined, *msg.updated),
            view.epoch,
            view.scope,
        )

    def apply_count_frame(self, msg: Count) -> CountChange:
        self._viewed(msg.applied)
        self.view.apply_count(msg)
        self.snapshots_received += 1  # the count scope's snapshot
        self.resync_requested = False
        return CountChange(msg.epoch, msg.seq, msg.online)


def _frame_of(request: Request) -> str:
    if isinstance(request, FollowFrame):
        return codec.follow(request.follow)
    if isinstance(request, Watch):
        return codec.watch(list(request.keys))
    return codec.unwatch(list(request.keys))
