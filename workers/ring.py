"""The resume ring: the worker's recent updates, to resume a client from (protocol 2,
pure).

Theory of operation
-------------------
A client that reconnects names the view it holds, ``(epoch, seq)``. If the worker holds
every update after ``seq`` in that epoch, the client is sent one ``update`` with the net
effect of them all, instead of a snapshot. :class:`Ring` holds those updates and decides
whether a view can be resumed (:meth:`Ring.covers`) and with what (:meth:`Ring.since`).

* **What it holds.** The updates of the current epoch the worker applied in order, each
  with its time: the keys that joined (with their records), those whose record changed
  (with the new one and the one it replaced) and those that left (with the record they
  had). It holds every update after ``base`` up to ``newest``, and nothing else: an
  update that does not follow on (the replica resynced after a gap) or a new epoch
  (:meth:`Ring.reset`) starts it afresh.
* **Its bounds.** At most ``max_bytes`` (estimated as :meth:`Ring.bytes` charges them;
  :data:`MAX_BYTES`, 8 MiB) and ``max_age`` seconds (:data:`MAX_AGE`, 60 s). At either
  bound the oldest updates go, and ``base`` moves past them: the views they would have
  resumed get a snapshot instead. An update larger than ``max_bytes`` on its own leaves
  the ring empty.
* **The net effect** from ``S`` to ``newest``, per key, follows the protocol's rule for
  applying updates (remove ``left``, then set ``joined`` and ``updated``). The key's
  state at ``S`` is read from the first update after ``S`` that touches it: in ``left``
  or ``updated``, it was online with the record that update replaced; in ``joined``
  without ``left``, it was offline. Its state now is the last update's. Then: offline at
  ``S`` and online now, ``joined``; online at ``S`` and offline now, ``left``; online
  both times, ``updated`` with the current record unless that is the record it had at
  ``S`` (it left and came back as it was, as every user of a killed worker does), when
  it is not listed, as it is not when offline both times. A key no update touched is
  not listed. So the client's view at ``S`` with the net effect applied is the lobby
  now, for the whole lobby or restricted to a watchlist, and every key listed differs
  from the client's view. (A replaced record the ring was not told of counts as
  different: such a key is listed as ``updated``.)

Cost: an index holds, per key the held updates touch, those updates (oldest first) with
the key's state just before each, and its record now; it is charged with the updates
(:func:`held_size`). A key's net effect from ``S`` is then a binary search for the first
update after ``S``. A watchlist's costs that per watched key, whatever ``S`` is: watch
clients resume from views of many different ``S`` (each is at the last update that
touched one of its keys). The whole lobby's from ``S`` is computed once (a search per
change held after ``S``) and kept, since reconnecting whole-lobby clients come in herds
holding the same view; while it is kept, each update appended is folded into it (a
search per change of that update), so a herd that resumes while the lobby moves (the
users of a killed worker coming back) shares it too. The kept result is charged on its
own: :meth:`Ring.bytes` is at most about twice ``max_bytes``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import islice
from typing import Final

from shared.defaults import RESUME_RING_AGE, RESUME_RING_BYTES
from shared.records import DEFAULT, Record
from workers.interest import Changes, Entry

MAX_BYTES: Final = RESUME_RING_BYTES
"""Bytes of updates held at most, by default (see shared.defaults)."""
MAX_AGE: Final = RESUME_RING_AGE
"""Seconds an update is held at most, by default (see shared.defaults)."""

UPDATE_BYTES: Final = 200
"""Estimated bytes of one held update besides its changes."""
ENTRY_BYTES: Final = 220
"""Estimated bytes of one joined or updated entry besides its record's text."""
LEFT_BYTES: Final = 120
"""Estimated bytes of one key that left."""
WAS_BYTES: Final = 8
"""Estimated bytes of the reference to the record a left or updated key had."""
RECORD_BYTES: Final = 160
"""Estimated bytes of a replaced record that is not the default (the ring may be the
last to hold it), besides its text."""
INDEX_BYTES: Final = 130
"""Estimated bytes of the index entry of one key an update touches."""
LISTED_BYTES: Final = 110
"""Estimated bytes per key a kept net effect lists."""

HELD_PER_CHANGE: Final = 540
"""About what the ring holds for one status change (its updated entry and index entry,
the record it replaced, its share of its update), by the estimates above."""
HELD_PER_RETURN: Final = 790
"""About what the ring holds for one user back on a new connection (its key left and
joined in one update: a lost worker's users coming back)."""


def bytes_to_cover(changes_per_s: float, seconds: float, returning: int) -> int:
    """A ring size (``--resume-ring-bytes``, whole MiB) that holds ``seconds`` of status
    changes at ``changes_per_s`` and the updates of ``returning`` users coming back on
    new connections: what a worker needs to resume every user of a lost worker that is
    back within ``seconds`` (``--resume-ring-age`` must be as long)."""
    held = changes_per_s * seconds * HELD_PER_CHANGE + returning * HELD_PER_RETURN
    return math.ceil(held / 2**20) * 2**20


@dataclass(frozen=True, slots=True)
class Held:
    """One update as the ring holds it; ``left_was`` and ``updated_was`` hold the record
    each key of ``left`` and ``updated`` had before it (``None``: not known)."""

    seq: int
    at: float
    joined: tuple[Entry, ...]
    updated: tuple[Entry, ...]
    left: tuple[str, ...]
    left_was: tuple[Record | None, ...]
    updated_was: tuple[Record | None, ...]
    size: int


def held_size(
    joined: Iterable[Entry],
    updated: Iterable[Entry],
    left: Iterable[str],
    was: Iterable[Record | None] = (),
) -> int:
    """The estimated bytes an update holds (what the ring charges for it): its entries,
    its left keys, the records ``was`` its left and updated keys had, and the index
    entries of the keys it touches."""
    joined, changed = tuple(joined), tuple(updated)
    entries = sum(ENTRY_BYTES + len(s) + len(d) for _, (s, d) in (*joined, *changed))
    keys = sum(1 for _ in left)
    touched = INDEX_BYTES * (keys + len(joined) + len(changed))
    replaced = sum(
        RECORD_BYTES + len(record[0]) + len(record[1])
        for record in was
        if record is not None and record != DEFAULT
    )
    was_bytes = WAS_BYTES * (keys + len(changed)) + replaced
    return UPDATE_BYTES + entries + LEFT_BYTES * keys + was_bytes + touched


_State = tuple[bool, Record | None, Record | None]
"""A touched key's net state: whether it was online at ``S``, its record then (``None``:
offline, or not known), and its record now (``None``: offline)."""


class _Net:
    """The whole lobby's net effect from ``s`` to the newest update: per key it lists,
    whether it was online at ``s`` and its record now (``None``: offline)."""

    __slots__ = ("listed", "s")

    def __init__(self, s: int) -> None:
        self.s = s
        self.listed: dict[str, tuple[bool, Record | None]] = {}

    @property
    def bytes(self) -> int:
        return LISTED_BYTES * len(self.listed)

    def fold(self, held: Held, index: _Index) -> None:
        """Take the next update into the net effect (``index`` holds it already)."""
        listed, s = self.listed, self.s
        for key in _keys_of(held):
            state = index.state(key, s)
            if state is not None and _changed(state):
                listed[key] = (state[0], state[2])
            else:
                listed.pop(key, None)


def _keys_of(held: Held) -> Iterable[str]:
    """The keys an update touches (a key in ``left`` and ``joined`` twice)."""
    yield from held.left
    for key, _ in held.joined:
        yield key
    for key, _ in held.updated:
        yield key


def _changed(state: _State) -> bool:
    """Whether a touched key's net state is listed: not when it is offline both times,
    nor when it is online both times with the record it had (a replaced record not
    known is taken as another)."""
    online, then, now = state
    return online != (now is not None) or (now is not None and then != now)


_Event = tuple[int, bool, Record | None]
"""An update that touched a key: its seq, and whether the key was online just before
and with what record (``None``: offline, or not known)."""


class _Index:
    """Per key the held updates touch: each update that did, oldest first, with the
    key's state just before it, and the key's record after the last (``None``:
    offline). A watchlist's net effect is read from it in a few steps per key."""

    __slots__ = ("events", "now")

    def __init__(self) -> None:
        self.events: dict[str, list[_Event]] = {}
        self.now: dict[str, Record | None] = {}

    def add(self, held: Held) -> None:
        seq, events, now = held.seq, self.events, self.now
        for key, was in zip(held.left, held.left_was, strict=True):
            events.setdefault(key, []).append((seq, True, was))
            now[key] = None
        for key, record in held.joined:
            touched = events.setdefault(key, [])
            if not touched or touched[-1][0] != seq:  # (else it left in this update too)
                touched.append((seq, False, None))
            now[key] = record
        for (key, record), was in zip(held.updated, held.updated_was, strict=True):
            touched = events.setdefault(key, [])
            if not touched or touched[-1][0] != seq:
                touched.append((seq, True, was))
            now[key] = record

    def drop(self, held: Held) -> None:
        """Forget the oldest held update, ``held``."""
        events = self.events
        for key in _keys_of(held):
            touched = events.get(key)
            if touched and touched[0][0] == held.seq:
                del touched[0]
                if not touched:
                    del events[key], self.now[key]

    def state(self, key: str, seq: int) -> _State | None:
        """The key's net state from view ``seq``; ``None`` when no update since touched it."""
        touched = self.events.get(key)
        if not touched or touched[-1][0] <= seq:
            return None
        _, online, then = touched[bisect_right(touched, seq, key=_seq_of)]
        return (online, then, self.now[key])


def _seq_of(event: _Event) -> int:
    return event[0]


class Ring:
    """Recent updates of one epoch (see the module docstring)."""

    def __init__(self, *, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE) -> None:
        if max_bytes < 0 or max_age < 0:
            raise ValueError("the resume ring's bounds must not be negative")
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._epoch: str | None = None
        self._base = 0
        self._held: deque[Held] = deque()
        self._held_bytes = 0
        self._index = _Index()
        self._memo: _Net | None = None  # the whole lobby's net effect from one S, kept

    # ------------------------------------------------------------------ figures

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def base(self) -> int:
        """The oldest view the ring can resume: every update after it is held."""
        return self._base

    @property
    def newest(self) -> int:
        """The seq of the newest update held (``base`` when none is)."""
        return self._base + len(self._held)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        """The bytes charged for the updates held: at most ``max_bytes``."""
        return self._held_bytes

    @property
    def bytes(self) -> int:
        """The bytes charged for the memory budget: the updates and the kept net effect."""
        memo = 0 if self._memo is None else self._memo.bytes
        return self._held_bytes + memo

    # ------------------------------------------------------------------ changing

    def reset(self, epoch: str, seq: int) -> None:
        """The worker's lobby is at ``(epoch, seq)`` from a snapshot: drop every update
        held (a new epoch, or a resync that may have skipped some)."""
        self._epoch, self._base = epoch, seq
        self._held.clear()
        self._held_bytes = 0
        self._index = _Index()
        self._memo = None

    def append(
        self,
        seq: int,
        at: float,
        joined: Iterable[Entry] = (),
        updated: Iterable[Entry] = (),
        left: Iterable[str] = (),
        was: Mapping[str, Record] | None = None,
    ) -> None:
        """Update ``seq`` of the current epoch was applied at ``at`` (on the clock
        :meth:`trim` and :meth:`covers` are given). ``was`` has the record each key in
        ``left`` or ``updated`` had just before it (one it lacks counts as changed).
        Before the first :meth:`reset`, or for a duplicate or older one, nothing
        happens; one that does not follow on starts the ring afresh before it. Then the
        oldest go while past either bound."""
        if self._epoch is None or seq <= self.newest:
            return
        if seq != self.newest + 1:
            self.reset(self._epoch, seq - 1)
        joined, updated, left = tuple(joined), tuple(updated), tuple(left)
        was = was or {}
        left_was = tuple(was.get(key) for key in left)
        updated_was = tuple(was.get(key) for key, _ in updated)
        size = held_size(joined, updated, left, (*left_was, *updated_was))
        held = Held(seq, at, joined, updated, left, left_was, updated_was, size)
        self._held.append(held)
        self._held_bytes += held.size
        self._index.add(held)
        memo = self._memo
        if memo is not None:
            memo.fold(held, self._index)  # (it is at the newest: every change is folded)
        while self._held_bytes > self.max_bytes:
            self._drop_oldest()
        self.trim(at)

    def trim(self, now: float) -> None:
        """Drop the updates older than ``max_age`` at ``now``."""
        oldest = now - self.max_age
        while self._held and self._held[0].at < oldest:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        gone = self._held.popleft()
        self._held_bytes -= gone.size
        self._index.drop(gone)
        self._base = gone.seq
        if self._memo is not None and self._memo.s < self._base:
            self._memo = None  # its view can no longer be resumed

    # ------------------------------------------------------------------ resuming

    def covers(self, epoch: str, seq: int, now: float) -> bool:
        """Whether the view ``(epoch, seq)`` can be resumed at ``now``: the same epoch,
        and every update after ``seq`` is held (none older than ``max_age``)."""
        self.trim(now)
        return epoch == self._epoch and self._base <= seq <= self.newest

    def since(self, epoch: str, seq: int, keys: AbstractSet[str] | None = None) -> Changes | None:
        """The net effect from view ``(epoch, seq)`` to ``newest`` as one update
        (``prev`` = ``seq``), for the whole lobby or restricted to ``keys``; ``None`` when
        the ring does not cover the view (call :meth:`covers` first to apply the age).
        A watch client resumed so has been sent ``newest``: tell the interest index."""
        if epoch != self._epoch or not self._base <= seq <= self.newest:
            return None
        listed: Iterable[tuple[str, tuple[bool, Record | None]]]
        if keys is None:
            listed = self._net(seq).listed.items()
        else:
            states = ((key, self._index.state(key, seq)) for key in keys)
            listed = ((k, (s[0], s[2])) for k, s in states if s is not None and _changed(s))
        joined: list[Entry] = []
        updated: list[Entry] = []
        left: list[str] = []
        for key, (was, record) in listed:
            if record is None:
                left.append(key)
            elif was:
                updated.append((key, record))
            else:
                joined.append((key, record))
        return Changes.of(self.newest, seq, joined, updated, left)

    def _net(self, seq: int) -> _Net:
        memo = self._memo
        if memo is not None and memo.s == seq:
            return memo  # (kept at the newest: see append)
        net = _Net(seq)
        for held in islice(self._held, seq - self._base, None):
            net.fold(held, self._index)
        self._memo = net
        return net
