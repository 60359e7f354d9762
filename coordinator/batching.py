"""When to publish: a batching window that widens while changes keep coming, as far as
the number of clients each update goes to makes worth it, and narrows when quiet.

Theory of operation
-------------------
Every published update is one frame to every client that follows the whole lobby, so
what fan-out costs is updates per second times recipients, and what batching costs is
latency: a change waits for its window to close. A quiet lobby should therefore publish
a change within the short base window, the ``floor`` (default 5 ms), whatever its size;
a busy lobby should publish at a bounded rate, and the bound should depend on how many
clients each update reaches: ten updates a second to 20 clients are 200 frames, to
20,000 clients 200,000 frames.

So the window is decided when a batch opens (a change arrives with nothing pending),
from the time since the last publication and ``recipients``, the clients an update
goes to:

* its *reach* is ``ceiling * recipients / full``, within [``floor``, ``ceiling``]: the
  widest the window may get for that many recipients (``full``: the recipients at which
  it may widen all the way to ``ceiling``; 0: always all the way);
* the change came within ``reach`` of the last publication (changes keep coming): the
  window doubles, up to ``reach``;
* otherwise (the lobby was quiet for a while): it returns to ``floor``.

Under sustained load a lobby publishes at most about ``1 / reach`` updates a second,
so its frames per second stay at most about ``full / ceiling`` (10,000 at the defaults,
500 clients and 50 ms: at some 10 µs of the workers' CPU a frame, a tenth of a CPU)
until the lobby outgrows ``full``, and then ``1 / ceiling`` updates a second (20); a
small lobby keeps a window of a few milliseconds even while busy, and no change ever
waits longer than ``ceiling``.

Deciding at the opening of a batch, not at the flush, matters: a flush at the ceiling
always comes at least ``ceiling`` after the previous one, so judging "busy" by the gap
between flushes dropped the window back to the floor each time it reached the top.
Replayed on time through the coordinator's core, this policy sends about half the
frames of that one for a mass join of 2,000 and for churn under 2,000 watchers, and
fewer for lobbies of 100 to 1,000 under churn too.

``floor == ceiling`` is a fixed window; a ``floor`` of 0 disables batching altogether
(every event is published at once). The caller chooses what ``recipients`` is (the
coordinator passes the lobby's size, which no count of whole-lobby followers exceeds).

Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BatchWindow:
    floor: float
    """The window of a quiet lobby, in seconds (0: no batching)."""
    ceiling: float
    """The widest window, in seconds: the longest a change waits to be published."""
    full: int = 0
    """The recipients at which a busy window may widen to ``ceiling``; fewer widen it
    in proportion (0: to ``ceiling`` whatever their number)."""
    current: float = field(init=False)
    _last_flush: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.floor < 0 or self.ceiling < self.floor or self.full < 0:
            raise ValueError("need 0 <= floor <= ceiling and full >= 0")
        self.current = self.floor

    def reach(self, recipients: int) -> float:
        """The widest window for an update to ``recipients`` clients."""
        if self.full <= 0:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.ceiling * recipients / self.full))

    def opened(self, now: float, recipients: int) -> float:
        """A change arrived at ``now`` with nothing pending, for an update to
        ``recipients`` clients: the window it waits (also :attr:`current`)."""
        reach = self.reach(recipients)
        busy = self._last_flush is not None and now - self._last_flush < reach
        self.current = min(reach, max(self.floor, self.current * 2)) if busy else self.floor
        return self.current

    def flushed(self, now: float) -> None:
        """A flush published something at ``now``."""
        self._last_flush = now
