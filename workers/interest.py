"""Who watches which key: the worker's index of watchlists (protocol 2, pure).

Theory of operation
-------------------
A protocol 2 client that follows a watchlist is sent an update only when it touches a
key it watches, and only those keys' changes. :class:`Interest` holds both directions of
that relation: each client's watchlist, and each key's watchers. It decides:

* **What a watchlist may hold.** At most :data:`MAX_WATCH_KEYS` distinct keys
  (duplicates count once). A ``follow`` or ``watch`` that would go past it raises
  :class:`WatchlistFull` and changes nothing; ``watch`` and ``unwatch`` for a client
  that follows no watchlist raise :class:`NotWatching` (the protocol's
  ``watchlist_full`` and ``not_watching``).
* **Who gets what of one update** (:meth:`Interest.route`): for each changed key, its
  watchers get that change. The cost is the number of (changed key, watcher) pairs,
  never the number of clients: an update that touches no watched key costs a dictionary
  look-up per changed key.
* **The numbering each client sees.** A watch client's updates are not consecutive, so
  each carries ``prev``, the ``seq`` of the last frame that client was sent (a snapshot
  or an update). :meth:`Interest.sent` records a snapshot; a routed update records
  itself. A client that was not yet sent a snapshot of its watchlist (just after
  :meth:`Interest.follow`) gets no updates: the snapshot it is about to get holds them.

Bounds: a client holds at most :data:`MAX_WATCH_KEYS` keys, so the index holds at most
that many pairs per watch client, and the number of connections bounds the clients.
:meth:`Interest.bytes` estimates what the index holds, for the memory budget (measured
with tracemalloc in the tests).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from shared.records import Record
from shared.v2.client import MAX_WATCH_KEYS

C = TypeVar("C", bound=Hashable)

Entry = tuple[str, Record]
"""A key (64 lowercase hex characters) and its record."""

CLIENT_BYTES: Final = 300
"""Estimated bytes per watch client: its set, its slots in two dictionaries."""
KEY_BYTES: Final = 300
"""Estimated bytes per watched key: its set of watchers and its dictionary slot."""
PAIR_BYTES: Final = 64
"""Estimated bytes per (client, key) pair: a slot in the key's set of watchers, and one
in the client's tuple."""

_EMPTY: Final[frozenset[object]] = frozenset()


class InterestError(Exception):
    """A change of watchlist that is refused; nothing was changed."""


class WatchlistFull(InterestError):
    """The watchlist would hold more than :data:`MAX_WATCH_KEYS` keys."""

    def __init__(self, wanted: int) -> None:
        super().__init__(f"a watchlist holds at most {MAX_WATCH_KEYS} keys, not {wanted}")
        self.wanted = wanted


class NotWatching(InterestError):
    """``watch`` or ``unwatch`` from a client that follows no watchlist."""

    def __init__(self) -> None:
        super().__init__("the client does not follow a watchlist")


@dataclass(frozen=True, slots=True)
class Changes:
    """The content of one binary ``update`` for one client: ``seq``, ``prev``, the
    ``joined`` and ``updated`` entries and the ``left`` keys (a key may be in both
    ``left`` and ``joined``: a reconnection)."""

    seq: int
    prev: int
    joined: tuple[Entry, ...] = ()
    updated: tuple[Entry, ...] = ()
    left: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        seq: int,
        prev: int,
        joined: Iterable[Entry] = (),
        updated: Iterable[Entry] = (),
        left: Iterable[str] = (),
    ) -> Changes:
        return cls(seq, prev, tuple(joined), tuple(updated), tuple(left))

    def __bool__(self) -> bool:
        return bool(self.joined or self.updated or self.left)


@dataclass(slots=True)
class _Routed:
    joined: list[Entry] = field(default_factory=list)
    updated: list[Entry] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class Interest(Generic[C]):
    """Watchlists and their reverse index (see the module docstring)."""

    def __init__(self) -> None:
        # Every watch client's watchlist, as a tuple: a set of 20 keys takes 2 KiB, a
        # tuple 200 bytes, and only changes of the list, snapshots and resumes read it
        # (routing reads _watchers).
        self._keys: dict[C, tuple[str, ...]] = {}
        self._watchers: dict[str, set[C]] = {}  # only keys somebody watches
        self._prev: dict[C, int] = {}  # watch clients sent a snapshot: their last seq
        self._pairs = 0

    # ------------------------------------------------------------------ figures

    @property
    def clients(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> int:
        """Distinct keys watched by anyone."""
        return len(self._watchers)

    @property
    def pairs(self) -> int:
        """(client, key) pairs: the sum of the watchlists' sizes."""
        return self._pairs

    @property
    def bytes(self) -> int:
        """An estimate of the bytes the index holds, for the memory budget."""
        return (
            CLIENT_BYTES * len(self._keys)
            + KEY_BYTES * len(self._watchers)
            + PAIR_BYTES * self._pairs
        )

    # ------------------------------------------------------------------ reading

    def follows(self, client: C) -> bool:
        """Whether ``client`` follows a watchlist."""
        return client in self._keys

    def keys_of(self, client: C) -> AbstractSet[str]:
        """``client``'s watchlist (empty when it follows none). Read it, don't keep it."""
        held = self._keys.get(client)
        return _EMPTY if held is None else frozenset(held)  # type: ignore[return-value]

    def watchers(self, key: str) -> AbstractSet[C]:
        """The clients watching ``key``. Read it, don't keep it."""
        return self._watchers.get(key, _EMPTY)  # type: ignore[arg-type]

    def prev(self, client: C) -> int | None:
        """The seq of the last frame ``client`` was sent since it followed its
        watchlist, or ``None`` before its snapshot."""
        return self._prev.get(client)

    # ------------------------------------------------------------------ changing

    def follow(self, client: C, keys: Iterable[str]) -> None:
        """``client`` follows exactly ``keys`` from now on (it is to be sent a snapshot of
        them: until :meth:`sent`, it gets no updates). Raises :class:`WatchlistFull`,
        changing nothing, for more than :data:`MAX_WATCH_KEYS` distinct keys."""
        wanted = set(keys)
        if len(wanted) > MAX_WATCH_KEYS:
            raise WatchlistFull(len(wanted))
        old = self._keys.get(client)
        if old is None:
            self._keys[client] = ()
        else:
            self._drop(client, set(old) - wanted)
        self._add(client, wanted)
        self._prev.pop(client, None)

    def watch(self, client: C, keys: Iterable[str]) -> None:
        """Add ``keys`` to ``client``'s watchlist (it is to be sent a fresh snapshot).
        Raises :class:`NotWatching` or :class:`WatchlistFull`, changing nothing."""
        held = self._keys.get(client)
        if held is None:
            raise NotWatching()
        new = set(keys).difference(held)
        if len(held) + len(new) > MAX_WATCH_KEYS:
            raise WatchlistFull(len(held) + len(new))
        self._add(client, new)
        self._prev.pop(client, None)

    def unwatch(self, client: C, keys: Iterable[str]) -> None:
        """Remove ``keys`` from ``client``'s watchlist (it is to be sent a fresh
        snapshot). Raises :class:`NotWatching`, changing nothing."""
        held = self._keys.get(client)
        if held is None:
            raise NotWatching()
        self._drop(client, set(held).intersection(keys))
        self._prev.pop(client, None)

    def forget(self, client: C) -> None:
        """``client`` follows no watchlist any more (another scope, or it is gone)."""
        held = self._keys.pop(client, None)
        if held is not None:
            self._drop(client, set(held))
        self._prev.pop(client, None)

    def sent(self, client: C, seq: int) -> None:
        """``client`` was sent a snapshot of its watchlist at ``seq``: its next update
        carries that as ``prev``. Ignored for a client that follows no watchlist."""
        if client in self._keys:
            self._prev[client] = seq

    # ------------------------------------------------------------------ routing

    def route(
        self,
        seq: int,
        joined: Iterable[Entry],
        updated: Iterable[Entry],
        left: Iterable[str],
    ) -> dict[C, Changes]:
        """What each watch client gets of the update ``seq`` (only clients with a changed
        watched key, and a snapshot sent): each one's ``prev`` is its previous seq, and
        ``seq`` becomes its previous for the next. Costs one look-up per changed key and
        one step per (changed key, watcher) pair."""
        found: dict[C, _Routed] = {}
        watchers = self._watchers
        for key in left:
            for client in watchers.get(key, ()):
                found.setdefault(client, _Routed()).left.append(key)
        for entry in joined:
            for client in watchers.get(entry[0], ()):
                found.setdefault(client, _Routed()).joined.append(entry)
        for entry in updated:
            for client in watchers.get(entry[0], ()):
                found.setdefault(client, _Routed()).updated.append(entry)
        routed: dict[C, Changes] = {}
        prevs = self._prev
        for client, got in found.items():
            prev = prevs.get(client)
            if prev is None or prev >= seq:
                continue  # awaiting its snapshot, or the snapshot already holds it
            prevs[client] = seq
            routed[client] = Changes(
                seq, prev, tuple(got.joined), tuple(got.updated), tuple(got.left)
            )
        return routed

    # ------------------------------------------------------------------ internals

    def _add(self, client: C, keys: AbstractSet[str]) -> None:
        held = set(self._keys[client])
        for key in keys:
            if key not in held:
                held.add(key)
                self._watchers.setdefault(key, set()).add(client)
                self._pairs += 1
        self._keys[client] = tuple(held)

    def _drop(self, client: C, keys: AbstractSet[str]) -> None:
        held = self._keys.get(client)
        if held is not None:
            self._keys[client] = tuple(key for key in held if key not in keys)
        for key in keys:
            watching = self._watchers.get(key)
            if watching is not None and client in watching:
                watching.discard(client)
                self._pairs -= 1
                if not watching:
                    del self._watchers[key]
