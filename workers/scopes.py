"""What a worker serves to protocol 2 clients that follow a watchlist or the count, and
its resume ring (pure, with the clock passed in).

Theory of operation
-------------------
One :class:`Scopes` per worker holds the three indexes that are not per connection: the
watchlists (:class:`~workers.interest.Interest`), the count followers
(:class:`~workers.counts.CountFeed`) and the resume ring (:class:`~workers.ring.Ring`),
all keyed by connection id. It is shared by every version 2 connection's
:class:`~workers.speaking_v2.Speaker` (which changes a connection's choice through it)
and by the shell, which tells it:

* **every published update** (:meth:`Scopes.published`): the ring holds it, the count
  feed learns the number online, and the update is routed to the watchers of the keys
  it changed, each with its own ``prev`` (cost proportional to the watchers touched,
  never to the clients);
* **every resync** (:meth:`Scopes.resynced`): the ring starts afresh at the replica's
  state (every client then gets a fresh snapshot or count, as its flow allows);
* **each tick** (:meth:`Scopes.due`): the counts due (cost proportional to them);
* **each snapshot** a watch or count client is to get (:meth:`Scopes.fresh`): its
  watchlist's snapshot (and the index records it as sent), or its ``count``;
* **each scope request applied** (:meth:`Scopes.applied_one`): a connection's count of
  them, which its snapshots and counts carry (and the ``error`` refusing one), so its
  client knows which of its requests its view reflects;
* **each resume** an ``auth`` asks for (:meth:`Scopes.resume`): the one update with the
  net effect since the client's view, for its scope, when the ring holds every update
  since that view up to the replica's state (else the client gets a snapshot); the
  clients resuming the whole lobby from one view at one state share one frame.

A watch or count client never gets the whole lobby's frames: it is in the client
table's ``SCOPED`` group, whose lagging and resync rules are those of every client.
What the indexes hold is charged to the memory budget (:attr:`Scopes.memory`), and a
watchlist that would grow them is refused while the budget is under pressure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from shared import backbone as bb
from shared.defaults import RESUME_RING_AGE, RESUME_RING_BYTES
from shared.v2 import Follow, Record, Resume, Scope, encode_entry, update_of
from shared.v2 import count as count_frame
from shared.v2.server import key_bytes
from workers.counts import Count, CountFeed
from workers.interest import CLIENT_BYTES, KEY_BYTES, PAIR_BYTES, Changes, Entry, Interest
from workers.lobby_v2 import Entries
from workers.replica import Forward, ReplicaView
from workers.ring import Ring

_DEFAULT: Final = ("online", "{}")


class Refused(Exception):
    """A change of watchlist refused with ``watchlist_full``; nothing changed."""


def _always(_extra: int) -> bool:
    return True


class Scopes:
    """The worker's watchlists, count followers and resume ring (module docstring)."""

    def __init__(
        self, *, ring_bytes: int = RESUME_RING_BYTES, ring_age: float = RESUME_RING_AGE
    ) -> None:
        self.interest: Interest[int] = Interest()
        self.counts: CountFeed[int] = CountFeed()
        self.ring = Ring(max_bytes=ring_bytes, max_age=ring_age)
        self.entries = Entries()  # encoded entries, kept between watch snapshots
        self.applied: dict[int, int] = {}  # scope requests applied, by connection (not 0)
        self._resumed: tuple[tuple[str, int, int], bytes] | None = None
        """The last whole-lobby resume's frame, by (epoch, S, newest): a herd shares it."""
        self.room: Callable[[int], bool] = _always
        """Whether the indexes may grow by so many bytes (the memory budget's say)."""

    @property
    def memory(self) -> int:
        """What the indexes hold, in bytes, for the memory budget."""
        resumed = 0 if self._resumed is None else len(self._resumed[1])
        return self.interest.bytes + self.ring.bytes + resumed

    # ------------------------------------------------------------------ choices

    def choose(self, conn: int, follow: Follow, *, checked: bool = True) -> None:
        """Connection ``conn`` follows ``follow`` from now on (a fresh snapshot or count
        is to follow). Raises :class:`Refused` for a watchlist the budget has no room
        for (unless ``checked`` is false: an ``auth``, bounded by the connections)."""
        if follow.scope is Scope.WATCH:
            if checked:
                self._check_room(conn, follow.keys)
            self.interest.follow(conn, follow.keys)
        else:
            self.interest.forget(conn)
        self.counts.forget(conn)

    def watch(self, conn: int, keys: Iterable[str]) -> None:
        """Add ``keys`` to ``conn``'s watchlist; raises :class:`Refused`, or the
        index's :class:`~workers.interest.InterestError`."""
        wanted = set(keys)
        if self.interest.follows(conn):
            self._check_room(conn, wanted)
        self.interest.watch(conn, wanted)  # raises NotWatching, or WatchlistFull

    def unwatch(self, conn: int, keys: Iterable[str]) -> None:
        self.interest.unwatch(conn, keys)

    def forget(self, conn: int) -> None:
        """``conn`` is gone."""
        self.interest.forget(conn)
        self.counts.forget(conn)
        self.applied.pop(conn, None)

    def applied_one(self, conn: int) -> None:
        """``conn``'s client had one more ``follow``, ``watch`` or ``unwatch`` applied."""
        self.applied[conn] = self.applied.get(conn, 0) + 1

    def _check_room(self, conn: int, keys: Iterable[str]) -> None:
        held = self.interest.keys_of(conn)
        new = sum(1 for key in set(keys) if key not in held)
        if new and not self.room(CLIENT_BYTES + new * (KEY_BYTES + PAIR_BYTES)):
            raise Refused("the server is short of memory: watch fewer keys, or later")

    # ------------------------------------------------------------------ frames

    def fresh(self, conn: int, scope: Scope, replica: ReplicaView, now: float) -> bytes | str:
        """The snapshot of ``conn``'s watchlist (recorded as sent), or its ``count``."""
        if scope is Scope.COUNT:
            self.counts.changed(len(replica.users), replica.seq)  # a resync may be news
            counted = self.counts.follow(conn, now)
            return _count(replica.epoch or "", counted, self.applied.get(conn, 0))
        self.interest.sent(conn, replica.seq)
        keys = self.interest.keys_of(conn)
        return self.entries.watched(replica, keys, self.applied.get(conn, 0))

    def resume(
        self, conn: int, scope: Scope, view: Resume, replica: ReplicaView, now: float
    ) -> bytes | None:
        """The one ``update`` that brings ``conn``'s view ``view`` (of its watchlist or
        the lobby) to the replica's state, when the ring holds every update since, up
        to that state; else ``None`` (a snapshot, or a count: the count has no view)."""
        ring = self.ring
        if scope is Scope.COUNT or ring.epoch != replica.epoch or ring.newest != replica.seq:
            return None  # (the ring is behind the replica, or of another epoch)
        if not ring.covers(view.epoch, view.seq, now):
            return None
        if scope is Scope.LOBBY:
            return self._lobby_resumed(view)
        changes = ring.since(view.epoch, view.seq, self.interest.keys_of(conn))
        if changes is None:
            return None
        self.interest.sent(conn, changes.seq)
        return update_frame(changes)

    def _lobby_resumed(self, view: Resume) -> bytes | None:
        """The whole lobby's resume frame from ``view``: a herd of clients resuming the
        same view before the next update gets one frame, encoded once. (A seq names one
        state of an epoch's lobby, so the key says all the frame depends on.)"""
        key = (view.epoch, view.seq, self.ring.newest)
        if self._resumed is not None and self._resumed[0] == key:
            return self._resumed[1]
        changes = self.ring.since(view.epoch, view.seq)
        if changes is None:
            return None
        self._resumed = (key, update_frame(changes))
        return self._resumed[1]

    def published(
        self, updates: Iterable[Forward], online: int, now: float
    ) -> dict[int, list[bytes]]:
        """Updates the replica applied in order (``online`` users after the last): held
        for resume, counted, and routed to their watchers. Returns each touched watch
        client's frames in order, one message each (a client touched by two updates of
        one batch gets two ``update`` frames, each with its own ``prev``)."""
        out: dict[int, list[bytes]] = {}
        last = 0
        for forward in updates:
            update = forward.update
            if update is None:
                continue
            last = update.seq
            joined, updated, left = entries_of(update)
            self.ring.append(update.seq, now, joined, updated, left, forward.was)
            routed = self.interest.route(update.seq, joined, updated, left)
            if routed:
                encoded = _Encoded()  # each entry encoded once, however many watch it
                for conn, changes in routed.items():
                    out.setdefault(conn, []).append(encoded.frame(changes))
        if last:
            self.counts.changed(online, last)
        return out

    def resynced(self, replica: ReplicaView) -> None:
        """The replica is live again from a snapshot (a new epoch, or after a gap): the
        ring starts afresh there. (Every client's view is stale then: each is sent a
        fresh snapshot or count as its connection's flow allows.)"""
        self.ring.reset(replica.epoch or "", replica.seq)
        self._resumed = None
        self.counts.changed(len(replica.users), replica.seq)

    def due(self, epoch: str, now: float) -> list[tuple[int, str]]:
        """The ``count`` frames due now: every client due is sent the same number, so
        one text serves all with the same count of requests applied (the same ``str``
        object: the shell frames each once)."""
        applied, texts = self.applied, dict[tuple[Count, int], str]()
        out = []
        for conn, counted in self.counts.due(now):
            held = (counted, applied.get(conn, 0))
            text = texts.get(held)
            if text is None:
                text = texts[held] = _count(epoch, *held)
            out.append((conn, text))
        return out


def _count(epoch: str, counted: Count, applied: int) -> str:
    return count_frame(epoch, counted.seq, counted.online, applied)


def entries_of(update: bb.Update) -> tuple[list[Entry], list[Entry], list[str]]:
    """A backbone ``Update``'s joined entries (with their records), updated entries and
    left keys, as the indexes take them."""
    listed = {key: (status, data) for key, status, data in update.records}
    joined = [(key, listed.get(key, _DEFAULT)) for key in update.joined]
    updated = [(key, (status, data)) for key, status, data in update.updated]
    return joined, updated, list(update.left)


def update_frame(changes: Changes) -> bytes:
    """The binary ``update`` for one client."""
    return _Encoded().frame(changes)


class _Encoded:
    """Entries and keys of one update, encoded once for all the clients it goes to."""

    __slots__ = ("_entries", "_keys")

    def __init__(self) -> None:
        self._entries: dict[Entry, bytes] = {}
        self._keys: dict[str, bytes] = {}

    def frame(self, changes: Changes) -> bytes:
        return update_of(
            changes.seq,
            changes.prev,
            [self._entry(entry) for entry in changes.joined],
            [self._entry(entry) for entry in changes.updated],
            [self._key(key) for key in changes.left],
        )

    def _entry(self, entry: Entry) -> bytes:
        done = self._entries.get(entry)
        if done is None:
            done = self._entries[entry] = encode_entry(entry[0], Record(*entry[1]))
        return done

    def _key(self, key: str) -> bytes:
        done = self._keys.get(key)
        if done is None:
            done = self._keys[key] = key_bytes(key)
        return done
