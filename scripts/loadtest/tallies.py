"""What a generator process counts: the causes of lobby changes its watchers are to
see, what connecting took, and the totals of its clients."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scripts.loadtest.client import LoadClient
from scripts.loadtest.stats import Histogram


@dataclass(slots=True)
class Cause:
    """The last change a client of this agent caused to its key: it shows in
    ``joined`` (a join or reconnect) or in ``left``, at ``at`` (wall clock).
    ``waiting``: this agent's watchers yet to see it (None: not counted, kept)."""

    joined: bool
    at: float
    waiting: int | None


@dataclass(slots=True)
class ConnectStats:
    """What connecting a batch of clients took."""

    ok: int = 0
    failed: int = 0
    retried_1013: int = 0
    retried_other: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Failed attempts by cause (:func:`scripts.loadtest.causes.classify`), all of them."""
    duration: Histogram = field(default_factory=Histogram)
    first_ok: float = 0.0
    last_ok: float = 0.0

    def result(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "retried_1013": self.retried_1013,
            "retried_other": self.retried_other,
            "reasons": dict(self.reasons.most_common()),
            "duration": self.duration.to_dict(),
            "first_ok": self.first_ok,
            "last_ok": self.last_ok,
        }


@dataclass(slots=True)
class Totals:
    """Counters of clients that are gone, so phase totals include them."""

    updates: int = 0
    update_bytes: int = 0
    changes: int = 0
    frames: int = 0
    frame_bytes: int = 0
    snapshots: int = 0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, client: LoadClient) -> None:
        client.catch_up()  # what it noted and did not apply yet is checked now
        self.updates += client.updates_received
        self.update_bytes += client.update_bytes
        self.changes += client.changes_received
        self.frames += client.frames
        self.frame_bytes += client.frame_bytes
        self.snapshots += client.snapshots_received
        self.error_count += client.error_count
        self.errors.extend(str(e) for e in client.errors[: 5 - len(self.errors)])
