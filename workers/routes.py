"""Pending direct-message routes of this worker, and the clock their deadlines use (pure).

Every well-formed ``send`` gets exactly one ``send_result``. A route is opened when the
``Route`` goes to the coordinator and ends exactly once: by a ``RouteDone`` (from the
coordinator, or from the recipient's worker), or by its deadline (``unavailable``),
whichever comes first; the other is then ignored.

Route ids are random 63-bit numbers: a ``RouteDone`` comes from another worker, and is
believed only for a pending id, which nobody can guess. The table, each connection's
share of it and the bytes of the messages in flight are bounded; past them a send is
refused at once (``unavailable`` for the worker's bounds, ``rate_limited`` for the
connection's). The bytes bound is what bounds the backbone queues in bytes: every
``Route`` and ``Deliver`` in any queue is a route pending at its origin.

Deadlines: the message is dropped wherever it is once the coordinator's wall clock
passes its ``deadline`` (:func:`shared.timings.route_ttl` after it was sent), and the
origin answers ``unavailable`` only after its own, later deadline, and only after it has
read every result already waiting for it. Workers do not trust their clocks to agree
with the coordinator's: :class:`CoordinatorClock` estimates the offset from the
coordinator's beats.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final

MAX_PENDING_ROUTES: Final = 65_536
"""Routes in flight for the whole worker: past it sends are rejected ``unavailable``
(the coordinator is not keeping up)."""
MAX_PENDING_PER_CONN: Final = 256
"""Routes in flight for one connection: past it its sends are rejected ``rate_limited``."""
MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
"""Bytes of message bodies in flight for the whole worker (64 MiB, a thousand maximal
messages): past it sends are rejected ``unavailable``."""


_IDS_AT_ONCE: Final = 256
_IDS: Final = struct.Struct(f"<{_IDS_AT_ONCE}Q")
_ID_MASK: Final = (1 << 63) - 1


class Room(enum.Enum):
    OK = "ok"
    WORKER_FULL = "worker_full"  # -> rejected/unavailable
    CONN_FULL = "conn_full"  # -> rejected/rate_limited


@dataclass(frozen=True, slots=True)
class Pending:
    route: int
    conn: int
    msg_id: str
    deadline: float
    size: int
    opened: float
    """When the route was opened, on the caller's clock (for its routing time)."""


class RouteTable:
    """Route id -> pending send, in deadline order (every route has the same timeout)."""

    def __init__(self) -> None:
        self._pending: OrderedDict[int, Pending] = OrderedDict()
        self._per_conn: dict[int, int] = {}
        self._ids: list[int] = []  # random route ids not used yet
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    def room_for(self, conn: int, size: int) -> Room:
        if self._per_conn.get(conn, 0) >= MAX_PENDING_PER_CONN:
            return Room.CONN_FULL
        full = len(self._pending) >= MAX_PENDING_ROUTES
        return Room.WORKER_FULL if full or self.bytes + size > MAX_PENDING_BYTES else Room.OK

    def open(self, conn: int, msg_id: str, deadline: float, size: int, *, opened: float) -> int:
        route = self._random_id()
        while route in self._pending:
            route = self._random_id()
        self._pending[route] = Pending(route, conn, msg_id, deadline, size, opened)
        self._per_conn[conn] = self._per_conn.get(conn, 0) + 1
        self.bytes += size
        return route

    def _random_id(self) -> int:
        """A fresh random 63-bit id, from the system's source :data:`_IDS_AT_ONCE` at a
        time (one call per route would be a system call per message)."""
        if not self._ids:
            self._ids = [n & _ID_MASK for n in _IDS.unpack(secrets.token_bytes(_IDS.size))]
        return self._ids.pop()

    def finish(self, route: int) -> Pending | None:
        """End ``route`` (``None`` if it already ended, or never existed)."""
        pending = self._pending.pop(route, None)
        if pending is not None:
            self._release(pending)
        return pending

    def expire(self, now: float) -> list[Pending]:
        """End and return every route whose deadline has passed."""
        expired: list[Pending] = []
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                break
            self._pending.popitem(last=False)
            self._release(first)
            expired.append(first)
        return expired

    def _release(self, pending: Pending) -> None:
        self.bytes -= pending.size
        left = self._per_conn[pending.conn] - 1
        if left:
            self._per_conn[pending.conn] = left
        else:
            del self._per_conn[pending.conn]


class CoordinatorClock:
    """The coordinator's wall clock as seen from here: ``local + offset``.

    Each beat carries the coordinator's wall time ``at`` when it was sent; it arrives
    later, so ``at - local_arrival`` is the offset minus the beat's travel time, a lower
    bound of the true offset. The largest of the last :attr:`window` samples is the
    estimate: the fastest beat, within a fraction of a millisecond on a healthy backbone.
    A beat held up (a stalled coordinator, a busy worker) only gives a smaller sample,
    which the maximum ignores. A new coordinator (epoch) starts the estimate afresh.
    """

    window: Final = 16

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=self.window)
        self._epoch: str | None = None

    def beat(self, epoch: str, at: float, local: float) -> None:
        if epoch != self._epoch:
            self._samples.clear()
            self._epoch = epoch
        self._samples.append(at - local)

    def knows(self, epoch: str | None) -> bool:
        """Whether the estimate is of coordinator ``epoch``'s clock (a beat of it came)."""
        return epoch is not None and epoch == self._epoch and bool(self._samples)

    @property
    def offset(self) -> float:
        """Seconds to add to the local wall clock (0 before any beat)."""
        return max(self._samples, default=0.0)

    def now(self, local: float) -> float:
        return local + self.offset
