"""Flaps: keys that leave the lobby and join it again soon after, as clients see it.

A user whose connection drops and comes back (a phone changing networks, a flaky
Wi-Fi, a worker dying under its clients) shows up to everyone else as a leave and a
join. One now and then is life; many are a symptom worth an alert. The coordinator
counts them where clients see them: in the published updates. A key in ``left`` is
remembered with the time; the same key in a later (or the same) update's ``joined``
within :data:`FLAP_WINDOW` seconds is one flap.

The memory is bounded: entries older than the window are dropped at every
publication (they are in time order), and past :data:`MAX_REMEMBERED` keys the oldest
go first, so a mass leave of millions costs at most that many entries (and may miss
flaps of the keys it forgot, which a figure for alerts can afford).

Pure: the caller passes the clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

FLAP_WINDOW: Final = 10.0
"""Seconds within which a leave and a join again of one key count as a flap."""
MAX_REMEMBERED: Final = 100_000
"""Keys that left remembered at most (about 15 MiB at the worst)."""


class FlapCounter:
    def __init__(self, window: float = FLAP_WINDOW, limit: int = MAX_REMEMBERED) -> None:
        self.window = window
        self.limit = limit
        self.total = 0
        """Flaps counted since the start."""
        self._left: OrderedDict[str, float] = OrderedDict()  # key -> when it left, oldest first

    def __len__(self) -> int:
        return len(self._left)

    def published(self, joined: Iterable[str], left: Iterable[str], now: float) -> int:
        """One update was published at ``now`` (a monotonic clock); returns the flaps in
        it. ``left`` first: a key in both left and joined again within the update."""
        remembered = self._left
        horizon = now - self.window
        while remembered:
            oldest, at = next(iter(remembered.items()))
            if at >= horizon:
                break
            del remembered[oldest]
        for key in left:
            remembered[key] = now
            remembered.move_to_end(key)
        while len(remembered) > self.limit:
            remembered.popitem(last=False)
        flaps = 0
        for key in joined:
            if remembered.pop(key, None) is not None:
                flaps += 1
        self.total += flaps
        return flaps
