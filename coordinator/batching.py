"""When to publish: a batching window that widens under load and narrows when quiet.

Theory of operation
-------------------
Every published update is one frame to every client, so the number of updates per
second is what fan-out costs. A quiet lobby should publish a change within the short
base window (default 5 ms); a busy one should publish at a bounded rate however many
changes arrive. So after each flush the window adapts:

* the flush came within ``ceiling`` seconds of the previous one (changes keep coming):
  the window doubles, up to ``ceiling``;
* otherwise (the lobby was quiet for a while): it returns to ``floor``.

Under sustained load updates are therefore at most ``1 / ceiling`` per second (20/s at
the default 50 ms), each carrying the net effect of everything in its window, and a
change never waits longer than ``ceiling``. ``floor == ceiling`` is a fixed window;
a ``floor`` of 0 disables batching altogether (every event is published at once).

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
    current: float = field(init=False)
    _last_flush: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.floor < 0 or self.ceiling < self.floor:
            raise ValueError("need 0 <= floor <= ceiling")
        self.current = self.floor

    def flushed(self, now: float) -> None:
        """A flush published something at ``now``: adapt the next window."""
        busy = self._last_flush is not None and now - self._last_flush < self.ceiling
        self.current = min(self.ceiling, self.current * 2) if busy else self.floor
        self._last_flush = now
