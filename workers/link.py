"""What a worker knows of its coordinator: whether it is reachable, what is due when it
falls silent or a message to it was lost, and when the worker is cut off.

Theory of operation
-------------------
Pure, with the time passed in; :class:`~workers.core.WorkerCore` asks it and carries
out the answer.

* **Reachable** (:meth:`CoordinatorLink.state`): while the replica is live and the
  coordinator was heard from within ``coordinator_timeout``.
* **Silence** (:meth:`CoordinatorLink.due`): live but silent longer, the worker
  announces its sessions again (the coordinator may have dropped them, or restarted);
  not live, it asks again for a snapshot every ``coordinator_timeout``.
* **Lost messages are repaired.** A message that matters and could not be queued for
  the coordinator (``Authed``, ``Closed``, ``Hello``) sets :attr:`CoordinatorLink.repair`,
  and the worker re-registers (``Hello``, the whole truth) at the next tick.
* **The worker's own stalls are no silence of the coordinator.** A tick later than
  ``tick`` after the one before means the worker's loop stalled (a CPU-starved
  machine, a long burst of work); what the coordinator said meanwhile may be unread
  still, so the silence is counted on the worker's time awake alone.
* **Cut-off** (:meth:`CoordinatorLink.watch`): unreachable for ``cutoff_grace``, the
  worker closes its clients with 1013 and refuses new ones (the door's 503, or 1013
  right after the handshake) until the coordinator is back.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from workers.states import Link

if TYPE_CHECKING:
    from workers.settings import Timing


class Due(enum.Enum):
    """What a tick owes the coordinator."""

    REANNOUNCE = "reannounce"  # live, but silent past the timeout
    REPAIR = "repair"  # live, and a message that matters was lost
    RETRY = "retry"  # not live: ask for a snapshot again


class Change(enum.Enum):
    """A change of the cut-off."""

    CUT = "cut"  # unreachable for the whole grace: close clients, refuse new ones
    BACK = "back"  # reachable again after a cut-off: admit clients


class CoordinatorLink:
    """The coordinator as the worker sees it (times are the shell's monotonic clock)."""

    def __init__(self, timing: Timing, tick: float) -> None:
        """``tick``: how often :meth:`due` is called (once a tick)."""
        self.timing = timing
        self._tick = tick
        self._seen = float("-inf")
        self._stalled = 0.0  # the worker's own stalls, summed
        self._stalled_when_seen = 0.0
        self._last_tick: float | None = None
        self.last_request = 0.0
        """When the worker last sent ``Hello`` or ``SnapshotRequest``."""
        self.repair = False
        """A message that matters was lost: re-register at the next tick."""
        self.cut_off = False
        self._down_since: float | None = None

    @property
    def last_seen(self) -> float:
        """When the coordinator was last heard from, moved on by the worker's own stalls
        since (on the worker's time awake)."""
        return self._seen + (self._stalled - self._stalled_when_seen)

    @last_seen.setter
    def last_seen(self, now: float) -> None:
        self._seen, self._stalled_when_seen = now, self._stalled

    def state(self, now: float, live: bool) -> Link:
        """``live``: whether the replica is live."""
        recent = now - self.last_seen <= self.timing.coordinator_timeout
        return Link.UP if live and recent else Link.DOWN

    def due(self, now: float, live: bool) -> Due | None:
        """What this tick owes the coordinator, if anything (called once a tick)."""
        last, self._last_tick = self._last_tick, now
        if last is not None and now - last > 2 * self._tick:
            self._stalled += now - last - self._tick
        timeout = self.timing.coordinator_timeout
        if live:
            if now - self.last_seen > timeout:
                return Due.REANNOUNCE
            return Due.REPAIR if self.repair else None
        if now - self.last_request > timeout:
            self.last_request = now
            return Due.RETRY
        return None

    def watch(self, now: float, live: bool) -> Change | None:
        """Whether the cut-off starts or ends at ``now``."""
        if self.state(now, live) is Link.UP:
            self._down_since, was = None, self.cut_off
            self.cut_off = False
            return Change.BACK if was else None
        if self._down_since is None:
            self._down_since = now
        if not self.cut_off and now - self._down_since >= self.timing.cutoff_grace:
            self.cut_off = True
            return Change.CUT
        return None
