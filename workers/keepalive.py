"""When each connection is pinged, and which ones did not answer in time.

Theory of operation
-------------------
The server pings every connection every ``interval`` seconds and drops one whose pong
has not come ``timeout`` seconds after its ping (docs/PROTOCOL.md, *Keepalive*).
websockets does this with a task per connection (a sleep, a ping, a wait with a
timeout, a future per ping): about 59 µs of worker CPU per round, measured, which at
100,000 connections and the 20 s default is 5,000 rounds and a third of a core each
second, for connections that do nothing.

Here one :class:`Schedule` holds every connection of a worker, and the worker asks it,
from one timer, which connections are due (:meth:`Schedule.due`): those to ping now and
those to drop. The shell writes the pings and fails the dropped ones
(:class:`workers.wsinternals.Pinger`); a pong is reported with
:meth:`Schedule.answered`.

A connection is in one of two states (:class:`Beat`):

========  ==========================================  ================================
state     waits for                                   then
========  ==========================================  ================================
IDLE      its next ping's time                        pinged: AWAITING (or, while its
                                                      writes are paused, not pinged:
                                                      IDLE again, one interval later)
AWAITING  its pong (:meth:`Schedule.answered`)        IDLE, next ping one interval
                                                      after the last
AWAITING  the deadline, ``timeout`` after the ping    dropped (the shell closes it
                                                      with 1011)
========  ==========================================  ================================

Order without a heap: every connection has the same interval, so the order in which
connections fall due is the order in which they were last (re)scheduled; likewise for
deadlines, all one ``timeout`` after their ping. Two insertion-ordered maps
(:class:`collections.OrderedDict`: moving a key to the end and removing one are O(1))
are therefore always sorted, and :meth:`~Schedule.due` reads only the entries that are
due. A connection that closes is removed at once (:meth:`~Schedule.discard`), so the
schedule never holds a closed connection's memory.

What websockets does and this keeps: the first ping one interval after the handshake;
the next one interval after the previous ping was sent, once its pong came; with a
timeout, never a second ping while one waits for its pong; with ``timeout`` ``None``, a
ping every interval and no connection ever dropped for a missing pong. What differs, by design:

* **Paused writes.** websockets' ping waits for the transport to drain before it is
  written, and its timeout starts then. A connection whose writes are paused (its
  transport past the write limit) is not pinged here in that round, and is asked
  again one interval later: the worker already watches such a client's reading
  progress (``--stall-timeout``, 4005), a stronger sign of life than a pong queued
  behind its backlog.
* **Granularity.** The timer fires at most every :data:`GRAIN` seconds, so a ping or a
  drop may come up to that much late; the schedule itself is exact.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

H = TypeVar("H")

GRAIN: Final = 0.1
"""Seconds between two runs of the keepalive timer at least: the pings and drops due in
that time go out together. 0.1 s, the worker's tick: a drop is at most that late, and
at 100,000 connections on the 20 s default a run pings about 500 of them."""


class Beat(enum.Enum):
    """Where a connection is in its keepalive round."""

    IDLE = "idle"
    """Waiting for its next ping's time."""
    AWAITING = "awaiting"
    """Pinged; waiting for the pong, or for the deadline."""


@dataclass(slots=True)
class Due(Generic[H]):
    """What the timer does now: ping ``ping``, drop ``drop`` (1011, no pong in time)."""

    ping: list[H] = field(default_factory=list)
    drop: list[H] = field(default_factory=list)


class Schedule(Generic[H]):
    """The keepalive rounds of every connection of one worker (see the module's theory
    of operation). ``interval``: seconds between pings, > 0. ``timeout``: seconds a pong
    may take, ``None`` to wait for ever."""

    __slots__ = ("_deadline", "_next", "interval", "timeout")

    def __init__(self, interval: float, timeout: float | None) -> None:
        if not interval > 0:
            raise ValueError(f"keepalive interval must be positive, not {interval!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"keepalive timeout must be positive or None, not {timeout!r}")
        self.interval = interval
        self.timeout = timeout
        self._next: OrderedDict[H, float] = OrderedDict()
        """Every connection: when it is next due, in that order."""
        self._deadline: OrderedDict[H, float] = OrderedDict()
        """The AWAITING ones: when they are dropped, in that order."""

    def __len__(self) -> int:
        return len(self._next)

    def __contains__(self, handle: object) -> bool:
        return handle in self._next

    def beat(self, handle: H) -> Beat | None:
        """``handle``'s state, ``None`` if the schedule does not hold it."""
        if handle not in self._next:
            return None
        return Beat.AWAITING if handle in self._deadline else Beat.IDLE

    def add(self, handle: H, now: float) -> None:
        """A connection finished its handshake at ``now``: first ping one interval
        later. Adding one already held starts its round again."""
        self._deadline.pop(handle, None)
        self._next.pop(handle, None)
        self._next[handle] = now + self.interval

    def discard(self, handle: H) -> None:
        """The connection is gone (closed, or dropped): forget it."""
        self._next.pop(handle, None)
        self._deadline.pop(handle, None)

    def answered(self, handle: H) -> None:
        """``handle``'s pong came: IDLE, its next ping already set one interval after
        the last. A pong nobody waits for (unsolicited, or late) changes nothing."""
        self._deadline.pop(handle, None)

    def next_at(self) -> float | None:
        """When something is next due (a ping or a drop), ``None`` with nothing held."""
        first = None
        for at in self._next.values():
            first = at
            break
        for at in self._deadline.values():
            return at if first is None or at < first else first
        return first

    def due(self, now: float, paused: Container[H] = ()) -> Due[H]:
        """The connections to ping and to drop at ``now``. ``paused``: connections whose
        writes are paused; they are asked again one interval later, unpinged. Those to
        ping become AWAITING; those dropped are forgotten."""
        out: Due[H] = Due()
        deadline = self._deadline
        nexts = self._next
        if deadline:
            for handle, at in deadline.items():
                if at > now:
                    break
                out.drop.append(handle)
            for handle in out.drop:
                del deadline[handle]
                del nexts[handle]
        due: list[H] = []
        for handle, at in nexts.items():
            if at > now:
                break
            due.append(handle)
        later = now + self.interval
        timeout = self.timeout
        for handle in due:
            del nexts[handle]
            nexts[handle] = later
            if handle in deadline or handle in paused:
                continue  # still awaiting its pong, or paused: not pinged this round
            if timeout is not None:
                deadline[handle] = now + timeout
            out.ping.append(handle)
        return out
