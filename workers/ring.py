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
  (with the new one) and those that left. It holds every update after ``base`` up to
  ``newest``, and nothing else: an update that does not follow on (the replica resynced
  after a gap) or a new epoch (:meth:`Ring.reset`) starts it afresh.
* **Its bounds.** At most ``max_bytes`` (estimated as :meth:`Ring.bytes` charges them;
  :data:`MAX_BYTES`, 8 MiB) and ``max_age`` seconds (:data:`MAX_AGE`, 60 s). At either
  bound the oldest updates go, and ``base`` moves past them: the views they would have
  resumed get a snapshot instead. An update larger than ``max_bytes`` on its own leaves
  the ring empty.
* **The net effect** from ``S`` to ``newest``, per key, follows the protocol's rule for
  applying updates (remove ``left``, then set ``joined`` and ``updated``). Whether the
  key was online at ``S`` is read from the first update after ``S`` that touches it: in
  ``left`` or ``updated``, it was; in ``joined`` without ``left``, it was not. Then:
  online at ``S`` and now, ``updated`` with the current record; offline at ``S`` and
  online now, ``joined``; online at ``S`` and offline now, ``left``; offline both times,
  nothing. A key no update touched is not listed. So the client's view at ``S`` with the
  net effect applied is the lobby now, for the whole lobby or restricted to a watchlist.

Cost: the net effect for the whole lobby from ``S`` is computed once (one step per
change held after ``S``) and kept until the ring changes, since reconnecting clients come
in herds holding the same view; restricting it to a watchlist costs the smaller of the
two sizes. That kept result is charged too: :meth:`Ring.bytes` is at most about twice
``max_bytes``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import islice
from typing import Final

from shared.defaults import RESUME_RING_AGE, RESUME_RING_BYTES
from shared.records import Record
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
NET_BYTES: Final = 130
"""Estimated bytes per key of a kept net effect."""


@dataclass(frozen=True, slots=True)
class Held:
    """One update as the ring holds it."""

    seq: int
    at: float
    joined: tuple[Entry, ...]
    updated: tuple[Entry, ...]
    left: tuple[str, ...]
    size: int


def held_size(joined: Iterable[Entry], updated: Iterable[Entry], left: Iterable[str]) -> int:
    """The estimated bytes an update holds (what the ring charges for it)."""
    entries = sum(ENTRY_BYTES + len(s) + len(d) for _, (s, d) in (*joined, *updated))
    return UPDATE_BYTES + entries + LEFT_BYTES * sum(1 for _ in left)


_Net = dict[str, tuple[bool, Record | None]]
"""Per touched key: whether it was online at ``S``, and its record now (None: offline)."""


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
        self._memo: tuple[int, int, _Net] | None = None  # (S, newest, net from S)

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
        memo = 0 if self._memo is None else NET_BYTES * len(self._memo[2])
        return self._held_bytes + memo

    # ------------------------------------------------------------------ changing

    def reset(self, epoch: str, seq: int) -> None:
        """The worker's lobby is at ``(epoch, seq)`` from a snapshot: drop every update
        held (a new epoch, or a resync that may have skipped some)."""
        self._epoch, self._base = epoch, seq
        self._held.clear()
        self._held_bytes = 0
        self._memo = None

    def append(
        self,
        seq: int,
        at: float,
        joined: Iterable[Entry] = (),
        updated: Iterable[Entry] = (),
        left: Iterable[str] = (),
    ) -> None:
        """Update ``seq`` of the current epoch was applied at ``at`` (on the clock
        :meth:`trim` and :meth:`covers` are given). Before the first :meth:`reset`, or
        for a duplicate or older one, nothing happens; one that does not follow on
        starts the ring afresh before it. Then the oldest go while past either bound."""
        if self._epoch is None or seq <= self.newest:
            return
        if seq != self.newest + 1:
            self.reset(self._epoch, seq - 1)
        joined, updated, left = tuple(joined), tuple(updated), tuple(left)
        held = Held(seq, at, joined, updated, left, held_size(joined, updated, left))
        self._held.append(held)
        self._held_bytes += held.size
        self._memo = None
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
        self._base = gone.seq
        self._memo = None

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
        net = self._net(seq)
        if keys is None:
            touched: Iterable[tuple[str, tuple[bool, Record | None]]] = net.items()
        elif len(keys) < len(net):
            touched = ((key, net[key]) for key in keys if key in net)
        else:
            touched = ((key, state) for key, state in net.items() if key in keys)
        joined: list[Entry] = []
        updated: list[Entry] = []
        left: list[str] = []
        for key, (was, record) in touched:
            if record is None:
                if was:
                    left.append(key)
            elif was:
                updated.append((key, record))
            else:
                joined.append((key, record))
        return Changes.of(self.newest, seq, joined, updated, left)

    def _net(self, seq: int) -> _Net:
        memo = self._memo
        if memo is not None and memo[0] == seq and memo[1] == self.newest:
            return memo[2]
        net: _Net = {}
        for held in islice(self._held, seq - self._base, None):
            for key in held.left:
                state = net.get(key)
                net[key] = (True if state is None else state[0], None)
            for key, record in held.joined:
                state = net.get(key)
                net[key] = (False if state is None else state[0], record)
            for key, record in held.updated:
                state = net.get(key)
                net[key] = (True if state is None else state[0], record)
        self._memo = (seq, self.newest, net)
        return net
