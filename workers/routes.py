"""Pending direct-message routes of this worker (sans-I/O).

Every well-formed ``send`` gets exactly one ``send_result``. A route is opened when the
``Route`` goes to the coordinator and ends exactly once: by ``RouteDone``, or by its
deadline (``unavailable``), whichever comes first; the other is then ignored. Route ids
are a counter, so an id is never reused while pending. Both the table and each
connection's share of it are bounded: past them the send is refused at once.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MAX_PENDING_ROUTES: Final = 65_536
"""Routes in flight for the whole worker: past it sends are rejected ``unavailable``
(the coordinator is not keeping up)."""
MAX_PENDING_PER_CONN: Final = 256
"""Routes in flight for one connection: past it its sends are rejected ``rate_limited``."""


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


class RouteTable:
    """Route id -> pending send, in deadline order (every route has the same timeout)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: OrderedDict[int, Pending] = OrderedDict()
        self._per_conn: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def room_for(self, conn: int) -> Room:
        if self._per_conn.get(conn, 0) >= MAX_PENDING_PER_CONN:
            return Room.CONN_FULL
        return Room.OK if len(self._pending) < MAX_PENDING_ROUTES else Room.WORKER_FULL

    def open(self, conn: int, msg_id: str, deadline: float) -> int:
        route = next(self._ids)
        self._pending[route] = Pending(route, conn, msg_id, deadline)
        self._per_conn[conn] = self._per_conn.get(conn, 0) + 1
        return route

    def finish(self, route: int) -> Pending | None:
        """End ``route`` (``None`` if it already ended)."""
        pending = self._pending.pop(route, None)
        if pending is not None:
            self._release(pending.conn)
        return pending

    def expire(self, now: float) -> list[Pending]:
        """End and return every route whose deadline has passed."""
        expired: list[Pending] = []
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                break
            self._pending.popitem(last=False)
            self._release(first.conn)
            expired.append(first)
        return expired

    def _release(self, conn: int) -> None:
        left = self._per_conn[conn] - 1
        if left:
            self._per_conn[conn] = left
        else:
            del self._per_conn[conn]
