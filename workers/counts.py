"""The count feed: the number of users online, for clients that follow only it
(protocol 2's count scope; pure, with the clock passed in).

Theory of operation
-------------------
A client that follows the count is sent ``count`` when it starts following (at once:
:meth:`CountFeed.follow` returns it), then whenever the number changed since what that
client was last sent, at most once per ``interval`` (:data:`INTERVAL`, 1 s). It decides
who is sent what and when, and never sends a client the number it already holds.

The lobby may change every few milliseconds and a worker may hold many thousands of
count clients, so neither a change nor a tick walks the followers. Followers are kept
in *cohorts*: those sent the same number at the same moment (everyone due at one tick
is sent the same count, so they stay together). Cohorts wait in a queue in the order
they were sent, so a tick looks only at the cohorts whose interval is over: each such
cohort is sent the current number if it differs from theirs (all of them at once,
becoming one new cohort at the back), or else goes *idle*, grouped by the number it
holds. A change of the number makes every idle group that holds another number due at
the next tick. So a tick costs one step per follower sent a count, plus one per cohort
that went idle; a change costs nothing; :meth:`CountFeed.next_due` tells when the next
tick has anything to do.

Bounds: one entry per follower, and at most one cohort per tick or follow within an
interval. At the bound of the interval the feed only delays: the last number always
arrives, within ``interval`` of the change (plus the tick's own delay).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from shared.defaults import COUNT_INTERVAL

C = TypeVar("C", bound=Hashable)

INTERVAL: Final = COUNT_INTERVAL
"""Seconds between two counts to one client, at least (see shared.defaults)."""


@dataclass(frozen=True, slots=True)
class Count:
    """A ``count`` to send: ``online`` users at ``seq``."""

    online: int
    seq: int


@dataclass(slots=True, eq=False)
class _Cohort(Generic[C]):
    """Followers sent ``online`` at ``at`` (idle cohorts keep their ``at``)."""

    at: float
    online: int
    members: set[C] = field(default_factory=set)
    idle: bool = False


class CountFeed(Generic[C]):
    """Count followers and what each was last sent (see the module docstring)."""

    def __init__(self, online: int = 0, seq: int = 0, *, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._current = Count(online, seq)
        self._queue: deque[_Cohort[C]] = deque()  # waiting for their interval, oldest first
        self._idle: dict[int, set[_Cohort[C]]] = {}  # past their interval: by number held
        self._cohort: dict[C, _Cohort[C]] = {}  # every follower's cohort

    def __len__(self) -> int:
        return len(self._cohort)

    def __contains__(self, client: object) -> bool:
        return client in self._cohort

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._cohort))

    @property
    def current(self) -> Count:
        return self._current

    def follow(self, client: C, now: float) -> Count:
        """``client`` follows the count (again): send it the returned count now."""
        self.forget(client)
        current = self._current
        tail = self._queue[-1] if self._queue else None
        if tail is None or tail.at != now or tail.online != current.online:
            tail = _Cohort(now, current.online)
            self._queue.append(tail)
        tail.members.add(client)
        self._cohort[client] = tail
        return current

    def forget(self, client: C) -> None:
        """``client`` no longer follows the count."""
        cohort = self._cohort.pop(client, None)
        if cohort is not None:
            cohort.members.discard(client)
            if not cohort.members and cohort.idle:
                group = self._idle[cohort.online]
                group.discard(cohort)
                if not group:
                    del self._idle[cohort.online]

    def changed(self, online: int, seq: int) -> None:
        """The lobby is at ``seq`` with ``online`` users (every update: it costs nothing)."""
        self._current = Count(online, seq)

    def restart(self, online: int, seq: int, now: float) -> list[tuple[C, Count]]:
        """The lobby's numbering starts afresh (a new epoch): every follower is sent the
        count now, whatever it holds (one step per follower)."""
        self._current = Count(online, seq)
        everyone = _Cohort[C](now, online, set(self._cohort))
        self._queue.clear()
        self._idle.clear()
        if not everyone.members:
            return []
        for client in everyone.members:
            self._cohort[client] = everyone
        self._queue.append(everyone)
        return [(client, self._current) for client in everyone.members]

    def next_due(self) -> float | None:
        """When :meth:`due` may next have something to send (``None``: not before the
        number changes)."""
        online = self._current.online
        if any(number != online for number in self._idle):
            return float("-inf")
        return self._queue[0].at + self.interval if self._queue else None

    def due(self, now: float) -> list[tuple[C, Count]]:
        """The counts to send now. Costs one step per follower sent one and per cohort
        that goes idle."""
        current = self._current
        sent = _Cohort[C](now, current.online)
        stale = [number for number in self._idle if number != current.online]
        for number in stale:
            for cohort in self._idle.pop(number):
                sent.members |= cohort.members
        queue = self._queue
        while queue and queue[0].at + self.interval <= now:
            cohort = queue.popleft()
            if not cohort.members:
                continue
            if cohort.online != current.online:
                sent.members |= cohort.members
            else:
                cohort.idle = True
                self._idle.setdefault(cohort.online, set()).add(cohort)
        if not sent.members:
            return []
        for client in sent.members:
            self._cohort[client] = sent
        queue.append(sent)
        return [(client, current) for client in sent.members]
