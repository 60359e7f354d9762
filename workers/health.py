"""What a worker says about itself: the ``/healthz`` body, the connection counts in the
metrics, and the log line that sums refusals and drops.

Pure, like the core it reads (:class:`~workers.core.WorkerCore`): the core decides, and
once a tick hands this module what it needs. A ``/healthz`` request is answered from
counters and from the backlog figures kept once a tick, over the *pressured* clients
only (only a transport past its write limit holds more than a few KiB), so it costs the
same however many clients are connected. The log line is written at most every
:data:`LOG_EVERY`, and only when a count moved: a storm of refusals must not flood the
logs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from shared import logs
from workers import stats
from workers.admission import Admit
from workers.clients import Group
from workers.replica import SyncState
from workers.states import Link

if TYPE_CHECKING:
    from workers.core import WorkerCore

log = logging.getLogger("workers")

LOG_EVERY: Final = 1.0
"""Seconds between log lines summing refusals and drops (a storm must not flood logs)."""


class Health:
    """The figures a worker reports, kept once a tick."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        """Backbone messages that could not be queued, by kind (``/healthz``'s
        ``dropped``)."""
        self.refused_by_budget: Counter[str] = Counter()
        """What the memory budget refused: ``messages``, and views ``collapsed``."""
        self.join_refused: str | None = None
        """Why the coordinator refuses this worker (its id is held by another), while
        it does (``/healthz``'s ``joinRefused``; cleared once the worker is welcomed)."""
        self._backlog = {"buffered": 0, "maxBuffered": 0}
        self._logged: Counter[str] = Counter()
        self._logged_at = float("-inf")

    def body(self, core: WorkerCore[Any], up: bool) -> dict[str, object]:
        """The ``/healthz`` body (docs/choices.md lists its fields). O(1)."""
        admission, refused = core.admission, core.admission.refused
        return {
            "status": "ok" if up else "unavailable",
            "worker": core.worker_id,
            "sync": core.replica.sync.value,
            "seq": core.replica.seq,
            "clients": len(core.clients),
            **self._backlog,
            "lagging": len(core.clients.groups[Group.BEHIND]),
            "challenged": admission.pending,
            "inFlight": admission.in_flight,
            "authWindow": int(admission.window),
            "connections": admission.connections,
            "refused": {
                kind.value: refused.get(kind, 0)
                for kind in (Admit.FULL, Admit.BUSY, Admit.THROTTLED)
            },
            "evicted": admission.evicted,
            "replaced": admission.replaced,
            "memory": self._memory(core),
            "cutOff": core.cut_off,
            "dropped": dict(self.dropped),
            "joinRefused": self.join_refused,
        }

    def _memory(self, core: WorkerCore[Any]) -> dict[str, int]:
        figures = core.budget.figures()
        return {
            "budget": figures.limit,
            "used": figures.used,
            "reserved": figures.reserved,
            "backlog": figures.backlog,
            "indexes": figures.indexes,
            "backlogged": figures.backlogged,
            "refusedConnections": core.budget.refused_connections,
            "refusedMessages": self.refused_by_budget["messages"],
            "collapsed": self.refused_by_budget["collapsed"],
        }

    def tick(self, core: WorkerCore[Any], pressured: Iterable[int], now: float) -> None:
        """Once a tick: the backlog figures (``pressured``: the buffered bytes of each
        pressured client), the connection counts, and the log line if one is due."""
        if core.replica.sync is not SyncState.AWAITING_WELCOME:
            self.join_refused = None
        backlog = list(pressured)
        self._backlog = {"buffered": sum(backlog), "maxBuffered": max(backlog, default=0)}
        groups, admission = core.clients.groups, core.admission
        stats.connections(
            challenged=admission.pending,
            authenticating=sum(
                len(groups[g]) for g in (Group.VERIFIED, Group.AUTHENTICATING, Group.ACKED)
            ),
            online=sum(len(groups[g]) for g in (Group.CURRENT, Group.CURRENT_V2, Group.SCOPED)),
            lagging=len(groups[Group.BEHIND]),
        )
        stats.coordinator_reachable(core.link(now) is Link.UP)
        summary = Counter({f"refused {k.value}": n for k, n in admission.refused.items()})
        summary.update({f"dropped {k}": n for k, n in self.dropped.items()})
        if summary == self._logged or now - self._logged_at < LOG_EVERY:
            return
        new = summary - self._logged
        if new:
            log.info(
                "since the last report: %s (%d challenged now)",
                ", ".join(f"{k} {n}" for k, n in sorted(new.items())),
                admission.pending,
                extra=logs.event("counts", counts=dict(new), challenged=admission.pending),
            )
        self._logged, self._logged_at = summary, now
